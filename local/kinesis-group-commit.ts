import { type KinesisClient, PutRecordsCommand } from '@aws-sdk/client-kinesis';

/** Kinesis PutRecords limits: records per call, bytes per call (data plus partition keys). */
const MAX_RECORDS = 500;
const MAX_BYTES = 5 * 1024 * 1024;

/** How {@link KinesisGroupCommit} retries. */
export interface GroupCommitOptions {
  /** Calls that fail a record before its promise rejects. @default 3 */
  readonly maxAttempts?: number;
  /** First backoff after a call that wrote nothing, doubled per attempt. @default 50 */
  readonly baseDelayMs?: number;
  readonly log?: (line: string) => void;
}

/** A record given up on after the retries; its publisher must not be acknowledged. */
export class GroupCommitError extends Error {
  constructor(streamName: string, partitionKey: string, cause: unknown) {
    super(`PutRecords to ${streamName} (partition key '${partitionKey}') failed: ${String(cause)}`, {
      cause,
    });
    this.name = 'GroupCommitError';
  }
}

interface Pending {
  readonly partitionKey: string;
  readonly data: Uint8Array;
  attempts: number;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

interface StreamQueue {
  /** Records waiting per partition key, in the order they were put. */
  readonly byKey: Map<string, Pending[]>;
  busy: boolean;
  scheduled: boolean;
}

/**
 * Group commit for the rules engine's Kinesis action: concurrent publishes to one stream share
 * `PutRecords` calls, one call per stream in flight; while it is out, new records gather for the
 * next one (no timer, so an unloaded hub writes at once). Each `put` resolves only once its record
 * is on the stream, so the broker's PUBACK still means durable.
 *
 * Order per partition key (a device's messages) must never break, and AWS documents that
 * `PutRecords` does not keep it when a record fails: the records after it in the same call are
 * still written. So a call carries at most one record per partition key; the key's next record
 * goes in a later call, after this one is written. A failed record stays at the head of its key
 * and is retried; when it is given up on, it and every record of its key queued behind it reject
 * together, so no later record of that key is written ahead of it.
 */
export class KinesisGroupCommit {
  private readonly streams = new Map<string, StreamQueue>();
  private readonly maxAttempts: number;
  private readonly baseDelayMs: number;
  private readonly log: (line: string) => void;

  constructor(
    private readonly client: KinesisClient,
    options: GroupCommitOptions = {},
  ) {
    this.maxAttempts = options.maxAttempts ?? 3;
    this.baseDelayMs = options.baseDelayMs ?? 50;
    this.log = options.log ?? (() => {});
  }

  /**
   * Queues one record; resolves once it is written, rejects with {@link GroupCommitError} when it
   * was given up on. Records of one partition key are written in the order of their `put` calls.
   */
  put(streamName: string, partitionKey: string, data: Uint8Array): Promise<void> {
    let stream = this.streams.get(streamName);
    if (!stream) {
      stream = { byKey: new Map(), busy: false, scheduled: false };
      this.streams.set(streamName, stream);
    }
    const queued = stream;
    return new Promise<void>((resolve, reject) => {
      const queue = queued.byKey.get(partitionKey);
      const item: Pending = { partitionKey, data, attempts: 0, resolve, reject };
      if (queue) queue.push(item);
      else queued.byKey.set(partitionKey, [item]);
      this.schedule(streamName, queued);
    });
  }

  /** Starts a call on the next turn of the event loop, so publishes parsed together share it. */
  private schedule(streamName: string, stream: StreamQueue): void {
    if (stream.busy || stream.scheduled) return;
    stream.scheduled = true;
    setImmediate(() => {
      stream.scheduled = false;
      void this.drain(streamName, stream);
    });
  }

  private async drain(streamName: string, stream: StreamQueue): Promise<void> {
    if (stream.busy) return;
    stream.busy = true;
    try {
      while (stream.byKey.size > 0) {
        const call: Pending[] = [];
        let bytes = 0;
        for (const queue of stream.byKey.values()) {
          const head = queue[0];
          if (!head) continue;
          const size = head.data.length + Buffer.byteLength(head.partitionKey);
          if (call.length === MAX_RECORDS || (call.length > 0 && bytes + size > MAX_BYTES)) break;
          call.push(head);
          bytes += size;
        }
        let outcome: readonly boolean[];
        let failure: unknown;
        try {
          const out = await this.client.send(
            new PutRecordsCommand({
              StreamName: streamName,
              Records: call.map((p) => ({ PartitionKey: p.partitionKey, Data: p.data })),
            }),
          );
          const results = out.Records ?? [];
          outcome = call.map((_, i) => {
            const r = results[i];
            if (r?.ErrorCode !== undefined) failure = `${r.ErrorCode}: ${r.ErrorMessage ?? ''}`;
            return r !== undefined && r.ErrorCode === undefined && r.SequenceNumber !== undefined;
          });
        } catch (error) {
          failure = error;
          outcome = call.map(() => false);
        }
        let failed = 0;
        call.forEach((item, i) => {
          const queue = stream.byKey.get(item.partitionKey) ?? [];
          if (outcome[i]) {
            queue.shift();
            if (queue.length === 0) stream.byKey.delete(item.partitionKey);
            item.resolve();
            return;
          }
          failed += 1;
          item.attempts += 1;
          if (item.attempts < this.maxAttempts) return;
          // Given up: the whole run of this key rejects, so none of it is written after a gap.
          stream.byKey.delete(item.partitionKey);
          for (const p of queue) p.reject(new GroupCommitError(streamName, item.partitionKey, failure));
        });
        if (failed > 0) {
          this.log(
            `PutRecords to ${streamName}: ${failed} of ${call.length} records failed: ${String(failure)}`,
          );
          const attempt = Math.max(...call.map((p) => p.attempts));
          if (stream.byKey.size > 0)
            await new Promise((r) => setTimeout(r, this.baseDelayMs * 2 ** Math.max(0, attempt - 1)));
        }
      }
    } finally {
      stream.busy = false;
    }
  }
}
