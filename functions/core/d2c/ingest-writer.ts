import type { Log, StreamEntry, StreamSink } from '../ports.ts';
import { writeOrdered } from './ordered-writer.ts';

/** What the hub's own writers put on the ingest stream: any record keyed by device, with its ingest id. */
export interface KeyedRecord {
  /** The partition key: a device's records share a shard and keep their order. */
  readonly deviceId: string;
  /** Stamped once before the first attempt; retries keep it, so it is the event's message id. */
  readonly ingestId: string;
}

/** What {@link IngestRecordWriter} needs. */
export interface IngestRecordWriterDeps {
  /** The ingest stream. */
  readonly sink: StreamSink;
  readonly log: Log;
  /** Calls in a row that write nothing before giving up. @default 5 */
  readonly maxAttempts?: number;
  /** First backoff delay, doubled per attempt. @default 50 */
  readonly baseDelayMs?: number;
  readonly sleep?: (ms: number) => Promise<void>;
}

/** How one kind of record is named in the writer's log lines. */
export interface IngestRecordNames {
  /** `{label} write failed` on a failed call, e.g. `lifecycle event`. */
  readonly label: string;
  /** The error line for records given up on, e.g. `lifecycle event lost`. */
  readonly lost: string;
}

/**
 * Puts records the service API produces (lifecycle events, twin tags changes) on the ingest stream,
 * partition key = device id: PutRecords carries at most one record per device per call (a device's next
 * record is sent only after the one before it is written), failed records are retried with exponential
 * backoff, and what the stream refuses through every retry is logged in full at error level
 * (`names.lost`) so an operator can put it on the stream again unchanged (same ingest id, so consumers
 * drop a duplicate). Never rejects: the write the records report has already happened.
 */
export class IngestRecordWriter {
  constructor(
    private readonly deps: IngestRecordWriterDeps,
    private readonly names: IngestRecordNames,
  ) {}

  /** Writes `records` in order per device; resolves once each is written or reported lost. */
  async write(records: readonly KeyedRecord[]): Promise<void> {
    if (records.length === 0) return;
    // device → its records in order
    const queues = new Map<string, { record: KeyedRecord; entry: StreamEntry }[]>();
    for (const record of records) {
      const queue = queues.get(record.deviceId) ?? [];
      queue.push({
        record,
        entry: {
          partitionKey: record.deviceId,
          data: Buffer.from(JSON.stringify(record)),
          id: record.ingestId,
        },
      });
      queues.set(record.deviceId, queue);
    }
    const refused: KeyedRecord[] = [];
    await writeOrdered(
      this.deps.sink,
      queues,
      {
        label: this.names.label,
        log: this.deps.log,
        maxAttempts: this.deps.maxAttempts ?? 5,
        baseDelayMs: this.deps.baseDelayMs ?? 50,
        sleep: this.deps.sleep,
      },
      (item) => refused.push(item.record),
    );
    const lost = [...refused, ...[...queues.values()].flatMap((q) => q.map((p) => p.record))];
    if (lost.length > 0) {
      this.deps.log.error(this.names.lost, {
        reason: 'the ingest stream did not take these records through every retry; put them on it unchanged',
        records: lost,
      });
    }
  }
}
