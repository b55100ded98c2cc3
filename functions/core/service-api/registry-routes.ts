import type { LifecycleChange, LifecycleEvents } from '../d2c/lifecycle-events.ts';
import { LimitExceededError, ValidationError } from '../errors.ts';
import {
  type BulkOperation,
  type Device,
  parseBulkBody,
  parseDeviceBody,
  toDeviceJson,
} from '../identity/device.ts';
import { validateDeviceId } from '../identity/device-id.ts';
import {
  BULK_MAX_OPERATIONS,
  type DeviceRegistry,
  LIST_DEFAULT_LIMIT,
  LIST_MAX_LIMIT,
} from '../identity/registry.ts';
import type { Log } from '../ports.ts';
import { type ApiRequest, jsonResponse, parseJsonBody, type RouteEntry } from './http.ts';

/**
 * Live connections of devices, as far as the service API needs them: cutting one off. Implemented in the
 * cloud by `adapters/connections.ts` (IoT Core `DeleteConnection`) and locally by the broker.
 */
export interface DeviceConnections {
  /** Disconnects the device's live connection; succeeds when it is not connected. */
  disconnect(deviceId: string): Promise<void>;
  /**
   * Clears the retained messages on the device's own topics (`devices/{id}/...`, its shadow topics), so that
   * a later device registered under the same id does not receive what the deleted one left.
   */
  forgetRetained?(deviceId: string): Promise<void>;
}

/** What {@link registryRoutes} needs. */
export interface RegistryRouteDeps {
  /** The identity registry. */
  readonly registry: DeviceRegistry;
  /**
   * Called after a write that leaves a device unable to connect — a replace (single or bulk) that leaves it
   * `disabled`, a delete — so a live connection is cut. A rejection is logged and swallowed: the registry
   * write already happened and the authenticator refuses the next connect anyway.
   */
  readonly onDeviceDisabledOrDeleted: (deviceId: string, reason: 'disabled' | 'deleted') => Promise<void>;
  /** Where disconnect failures are logged. */
  readonly log: Log;
  /**
   * Where creates and deletes (single and bulk) are reported as IoT Hub's device lifecycle events,
   * after the registry write and before the answer (see `IngestLifecycleEvents` for the crash window).
   * @default none: no lifecycle events
   */
  readonly lifecycleEvents?: LifecycleEvents;
}

/** Response header (and request header) carrying IoT Hub's list continuation token. */
export const CONTINUATION_HEADER = 'x-ms-continuation';

const DISCONNECT_CONCURRENCY = 10;

/** The `etag` header value for an etag: quoted, as IoT Hub sends it. */
export function quoteEtag(etag: string): string {
  return `"${etag}"`;
}

function deviceResponse(status: number, device: Device) {
  return jsonResponse(status, toDeviceJson(device), { etag: quoteEtag(device.etag) });
}

/** The `If-Match` header: `undefined` when absent; a blank value is a 400 naming `if-match`. */
function ifMatchOf(request: ApiRequest): string | undefined {
  const value = request.headers['if-match'];
  if (value === undefined) return undefined;
  if (value.trim() === '') {
    throw new ValidationError('InvalidIfMatch', 'if-match: must be an etag or *', { field: 'if-match' });
  }
  return value;
}

/** `top` of `GET /devices`: a whole number 1–1000, default 100; anything else is a 400 naming `top`. */
export function parseTop(raw: string | undefined): number {
  if (raw === undefined) return LIST_DEFAULT_LIMIT;
  const value = /^\d{1,7}$/.test(raw.trim()) ? Number(raw.trim()) : Number.NaN;
  if (!Number.isInteger(value) || value < 1 || value > LIST_MAX_LIMIT) {
    throw new ValidationError(
      'InvalidQueryParameter',
      `top: expected a whole number from 1 to ${LIST_MAX_LIMIT}, got ${JSON.stringify(raw)}`,
      { field: 'top', limit: LIST_MAX_LIMIT },
    );
  }
  return value;
}

/** Whether a bulk operation that succeeded may have left a live connection that must now be cut. */
function cutsConnection(operation: BulkOperation, device: Device | undefined): boolean {
  if (operation.importMode === 'delete' || operation.importMode === 'deleteIfMatchETag') return true;
  return operation.importMode !== 'create' && device?.status === 'disabled';
}

/**
 * The registry routes of the service API, mirroring IoT Hub's service REST API:
 *
 * - `PUT /devices/{id}`: body is IoT Hub's Device JSON (validated by `parseDeviceBody`; its `deviceId` must
 *   equal the path id). Without `If-Match` it creates (201; 409 `DeviceAlreadyExists` if the id is taken);
 *   with `If-Match` it replaces (200; 412 on an etag mismatch; `*` matches any etag; 404 if absent). Answers
 *   the device and a quoted `etag` header.
 * - `GET /devices/{id}`: 200 with the device and `etag`, or 404. Keys are included: IoT Hub's registry GET
 *   returns them to service callers, and only service callers (IAM in the cloud, the service key locally)
 *   reach this API.
 * - `DELETE /devices/{id}`: optional `If-Match`; 204, 404 or 412.
 * - `GET /devices?top=N`: a page of devices (an array), `top` 1–1000 (default 100); the next page's token
 *   comes in the `x-ms-continuation` response header and goes back in the same request header.
 * - `POST /devices`: IoT Hub's bulk registry operation, up to 100 items (more: 400
 *   `TooManyDevicesInBulkOperation`); answers IoT Hub's BulkRegistryOperationResult
 *   `{ isSuccessful, errors, warnings }`, 200 when every item succeeded and 400 otherwise (each item is
 *   applied on its own; there is no rollback).
 *
 * Route entries are returned, not a table, so other modules (C2D, twins) can add theirs.
 */
export function registryRoutes(deps: RegistryRouteDeps): RouteEntry[] {
  const { registry, log } = deps;
  const emit = (changes: LifecycleChange[]): Promise<void> =>
    deps.lifecycleEvents?.emit(changes) ?? Promise.resolve();

  const cutConnection = async (deviceId: string, reason: 'disabled' | 'deleted'): Promise<void> => {
    try {
      await deps.onDeviceDisabledOrDeleted(deviceId, reason);
    } catch (error) {
      log.error('could not disconnect device after registry change', {
        deviceId,
        reason,
        error: error instanceof Error ? { name: error.name, message: error.message } : String(error),
      });
    }
  };

  return [
    {
      method: 'PUT',
      pattern: '/devices/{id}',
      handle: async (request, params) => {
        const pathId = params.id ?? '';
        const input = parseDeviceBody(parseJsonBody(request));
        if (input.deviceId !== pathId) {
          throw new ValidationError(
            'DeviceIdMismatch',
            `deviceId: ${JSON.stringify(input.deviceId)} does not match the id in the path ${JSON.stringify(pathId)}`,
            { field: 'deviceId' },
          );
        }
        const ifMatch = ifMatchOf(request);
        if (ifMatch === undefined) {
          const created = await registry.create(input);
          await emit([{ opType: 'createDeviceIdentity', device: created, at: new Date() }]);
          return deviceResponse(201, created);
        }
        const device = await registry.replace(input, { ifMatch });
        if (device.status === 'disabled') await cutConnection(device.deviceId, 'disabled');
        return deviceResponse(200, device);
      },
    },
    {
      method: 'GET',
      pattern: '/devices/{id}',
      handle: async (_request, params) => {
        const id = validateDeviceId(params.id, 'deviceId');
        return deviceResponse(200, await registry.get(id));
      },
    },
    {
      method: 'DELETE',
      pattern: '/devices/{id}',
      handle: async (request, params) => {
        const id = validateDeviceId(params.id, 'deviceId');
        const ifMatch = ifMatchOf(request);
        const deleted = await registry.delete(id, ifMatch === undefined ? {} : { ifMatch });
        await emit([{ opType: 'deleteDeviceIdentity', device: deleted, at: new Date() }]);
        await cutConnection(id, 'deleted');
        return jsonResponse(204, undefined);
      },
    },
    {
      method: 'GET',
      pattern: '/devices',
      handle: async (request) => {
        const limit = parseTop(request.query.top);
        const cursor = request.headers[CONTINUATION_HEADER];
        let page: Awaited<ReturnType<DeviceRegistry['list']>>;
        try {
          page = await registry.list(cursor === undefined || cursor === '' ? { limit } : { limit, cursor });
        } catch (error) {
          if (error instanceof ValidationError && error.code === 'InvalidCursor') {
            throw new ValidationError(
              'InvalidContinuationToken',
              `${CONTINUATION_HEADER}: not a continuation token this API returned`,
              { field: CONTINUATION_HEADER },
              { cause: error },
            );
          }
          throw error;
        }
        return jsonResponse(
          200,
          page.devices.map(toDeviceJson),
          page.nextCursor === undefined ? {} : { [CONTINUATION_HEADER]: page.nextCursor },
        );
      },
    },
    {
      method: 'POST',
      pattern: '/devices',
      handle: async (request) => {
        const json = parseJsonBody(request);
        // Checked before the items are validated, so an oversized request gets the limit, not item errors.
        if (Array.isArray(json) && json.length > BULK_MAX_OPERATIONS) {
          throw new LimitExceededError(
            'TooManyDevicesInBulkOperation',
            `body: a bulk request takes at most ${BULK_MAX_OPERATIONS} devices, got ${json.length}; import more through a file`,
            { field: 'body', limit: BULK_MAX_OPERATIONS, count: json.length },
          );
        }
        const operations = parseBulkBody(json);
        const result = await registry.bulk(operations);
        const at = new Date();
        await emit(
          result.results.flatMap((item): LifecycleChange[] => {
            if (!item.ok || item.outcome === 'updated') return [];
            const opType = item.outcome === 'created' ? 'createDeviceIdentity' : 'deleteDeviceIdentity';
            return [{ opType, device: item.device, at }];
          }),
        );
        const cuts = result.results.flatMap((item) => {
          const operation = operations[item.index];
          if (!item.ok || operation === undefined || !cutsConnection(operation, item.device)) return [];
          const reason = operation.importMode.startsWith('delete')
            ? ('deleted' as const)
            : ('disabled' as const);
          return [{ deviceId: item.deviceId, reason }];
        });
        // A few at a time: a bulk call can disable or delete 100 connected devices.
        for (let i = 0; i < cuts.length; i += DISCONNECT_CONCURRENCY) {
          await Promise.all(
            cuts.slice(i, i + DISCONNECT_CONCURRENCY).map((cut) => cutConnection(cut.deviceId, cut.reason)),
          );
        }
        return jsonResponse(result.isSuccessful ? 200 : 400, {
          isSuccessful: result.isSuccessful,
          errors: result.errors,
          warnings: [],
        });
      },
    },
  ];
}
