import { type KinesisClient, PutRecordsCommand } from '@aws-sdk/client-kinesis';
import type { StreamEntry, StreamSink } from '../core/ports.ts';

/** A {@link StreamSink} over Kinesis PutRecords. Failed entries (throttled, internal) come back as `false`. */
export class KinesisStreamSink implements StreamSink {
  constructor(
    private readonly client: KinesisClient,
    private readonly streamName: string,
  ) {}

  async put(entries: readonly StreamEntry[]): Promise<readonly boolean[]> {
    if (entries.length === 0) return [];
    const out = await this.client.send(
      new PutRecordsCommand({
        StreamName: this.streamName,
        Records: entries.map((e) => ({ PartitionKey: e.partitionKey, Data: e.data })),
      }),
    );
    const results = out.Records ?? [];
    return entries.map((_, i) => {
      const r = results[i];
      return r !== undefined && r.ErrorCode === undefined && r.SequenceNumber !== undefined;
    });
  }
}
