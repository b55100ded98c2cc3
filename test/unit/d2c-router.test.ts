import { describe, expect, it } from 'vitest';
import { decodeEnvelope, type IngestRecord } from '../../functions/core/d2c/envelope.ts';
import { type RouterDeps, routeBatch, type SourceRecord } from '../../functions/core/d2c/router.ts';
import type {
  DeadLetterStore,
  Log,
  SinkLimits,
  StreamEntry,
  StreamSink,
} from '../../functions/core/ports.ts';
import { routingConfigSchema } from '../../functions/core/routing/config.ts';
import { compileRouting } from '../../functions/core/routing/table.ts';
import { FakeSink, MemoryDeadLetters } from './fakes.ts';

const NOW = new Date('2030-01-02T03:04:05.000Z');

/** A sink whose every call is rejected. */
class ThrowingSink implements StreamSink {
  calls = 0;
  async put(): Promise<readonly boolean[]> {
    this.calls += 1;
    throw new Error('ProvisionedThroughputExceededException');
  }
}

class FakeLog implements Log {
  readonly lines: { level: string; message: string; context?: Record<string, unknown> }[] = [];
  info(message: string, context?: Record<string, unknown>): void {
    this.lines.push({ level: 'info', message, ...(context ? { context } : {}) });
  }
  warn(message: string, context?: Record<string, unknown>): void {
    this.lines.push({ level: 'warn', message, ...(context ? { context } : {}) });
  }
  error(message: string, context?: Record<string, unknown>): void {
    this.lines.push({ level: 'error', message, ...(context ? { context } : {}) });
  }
}

function deps(builtIn: StreamSink, deadLetters: DeadLetterStore = new MemoryDeadLetters()) {
  const sleeps: number[] = [];
  const log = new FakeLog();
  const value: RouterDeps = {
    builtIn,
    deadLetters,
    log,
    limits: { maxMessageBytes: 256 * 1024 },
    sleep: async (ms) => {
      sleeps.push(ms);
    },
    now: () => NOW,
  };
  return { deps: value, sleeps, log };
}

let seq = 0;
const nextSeq = () => String(49_600_000_000_000_000_000 + seq++).padStart(24, '0');

/** A source record holding an ingest record for `device` whose message id ($.mid) is `mid`. */
function message(device: string, mid: string, body = `{"n":"${mid}"}`): SourceRecord {
  const ingest: IngestRecord = {
    topic: `devices/${device}/messages/events/$.mid=${mid}&$.ct=application%2Fjson`,
    clientId: device,
    principal: `sas:${device}`,
    enqueuedTime: NOW.getTime(),
    ingestId: `ingest-${mid}`,
    body: Buffer.from(body).toString('base64'),
  };
  return raw(JSON.stringify(ingest));
}

function raw(text: string): SourceRecord {
  return { sequenceNumber: nextSeq(), data: Buffer.from(text) };
}

/** `devices` × `perDevice` records, interleaved round-robin: a0 b0 c0 a1 b1 c1 ... */
function interleaved(devices: readonly string[], perDevice: number): SourceRecord[] {
  const out: SourceRecord[] = [];
  for (let i = 0; i < perDevice; i++) for (const d of devices) out.push(message(d, `${d}-${i}`));
  return out;
}

const range = (device: string, n: number) => Array.from({ length: n }, (_, i) => `${device}-${i}`);

describe('routeBatch: delivery', () => {
  it('delivers every good record as an envelope keyed by device id', async () => {
    const sink = new FakeSink();
    const records = [message('a', 'a-0'), message('b', 'b-0'), message('a', 'a-1')];
    const result = await routeBatch(records, deps(sink).deps);
    expect(result).toEqual({ delivered: 3, deadLettered: 0 });
    expect(sink.written.map((e) => e.partitionKey).sort()).toEqual(['a', 'a', 'b']);
    for (const entry of sink.written) {
      const envelope = decodeEnvelope(entry.data);
      expect(envelope.deviceId).toBe(entry.partitionKey);
      expect(envelope.body).toEqual({ n: envelope.messageId });
    }
  });

  it('does nothing for an empty batch', async () => {
    const sink = new FakeSink();
    expect(await routeBatch([], deps(sink).deps)).toEqual({ delivered: 0, deadLettered: 0 });
    expect(sink.calls).toHaveLength(0);
  });

  it('keeps per-device order across 3 devices x 50 interleaved records', async () => {
    const sink = new FakeSink();
    const devices = ['a', 'b', 'c'];
    const result = await routeBatch(interleaved(devices, 50), deps(sink).deps);
    expect(result).toEqual({ delivered: 150, deadLettered: 0 });
    for (const d of devices) expect(sink.idsOf(d)).toEqual(range(d, 50));
  });

  it('puts at most one record per device in each PutRecords call', async () => {
    const sink = new FakeSink();
    await routeBatch(interleaved(['a', 'b', 'c'], 50), deps(sink).deps);
    expect(sink.calls.length).toBeGreaterThanOrEqual(50);
    for (const call of sink.calls) {
      const keys = call.map((e) => e.partitionKey);
      expect(new Set(keys).size).toBe(keys.length);
    }
  });

  it('delivers everything, in order, when a sink fails some entries a few times', async () => {
    // a-3 fails twice, b-10 three times, c-0 once; each call holds at most one of them.
    const failuresLeft = new Map([
      ['a-3', 2],
      ['b-10', 3],
      ['c-0', 1],
    ]);
    const sink = new FakeSink((entry) => {
      const id = decodeEnvelope(entry.data).messageId;
      const left = failuresLeft.get(id) ?? 0;
      if (left === 0) return true;
      failuresLeft.set(id, left - 1);
      return false;
    });
    const { deps: d, sleeps } = deps(sink);
    const result = await routeBatch(interleaved(['a', 'b', 'c'], 20), d);
    expect(result).toEqual({ delivered: 60, deadLettered: 0 });
    for (const device of ['a', 'b', 'c']) expect(sink.idsOf(device)).toEqual(range(device, 20));
    expect(sink.writtenIds).toHaveLength(60);
    expect(sleeps.length).toBeGreaterThan(0);
  });

  it('backs off exponentially from baseDelayMs between failed attempts', async () => {
    let calls = 0;
    const sink = new FakeSink(() => calls++ >= 3);
    const { deps: d, sleeps } = deps(sink);
    const result = await routeBatch([message('a', 'a-0')], { ...d, baseDelayMs: 10 });
    expect(result).toEqual({ delivered: 1, deadLettered: 0 });
    expect(sleeps).toEqual([10, 20, 40]);
  });
});

describe('routeBatch: what the event source must retry', () => {
  it('returns the first undelivered record when a sink always fails one device', async () => {
    const sink = new FakeSink((entry) => entry.partitionKey !== 'b');
    const records = [message('a', 'a-0'), message('c', 'c-0'), ...interleaved(['a', 'b', 'c'], 10)];
    const { deps: d, log } = deps(sink);
    const result = await routeBatch(records, d);

    const firstB = records.findIndex((r) => decodeEnvelopeIdOf(r).startsWith('b-'));
    expect(firstB).toBe(3);
    expect(result.retryFrom).toBe(records[firstB]?.sequenceNumber);
    expect(sink.idsOf('b')).toEqual([]);
    const written = new Set(sink.writtenIds);
    for (const r of records.slice(0, firstB)) expect(written.has(decodeEnvelopeIdOf(r))).toBe(true);
    expect(result.delivered).toBe(sink.written.length);
    expect(result.deadLettered).toBe(0);
    expect(log.lines.some((l) => l.level === 'error' && /gave up/.test(l.message))).toBe(true);
  });

  it('gives up after maxAttempts calls that fail', async () => {
    const sink = new FakeSink((entry) => entry.partitionKey !== 'b');
    const { deps: d, sleeps } = deps(sink);
    await routeBatch([message('b', 'b-0')], { ...d, maxAttempts: 3 });
    expect(sink.calls).toHaveLength(3);
    expect(sleeps).toEqual([100, 200]);
  });

  it('returns the first record when the sink throws on every call', async () => {
    const sink = new ThrowingSink();
    const records = interleaved(['a', 'b'], 3);
    const { deps: d, log } = deps(sink);
    const result = await routeBatch(records, d);
    expect(result).toEqual({ delivered: 0, deadLettered: 0, retryFrom: records[0]?.sequenceNumber });
    expect(sink.calls).toBe(4);
    expect(log.lines.filter((l) => l.level === 'warn' && /write failed/.test(l.message))).toHaveLength(4);
  });

  it('retries from a good record that precedes a dead-lettered one when the good one cannot be written', async () => {
    const sink = new FakeSink(() => false);
    const records = [message('a', 'a-0'), raw('not json')];
    const result = await routeBatch(records, deps(sink).deps);
    expect(result.retryFrom).toBe(records[0]?.sequenceNumber);
    expect(result.deadLettered).toBe(0);
  });
});

/** The $.mid of a record built by {@link message}. */
function decodeEnvelopeIdOf(record: SourceRecord): string {
  const text = Buffer.from(record.data).toString('utf8');
  return /\$\.mid=([^&]+)/.exec(text)?.[1] ?? '';
}

describe('routeBatch: dead letters', () => {
  const ingest = (overrides: Partial<Record<keyof IngestRecord, unknown>>) =>
    raw(
      JSON.stringify({
        topic: 'devices/d1/messages/events/',
        clientId: 'd1',
        enqueuedTime: NOW.getTime(),
        ingestId: 'ing-x',
        ...overrides,
      }),
    );

  it('dead-letters bad records with code and reason and never sends them to the sink', async () => {
    const sink = new FakeSink();
    const store = new MemoryDeadLetters();
    const records = [
      message('a', 'a-0'),
      raw('{"topic": '),
      ingest({ clientId: undefined, ingestId: 'ing-schema' }),
      ingest({ topic: 'devices/d1/telemetry', ingestId: 'ing-topic' }),
      ingest({ clientId: 'mallory', ingestId: 'ing-spoof' }),
      ingest({ topic: 'devices/d1/messages/events/$.nope=1', ingestId: 'ing-bag' }),
      message('a', 'a-1'),
    ];
    const { deps: d, log } = deps(sink, store);
    const result = await routeBatch(records, d);

    expect(result).toEqual({ delivered: 2, deadLettered: 5 });
    expect(sink.writtenIds).toEqual(['a-0', 'a-1']);
    expect(sink.calls.flat()).toHaveLength(2);
    expect(store.letters.map((l) => [l.code, l.deviceId, l.id])).toEqual([
      ['UndecodableRecord', 'unknown', records[1]?.sequenceNumber],
      ['InvalidIngestRecord', 'unknown', records[2]?.sequenceNumber],
      ['InvalidD2CTopic', 'd1', 'ing-topic'],
      ['DeviceIdMismatch', 'mallory', 'ing-spoof'],
      ['InvalidPropertyBag', 'd1', 'ing-bag'],
    ]);
    expect(store.letters[0]?.reason).toMatch(/JSON/);
    expect(store.letters[1]?.reason).toMatch(/^ingest record does not match the schema: /);
    expect(store.letters[2]?.reason).toContain("topic 'devices/d1/telemetry' is not a device-to-cloud topic");
    expect(store.letters[3]?.reason).toContain("client 'mallory' published on the topic of device 'd1'");
    expect(store.letters[4]?.reason).toContain("unknown system property '$.nope'");
    for (const [i, letter] of store.letters.entries()) {
      expect(letter.source).toBe('router');
      expect(letter.at).toBe(NOW.toISOString());
      const original = records[i + 1];
      const kept = Buffer.from(letter.record, letter.recordEncoding === 'base64' ? 'base64' : 'utf8');
      expect(kept.equals(Buffer.from(original?.data ?? []))).toBe(true);
    }
    expect(log.lines.filter((l) => l.message === 'd2c message dead-lettered')).toHaveLength(5);
  });

  it('dead-letters a body over the limit as MessageTooLarge', async () => {
    const sink = new FakeSink();
    const store = new MemoryDeadLetters();
    const { deps: d } = deps(sink, store);
    const result = await routeBatch([message('a', 'a-0', 'x'.repeat(101))], {
      ...d,
      limits: { maxMessageBytes: 100 },
    });
    expect(result).toEqual({ delivered: 0, deadLettered: 1 });
    expect(store.letters[0]).toMatchObject({ code: 'MessageTooLarge', deviceId: 'a', id: 'ingest-a-0' });
    expect(sink.calls).toHaveLength(0);
  });

  it('writes all dead letters of a batch in one call', async () => {
    let calls = 0;
    const store: DeadLetterStore = {
      put: async () => {
        calls += 1;
      },
    };
    await routeBatch([raw('x'), raw('y'), raw('z')], deps(new FakeSink(), store).deps);
    expect(calls).toBe(1);
  });

  it('retries from the first bad record when the dead-letter store throws, and still delivers the good ones', async () => {
    const sink = new FakeSink();
    const records = [
      message('a', 'a-0'),
      message('a', 'a-1'),
      raw('bad 1'),
      message('b', 'b-0'),
      raw('bad 2'),
    ];
    const { deps: d, log } = deps(sink, new MemoryDeadLetters(true));
    const result = await routeBatch(records, d);
    expect(result).toEqual({ delivered: 3, deadLettered: 0, retryFrom: records[2]?.sequenceNumber });
    expect(sink.writtenIds.sort()).toEqual(['a-0', 'a-1', 'b-0']);
    expect(log.lines.some((l) => l.level === 'error' && l.message === 'dead-letter write failed')).toBe(true);
  });
});

describe('routeBatch: an endpoint that refuses a message for good', () => {
  const config = {
    endpoints: [{ name: 'queue', type: 'sqs' }],
    routes: [{ name: 'all', condition: 'true', endpointNames: ['queue'] }],
  };
  const refusing = () =>
    new FakeSink((entry) =>
      decodeEnvelope(entry.data).messageId === 'a-1' ? { rejected: 'InvalidParameterValue: too long' } : true,
    );

  it('dead-letters it for that endpoint at once, without retrying, and keeps writing the device in order', async () => {
    const queue = refusing();
    const letters = new MemoryDeadLetters();
    const d = deps(new FakeSink(), letters);
    const records = [message('a', 'a-0'), message('a', 'a-1'), message('a', 'a-2'), message('b', 'b-0')];
    const result = await routeBatch(records, { ...d.deps, endpoints: { queue }, routing: routing(config) });
    expect(result).toEqual({ delivered: 3, deadLettered: 1 });
    expect(queue.idsOf('a')).toEqual(['a-0', 'a-2']);
    expect(queue.calls.flat().filter((e) => decodeEnvelope(e.data).messageId === 'a-1')).toHaveLength(1);
    expect(d.sleeps).toEqual([]);
    expect(letters.letters).toEqual([
      expect.objectContaining({
        deviceId: 'a',
        code: 'EndpointRejected',
        reason: "endpoint 'queue' refused the message: InvalidParameterValue: too long",
        record: Buffer.from(records[1]!.data).toString('utf8'),
      }),
    ]);
    expect(letters.letters[0]?.id).toMatch(/@queue$/);
  });

  it('retries from the refused record when the dead letter cannot be written', async () => {
    const d = deps(new FakeSink(), new MemoryDeadLetters(true));
    const records = [message('a', 'a-0'), message('a', 'a-1'), message('a', 'a-2')];
    const result = await routeBatch(records, {
      ...d.deps,
      endpoints: { queue: refusing() },
      routing: routing(config),
    });
    expect(result.retryFrom).toBe(records[1]?.sequenceNumber);
    expect(result.deadLettered).toBe(0);
  });
});

describe('routeBatch: PutRecords limits', () => {
  it('splits a layer of more than 500 devices into calls of at most 500 entries', async () => {
    const sink = new FakeSink();
    const devices = Array.from({ length: 1_201 }, (_, i) => `dev-${i}`);
    const result = await routeBatch(interleaved(devices, 1), deps(sink).deps);
    expect(result).toEqual({ delivered: 1_201, deadLettered: 0 });
    expect(sink.calls.map((c) => c.length)).toEqual([500, 500, 201]);
  });

  it('keeps each call under 5 MiB', async () => {
    const sink = new FakeSink();
    const body = JSON.stringify({ blob: 'x'.repeat(200 * 1024) });
    const records = Array.from({ length: 40 }, (_, i) => message(`big-${i}`, `big-${i}-0`, body));
    const result = await routeBatch(records, deps(sink).deps);
    expect(result).toEqual({ delivered: 40, deadLettered: 0 });
    expect(sink.calls.length).toBeGreaterThan(1);
    for (const call of sink.calls) {
      expect(call.reduce((n, e) => n + e.data.length, 0)).toBeLessThanOrEqual(5 * 1024 * 1024);
    }
  });
});

describe('routeBatch under steady partial throttling', () => {
  it('keeps going while every call writes something, and delivers everything', async () => {
    const { routeBatch: route } = await import('../../functions/core/d2c/router.ts');
    const ingest = (device: string, n: number) => ({
      sequenceNumber: `${device}-${n}`,
      data: Buffer.from(
        JSON.stringify({
          body: '',
          topic: `devices/${device}/messages/events/`,
          clientId: device,
          enqueuedTime: 0,
          ingestId: `${device}-${n}`,
        }),
      ),
    });
    const records = Array.from({ length: 30 }, (_, n) => [ingest('a', n), ingest('b', n)]).flat();
    const written: string[] = [];
    let calls = 0;
    const result = await route(records, {
      // Every call throttles all but the first entry: progress is slow but steady.
      builtIn: {
        put: async (entries) => {
          calls += 1;
          return entries.map((e, i) => {
            if (i === 0) written.push(e.partitionKey);
            return i === 0;
          });
        },
      },
      deadLetters: { put: async () => undefined },
      log: { info: () => undefined, warn: () => undefined, error: () => undefined },
      limits: { maxMessageBytes: 1024 },
      sleep: async () => undefined,
    });
    expect(result.retryFrom).toBeUndefined();
    expect(result.delivered).toBe(60);
    expect(written).toHaveLength(60);
    expect(calls).toBeGreaterThan(4);
  });
});

/** A message with properties and a JSON body that routes can query. */
function routable(device: string, mid: string, props: string, body: unknown): SourceRecord {
  const ingest: IngestRecord = {
    topic: `devices/${device}/messages/events/$.mid=${mid}&$.ct=application%2Fjson&$.ce=utf-8${props ? `&${props}` : ''}`,
    clientId: device,
    principal: `sas:${device}`,
    enqueuedTime: NOW.getTime(),
    ingestId: `ingest-${mid}`,
    body: Buffer.from(JSON.stringify(body)).toString('base64'),
  };
  return raw(JSON.stringify(ingest));
}

function routing(config: unknown) {
  return compileRouting(routingConfigSchema.parse(config), 'unit-hub');
}

describe('routeBatch: routes, fallback and enrichments', () => {
  const config = {
    endpoints: [
      { name: 'alerts', type: 'kinesis' },
      { name: 'hot', type: 'kinesis' },
    ],
    routes: [
      { name: 'by-property', condition: "level = 'critical'", endpointNames: ['alerts'] },
      { name: 'by-body', condition: '$body.temp > 40', endpointNames: ['hot'] },
      { name: 'also-by-body', condition: '$body.temp > 50', endpointNames: ['hot'] },
      { name: 'off', condition: 'true', endpointNames: ['alerts'], isEnabled: false },
    ],
    enrichments: [
      { key: 'hub', value: '$iothubname', endpointNames: ['alerts'] },
      { key: 'tier', value: 'gold', endpointNames: ['alerts', 'events'] },
    ],
  };

  function setup(overrides: Record<string, unknown> = {}, sinks: Partial<Record<string, StreamSink>> = {}) {
    const builtIn = new FakeSink();
    const alerts = new FakeSink();
    const hot = new FakeSink();
    const d = deps(builtIn).deps;
    const value: RouterDeps = {
      ...d,
      endpoints: { alerts: sinks.alerts ?? alerts, hot: sinks.hot ?? hot },
      routing: routing({ ...config, ...overrides }),
    };
    return { builtIn, alerts, hot, deps: value };
  }

  it('sends a message to every endpoint whose route matches, each once, and the rest to the fallback', async () => {
    const t = setup();
    const result = await routeBatch(
      [
        routable('d1', 'crit-hot', 'level=critical', { temp: 60 }),
        routable('d1', 'crit', 'level=critical', { temp: 10 }),
        routable('d1', 'hot', 'level=info', { temp: 45 }),
        routable('d1', 'plain', 'level=info', { temp: 20 }),
      ],
      t.deps,
    );
    expect(result).toEqual({ delivered: 4, deadLettered: 0 });
    expect(t.alerts.writtenIds).toEqual(['crit-hot', 'crit']);
    // Two routes to 'hot' match 'crit-hot': it is written there once.
    expect(t.hot.writtenIds).toEqual(['crit-hot', 'hot']);
    expect(t.builtIn.writtenIds).toEqual(['plain']);
  });

  it('adds enrichments per endpoint, over the device properties, after routing', async () => {
    const t = setup();
    await routeBatch(
      [
        routable('d1', 'e1', 'level=critical&tier=bronze', { temp: 0 }),
        routable('d1', 'e2', 'level=info', { temp: 0 }),
      ],
      t.deps,
    );
    expect(decodeEnvelope(t.alerts.written[0]!.data).properties).toEqual({
      level: 'critical',
      tier: 'gold',
      hub: 'unit-hub',
    });
    expect(decodeEnvelope(t.builtIn.written[0]!.data).properties).toEqual({ level: 'info', tier: 'gold' });
  });

  it('drops (and counts) messages that match no route when the fallback route is off', async () => {
    const t = setup({ fallbackRoute: { isEnabled: false } });
    const result = await routeBatch(
      [
        routable('d1', 'none', 'level=info', { temp: 1 }),
        routable('d1', 'crit', 'level=critical', { temp: 1 }),
      ],
      t.deps,
    );
    expect(result).toEqual({ delivered: 1, deadLettered: 0, unrouted: 1 });
    expect(t.builtIn.written).toEqual([]);
    expect(t.alerts.writtenIds).toEqual(['crit']);
  });

  it('retries from the first record one of its endpoints lacks, keeping per-device order there', async () => {
    const failing = new ThrowingSink();
    const t = setup({}, { hot: failing });
    const records = [
      routable('d1', 'a', 'level=critical', { temp: 1 }),
      routable('d1', 'b', 'level=info', { temp: 45 }),
      routable('d1', 'c', 'level=critical', { temp: 1 }),
    ];
    const result = await routeBatch(records, t.deps);
    expect(result.retryFrom).toBe(records[1]!.sequenceNumber);
    expect(failing.calls).toBeGreaterThan(0);
    // 'a' is safe; 'c' may have been written to alerts already and will be written again on retry.
    expect(t.alerts.writtenIds[0]).toBe('a');
  });

  it('dead-letters a message routed to an endpoint the deployment has no stream for', async () => {
    const letters = new MemoryDeadLetters();
    const d: RouterDeps = { ...deps(new FakeSink(), letters).deps, endpoints: {}, routing: routing(config) };
    const result = await routeBatch([routable('d1', 'x', 'level=critical', {})], d);
    expect(result).toEqual({ delivered: 0, deadLettered: 1 });
    expect(letters.letters[0]?.code).toBe('UnknownEndpoint');
  });
});

describe('routeBatch: sink limits', () => {
  /** A {@link FakeSink} that declares limits. */
  class LimitedSink extends FakeSink {
    constructor(
      readonly limits: SinkLimits,
      accept?: (entry: StreamEntry, call: number) => boolean,
    ) {
      super(accept);
    }
  }
  const roomy = { maxBytes: 1024 * 1024, maxEntryBytes: 1024 * 1024 };

  it('sends calls of at most maxEntries with one entry per device, in per-device order', async () => {
    const sink = new LimitedSink({ maxEntries: 10, ...roomy });
    const devices = Array.from({ length: 25 }, (_, i) => `d${i}`);
    const result = await routeBatch(interleaved(devices, 3), deps(sink).deps);
    expect(result).toEqual({ delivered: 75, deadLettered: 0 });
    expect(sink.calls.flat()).toHaveLength(75);
    expect(Math.max(...sink.calls.map((c) => c.length))).toBe(10);
    for (const call of sink.calls) {
      const keys = call.map((e) => e.partitionKey);
      expect(new Set(keys).size).toBe(keys.length);
    }
    for (const d of devices) expect(sink.idsOf(d)).toEqual(range(d, 3));
  });

  it('cuts calls at maxBytes', async () => {
    const sink = new LimitedSink({ maxEntries: 10, maxBytes: 1000, maxEntryBytes: 1000 });
    const result = await routeBatch(interleaved(['a', 'b', 'c', 'd'], 1), deps(sink).deps);
    expect(result).toEqual({ delivered: 4, deadLettered: 0 });
    for (const call of sink.calls)
      expect(call.reduce((n, e) => n + e.data.length, 0)).toBeLessThanOrEqual(1000);
    expect(sink.calls.length).toBeGreaterThan(1);
  });

  it("gives an atomic sink each device's whole run in one call, in order", async () => {
    const sink = new LimitedSink({ maxEntries: 100, ...roomy, atomic: true });
    const result = await routeBatch(interleaved(['a', 'b', 'c'], 5), deps(sink).deps);
    expect(result).toEqual({ delivered: 15, deadLettered: 0 });
    expect(sink.calls).toHaveLength(1);
    const ids = sink.calls[0]!.map((e) => decodeEnvelope(e.data).messageId);
    expect(ids).toEqual([...range('a', 5), ...range('b', 5), ...range('c', 5)]);
  });

  it('splits an atomic sink’s runs at maxEntries, keeping per-device order, and resends a failed call whole', async () => {
    // The first call fails whole; every later one is written.
    const sink = new LimitedSink({ maxEntries: 4, ...roomy, atomic: true }, (_, call) => call !== 0);
    const result = await routeBatch(interleaved(['a', 'b'], 3), deps(sink).deps);
    expect(result).toEqual({ delivered: 6, deadLettered: 0 });
    // The failed first call is sent again unchanged (an S3 object is rewritten, not duplicated).
    expect(sink.calls[1]).toEqual(sink.calls[0]);
    for (const call of sink.calls) expect(call.length).toBeLessThanOrEqual(4);
    expect(sink.idsOf('a')).toEqual(range('a', 3));
    expect(sink.idsOf('b')).toEqual(range('b', 3));
  });

  it('dead-letters an envelope over maxEntryBytes for that endpoint only; the others still get it', async () => {
    const builtIn = new FakeSink();
    const small = new LimitedSink({ maxEntries: 10, maxBytes: 1000, maxEntryBytes: 1000 });
    const big = new FakeSink();
    const letters = new MemoryDeadLetters();
    const d: RouterDeps = {
      ...deps(builtIn, letters).deps,
      endpoints: { small, big },
      routing: routing({
        endpoints: [
          { name: 'small', type: 'kinesis' },
          { name: 'big', type: 'kinesis' },
        ],
        routes: [
          { name: 'to-small', condition: 'true', endpointNames: ['small'] },
          { name: 'to-big', condition: 'true', endpointNames: ['big'] },
        ],
      }),
    };
    const records = [
      routable('d1', 'tiny-0', '', { n: 0 }),
      routable('d1', 'huge', '', { blob: 'x'.repeat(2000) }),
      routable('d1', 'tiny-1', '', { n: 1 }),
    ];
    const result = await routeBatch(records, d);

    expect(result).toEqual({ delivered: 3, deadLettered: 1 });
    expect(small.writtenIds).toEqual(['tiny-0', 'tiny-1']);
    expect(big.writtenIds).toEqual(['tiny-0', 'huge', 'tiny-1']);
    expect(builtIn.written).toEqual([]);
    expect(letters.letters).toHaveLength(1);
    expect(letters.letters[0]).toMatchObject({
      code: 'EndpointMessageTooLarge',
      deviceId: 'd1',
      id: 'ingest-huge@small',
      source: 'router',
    });
    expect(letters.letters[0]?.reason).toContain("endpoint 'small' takes at most 1000");
    const kept = Buffer.from(letters.letters[0]!.record, 'utf8');
    expect(kept.equals(Buffer.from(records[1]!.data))).toBe(true);
  });
});
