/**
 * In-memory delivery ledger: the same rules as the DynamoDB adapter (both run `LedgerEngine`) over
 * maps that copy on read and write and honour the same conditions, so races interleave at every
 * `await` like they do against a real table. For unit tests and the SDK's fakes; not durable.
 */
import { LedgerEngine, type LedgerEngineOptions } from '../core/c2d/engine.ts';
import { type DueRow, type DueSlot, devicePk, messageSk, parseDueRow } from '../core/c2d/keys.ts';
import type { C2dMessage } from '../core/c2d/message.ts';
import type { FeedbackRow, LedgerStore, SettleLockedInput, SettleLockedResult } from '../core/c2d/store.ts';

interface StoredMessage {
  message: C2dMessage;
  due: DueSlot | undefined;
}

/** {@link LedgerStore} over plain maps. */
export class MemoryLedgerStore implements LedgerStore {
  readonly #messages = new Map<string, Map<string, StoredMessage>>();
  readonly #pointers = new Map<string, string>();
  readonly #feedback = new Map<string, Map<string, FeedbackRow>>();

  async getMessage(deviceId: string, queueKey: string): Promise<C2dMessage | undefined> {
    await tick();
    const stored = this.#messages.get(deviceId)?.get(queueKey);
    return stored === undefined ? undefined : copy(stored.message);
  }

  async listActive(deviceId: string): Promise<C2dMessage[]> {
    await tick();
    return this.#sorted(deviceId)
      .filter((m) => m.state === 'Enqueued' || m.state === 'Invisible')
      .map(copy);
  }

  async countActive(deviceId: string): Promise<number> {
    return (await this.listActive(deviceId)).length;
  }

  async findByMessageId(deviceId: string, messageId: string): Promise<C2dMessage[]> {
    await tick();
    return this.#sorted(deviceId)
      .filter((m) => m.messageId === messageId)
      .map(copy);
  }

  async insertMessage(message: C2dMessage, due: DueSlot | undefined): Promise<boolean> {
    await tick();
    const device = this.#device(message.deviceId);
    if (device.has(message.queueKey)) return false;
    device.set(message.queueKey, { message: copy(message), due });
    return true;
  }

  async updateMessage(expectedVersion: number, next: C2dMessage, due: DueSlot | undefined): Promise<boolean> {
    await tick();
    const device = this.#messages.get(next.deviceId);
    const stored = device?.get(next.queueKey);
    if (device === undefined || stored === undefined || stored.message.version !== expectedVersion)
      return false;
    // Only the fields a DynamoDB update writes; immutable fields keep their stored values.
    device.set(next.queueKey, { message: copy({ ...next, body: stored.message.body }), due });
    return true;
  }

  async settleLocked(input: SettleLockedInput): Promise<SettleLockedResult> {
    await tick();
    const device = this.#messages.get(input.deviceId);
    const stored = device?.get(input.queueKey);
    if (device === undefined || stored === undefined) return { ok: false, current: undefined };
    const m = stored.message;
    if (
      m.state !== 'Invisible' ||
      m.lockToken !== input.lockToken ||
      m.lockedUntil === undefined ||
      !(m.lockedUntil > input.now) ||
      !input.quietAcks.includes(m.ack)
    ) {
      return { ok: false, current: copy(m) };
    }
    const { lockToken: _t, lockedUntil: _u, checkAt: _c, pendingFeedback: _p, wake: _w, ...rest } = m;
    const next: C2dMessage = {
      ...rest,
      state: input.state,
      finalAt: input.now,
      retainUntil: input.retainUntil,
      version: m.version + 1,
    };
    device.set(input.queueKey, { message: next, due: undefined });
    return { ok: true, before: copy(m) };
  }

  async deleteMessage(deviceId: string, queueKey: string, expectedVersion: number): Promise<boolean> {
    await tick();
    const device = this.#messages.get(deviceId);
    if (device?.get(queueKey)?.message.version !== expectedVersion) return false;
    device.delete(queueKey);
    return true;
  }

  async getPointer(deviceId: string, messageId: string): Promise<string | undefined> {
    await tick();
    return this.#pointers.get(pointerKey(deviceId, messageId));
  }

  async insertPointer(
    deviceId: string,
    messageId: string,
    queueKey: string,
    _retainUntil: number,
  ): Promise<boolean> {
    await tick();
    const key = pointerKey(deviceId, messageId);
    if (this.#pointers.has(key)) return false;
    this.#pointers.set(key, queueKey);
    return true;
  }

  async swapPointer(
    deviceId: string,
    messageId: string,
    expectedQueueKey: string,
    queueKey: string,
    _retainUntil: number,
  ): Promise<boolean> {
    await tick();
    const key = pointerKey(deviceId, messageId);
    if (this.#pointers.get(key) !== expectedQueueKey) return false;
    this.#pointers.set(key, queueKey);
    return true;
  }

  async deletePointer(deviceId: string, messageId: string, expectedQueueKey: string): Promise<boolean> {
    await tick();
    const key = pointerKey(deviceId, messageId);
    if (this.#pointers.get(key) !== expectedQueueKey) return false;
    this.#pointers.delete(key);
    return true;
  }

  async queryDue(duePk: string, beforeSk: string, limit: number): Promise<DueRow[]> {
    await tick();
    const rows: DueRow[] = [];
    for (const device of this.#messages.values()) {
      for (const { message, due } of device.values()) {
        if (due === undefined || due.pk !== duePk || !(due.sk < beforeSk)) continue;
        const row = parseDueRow(devicePk(message.deviceId), messageSk(message.queueKey), due.sk);
        if (row !== undefined) rows.push(row);
      }
    }
    return rows.sort((a, b) => (a.indexSk < b.indexSk ? -1 : a.indexSk > b.indexSk ? 1 : 0)).slice(0, limit);
  }

  async insertFeedback(row: FeedbackRow): Promise<boolean> {
    await tick();
    let shard = this.#feedback.get(row.pk);
    if (shard === undefined) {
      shard = new Map();
      this.#feedback.set(row.pk, shard);
    }
    if (shard.has(row.sk)) return false;
    shard.set(row.sk, structuredClone(row));
    return true;
  }

  async queryFeedback(pk: string, afterSk: string | undefined, limit: number): Promise<FeedbackRow[]> {
    await tick();
    return [...(this.#feedback.get(pk)?.values() ?? [])]
      .filter((r) => afterSk === undefined || r.sk > afterSk)
      .sort((a, b) => (a.sk < b.sk ? -1 : 1))
      .slice(0, limit)
      .map((r) => structuredClone(r));
  }

  async deleteFeedback(pk: string, sk: string): Promise<void> {
    await tick();
    this.#feedback.get(pk)?.delete(sk);
  }

  #device(deviceId: string): Map<string, StoredMessage> {
    let device = this.#messages.get(deviceId);
    if (device === undefined) {
      device = new Map();
      this.#messages.set(deviceId, device);
    }
    return device;
  }

  #sorted(deviceId: string): C2dMessage[] {
    return [...(this.#messages.get(deviceId)?.values() ?? [])]
      .map((s) => s.message)
      .sort((a, b) => (a.queueKey < b.queueKey ? -1 : 1));
  }
}

/**
 * Delivery ledger kept in memory.
 *
 * @example
 * const ledger = new MemoryDeliveryLedger();
 * await ledger.enqueue('dev-1', message, { maxQueueDepth: 50 });
 */
export class MemoryDeliveryLedger extends LedgerEngine {
  constructor(options: LedgerEngineOptions = {}) {
    super(new MemoryLedgerStore(), options);
  }
}

function pointerKey(deviceId: string, messageId: string): string {
  return `${deviceId}\n${messageId}`;
}

function copy(message: C2dMessage): C2dMessage {
  return structuredClone(message);
}

// Yield to the event loop so concurrent operations interleave between reads and writes.
function tick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
