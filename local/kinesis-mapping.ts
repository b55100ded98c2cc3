import {
  type _Record,
  ExpiredIteratorException,
  GetRecordsCommand,
  GetShardIteratorCommand,
  type KinesisClient,
  ListShardsCommand,
} from '@aws-sdk/client-kinesis';
import type { CheckpointStore } from './checkpoints.ts';
import { LOCAL_REGION } from './emulators.ts';
import type { LocalKinesisMapping, LocalStream } from './template.ts';

/** What the mapping needs from the hub. */
export interface MappingDeps {
  readonly kinesis: KinesisClient;
  readonly checkpoints: CheckpointStore;
  readonly invoke: (functionLogicalId: string, event: unknown) => Promise<unknown>;
  readonly log: (line: string) => void;
  /** Sends Lambda's on-failure record to the mapping's on-failure queue (the local SQS emulator). */
  readonly sendToQueue: (queueName: string, body: string) => Promise<void>;
  /**
   * Longest wait after an empty poll when no write is noticed ({@link KinesisMapping.wake} ends it
   * at once). @default 1000
   */
  readonly idleMs?: number;
}

interface BatchItemFailures {
  batchItemFailures?: { itemIdentifier?: string }[];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * A Kinesis event source mapping, as Lambda runs one: per shard, one batch at a time, in order;
 * partial batch failures resume from the first failed record; a function error retries (bisecting
 * when configured) up to the retry limit, then describes the batch on the on-failure queue and
 * moves on.
 */
export class KinesisMapping {
  private stopped = false;
  private readonly loops: Promise<void>[] = [];
  /**
   * Writes noticed so far. Each shard loop remembers the count before it reads and waits only if no
   * write came since: one flag shared by the shards' loops let one loop clear a wake another had not
   * seen yet, leaving a record on the other shard for the whole idle wait.
   */
  private writes = 0;
  private waiters: (() => void)[] = [];

  constructor(
    private readonly mapping: LocalKinesisMapping,
    private readonly stream: LocalStream,
    private readonly deps: MappingDeps,
  ) {}

  async start(): Promise<void> {
    const shards = await this.deps.kinesis.send(
      new ListShardsCommand({ StreamName: this.mapping.streamName }),
    );
    for (const shard of shards.Shards ?? []) {
      if (shard.ShardId) this.loops.push(this.pollShard(shard.ShardId));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    await Promise.allSettled(this.loops);
  }

  /**
   * The stream was written: a shard loop waiting after an empty poll polls again at once, so a
   * record is read as soon as it is written, not after the idle wait.
   */
  wake(): void {
    this.writes += 1;
    // A copy: each waiter removes itself from this array, which would make the loop skip the next one
    // (half of a multi-shard mapping's loops then slept through the wake).
    const waiters = [...this.waiters];
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** Waits for a write (or the idle wait, in case one went unnoticed), unless one came meanwhile. */
  private idle(seen: number): Promise<void> {
    if (this.writes !== seen || this.stopped) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, this.deps.idleMs ?? 1000);
      const waiters = this.waiters;
      function done() {
        clearTimeout(timer);
        const i = waiters.indexOf(done);
        if (i >= 0) waiters.splice(i, 1);
        resolve();
      }
      waiters.push(done);
    });
  }

  private key(shardId: string): string {
    return `${this.mapping.logicalId}/${shardId}`;
  }

  private async iterator(shardId: string): Promise<string | undefined> {
    const after = this.deps.checkpoints.get(this.key(shardId));
    const out = await this.deps.kinesis.send(
      new GetShardIteratorCommand({
        StreamName: this.mapping.streamName,
        ShardId: shardId,
        ...(after
          ? { ShardIteratorType: 'AFTER_SEQUENCE_NUMBER', StartingSequenceNumber: after }
          : { ShardIteratorType: this.mapping.startingPosition }),
      }),
    );
    return out.ShardIterator;
  }

  private async pollShard(shardId: string): Promise<void> {
    let iterator: string | undefined;
    const window = this.mapping.maxBatchingWindowMs ?? 0;
    while (!this.stopped) {
      try {
        iterator ??= await this.iterator(shardId);
        if (!iterator) return;
        let seen = this.writes;
        let out = await this.deps.kinesis.send(
          new GetRecordsCommand({ ShardIterator: iterator, Limit: this.mapping.batchSize }),
        );
        const records = [...(out.Records ?? [])];
        // Lambda's batching window: gather records until the batch is full or the window closes.
        if (window > 0 && records.length > 0) {
          const closes = Date.now() + window;
          while (records.length < this.mapping.batchSize && Date.now() < closes && !this.stopped) {
            if (!out.MillisBehindLatest) await this.idleFor(closes - Date.now(), seen);
            seen = this.writes;
            out = await this.deps.kinesis.send(
              new GetRecordsCommand({
                ShardIterator: out.NextShardIterator,
                Limit: this.mapping.batchSize - records.length,
              }),
            );
            records.push(...(out.Records ?? []));
          }
        }
        // The next read follows on from this one: no new iterator per batch.
        iterator = out.NextShardIterator;
        if (records.length > 0) {
          await this.handleBatch(shardId, records);
          // Records may be waiting behind this batch: read again at once.
        } else {
          await this.idle(seen);
        }
      } catch (error) {
        if (this.stopped) return;
        if (!(error instanceof ExpiredIteratorException)) {
          this.deps.log(`mapping ${this.mapping.logicalId} ${shardId}: ${String(error)}`);
          await sleep(500);
        }
        // Resume from the checkpoint, past every handled record.
        iterator = undefined;
      }
    }
  }

  private async idleFor(ms: number, seen: number): Promise<void> {
    if (this.writes !== seen || ms <= 0) return;
    await Promise.race([this.idle(seen), sleep(ms)]);
  }

  private event(shardId: string, records: readonly _Record[]) {
    return {
      Records: records.map((r) => ({
        kinesis: {
          kinesisSchemaVersion: '1.0',
          partitionKey: r.PartitionKey ?? '',
          sequenceNumber: r.SequenceNumber ?? '',
          data: Buffer.from(r.Data ?? new Uint8Array()).toString('base64'),
          approximateArrivalTimestamp: (r.ApproximateArrivalTimestamp?.getTime() ?? Date.now()) / 1000,
        },
        eventSource: 'aws:kinesis',
        eventVersion: '1.0',
        eventID: `${shardId}:${r.SequenceNumber}`,
        eventName: 'aws:kinesis:record',
        invokeIdentityArn: 'arn:aws:iam::000000000000:role/local',
        awsRegion: LOCAL_REGION,
        eventSourceARN: this.stream.arn,
      })),
    };
  }

  /** Handles one batch to the end: delivered, or given up on after the retries. */
  private async handleBatch(shardId: string, batch: readonly _Record[]): Promise<void> {
    const { maxRetryAttempts, bisectOnError, reportBatchItemFailures } = this.mapping;
    // Work list of sub-batches still to deliver, in order (bisecting splits the head).
    const work: { records: readonly _Record[]; retries: number }[] = [{ records: batch, retries: 0 }];
    while (work.length > 0 && !this.stopped) {
      const item = work[0]!;
      let failedFrom: number | undefined;
      try {
        const result = (await this.deps.invoke(
          this.mapping.functionLogicalId,
          this.event(shardId, item.records),
        )) as BatchItemFailures | undefined;
        if (reportBatchItemFailures && result?.batchItemFailures && result.batchItemFailures.length > 0) {
          const indexes = result.batchItemFailures.map((f) =>
            item.records.findIndex((r) => r.SequenceNumber === f.itemIdentifier),
          );
          // An unknown or empty identifier fails the whole batch, as Lambda does.
          failedFrom = indexes.some((i) => i < 0) ? 0 : Math.min(...indexes);
        }
      } catch (error) {
        this.deps.log(`mapping ${this.mapping.logicalId}: function error: ${(error as Error).message}`);
        failedFrom = 0;
        if (bisectOnError && item.records.length > 1) {
          const half = Math.ceil(item.records.length / 2);
          work.splice(
            0,
            1,
            { records: item.records.slice(0, half), retries: item.retries + 1 },
            { records: item.records.slice(half), retries: item.retries + 1 },
          );
          if (maxRetryAttempts < 0 || item.retries < maxRetryAttempts) {
            await sleep(backoff(item.retries));
            continue;
          }
          work.splice(0, 2, item);
        }
      }
      if (failedFrom === undefined) {
        this.checkpoint(shardId, item.records.at(-1));
        work.shift();
        continue;
      }
      if (failedFrom > 0) this.checkpoint(shardId, item.records[failedFrom - 1]);
      const rest = item.records.slice(failedFrom);
      if (maxRetryAttempts >= 0 && item.retries >= maxRetryAttempts) {
        this.giveUp(shardId, rest);
        this.checkpoint(shardId, rest.at(-1));
        work.shift();
        continue;
      }
      work[0] = { records: rest, retries: item.retries + 1 };
      await sleep(backoff(item.retries));
    }
  }

  private checkpoint(shardId: string, record: _Record | undefined): void {
    if (record?.SequenceNumber) this.deps.checkpoints.set(this.key(shardId), record.SequenceNumber);
  }

  /** Lambda's on-failure record: a description of the batch, not the records (they stay on the stream). */
  private giveUp(shardId: string, records: readonly _Record[]): void {
    const description = {
      requestContext: { condition: 'RetryAttemptsExhausted', functionArn: this.mapping.functionLogicalId },
      timestamp: new Date().toISOString(),
      KinesisBatchInfo: {
        shardId,
        startSequenceNumber: records[0]?.SequenceNumber,
        endSequenceNumber: records.at(-1)?.SequenceNumber,
        batchSize: records.length,
        streamArn: this.stream.arn,
      },
    };
    this.deps.log(
      `mapping ${this.mapping.logicalId}: retries exhausted; ${records.length} records from ${description.KinesisBatchInfo.startSequenceNumber} described on ${this.mapping.onFailureQueueName ?? 'no destination'}`,
    );
    const queue = this.mapping.onFailureQueueName;
    if (queue) {
      this.deps.sendToQueue(queue, JSON.stringify(description)).catch((error: unknown) => {
        this.deps.log(
          `mapping ${this.mapping.logicalId}: on-failure record to ${queue} lost: ${String(error)}`,
        );
      });
    }
  }
}

function backoff(retries: number): number {
  return Math.min(100 * 2 ** retries, 5000);
}
