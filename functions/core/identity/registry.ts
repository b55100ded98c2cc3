import { z } from 'zod';
import { HubError, LimitExceededError, ValidationError } from '../errors.ts';
import {
  type BulkOperation,
  type ConnectionState,
  type Device,
  type DeviceInput,
  deviceBodySchema,
  NEVER,
  newEtag,
  newGenerationId,
  parseWith,
  resolveAuthentication,
} from './device.ts';
import { assertCreatableDeviceId } from './device-id.ts';
import { DeviceAlreadyExistsError, DeviceNotFoundError, PreconditionFailedError } from './errors.ts';

/** Most operations one {@link DeviceRegistry.bulk} call takes (IoT Hub's bulk registry limit). */
export const BULK_MAX_OPERATIONS = 100;
/** Page size of {@link DeviceRegistry.list} when none is given. */
export const LIST_DEFAULT_LIMIT = 100;
/** Largest page {@link DeviceRegistry.list} returns (IoT Hub lists at most 1,000). */
export const LIST_MAX_LIMIT = 1000;

/** Options of conditional writes. */
export interface ConditionalOptions {
  /**
   * Etag the stored device must have (`If-Match`), quoted or not; `*` matches any existing device.
   * Omitted: the write is unconditional (but still needs the device to exist). Weak etags (`W/"..."`)
   * never match: the registry's etags are strong.
   */
  readonly ifMatch?: string;
}

/** Options of {@link DeviceRegistry.setConnectionState}. */
export interface ConnectionStateOptions {
  /**
   * Also move `lastActivityTime` forward to `at`, atomically with the state (a connect is activity).
   * @default false
   */
  readonly touchActivity?: boolean;
}

/** Options of {@link DeviceRegistry.list}. */
export interface ListOptions {
  /** Page size, 1–1000; default 100. */
  readonly limit?: number;
  /** `nextCursor` of the previous page. */
  readonly cursor?: string;
}

/** One page of devices. */
export interface DevicePage {
  /** Devices of this page, in no particular order across pages. */
  readonly devices: Device[];
  /** Present when more devices may follow; pass it back as `cursor`. The last page may be empty. */
  readonly nextCursor?: string;
}

/** Result of one bulk operation. */
export type BulkItemResult =
  | {
      readonly index: number;
      readonly deviceId: string;
      readonly ok: true;
      /** What the operation did: the device's lifecycle events follow from it. */
      readonly outcome: 'created' | 'updated' | 'deleted';
      /** The device as written, or as it was when deleted. */
      readonly device: Device;
    }
  | {
      readonly index: number;
      readonly deviceId: string;
      readonly ok: false;
      readonly error: { readonly code: string; readonly message: string };
    };

/** Result of {@link DeviceRegistry.bulk}, with IoT Hub's `isSuccessful` / `errors` summary. */
export interface BulkResult {
  /** True when every operation succeeded. */
  readonly isSuccessful: boolean;
  /** One result per operation, in request order. */
  readonly results: BulkItemResult[];
  /** IoT Hub's `DeviceRegistryOperationError` list: the failed items only. */
  readonly errors: { readonly deviceId: string; readonly errorCode: string; readonly errorStatus: string }[];
}

/**
 * The identity registry port. Implementations: `adapters/registry-memory.ts` (tests, tools) and
 * `adapters/registry-dynamodb.ts` (cloud and local hub); one contract suite covers both.
 *
 * Mapping from the service API (the edge's job): `PUT /devices/{id}` without `If-Match` is {@link create}
 * (IoT Hub answers 409 when the device exists); with `If-Match` it is {@link replace}. Errors:
 * `DeviceNotFound` 404, `DeviceAlreadyExists` 409, `PreconditionFailed` 412, `ValidationError` 400,
 * `LimitExceededError` 413/400, `TransientError` 503/429.
 */
export interface DeviceRegistry {
  /**
   * Registers a device: new generation id and etag, `enabled` unless told otherwise, SAS keys generated
   * when none are given. Throws `DeviceAlreadyExistsError` when the id is taken.
   */
  create(input: DeviceInput): Promise<Device>;
  /** The device, or `DeviceNotFoundError`. */
  get(deviceId: string): Promise<Device>;
  /** The device, or `undefined` when it is not registered (for the authenticator's hot path). */
  find(deviceId: string): Promise<Device | undefined>;
  /**
   * Replaces the writable fields of an existing device (see {@link applyReplacement}); new etag.
   * Throws `DeviceNotFoundError`, or `PreconditionFailedError` when `ifMatch` does not match — including
   * when a concurrent write with the same etag won.
   */
  replace(input: DeviceInput, options?: ConditionalOptions): Promise<Device>;
  /**
   * Deletes a device and returns it as it was (the body of its `deleteDeviceIdentity` event). Throws
   * `DeviceNotFoundError` or `PreconditionFailedError`.
   */
  delete(deviceId: string, options?: ConditionalOptions): Promise<Device>;
  /** One page of devices; throws `ValidationError` for a bad limit or cursor. */
  list(options?: ListOptions): Promise<DevicePage>;
  /**
   * Applies up to {@link BULK_MAX_OPERATIONS} operations, each independently (no transaction), and
   * reports each one's outcome; see {@link runBulk} for the modes. Throws `LimitExceededError` above the
   * cap, before applying anything.
   */
  bulk(operations: readonly BulkOperation[]): Promise<BulkResult>;
  /**
   * Records a lifecycle event. An event older than the one already applied (`at` before
   * `connectionStateUpdatedTime`) is ignored, so out-of-order delivery cannot leave a connected device
   * marked disconnected. With `touchActivity`, `lastActivityTime` also moves forward to `at` (never back,
   * also when the event itself is stale), in the same write as the state whenever both move: a reader
   * never sees a device `Connected` with the `lastActivityTime` it had before (for a new device,
   * `0001-01-01`). Does not change the etag. Throws `DeviceNotFoundError`.
   */
  setConnectionState(
    deviceId: string,
    state: ConnectionState,
    at: Date,
    options?: ConnectionStateOptions,
  ): Promise<Device>;
  /** Moves `lastActivityTime` forward to `at` (never back). Does not change the etag. Throws `DeviceNotFoundError`. */
  touchActivity(deviceId: string, at: Date): Promise<Device>;
}

/** A clock, injectable for tests. */
export type Clock = () => Date;

/** The value of an `If-Match` header without quotes and spaces; `*` stays `*`; weak tags keep their `W/`. */
export function normalizeIfMatch(ifMatch: string): string {
  const trimmed = ifMatch.trim();
  return trimmed.length >= 2 && trimmed.startsWith('"') && trimmed.endsWith('"')
    ? trimmed.slice(1, -1)
    : trimmed;
}

/** Whether a stored etag satisfies an `If-Match` value (strong comparison; `*` matches anything). */
export function etagMatches(currentEtag: string, ifMatch: string | undefined): boolean {
  if (ifMatch === undefined) return true;
  const wanted = normalizeIfMatch(ifMatch);
  return wanted === '*' || wanted === currentEtag;
}

/** Whether `ifMatch` asks for a specific etag (not absent, not `*`). */
export function isSpecificIfMatch(ifMatch: string | undefined): ifMatch is string {
  return ifMatch !== undefined && normalizeIfMatch(ifMatch) !== '*';
}

/** Re-validates programmatic input with the service API's schema (adapters call this first). */
export function validateDeviceInput(input: DeviceInput): DeviceInput {
  return parseWith(deviceBodySchema, input);
}

/** The record {@link DeviceRegistry.create} stores for `input` at `now`. */
export function buildNewDevice(input: DeviceInput, now: Date): Device {
  const valid = validateDeviceInput(input);
  assertCreatableDeviceId(valid.deviceId);
  const at = now.toISOString();
  return {
    deviceId: valid.deviceId,
    generationId: newGenerationId(),
    etag: newEtag(),
    status: valid.status ?? 'enabled',
    statusReason: valid.statusReason ?? null,
    statusUpdatedTime: at,
    connectionState: 'Disconnected',
    connectionStateUpdatedTime: NEVER,
    lastActivityTime: NEVER,
    cloudToDeviceMessageCount: 0,
    authentication: resolveAuthentication(valid.authentication),
    ...(valid.capabilities ? { capabilities: valid.capabilities } : {}),
  };
}

/**
 * The record {@link DeviceRegistry.replace} stores: the writable fields from `input`, the rest from
 * `existing`, and a new etag. Omitted `status`, `authentication` and `capabilities` keep their stored
 * values (a deliberate difference from IoT Hub, where a PUT without `authentication` regenerates keys and
 * so silently cuts the device off). `authentication: { type: 'sas' }` without keys does regenerate them:
 * that is how keys are rotated. `statusUpdatedTime` moves only when `status` changes.
 */
export function applyReplacement(existing: Device, input: DeviceInput, now: Date): Device {
  const valid = validateDeviceInput(input);
  const status = valid.status ?? existing.status;
  const capabilities = valid.capabilities ?? existing.capabilities;
  return {
    ...existing,
    etag: newEtag(),
    status,
    statusReason: valid.statusReason === undefined ? existing.statusReason : valid.statusReason,
    statusUpdatedTime: status === existing.status ? existing.statusUpdatedTime : now.toISOString(),
    authentication: valid.authentication
      ? resolveAuthentication(valid.authentication)
      : existing.authentication,
    ...(capabilities ? { capabilities } : {}),
  };
}

/** Throws `ValidationError` unless `limit` is a whole number in 1–1000; returns the effective limit. */
export function checkListLimit(limit: number | undefined): number {
  const value = limit ?? LIST_DEFAULT_LIMIT;
  if (!Number.isInteger(value) || value < 1 || value > LIST_MAX_LIMIT) {
    throw new ValidationError(
      'InvalidListLimit',
      `limit: expected a whole number from 1 to ${LIST_MAX_LIMIT}`,
      {
        field: 'limit',
        limit,
      },
    );
  }
  return value;
}

const cursorSchema = z.strictObject({ pk: z.string().startsWith('device#'), sk: z.literal('device') });

/** The position a list cursor encodes: the key of the last device returned. */
export type CursorKey = z.infer<typeof cursorSchema>;

/** Encodes a list position as an opaque cursor (base64url JSON). */
export function encodeCursor(key: CursorKey): string {
  return Buffer.from(JSON.stringify({ pk: key.pk, sk: key.sk }), 'utf8').toString('base64url');
}

/** Decodes a cursor from {@link encodeCursor}; throws `ValidationError` (`InvalidCursor`) naming `cursor`. */
export function decodeCursor(cursor: string): CursorKey {
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    json = undefined;
  }
  const parsed = cursorSchema.safeParse(json);
  if (!parsed.success) {
    throw new ValidationError('InvalidCursor', 'cursor: not a cursor this registry returned', {
      field: 'cursor',
    });
  }
  return parsed.data;
}

/** Throws `LimitExceededError` (`TooManyDevicesInBulkOperation`) above {@link BULK_MAX_OPERATIONS}. */
export function checkBulkSize(operations: readonly BulkOperation[]): void {
  if (operations.length > BULK_MAX_OPERATIONS) {
    throw new LimitExceededError(
      'TooManyDevicesInBulkOperation',
      `a bulk request takes at most ${BULK_MAX_OPERATIONS} devices, got ${operations.length}; import more through a file`,
      { limit: BULK_MAX_OPERATIONS, count: operations.length },
    );
  }
}

type Applied = { readonly outcome: 'created' | 'updated' | 'deleted'; readonly device: Device };

async function applyOne(registry: DeviceRegistry, op: BulkOperation): Promise<Applied> {
  const id = op.device.deviceId;
  const ifMatch = op.eTag;
  const created = async () => ({ outcome: 'created' as const, device: await registry.create(op.device) });
  const updated = async (options: ConditionalOptions) => ({
    outcome: 'updated' as const,
    device: await registry.replace(op.device, options),
  });
  switch (op.importMode) {
    case 'create':
      return created();
    case 'update':
      return updated({});
    case 'updateIfMatchETag':
      return updated({ ifMatch: ifMatch ?? '' });
    case 'delete':
      return { outcome: 'deleted', device: await registry.delete(id) };
    case 'deleteIfMatchETag':
      return { outcome: 'deleted', device: await registry.delete(id, { ifMatch: ifMatch ?? '' }) };
    case 'createOrUpdate':
    case 'createOrUpdateIfMatchETag': {
      const conditional = op.importMode === 'createOrUpdateIfMatchETag' ? { ifMatch: ifMatch ?? '' } : {};
      // A concurrent delete/create can slip between the two attempts; two rounds settle it.
      for (let attempt = 0; ; attempt++) {
        try {
          return await created();
        } catch (error) {
          if (!(error instanceof DeviceAlreadyExistsError) || attempt > 0) throw error;
        }
        try {
          return await updated(conditional);
        } catch (error) {
          if (!(error instanceof DeviceNotFoundError)) throw error;
        }
      }
    }
  }
}

/**
 * Runs bulk operations against `registry`, with IoT Hub's import-mode semantics:
 * - `create`: new device; fails `DeviceAlreadyExists` if it exists.
 * - `createOrUpdate`: create, or overwrite regardless of etag.
 * - `createOrUpdateIfMatchETag`: create, or overwrite only if `eTag` matches.
 * - `update` / `updateIfMatchETag`: overwrite an existing device (any etag / matching `eTag`); fails
 *   `DeviceNotFound` if absent.
 * - `delete` / `deleteIfMatchETag`: delete (any etag / matching `eTag`); fails `DeviceNotFound` if absent.
 *
 * Each operation succeeds or fails alone (DynamoDB Local has no transactions, and IoT Hub's bulk API is
 * not atomic either). Operations on the same id run in request order; different ids run up to
 * `concurrency` at a time. Hub errors become per-item failures; anything else (a bug, an outage) is thrown.
 */
export async function runBulk(
  registry: DeviceRegistry,
  operations: readonly BulkOperation[],
  concurrency = 10,
): Promise<BulkResult> {
  checkBulkSize(operations);
  const results: BulkItemResult[] = new Array(operations.length);
  const byId = new Map<string, number[]>();
  operations.forEach((op, index) => {
    const list = byId.get(op.device.deviceId) ?? [];
    list.push(index);
    byId.set(op.device.deviceId, list);
  });
  const queues = [...byId.values()];
  const worker = async (): Promise<void> => {
    for (let queue = queues.shift(); queue !== undefined; queue = queues.shift()) {
      for (const index of queue) {
        const op = operations[index]!;
        const deviceId = op.device.deviceId;
        try {
          results[index] = { index, deviceId, ok: true, ...(await applyOne(registry, op)) };
        } catch (error) {
          if (!(error instanceof HubError)) throw error;
          results[index] = {
            index,
            deviceId,
            ok: false,
            error: { code: error.code, message: error.message },
          };
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, queues.length) }, worker));
  const errors = results.flatMap((r) =>
    r.ok ? [] : [{ deviceId: r.deviceId, errorCode: r.error.code, errorStatus: r.error.message }],
  );
  return { isSuccessful: errors.length === 0, results, errors };
}

export { DeviceAlreadyExistsError, DeviceNotFoundError, PreconditionFailedError };
