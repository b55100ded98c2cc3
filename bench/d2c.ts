/**
 * Device-to-cloud on the local hub, end to end: a real hub process (`npm start`), devices
 * registered through the service API, several mqtt.js clients publishing QoS 1 telemetry, and a
 * reader following the built-in endpoint stream. Next to it, in the same run, the local Kinesis
 * server (kinesalite) alone moving the same number of records of the same size, because every
 * message crosses Kinesis twice in the hub (ingest stream, built-in endpoint) and kinesalite is
 * what bounds the local pipeline.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  GetRecordsCommand,
  GetShardIteratorCommand,
  type KinesisClient,
  ListShardsCommand,
  ListStreamsCommand,
  PutRecordCommand,
  PutRecordsCommand,
} from '@aws-sdk/client-kinesis';
import mqtt, { type MqttClient } from 'mqtt';
import { decodeEnvelope } from '../functions/core/d2c/envelope.ts';
import { ensureStreams, localKinesisClient, startKinesis } from '../local/emulators.ts';
import { registerDevice } from '../test/support/devices.ts';
import { startHubProcess } from '../test/support/hub-process.ts';
import { type Bench, fmt, percentile, sleep } from './harness.ts';

/** Wall-clock milliseconds with sub-millisecond resolution (one process writes and reads them). */
const now = () => performance.timeOrigin + performance.now();

/** Follows every shard of a stream from its start, handing each record over as it becomes readable. */
class StreamFollower {
  private stopped = false;
  private loops: Promise<void>[] = [];

  constructor(
    private readonly client: KinesisClient,
    private readonly streamName: string,
    private readonly onRecord: (data: Uint8Array, readAt: number) => void,
    private readonly idleMs = 10,
  ) {}

  async start(): Promise<void> {
    const shards = await this.client.send(new ListShardsCommand({ StreamName: this.streamName }));
    for (const shard of shards.Shards ?? []) this.loops.push(this.follow(shard.ShardId ?? ''));
  }

  private async follow(shardId: string): Promise<void> {
    let iterator = (
      await this.client.send(
        new GetShardIteratorCommand({
          StreamName: this.streamName,
          ShardId: shardId,
          ShardIteratorType: 'TRIM_HORIZON',
        }),
      )
    ).ShardIterator;
    while (iterator && !this.stopped) {
      const page = await this.client.send(new GetRecordsCommand({ ShardIterator: iterator, Limit: 10_000 }));
      const readAt = now();
      for (const r of page.Records ?? []) this.onRecord(r.Data ?? new Uint8Array(), readAt);
      iterator = page.NextShardIterator;
      if ((page.Records ?? []).length === 0) await sleep(this.idleMs);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.allSettled(this.loops);
  }
}

/** Resolves when `done()` holds, or rejects after `timeoutMs`. */
async function until(done: () => boolean, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what()}`);
    await sleep(5);
  }
}

/** Publishes `count` messages with at most `window` unacknowledged at a time; calls `acked` per PUBACK. */
async function publishWindowed(
  client: MqttClient,
  count: number,
  window: number,
  message: (n: number) => { topic: string; payload: string },
  acked: (n: number) => void,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const n = next++;
      const { topic, payload } = message(n);
      await client.publishAsync(topic, payload, { qos: 1 });
      acked(n);
    }
  };
  await Promise.all(Array.from({ length: Math.min(window, count) }, worker));
}

interface Sample {
  sentAt: number;
  ackedAt?: number;
  readAt?: number;
  copies: number;
}

/** A JSON body of `bytes` bytes carrying the publish time. */
function body(sentAt: number, n: number, bytes: number): string {
  const bare = JSON.stringify({ sentAt, n, pad: '' });
  return JSON.stringify({ sentAt, n, pad: 'x'.repeat(Math.max(0, bytes - bare.length)) });
}

/** A free loopback port (for kinesis-local, which takes its ports from the environment). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

/**
 * kinesis-local (kinesis-mock compiled to JavaScript by Scala.js; no JVM) as a child process, with
 * persistence on as the hub would need it. It persists on an interval (PERSIST_INTERVAL), not per write.
 */
async function startKinesisLocal(dir: string): Promise<{ url: string; close(): Promise<void> }> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    [fileURLToPath(new URL('../node_modules/kinesis-local/main.js', import.meta.url))],
    {
      cwd: dir,
      env: {
        ...process.env,
        KINESIS_MOCK_PLAIN_PORT: String(port),
        KINESIS_MOCK_TLS_PORT: String(await freePort()),
        // Its TLS certificate ships next to main.js; it reads it relative to the working directory by default.
        KINESIS_MOCK_CERT_PATH: fileURLToPath(
          new URL('../node_modules/kinesis-local/server.json', import.meta.url),
        ),
        CREATE_STREAM_DURATION: '0ms',
        SHOULD_PERSIST_DATA: 'true',
        PERSIST_PATH: dir,
        LOG_LEVEL: 'ERROR',
        SHARD_LIMIT: '100',
      },
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  const url = `http://127.0.0.1:${port}`;
  const probe = localKinesisClient(url);
  try {
    for (let i = 0; ; i++) {
      try {
        await probe.send(new ListStreamsCommand({}));
        break;
      } catch (error) {
        if (i > 300 || child.exitCode !== null)
          throw new Error(`kinesis-local did not start: ${String(error)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    probe.destroy();
  }
  return {
    url,
    close: async () => {
      child.kill('SIGKILL');
      if (child.exitCode === null) await new Promise((r) => child.once('exit', r));
    },
  };
}

/** A Kinesis emulator alone (persistent, as the hub runs it): the same records in, then read back. */
async function kinesaliteAlone(
  count: number,
  recordBytes: number,
  shardCount: number,
  partitionKeys: readonly string[],
  emulator: 'kinesalite' | 'kinesis-local' = 'kinesalite',
): Promise<{ putRecordsRate: number; putRecordRate: number; readRate: number; roundTripRate: number }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'bench-kinesis-'));
  const server =
    emulator === 'kinesalite' ? await startKinesis(dir, '127.0.0.1', 0) : await startKinesisLocal(dir);
  const client = localKinesisClient(server.url);
  try {
    const streams = ['bench-batched', 'bench-single'].map((name) => ({
      logicalId: name,
      name,
      arn: '',
      shardCount,
    }));
    await ensureStreams(client, streams);
    const data = Buffer.alloc(recordBytes, 'x');
    const key = (n: number) => partitionKeys[n % partitionKeys.length] ?? 'k';

    // PutRecords in calls of up to 500, one call at a time (as the router writes), then read back.
    const t0 = now();
    for (let start = 0; start < count; start += 500) {
      const entries = Array.from({ length: Math.min(500, count - start) }, (_, i) => ({
        PartitionKey: key(start + i),
        Data: data,
      }));
      const out = await client.send(new PutRecordsCommand({ StreamName: 'bench-batched', Records: entries }));
      if (out.FailedRecordCount) throw new Error(`kinesalite refused ${out.FailedRecordCount} records`);
    }
    const tPut = now();
    let read = 0;
    const follower = new StreamFollower(client, 'bench-batched', () => read++);
    await follower.start();
    await until(
      () => read >= count,
      120_000,
      () => `kinesalite read-back (${read}/${count})`,
    );
    const tRead = now();
    await follower.stop();

    // PutRecord, one record per call, one chain per partition key (as the IoT rule's Kinesis action
    // writes the ingest stream: the local rules engine ingests each device's publishes in order).
    const t1 = now();
    await Promise.all(
      partitionKeys.map(async (pk, k) => {
        for (let n = k; n < count; n += partitionKeys.length) {
          await client.send(
            new PutRecordCommand({ StreamName: 'bench-single', PartitionKey: pk, Data: data }),
          );
        }
      }),
    );
    const t2 = now();
    return {
      putRecordsRate: (count / (tPut - t0)) * 1000,
      readRate: (count / (tRead - tPut)) * 1000,
      roundTripRate: (count / (tRead - t0)) * 1000,
      putRecordRate: (count / (t2 - t1)) * 1000,
    };
  } finally {
    client.destroy();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

export const d2c: Bench = {
  name: 'd2c',
  description: 'local hub end to end (MQTT QoS 1 → built-in endpoint) vs kinesalite alone',
  flags: {
    messages: { description: 'messages to publish in the measured run', default: 2000 },
    devices: { description: 'devices (one mqtt.js client each)', default: 8 },
    window: { description: 'unacknowledged QoS 1 publishes per device', default: 8 },
    bytes: { description: 'JSON body size in bytes', default: 256 },
    warmup: { description: 'messages sent (and awaited) before the measured run', default: 200 },
  },
  run: async (ctx) => {
    const total = ctx.flag('messages');
    const deviceCount = ctx.flag('devices');
    const window = ctx.flag('window');
    const bytes = ctx.flag('bytes');
    const warmup = ctx.flag('warmup');

    const startedAt = now();
    // BENCH_HUB_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' profiles the hub process.
    const nodeArgs = process.env.BENCH_HUB_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [];
    const dataDir = mkdtempSync(path.join(tmpdir(), 'bench-hub-'));
    const hub = await startHubProcess({ dataDir, nodeArgs }).catch((error: unknown) => {
      rmSync(dataDir, { recursive: true, force: true });
      throw error;
    });
    ctx.log(`hub process ready in ${fmt((now() - startedAt) / 1000)} s`);
    const clients: MqttClient[] = [];
    const kinesis = localKinesisClient(hub.endpoints.kinesis);
    let follower: StreamFollower | undefined;
    let shardCount = 1;
    let recordBytes = 0;
    let hubRows: { case: string; rate: number; p50: number; p99: number }[] = [];
    const deviceIds = Array.from({ length: deviceCount }, (_, i) => `bench-${i}`);
    try {
      const samples = new Map<string, Sample>();
      let recordCount = 0;
      let recordByteSum = 0;
      follower = new StreamFollower(kinesis, hub.endpoints.builtInStream, (data, readAt) => {
        const envelope = decodeEnvelope(data);
        const sample = samples.get(envelope.messageId);
        if (!sample) return;
        sample.copies++;
        sample.readAt ??= readAt;
        recordCount++;
        recordByteSum += data.length;
      });
      await follower.start();
      shardCount =
        (await kinesis.send(new ListShardsCommand({ StreamName: hub.endpoints.builtInStream }))).Shards
          ?.length ?? 1;

      for (const id of deviceIds) {
        const credentials = await registerDevice(hub.endpoints, id);
        const client = await mqtt.connectAsync(hub.endpoints.mqtt, { ...credentials, reconnectPeriod: 0 });
        clients.push(client);
      }

      // A device the hub disconnects would leave its publishes pending for ever: fail the run instead.
      let ending = false;
      const dropped = new Promise<never>((_, reject) => {
        for (const [d, client] of clients.entries()) {
          client.once('close', () => {
            if (!ending) reject(new Error(`the hub disconnected device ${deviceIds[d]}`));
          });
        }
      });
      dropped.catch(() => undefined);

      const phase = async (name: string, count: number) => {
        const ids: string[] = [];
        const start = now();
        const publishing = Promise.all(
          clients.map((client, d) => {
            const deviceId = deviceIds[d] ?? '';
            const share = Math.floor(count / clients.length) + (d < count % clients.length ? 1 : 0);
            return publishWindowed(
              client,
              share,
              window,
              (n) => {
                const mid = `${name}-${deviceId}-${n}`;
                const sentAt = now();
                samples.set(mid, { sentAt, copies: 0 });
                ids.push(mid);
                return {
                  topic: `devices/${deviceId}/messages/events/$.mid=${mid}&$.ct=application%2Fjson&$.ce=utf-8`,
                  payload: body(sentAt, n, bytes),
                };
              },
              (n) => {
                const sample = samples.get(`${name}-${deviceId}-${n}`);
                if (sample) sample.ackedAt = now();
              },
            );
          }),
        );
        await Promise.race([publishing, dropped]);
        const acked = now();
        await until(
          () => ids.every((id) => samples.get(id)?.readAt !== undefined),
          120_000,
          () =>
            `${name}: ${ids.filter((id) => samples.get(id)?.readAt !== undefined).length}/${ids.length} on the built-in endpoint`,
        );
        const mine = ids.map((id) => samples.get(id) as Required<Sample>);
        return { start, acked, mine };
      };

      if (warmup > 0) {
        await phase('warmup', warmup);
        ctx.log(`warm-up: ${warmup} messages through`);
      }
      recordCount = 0;
      recordByteSum = 0;
      const run = await phase('run', total);
      const last = Math.max(...run.mine.map((s) => s.readAt));
      const ackLatency = run.mine.map((s) => s.ackedAt - s.sentAt).sort((a, b) => a - b);
      const e2eLatency = run.mine.map((s) => s.readAt - s.sentAt).sort((a, b) => a - b);
      const duplicates = run.mine.reduce((sum, s) => sum + s.copies - 1, 0);
      recordBytes = Math.round(recordByteSum / Math.max(1, recordCount));
      ctx.log(
        `${total} messages from ${deviceCount} devices (window ${window}), body ${bytes} B, built-in endpoint record ${recordBytes} B, ${duplicates} duplicates`,
      );
      hubRows = [
        {
          case: 'hub: publish → PUBACK (front door, rules, ingest stream)',
          rate: (total / (run.acked - run.start)) * 1000,
          p50: percentile(ackLatency, 50),
          p99: percentile(ackLatency, 99),
        },
        {
          case: 'hub: publish → readable on the built-in endpoint',
          rate: (total / (last - run.start)) * 1000,
          p50: percentile(e2eLatency, 50),
          p99: percentile(e2eLatency, 99),
        },
      ];
      ending = true;
    } finally {
      for (const client of clients) await client.endAsync().catch(() => undefined);
      await follower?.stop();
      kinesis.destroy();
      await hub.stop();
      rmSync(hub.dataDir, { recursive: true, force: true });
    }

    // The hub is down now, so kinesalite alone has the machine to itself, as the hub had.
    const alone = await kinesaliteAlone(total, recordBytes, shardCount, deviceIds);
    // kinesis-local, evaluated against kinesalite: same records, same persistence asked for.
    const mock = await kinesaliteAlone(total, recordBytes, shardCount, deviceIds, 'kinesis-local').catch(
      (error: unknown) => {
        console.error(`kinesis-local: ${String(error)}`);
        return {
          putRecordsRate: Number.NaN,
          putRecordRate: Number.NaN,
          readRate: Number.NaN,
          roundTripRate: Number.NaN,
        };
      },
    );
    const vs = (rate: number) => `${fmt(rate / alone.roundTripRate, 2)}×`;
    ctx.table(
      `d2c: ${total} messages, ${deviceCount} devices, ${recordBytes} B records, ${shardCount} shard(s)`,
      [
        ...hubRows.map((r) => ({
          case: r.case,
          'msgs/s': fmt(r.rate),
          'p50 ms': fmt(r.p50),
          'p99 ms': fmt(r.p99),
          'vs kinesalite put+read': vs(r.rate),
        })),
        {
          case: 'kinesalite: PutRecords (500/call) + read back',
          'msgs/s': fmt(alone.roundTripRate),
          'p50 ms': '',
          'p99 ms': '',
          'vs kinesalite put+read': '1×',
        },
        {
          case: '  of which PutRecords alone',
          'msgs/s': fmt(alone.putRecordsRate),
          'p50 ms': '',
          'p99 ms': '',
          'vs kinesalite put+read': vs(alone.putRecordsRate),
        },
        {
          case: '  of which read back alone',
          'msgs/s': fmt(alone.readRate),
          'p50 ms': '',
          'p99 ms': '',
          'vs kinesalite put+read': vs(alone.readRate),
        },
        {
          case: `kinesalite: PutRecord, 1 per call, ${deviceCount} in parallel`,
          'msgs/s': fmt(alone.putRecordRate),
          'p50 ms': '',
          'p99 ms': '',
          'vs kinesalite put+read': vs(alone.putRecordRate),
        },
        {
          case: 'kinesis-local: PutRecords (500/call) + read back',
          'msgs/s': fmt(mock.roundTripRate),
          'p50 ms': '',
          'p99 ms': '',
          'vs kinesalite put+read': vs(mock.roundTripRate),
        },
        {
          case: `kinesis-local: PutRecord, 1 per call, ${deviceCount} in parallel`,
          'msgs/s': fmt(mock.putRecordRate),
          'p50 ms': '',
          'p99 ms': '',
          'vs kinesalite put+read': vs(mock.putRecordRate),
        },
      ],
    );
  },
};
