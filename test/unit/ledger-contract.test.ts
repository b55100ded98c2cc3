import { CreateTableCommand } from '@aws-sdk/client-dynamodb';
import type { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { marshall } from '@aws-sdk/util-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DynamoDbDeliveryLedger,
  DynamoDbLedgerStore,
  ledgerTableDefinition,
} from '../../functions/adapters/ledger-dynamodb.ts';
import { MemoryDeliveryLedger, MemoryLedgerStore } from '../../functions/adapters/ledger-memory.ts';
import { LedgerEngine } from '../../functions/core/c2d/engine.ts';
import {
  ConcurrentUpdateError,
  DuplicateMessageIdError,
  MessageNotFoundError,
  QueueFullError,
  StaleLockTokenError,
} from '../../functions/core/c2d/errors.ts';
import { type DueSlot, newLockToken } from '../../functions/core/c2d/keys.ts';
import type { DeliveryLedger } from '../../functions/core/c2d/ledger.ts';
import {
  type AckMode,
  type C2dMessage,
  createMessage,
  parseSendRequest,
} from '../../functions/core/c2d/message.ts';
import type { FeedbackRow, LedgerStore } from '../../functions/core/c2d/store.ts';
import { ConflictError, LimitExceededError } from '../../functions/core/errors.ts';
import { startTestDynamo, type TestDynamo } from '../support/emulators.ts';

const T0 = Date.parse('2030-01-01T00:00:00.000Z');
const LOCK = 60_000;
const OPTIONS = { shards: 4, finalRetentionMs: 3_600_000 };

interface Harness {
  ledger(): DeliveryLedger;
  /** A store on the same storage as `ledger()`, to wrap with crashes. */
  store(): LedgerStore;
}

let dynamo: TestDynamo | undefined;
let doc: DynamoDBDocumentClient | undefined;
let tables = 0;

const harnesses: Array<[string, Harness]> = [
  ['memory', { ledger: () => new MemoryDeliveryLedger(OPTIONS), store: () => new MemoryLedgerStore() }],
  [
    'dynamodb (dynalite)',
    {
      ledger: () =>
        new DynamoDbDeliveryLedger({ client: client(), tableName: `ledger-${tables}`, ...OPTIONS }),
      store: () => new DynamoDbLedgerStore({ client: client(), tableName: `ledger-${tables}` }),
    },
  ],
];

beforeAll(async () => {
  dynamo = await startTestDynamo();
  doc = dynamo.doc;
});

afterAll(() => dynamo?.close());

/** The store with some methods replaced (a Proxy, because stores keep private fields). */
function withOverrides(store: LedgerStore, overrides: Partial<LedgerStore>): LedgerStore {
  return new Proxy(store, {
    get(target, property) {
      const override: unknown = Reflect.get(overrides, property);
      if (override !== undefined) return override;
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

function client(): DynamoDBDocumentClient {
  if (doc === undefined) throw new Error('dynalite not started');
  return doc;
}

let counter = 0;
function message(
  deviceId: string,
  overrides: { ack?: AckMode; ttlMs?: number; messageId?: string; now?: number } = {},
) {
  counter++;
  const { now = T0, ...request } = overrides;
  return createMessage(deviceId, parseSendRequest({ body: `body-${counter}`, ack: 'full', ...request }), {
    now,
    config: { defaultTtlMs: 3_600_000, maxDeliveryCount: 3 },
  });
}

async function rejectsWith(
  promise: Promise<unknown>,
  type: abstract new (...args: never[]) => Error,
): Promise<Error> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(type);
  return error as Error;
}

describe.each(harnesses)('DeliveryLedger contract: %s', (name, harness) => {
  let ledger: DeliveryLedger;

  beforeAll(async () => {
    if (name.startsWith('dynamodb') && doc !== undefined) {
      tables++;
      await doc.send(new CreateTableCommand(ledgerTableDefinition(`ledger-${tables}`)));
    }
    // Each test uses its own device ids; one ledger (one table) per adapter keeps dynalite fast.
    ledger = harness.ledger();
  });

  async function deliver(deviceId: string, now = T0, count = 1): Promise<C2dMessage[]> {
    const next = await ledger.nextDeliverable(deviceId, { now, maxInFlight: 10, limit: count });
    return Promise.all(next.map((m) => ledger.markDelivered(m, { now, lockTimeoutMs: LOCK })));
  }

  async function deliverOne(deviceId: string, now = T0): Promise<C2dMessage> {
    const [locked] = await deliver(deviceId, now, 1);
    if (locked === undefined) throw new Error(`nothing deliverable for ${deviceId}`);
    return locked;
  }

  async function feedbackFor(messageId: string, from: DeliveryLedger = ledger) {
    const all = [];
    let cursor: string | undefined;
    for (;;) {
      const page = await from.readFeedback({ limit: 50, ...(cursor === undefined ? {} : { cursor }) });
      all.push(...page.records);
      if (page.records.length === 0) break;
      cursor = page.cursor;
    }
    return all.filter((r) => r.originalMessageId === messageId);
  }

  it('delivers a device queue in enqueue order with a bounded number in flight', async () => {
    const sent = [];
    for (let i = 0; i < 5; i++)
      sent.push(await ledger.enqueue('order', message('order'), { maxQueueDepth: 50 }));
    await ledger.enqueue('order-other', message('order-other'), { maxQueueDepth: 50 });
    const first = await ledger.nextDeliverable('order', { now: T0, maxInFlight: 2, limit: 10 });
    expect(first.map((m) => m.messageId)).toEqual(sent.slice(0, 2).map((m) => m.messageId));
    const locked = await deliver('order', T0, 2);
    expect(locked.map((m) => m.state)).toEqual(['Invisible', 'Invisible']);
    expect(await ledger.nextDeliverable('order', { now: T0, maxInFlight: 2, limit: 10 })).toEqual([]);
    const rest = await ledger.nextDeliverable('order', { now: T0, maxInFlight: 10, limit: 10 });
    expect(rest.map((m) => m.messageId)).toEqual(sent.slice(2).map((m) => m.messageId));
    expect(Buffer.from(rest[0]?.body ?? []).toString()).toMatch(/^body-/);
  });

  it('fails the send after maxQueueDepth with QueueFullError naming the limit', async () => {
    for (let i = 0; i < 3; i++) await ledger.enqueue('full', message('full'), { maxQueueDepth: 3 });
    const error = await rejectsWith(
      ledger.enqueue('full', message('full'), { maxQueueDepth: 3 }),
      QueueFullError,
    );
    expect(error).toBeInstanceOf(LimitExceededError);
    expect((error as QueueFullError).context).toMatchObject({ limit: 3, deviceId: 'full' });
    // A final message frees its slot.
    const locked = await deliverOne('full');
    await ledger.settle('full', locked.lockToken ?? '', 'complete', T0 + 1);
    await ledger.enqueue('full', message('full'), { maxQueueDepth: 3 });
  });

  it('refuses a second message with the same id for the same device', async () => {
    await ledger.enqueue('dup', message('dup', { messageId: 'same' }), { maxQueueDepth: 50 });
    await rejectsWith(
      ledger.enqueue('dup', message('dup', { messageId: 'same' }), { maxQueueDepth: 50 }),
      DuplicateMessageIdError,
    );
    expect((await ledger.nextDeliverable('dup', { now: T0, maxInFlight: 10, limit: 10 })).length).toBe(1);
    await ledger.enqueue('dup-2', message('dup-2', { messageId: 'same' }), { maxQueueDepth: 50 });
  });

  it('completes a message and reports success feedback', async () => {
    const sent = await ledger.enqueue('complete', message('complete'), { maxQueueDepth: 50 });
    const locked = await deliverOne('complete');
    expect(locked.deliveryCount).toBe(1);
    const result = await ledger.settle('complete', locked.lockToken ?? '', 'complete', T0 + 5);
    expect(result.message.state).toBe('Completed');
    expect(result.feedback).toMatchObject({
      originalMessageId: sent.messageId,
      status: 'success',
      statusCode: 'Success',
    });
    const status = await ledger.get('complete', sent.messageId);
    expect(status?.state).toBe('Completed');
    expect(status?.pendingFeedback).toBeUndefined();
    expect(await feedbackFor(sent.messageId)).toHaveLength(1);
  });

  it('rejects a message (dead-lettered by the device) with rejected feedback', async () => {
    const sent = await ledger.enqueue('reject', message('reject'), { maxQueueDepth: 50 });
    const locked = await deliverOne('reject');
    const result = await ledger.settle('reject', locked.lockToken ?? '', 'reject', T0 + 5);
    expect(result.message.state).toBe('Rejected');
    expect(result.feedback?.status).toBe('rejected');
    expect((await ledger.get('reject', sent.messageId))?.state).toBe('Rejected');
  });

  it('abandons a message back to the queue and redelivers it with a new lock token', async () => {
    const sent = await ledger.enqueue('abandon', message('abandon'), { maxQueueDepth: 50 });
    const first = await deliverOne('abandon');
    const result = await ledger.settle('abandon', first.lockToken ?? '', 'abandon', T0 + 5);
    expect(result.message.state).toBe('Enqueued');
    expect(result.feedback).toBeUndefined();
    const second = await deliverOne('abandon', T0 + 10);
    expect(second.messageId).toBe(sent.messageId);
    expect(second.deliveryCount).toBe(2);
    expect(second.lockToken).not.toBe(first.lockToken);
    await rejectsWith(
      ledger.settle('abandon', first.lockToken ?? '', 'complete', T0 + 11),
      StaleLockTokenError,
    );
  });

  it('a queued message is due for a delivery check at once, and each check backs off', async () => {
    const sent = await ledger.enqueue('recheck', message('recheck'), { maxQueueDepth: 50 });
    expect(sent.checkAt).toBe(T0);
    const mine = (r: { changed: readonly { deviceId: string }[] }) =>
      r.changed.filter((c) => c.deviceId === 'recheck');
    expect(mine(await ledger.releaseExpiredLocks({ now: T0 + 1, limit: 500 }))).toEqual([
      { deviceId: 'recheck', messageId: sent.messageId, from: 'Enqueued', to: 'Enqueued' },
    ]);
    const checked = await ledger.get('recheck', sent.messageId);
    expect(checked?.checkAt).toBe(T0 + 1 + 10_000);
    expect(checked?.version).toBe(sent.version + 1);
    expect(mine(await ledger.releaseExpiredLocks({ now: T0 + 2, limit: 500 }))).toEqual([]);
    // Older messages are checked less often: the delay grows with the message's age.
    expect(mine(await ledger.releaseExpiredLocks({ now: T0 + 60_000, limit: 500 }))).toHaveLength(1);
    expect((await ledger.get('recheck', sent.messageId))?.checkAt).toBe(T0 + 120_000);
    // Delivery clears the check; the lock's lapse is what comes due next.
    const locked = await deliverOne('recheck', T0 + 60_001);
    expect(locked.checkAt).toBeUndefined();
    expect((await ledger.get('recheck', sent.messageId))?.checkAt).toBeUndefined();
  });

  it('a stale or unknown lock token fails and changes nothing', async () => {
    const sent = await ledger.enqueue('stale', message('stale'), { maxQueueDepth: 50 });
    const locked = await deliverOne('stale');
    const token = locked.lockToken ?? '';
    const tampered = `${token.slice(0, token.lastIndexOf('.') + 1)}${'0'.repeat(token.length - token.lastIndexOf('.') - 1)}`;
    const before = await ledger.get('stale', sent.messageId);
    await rejectsWith(ledger.settle('stale', tampered, 'complete', T0 + 1), StaleLockTokenError);
    await rejectsWith(ledger.settle('stale', 'not-a-token', 'complete', T0 + 1), MessageNotFoundError);
    await rejectsWith(ledger.settle('stale', token, 'complete', T0 + LOCK), StaleLockTokenError);
    expect(await ledger.get('stale', sent.messageId)).toEqual(before);
    await ledger.settle('stale', token, 'complete', T0 + 1);
    await rejectsWith(ledger.settle('stale', token, 'complete', T0 + 2), StaleLockTokenError);
  });

  it('a device cannot settle another device’s message', async () => {
    const sent = await ledger.enqueue('owner-a', message('owner-a'), { maxQueueDepth: 50 });
    await ledger.enqueue('owner-b', message('owner-b'), { maxQueueDepth: 50 });
    const locked = await deliverOne('owner-a');
    await deliverOne('owner-b');
    await rejectsWith(
      ledger.settle('owner-b', locked.lockToken ?? '', 'complete', T0 + 1),
      MessageNotFoundError,
    );
    expect((await ledger.get('owner-a', sent.messageId))?.state).toBe('Invisible');
    expect(await ledger.get('owner-b', sent.messageId)).toBeUndefined();
  });

  it('will not lock a message from a stale read: purged in between, nothing changes', async () => {
    await ledger.enqueue('stale-read', message('stale-read'), { maxQueueDepth: 50 });
    const [m] = await ledger.nextDeliverable('stale-read', { now: T0, maxInFlight: 1, limit: 1 });
    if (m === undefined) throw new Error('nothing to deliver');
    await ledger.purge('stale-read', T0 + 1);
    const purged = await ledger.get('stale-read', m.messageId);
    await rejectsWith(ledger.markDelivered(m, { now: T0 + 2, lockTimeoutMs: LOCK }), ConcurrentUpdateError);
    expect(await ledger.get('stale-read', m.messageId)).toEqual(purged);
    expect(purged?.state).toBe('Purged');
  });

  it('only one of two deliverers gets the lock', async () => {
    await ledger.enqueue('two-deliverers', message('two-deliverers'), { maxQueueDepth: 50 });
    const [m] = await ledger.nextDeliverable('two-deliverers', { now: T0, maxInFlight: 1, limit: 1 });
    if (m === undefined) throw new Error('nothing to deliver');
    const opts = { now: T0, lockTimeoutMs: LOCK };
    const results = await Promise.allSettled([ledger.markDelivered(m, opts), ledger.markDelivered(m, opts)]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const failed = results.find((r) => r.status === 'rejected');
    expect(failed?.status === 'rejected' && failed.reason).toBeInstanceOf(ConcurrentUpdateError);
    expect((await ledger.get('two-deliverers', m.messageId))?.deliveryCount).toBe(1);
  });

  it('releases an expired lock through the due index and redelivers', async () => {
    const sent = await ledger.enqueue('lock-expiry', message('lock-expiry'), { maxQueueDepth: 50 });
    const locked = await deliverOne('lock-expiry');
    expect(await ledger.nextDeliverable('lock-expiry', { now: T0 + 1, maxInFlight: 1, limit: 1 })).toEqual(
      [],
    );
    const due = await ledger.dueMessages({ now: T0 + LOCK, limit: 1000 });
    expect(due.some((d) => d.deviceId === 'lock-expiry' && d.messageId === sent.messageId)).toBe(true);
    expect(due.every((d, i, all) => i === 0 || (all[i - 1]?.dueAt ?? 0) <= d.dueAt)).toBe(true);
    const report = await ledger.releaseExpiredLocks({ now: T0 + LOCK, limit: 1000 });
    expect(report.changed).toContainEqual({
      deviceId: 'lock-expiry',
      messageId: sent.messageId,
      from: 'Invisible',
      to: 'Enqueued',
    });
    await rejectsWith(
      ledger.settle('lock-expiry', locked.lockToken ?? '', 'complete', T0 + 1),
      StaleLockTokenError,
    );
    const again = await deliverOne('lock-expiry', T0 + LOCK + 1);
    expect(again).toMatchObject({ messageId: sent.messageId, deliveryCount: 2 });
    const settled = await ledger.settle('lock-expiry', again.lockToken ?? '', 'complete', T0 + LOCK + 2);
    expect(settled.message.state).toBe('Completed');
  });

  it('dead-letters after maxDeliveryCount expired locks, with feedback', async () => {
    const sent = await ledger.enqueue('max-delivery', message('max-delivery'), { maxQueueDepth: 50 });
    let now = T0;
    for (let attempt = 1; attempt <= 3; attempt++) {
      const locked = await deliverOne('max-delivery', now);
      expect(locked.deliveryCount).toBe(attempt);
      now += LOCK;
      await ledger.releaseExpiredLocks({ now, limit: 1000 });
      now += 1;
    }
    const final = await ledger.get('max-delivery', sent.messageId);
    expect(final?.state).toBe('DeadLettered');
    expect(final?.deliveryCount).toBe(3);
    expect(await ledger.nextDeliverable('max-delivery', { now, maxInFlight: 10, limit: 10 })).toEqual([]);
    const feedback = await feedbackFor(sent.messageId);
    expect(feedback).toHaveLength(1);
    expect(feedback[0]).toMatchObject({
      deviceId: 'max-delivery',
      status: 'deliveryCountExceeded',
      statusCode: 'DeliveryCountExceeded',
      enqueuedTimeUtc: new Date(T0).toISOString(),
    });
  });

  it('expires an undelivered message with feedback, and a message whose lock outlived it', async () => {
    const waiting = await ledger.enqueue('expiry', message('expiry', { ttlMs: 60_000 }), {
      maxQueueDepth: 50,
    });
    const inFlight = await ledger.enqueue('expiry-2', message('expiry-2', { ttlMs: 60_000 }), {
      maxQueueDepth: 50,
    });
    await deliverOne('expiry-2', T0 + 30_000);
    expect(await ledger.nextDeliverable('expiry', { now: T0 + 60_000, maxInFlight: 10, limit: 10 })).toEqual(
      [],
    );
    const report = await ledger.releaseExpiredLocks({ now: T0 + 90_000, limit: 1000 });
    expect(report.changed).toEqual(
      expect.arrayContaining([
        { deviceId: 'expiry', messageId: waiting.messageId, from: 'Enqueued', to: 'Expired' },
        { deviceId: 'expiry-2', messageId: inFlight.messageId, from: 'Invisible', to: 'Expired' },
      ]),
    );
    expect((await ledger.get('expiry', waiting.messageId))?.state).toBe('Expired');
    expect((await feedbackFor(waiting.messageId)).map((r) => r.status)).toEqual(['expired']);
    expect((await feedbackFor(inFlight.messageId)).map((r) => r.status)).toEqual(['expired']);
  });

  it('purges a device queue with purged feedback and leaves final messages alone', async () => {
    const done = await ledger.enqueue('purge', message('purge'), { maxQueueDepth: 50 });
    const lockedDone = await deliverOne('purge');
    await ledger.settle('purge', lockedDone.lockToken ?? '', 'complete', T0 + 1);
    const inFlight = await ledger.enqueue('purge', message('purge'), { maxQueueDepth: 50 });
    const lock = await deliverOne('purge', T0 + 2);
    const waiting = await ledger.enqueue('purge', message('purge', { ack: 'none' }), { maxQueueDepth: 50 });
    const result = await ledger.purge('purge', T0 + 3);
    expect(result.purged).toBe(2);
    expect(result.messageIds.sort()).toEqual([inFlight.messageId, waiting.messageId].sort());
    expect((await ledger.get('purge', done.messageId))?.state).toBe('Completed');
    expect((await ledger.get('purge', inFlight.messageId))?.state).toBe('Purged');
    expect((await ledger.get('purge', waiting.messageId))?.state).toBe('Purged');
    expect((await feedbackFor(inFlight.messageId)).map((r) => r.status)).toEqual(['purged']);
    expect(await feedbackFor(waiting.messageId)).toEqual([]);
    await rejectsWith(ledger.settle('purge', lock.lockToken ?? '', 'complete', T0 + 4), StaleLockTokenError);
    expect(await ledger.purge('purge', T0 + 5)).toEqual({ purged: 0, messageIds: [] });
  });

  it('two settlements and a lock-expiry release racing on one message end in exactly one final state', async () => {
    for (let round = 0; round < 5; round++) {
      const deviceId = `race-${round}`;
      const sent = await ledger.enqueue(
        deviceId,
        createMessage(deviceId, parseSendRequest({ body: 'x', ack: 'full' }), {
          now: T0,
          config: { defaultTtlMs: 3_600_000, maxDeliveryCount: 1 },
        }),
        { maxQueueDepth: 50 },
      );
      const locked = await deliverOne(deviceId);
      const token = locked.lockToken ?? '';
      const results = await Promise.allSettled([
        ledger.settle(deviceId, token, 'complete', T0 + LOCK - 1),
        ledger.settle(deviceId, token, 'reject', T0 + LOCK - 1),
        ledger.releaseExpiredLocks({ now: T0 + LOCK, limit: 1000 }),
      ]);
      const [complete, reject, sweep] = results;
      const settleWins = [complete, reject].filter((r) => r?.status === 'fulfilled').length;
      const sweepWon =
        sweep?.status === 'fulfilled' &&
        sweep.value.changed.some((c) => c.deviceId === deviceId && c.to === 'DeadLettered');
      expect(settleWins + (sweepWon ? 1 : 0)).toBe(1);
      for (const r of [complete, reject]) {
        if (r?.status === 'rejected') expect(r.reason).toBeInstanceOf(ConflictError);
      }
      const final = await ledger.get(deviceId, sent.messageId);
      const expected =
        complete?.status === 'fulfilled'
          ? 'Completed'
          : reject?.status === 'fulfilled'
            ? 'Rejected'
            : 'DeadLettered';
      expect(final?.state).toBe(expected);
      const feedback = await feedbackFor(sent.messageId);
      expect(feedback).toHaveLength(1);
    }
  });

  it.each([
    ['before the feedback record is written', 'insertFeedback'],
    ['after the feedback record, before the message learns it', 'clearPending'],
  ] as const)(
    'repairs feedback after a crash %s: the sweep writes it exactly once',
    async (_when, failAt) => {
      const deviceId = `repair-${failAt}`;
      const store = harness.store();
      let armed = true;
      const crashing = withOverrides(store, {
        insertFeedback: async (row: FeedbackRow) => {
          if (armed && failAt === 'insertFeedback') {
            armed = false;
            throw new Error('crash');
          }
          return store.insertFeedback(row);
        },
        updateMessage: async (expected: number, next: C2dMessage, due: DueSlot | undefined) => {
          if (
            armed &&
            failAt === 'clearPending' &&
            next.finalAt !== undefined &&
            next.pendingFeedback === undefined
          ) {
            armed = false;
            throw new Error('crash');
          }
          return store.updateMessage(expected, next, due);
        },
      });
      const crashy = new LedgerEngine(crashing, OPTIONS);
      const sent = await crashy.enqueue(deviceId, message(deviceId), { maxQueueDepth: 50 });
      const [m] = await crashy.nextDeliverable(deviceId, { now: T0, maxInFlight: 1, limit: 1 });
      if (m === undefined) throw new Error('nothing deliverable');
      const locked = await crashy.markDelivered(m, { now: T0, lockTimeoutMs: LOCK });
      const result = await crashy.settle(deviceId, locked.lockToken ?? '', 'complete', T0 + 1);
      expect(result.message.state).toBe('Completed');
      expect(result.feedback).toBeUndefined();
      expect((await crashy.get(deviceId, sent.messageId))?.pendingFeedback).toBe('success');
      expect(await feedbackFor(sent.messageId, crashy)).toHaveLength(failAt === 'insertFeedback' ? 0 : 1);
      const due = await crashy.dueMessages({ now: T0 + 2, limit: 1000 });
      expect(due.some((d) => d.messageId === sent.messageId)).toBe(true);
      const report = await crashy.releaseExpiredLocks({ now: T0 + 2, limit: 1000 });
      expect(report.feedback.filter((r) => r.originalMessageId === sent.messageId)).toHaveLength(1);
      expect((await crashy.get(deviceId, sent.messageId))?.pendingFeedback).toBeUndefined();
      const again = await crashy.releaseExpiredLocks({ now: T0 + 3, limit: 1000 });
      expect(again.feedback.filter((r) => r.originalMessageId === sent.messageId)).toEqual([]);
      expect(await feedbackFor(sent.messageId, crashy)).toHaveLength(1);
    },
  );

  it('reads feedback page by page and forgets acknowledged records', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const deviceId = `fb-${i}`;
      const sent = await ledger.enqueue(deviceId, message(deviceId), { maxQueueDepth: 50 });
      ids.push(sent.messageId);
      await ledger.purge(deviceId, T0 + 100 + i);
    }
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < 100; page++) {
      const read = await ledger.readFeedback({ limit: 2, ...(cursor === undefined ? {} : { cursor }) });
      expect(read.records.length).toBeLessThanOrEqual(2);
      if (read.records.length === 0) break;
      seen.push(...read.records.map((r) => r.originalMessageId));
      cursor = read.cursor;
    }
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toEqual(expect.arrayContaining(ids));
    const all = (await ledger.readFeedback({ limit: 1000 })).records.filter((r) =>
      ids.includes(r.originalMessageId),
    );
    expect(await ledger.acknowledgeFeedback([...all.map((r) => r.id), 'bogus'])).toBe(3);
    const after = (await ledger.readFeedback({ limit: 1000 })).records;
    expect(after.filter((r) => ids.includes(r.originalMessageId))).toEqual([]);
  });

  it('hands final messages to TTL: retainUntil set, out of the due index, gone after retention, id free', async () => {
    const sent = await ledger.enqueue('retention', message('retention', { messageId: 'keep', ack: 'none' }), {
      maxQueueDepth: 50,
    });
    const locked = await deliverOne('retention');
    await ledger.settle('retention', locked.lockToken ?? '', 'complete', T0 + 1);
    const done = await ledger.get('retention', sent.messageId, T0 + 2);
    expect(done?.state).toBe('Completed');
    expect(done?.retainUntil).toBe(Math.ceil((T0 + 1 + OPTIONS.finalRetentionMs) / 1000));
    // Nothing left for the sweep to do: the table's TTL deletes it.
    expect(
      (await ledger.dueMessages({ now: T0 + 10 * OPTIONS.finalRetentionMs, limit: 1000 })).filter(
        (d) => d.deviceId === 'retention',
      ),
    ).toEqual([]);
    const end = (done?.retainUntil ?? 0) * 1000;
    expect((await ledger.get('retention', sent.messageId, end - 1))?.state).toBe('Completed');
    expect(await ledger.get('retention', sent.messageId, end)).toBeUndefined();
    const again = await ledger.enqueue(
      'retention',
      message('retention', { messageId: 'keep', now: T0 + 2 * OPTIONS.finalRetentionMs }),
      {
        maxQueueDepth: 50,
      },
    );
    expect((await ledger.get('retention', 'keep', T0 + 2 * OPTIONS.finalRetentionMs))?.queueKey).toBe(
      again.queueKey,
    );
  });

  it('a final message that owes feedback gets retainUntil too, kept when the feedback is written', async () => {
    await ledger.enqueue('ttl-fb', message('ttl-fb', { messageId: 'f', ack: 'full' }), { maxQueueDepth: 50 });
    const locked = await deliverOne('ttl-fb');
    const { message: done, feedback } = await ledger.settle(
      'ttl-fb',
      locked.lockToken ?? '',
      'complete',
      T0 + 5,
    );
    expect(feedback?.status).toBe('success');
    expect(done.pendingFeedback).toBeUndefined();
    expect((await ledger.get('ttl-fb', 'f', T0 + 6))?.retainUntil).toBe(
      Math.ceil((T0 + 5 + OPTIONS.finalRetentionMs) / 1000),
    );
  });

  /** An engine over a fresh store of this adapter that counts the store calls made. */
  function countingLedger(): { ledger: DeliveryLedger; calls: string[] } {
    const calls: string[] = [];
    const store = harness.store();
    const counted = new Proxy(store, {
      get(target, property) {
        const value: unknown = Reflect.get(target, property, target);
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          calls.push(String(property));
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
    return { ledger: new LedgerEngine(counted, OPTIONS), calls };
  }

  it('settles a quiet complete or reject with one conditional write and no read', async () => {
    const { ledger: counted, calls } = countingLedger();
    for (const [i, outcome] of (['complete', 'reject'] as const).entries()) {
      const device = `one-write-${i}`;
      await counted.enqueue(
        device,
        message(device, { ack: outcome === 'complete' ? 'negative' : 'positive' }),
        {
          maxQueueDepth: 50,
        },
      );
      const [next] = await counted.nextDeliverable(device, { now: T0, maxInFlight: 5, limit: 1 });
      const locked = await counted.markDelivered(next as C2dMessage, { now: T0, lockTimeoutMs: LOCK });
      calls.length = 0;
      const result = await counted.settle(device, locked.lockToken ?? '', outcome, T0 + 1);
      expect(calls).toEqual(['settleLocked']);
      expect(result.message.state).toBe(outcome === 'complete' ? 'Completed' : 'Rejected');
      expect(result.message.version).toBe(locked.version + 1);
      expect(result.wake).toBe(false);
      expect(result.feedback).toBeUndefined();
      const stored = await counted.get(device, locked.messageId, T0 + 2);
      expect(stored).toEqual(result.message);
    }
  });

  it('a settlement whose write fails decides from the old item: the right typed error, nothing changed', async () => {
    await ledger.enqueue('cond-fail', message('cond-fail', { ack: 'none' }), { maxQueueDepth: 50 });
    const locked = await deliverOne('cond-fail');
    const wrong = `${(locked.lockToken ?? '').slice(0, -4)}0000`;
    const stale = await rejectsWith(
      ledger.settle('cond-fail', wrong, 'complete', T0 + 1),
      StaleLockTokenError,
    );
    expect((stale as StaleLockTokenError).context?.reason).toBe('notLocked');
    const lapsed = await rejectsWith(
      ledger.settle('cond-fail', locked.lockToken ?? '', 'complete', T0 + LOCK),
      StaleLockTokenError,
    );
    expect((lapsed as StaleLockTokenError).context?.reason).toBe('lockExpired');
    expect(await ledger.get('cond-fail', locked.messageId, T0 + 1)).toEqual(locked);
    const done = await ledger.settle('cond-fail', locked.lockToken ?? '', 'complete', T0 + 2);
    expect(done.message.state).toBe('Completed');
    const again = await rejectsWith(
      ledger.settle('cond-fail', locked.lockToken ?? '', 'complete', T0 + 3),
      StaleLockTokenError,
    );
    expect((again as StaleLockTokenError).context?.reason).toBe('notLocked');
  });

  it('locks a message as it is written when asked and nothing is ahead of it', async () => {
    const sent = await ledger.enqueue('at-once', message('at-once', { ack: 'none' }), {
      maxQueueDepth: 50,
      deliver: { lockTimeoutMs: LOCK, maxInFlight: 1 },
    });
    expect(sent).toMatchObject({ state: 'Invisible', deliveryCount: 1, lockedUntil: T0 + LOCK });
    expect(await ledger.get('at-once', sent.messageId, T0)).toEqual(sent);
    // No room left (maxInFlight 1): the next one is written Enqueued, and the plan says it waits.
    const second = await ledger.enqueue('at-once', message('at-once', { ack: 'none' }), {
      maxQueueDepth: 50,
      deliver: { lockTimeoutMs: LOCK, maxInFlight: 1 },
    });
    expect(second.state).toBe('Enqueued');
    const plan = await ledger.deliveryPlan('at-once', { now: T0, maxInFlight: 1, limit: 1 });
    expect(plan).toMatchObject({ next: [], waiting: true });
    expect(plan.inFlight.map((m) => m.messageId)).toEqual([sent.messageId]);
    const woken = await ledger.wake(plan.inFlight[0] as C2dMessage, T0);
    expect(woken.wake).toBe(true);
    await rejectsWith(ledger.wake(plan.inFlight[0] as C2dMessage, T0), ConcurrentUpdateError);
    const settled = await ledger.settle('at-once', sent.lockToken ?? '', 'complete', T0 + 1);
    expect(settled.wake).toBe(true);
  });
});

describe('DynamoDbLedgerStore.settleLocked when the condition fails', () => {
  // DynamoDB returns the old item with the failure (ReturnValuesOnConditionCheckFailure: ALL_OLD);
  // dynalite does not, so this failure path is played by a stub client.
  it('decides from the returned old item without reading: a lapsed lock is a StaleLockTokenError', async () => {
    const locked: C2dMessage = {
      ...message('old-item', { ack: 'none' }),
      state: 'Invisible',
      deliveryCount: 1,
      lockToken: 'tok',
      lockedUntil: T0 + 10,
      version: 2,
    };
    const sent: string[] = [];
    const stub = {
      send: async (command: object) => {
        sent.push(command.constructor.name);
        throw Object.assign(new Error('The conditional request failed'), {
          name: 'ConditionalCheckFailedException',
          Item: marshall({ pk: 'dev#old-item', sk: `msg#${locked.queueKey}`, ...locked }),
        });
      },
    } as unknown as DynamoDBDocumentClient;
    const engine = new LedgerEngine(new DynamoDbLedgerStore({ client: stub, tableName: 't' }), OPTIONS);
    const token = newLockToken(locked.queueKey);
    const stored = { ...locked, lockToken: token };
    const stubWithToken = {
      send: async (command: object) => {
        sent.push(command.constructor.name);
        throw Object.assign(new Error('The conditional request failed'), {
          name: 'ConditionalCheckFailedException',
          Item: marshall({ pk: 'dev#old-item', sk: `msg#${locked.queueKey}`, ...stored }),
        });
      },
    } as unknown as DynamoDBDocumentClient;
    const lapsed = new LedgerEngine(
      new DynamoDbLedgerStore({ client: stubWithToken, tableName: 't' }),
      OPTIONS,
    );
    const error = await rejectsWith(
      lapsed.settle('old-item', token, 'complete', T0 + 10),
      StaleLockTokenError,
    );
    expect((error as StaleLockTokenError).context?.reason).toBe('lockExpired');
    expect(sent).toEqual(['UpdateCommand']);
    sent.length = 0;
    const other = await rejectsWith(
      engine.settle('old-item', token, 'complete', T0 + 1),
      StaleLockTokenError,
    );
    expect((other as StaleLockTokenError).context?.reason).toBe('notLocked');
    expect(sent).toEqual(['UpdateCommand']);
  });
});

describe('DynamoDbDeliveryLedger reads only active messages', () => {
  it('a delivery plan and a send after 1,000 final messages read the active ones only', async () => {
    if (dynamo === undefined) throw new Error('dynalite not started');
    const tableName = 'ledger-active-only';
    await dynamo.client.send(new CreateTableCommand(ledgerTableDefinition(tableName)));
    // Items each Query read (ScannedCount), by what the ledger asked for.
    const scanned: number[] = [];
    // On the shared client (the document client sends through it); removed at the end.
    dynamo.client.middlewareStack.add(
      (next, context) => async (args) => {
        const result = await next(args);
        if (context.commandName === 'QueryCommand') {
          scanned.push((result.output as { ScannedCount?: number }).ScannedCount ?? 0);
        }
        return result;
      },
      { step: 'initialize', name: 'scannedCounter' },
    );
    const ledger = new DynamoDbDeliveryLedger({ client: dynamo.doc, tableName, ...OPTIONS });
    const deliverAll = { maxQueueDepth: 50, deliver: { lockTimeoutMs: LOCK, maxInFlight: 5 } };
    for (let i = 0; i < 1_000; i++) {
      const sent = await ledger.enqueue('busy', message('busy', { ack: 'none' }), deliverAll);
      await ledger.settle('busy', sent.lockToken ?? '', 'complete', T0 + 1);
    }
    await ledger.enqueue('busy', message('busy', { ack: 'none', messageId: 'waiting' }), {
      maxQueueDepth: 50,
    });
    scanned.length = 0;
    try {
      const plan = await ledger.deliveryPlan('busy', { now: T0, maxInFlight: 5, limit: 5 });
      expect(plan.next.map((m) => m.messageId)).toEqual(['waiting']);
      expect(scanned).toEqual([1]);
      scanned.length = 0;
      const sent = await ledger.enqueue('busy', message('busy', { ack: 'none' }), deliverAll);
      expect(sent.state).toBe('Enqueued'); // 'waiting' is ahead of it
      expect(scanned).toEqual([1]);
    } finally {
      dynamo.client.middlewareStack.remove('scannedCounter');
    }
  }, 60_000);
});
