import { type IoTDataPlaneClient, PublishCommand } from '@aws-sdk/client-iot-data-plane';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { feedbackToStream } from '../../functions/adapters/feedback-stream.ts';
import { IotDevicePublisher } from '../../functions/adapters/iot-publisher.ts';
import { MemoryDeliveryLedger } from '../../functions/adapters/ledger-memory.ts';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import { C2dDelivery, type DeliveryReport } from '../../functions/core/c2d/delivery.ts';
import type { FeedbackRecord } from '../../functions/core/c2d/feedback.ts';
import type { SweepReport } from '../../functions/core/c2d/ledger.ts';
import { createMessage, parseSendRequest } from '../../functions/core/c2d/message.ts';
import {
  deviceboundFilter,
  settleResponseFilter,
  settleResponseTopic,
} from '../../functions/core/c2d/topics.ts';
import { TransientError } from '../../functions/core/errors.ts';
import type { StreamEntry, StreamSink } from '../../functions/core/ports.ts';
import { MemoryLog, RecordingPublisher } from './fakes.ts';

// The modules build their default handlers at import time; give them the variables their stack would.
vi.hoisted(() => {
  process.env.REGISTRY_TABLE_NAME ??= 'unit-test-registry';
  process.env.LEDGER_TABLE_NAME ??= 'unit-test-ledger';
  process.env.FEEDBACK_STREAM_NAME ??= 'unit-test-feedback';
});

const deliveryFunction = await import('../../functions/c2d-delivery.ts');
const settlementFunction = await import('../../functions/c2d-settlement.ts');

const T0 = Date.parse('2030-01-01T00:00:00.000Z');
const LOCK_MS = 30_000;
const SCHEDULE_PERIOD_MS = 60_000;

function connectedEvent(clientId: string) {
  return {
    clientId,
    timestamp: T0,
    eventType: 'connected',
    sessionIdentifier: 'a4666d2a7d844ae4ac5d7b38c9cb7967',
    principalIdentifier: '12345678901234567890123456789012',
    ipAddress: '192.0.2.0',
    versionNumber: 0,
  };
}

function subscribedEvent(clientId: string, topics: string[]) {
  return {
    clientId,
    timestamp: T0,
    eventType: 'subscribed',
    sessionIdentifier: 'a4666d2a7d844ae4ac5d7b38c9cb7967',
    principalIdentifier: '12345678901234567890123456789012',
    topics,
  };
}

const scheduledEvent = {
  version: '0',
  id: '53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa',
  'detail-type': 'Scheduled Event',
  source: 'aws.events',
  account: '123456789012',
  time: '2030-01-01T00:00:00Z',
  region: 'eu-west-1',
  resources: ['arn:aws:events:eu-west-1:123456789012:rule/c2d-sweep'],
  detail: {},
};

/** A ledger, a registry and a delivery over a recording publisher, on the (faked) `Date.now`. */
async function world(options: { maxInFlight?: number } = {}) {
  const ledger = new MemoryDeliveryLedger();
  const registry = new MemoryDeviceRegistry();
  const publisher = new RecordingPublisher();
  const log = new MemoryLog();
  const delivery = new C2dDelivery({
    ledger,
    publisher,
    settings: { lockTimeoutMs: LOCK_MS, maxInFlight: options.maxInFlight ?? 5 },
    log,
  });
  await registry.create({ deviceId: 'd1' });
  const send = (deviceId: string, messageId: string) =>
    ledger.enqueue(
      deviceId,
      createMessage(deviceId, parseSendRequest({ body: `body-${messageId}`, messageId }), {
        now: Date.now(),
        config: { defaultTtlMs: 3_600_000, maxDeliveryCount: 10 },
      }),
      { maxQueueDepth: 50 },
    );
  return { ledger, registry, publisher, log, delivery, send };
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['Date'] });
  vi.setSystemTime(T0);
});

afterEach(() => {
  vi.useRealTimers();
});

describe('c2d-delivery makeHandler: lifecycle events', () => {
  async function setup() {
    const w = await world();
    const handle = deliveryFunction.makeHandler({
      delivery: w.delivery,
      registry: w.registry,
      sweepIntervalMs: 10_000,
      log: w.log,
      sleep: async () => {
        throw new Error('lifecycle events must not sleep');
      },
    });
    await w.send('d1', 'm1');
    await w.send('d1', 'm2');
    return { ...w, handle };
  }

  it('a connected event delivers the queue in order', async () => {
    const t = await setup();
    const report = (await t.handle(connectedEvent('d1'))) as DeliveryReport;
    expect(report).toEqual({ deviceId: 'd1', delivered: ['m1', 'm2'], failed: [] });
    expect(t.publisher.deliveries('d1').map((d) => d.body)).toEqual(['body-m1', 'body-m2']);
    expect(t.log.at('info').some((e) => e.context?.trigger === 'connected')).toBe(true);
  });

  it.each([
    ['the devicebound filter', [deviceboundFilter('d1')]],
    ['#', ['#']],
    ['a + filter among others', ['devices/d1/messages/settle/res/#', 'devices/+/messages/devicebound/+']],
  ])('a subscribed event with %s delivers', async (_name, topics) => {
    const t = await setup();
    const report = (await t.handle(subscribedEvent('d1', topics))) as DeliveryReport;
    expect(report.delivered).toEqual(['m1', 'm2']);
    expect(t.publisher.deliveries('d1')).toHaveLength(2);
  });

  it.each([
    ['the settlement responses only', [settleResponseFilter('d1')]],
    ["another device's devicebound filter", [deviceboundFilter('d2')]],
    ['device-to-cloud topics', ['devices/d1/messages/events/#']],
    ['no topics', []],
  ])('a subscribed event with %s delivers nothing', async (_name, topics) => {
    const t = await setup();
    expect(await t.handle(subscribedEvent('d1', topics))).toBeUndefined();
    expect(t.publisher.published).toEqual([]);
    expect((await t.ledger.get('d1', 'm1'))?.state).toBe('Enqueued');
  });

  it('a subscribed event without a topics list delivers nothing', async () => {
    const t = await setup();
    const { topics: _none, ...event } = subscribedEvent('d1', []);
    expect(await t.handle(event)).toBeUndefined();
    expect(t.publisher.published).toEqual([]);
  });

  it('other lifecycle events are ignored quietly', async () => {
    const t = await setup();
    for (const eventType of ['disconnected', 'unsubscribed']) {
      expect(await t.handle({ ...connectedEvent('d1'), eventType })).toBeUndefined();
    }
    expect(t.publisher.published).toEqual([]);
    expect(t.log.at('warn')).toEqual([]);
  });

  it.each([
    ['null', null],
    ['a string', 'connected'],
    ['an empty object', {}],
    ['an empty client id', { ...connectedEvent(''), clientId: '' }],
    ['no event type', { clientId: 'd1' }],
    ['another kind of scheduled event', { ...scheduledEvent, 'detail-type': 'Object Created' }],
  ])('junk (%s) is ignored with a warning', async (_name, event) => {
    const t = await setup();
    expect(await t.handle(event)).toBeUndefined();
    expect(t.log.at('warn')).toHaveLength(1);
    expect(t.publisher.published).toEqual([]);
    expect((await t.ledger.get('d1', 'm1'))?.state).toBe('Enqueued');
  });
});

/** A delivery whose sweep records when it ran and answers from `reports` (then empty reports). */
function recordingSweeper(reports: SweepReport[] = []) {
  const at: number[] = [];
  return {
    at,
    delivery: {
      deliver: async (deviceId: string): Promise<DeliveryReport> => ({ deviceId, delivered: [], failed: [] }),
      sweep: async () => {
        at.push(Date.now());
        const report = reports.shift() ?? { changed: [], feedback: [], deleted: 0, conflicts: 0 };
        return { report, deliveries: [] };
      },
    },
  };
}

/** A sleep that moves the faked clock instead of waiting. */
function clockSleep() {
  const slept: number[] = [];
  return {
    slept,
    sleep: async (ms: number) => {
      slept.push(ms);
      vi.setSystemTime(Date.now() + ms);
    },
  };
}

describe('c2d-delivery makeHandler: the schedule', () => {
  it.each([10_000, 7_000, 1_000, 60_000])(
    'with an interval of %i ms sweeps at that interval and stops before the next start',
    async (interval) => {
      const { at, delivery } = recordingSweeper();
      const { slept, sleep } = clockSleep();
      const log = new MemoryLog();
      const handle = deliveryFunction.makeHandler({
        delivery,
        registry: new MemoryDeviceRegistry(),
        sweepIntervalMs: interval,
        log,
        sleep,
      });

      const result = (await handle(scheduledEvent)) as { sweeps: number };

      expect(result.sweeps).toBe(at.length);
      expect(at[0]).toBe(T0);
      for (let i = 1; i < at.length; i++) expect((at[i] ?? 0) - (at[i - 1] ?? 0)).toBe(interval);
      expect(slept).toEqual(Array.from({ length: at.length - 1 }, () => interval));
      const last = at.at(-1) ?? 0;
      expect(last).toBeLessThan(T0 + SCHEDULE_PERIOD_MS); // within the window
      expect(last + interval).toBeGreaterThanOrEqual(T0 + SCHEDULE_PERIOD_MS); // one more would overlap the next start
      expect(Date.now()).toBeLessThan(T0 + SCHEDULE_PERIOD_MS);
    },
  );

  it('sweeps again at once, without sleeping, while a sweep comes back full', async () => {
    const full: SweepReport = {
      changed: Array.from({ length: deliveryFunction.SWEEP_BATCH }, (_, i) => ({
        deviceId: 'd1',
        messageId: `m${i}`,
        from: 'Invisible' as const,
        to: 'Enqueued' as const,
      })),
      feedback: [],
      deleted: 0,
      conflicts: 0,
    };
    const { at, delivery } = recordingSweeper([full, full]);
    const { slept, sleep } = clockSleep();
    const log = new MemoryLog();
    const handle = deliveryFunction.makeHandler({
      delivery,
      registry: new MemoryDeviceRegistry(),
      sweepIntervalMs: 30_000,
      log,
      sleep,
    });
    await handle(scheduledEvent);
    expect(at.slice(0, 3)).toEqual([T0, T0, T0]);
    expect(at.slice(3)).toEqual([T0 + 30_000]);
    expect(slept).toEqual([30_000]);
    expect(log.at('info').filter((e) => e.message === 'sweep')).toHaveLength(2);
  });

  it('stops early when the invocation has too little time left for another interval', async () => {
    const { at, delivery } = recordingSweeper();
    const { slept, sleep } = clockSleep();
    const handle = deliveryFunction.makeHandler({
      delivery,
      registry: new MemoryDeviceRegistry(),
      sweepIntervalMs: 10_000,
      log: new MemoryLog(),
      sleep,
    });
    const deadline = T0 + 25_000;
    const context = { getRemainingTimeInMillis: () => deadline - Date.now() } as unknown as Parameters<
      typeof handle
    >[1];
    const result = (await handle(scheduledEvent, context)) as { sweeps: number };
    expect(result.sweeps).toBe(at.length);
    expect(at.every((t) => t < deadline)).toBe(true);
    // It sleeps only when a sweep after the interval still has a 5 s safety margin before the deadline,
    // and stops when the next one would not.
    expect(at.length).toBeGreaterThan(1);
    for (const t of at) expect(deadline - t).toBeGreaterThanOrEqual(5_000);
    expect((at.at(-1) ?? 0) + 10_000).toBeGreaterThan(deadline - 5_000);
    expect(slept.length).toBe(at.length - 1);
  });

  it('releases a lapsed lock and redelivers to a connected device within the sweeping window', async () => {
    const w = await world({ maxInFlight: 1 });
    await w.registry.create({ deviceId: 'd2' });
    await w.send('d1', 'm1');
    await w.send('d2', 'n1');
    w.publisher.failWhen = () => true;
    await w.delivery.deliver('d1');
    await w.delivery.deliver('d2');
    w.publisher.failWhen = undefined;
    await w.registry.setConnectionState('d1', 'Connected', new Date(T0));
    const { sleep } = clockSleep();
    const handle = deliveryFunction.makeHandler({
      delivery: w.delivery,
      registry: w.registry,
      sweepIntervalMs: 10_000,
      log: w.log,
      sleep,
    });

    await handle(scheduledEvent);

    // d1 is connected: redelivered once its lock lapsed; d2 is not: released but left queued.
    expect(w.publisher.deliveries().map((d) => [d.deviceId, d.props['$.mid'], d.props['$.dc']])).toEqual([
      ['d1', 'm1', '2'],
    ]);
    expect((await w.ledger.get('d1', 'm1'))?.lockedUntil).toBe(T0 + LOCK_MS + LOCK_MS);
    expect((await w.ledger.get('d2', 'n1'))?.state).toBe('Enqueued');
    expect(w.log.at('info').some((e) => e.message === 'sweep' && e.context?.redelivered === 1)).toBe(true);
  });
});

describe('c2d-settlement makeHandler', () => {
  async function setup() {
    const w = await world();
    await w.send('d1', 'm1');
    await w.delivery.deliver('d1');
    const lockToken = w.publisher.deliveries()[0]?.props['$.lt'] ?? '';
    const handle = settlementFunction.makeHandler({ delivery: w.delivery, log: w.log });
    return { ...w, lockToken, handle };
  }

  function ruleEvent(deviceId: string, clientId: string, outcome: string, lockToken: string) {
    return { deviceId, outcome, lockToken, clientId, receivedAt: T0 };
  }

  it('settles for the device that published, answers it, and logs the status', async () => {
    const t = await setup();
    const answer = await t.handle(ruleEvent('d1', 'd1', 'complete', t.lockToken));
    expect(answer?.status).toBe(200);
    expect(answer?.body).toMatchObject({ outcome: 'complete', messageId: 'm1', state: 'Completed' });
    expect((await t.ledger.get('d1', 'm1'))?.state).toBe('Completed');
    expect(t.publisher.answers().map((a) => a.topic)).toEqual([settleResponseTopic('d1', 200, t.lockToken)]);
    expect(t.log.at('info').some((e) => e.message === 'settlement' && e.context?.status === 200)).toBe(true);
  });

  it('answers a bad outcome with 400 and changes nothing', async () => {
    const t = await setup();
    const before = await t.ledger.get('d1', 'm1');
    const answer = await t.handle(ruleEvent('d1', 'd1', 'keep', t.lockToken));
    expect(answer?.status).toBe(400);
    expect(await t.ledger.get('d1', 'm1')).toEqual(before);
  });

  it('refuses a topic that names another device than the client id, without touching the ledger', async () => {
    const t = await setup();
    const before = await t.ledger.get('d1', 'm1');
    const publishedBefore = t.publisher.published.length;

    for (const event of [
      ruleEvent('d1', 'd2', 'complete', t.lockToken),
      ruleEvent('d1', '', 'complete', t.lockToken),
    ]) {
      expect(await t.handle(event)).toBeUndefined();
    }

    expect(await t.ledger.get('d1', 'm1')).toEqual(before);
    expect(t.publisher.published).toHaveLength(publishedBefore);
    expect(t.log.at('warn')).toHaveLength(2);
    expect((await t.handle(ruleEvent('d1', 'd1', 'complete', t.lockToken)))?.status).toBe(200);
  });

  it.each([
    ['null', null],
    ['an empty object', {}],
    ['no lock token', { deviceId: 'd1', outcome: 'complete', clientId: 'd1' }],
    ['an empty device id', { deviceId: '', outcome: 'complete', clientId: '', lockToken: 'x' }],
  ])('ignores junk (%s) with a warning', async (_name, event) => {
    const t = await setup();
    const before = await t.ledger.get('d1', 'm1');
    expect(await t.handle(event)).toBeUndefined();
    expect(t.log.at('warn')).toHaveLength(1);
    expect(await t.ledger.get('d1', 'm1')).toEqual(before);
  });
});

describe('feedbackToStream', () => {
  class FakeStream implements StreamSink {
    readonly puts: StreamEntry[][] = [];
    answer: (entries: readonly StreamEntry[]) => boolean[] = (entries) => entries.map(() => true);
    async put(entries: readonly StreamEntry[]): Promise<readonly boolean[]> {
      this.puts.push([...entries]);
      return this.answer(entries);
    }
  }

  const record: FeedbackRecord = {
    id: 'feedback-id-1',
    originalMessageId: 'm1',
    deviceId: 'd1',
    correlationId: 'c1',
    enqueuedTimeUtc: '2030-01-01T00:00:00.000Z',
    statusTimeUtc: '2030-01-01T00:00:01.000Z',
    status: 'success',
    statusCode: 'Success',
    description: 'Success',
  };

  it('writes the record as one JSON entry keyed by device id', async () => {
    const stream = new FakeStream();
    await feedbackToStream(stream)(record);
    expect(stream.puts).toHaveLength(1);
    const [entry] = stream.puts[0] ?? [];
    expect(entry?.partitionKey).toBe('d1');
    expect(JSON.parse(new TextDecoder().decode(entry?.data))).toEqual(record);
  });

  it.each([
    ['refused', () => [false]],
    ['not answered', () => []],
  ])('throws a TransientError when the entry is %s', async (_name, answer) => {
    const stream = new FakeStream();
    stream.answer = answer;
    const error = await feedbackToStream(stream)(record).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(TransientError);
    expect((error as TransientError).code).toBe('FeedbackNotWritten');
  });

  it('as the ledger sink: a refused entry leaves the feedback owed and the sweep writes it again', async () => {
    const stream = new FakeStream();
    stream.answer = (entries) => entries.map(() => false);
    const ledger = new MemoryDeliveryLedger({ feedbackSink: feedbackToStream(stream) });
    const message = createMessage('d1', parseSendRequest({ body: 'x', messageId: 'm1', ack: 'full' }), {
      now: T0,
      config: { defaultTtlMs: 3_600_000, maxDeliveryCount: 10 },
    });
    await ledger.enqueue('d1', message, { maxQueueDepth: 50 });
    await ledger.purge('d1', T0);
    expect((await ledger.get('d1', 'm1'))?.pendingFeedback).toBe('purged');

    stream.answer = (entries) => entries.map(() => true);
    await ledger.releaseExpiredLocks({ now: T0 + 1, limit: 100 });

    expect(stream.puts).toHaveLength(2);
    expect((await ledger.get('d1', 'm1'))?.pendingFeedback).toBeUndefined();
    const written = stream.puts.map(
      (p) => JSON.parse(new TextDecoder().decode(p[0]?.data)) as FeedbackRecord,
    );
    expect(written[1]).toEqual(written[0]);
    expect(written[1]?.status).toBe('purged');
  });
});

describe('IotDevicePublisher', () => {
  it('publishes with QoS 1 on the topic, with the payload', async () => {
    const sent: unknown[] = [];
    const client = {
      send: async (command: unknown) => void sent.push(command),
    } as unknown as IoTDataPlaneClient;
    const payload = new Uint8Array([1, 2, 3]);
    await new IotDevicePublisher(client).publish('devices/d1/messages/devicebound/a=1', payload);
    expect(sent).toHaveLength(1);
    expect(sent[0]).toBeInstanceOf(PublishCommand);
    expect((sent[0] as PublishCommand).input).toEqual({
      topic: 'devices/d1/messages/devicebound/a=1',
      qos: 1,
      payload,
    });
  });

  it('lets a failed publish reject', async () => {
    const client = {
      send: async () => {
        throw new Error('ThrottlingException');
      },
    } as unknown as IoTDataPlaneClient;
    await expect(new IotDevicePublisher(client).publish('t', new Uint8Array())).rejects.toThrow('Throttling');
  });
});
