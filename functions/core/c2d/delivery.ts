/**
 * Cloud-to-device delivery over the ledger: lock the next messages of a device and publish them on
 * its devicebound topic; take settlements from the device and answer them; sweep lapsed locks and
 * expiries and redeliver. Pure: the ledger, the publisher and the connection check are ports.
 *
 * Ordering of a delivery: lock (conditional write, counts the attempt) → publish. A crash between
 * the two leaves the message locked; when the lock lapses the sweep releases it and it is delivered
 * again. A publish that fails is left to the same path. So every accepted message is delivered
 * until it is settled, expires or runs out of attempts (dead-lettered): at least once, bounded.
 */

import { ConflictError, HubError, NotFoundError, ValidationError } from '../errors.ts';
import type { Log } from '../ports.ts';
import type { C2dSettings } from './config.ts';
import { StaleLockTokenError } from './errors.ts';
import { LOCK_TOKEN_LENGTH } from './keys.ts';
import type { DeliveryLedger, SweepReport } from './ledger.ts';
import type { C2dMessage } from './message.ts';
import type { SettleOutcome } from './state.ts';
import { deviceboundTopic, SETTLE_OUTCOMES, settleResponseTopic } from './topics.ts';

/** Publishes to one device topic with QoS 1 (IoT data plane `Publish`). */
export interface DevicePublisher {
  publish(topic: string, payload: Uint8Array): Promise<void>;
}

/** Longest MQTT topic AWS IoT Core accepts, in UTF-8 bytes; the local broker enforces the same for C2D. */
export const MAX_TOPIC_BYTES = 256;

const LOCK_TOKEN_ROOM = 'x'.repeat(LOCK_TOKEN_LENGTH);

/**
 * Percent-encodes a property-bag name or value, leaving the characters that are safe in an MQTT topic
 * and mean nothing to the bag (`$`, `:` and RFC 3986's unreserved ones) as they are, because every
 * byte of the topic counts against IoT Core's 256. `&`, `=`, `%`, `/`, `+`, `#`, space, controls and
 * non-ASCII are encoded; any URL decoder reads the result.
 */
export function encodeBagPart(text: string): string {
  return encodeURIComponent(text).replace(/%24|%3A/g, (m) => (m === '%24' ? '$' : ':'));
}

/**
 * The property bag of a delivered message, URL-encoded like IoT Hub's devicebound topics:
 * `$.mid`, `$.lt` (lock token: settle with it), `$.exp` (absolute expiry), `$.cid`, `$.uid`, `$.ct`,
 * `$.ce`, `iothub-ack` (when asked), `$.dc` (delivery count, 1 on the first delivery), then the
 * application properties. IoT Hub's `$.to` is left out: it repeats the topic, and topic bytes are scarce.
 */
export function deviceboundPropertyBag(message: C2dMessage, lockToken: string): string {
  const pairs: [string, string][] = [
    ['$.mid', message.messageId],
    ['$.lt', lockToken],
    ['$.exp', new Date(message.expiresAt).toISOString()],
  ];
  if (message.correlationId !== undefined) pairs.push(['$.cid', message.correlationId]);
  if (message.userId !== undefined) pairs.push(['$.uid', message.userId]);
  if (message.contentType !== undefined) pairs.push(['$.ct', message.contentType]);
  if (message.contentEncoding !== undefined) pairs.push(['$.ce', message.contentEncoding]);
  if (message.ack !== 'none') pairs.push(['iothub-ack', message.ack]);
  pairs.push(['$.dc', String(message.deliveryCount)]);
  for (const [name, value] of Object.entries(message.properties)) pairs.push([name, value]);
  return pairs.map(([k, v]) => `${encodeBagPart(k)}=${encodeBagPart(v)}`).join('&');
}

/**
 * Refuses, at send time, a message whose devicebound topic could not be published: AWS IoT Core
 * caps topics at 256 bytes, and the property bag travels in the topic. Thrown as a 400 naming the
 * limit, so nothing is accepted that could never be delivered.
 */
export function assertDeliverable(message: C2dMessage): void {
  const bytes = Buffer.byteLength(
    deviceboundTopic(
      message.deviceId,
      deviceboundPropertyBag({ ...message, deliveryCount: message.maxDeliveryCount }, LOCK_TOKEN_ROOM),
    ),
    'utf8',
  );
  if (bytes > MAX_TOPIC_BYTES) {
    throw new ValidationError(
      'C2dTopicTooLong',
      `properties: the devicebound topic would be ${bytes} bytes with the message id, properties and lock token; ` +
        `MQTT topics may be at most ${MAX_TOPIC_BYTES} bytes (AWS IoT Core), so shorten the message id or properties`,
      { field: 'properties', limit: MAX_TOPIC_BYTES, bytes },
    );
  }
}

/** What one delivery pass did for one device. */
export interface DeliveryReport {
  readonly deviceId: string;
  /** Messages locked and published, in order. */
  readonly delivered: string[];
  /** Messages locked but whose publish failed (the lock lapses and they are delivered again). */
  readonly failed: string[];
}

/** The answer to a settlement, as published to the device and logged. */
export interface SettlementAnswer {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

/** What {@link C2dDelivery} needs. */
export interface C2dDeliveryDeps {
  readonly ledger: DeliveryLedger;
  readonly publisher: DevicePublisher;
  readonly settings: Pick<C2dSettings, 'lockTimeoutMs' | 'maxInFlight'>;
  readonly log: Log;
  /** @default Date.now */
  readonly now?: () => number;
}

const MAX_ROUNDS = 3;

/** Delivery, settlement and sweep of C2D messages for the functions that run them. */
export class C2dDelivery {
  readonly #deps: C2dDeliveryDeps;
  readonly #now: () => number;

  constructor(deps: C2dDeliveryDeps) {
    this.#deps = deps;
    this.#now = deps.now ?? Date.now;
  }

  /**
   * Locks and publishes the device's next messages, in queue order, up to `maxInFlight` unsettled.
   * Call it when the device can receive (it connected or subscribed; a message was sent, settled or
   * released). A racing deliverer that locked a message first makes this pass read again; a
   * publish failure stops the pass so order holds (the lock lapses and the sweep redelivers).
   */
  async deliver(deviceId: string): Promise<DeliveryReport> {
    return (await this.#deliver(deviceId)).report;
  }

  /** A delivery pass; also returns the messages it locked, as written. */
  async #deliver(deviceId: string): Promise<{ report: DeliveryReport; locked: C2dMessage[] }> {
    const { ledger, settings } = this.#deps;
    const delivered: string[] = [];
    const failed: string[] = [];
    const locked: C2dMessage[] = [];
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const now = this.#now();
      const plan = await ledger.deliveryPlan(deviceId, {
        now,
        maxInFlight: settings.maxInFlight,
        limit: settings.maxInFlight,
      });
      let raced = false;
      if (plan.next.length === 0) {
        if (!plan.waiting) break;
        // No room, but messages wait: make sure a message in flight wakes a pass when it leaves.
        if (plan.inFlight.some((m) => m.wake === true)) break;
        const last = plan.inFlight.at(-1);
        if (last === undefined) break;
        try {
          await ledger.wake(last, now);
          break;
        } catch (error) {
          if (error instanceof ConflictError || error instanceof NotFoundError) continue; // it moved: read again
          throw error;
        }
      }
      for (const [i, message] of plan.next.entries()) {
        let lock: C2dMessage;
        try {
          lock = await ledger.markDelivered(message, {
            now,
            lockTimeoutMs: settings.lockTimeoutMs,
            // The last lock of a pass that leaves messages waiting wakes the next pass when it settles.
            wake: plan.waiting && i === plan.next.length - 1,
          });
        } catch (error) {
          if (error instanceof ConflictError || error instanceof NotFoundError) {
            raced = true; // another deliverer, a purge or a settlement got there first: read again
            break;
          }
          throw error;
        }
        locked.push(lock);
        if (!(await this.#publish(deviceId, lock))) {
          failed.push(lock.messageId);
          return { report: { deviceId, delivered, failed }, locked };
        }
        delivered.push(lock.messageId);
      }
      if (!raced) break;
    }
    return { report: { deviceId, delivered, failed }, locked };
  }

  /**
   * Accepts a message for the device (the service API's send) and, when the device is connected,
   * delivers it: locked as it is written when nothing is ahead of it and there is room, then
   * published; otherwise a delivery pass in queue order. Returns the message as stored now, for the
   * sender's answer, without reading it again.
   */
  async send(
    deviceId: string,
    message: C2dMessage,
    opts: { maxQueueDepth: number; connected: boolean },
  ): Promise<C2dMessage> {
    const { ledger, settings, log } = this.#deps;
    const stored = await ledger.enqueue(deviceId, message, {
      maxQueueDepth: opts.maxQueueDepth,
      ...(opts.connected
        ? { deliver: { lockTimeoutMs: settings.lockTimeoutMs, maxInFlight: settings.maxInFlight } }
        : {}),
    });
    if (!opts.connected) return stored;
    try {
      if (stored.state === 'Invisible') {
        await this.#publish(deviceId, stored);
        return stored;
      }
      const { locked } = await this.#deliver(deviceId);
      return locked.find((m) => m.queueKey === stored.queueKey) ?? stored;
    } catch (error) {
      // Accepted is accepted: the device's next connect or subscribe (or the sweep) delivers it.
      log.warn('delivery right after send failed', {
        deviceId,
        messageId: stored.messageId,
        error: describe(error),
      });
      return stored;
    }
  }

  /** Publishes a locked message; false (logged) when the publish failed and the lock must lapse. */
  async #publish(deviceId: string, locked: C2dMessage): Promise<boolean> {
    const topic = deviceboundTopic(deviceId, deviceboundPropertyBag(locked, locked.lockToken ?? ''));
    try {
      await this.#deps.publisher.publish(topic, locked.body);
      return true;
    } catch (error) {
      this.#deps.log.warn('c2d publish failed; the message is delivered again when its lock lapses', {
        deviceId,
        messageId: locked.messageId,
        error: describe(error),
      });
      return false;
    }
  }

  /**
   * Settles the message a lock token holds and answers the device on its settlement response topic,
   * then delivers what the settlement made room for. `deviceId` is the authenticated identity; a
   * lock token of another device's message is simply not found in this device's queue.
   */
  async settle(deviceId: string, outcome: string, lockToken: string): Promise<SettlementAnswer> {
    const { answer, wake } = await this.#settle(deviceId, outcome, lockToken);
    try {
      await this.#deps.publisher.publish(
        settleResponseTopic(deviceId, answer.status, lockToken),
        new TextEncoder().encode(JSON.stringify(answer.body)),
      );
    } catch (error) {
      this.#deps.log.warn('could not answer a settlement', { deviceId, lockToken, error: describe(error) });
    }
    // Only when the settlement left something to deliver (see `C2dMessage.wake`): no read otherwise.
    if (answer.status === 200 && wake) await this.deliver(deviceId);
    return answer;
  }

  async #settle(
    deviceId: string,
    outcome: string,
    lockToken: string,
  ): Promise<{ answer: SettlementAnswer; wake: boolean }> {
    if (!(SETTLE_OUTCOMES as readonly string[]).includes(outcome)) {
      return {
        wake: false,
        answer: {
          status: 400,
          body: {
            status: 400,
            code: 'InvalidSettlement',
            message: `outcome '${outcome}' is not one of ${SETTLE_OUTCOMES.join(', ')}`,
            outcome,
            lockToken,
          },
        },
      };
    }
    try {
      const { message, wake } = await this.#deps.ledger.settle(
        deviceId,
        lockToken,
        outcome as SettleOutcome,
        this.#now(),
      );
      return {
        wake: wake !== false,
        answer: {
          status: 200,
          body: { status: 200, outcome, lockToken, messageId: message.messageId, state: message.state },
        },
      };
    } catch (error) {
      if (
        !(error instanceof HubError) ||
        !(error instanceof NotFoundError || error instanceof ConflictError)
      ) {
        throw error;
      }
      // 412 for a lock token that no longer holds the message, as IoT Hub answers it.
      const status = error instanceof NotFoundError ? 404 : error instanceof StaleLockTokenError ? 412 : 409;
      this.#deps.log.info('settlement refused', { deviceId, outcome, code: error.code });
      return {
        wake: false,
        answer: { status, body: { status, code: error.code, message: error.message, outcome, lockToken } },
      };
    }
  }

  /**
   * One sweep: releases lapsed locks, expires and dead-letters, repairs owed feedback; then delivers
   * again to each connected device that has a released message. `isConnected` keeps redelivery from
   * spending attempts on devices that are away (they get their queue when they connect).
   */
  async sweep(opts: {
    limit: number;
    isConnected: (deviceId: string) => Promise<boolean>;
  }): Promise<{ report: SweepReport; deliveries: DeliveryReport[] }> {
    const report = await this.#deps.ledger.releaseExpiredLocks({ now: this.#now(), limit: opts.limit });
    // Released messages, and room made by a message that had others waiting behind it.
    const released = new Set(
      report.changed.filter((c) => c.to === 'Enqueued' || c.wake === true).map((c) => c.deviceId),
    );
    const deliveries: DeliveryReport[] = [];
    for (const deviceId of released) {
      try {
        if (await opts.isConnected(deviceId)) deliveries.push(await this.deliver(deviceId));
      } catch (error) {
        this.#deps.log.warn('redelivery after sweep failed; the next sweep or connect retries', {
          deviceId,
          error: describe(error),
        });
      }
    }
    return { report, deliveries };
  }
}

function describe(error: unknown): Record<string, unknown> | string {
  return error instanceof Error ? { name: error.name, message: error.message } : String(error);
}
