/**
 * The ledger's rules, written once over the narrow {@link LedgerStore}; adapters supply storage.
 *
 * Crash safety without transactions (dynalite has none): every state change is ONE conditional
 * write of the message item, and everything else hangs off that item:
 *
 * - Feedback. The state change that makes a message final also sets `pendingFeedback` and puts the
 *   message in the due index at `finalAt` (due at once). Then the feedback record is written with
 *   put-if-absent at a key derived from the message alone (`finalAt`, device, queue key, status),
 *   then `pendingFeedback` is cleared (conditional). A crash, throttle or timeout between the two
 *   writes leaves the message final, owing feedback, and due: the next sweep
 *   (`releaseExpiredLocks`) sees the flag and repeats the put, which lands on the same key, so the
 *   record is neither lost nor duplicated in the ledger. (If a reader acknowledged the record in
 *   the instant before the flag was cleared and the process then crashed, the repair writes it
 *   again: feedback is at least once, and `originalMessageId` + `status` identify duplicates.)
 * - Message-id pointer. `enqueue` writes the message first, then the pointer `mid#{messageId}`.
 *   A crash in between leaves a deliverable message without a pointer: it is delivered, settled
 *   and swept normally; `get` falls back to a query of the device's partition. A pointer to a
 *   missing message (retention deleted it) is stale and is replaced by the next enqueue of that id.
 * - Retention. A final message gets `retainUntil` (finalAt + retention, epoch seconds), the table's
 *   TTL attribute, and leaves the due index: TTL deletes it (the local hub's `local/ttl.ts` on
 *   dynalite); reads treat it as gone from `retainUntil` on. Pointers carry a later `retainUntil`,
 *   and a pointer whose message is gone or past retention is taken over by the next send of that id.
 *   (Messages finished before TTL took over still have a due slot; the sweep deletes those.)
 *
 * Queue depth is checked with a strongly consistent count before the write; concurrent sends to
 * one device can overshoot `maxQueueDepth` by the number of senders racing (no transactions, and
 * a counter item would drift on crashes). Sequential sends are exact.
 */

import { ValidationError } from '../errors.ts';
import {
  ConcurrentUpdateError,
  DuplicateMessageIdError,
  MessageNotFoundError,
  QueueFullError,
  StaleLockTokenError,
} from './errors.ts';
import { FEEDBACK_STATUS_CODES, type FeedbackRecord, feedbackFor } from './feedback.ts';
import {
  DEFAULT_SHARDS,
  type DueRow,
  type DueSlot,
  decodeCursor,
  dueBefore,
  duePk,
  dueSlot,
  encodeCursor,
  feedbackId,
  feedbackPk,
  feedbackSk,
  isoOf,
  newLockToken,
  parseFeedbackId,
  queueKeyOfLockToken,
  shardOf,
} from './keys.ts';
import type {
  DeliveryLedger,
  DeliveryPlan,
  DueEntry,
  EnqueueOptions,
  FeedbackPage,
  PurgeResult,
  SettleResult,
  StateChange,
  SweepReport,
} from './ledger.ts';
import { type AckMode, type C2dMessage, isFinal } from './message.ts';
import { type C2dEvent, dueAtOf, markFeedbackWritten, type SettleOutcome, transition } from './state.ts';
import type { FeedbackRow, LedgerStore } from './store.ts';

/** Tuning of a {@link LedgerEngine}. Shards are a storage contract: keep them fixed per table. */
export interface LedgerEngineOptions {
  /** Shards of the due index and the feedback list. @default 8 */
  readonly shards?: number;
  /** How long final messages stay readable through `get`. @default 86_400_000 (1 day) */
  readonly finalRetentionMs?: number;
  /** Read-decide-write rounds before a contended settle or purge gives up. @default 5 */
  readonly maxAttempts?: number;
  /**
   * Where feedback records also go (the feedback endpoint stream), called after the record is in the
   * ledger and before the message stops owing it: a failure or crash in between leaves the message
   * owing feedback, and the sweep calls it again. At least once, so consumers drop duplicates by `id`.
   */
  readonly feedbackSink?: (record: FeedbackRecord) => Promise<void>;
  /**
   * Delivery checks of a queued message back off with its age, from this... @default 10_000
   */
  readonly recheckMinMs?: number;
  /** ...to this. @default 600_000 (10 minutes) */
  readonly recheckMaxMs?: number;
}

/** A {@link DeliveryLedger} over any {@link LedgerStore}. */
export class LedgerEngine implements DeliveryLedger {
  readonly #store: LedgerStore;
  readonly #shards: number;
  readonly #retentionMs: number;
  readonly #maxAttempts: number;
  readonly #feedbackSink: ((record: FeedbackRecord) => Promise<void>) | undefined;
  readonly #recheckMinMs: number;
  readonly #recheckMaxMs: number;

  constructor(store: LedgerStore, options: LedgerEngineOptions = {}) {
    this.#store = store;
    this.#shards = options.shards ?? DEFAULT_SHARDS;
    this.#retentionMs = options.finalRetentionMs ?? 86_400_000;
    this.#maxAttempts = options.maxAttempts ?? 5;
    this.#feedbackSink = options.feedbackSink;
    this.#recheckMinMs = options.recheckMinMs ?? 10_000;
    this.#recheckMaxMs = options.recheckMaxMs ?? 600_000;
    if (!Number.isInteger(this.#shards) || this.#shards < 1) {
      throw new ValidationError(
        'InvalidLedgerOptions',
        `shards must be a positive integer, got ${this.#shards}`,
        {
          shards: this.#shards,
        },
      );
    }
  }

  async enqueue(deviceId: string, message: C2dMessage, opts: EnqueueOptions): Promise<C2dMessage> {
    if (message.deviceId !== deviceId || message.state !== 'Enqueued') {
      throw new ValidationError(
        'InvalidC2dMessage',
        'message must be a new Enqueued message for this device',
        {
          deviceId,
          messageDeviceId: message.deviceId,
          state: message.state,
        },
      );
    }
    // One read serves the depth check and the decision to lock the message as it is written.
    const active = await this.#store.listActive(deviceId);
    const depth = active.length;
    if (depth >= opts.maxQueueDepth) {
      throw new QueueFullError(`device queue holds the maximum of ${opts.maxQueueDepth} messages`, {
        deviceId,
        limit: opts.maxQueueDepth,
        depth,
      });
    }
    let stored = message;
    const now = message.enqueuedAt;
    if (opts.deliver !== undefined) {
      const inFlight = active.filter((m) => m.state === 'Invisible').length;
      const ahead = active.some((m) => deliverable(m, now));
      if (!ahead && inFlight < opts.deliver.maxInFlight) {
        const locked = transition(message, {
          type: 'deliver',
          now,
          lockTimeoutMs: opts.deliver.lockTimeoutMs,
          lockToken: newLockToken(message.queueKey),
        });
        if (locked.ok) stored = locked.next;
      }
    }
    if (!(await this.#store.insertMessage(stored, this.#slot(stored)))) {
      throw new ConcurrentUpdateError('queue key already taken', { deviceId, queueKey: message.queueKey });
    }
    await this.#claimPointer(stored);
    return stored;
  }

  async deliveryPlan(
    deviceId: string,
    opts: { now: number; maxInFlight: number; limit: number },
  ): Promise<DeliveryPlan> {
    const active = await this.#store.listActive(deviceId);
    const inFlight = active.filter((m) => m.state === 'Invisible');
    const room = Math.max(0, Math.min(opts.limit, opts.maxInFlight - inFlight.length));
    const ready = active.filter((m) => deliverable(m, opts.now));
    return { next: ready.slice(0, room), waiting: ready.length > room, inFlight };
  }

  async wake(message: C2dMessage, now: number): Promise<C2dMessage> {
    const result = transition(message, { type: 'wake', now });
    if (!result.ok) throw result.error;
    if (!(await this.#store.updateMessage(message.version, result.next, this.#slot(result.next)))) {
      throw new ConcurrentUpdateError('the message changed or went away since it was read', {
        deviceId: message.deviceId,
        messageId: message.messageId,
        expectedVersion: message.version,
      });
    }
    return result.next;
  }

  async nextDeliverable(
    deviceId: string,
    opts: { now: number; maxInFlight: number; limit: number },
  ): Promise<C2dMessage[]> {
    return (await this.deliveryPlan(deviceId, opts)).next;
  }

  async markDelivered(
    message: C2dMessage,
    opts: { now: number; lockTimeoutMs: number; wake?: boolean },
  ): Promise<C2dMessage> {
    const { deviceId, messageId } = message;
    const event: C2dEvent = {
      type: 'deliver',
      now: opts.now,
      lockTimeoutMs: opts.lockTimeoutMs,
      lockToken: newLockToken(message.queueKey),
      ...(opts.wake === true ? { wake: true } : {}),
    };
    const result = transition(message, event);
    if (!result.ok) throw result.error;
    if (!(await this.#store.updateMessage(message.version, result.next, this.#slot(result.next)))) {
      throw new ConcurrentUpdateError('the message changed or went away since it was read', {
        deviceId,
        messageId,
        expectedVersion: message.version,
      });
    }
    return result.next;
  }

  async settle(
    deviceId: string,
    lockToken: string,
    outcome: SettleOutcome,
    now: number,
  ): Promise<SettleResult> {
    const queueKey = queueKeyOfLockToken(lockToken);
    if (queueKey === undefined) {
      throw new MessageNotFoundError('lock token names no message', {
        deviceId,
        lockToken,
        reason: 'malformed',
      });
    }
    const event = { type: outcome, lockToken, now } as const;
    let read: { message: C2dMessage | undefined } | undefined;
    if (outcome !== 'abandon') {
      // The common case in one write: the lock holds and the sender wants no feedback for this outcome.
      const state = outcome === 'complete' ? 'Completed' : 'Rejected';
      const written = await this.#store.settleLocked({
        deviceId,
        queueKey,
        lockToken,
        state,
        now,
        retainUntil: this.#retainUntil(now),
        quietAcks: ACK_MODES.filter((ack) => feedbackFor(ack, state) === undefined),
      });
      if (written.ok) {
        const result = transition(written.before, event);
        if (!result.ok) throw result.error; // cannot happen: the write's condition is the transition's
        return { message: this.#retained(result.next), wake: written.before.wake === true };
      }
      read = { message: written.current };
    }
    for (let attempt = 0; attempt < this.#maxAttempts; attempt++) {
      const message = read !== undefined ? read.message : await this.#store.getMessage(deviceId, queueKey);
      read = undefined;
      if (message === undefined) {
        throw new MessageNotFoundError('lock token names no message of this device', { deviceId, lockToken });
      }
      const result = transition(message, event);
      if (!result.ok) throw result.error;
      const applied = await this.#apply(message, result.next);
      if (applied !== undefined) {
        const wake = message.wake === true || applied.message.state === 'Enqueued';
        return applied.feedback === undefined
          ? { message: applied.message, wake }
          : { message: applied.message, feedback: applied.feedback, wake };
      }
      // Lost the race: the re-read decides (usually a StaleLockTokenError now).
    }
    throw new StaleLockTokenError('message kept changing during settlement', { deviceId, lockToken });
  }

  async dueMessages(opts: { now: number; limit: number }): Promise<DueEntry[]> {
    const rows = await this.#readDue(opts.now, opts.limit);
    return rows.map(({ deviceId, messageId, queueKey, dueAt }) => ({ deviceId, messageId, queueKey, dueAt }));
  }

  async releaseExpiredLocks(opts: { now: number; limit: number }): Promise<SweepReport> {
    const { now } = opts;
    const changed: StateChange[] = [];
    const feedback: FeedbackRecord[] = [];
    let deleted = 0;
    let conflicts = 0;
    for (const row of await this.#readDue(now, opts.limit)) {
      const message = await this.#store.getMessage(row.deviceId, row.queueKey);
      if (message === undefined) continue;
      if (isFinal(message.state)) {
        if (message.pendingFeedback !== undefined) {
          let written: { record: FeedbackRecord; cleared: boolean };
          try {
            written = await this.#writeFeedback(message);
          } catch {
            // Still owed and still due (a feedback sink or store failure): the next sweep tries again.
            // One failing repair must not stop this sweep's lock releases and expiries.
            continue;
          }
          feedback.push(written.record);
          if (!written.cleared) conflicts++;
        } else if (now >= (message.finalAt ?? message.enqueuedAt) + this.#retentionMs) {
          // Only messages finished before TTL took over retention still have this due slot.
          await this.#store.deletePointer(message.deviceId, message.messageId, message.queueKey);
          if (await this.#store.deleteMessage(message.deviceId, message.queueKey, message.version)) deleted++;
          else conflicts++;
        }
        continue;
      }
      const lockGone = message.state === 'Invisible' && now >= (message.lockedUntil ?? 0);
      const expired = now >= message.expiresAt;
      const checkDue = message.state === 'Enqueued' && now >= (message.checkAt ?? Number.POSITIVE_INFINITY);
      if (!lockGone && !expired && !checkDue) continue; // the index was behind the item
      const event: C2dEvent = expired
        ? { type: 'expire', now }
        : lockGone
          ? { type: 'lockExpired', now }
          : { type: 'recheck', now, nextCheckAt: now + this.#recheckDelay(message, now) };
      const result = transition(message, event);
      if (!result.ok) continue;
      const applied = await this.#apply(message, result.next);
      if (applied === undefined) {
        conflicts++;
        continue;
      }
      changed.push({
        deviceId: message.deviceId,
        messageId: message.messageId,
        from: message.state,
        to: result.next.state,
        ...(message.wake === true ? { wake: true } : {}),
      });
      if (applied.feedback !== undefined) feedback.push(applied.feedback);
    }
    return { changed, feedback, deleted, conflicts };
  }

  async purge(deviceId: string, now: number): Promise<PurgeResult> {
    const messageIds: string[] = [];
    for (const first of await this.#store.listActive(deviceId)) {
      let message: C2dMessage | undefined = first;
      for (let attempt = 0; message !== undefined && !isFinal(message.state); attempt++) {
        if (attempt >= this.#maxAttempts) {
          throw new ConcurrentUpdateError('message kept changing during purge', {
            deviceId,
            messageId: first.messageId,
          });
        }
        const result = transition(message, { type: 'purge', now });
        if (!result.ok) throw result.error;
        if ((await this.#apply(message, result.next)) !== undefined) {
          messageIds.push(message.messageId);
          break;
        }
        message = await this.#store.getMessage(deviceId, message.queueKey);
      }
    }
    return { purged: messageIds.length, messageIds };
  }

  async get(deviceId: string, messageId: string, now = Date.now()): Promise<C2dMessage | undefined> {
    const queueKey = await this.#store.getPointer(deviceId, messageId);
    if (queueKey !== undefined) {
      const message = await this.#store.getMessage(deviceId, queueKey);
      if (message !== undefined) return gone(message, now) ? undefined : message;
    }
    // No pointer (crash after the message write) or a stale one: newest message with that id.
    const found = await this.#store.findByMessageId(deviceId, messageId);
    const newest = found.sort((a, b) => (a.queueKey < b.queueKey ? 1 : -1))[0];
    return newest === undefined || gone(newest, now) ? undefined : newest;
  }

  async readFeedback(opts: { limit: number; cursor?: string }): Promise<FeedbackPage> {
    const positions = opts.cursor === undefined ? {} : decodeCursor(opts.cursor);
    if (positions === undefined) {
      throw new ValidationError('InvalidCursor', 'cursor is malformed', { field: 'cursor' });
    }
    const pages = await Promise.all(
      this.#shardIds().map((shard) =>
        this.#store.queryFeedback(feedbackPk(shard), positions[String(shard)], opts.limit),
      ),
    );
    const taken = pages
      .flat()
      .sort((a, b) => compare(a.sk, b.sk) || compare(a.pk, b.pk))
      .slice(0, Math.max(0, opts.limit));
    const next = { ...positions };
    for (const row of taken) next[row.pk.slice('feedback#'.length)] = row.sk;
    return { records: taken.map((r) => r.record), cursor: encodeCursor(next) };
  }

  async acknowledgeFeedback(ids: readonly string[]): Promise<number> {
    let valid = 0;
    for (const id of ids) {
      const key = parseFeedbackId(id);
      if (key === undefined) continue;
      await this.#store.deleteFeedback(key.pk, key.sk);
      valid++;
    }
    return valid;
  }

  /** Conditional write of a state change, then the feedback it owes. `undefined` = lost the race. */
  async #apply(
    prev: C2dMessage,
    proposed: C2dMessage,
  ): Promise<{ message: C2dMessage; feedback?: FeedbackRecord } | undefined> {
    const next = this.#retained(proposed);
    if (!(await this.#store.updateMessage(prev.version, next, this.#slot(next)))) return undefined;
    if (next.pendingFeedback === undefined) return { message: next };
    try {
      const written = await this.#writeFeedback(next);
      return { message: written.message, feedback: written.record };
    } catch {
      // The state change is committed; the sweep repairs the feedback (the message is due now).
      return { message: next };
    }
  }

  async #writeFeedback(
    message: C2dMessage,
  ): Promise<{ record: FeedbackRecord; message: C2dMessage; cleared: boolean }> {
    const row = this.#feedbackRow(message);
    await this.#store.insertFeedback(row); // false = already written by an earlier attempt: fine
    if (this.#feedbackSink !== undefined) await this.#feedbackSink(row.record);
    const cleared = markFeedbackWritten(message);
    const ok = await this.#store.updateMessage(message.version, cleared, this.#slot(cleared));
    return { record: row.record, message: ok ? cleared : message, cleared: ok };
  }

  #feedbackRow(message: C2dMessage): FeedbackRow {
    const status = message.pendingFeedback ?? 'success';
    const finalAt = message.finalAt ?? message.enqueuedAt;
    const pk = feedbackPk(shardOf(message.deviceId, this.#shards));
    const sk = feedbackSk(finalAt, message.deviceId, message.queueKey, status);
    const code = FEEDBACK_STATUS_CODES[status];
    const record: FeedbackRecord = {
      id: feedbackId(pk, sk),
      originalMessageId: message.messageId,
      deviceId: message.deviceId,
      ...(message.correlationId === undefined ? {} : { correlationId: message.correlationId }),
      enqueuedTimeUtc: isoOf(message.enqueuedAt),
      statusTimeUtc: isoOf(finalAt),
      status,
      statusCode: code.name,
      description: code.description,
    };
    return { pk, sk, record };
  }

  async #claimPointer(message: C2dMessage): Promise<void> {
    const { deviceId, messageId, queueKey } = message;
    // The pointer outlives its message: a message is final by its expiry (plus a lock and a sweep),
    // and its retention starts then; a day more covers a sweep that was down for a while.
    const retainUntil = Math.ceil((message.expiresAt + this.#retentionMs + POINTER_MARGIN_MS) / 1000);
    for (let attempt = 0; attempt < this.#maxAttempts; attempt++) {
      if (await this.#store.insertPointer(deviceId, messageId, queueKey, retainUntil)) return;
      const current = await this.#store.getPointer(deviceId, messageId);
      if (current === undefined) continue; // deleted in between: try to insert again
      if (current === queueKey) return;
      const holder = await this.#store.getMessage(deviceId, current);
      if (holder === undefined || gone(holder, message.enqueuedAt)) {
        // Stale pointer (its message was deleted, or is past retention): take it over.
        if (await this.#store.swapPointer(deviceId, messageId, current, queueKey, retainUntil)) return;
        continue;
      }
      // A live message holds the id: withdraw ours. If it was already delivered, it stays (same id,
      // so the device sees a duplicate at worst): at least once, never lost.
      await this.#store.deleteMessage(deviceId, queueKey, message.version);
      throw new DuplicateMessageIdError('device already has a message with this id', { deviceId, messageId });
    }
    throw new ConcurrentUpdateError('message id pointer kept changing', { deviceId, messageId });
  }

  /** TTL (epoch seconds) of a message that turns final at `finalAt`. */
  #retainUntil(finalAt: number): number {
    return Math.ceil((finalAt + this.#retentionMs) / 1000);
  }

  /** `message` with its TTL set when it is final. */
  #retained(message: C2dMessage): C2dMessage {
    if (!isFinal(message.state) || message.retainUntil !== undefined) return message;
    return { ...message, retainUntil: this.#retainUntil(message.finalAt ?? message.enqueuedAt) };
  }

  #slot(message: C2dMessage): DueSlot | undefined {
    const dueAt = dueAtOf(message);
    return dueAt === undefined
      ? undefined
      : dueSlot(message.deviceId, message.messageId, dueAt, this.#shards);
  }

  /** Backs off delivery checks of a message that stays queued: its age, within [min, max]. */
  #recheckDelay(message: C2dMessage, now: number): number {
    return Math.min(this.#recheckMaxMs, Math.max(this.#recheckMinMs, now - message.enqueuedAt));
  }

  #shardIds(): number[] {
    return Array.from({ length: this.#shards }, (_, i) => i);
  }

  async #readDue(now: number, limit: number): Promise<DueRow[]> {
    const before = dueBefore(now);
    const pages = await Promise.all(
      this.#shardIds().map((shard) => this.#store.queryDue(duePk(shard), before, limit)),
    );
    return pages
      .flat()
      .sort((a, b) => compare(a.indexSk, b.indexSk))
      .slice(0, Math.max(0, limit));
  }
}

const ACK_MODES: readonly AckMode[] = ['none', 'positive', 'negative', 'full'];
const POINTER_MARGIN_MS = 86_400_000;

/** Enqueued, unexpired and with attempts left at `now`. */
function deliverable(m: C2dMessage, now: number): boolean {
  return m.state === 'Enqueued' && m.expiresAt > now && m.deliveryCount < m.maxDeliveryCount;
}

/** A final message past its retention: gone, even if the table's TTL has not deleted it yet. */
function gone(m: C2dMessage, now: number): boolean {
  return isFinal(m.state) && m.retainUntil !== undefined && m.retainUntil * 1000 <= now;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
