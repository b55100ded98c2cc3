import type { ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';
import {
  DeleteCommand,
  type DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  ScanCommand,
  UpdateCommand,
} from '@aws-sdk/lib-dynamodb';
import { HubError, TransientError } from '../core/errors.ts';
import {
  type BulkOperation,
  type ConnectionState,
  type Device,
  type DeviceInput,
  deviceRecordSchema,
} from '../core/identity/device.ts';
import {
  DeviceAlreadyExistsError,
  DeviceNotFoundError,
  PreconditionFailedError,
} from '../core/identity/errors.ts';
import {
  applyReplacement,
  type BulkResult,
  buildNewDevice,
  type Clock,
  type ConditionalOptions,
  type ConnectionStateOptions,
  checkListLimit,
  type DevicePage,
  type DeviceRegistry,
  decodeCursor,
  encodeCursor,
  etagMatches,
  isSpecificIfMatch,
  type ListOptions,
  normalizeIfMatch,
  runBulk,
} from '../core/identity/registry.ts';
import { callTable, isConditionalCheckFailed } from './dynamodb-calls.ts';

/** Sort key of a device's registry item. Other modules may keep other items under the same `pk`. */
export const DEVICE_SORT_KEY = 'device';

/**
 * Primary key of a device's registry item: `pk = device#{deviceId}`, `sk = device`.
 *
 * Table contract (the stack must create exactly this): partition key `pk` (S), sort key `sk` (S),
 * on-demand billing, no secondary index. Device attributes are stored as top-level attributes with the
 * names of IoT Hub's Device JSON (`deviceId`, `etag`, `status`, `authentication` as a map, ...).
 */
export function deviceKey(deviceId: string): { pk: string; sk: string } {
  return { pk: `device#${deviceId}`, sk: DEVICE_SORT_KEY };
}

/** Constructor options of {@link DynamoDbDeviceRegistry}. */
export interface DynamoDbDeviceRegistryOptions {
  /** Document client, configured by the caller (endpoint, region, credentials). */
  readonly client: DynamoDBDocumentClient;
  /** Name of the table with the {@link deviceKey} layout. */
  readonly tableName: string;
  /** Source of "now" for status times. @default () => new Date() */
  readonly clock?: Clock;
  /** How often `replace` without a specific `If-Match` re-reads after losing a race. @default 5 */
  readonly maxReplaceAttempts?: number;
}

const NAMES = {
  '#pk': 'pk',
  '#sk': 'sk',
  '#etag': 'etag',
  '#status': 'status',
  '#statusReason': 'statusReason',
  '#statusUpdatedTime': 'statusUpdatedTime',
  '#authentication': 'authentication',
  '#capabilities': 'capabilities',
  '#connectionState': 'connectionState',
  '#connectionStateUpdatedTime': 'connectionStateUpdatedTime',
  '#lastActivityTime': 'lastActivityTime',
} as const;

function names<K extends keyof typeof NAMES>(...keys: K[]): Record<string, string> {
  return Object.fromEntries(keys.map((k) => [k, NAMES[k]]));
}

/**
 * The identity registry on DynamoDB (and dynalite in the local hub).
 *
 * Every write is a single conditional write — create `attribute_not_exists(pk)`, replace and delete
 * `etag = :expected` — with `ReturnValuesOnConditionCheckFailure: ALL_OLD` so a failure can be told apart
 * (missing → `DeviceNotFound`, other etag → `PreconditionFailed`) without a second read. dynalite ignores
 * that parameter, so when the old item is not returned the adapter falls back to one consistent read.
 * No transactions: dynalite has none.
 *
 * Replace writes only the identity attributes (`UpdateItem SET`), so attributes other modules keep on the
 * item, and connection state written concurrently, survive it. Connection state and activity are
 * conditional updates too (monotonic in time) and do not change the etag.
 *
 * Listing pages with Scan (filter `sk = device`) and hands out `LastEvaluatedKey` as an opaque cursor.
 * That is deliberate: listing the registry is an operator/export action, not a hot path; a Scan costs
 * reads over the whole table but needs no extra index, and order is unspecified as in IoT Hub. A page can
 * hold fewer than `limit` devices only at the end, and the last page may be empty.
 */
export class DynamoDbDeviceRegistry implements DeviceRegistry {
  private readonly client: DynamoDBDocumentClient;
  private readonly tableName: string;
  private readonly clock: Clock;
  private readonly maxReplaceAttempts: number;

  constructor(options: DynamoDbDeviceRegistryOptions) {
    this.client = options.client;
    this.tableName = options.tableName;
    this.clock = options.clock ?? (() => new Date());
    this.maxReplaceAttempts = options.maxReplaceAttempts ?? 5;
  }

  /** {@inheritDoc DeviceRegistry.create} */
  async create(input: DeviceInput): Promise<Device> {
    const device = buildNewDevice(input, this.clock());
    try {
      await this.call(() =>
        this.client.send(
          new PutCommand({
            TableName: this.tableName,
            Item: { ...deviceKey(device.deviceId), ...device },
            ConditionExpression: 'attribute_not_exists(#pk)',
            ExpressionAttributeNames: names('#pk'),
            ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
          }),
        ),
      );
    } catch (error) {
      if (isConditionalCheckFailed(error))
        throw new DeviceAlreadyExistsError(device.deviceId, { cause: error });
      throw error;
    }
    return device;
  }

  /** {@inheritDoc DeviceRegistry.get} */
  async get(deviceId: string): Promise<Device> {
    const device = await this.find(deviceId);
    if (device === undefined) throw new DeviceNotFoundError(deviceId);
    return device;
  }

  /** {@inheritDoc DeviceRegistry.find} */
  async find(deviceId: string): Promise<Device | undefined> {
    const out = await this.call(() =>
      this.client.send(
        new GetCommand({ TableName: this.tableName, Key: deviceKey(deviceId), ConsistentRead: true }),
      ),
    );
    return out.Item === undefined ? undefined : this.fromItem(out.Item);
  }

  /** {@inheritDoc DeviceRegistry.replace} */
  async replace(input: DeviceInput, options: ConditionalOptions = {}): Promise<Device> {
    const { deviceId } = input;
    for (let attempt = 1; ; attempt++) {
      const existing = await this.get(deviceId);
      if (!etagMatches(existing.etag, options.ifMatch)) {
        throw new PreconditionFailedError(deviceId, options.ifMatch ?? '', existing.etag);
      }
      const next = applyReplacement(existing, input, this.clock());
      try {
        const out = await this.call(() =>
          this.client.send(
            new UpdateCommand({
              TableName: this.tableName,
              Key: deviceKey(deviceId),
              UpdateExpression: [
                'SET #etag = :etag',
                '#status = :status',
                '#statusReason = :statusReason',
                '#statusUpdatedTime = :statusUpdatedTime',
                '#authentication = :authentication',
                ...(next.capabilities ? ['#capabilities = :capabilities'] : []),
              ].join(', '),
              ConditionExpression: '#etag = :expected',
              ExpressionAttributeNames: names(
                '#etag',
                '#status',
                '#statusReason',
                '#statusUpdatedTime',
                '#authentication',
                ...(next.capabilities ? (['#capabilities'] as const) : []),
              ),
              ExpressionAttributeValues: {
                ':etag': next.etag,
                ':expected': existing.etag,
                ':status': next.status,
                ':statusReason': next.statusReason,
                ':statusUpdatedTime': next.statusUpdatedTime,
                ':authentication': next.authentication,
                ...(next.capabilities ? { ':capabilities': next.capabilities } : {}),
              },
              ReturnValues: 'ALL_NEW',
              ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
            }),
          ),
        );
        return this.fromItem(out.Attributes ?? {});
      } catch (error) {
        if (!isConditionalCheckFailed(error)) throw error;
        const old = await this.oldItem(error, deviceId);
        if (!old.exists) throw new DeviceNotFoundError(deviceId, { cause: error });
        // Someone else wrote since our read. With a specific If-Match that write made it stale: the
        // caller's etag cannot match any more. Without one ("*" or none), read again and retry.
        if (isSpecificIfMatch(options.ifMatch) || attempt >= this.maxReplaceAttempts) {
          if (!isSpecificIfMatch(options.ifMatch)) {
            throw new TransientError(
              'RegistryContention',
              `device '${deviceId}' kept changing during replace; retry`,
              { deviceId, attempts: attempt },
              { cause: error },
            );
          }
          throw new PreconditionFailedError(deviceId, options.ifMatch, old.etag, { cause: error });
        }
      }
    }
  }

  /** {@inheritDoc DeviceRegistry.delete} */
  async delete(deviceId: string, options: ConditionalOptions = {}): Promise<Device> {
    const specific = isSpecificIfMatch(options.ifMatch);
    try {
      const out = await this.call(() =>
        this.client.send(
          new DeleteCommand({
            TableName: this.tableName,
            Key: deviceKey(deviceId),
            ConditionExpression: specific ? '#etag = :expected' : 'attribute_exists(#pk)',
            ExpressionAttributeNames: specific ? names('#etag') : names('#pk'),
            ...(specific
              ? { ExpressionAttributeValues: { ':expected': normalizeIfMatch(options.ifMatch ?? '') } }
              : {}),
            ReturnValues: 'ALL_OLD',
            ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
          }),
        ),
      );
      return this.fromItem(out.Attributes ?? {});
    } catch (error) {
      if (!isConditionalCheckFailed(error)) throw error;
      const old = await this.oldItem(error, deviceId);
      if (!old.exists) throw new DeviceNotFoundError(deviceId, { cause: error });
      throw new PreconditionFailedError(deviceId, options.ifMatch ?? '', old.etag, { cause: error });
    }
  }

  /** {@inheritDoc DeviceRegistry.list} */
  async list(options: ListOptions = {}): Promise<DevicePage> {
    const limit = checkListLimit(options.limit);
    let startKey: Record<string, unknown> | undefined =
      options.cursor === undefined ? undefined : decodeCursor(options.cursor);
    const devices: Device[] = [];
    do {
      const remaining = limit - devices.length;
      const out = await this.call(() =>
        this.client.send(
          new ScanCommand({
            TableName: this.tableName,
            // Limit counts items evaluated before the filter, so the last evaluated key is exactly where
            // this page stops and nothing is skipped or repeated.
            Limit: remaining,
            FilterExpression: '#sk = :sk',
            ExpressionAttributeNames: names('#sk'),
            ExpressionAttributeValues: { ':sk': DEVICE_SORT_KEY },
            ConsistentRead: true,
            ...(startKey ? { ExclusiveStartKey: startKey } : {}),
          }),
        ),
      );
      for (const item of out.Items ?? []) devices.push(this.fromItem(item));
      startKey = out.LastEvaluatedKey;
    } while (startKey !== undefined && devices.length < limit);
    if (startKey === undefined) return { devices };
    const pk = startKey.pk;
    const sk = startKey.sk;
    if (typeof pk !== 'string' || typeof sk !== 'string') {
      throw new HubError('UnexpectedScanKey', 'scan returned a key without string pk/sk', { startKey });
    }
    return { devices, nextCursor: encodeCursor({ pk, sk: DEVICE_SORT_KEY }) };
  }

  /** {@inheritDoc DeviceRegistry.bulk} */
  async bulk(operations: readonly BulkOperation[]): Promise<BulkResult> {
    return runBulk(this, operations);
  }

  /**
   * {@inheritDoc DeviceRegistry.setConnectionState}
   *
   * With `touchActivity`, the usual case (the event is newer than both the stored state and the stored
   * activity) is one conditional UpdateItem that sets all three attributes. DynamoDB has no `max()`, so
   * when one of the two is already newer that write is refused and each is applied on its own, activity
   * first: a reader between those two writes sees the old state, or a `lastActivityTime` that is already
   * at least `at` — never a connect without its activity.
   */
  async setConnectionState(
    deviceId: string,
    state: ConnectionState,
    at: Date,
    options: ConnectionStateOptions = {},
  ): Promise<Device> {
    const values = { ':state': state, ':at': at.toISOString() };
    if (options.touchActivity !== true) {
      return this.monotonicUpdate(
        deviceId,
        'SET #connectionState = :state, #connectionStateUpdatedTime = :at',
        '#connectionStateUpdatedTime <= :at',
        names('#pk', '#connectionState', '#connectionStateUpdatedTime'),
        values,
      );
    }
    const both = await this.conditionalUpdate(
      deviceId,
      'SET #connectionState = :state, #connectionStateUpdatedTime = :at, #lastActivityTime = :at',
      '#connectionStateUpdatedTime <= :at AND #lastActivityTime < :at',
      names('#pk', '#connectionState', '#connectionStateUpdatedTime', '#lastActivityTime'),
      values,
    );
    if (both !== undefined) return both;
    await this.touchActivity(deviceId, at);
    return this.setConnectionState(deviceId, state, at);
  }

  /** {@inheritDoc DeviceRegistry.touchActivity} */
  async touchActivity(deviceId: string, at: Date): Promise<Device> {
    return this.monotonicUpdate(
      deviceId,
      'SET #lastActivityTime = :at',
      '#lastActivityTime < :at',
      names('#pk', '#lastActivityTime'),
      { ':at': at.toISOString() },
    );
  }

  /**
   * An update that applies only when it moves a timestamp forward. A stale update is not an error: the
   * device as stored (newer) is returned. ISO-8601 strings from `toISOString()` (and {@link NEVER}) sort
   * chronologically, so DynamoDB's string comparison is a time comparison.
   */
  private async monotonicUpdate(
    deviceId: string,
    update: string,
    newer: string,
    attributeNames: Record<string, string>,
    values: Record<string, unknown>,
  ): Promise<Device> {
    return (
      (await this.conditionalUpdate(deviceId, update, newer, attributeNames, values)) ?? this.get(deviceId)
    );
  }

  /**
   * One UpdateItem on an existing device, applied only when `newer` holds: the device as written, or
   * `undefined` when the condition failed (the device is missing, or the update would not move forward).
   */
  private async conditionalUpdate(
    deviceId: string,
    update: string,
    newer: string,
    attributeNames: Record<string, string>,
    values: Record<string, unknown>,
  ): Promise<Device | undefined> {
    try {
      const out = await this.call(() =>
        this.client.send(
          new UpdateCommand({
            TableName: this.tableName,
            Key: deviceKey(deviceId),
            UpdateExpression: update,
            ConditionExpression: `attribute_exists(#pk) AND ${newer}`,
            ExpressionAttributeNames: attributeNames,
            ExpressionAttributeValues: values,
            ReturnValues: 'ALL_NEW',
          }),
        ),
      );
      return this.fromItem(out.Attributes ?? {});
    } catch (error) {
      if (!isConditionalCheckFailed(error)) throw error;
      return undefined;
    }
  }

  /** Whether the item existed when a condition failed, and its etag; one consistent read if DynamoDB did not say. */
  private async oldItem(
    error: ConditionalCheckFailedException,
    deviceId: string,
  ): Promise<{ exists: boolean; etag?: string }> {
    const item = error.Item;
    if (item !== undefined && Object.keys(item).length > 0) {
      const etag = item.etag?.S;
      return etag === undefined ? { exists: true } : { exists: true, etag };
    }
    const current = await this.find(deviceId);
    return current === undefined ? { exists: false } : { exists: true, etag: current.etag };
  }

  private fromItem(item: Record<string, unknown>): Device {
    const { pk: _pk, sk: _sk, ...rest } = item;
    const parsed = deviceRecordSchema.safeParse(rest);
    if (!parsed.success) {
      throw new HubError('CorruptDeviceRecord', `registry item ${String(item.pk)} is not a valid device`, {
        pk: item.pk,
        issues: parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`),
      });
    }
    return parsed.data;
  }

  /** Runs a DynamoDB call, turning throttling and server faults into {@link TransientError}. */
  private call<T>(fn: () => Promise<T>): Promise<T> {
    return callTable(fn, 'RegistryUnavailable', 'registry table');
  }
}
