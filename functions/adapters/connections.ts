import {
  DeleteConnectionCommand,
  type IoTDataPlaneClient,
  ListRetainedMessagesCommand,
  PublishCommand,
} from '@aws-sdk/client-iot-data-plane';
import type { DeviceConnections } from '../core/service-api/registry-routes.ts';

/**
 * Cuts devices' live MQTT connections to IoT Core with the data-plane `DeleteConnection` call (the MQTT
 * client id of a device is its device id). The session is left as IoT Core keeps it: a disabled device may
 * be enabled again, and a deleted one is refused at its next connect, so nothing can resume it.
 *
 * Needs `iot:DeleteConnection` on `arn:aws:iot:{region}:{account}:client/*`; for retained messages,
 * `iot:ListRetainedMessages` (no resource-level permission) and `iot:Publish` + `iot:RetainPublish` on
 * `topic/devices/*` (a device may retain on `devices/{id}/*` only: `devicePolicyDocument`).
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

  /**
   * Lists the account's retained messages (IoT Core has no per-topic filter) and clears each one under
   * `devices/{id}/`, the only topics a device may retain on, with an empty retained publish, which is how
   * MQTT deletes a retained message.
   */
  async forgetRetained(deviceId: string): Promise<void> {
    const prefix = `devices/${deviceId}/`;
    let nextToken: string | undefined;
    do {
      const page = await this.client.send(new ListRetainedMessagesCommand({ maxResults: 200, nextToken }));
      for (const { topic } of page.retainedTopics ?? []) {
        if (topic === undefined || !topic.startsWith(prefix)) continue;
        await this.client.send(
          new PublishCommand({ topic, retain: true, qos: 1, payload: new Uint8Array() }),
        );
      }
      nextToken = page.nextToken;
    } while (nextToken);
  }
}
