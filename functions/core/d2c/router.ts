import { HubError } from '../errors.ts';
import {
  type DeadLetter,
  type DeadLetterStore,
  KINESIS_LIMITS,
  type Log,
  type StreamEntry,
  type StreamSink,
} from '../ports.ts';
import { BUILT_IN_ENDPOINT, DEFAULT_ROUTING } from '../routing/config.ts';
import { type CompiledRouting, compileRouting } from '../routing/table.ts';
import type { RoutingTwin } from '../twins/twin.ts';
import type { TwinReader } from '../twins/twin-reader.ts';
import type { EnvelopeLimits } from './envelope.ts';
import { parseIngestRecord, type RoutableMessage, recordIds, toRoutableMessage } from './events.ts';
import { writeOrdered } from './ordered-writer.ts';

/** A record as the router receives it from its source stream. */
export interface SourceRecord {
  readonly sequenceNumber: string;
  readonly data: Uint8Array;
}

/** What the router needs. */
export interface RouterDeps {
  /** The built-in endpoint (`events`). */
  readonly builtIn: StreamSink;
  /** Custom endpoints by name (Kinesis, SQS, SNS, S3, EventBridge sinks). @default {} */
  readonly endpoints?: Readonly<Record<string, StreamSink>>;
  /** Routes, fallback and enrichments. @default every message to the built-in endpoint */
  readonly routing?: CompiledRouting;
  readonly deadLetters: DeadLetterStore;
  readonly log: Log;
  readonly limits: EnvelopeLimits;
  /** The hub's name, the `hubName` property of lifecycle and connection state events. @default 'serverless-iot-hub' */
  readonly hubName?: string;
  /**
   * Reads device twins for `$twin` conditions and enrichments; required when the routing reads `$twin`.
   * @default none
   */
  readonly twins?: TwinReader;
  /** Twins read at once (each read is three calls). @default 8 */
  readonly twinConcurrency?: number;
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
   * Messages that matched no route with the fallback route off, and lifecycle / connection state events
   * no route takes (the fallback route takes device messages only): dropped, as IoT Hub drops them. Absent when 0.
   */
  readonly unrouted?: number;
  /** Shadow updates that changed neither desired nor reported properties: no twin change event. Absent when 0. */
  readonly unchanged?: number;
  /** Devices whose twin could not be read: their records from the first that needed it are retried. Absent when 0. */
  readonly twinFailures?: number;
  /**
   * The sequence number of the first record that is not yet safe, when there is one: the event
   * source must retry from it (Lambda's `batchItemFailures`). Records after it may be written
   * again on retry; consumers drop duplicates by message id.
   */
  readonly retryFrom?: string;
}

interface Pending {
  readonly index: number;
  readonly entry: StreamEntry;
}

const DEFAULT_HUB_NAME = 'serverless-iot-hub';
const DEFAULT_COMPILED = compileRouting(DEFAULT_ROUTING, DEFAULT_HUB_NAME);

/** A record decoded: the message to route (`undefined` for a shadow update that changed nothing), or why it cannot be. */
interface Decoded {
  readonly index: number;
  /** The device id as far as it could be read (`unknown` otherwise), for dead letters. */
  readonly deviceId: string;
  /** The ingest id, else the record's sequence number. */
  readonly id: string;
  readonly message?: RoutableMessage | undefined;
  readonly error?: unknown;
}

function decode(record: SourceRecord, index: number, deps: RouterDeps): Decoded {
  let deviceId = 'unknown';
  let id = record.sequenceNumber;
  try {
    // Telemetry and event records (`kind`, see events.ts).
    const parsed = parseIngestRecord(JSON.parse(Buffer.from(record.data).toString('utf8')));
    ({ deviceId, ingestId: id } = recordIds(parsed));
    deviceId ||= 'unknown';
    const message = toRoutableMessage(parsed, {
      limits: deps.limits,
      hubName: deps.hubName ?? DEFAULT_HUB_NAME,
    });
    return { index, deviceId, id, message };
  } catch (error) {
    return { index, deviceId, id, error };
  }
}

/** A device's twin as loaded for one batch: the twin (`undefined`: not registered), or the read's error. */
type TwinLoad = { readonly twin: RoutingTwin | undefined } | { readonly error: unknown };

/** Reads each device's twin once, at most `concurrency` at a time. */
async function loadTwins(
  deviceIds: readonly string[],
  reader: TwinReader,
  concurrency: number,
  log: Log,
): Promise<Map<string, TwinLoad>> {
  const loads = new Map<string, TwinLoad>();
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < deviceIds.length; i = next++) {
      const deviceId = deviceIds[i] as string;
      try {
        loads.set(deviceId, { twin: await reader.read(deviceId) });
      } catch (error) {
        loads.set(deviceId, { error });
        log.warn("twin read failed; the device's records will be retried", {
          deviceId,
          code: error instanceof HubError ? error.code : undefined,
          error: String(error),
        });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, concurrency), deviceIds.length) }, worker));
  return loads;
}

/**
 * Routes one batch from the ingest stream: builds an envelope per record, evaluates the routes
 * (properties, system properties, `$body`, `$twin`) and writes the envelope to each endpoint it selects
 * (with that endpoint's enrichments), with the device id as partition key; dead-letters what cannot
 * be turned into a message (with the reason). Per-device order holds on every endpoint because each
 * PutRecords call carries at most one record per device and the next call starts only when it has
 * been written. A record is safe only when every endpoint it goes to has it; the first record that
 * is not is where the event source retries from (endpoints that already had it get a duplicate,
 * with the same message id).
 *
 * Twins: when a route of a record's source reads `$twin`, or an endpoint it goes to has a `$twin`
 * enrichment, the record needs its device's twin. Each such device's twin is read once per batch
 * (`twinConcurrency` at a time), before any evaluation, and only for those devices. A twin that cannot
 * be read holds back that device's records from the first that needs it: none of them is routed, and
 * the batch is retried from there, so they are routed later, in order, with the twin; never as if the
 * twin were empty, and never dead-lettered for it. A device that is not registered has no twin: `$twin`
 * conditions are undefined (false) for it.
 */
export async function routeBatch(records: readonly SourceRecord[], deps: RouterDeps): Promise<RouteResult> {
  const now = deps.now ?? (() => new Date());
  const letters: { index: number; letter: DeadLetter }[] = [];
  const routing = deps.routing ?? DEFAULT_COMPILED;
  if (routing.usesTwin && deps.twins === undefined) {
    // The stack gives the router twin reads whenever its routing reads `$twin`; a gap is a deployment bug.
    throw new HubError('InvalidConfiguration', 'the routing reads $twin but the router has no twin reader');
  }
  // endpoint → device → entries in batch order
  const queues = new Map<string, Map<string, Pending[]>>();
  const sinkOf = (endpoint: string): StreamSink | undefined =>
    endpoint === BUILT_IN_ENDPOINT ? deps.builtIn : deps.endpoints?.[endpoint];
  let unrouted = 0;
  let unchanged = 0;
  let firstUnsafe = Number.POSITIVE_INFINITY;

  const decoded = records.map((record, index) => decode(record, index, deps));

  // Which records need their device's twin: conditions of their source read it (needed before
  // evaluation), or an endpoint they go to is enriched from it (targets known without the twin).
  const early = new Map<number, string[]>();
  const needsTwin = new Set<number>();
  const twinDevices = new Set<string>();
  if (routing.usesTwin) {
    for (const d of decoded) {
      if (d.message === undefined) continue;
      const { envelope, source, body } = d.message;
      if (!routing.routesUseTwin(source)) {
        const targets = routing.endpointsFor(
          {
            systemProperties: envelope.systemProperties,
            properties: envelope.properties,
            body: routing.usesBody ? body : EMPTY,
          },
          source,
        );
        early.set(d.index, targets);
        if (!targets.some((t) => routing.enrichmentsUseTwin(t))) continue;
      }
      needsTwin.add(d.index);
      twinDevices.add(envelope.deviceId);
    }
  }
  const twins =
    twinDevices.size === 0 || deps.twins === undefined
      ? new Map<string, TwinLoad>()
      : await loadTwins([...twinDevices], deps.twins, deps.twinConcurrency ?? 8, deps.log);
  // A device whose twin read failed is held back from its first record that needs the twin.
  const heldFrom = new Map<string, number>();
  for (const d of decoded) {
    const deviceId = d.message?.envelope.deviceId;
    if (deviceId === undefined || !needsTwin.has(d.index) || heldFrom.has(deviceId)) continue;
    const load = twins.get(deviceId);
    if (load !== undefined && 'error' in load) heldFrom.set(deviceId, d.index);
  }
  for (const index of heldFrom.values()) firstUnsafe = Math.min(firstUnsafe, index);

  for (const d of decoded) {
    const { index } = d;
    const record = records[index] as SourceRecord;
    const { deviceId, id } = d;
    const letterOf = (letterId: string, code: string, reason: string): DeadLetter =>
      deadLetterOf(record, { deviceId, id: letterId, code, reason, at: now() });
    try {
      if (d.error !== undefined) throw d.error;
      if (d.message === undefined) {
        unchanged++;
        continue;
      }
      const { envelope, source, body } = d.message;
      const held = heldFrom.get(envelope.deviceId);
      if (held !== undefined && index >= held) continue;
      const load = needsTwin.has(index) ? twins.get(envelope.deviceId) : undefined;
      const twin = load !== undefined && 'twin' in load ? load.twin : undefined;
      const targets =
        early.get(index) ??
        routing.endpointsFor(
          {
            systemProperties: envelope.systemProperties,
            properties: envelope.properties,
            body: routing.usesBody ? body : EMPTY,
            ...(twin === undefined ? {} : { twin }),
          },
          source,
        );
      // Unrouted: dropped and counted, as IoT Hub drops them (events never take the fallback route).
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
      // Serialized once for every endpoint without enrichments, once more per enriched one.
      let plain: Buffer | undefined;
      const serialize = (properties: Readonly<Record<string, string>>): Buffer => {
        if (properties !== envelope.properties)
          return Buffer.from(JSON.stringify({ ...envelope, properties }));
        plain ??= Buffer.from(JSON.stringify(envelope));
        return plain;
      };
      for (const endpoint of targets) {
        const data = serialize(routing.enrich(endpoint, envelope.properties, twin));
        const limit = (sinkOf(endpoint)?.limits ?? KINESIS_LIMITS).maxEntryBytes;
        if (data.length > limit) {
          // Too large for this endpoint, ever: dead-lettered for it alone; the other endpoints get it.
          const reason = `the envelope is ${data.length} bytes; endpoint '${endpoint}' takes at most ${limit}`;
          deps.log.warn('d2c message dead-lettered', {
            deviceId,
            id,
            code: 'EndpointMessageTooLarge',
            reason,
          });
          letters.push({ index, letter: letterOf(`${id}@${endpoint}`, 'EndpointMessageTooLarge', reason) });
          continue;
        }
        const byDevice = queues.get(endpoint) ?? new Map<string, Pending[]>();
        const queue = byDevice.get(envelope.deviceId) ?? [];
        const messageSource = envelope.systemProperties['iothub-message-source'];
        queue.push({
          index,
          entry: { partitionKey: envelope.deviceId, data, id, ...(messageSource ? { messageSource } : {}) },
        });
        byDevice.set(envelope.deviceId, queue);
        queues.set(endpoint, byDevice);
      }
    } catch (error) {
      const code = error instanceof HubError ? error.code : 'UndecodableRecord';
      const reason = error instanceof Error ? error.message : String(error);
      deps.log.warn('d2c message dead-lettered', { deviceId, id, code, reason });
      letters.push({ index, letter: letterOf(id, code, reason) });
    }
  }

  if (letters.length > 0) {
    try {
      await deps.deadLetters.put(letters.map((l) => l.letter));
    } catch (error) {
      deps.log.error('dead-letter write failed', { error: String(error) });
      firstUnsafe = Math.min(firstUnsafe, ...letters.map((l) => l.index));
    }
  }

  const routed = new Set<number>();
  for (const byDevice of queues.values())
    for (const q of byDevice.values()) for (const p of q) routed.add(p.index);
  const rejected: { index: number; letter: DeadLetter }[] = [];
  const writeOptions = {
    log: deps.log,
    maxAttempts: deps.maxAttempts ?? 4,
    baseDelayMs: deps.baseDelayMs ?? 100,
    sleep: deps.sleep,
  };
  await Promise.all(
    [...queues].map(async ([endpoint, byDevice]) => {
      await writeOrdered(sinkOf(endpoint)!, byDevice, { ...writeOptions, label: 'endpoint' }, (p, reason) => {
        // Refused for good (the message itself is at fault there): dead-lettered for this endpoint alone.
        deps.log.warn('d2c message dead-lettered', {
          endpoint,
          id: p.entry.id,
          code: 'EndpointRejected',
          reason,
        });
        const letter = deadLetterOf(records[p.index]!, {
          deviceId: p.entry.partitionKey,
          id: `${p.entry.id}@${endpoint}`,
          code: 'EndpointRejected',
          reason: `endpoint '${endpoint}' refused the message: ${reason}`,
          at: now(),
        });
        rejected.push({ index: p.index, letter });
      });
      const left = [...byDevice.values()].reduce((n, q) => n + q.length, 0);
      if (left > 0) deps.log.error('endpoint write gave up; the batch will be retried', { endpoint, left });
    }),
  );
  if (rejected.length > 0) {
    try {
      await deps.deadLetters.put(rejected.map((r) => r.letter));
      letters.push(...rejected);
    } catch (error) {
      deps.log.error('dead-letter write failed', { error: String(error) });
      firstUnsafe = Math.min(firstUnsafe, ...rejected.map((r) => r.index));
    }
  }
  const pending = new Set<number>();
  for (const byDevice of queues.values()) {
    for (const queue of byDevice.values()) {
      const head = queue[0];
      if (head !== undefined) firstUnsafe = Math.min(firstUnsafe, head.index);
      for (const p of queue) pending.add(p.index);
    }
  }
  // A message an endpoint refused counts as dead-lettered, not delivered.
  for (const r of rejected) pending.add(r.index);
  const delivered = [...routed].filter((i) => !pending.has(i)).length;
  const retryFrom = Number.isFinite(firstUnsafe) ? records[firstUnsafe]?.sequenceNumber : undefined;
  const deadLettered = letters.filter((l) => l.index < firstUnsafe).length;
  return {
    delivered,
    deadLettered,
    ...(unrouted > 0 ? { unrouted } : {}),
    ...(unchanged > 0 ? { unchanged } : {}),
    ...(heldFrom.size > 0 ? { twinFailures: heldFrom.size } : {}),
    ...(retryFrom === undefined ? {} : { retryFrom }),
  };
}

const EMPTY = new Uint8Array();

/** A dead letter keeping the original record, so it can be replayed unchanged: as text, or base64 when it is not UTF-8. */
function deadLetterOf(
  record: SourceRecord,
  fields: { deviceId: string; id: string; code: string; reason: string; at: Date },
): DeadLetter {
  const raw = Buffer.from(record.data);
  const text = raw.toString('utf8');
  return {
    deviceId: fields.deviceId,
    id: fields.id,
    source: 'router',
    code: fields.code,
    reason: fields.reason,
    at: fields.at.toISOString(),
    ...(Buffer.from(text, 'utf8').equals(raw)
      ? { record: text, recordEncoding: 'utf8' as const }
      : { record: raw.toString('base64'), recordEncoding: 'base64' as const }),
  };
}
