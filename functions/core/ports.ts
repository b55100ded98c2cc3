/** Narrow ports the core speaks to. Adapters in `functions/adapters/` implement them. */

/** A record to write to a stream, keyed so one device's records share a shard. */
export interface StreamEntry {
  /** The device id: Kinesis partition key, SQS/SNS FIFO message group. */
  readonly partitionKey: string;
  readonly data: Uint8Array;
  /** The hub's unique id of this message (its ingest id), kept by every retry: FIFO deduplication id. */
  readonly id?: string;
  /** `iothub-message-source`: `Telemetry`, `deviceLifecycleEvents`, `deviceConnectionStateEvents`. */
  readonly messageSource?: string;
}

/** How much one call of a {@link StreamSink} takes. */
export interface SinkLimits {
  /** Entries per call. */
  readonly maxEntries: number;
  /** Bytes of entry data per call. */
  readonly maxBytes: number;
  /** The largest entry the endpoint accepts at all; a larger one is dead-lettered, never retried. */
  readonly maxEntryBytes: number;
  /**
   * Each call is written whole or not at all (one S3 object), so a call may carry several entries of
   * one device, in order. Otherwise a call carries at most one entry per device, and the next waits
   * for it: that is what keeps per-device order over partial failures.
   */
  readonly atomic?: boolean;
}

/** Kinesis PutRecords: 500 records and 5 MiB per call, 1 MiB per record. */
export const KINESIS_LIMITS: SinkLimits = {
  maxEntries: 500,
  maxBytes: 5 * 1024 * 1024,
  maxEntryBytes: 1024 * 1024,
};

/**
 * What became of one entry of a call: written (`true`), not written but worth retrying (`false`:
 * throttled, an internal error), or refused for a reason a retry cannot cure (`{ rejected }`: the
 * endpoint says the message itself is at fault), which the router dead-letters instead of retrying.
 */
export type PutOutcome = boolean | { readonly rejected: string };

/**
 * An endpoint that takes batches (Kinesis PutRecords, SQS SendMessageBatch, ...). The result says,
 * per entry and in order, what became of it. A rejected whole call throws (and is retried).
 */
export interface StreamSink {
  /** @default {@link KINESIS_LIMITS} */
  readonly limits?: SinkLimits;
  put(entries: readonly StreamEntry[]): Promise<readonly PutOutcome[]>;
}

/** A message the hub could not deliver or could not accept, kept for an operator to read and replay. */
export interface DeadLetter {
  /** Device the message came from, or `unknown` when it cannot be told. */
  readonly deviceId: string;
  /** Stable id: the message's ingest id, else the source record's sequence number. Rewrites are idempotent. */
  readonly id: string;
  /** Where it failed, e.g. `router`. */
  readonly source: string;
  /** Stable error code, e.g. `InvalidPropertyBag`. */
  readonly code: string;
  /** Human-readable reason. */
  readonly reason: string;
  /** ISO time the dead letter was written. */
  readonly at: string;
  /** The original record, so it can be replayed unchanged: its text, or base64 when it is not UTF-8. */
  readonly record: string;
  /** How `record` is written. Text keeps a 256 KB message under DynamoDB's 400 KB item limit. */
  readonly recordEncoding: 'utf8' | 'base64';
}

/** Where dead letters go. `put` is idempotent per (deviceId, id). */
export interface DeadLetterStore {
  put(letters: readonly DeadLetter[]): Promise<void>;
}

/** Structured logging; adapters bind it to Powertools Logger. */
export interface Log {
  info(message: string, context?: Record<string, unknown>): void;
  warn(message: string, context?: Record<string, unknown>): void;
  error(message: string, context?: Record<string, unknown>): void;
}
