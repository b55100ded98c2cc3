import {
  GetRecordsCommand,
  GetShardIteratorCommand,
  type KinesisClient,
  ListShardsCommand,
} from '@aws-sdk/client-kinesis';
import { type D2CEnvelope, decodeEnvelope } from '../../functions/core/d2c/envelope.ts';
import { localKinesisClient } from '../../local/emulators.ts';

/** One record read back from a stream. */
export interface ReadRecord {
  readonly shardId: string;
  readonly partitionKey: string;
  readonly sequenceNumber: string;
  readonly envelope: D2CEnvelope;
}

/** One raw record read back from a stream. */
export interface RawRecord {
  readonly shardId: string;
  readonly partitionKey: string;
  readonly sequenceNumber: string;
  readonly data: Uint8Array;
}

/** Reads every record on every shard of a stream from the start, with the real AWS SDK. */
export async function readRawStream(client: KinesisClient, streamName: string): Promise<RawRecord[]> {
  const out: RawRecord[] = [];
  const shards = await client.send(new ListShardsCommand({ StreamName: streamName }));
  for (const shard of shards.Shards ?? []) {
    const shardId = shard.ShardId ?? '';
    let iterator = (
      await client.send(
        new GetShardIteratorCommand({
          StreamName: streamName,
          ShardId: shardId,
          ShardIteratorType: 'TRIM_HORIZON',
        }),
      )
    ).ShardIterator;
    while (iterator) {
      const page = await client.send(new GetRecordsCommand({ ShardIterator: iterator, Limit: 10_000 }));
      for (const r of page.Records ?? []) {
        out.push({
          shardId,
          partitionKey: r.PartitionKey ?? '',
          sequenceNumber: r.SequenceNumber ?? '',
          data: r.Data ?? new Uint8Array(),
        });
      }
      if ((page.Records ?? []).length === 0 || page.MillisBehindLatest === 0) break;
      iterator = page.NextShardIterator;
    }
  }
  return out;
}

/** Reads every envelope on the built-in endpoint (or any stream of envelopes) from the start. */
export async function readStream(client: KinesisClient, streamName: string): Promise<ReadRecord[]> {
  return (await readRawStream(client, streamName)).map(({ data, ...rest }) => ({
    ...rest,
    envelope: decodeEnvelope(data),
  }));
}

/** Reads a stream of JSON records (e.g. the C2D feedback stream) from the start. */
export async function readJsonStream(
  kinesisUrl: string,
  streamName: string,
): Promise<{ partitionKey: string; json: Record<string, unknown> }[]> {
  const client = localKinesisClient(kinesisUrl);
  try {
    return (await readRawStream(client, streamName)).map((r) => ({
      partitionKey: r.partitionKey,
      json: JSON.parse(Buffer.from(r.data).toString('utf8')) as Record<string, unknown>,
    }));
  } finally {
    client.destroy();
  }
}

/** Polls the built-in endpoint until `done(records)` holds or the time is up; returns the last read. */
export async function waitForRecords(
  kinesisUrl: string,
  streamName: string,
  done: (records: ReadRecord[]) => boolean,
  timeoutMs = 60_000,
): Promise<ReadRecord[]> {
  const client = localKinesisClient(kinesisUrl);
  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const records = await readStream(client, streamName);
      if (done(records) || Date.now() > deadline) return records;
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    client.destroy();
  }
}
