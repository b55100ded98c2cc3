import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { type KinesisClient, PutRecordCommand } from '@aws-sdk/client-kinesis';
import type { KinesisStreamBatchResponse, KinesisStreamEvent } from 'aws-lambda';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CheckpointStore } from '../../local/checkpoints.ts';
import { ensureStreams } from '../../local/emulators.ts';
import { KinesisMapping } from '../../local/kinesis-mapping.ts';
import type { LocalKinesisMapping, LocalStream } from '../../local/template.ts';
import { startTestKinesis, type TestKinesis } from '../support/emulators.ts';

const FUNCTION_ID = 'RouterFunction';
const SHARD = 'shardId-000000000000';

let testKinesis: TestKinesis;
let kinesis: KinesisClient;
let dataDir: string;
let streamCounter = 0;

beforeAll(async () => {
  testKinesis = await startTestKinesis();
  kinesis = testKinesis.client;
  dataDir = mkdtempSync(path.join(tmpdir(), 'kinesis-mapping-'));
});

afterAll(async () => {
  await testKinesis.close();
  rmSync(dataDir, { recursive: true, force: true });
});

const running: KinesisMapping[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((m) => m.stop()));
});

/** A fresh stream (own name, so tests do not see each other's records) and a data directory for it. */
async function newStream(shardCount = 1): Promise<{ stream: LocalStream; dir: string }> {
  streamCounter += 1;
  const name = `mapping-test-${streamCounter}`;
  const stream: LocalStream = {
    logicalId: `Stream${streamCounter}`,
    name,
    arn: `arn:aws:kinesis:us-east-1:000000000000:stream/${name}`,
    shardCount,
  };
  await ensureStreams(kinesis, [stream]);
  return { stream, dir: path.join(dataDir, name) };
}

function mappingFor(stream: LocalStream, settings: Partial<LocalKinesisMapping> = {}): LocalKinesisMapping {
  return {
    logicalId: `Mapping-${stream.name}`,
    functionLogicalId: FUNCTION_ID,
    streamName: stream.name,
    batchSize: 10,
    startingPosition: 'TRIM_HORIZON',
    bisectOnError: false,
    reportBatchItemFailures: false,
    maxRetryAttempts: 2,
    ...settings,
  };
}

/** Puts records one after another (so their order on a shard is the call order); returns sequence numbers. */
async function put(stream: LocalStream, values: string[], partitionKey = 'device-1'): Promise<string[]> {
  const seqs: string[] = [];
  for (const value of values) {
    const out = await kinesis.send(
      new PutRecordCommand({ StreamName: stream.name, PartitionKey: partitionKey, Data: Buffer.from(value) }),
    );
    seqs.push(out.SequenceNumber ?? '');
  }
  return seqs;
}

type Behaviour = (event: KinesisStreamEvent, call: number) => unknown;

/** A fake `invoke` that records each event, then does what `behaviour` says (return a value or throw). */
class FakeFunction {
  readonly events: KinesisStreamEvent[] = [];
  readonly functionIds: string[] = [];
  constructor(private readonly behaviour: Behaviour = () => undefined) {}

  readonly invoke = async (functionLogicalId: string, event: unknown): Promise<unknown> => {
    this.functionIds.push(functionLogicalId);
    const e = event as KinesisStreamEvent;
    this.events.push(e);
    return this.behaviour(e, this.events.length);
  };

  /** Record values, one array per invocation. */
  get batches(): string[][] {
    return this.events.map((e) => e.Records.map((r) => Buffer.from(r.kinesis.data, 'base64').toString()));
  }
}

/** On-failure records each mapping sent, per data directory and queue name. */
const sent = new Map<string, string[]>();
function sentTo(dir: string, queue: string): string[] {
  const key = `${dir}|${queue}`;
  let list = sent.get(key);
  if (!list) {
    list = [];
    sent.set(key, list);
  }
  return list;
}

async function startMapping(
  settings: LocalKinesisMapping,
  stream: LocalStream,
  fake: FakeFunction,
  dir: string,
  lines: string[] = [],
  checkpoints = new CheckpointStore(dir),
): Promise<KinesisMapping> {
  const mapping = new KinesisMapping(settings, stream, {
    kinesis,
    checkpoints,
    invoke: fake.invoke,
    log: (line) => lines.push(line),
    sendToQueue: async (queue, body) => {
      sentTo(dir, queue).push(body);
    },
    idleMs: 20,
  });
  running.push(mapping);
  await mapping.start();
  return mapping;
}

/** A mapping whose idle wait (an hour) the test outlives many times over: only wake() can end it. */
async function startWakeOnlyMapping(
  settings: LocalKinesisMapping,
  stream: LocalStream,
  fake: FakeFunction,
  dir: string,
): Promise<KinesisMapping> {
  const mapping = new KinesisMapping(settings, stream, {
    kinesis,
    checkpoints: new CheckpointStore(dir),
    invoke: fake.invoke,
    log: () => {},
    sendToQueue: async () => {},
    idleMs: 3_600_000,
  });
  running.push(mapping);
  await mapping.start();
  return mapping;
}

async function waitUntil(done: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const values = (n: number, prefix = 'r') => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

describe('KinesisMapping', () => {
  it('delivers every record in order, in Lambda-shaped events of at most batchSize records', async () => {
    const { stream, dir } = await newStream();
    const seqs = await put(stream, values(7));
    const fake = new FakeFunction();
    const settings = mappingFor(stream, { batchSize: 3 });
    await startMapping(settings, stream, fake, dir);
    await waitUntil(() => fake.batches.flat().length >= 7);
    await pause(100);

    expect(fake.batches).toEqual([['r0', 'r1', 'r2'], ['r3', 'r4', 'r5'], ['r6']]);
    expect(fake.functionIds.every((id) => id === FUNCTION_ID)).toBe(true);
    const records = fake.events.flatMap((e) => e.Records);
    expect(records.map((r) => r.kinesis.sequenceNumber)).toEqual(seqs);
    const first = records[0]!;
    expect(first).toMatchObject({
      eventSource: 'aws:kinesis',
      eventSourceARN: stream.arn,
      eventName: 'aws:kinesis:record',
      eventVersion: '1.0',
      awsRegion: 'us-east-1',
      eventID: `${SHARD}:${seqs[0]}`,
      kinesis: {
        kinesisSchemaVersion: '1.0',
        partitionKey: 'device-1',
        sequenceNumber: seqs[0],
        data: Buffer.from('r0').toString('base64'),
      },
    });
    expect(first.kinesis.approximateArrivalTimestamp).toBeGreaterThan(1_600_000_000);
    expect(first.kinesis.approximateArrivalTimestamp).toBeLessThan(Date.now() / 1000 + 60);
    // Checkpointed after the last record.
    expect(new CheckpointStore(dir).get(`${settings.logicalId}/${SHARD}`)).toBe(seqs[6]);
  });

  it('delivers records that arrive while it runs, and keeps per-shard order with two shards', async () => {
    const { stream, dir } = await newStream(2);
    const fake = new FakeFunction();
    await startMapping(mappingFor(stream, { batchSize: 4 }), stream, fake, dir);
    const keys = ['alpha', 'bravo', 'charlie', 'delta'];
    for (let i = 0; i < 5; i++) {
      for (const key of keys) await put(stream, [`${key}-${i}`], key);
    }
    await waitUntil(() => fake.batches.flat().length >= 20);
    await pause(100);
    const seen = fake.batches.flat();
    expect(seen).toHaveLength(20);
    for (const key of keys) {
      expect(seen.filter((v) => v.startsWith(key))).toEqual(values(5, `${key}-`));
    }
    expect(Math.max(...fake.batches.map((b) => b.length))).toBeLessThanOrEqual(4);
  });

  it('resumes at exactly the first reported item failure, without re-sending what came before', async () => {
    const { stream, dir } = await newStream();
    const seqs = await put(stream, values(5));
    const fake = new FakeFunction((_event, call): KinesisStreamBatchResponse => {
      if (call === 1)
        return { batchItemFailures: [{ itemIdentifier: seqs[2]! }, { itemIdentifier: seqs[4]! }] };
      return { batchItemFailures: [] };
    });
    const settings = mappingFor(stream, { batchSize: 5, reportBatchItemFailures: true });
    await startMapping(settings, stream, fake, dir);
    await waitUntil(() => fake.events.length >= 2);
    await pause(200);
    expect(fake.batches).toEqual([
      ['r0', 'r1', 'r2', 'r3', 'r4'],
      ['r2', 'r3', 'r4'],
    ]);
    expect(new CheckpointStore(dir).get(`${settings.logicalId}/${SHARD}`)).toBe(seqs[4]);
  });

  it('takes the earliest failed item when several are reported out of order', async () => {
    const { stream, dir } = await newStream();
    const seqs = await put(stream, values(5));
    const fake = new FakeFunction((_event, call) =>
      call === 1 ? { batchItemFailures: [{ itemIdentifier: seqs[3] }, { itemIdentifier: seqs[1] }] } : {},
    );
    await startMapping(
      mappingFor(stream, { batchSize: 5, reportBatchItemFailures: true }),
      stream,
      fake,
      dir,
    );
    await waitUntil(() => fake.events.length >= 2);
    await pause(200);
    expect(fake.batches).toEqual([values(5), ['r1', 'r2', 'r3', 'r4']]);
  });

  it('fails the whole batch when an itemIdentifier is unknown or missing', async () => {
    const { stream, dir } = await newStream();
    await put(stream, values(4));
    const fake = new FakeFunction((_event, call) => {
      if (call === 1) return { batchItemFailures: [{ itemIdentifier: 'not-a-sequence-number' }] };
      if (call === 2) return { batchItemFailures: [{}] };
      return undefined;
    });
    await startMapping(
      mappingFor(stream, { batchSize: 4, reportBatchItemFailures: true }),
      stream,
      fake,
      dir,
    );
    await waitUntil(() => fake.events.length >= 3);
    await pause(200);
    expect(fake.batches).toEqual([values(4), values(4), values(4)]);
  });

  it('ignores batchItemFailures when ReportBatchItemFailures is not enabled', async () => {
    const { stream, dir } = await newStream();
    const seqs = await put(stream, values(3));
    const fake = new FakeFunction(() => ({ batchItemFailures: [{ itemIdentifier: seqs[1] }] }));
    await startMapping(mappingFor(stream, { batchSize: 3 }), stream, fake, dir);
    await waitUntil(() => fake.events.length >= 1);
    await pause(200);
    expect(fake.batches).toEqual([values(3)]);
  });

  it('bisects a failing batch, describes the poison record on the on-failure queue and moves on', async () => {
    const { stream, dir } = await newStream();
    const seqs = await put(stream, values(4));
    const lines: string[] = [];
    const fake = new FakeFunction((event) => {
      const data = event.Records.map((r) => Buffer.from(r.kinesis.data, 'base64').toString());
      if (data.includes('r2')) throw new Error('poison record r2');
      return undefined;
    });
    const settings = mappingFor(stream, {
      batchSize: 4,
      bisectOnError: true,
      maxRetryAttempts: 2,
      onFailureQueueName: 'router-failures',
    });
    await startMapping(settings, stream, fake, dir, lines);
    await waitUntil(() => fake.batches.length >= 5);
    await pause(150);

    // Whole batch, then halves, then the failing half's halves; the poison record's retries run out.
    expect(fake.batches).toEqual([['r0', 'r1', 'r2', 'r3'], ['r0', 'r1'], ['r2', 'r3'], ['r2'], ['r3']]);
    const described = sentTo(dir, 'router-failures').map(
      (l) => JSON.parse(l) as { requestContext: { condition: string }; KinesisBatchInfo: object },
    );
    expect(described).toHaveLength(1);
    expect(described[0]!.requestContext.condition).toBe('RetryAttemptsExhausted');
    expect(described[0]!.KinesisBatchInfo).toEqual({
      shardId: SHARD,
      startSequenceNumber: seqs[2],
      endSequenceNumber: seqs[2],
      batchSize: 1,
      streamArn: stream.arn,
    });
    expect(lines.some((l) => l.includes('function error') && l.includes('poison record r2'))).toBe(true);
    expect(lines.some((l) => l.includes('retries exhausted'))).toBe(true);
    expect(new CheckpointStore(dir).get(`${settings.logicalId}/${SHARD}`)).toBe(seqs[3]);

    // Later records flow again.
    await put(stream, ['r4']);
    await waitUntil(() => fake.batches.flat().includes('r4'));
    expect(fake.batches.at(-1)).toEqual(['r4']);
  });

  it('without bisect, retries the whole batch maxRetryAttempts times, then describes it and moves on', async () => {
    const { stream, dir } = await newStream();
    const seqs = await put(stream, values(3));
    const fake = new FakeFunction((event) => {
      if (event.Records.length === 3) throw new Error('always fails on the first batch');
      return undefined;
    });
    const settings = mappingFor(stream, { batchSize: 3, maxRetryAttempts: 2, onFailureQueueName: 'dlq' });
    await startMapping(settings, stream, fake, dir);
    await waitUntil(() => sentTo(dir, 'dlq').length > 0);
    await pause(150);
    expect(fake.batches).toEqual([values(3), values(3), values(3)]);
    const [line] = sentTo(dir, 'dlq');
    expect(JSON.parse(line!)).toMatchObject({
      KinesisBatchInfo: {
        shardId: SHARD,
        startSequenceNumber: seqs[0],
        endSequenceNumber: seqs[2],
        batchSize: 3,
      },
    });

    await put(stream, ['after']);
    await waitUntil(() => fake.batches.flat().includes('after'));
    expect(fake.batches.at(-1)).toEqual(['after']);
  });

  it('counts partial-failure retries too, and describes only the records from the failed one on', async () => {
    const { stream, dir } = await newStream();
    const seqs = await put(stream, values(4));
    const fake = new FakeFunction((event) => {
      const failing = event.Records.find((r) => Buffer.from(r.kinesis.data, 'base64').toString() === 'r2');
      return failing ? { batchItemFailures: [{ itemIdentifier: failing.kinesis.sequenceNumber }] } : {};
    });
    const settings = mappingFor(stream, {
      batchSize: 4,
      reportBatchItemFailures: true,
      maxRetryAttempts: 1,
      onFailureQueueName: 'partial-dlq',
    });
    await startMapping(settings, stream, fake, dir);
    await waitUntil(() => sentTo(dir, 'partial-dlq').length > 0);
    await pause(150);
    expect(fake.batches).toEqual([values(4), ['r2', 'r3']]);
    expect(JSON.parse(sentTo(dir, 'partial-dlq')[0] ?? '')).toMatchObject({
      KinesisBatchInfo: { startSequenceNumber: seqs[2], endSequenceNumber: seqs[3], batchSize: 2 },
    });
  });

  it('persists its checkpoint: a new mapping on the same data directory resumes after the last record', async () => {
    const { stream, dir } = await newStream();
    const settings = mappingFor(stream, { batchSize: 2 });
    await put(stream, values(4));
    const first = new FakeFunction();
    const firstCheckpoints = new CheckpointStore(dir);
    const a = await startMapping(settings, stream, first, dir, [], firstCheckpoints);
    await waitUntil(() => first.batches.flat().length >= 4);
    await a.stop();
    await firstCheckpoints.flush();
    expect(first.batches.flat()).toEqual(values(4));

    await put(stream, ['r4', 'r5', 'r6']);
    const second = new FakeFunction();
    await startMapping(settings, stream, second, dir, [], new CheckpointStore(dir));
    await waitUntil(() => second.batches.flat().length >= 3);
    await pause(100);
    expect(second.batches.flat()).toEqual(['r4', 'r5', 'r6']);
    const onDisk = JSON.parse(readFileSync(path.join(dir, 'checkpoints.json'), 'utf8')) as Record<
      string,
      string
    >;
    expect(Object.keys(onDisk)).toEqual([`${settings.logicalId}/${SHARD}`]);
  });

  it('redelivers only the batch that was in flight and failed when the mapping stopped', async () => {
    const { stream, dir } = await newStream();
    const settings = mappingFor(stream, { batchSize: 2, reportBatchItemFailures: true });
    const seqs = await put(stream, values(6));
    let release: (result: unknown) => void = () => {};
    const gate = new Promise((resolve) => {
      release = resolve;
    });
    const first = new FakeFunction((_event, call) => (call === 2 ? gate : undefined));
    const a = await startMapping(settings, stream, first, dir);
    await waitUntil(() => first.events.length >= 2);
    const stopping = a.stop();
    // The in-flight batch (r2, r3) reports r3 as failed: r2 is done, r3 is not.
    release({ batchItemFailures: [{ itemIdentifier: seqs[3] }] });
    await stopping;
    expect(first.batches).toEqual([
      ['r0', 'r1'],
      ['r2', 'r3'],
    ]);

    const second = new FakeFunction();
    await startMapping(settings, stream, second, dir, [], new CheckpointStore(dir));
    await waitUntil(() => second.batches.flat().includes('r5'));
    await pause(100);
    expect(second.batches.flat()).toEqual(['r3', 'r4', 'r5']);
  });

  it('with startingPosition LATEST skips the records already on the stream', async () => {
    const { stream, dir } = await newStream();
    await put(stream, ['old-0', 'old-1', 'old-2']);
    const fake = new FakeFunction();
    await startMapping(mappingFor(stream, { startingPosition: 'LATEST' }), stream, fake, dir);
    // Let it take its LATEST iterator and poll an empty shard a few times.
    await pause(300);
    expect(fake.events).toHaveLength(0);
    await put(stream, ['new-0', 'new-1']);
    await waitUntil(() => fake.batches.flat().length >= 2);
    await put(stream, ['new-2']);
    await waitUntil(() => fake.batches.flat().length >= 3);
    await pause(100);
    expect(fake.batches.flat()).toEqual(['new-0', 'new-1', 'new-2']);
  });

  it('stop() returns promptly while the shard is idle', async () => {
    const { stream, dir } = await newStream();
    const fake = new FakeFunction();
    const m = await startMapping(mappingFor(stream), stream, fake, dir);
    await pause(100);
    const started = Date.now();
    await m.stop();
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('an idle shard is read as soon as wake() says the stream was written, not after the idle wait', async () => {
    const { stream, dir } = await newStream();
    const fake = new FakeFunction();
    const mapping = await startWakeOnlyMapping(mappingFor(stream), stream, fake, dir);
    await pause(200);
    await put(stream, ['w0']);
    await pause(200);
    // Without a wake the record waits for the (hour-long) idle wait.
    expect(fake.events).toHaveLength(0);
    mapping.wake();
    await waitUntil(() => fake.batches.flat().includes('w0'));
    // Records that keep coming while batches run are read without waiting for a wake.
    await put(stream, ['w1']);
    mapping.wake();
    await waitUntil(() => fake.batches.flat().includes('w1'));
  });

  it('with two shards, a wake is seen by every shard loop (no loop clears the wake of another)', async () => {
    const { stream, dir } = await newStream(2);
    const fake = new FakeFunction();
    // From the start of each shard, so no record can fall before a loop's first iterator.
    const mapping = await startWakeOnlyMapping(
      mappingFor(stream, { startingPosition: 'TRIM_HORIZON' }),
      stream,
      fake,
      dir,
    );
    // Partition keys that hash to different shards: each record's loop must see the wake.
    for (let i = 0; i < 20; i++) {
      await put(stream, [`s${i}`], `device-${i}`);
      mapping.wake();
      await waitUntil(() => fake.batches.flat().includes(`s${i}`));
    }
  });

  it('with a batching window, gathers records written during the window into one batch', async () => {
    const { stream, dir } = await newStream();
    const fake = new FakeFunction();
    const m = await startMapping(mappingFor(stream, { maxBatchingWindowMs: 1500 }), stream, fake, dir);
    await pause(100);
    await put(stream, ['b0']);
    m.wake();
    await pause(100);
    await put(stream, ['b1', 'b2']);
    m.wake();
    await waitUntil(() => fake.batches.flat().length >= 3);
    expect(fake.batches).toEqual([['b0', 'b1', 'b2']]);
  });
});
