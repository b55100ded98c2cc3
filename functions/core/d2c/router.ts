import { HubError } from '../errors.ts';
import type { DeadLetter, DeadLetterStore, Log, StreamEntry, StreamSink } from '../ports.ts';
import { BUILT_IN_ENDPOINT, DEFAULT_ROUTING } from '../routing/config.ts';
import { type CompiledRouting, compileRouting } from '../routing/table.ts';
import { buildEnvelope, type EnvelopeLimits, IngestRecordSchema } from './envelope.ts';

/** A record as the router receives it from its source stream. */
export interface SourceRecord {
  readonly sequenceNumber: string;
  readonly data: Uint8Array;
}

/** What the router needs. */
export interface RouterDeps {
  /** The built-in endpoint (`events`). */
  readonly builtIn: StreamSink;
  /** Custom endpoints by name (Kinesis streams keyed by device id, like the built-in endpoint). @default {} */
  readonly endpoints?: Readonly<Record<string, StreamSink>>;
  /** Routes, fallback and enrichments. @default every message to the built-in endpoint */
  readonly routing?: CompiledRouting;
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
  /** Messages that matched no route with the fallback route off: dropped, as IoT Hub drops them. Absent when 0. */
  readonly unrouted?: number;
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

const DEFAULT_COMPILED = compileRouting(DEFAULT_ROUTING, 'serverless-iot-hub');

/**
 * Routes one batch from the ingest stream: builds an envelope per record, evaluates the routes
 * (properties, system properties, `$body`) and writes the envelope to each endpoint it selects
 * (with that endpoint's enrichments), with the device id as partition key; dead-letters what cannot
 * be turned into a message (with the reason). Per-device order holds on every endpoint because each
 * PutRecords call carries at most one record per device and the next call starts only when it has
 * been written. A record is safe only when every endpoint it goes to has it; the first record that
 * is not is where the event source retries from (endpoints that already had it get a duplicate,
 * with the same message id).
 */
export async function routeBatch(records: readonly SourceRecord[], deps: RouterDeps): Promise<RouteResult> {
  const now = deps.now ?? (() => new Date());
  const letters: { index: number; letter: DeadLetter }[] = [];
  const routing = deps.routing ?? DEFAULT_COMPILED;
  // endpoint → device → entries in batch order
  const queues = new Map<string, Map<string, Pending[]>>();
  const sinkOf = (endpoint: string): StreamSink | undefined =>
    endpoint === BUILT_IN_ENDPOINT ? deps.builtIn : deps.endpoints?.[endpoint];
  let unrouted = 0;

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
      const targets = routing.endpointsFor({
        systemProperties: envelope.systemProperties,
        properties: envelope.properties,
        body: routing.usesBody ? Buffer.from(parsed.data.body ?? '', 'base64') : EMPTY,
      });
      if (targets.length === 0) unrouted++;
      for (const endpoint of targets) {
        if (sinkOf(endpoint) === undefined) {
          // The stack gives the router every endpoint an enabled route names; a gap is a deployment bug.
          throw new HubError(
            'UnknownEndpoint',
            `route endpoint '${endpoint}' has no stream in this deployment`,
          );
        }
      }
      for (const endpoint of targets) {
        const properties = routing.enrich(endpoint, envelope.properties);
        const data = Buffer.from(
          JSON.stringify(properties === envelope.properties ? envelope : { ...envelope, properties }),
        );
        const byDevice = queues.get(endpoint) ?? new Map<string, Pending[]>();
        const queue = byDevice.get(envelope.deviceId) ?? [];
        queue.push({ index, entry: { partitionKey: envelope.deviceId, data } });
        byDevice.set(envelope.deviceId, queue);
        queues.set(endpoint, byDevice);
      }
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

  const routed = new Set<number>();
  for (const byDevice of queues.values())
    for (const q of byDevice.values()) for (const p of q) routed.add(p.index);
  await Promise.all(
    [...queues].map(([endpoint, byDevice]) => writeOrdered(endpoint, sinkOf(endpoint)!, byDevice, deps)),
  );
  const pending = new Set<number>();
  for (const byDevice of queues.values()) {
    for (const queue of byDevice.values()) {
      const head = queue[0];
      if (head !== undefined) firstUnsafe = Math.min(firstUnsafe, head.index);
      for (const p of queue) pending.add(p.index);
    }
  }
  const delivered = [...routed].filter((i) => !pending.has(i)).length;
  const retryFrom = Number.isFinite(firstUnsafe) ? records[firstUnsafe]?.sequenceNumber : undefined;
  const deadLettered = letters.filter((l) => l.index < firstUnsafe).length;
  return {
    delivered,
    deadLettered,
    ...(unrouted > 0 ? { unrouted } : {}),
    ...(retryFrom === undefined ? {} : { retryFrom }),
  };
}

const EMPTY = new Uint8Array();

/** Writes one endpoint's queued entries layer by layer; returns how many were written. Leaves unwritten ones queued. */
async function writeOrdered(
  endpoint: string,
  sink: StreamSink,
  queues: Map<string, Pending[]>,
  deps: RouterDeps,
): Promise<number> {
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
      results = await sink.put(layer.map((p) => p.entry));
    } catch (error) {
      deps.log.warn('endpoint write failed', { endpoint, error: String(error), attempt: attempt + 1 });
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
      deps.log.error('endpoint write gave up; the batch will be retried', {
        endpoint,
        failed,
        attempts: attempt,
      });
      return written;
    }
    await sleep(baseDelayMs * 2 ** (attempt - 1));
  }
}
