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
 * - Retention. A final message's due slot moves to `finalAt + retention`; the sweep deletes the
 *   pointer first, then the message (conditional on its version), so a crash in between is
 *   repeated by the next sweep and never leaves a pointer blocking the id.
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
import { FEEDBACK_STATUS_CODES, type FeedbackRecord } from './feedback.ts';
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
  DueEntry,
  FeedbackPage,
  PurgeResult,
  SettleResult,
  StateChange,
  SweepReport,
} from './ledger.ts';
import { type C2dMessage, isFinal } from './message.ts';
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

  async enqueue(deviceId: string, message: C2dMessage, opts: { maxQueueDepth: number }): Promise<C2dMessage> {
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
    const depth = await this.#store.countActive(deviceId);
    if (depth >= opts.maxQueueDepth) {
      throw new QueueFullError(`device queue holds the maximum of ${opts.maxQueueDepth} messages`, {
        deviceId,
        limit: opts.maxQueueDepth,
        depth,
      });
    }
    if (!(await this.#store.insertMessage(message, this.#slot(message)))) {
      throw new ConcurrentUpdateError('queue key already taken', { deviceId, queueKey: message.queueKey });
    }
    await this.#claimPointer(message);
    return message;
  }

  async nextDeliverable(
    deviceId: string,
    opts: { now: number; maxInFlight: number; limit: number },
  ): Promise<C2dMessage[]> {
    const active = await this.#store.listActive(deviceId);
    const inFlight = active.filter((m) => m.state === 'Invisible').length;
    const room = Math.max(0, Math.min(opts.limit, opts.maxInFlight - inFlight));
    return active
      .filter((m) => m.state === 'Enqueued' && m.expiresAt > opts.now && m.deliveryCount < m.maxDeliveryCount)
      .slice(0, room);
  }

  async markDelivered(
    message: C2dMessage,
    opts: { now: number; lockTimeoutMs: number },
  ): Promise<C2dMessage> {
    const { deviceId, messageId } = message;
    const event: C2dEvent = {
      type: 'deliver',
      now: opts.now,
      lockTimeoutMs: opts.lockTimeoutMs,
      lockToken: newLockToken(message.queueKey),
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
    for (let attempt = 0; attempt < this.#maxAttempts; attempt++) {
      const message = await this.#store.getMessage(deviceId, queueKey);
      if (message === undefined) {
        throw new MessageNotFoundError('lock token names no message of this device', { deviceId, lockToken });
      }
      const result = transition(message, { type: outcome, lockToken, now });
      if (!result.ok) throw result.error;
      const applied = await this.#apply(message, result.next);
      if (applied !== undefined) {
        return applied.feedback === undefined
          ? { message: applied.message }
          : { message: applied.message, feedback: applied.feedback };
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

  async get(deviceId: string, messageId: string): Promise<C2dMessage | undefined> {
    const queueKey = await this.#store.getPointer(deviceId, messageId);
    if (queueKey !== undefined) {
      const message = await this.#store.getMessage(deviceId, queueKey);
      if (message !== undefined) return message;
    }
    // No pointer (crash after the message write) or a stale one: newest message with that id.
    const found = await this.#store.findByMessageId(deviceId, messageId);
    return found.sort((a, b) => (a.queueKey < b.queueKey ? 1 : -1))[0];
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
    next: C2dMessage,
  ): Promise<{ message: C2dMessage; feedback?: FeedbackRecord } | undefined> {
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
    for (let attempt = 0; attempt < this.#maxAttempts; attempt++) {
      if (await this.#store.insertPointer(deviceId, messageId, queueKey)) return;
      const current = await this.#store.getPointer(deviceId, messageId);
      if (current === undefined) continue; // deleted in between: try to insert again
      if (current === queueKey) return;
      if ((await this.#store.getMessage(deviceId, current)) === undefined) {
        // Stale pointer (its message was deleted at the end of retention): take it over.
        if (await this.#store.swapPointer(deviceId, messageId, current, queueKey)) return;
        continue;
      }
      // A live message holds the id: withdraw ours. If it was already delivered, it stays (same id,
      // so the device sees a duplicate at worst): at least once, never lost.
      await this.#store.deleteMessage(deviceId, queueKey, message.version);
      throw new DuplicateMessageIdError('device already has a message with this id', { deviceId, messageId });
    }
    throw new ConcurrentUpdateError('message id pointer kept changing', { deviceId, messageId });
  }

  #slot(message: C2dMessage): DueSlot | undefined {
    const dueAt = dueAtOf(message, this.#retentionMs);
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

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
