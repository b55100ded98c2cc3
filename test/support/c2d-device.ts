import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { deviceboundFilter, settleResponseFilter, settleTopic } from '../../functions/core/c2d/topics.ts';
import type { LocalHubEndpoints } from '../../local/hub.ts';
import type { DeviceCredentials } from './devices.ts';

/** A C2D message as a device received it. */
export interface ReceivedC2d {
  readonly topic: string;
  /** The decoded property bag (`$.mid`, `$.lt`, `$.dc`, application properties, ...). */
  readonly properties: Record<string, string>;
  readonly body: string;
  readonly messageId: string;
  readonly lockToken: string;
  readonly deliveryCount: number;
}

/** A settlement answer as the device received it. */
export interface SettleAnswer {
  readonly status: number;
  readonly lockToken: string;
  readonly body: Record<string, unknown>;
}

/** Decodes a devicebound topic's property bag. */
export function decodeDevicebound(deviceId: string, topic: string): Record<string, string> {
  const prefix = `devices/${deviceId}/messages/devicebound/`;
  if (!topic.startsWith(prefix)) throw new Error(`not a devicebound topic of ${deviceId}: ${topic}`);
  const properties: Record<string, string> = {};
  for (const pair of topic.slice(prefix.length).split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const key = decodeURIComponent(eq < 0 ? pair : pair.slice(0, eq));
    properties[key] = eq < 0 ? '' : decodeURIComponent(pair.slice(eq + 1));
  }
  return properties;
}

/**
 * A device for C2D tests: a real mqtt.js client subscribed to its devicebound topics and its
 * settlement answers, recording everything it receives.
 */
export class C2dTestDevice {
  readonly received: ReceivedC2d[] = [];
  readonly answers: SettleAnswer[] = [];
  readonly #waiters = new Set<() => void>();

  private constructor(
    readonly deviceId: string,
    readonly client: MqttClient,
  ) {
    client.on('message', (topic, payload) => {
      if (topic.startsWith(`devices/${deviceId}/messages/devicebound/`)) {
        const properties = decodeDevicebound(deviceId, topic);
        this.received.push({
          topic,
          properties,
          body: payload.toString('utf8'),
          messageId: properties['$.mid'] ?? '',
          lockToken: properties['$.lt'] ?? '',
          deliveryCount: Number(properties['$.dc']),
        });
      } else if (topic.startsWith(`devices/${deviceId}/messages/settle/res/`)) {
        const [status, lockToken] = topic.slice(`devices/${deviceId}/messages/settle/res/`.length).split('/');
        this.answers.push({
          status: Number(status),
          lockToken: lockToken ?? '',
          body: JSON.parse(payload.toString('utf8')) as Record<string, unknown>,
        });
      }
      for (const wake of [...this.#waiters]) wake();
    });
  }

  /** Connects (clean session unless told otherwise) and subscribes to devicebound and settlement answers. */
  static async connect(
    endpoints: LocalHubEndpoints,
    credentials: DeviceCredentials,
    options: IClientOptions = {},
  ): Promise<C2dTestDevice> {
    const client = await mqtt.connectAsync(endpoints.mqtt, {
      ...credentials,
      reconnectPeriod: 0,
      ...options,
    });
    const device = new C2dTestDevice(credentials.clientId, client);
    await client.subscribeAsync(
      [settleResponseFilter(credentials.clientId), deviceboundFilter(credentials.clientId)],
      { qos: 1 },
    );
    return device;
  }

  /** Waits until `predicate` holds over what arrived so far. */
  async until<T>(predicate: () => T | undefined | false, what: string, timeoutMs = 20_000): Promise<T> {
    const now = predicate();
    if (now) return now;
    return new Promise<T>((resolve, reject) => {
      const wake = () => {
        const value = predicate();
        if (value) {
          clearTimeout(timer);
          this.#waiters.delete(wake);
          resolve(value);
        }
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(wake);
        reject(
          new Error(
            `${this.deviceId}: timed out waiting for ${what}; received ${JSON.stringify(
              this.received.map((r) => [r.messageId, r.deliveryCount]),
            )}; answers ${JSON.stringify(this.answers.map((a) => a.status))}`,
          ),
        );
      }, timeoutMs);
      this.#waiters.add(wake);
    });
  }

  /** Waits for `count` deliveries in total. */
  async receivedCount(count: number, timeoutMs?: number): Promise<ReceivedC2d[]> {
    return this.until(
      () => (this.received.length >= count ? this.received.slice(0, count) : undefined),
      `${count} deliveries`,
      timeoutMs,
    );
  }

  /** Publishes a settlement and waits for its answer. */
  async settle(outcome: string, lockToken: string, timeoutMs?: number): Promise<SettleAnswer> {
    const before = this.answers.length;
    await this.client.publishAsync(settleTopic(this.deviceId, outcome as 'complete', lockToken), '', {
      qos: 1,
    });
    return this.until(
      () => this.answers.slice(before).find((a) => a.lockToken === lockToken && a.body.outcome === outcome),
      `the answer to ${outcome} ${lockToken}`,
      timeoutMs,
    );
  }

  /**
   * Completes each message in `messageIds` once it arrives. A completion refused as stale (412: the
   * lock lapsed first, as it may on a loaded machine with the tests' short locks) waits for the
   * redelivery and completes that, which is the behaviour at-least-once promises.
   */
  async completeAll(messageIds: readonly string[], timeoutMs = 30_000): Promise<void> {
    for (const messageId of messageIds) {
      let after = 0;
      for (;;) {
        const latest = await this.until(
          () => this.received.filter((m) => m.messageId === messageId && m.deliveryCount > after).at(-1),
          `a delivery of ${messageId} after attempt ${after}`,
          timeoutMs,
        );
        const answer = await this.settle('complete', latest.lockToken, timeoutMs);
        if (answer.status === 200) break;
        if (answer.status !== 412) throw new Error(`completing ${messageId}: ${JSON.stringify(answer.body)}`);
        after = latest.deliveryCount;
      }
    }
  }

  /** Message ids in the order of their first delivery. */
  firstDeliveryOrder(): string[] {
    return [...new Set(this.received.map((m) => m.messageId))];
  }

  async end(): Promise<void> {
    await this.client.endAsync();
  }
}
