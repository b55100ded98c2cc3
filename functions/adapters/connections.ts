import { DeleteConnectionCommand, type IoTDataPlaneClient } from '@aws-sdk/client-iot-data-plane';
import type { DeviceConnections } from '../core/service-api/registry-routes.ts';

/**
 * Cuts devices' live MQTT connections to IoT Core with the data-plane `DeleteConnection` call (the MQTT
 * client id of a device is its device id). The session is left as IoT Core keeps it: a disabled device may
 * be enabled again, and a deleted one is refused at its next connect, so nothing can resume it.
 *
 * Needs `iot:DeleteConnection` on `arn:aws:iot:{region}:{account}:client/*`.
 */
export class IotConnections implements DeviceConnections {
  constructor(private readonly client: IoTDataPlaneClient) {}

  /** Disconnects `deviceId`; a device that is not connected (`ResourceNotFoundException`) is a success. */
  async disconnect(deviceId: string): Promise<void> {
    try {
      await this.client.send(new DeleteConnectionCommand({ clientId: deviceId }));
    } catch (error) {
      if (error instanceof Error && error.name === 'ResourceNotFoundException') return;
      throw error;
    }
  }
}
