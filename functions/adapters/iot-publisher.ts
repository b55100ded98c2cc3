import { type IoTDataPlaneClient, PublishCommand } from '@aws-sdk/client-iot-data-plane';
import type { DevicePublisher } from '../core/c2d/delivery.ts';

/**
 * Publishes to device topics with the IoT data-plane `Publish` call at QoS 1. Needs `iot:Publish`
 * on the topic ARNs it publishes to.
 */
export class IotDevicePublisher implements DevicePublisher {
  constructor(private readonly client: IoTDataPlaneClient) {}

  async publish(topic: string, payload: Uint8Array): Promise<void> {
    await this.client.send(new PublishCommand({ topic, qos: 1, payload }));
  }
}
