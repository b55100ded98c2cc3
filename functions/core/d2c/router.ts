import { HubError } from '../errors.ts';
import type { DeadLetter, DeadLetterStore, Log, StreamEntry, StreamSink } from '../ports.ts';
import { buildEnvelope, type EnvelopeLimits, IngestRecordSchema } from './envelope.ts';

/** A record as the router receives it from its source stream. */
export interface SourceRecord {
  readonly sequenceNumber: string;
  readonly data: Uint8Array;
}

/** What the router needs. */
export interface RouterDeps {
  readonly builtIn: StreamSink;
  readonly deadLetters: DeadLetterStore;
  readonly log: Log;
  readonly limits: EnvelopeLimits;
  /** Calls in a row that write nothing before the batch is handed back to the event source. @default 4 */
  readonly maxAttempts?: number;
  /** First backoff delay, doubled per attempt. @default 100 */
  readonly baseDelayMs?: number;
  readonly sleep?: (ms: number) => Promise<void>;
  readonly now?: () => Date;
}

/** The outcome of one batch. */
export interface RouteResult {
  /** Messages written to the built-in endpoint. */
  readonly delivered: number;
  /** Records written to the dead-letter store. */
  readonly deadLettered: number;
  /**
   * The sequence number of the first record that is not yet safe, when there is one: the event
   * source must retry from it (Lambda's `batchItemFailures`). Records after it may be written
   * again on retry; consumers drop duplicates by message id.
   */
  readonly retryFrom?: string;
}

// Kinesis PutRecords: at most 500 records and 5 MiB per call.
const MAX_ENTRIES_PER_CALL = 500;
const MAX_BYTES_PER_CALL = 5 * 1024 * 1024;

interface Pending {
  readonly index: number;
  readonly entry: StreamEntry;
}

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Routes one batch from the ingest stream: builds an envelope per record, writes it to the
 * built-in endpoint with the device id as partition key, and dead-letters what cannot be turned
 * into a message (with the reason). Per-device order holds because each PutRecords call carries
 * at most one record per device and the next call starts only when it has been written.
 */
export async function routeBatch(records: readonly SourceRecord[], deps: RouterDeps): Promise<RouteResult> {
  const now = deps.now ?? (() => new Date());
  const letters: { index: number; letter: DeadLetter }[] = [];
  const queues = new Map<string, Pending[]>();

  records.forEach((record, index) => {
    const raw = Buffer.from(record.data);
    const text = raw.toString('utf8');
    let deviceId = 'unknown';
    let id = record.sequenceNumber;
    try {
      const parsed = IngestRecordSchema.safeParse(JSON.parse(text));
      if (!parsed.success) {
        throw new HubError(
          'InvalidIngestRecord',
          `ingest record does not match the schema: ${parsed.error.message}`,
        );
      }
      deviceId = parsed.data.clientId || 'unknown';
      id = parsed.data.ingestId;
      const envelope = buildEnvelope(parsed.data, deps.limits);
      const entry = { partitionKey: envelope.deviceId, data: Buffer.from(JSON.stringify(envelope)) };
      const queue = queues.get(envelope.deviceId) ?? [];
      queue.push({ index, entry });
      queues.set(envelope.deviceId, queue);
    } catch (error) {
      const code = error instanceof HubError ? error.code : 'UndecodableRecord';
      const reason = error instanceof Error ? error.message : String(error);
      deps.log.warn('d2c message dead-lettered', { deviceId, id, code, reason });
      letters.push({
        index,
        letter: {
          deviceId,
          id,
          source: 'router',
          code,
          reason,
          at: now().toISOString(),
          ...(Buffer.from(text, 'utf8').equals(raw)
            ? { record: text, recordEncoding: 'utf8' as const }
            : { record: raw.toString('base64'), recordEncoding: 'base64' as const }),
        },
      });
    }
  });

  let firstUnsafe = Number.POSITIVE_INFINITY;
  if (letters.length > 0) {
    try {
      await deps.deadLetters.put(letters.map((l) => l.letter));
    } catch (error) {
      deps.log.error('dead-letter write failed', { error: String(error) });
      firstUnsafe = Math.min(...letters.map((l) => l.index));
    }
  }

  const delivered = await writeOrdered(queues, deps);
  for (const queue of queues.values()) {
    const head = queue[0];
    if (head !== undefined) firstUnsafe = Math.min(firstUnsafe, head.index);
  }
  const retryFrom = Number.isFinite(firstUnsafe) ? records[firstUnsafe]?.sequenceNumber : undefined;
  const deadLettered = letters.filter((l) => l.index < firstUnsafe).length;
  return retryFrom === undefined ? { delivered, deadLettered } : { delivered, deadLettered, retryFrom };
}

/** Writes queued entries layer by layer; returns how many were written. Leaves unwritten ones queued. */
async function writeOrdered(queues: Map<string, Pending[]>, deps: RouterDeps): Promise<number> {
  const maxAttempts = deps.maxAttempts ?? 4;
  const baseDelayMs = deps.baseDelayMs ?? 100;
  const sleep = deps.sleep ?? defaultSleep;
  let written = 0;
  let attempt = 0;
  for (;;) {
    const layer: Pending[] = [];
    let bytes = 0;
    for (const queue of queues.values()) {
      const head = queue[0];
      if (head === undefined) continue;
      if (layer.length === MAX_ENTRIES_PER_CALL || bytes + head.entry.data.length > MAX_BYTES_PER_CALL) break;
      layer.push(head);
      bytes += head.entry.data.length;
    }
    if (layer.length === 0) return written;
    let results: readonly boolean[];
    try {
      results = await deps.builtIn.put(layer.map((p) => p.entry));
    } catch (error) {
      deps.log.warn('built-in endpoint write failed', { error: String(error), attempt: attempt + 1 });
      results = layer.map(() => false);
    }
    let failed = 0;
    layer.forEach((pending, i) => {
      if (results[i] === true) {
        queues.get(pending.entry.partitionKey)?.shift();
        written += 1;
      } else {
        failed += 1;
      }
    });
    if (failed === 0) {
      attempt = 0;
      continue;
    }
    // The budget counts calls in a row that wrote nothing: steady partial throttling still progresses.
    attempt = failed < layer.length ? 1 : attempt + 1;
    if (attempt >= maxAttempts) {
      deps.log.error('built-in endpoint write gave up; the batch will be retried', {
        failed,
        attempts: attempt,
      });
      return written;
    }
    await sleep(baseDelayMs * 2 ** (attempt - 1));
  }
}
