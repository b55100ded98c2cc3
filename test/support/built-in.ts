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

/** Reads every record on every shard of a stream from the start, with the real AWS SDK. */
export async function readStream(client: KinesisClient, streamName: string): Promise<ReadRecord[]> {
  const out: ReadRecord[] = [];
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
          envelope: decodeEnvelope(r.Data ?? new Uint8Array()),
        });
      }
      if ((page.Records ?? []).length === 0 || page.MillisBehindLatest === 0) break;
      iterator = page.NextShardIterator;
    }
  }
  return out;
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
