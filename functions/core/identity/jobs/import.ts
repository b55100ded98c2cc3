import type { LifecycleChange, LifecycleEvents } from '../../d2c/lifecycle-events.ts';
import type { Log } from '../../ports.ts';
import type { DeviceConnections } from '../../service-api/registry-routes.ts';
import type { TwinService } from '../../twins/service.ts';
import { type BulkOperation, bulkItemSchema, type ImportMode, validationErrorFromZod } from '../device.ts';
import {
  BULK_MAX_OPERATIONS,
  type BulkItemResult,
  type DeviceRegistry,
  etagMatches,
  normalizeIfMatch,
  runBulk,
} from '../registry.ts';
import {
  blobIn,
  type DeviceBefore,
  IMPORT_ERRORS_BLOB_NAME,
  type ImportExportJob,
  type ImportState,
  type PendingChunk,
} from './job.ts';
import { type Line, LineReader } from './lines.ts';
import type { BlobRead, BlobStore, JobStore } from './ports.ts';

/** Longest line an import reads; a longer one is an error line. Device JSON is well under 4 KB. */
export const MAX_IMPORT_LINE_BYTES = 64 * 1024;
/** Error code of a line that is not a device (IoT Hub's "Invalid device format in line"). */
export const INVALID_LINE_CODE = 'InvalidDeviceFormat';
/** How much of a bad line an error message quotes. */
const QUOTE_CHARS = 200;
/** Longest error message an error line carries. */
const MESSAGE_CHARS = 1_000;

/** Registry changes reported to the rest of the hub, as `POST /devices` reports them. */
export interface ImportEffects {
  /** Device lifecycle events for creates and deletes. @default none */
  readonly lifecycleEvents?: LifecycleEvents;
  /** Cuts the connection of a device the import deleted or disabled. @default none */
  readonly connections?: DeviceConnections;
  /**
   * Forgets the twin (tags and shadow) of a device the import deleted, as `DELETE /devices/{id}` does, so a
   * later device with the same id does not inherit its reported properties. @default none
   */
  readonly twins?: Pick<TwinService, 'forget'>;
}

/** What an import needs. */
export interface ImportDeps extends ImportEffects {
  readonly registry: DeviceRegistry;
  readonly blobs: BlobStore;
  readonly store: JobStore;
  readonly log: Log;
  /** Lines per chunk (one bulk call, one saved cursor). @default 100 (the bulk limit) */
  readonly chunkLines?: number;
  readonly now?: () => Date;
}

/** One error line of `importErrors.log`. */
export interface ImportErrorLine {
  /** The device the line names, when it names one. */
  readonly deviceId?: string;
  /** The hub's error code, e.g. `DeviceAlreadyExists`, `InvalidDeviceFormat`. */
  readonly errorCode: string;
  /** What went wrong, starting with `line N:`. */
  readonly errorStatus: string;
  /** The line's number in the input file, from 1. */
  readonly line: number;
}

type Entry =
  | { readonly line: number; readonly op: BulkOperation }
  | { readonly line: number; readonly error: ImportErrorLine };

/** What became of a chunk's operation, as the first attempt at it must have seen it. */
type Expected =
  | { readonly ok: true; readonly outcome: 'created' | 'updated' | 'deleted' }
  | { readonly ok: false };

/**
 * Parses one line of an import file: IoT Hub's ExportImportDevice JSON (the item schema of `POST /devices`).
 * A line without `importMode` is a `createOrUpdate`, as in IoT Hub (its default mode), so an export file
 * imports as it is. Returns the operation, or the error line.
 */
export function parseImportLine(line: number, text: string): BulkOperation | ImportErrorLine {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    return {
      errorCode: INVALID_LINE_CODE,
      errorStatus: `line ${line}: not JSON (${detail}): ${quote(text)}`,
      line,
    };
  }
  const object =
    typeof json === 'object' && json !== null && !Array.isArray(json)
      ? (json as Record<string, unknown>)
      : undefined;
  const item =
    object !== undefined && !('importMode' in object) ? { ...object, importMode: 'createOrUpdate' } : json;
  const parsed = bulkItemSchema.safeParse(item);
  if (parsed.success) return parsed.data;
  const id = object?.id;
  return {
    ...(typeof id === 'string' && id.length > 0 ? { deviceId: id } : {}),
    errorCode: INVALID_LINE_CODE,
    errorStatus: `line ${line}: ${clip(validationErrorFromZod(parsed.error, INVALID_LINE_CODE).message)}`,
    line,
  };
}

function quote(text: string): string {
  return text.length > QUOTE_CHARS ? `${text.slice(0, QUOTE_CHARS)}...` : text;
}

/**
 * A message cut to {@link MESSAGE_CHARS}: a line with thousands of unknown fields must not make an error
 * line (and the chunk's stored error lines, one DynamoDB item of at most 400 KB) huge.
 */
function clip(message: string): string {
  return message.length > MESSAGE_CHARS ? `${message.slice(0, MESSAGE_CHARS)}...` : message;
}

/**
 * What each operation of a chunk did on its first attempt, worked out from the registry as it stood before
 * the chunk (`before`) by running the modes' rules in line order. `undefined` for a device `before` does not
 * cover.
 */
export function expectedOutcomes(
  ops: readonly BulkOperation[],
  before: Readonly<Record<string, DeviceBefore>>,
): (Expected | undefined)[] {
  const state = new Map<string, DeviceBefore>(Object.entries(before));
  return ops.map((op) => {
    const current = state.get(op.device.deviceId);
    if (current === undefined) return undefined;
    const { expected, after } = decide(op, current);
    state.set(op.device.deviceId, after);
    return expected;
  });
}

/** What `op` does to a device that stands as `current`, and how it stands after. */
function decide(op: BulkOperation, current: DeviceBefore): { expected: Expected; after: DeviceBefore } {
  // After a write by the chunk itself the etag is a new random one: no If-Match but '*' can match it.
  const matches = current.exists
    ? current.etag === null
      ? normalizeIfMatch(op.eTag ?? '') === '*'
      : etagMatches(current.etag, op.eTag ?? '')
    : false;
  const refused = { expected: { ok: false } as Expected, after: current };
  const written = (outcome: 'created' | 'updated') => ({
    expected: { ok: true, outcome } as Expected,
    after: { exists: true, etag: null },
  });
  const removed = {
    expected: { ok: true, outcome: 'deleted' } as Expected,
    after: { exists: false, etag: null },
  };
  const mode: ImportMode = op.importMode;
  if (mode === 'createOrUpdate') return written(current.exists ? 'updated' : 'created');
  if (mode === 'create') return current.exists ? refused : written('created');
  if (mode === 'createOrUpdateIfMatchETag') {
    if (!current.exists) return written('created');
    return matches ? written('updated') : refused;
  }
  if (mode === 'update') return current.exists ? written('updated') : refused;
  if (mode === 'updateIfMatchETag') return matches ? written('updated') : refused;
  if (mode === 'delete') return current.exists ? removed : refused;
  return matches ? removed : refused;
}

/** Error codes a replayed operation meets when its first attempt already did the work. */
const ALREADY_APPLIED: Readonly<Record<ImportMode, readonly string[]>> = {
  create: ['DeviceAlreadyExists'],
  createOrUpdate: [],
  createOrUpdateIfMatchETag: ['PreconditionFailed'],
  update: ['DeviceNotFound'],
  updateIfMatchETag: ['PreconditionFailed', 'DeviceNotFound'],
  delete: ['DeviceNotFound'],
  deleteIfMatchETag: ['DeviceNotFound'],
};

/** A chunk's outcome for one operation: the bulk result, or a replay's conclusion that it was done before. */
type Applied =
  | { readonly ok: true; readonly outcome: 'created' | 'updated' | 'deleted'; readonly replayed: boolean }
  | { readonly ok: false; readonly code: string; readonly message: string };

/**
 * Runs an import job in chunks of lines, keeping the cursor (byte offset and line number) in the job.
 *
 * One chunk: read up to 100 lines; parse them (a bad line is an error line, never a job failure); save the
 * job with the chunk marked pending together with how the registry stood for the devices it touches (one
 * consistent read each); apply the operations with `runBulk` (IoT Hub's import modes); store the
 * chunk's error lines under the chunk's first line number; then save the cursor past the chunk.
 *
 * Crash safety: the cursor moves only after a chunk's writes and error lines are stored, so a crash
 * (SIGKILL, Lambda timeout) loses nothing: the next worker reads the same lines again from the saved offset.
 * It does not double anything either: `createOrUpdate` and `update` write the same device twice, and a
 * failure that only says "done already" (a `create` meeting the device it created, a `delete` missing the
 * device it deleted, an If-Match meeting the etag it set) is judged against the registry as it stood
 * before the chunk: if the first attempt must have succeeded, it counts as done, not as an error line.
 * Error lines of a chunk are stored under its first line number, so a replay replaces them; counts move
 * with the cursor. Lifecycle events and disconnects of a replayed chunk may be sent twice (at least once).
 */
export class ImportRun {
  private reader: LineReader | undefined;
  private read: BlobRead | undefined;
  private readonly chunkLines: number;

  constructor(private readonly deps: ImportDeps) {
    this.chunkLines = Math.min(deps.chunkLines ?? BULK_MAX_OPERATIONS, BULK_MAX_OPERATIONS);
  }

  /**
   * Works one chunk. `save` stores the job (conditionally) and returns it as stored; the returned job is
   * not saved yet. `finished` means the input is consumed and `importErrors.log` written: the caller
   * completes the job.
   */
  async step(
    job: ImportExportJob,
    save: (next: ImportExportJob) => Promise<ImportExportJob>,
  ): Promise<{ job: ImportExportJob; finished: boolean }> {
    let state: ImportState = job.import ?? {
      offset: 0,
      line: 0,
      created: 0,
      updated: 0,
      deleted: 0,
      failed: 0,
    };
    const reader = await this.open(job, state);
    const size = this.read?.size ?? state.size ?? 0;
    if (state.size !== size) state = { ...state, size };

    const pending = state.pending;
    const lines: Line[] = [];
    for (;;) {
      if (
        pending
          ? lines.length > 0 && lines.at(-1)!.number >= pending.endLine
          : lines.length >= this.chunkLines
      )
        break;
      const line = await reader.next();
      if (line === undefined) break;
      lines.push(line);
    }
    if (lines.length === 0) return { job: await this.finish(job, state), finished: true };

    const last = lines.at(-1)!;
    const entries = lines.flatMap((line): Entry[] => {
      if (line.problem !== undefined) {
        return [
          {
            line: line.number,
            error: {
              errorCode: INVALID_LINE_CODE,
              errorStatus: `line ${line.number}: ${line.problem}`,
              line: line.number,
            },
          },
        ];
      }
      if ((line.text ?? '').trim() === '') return [];
      const parsed = parseImportLine(line.number, line.text ?? '');
      return [
        'errorCode' in parsed ? { line: line.number, error: parsed } : { line: line.number, op: parsed },
      ];
    });
    const ops = entries.flatMap((e) => ('op' in e ? [e.op] : []));

    let before = pending?.before;
    if (before === undefined) {
      before = await this.snapshot(ops);
      const marked: PendingChunk = { endOffset: last.endOffset, endLine: last.number, before };
      job = await save({ ...job, import: { ...state, pending: marked } });
    }
    const applied = await this.apply(ops, before, pending !== undefined);

    const errors: ImportErrorLine[] = [];
    let opIndex = 0;
    const counts = { created: 0, updated: 0, deleted: 0 };
    for (const entry of entries) {
      if ('error' in entry) {
        errors.push(entry.error);
        continue;
      }
      const result = applied[opIndex++]!;
      if (result.ok) counts[result.outcome]++;
      else {
        errors.push({
          deviceId: entry.op.device.deviceId,
          errorCode: result.code,
          errorStatus: `line ${entry.line}: ${clip(result.message)}`,
          line: entry.line,
        });
      }
    }
    if (errors.length > 0) {
      await this.deps.store.putErrors(
        job.jobId,
        lines[0]!.number,
        errors.map((e) => JSON.stringify(e)),
      );
    }
    const next: ImportState = {
      offset: last.endOffset,
      line: last.number,
      size,
      created: state.created + counts.created,
      updated: state.updated + counts.updated,
      deleted: state.deleted + counts.deleted,
      failed: state.failed + errors.length,
    };
    const progress = size > 0 ? Math.min(99, Math.floor((last.endOffset * 100) / size)) : 99;
    return { job: { ...job, import: next, progress }, finished: false };
  }

  /** Closes the input. */
  async close(): Promise<void> {
    await this.reader?.close().catch(() => undefined);
    this.read?.close();
    this.reader = undefined;
    this.read = undefined;
  }

  private async open(job: ImportExportJob, state: ImportState): Promise<LineReader> {
    if (this.reader !== undefined) return this.reader;
    const input = blobIn(job.inputBlobContainerUri ?? '', job.inputBlobName ?? '');
    this.read = await this.deps.blobs.read(input, state.offset);
    this.reader = new LineReader(this.read.body, state, MAX_IMPORT_LINE_BYTES);
    return this.reader;
  }

  /** How the registry stands for every device `ops` touch. */
  private async snapshot(ops: readonly BulkOperation[]): Promise<Record<string, DeviceBefore>> {
    const ids = [...new Set(ops.map((op) => op.device.deviceId))];
    const before: Record<string, DeviceBefore> = {};
    for (let i = 0; i < ids.length; i += 10) {
      await Promise.all(
        ids.slice(i, i + 10).map(async (id) => {
          const device = await this.deps.registry.find(id);
          before[id] =
            device === undefined ? { exists: false, etag: null } : { exists: true, etag: device.etag };
        }),
      );
    }
    return before;
  }

  /** Applies `ops`, and on a replay turns "done already" failures into what the first attempt did. */
  private async apply(
    ops: readonly BulkOperation[],
    before: Readonly<Record<string, DeviceBefore>>,
    replay: boolean,
  ): Promise<Applied[]> {
    if (ops.length === 0) return [];
    const result = await runBulk(this.deps.registry, ops);
    const expected = replay ? expectedOutcomes(ops, before) : [];
    const applied = result.results.map((item, index): Applied => {
      const wanted = expected[index];
      // A replayed createOrUpdate updates the device its first attempt created: count what that attempt did.
      if (item.ok) return { ok: true, outcome: wanted?.ok ? wanted.outcome : item.outcome, replayed: false };
      const op = ops[index]!;
      if (wanted?.ok === true && ALREADY_APPLIED[op.importMode].includes(item.error.code)) {
        return { ok: true, outcome: wanted.outcome, replayed: true };
      }
      return { ok: false, code: item.error.code, message: item.error.message };
    });
    await this.report(ops, result.results, applied);
    return applied;
  }

  /**
   * Lifecycle events, twin deletes and disconnects, as `POST /devices` and `DELETE /devices/{id}` make
   * them; failures are logged, never thrown (the registry writes stand).
   */
  private async report(
    ops: readonly BulkOperation[],
    results: readonly BulkItemResult[],
    applied: readonly Applied[],
  ): Promise<void> {
    const at = (this.deps.now ?? (() => new Date()))();
    const changes: LifecycleChange[] = results.flatMap((item): LifecycleChange[] => {
      if (!item.ok || item.outcome === 'updated') return [];
      return [
        {
          opType: item.outcome === 'created' ? 'createDeviceIdentity' : 'deleteDeviceIdentity',
          device: item.device,
          at,
        },
      ];
    });
    if (changes.length > 0) await this.deps.lifecycleEvents?.emit(changes);
    const twins = this.deps.twins;
    if (twins !== undefined) {
      // A replayed delete forgets again: deleting a shadow that is gone already is a success.
      const deleted = applied.flatMap((result, index) =>
        result.ok && result.outcome === 'deleted' ? [ops[index]!.device.deviceId] : [],
      );
      for (let i = 0; i < deleted.length; i += 10) {
        await Promise.all(
          deleted.slice(i, i + 10).map((id) =>
            twins.forget(id).catch((error: unknown) =>
              // A shadow left behind would be inherited by a later device with the same id: logged loudly.
              this.deps.log.error('could not delete the twin of a device the import deleted', {
                deviceId: id,
                error: error instanceof Error ? error.message : String(error),
              }),
            ),
          ),
        );
      }
    }
    const connections = this.deps.connections;
    if (connections === undefined) return;
    const cuts = applied.flatMap((result, index) => {
      const op = ops[index]!;
      if (!result.ok) return [];
      if (result.outcome === 'deleted') return [op.device.deviceId];
      const item = results[index];
      const status = item?.ok ? item.device.status : op.device.status;
      return op.importMode !== 'create' && status === 'disabled' ? [op.device.deviceId] : [];
    });
    for (let i = 0; i < cuts.length; i += 10) {
      await Promise.all(
        cuts.slice(i, i + 10).map((id) =>
          connections.disconnect(id).catch((error: unknown) =>
            this.deps.log.error('could not disconnect device after import', {
              deviceId: id,
              error: error instanceof Error ? error.message : String(error),
            }),
          ),
        ),
      );
    }
  }

  /** Writes `importErrors.log` (empty when nothing failed, as IoT Hub leaves it) and completes the job. */
  private async finish(job: ImportExportJob, state: ImportState): Promise<ImportExportJob> {
    const output = blobIn(job.outputBlobContainerUri, IMPORT_ERRORS_BLOB_NAME);
    const store = this.deps.store;
    async function* errorLog(): AsyncIterable<Uint8Array> {
      for await (const lines of store.errors(job.jobId)) {
        if (lines.length > 0) yield Buffer.from(`${lines.join('\n')}\n`);
      }
    }
    await this.deps.blobs.put(output, errorLog(), 'text/plain; charset=utf-8');
    const { pending: _done, ...rest } = state;
    return { ...job, import: rest, progress: 100 };
  }
}
