import type { FeedbackRecord } from './feedback.ts';
import type { DueRow, DueSlot } from './keys.ts';
import type { AckMode, C2dMessage } from './message.ts';

/** What {@link LedgerStore.settleLocked} settles: a locked message, by its lock token. */
export interface SettleLockedInput {
  readonly deviceId: string;
  readonly queueKey: string;
  readonly lockToken: string;
  readonly state: 'Completed' | 'Rejected';
  readonly now: number;
  readonly retainUntil: number;
  readonly quietAcks: readonly AckMode[];
}

/** The message before the settlement, or, when the condition failed, as it is (`undefined`: absent). */
export type SettleLockedResult =
  | { ok: true; before: C2dMessage }
  | { ok: false; current: C2dMessage | undefined };

/**
 * Item-level storage under the ledger: single-item conditional reads and writes and key-range
 * queries, nothing more (no transactions, no scans), so DynamoDB, dynalite and memory all fit.
 * `LedgerEngine` builds every ledger rule on top of it; adapters implement only this.
 * Conditional writes return `false` when their condition fails and throw only on real errors.
 */
export interface LedgerStore {
  /** Strongly consistent read of one message. */
  getMessage(deviceId: string, queueKey: string): Promise<C2dMessage | undefined>;
  /** Active (`Enqueued` / `Invisible`) messages of the device in queue order, strongly consistent. */
  listActive(deviceId: string): Promise<C2dMessage[]>;
  /** Number of active messages of the device, strongly consistent. */
  countActive(deviceId: string): Promise<number>;
  /** Every message of the device with this message id (the pointer-less fallback of `get`). */
  findByMessageId(deviceId: string, messageId: string): Promise<C2dMessage[]>;
  /** Writes a new message if no item has its key. */
  insertMessage(message: C2dMessage, due: DueSlot | undefined): Promise<boolean>;
  /**
   * Writes the state-machine-owned fields of `next` (state, counts, lock, final time, pending
   * feedback, version, due slot) if the stored version is still `expectedVersion`.
   */
  updateMessage(expectedVersion: number, next: C2dMessage, due: DueSlot | undefined): Promise<boolean>;
  /**
   * Completes or rejects a locked message in one conditional write, without reading it: applies
   * only if the message is `Invisible` under `lockToken`, the lock holds at `now`, and its `ack` is
   * one of `quietAcks` (no feedback owed). Then: `state`, `finalAt = now`, `retainUntil`, version + 1,
   * lock, check time, feedback flag, `wake` and due slot removed. Returns the message as it was before
   * (`ok: true`), or, when the condition failed, the message as it is (`undefined` if absent): the
   * old item DynamoDB returns with the failure, or a read where the store cannot return it.
   */
  settleLocked(input: SettleLockedInput): Promise<SettleLockedResult>;
  /** Deletes a message if its stored version is still `expectedVersion`. */
  deleteMessage(deviceId: string, queueKey: string, expectedVersion: number): Promise<boolean>;
  /** The queue key the message id points to. */
  getPointer(deviceId: string, messageId: string): Promise<string | undefined>;
  /** Creates the pointer if none exists; `retainUntil` (epoch seconds) is its TTL. */
  insertPointer(deviceId: string, messageId: string, queueKey: string, retainUntil: number): Promise<boolean>;
  /** Repoints the pointer (and its TTL) if it still points to `expectedQueueKey`. */
  swapPointer(
    deviceId: string,
    messageId: string,
    expectedQueueKey: string,
    queueKey: string,
    retainUntil: number,
  ): Promise<boolean>;
  /** Deletes the pointer if it still points to `expectedQueueKey`. */
  deletePointer(deviceId: string, messageId: string, expectedQueueKey: string): Promise<boolean>;
  /** Up to `limit` rows of one due-index shard with `gsi1sk < beforeSk`, ascending. */
  queryDue(duePk: string, beforeSk: string, limit: number): Promise<DueRow[]>;
  /** Writes a feedback record if none exists at its key. */
  insertFeedback(row: FeedbackRow): Promise<boolean>;
  /** Up to `limit` feedback rows of one shard with `sk > afterSk`, ascending. */
  queryFeedback(pk: string, afterSk: string | undefined, limit: number): Promise<FeedbackRow[]>;
  /** Deletes a feedback record (no-op when absent). */
  deleteFeedback(pk: string, sk: string): Promise<void>;
}

/** A feedback record with its storage keys. */
export interface FeedbackRow {
  readonly pk: string;
  readonly sk: string;
  readonly record: FeedbackRecord;
}
