import type { FeedbackRecord } from './feedback.ts';
import type { C2dMessage, C2dState } from './message.ts';
import type { SettleOutcome } from './state.ts';

/**
 * The per-device C2D queue with states, lock tokens, delivery counts, expiry and feedback.
 * Every state change is a conditional write on the message's `version`: two racing actors can
 * never both win, and the loser gets a typed `ConflictError` subclass (`StaleLockTokenError`,
 * `ConcurrentUpdateError`), never a silent overwrite.
 *
 * Implementations: `MemoryDeliveryLedger` (`functions/adapters/ledger-memory.ts`) and
 * `DynamoDbDeliveryLedger` (`functions/adapters/ledger-dynamodb.ts`), both verified by
 * `test/unit/ledger-contract.test.ts`.
 *
 * @example
 * await ledger.enqueue(deviceId, createMessage(deviceId, request, { now, config }), { maxQueueDepth: 50 });
 * for (const m of await ledger.nextDeliverable(deviceId, { now, maxInFlight: 5, limit: 5 })) {
 *   const locked = await ledger.markDelivered(m, { now, lockTimeoutMs: 60_000 });
 *   await publisher.publish(deviceId, locked); // carries locked.lockToken
 * }
 */
export interface DeliveryLedger {
  /**
   * Adds a message (built by `createMessage`) at the end of the device's queue. Fails with
   * `QueueFullError` when the device already holds `maxQueueDepth` active messages and with
   * `DuplicateMessageIdError` when the device already has a message with this id.
   */
  enqueue(deviceId: string, message: C2dMessage, opts: EnqueueOptions): Promise<C2dMessage>;
  /**
   * What a delivery pass should do: the next deliverable messages (as {@link nextDeliverable}),
   * whether more deliverable messages wait beyond the room in flight, and the messages in flight.
   * One read of the device's active messages.
   */
  deliveryPlan(
    deviceId: string,
    opts: { now: number; maxInFlight: number; limit: number },
  ): Promise<DeliveryPlan>;
  /**
   * Marks an `Invisible` message (as read) so that its settlement or lock lapse runs a delivery
   * pass. Conditional on its version: `ConcurrentUpdateError` when it changed since the read.
   */
  wake(message: C2dMessage, now: number): Promise<C2dMessage>;
  /**
   * The next `Enqueued`, unexpired messages in queue order, at most `limit` and at most
   * `maxInFlight` minus the messages already `Invisible`. Reads only; lock each with `markDelivered`.
   * An `Invisible` message whose lock has lapsed still counts as in flight until the sweep releases
   * it, so with `maxInFlight: 1` order holds strictly.
   */
  nextDeliverable(
    deviceId: string,
    opts: { now: number; maxInFlight: number; limit: number },
  ): Promise<C2dMessage[]>;
  /**
   * Locks an `Enqueued` message, as `nextDeliverable` returned it, for delivery: `Invisible`,
   * `deliveryCount + 1`, a new lock token, `lockedUntil = now + lockTimeoutMs`. One conditional write
   * on the version read, no re-read: of two deliverers only one gets the lock, the other (and anyone
   * whose message changed or vanished since the read) a `ConcurrentUpdateError`.
   */
  markDelivered(
    message: C2dMessage,
    opts: { now: number; lockTimeoutMs: number; wake?: boolean },
  ): Promise<C2dMessage>;
  /**
   * Completes, rejects or abandons the message the lock token holds, in `deviceId`'s queue only.
   * `MessageNotFoundError` when the token names no message of this device, `StaleLockTokenError`
   * when the lock was lost; either way nothing changes. A complete or reject whose sender wants no
   * feedback for it is one conditional write that reads nothing; only when its condition fails is
   * the message read (the old item DynamoDB returns with the failure) to decide.
   */
  settle(deviceId: string, lockToken: string, outcome: SettleOutcome, now: number): Promise<SettleResult>;
  /** Entries of the due index due at or before `now`, earliest first (reads only). */
  dueMessages(opts: { now: number; limit: number }): Promise<DueEntry[]>;
  /**
   * The schedule's sweep over the due index: releases expired locks (back to `Enqueued`, or
   * `DeadLettered` when the delivery count is spent), expires messages past `expiresAt`, writes
   * feedback a crash left owed, and deletes final messages whose retention has ended.
   */
  releaseExpiredLocks(opts: { now: number; limit: number }): Promise<SweepReport>;
  /** Moves every active message of the device to `Purged` (with feedback where asked). */
  purge(deviceId: string, now: number): Promise<PurgeResult>;
  /**
   * The message and its state, active or final (within retention), or `undefined`. A final message
   * past its retention counts as gone even before the table's TTL has deleted it.
   */
  get(deviceId: string, messageId: string, now?: number): Promise<C2dMessage | undefined>;
  /**
   * Unacknowledged feedback records, roughly in the order they arose. Pass the returned cursor
   * back to continue; an exhausted read still returns a cursor to poll with later.
   */
  readFeedback(opts: { limit: number; cursor?: string }): Promise<FeedbackPage>;
  /** Removes handled feedback records by id; unknown ids are ignored. Returns how many ids were valid. */
  acknowledgeFeedback(ids: readonly string[]): Promise<number>;
}

/** How {@link DeliveryLedger.enqueue} adds a message. */
export interface EnqueueOptions {
  readonly maxQueueDepth: number;
  /**
   * The device is connected: lock the message as it is written (one write, no second pass) when
   * nothing deliverable is ahead of it and there is room in flight. The caller then publishes it.
   */
  readonly deliver?: { readonly lockTimeoutMs: number; readonly maxInFlight: number };
}

/** What a delivery pass should lock, from one read of the device's active messages. */
export interface DeliveryPlan {
  /** The messages to lock, in queue order. */
  readonly next: C2dMessage[];
  /** More deliverable messages wait than there is room for (the last lock should carry `wake`). */
  readonly waiting: boolean;
  /** The messages in flight (`Invisible`). */
  readonly inFlight: C2dMessage[];
}

/** What a settlement did. */
export interface SettleResult {
  /** The message after the settlement (`Completed`, `Rejected`, `Enqueued` or `DeadLettered`). */
  readonly message: C2dMessage;
  /**
   * Something may be deliverable now: the message is `Enqueued` again, or messages waited behind it
   * for room (it carried `wake`). When false, no delivery pass is needed.
   */
  readonly wake?: boolean;
  /** The feedback record written, when the sender asked for one. */
  readonly feedback?: FeedbackRecord;
}

/** One entry of the due index. */
export interface DueEntry {
  readonly deviceId: string;
  readonly messageId: string;
  readonly queueKey: string;
  readonly dueAt: number;
}

/** One state change made by the sweep. */
export interface StateChange {
  readonly deviceId: string;
  readonly messageId: string;
  readonly from: C2dState;
  readonly to: C2dState;
  /** The message left `Invisible` carrying `wake`: run a delivery pass for its device. */
  readonly wake?: boolean;
}

/** What one sweep did. */
export interface SweepReport {
  /** State changes, in due order. Devices with a change `to: 'Enqueued'` have something to redeliver. */
  readonly changed: StateChange[];
  /** Feedback records written (for the changes above and for repairs). */
  readonly feedback: FeedbackRecord[];
  /** Final messages deleted at the end of their retention. */
  readonly deleted: number;
  /** Due entries another actor changed first (picked up again next sweep if still due). */
  readonly conflicts: number;
}

/** What a purge did. */
export interface PurgeResult {
  readonly purged: number;
  readonly messageIds: string[];
}

/** One page of feedback. */
export interface FeedbackPage {
  readonly records: FeedbackRecord[];
  readonly cursor: string;
}
