import { z } from 'zod';
import { HubError, ValidationError } from '../errors.ts';
import { type Device, type DeviceJson, toDeviceJson } from '../identity/device.ts';
import type { RouteSource } from '../routing/config.ts';
import { diffPatch } from '../twins/patch.ts';
import { type JsonObject, metadataTree } from '../twins/twin.ts';
import {
  buildEnvelope,
  type D2CEnvelope,
  ENVELOPE_VERSION,
  type EnvelopeLimits,
  IngestRecordSchema,
} from './envelope.ts';

/**
 * IoT Hub's non-telemetry events, routed like D2C messages: device lifecycle events
 * (`createDeviceIdentity` / `deleteDeviceIdentity`), device connection state events
 * (`deviceConnected` / `deviceDisconnected`) and twin change events (`updateTwin` / `replaceTwin`).
 * They travel on the ingest stream next to telemetry, keyed by device id, as records with a `kind`
 * field (telemetry records have none), and the router turns them into the same {@link D2CEnvelope} as
 * telemetry, with IoT Hub's event properties. Documented in `docs/routing.md` (section "Route sources").
 */

/** `kind` of a lifecycle record, which the service API writes after each registry create/delete. */
export const LIFECYCLE_KIND = 'deviceLifecycle';
/** `kind` of a connection state record, which the presence rule (`lib/event-sources.ts`) writes. */
export const CONNECTION_STATE_KIND = 'connectionState';
/** `kind` of a twin tags change record, which the service API writes after each tags write. */
export const TWIN_CHANGE_KIND = 'twinChange';
/** `kind` of a shadow documents record, which the shadow documents rule (`lib/event-sources.ts`) writes. */
export const SHADOW_DOCUMENTS_KIND = 'shadowDocuments';

/** Lifecycle operations, IoT Hub's `opType` values. */
export const LIFECYCLE_OP_TYPES = ['createDeviceIdentity', 'deleteDeviceIdentity'] as const;
export type LifecycleOpType = (typeof LIFECYCLE_OP_TYPES)[number];

/**
 * The device identity as the body of a lifecycle event: the service API's Device JSON without the
 * symmetric keys (everyone who may read an endpoint would otherwise read every device's keys).
 */
export type DeviceIdentityBody = Omit<DeviceJson, 'authentication'> & {
  readonly authentication: Omit<DeviceJson['authentication'], 'symmetricKey'>;
};

/**
 * A lifecycle record on the ingest stream (written by the service API, partition key = device id).
 * `device` is {@link DeviceIdentityBody}: checked here only for the fields the envelope needs.
 */
export const LifecycleRecordSchema = z.object({
  kind: z.literal(LIFECYCLE_KIND),
  opType: z.enum(LIFECYCLE_OP_TYPES),
  deviceId: z.string().min(1),
  /** Epoch millis of the registry write. */
  operationTime: z.number().int().nonnegative(),
  /** The created device, or the device as it was when deleted. */
  device: z.looseObject({ deviceId: z.string().min(1) }),
  /** Epoch millis at which the record was put on the ingest stream. */
  enqueuedTime: z.number().int().nonnegative(),
  /** Stamped once by the writer; retries of the write keep it, so it is the event's message id. */
  ingestId: z.string().min(1),
});
export type LifecycleRecord = z.infer<typeof LifecycleRecordSchema>;

/**
 * A connection state record: AWS IoT's presence event (`$aws/events/presence/{connected|disconnected}/{clientId}`)
 * as the presence rule selects it (`SELECT *, 'connectionState' AS kind, timestamp() AS enqueuedTime,
 * newuuid() AS ingestId`, see `connectionStateSql` in `lib/event-sources.ts`). Other presence fields
 * (`ipAddress`, `thingName`, ...) may be present and are ignored.
 */
export const ConnectionStateRecordSchema = z.object({
  kind: z.literal(CONNECTION_STATE_KIND),
  /** The client id, which the hub binds to the device id (the authorizer admits no other). */
  clientId: z.string().min(1),
  eventType: z.enum(['connected', 'disconnected']),
  /** Epoch millis of the connect/disconnect (the presence event's own timestamp). */
  timestamp: z.number().int().nonnegative(),
  /** AWS IoT's per-client version of the connection; orders events of one client. Absent: 0. */
  versionNumber: z.number().int().nonnegative().optional(),
  sessionIdentifier: z.string().optional(),
  principalIdentifier: z.string().optional(),
  disconnectReason: z.string().optional(),
  clientInitiatedDisconnect: z.boolean().optional(),
  /** `timestamp()` of the rule. */
  enqueuedTime: z.number().int().nonnegative(),
  /** `newuuid()` of the rule. */
  ingestId: z.string().min(1),
});
export type ConnectionStateRecord = z.infer<typeof ConnectionStateRecordSchema>;

/** Twin change operations, IoT Hub's `opType` values. */
export const TWIN_CHANGE_OP_TYPES = ['updateTwin', 'replaceTwin'] as const;
export type TwinChangeOpType = (typeof TWIN_CHANGE_OP_TYPES)[number];

const jsonObject = z.record(z.string(), z.unknown()).transform((o) => o as JsonObject);

/**
 * A twin tags change record on the ingest stream (written by the service API after a tags write,
 * partition key = device id; see `twin-change-events.ts`). Desired and reported changes come as
 * {@link ShadowDocumentsRecord}s instead.
 */
export const TwinChangeRecordSchema = z.object({
  kind: z.literal(TWIN_CHANGE_KIND),
  opType: z.enum(TWIN_CHANGE_OP_TYPES),
  deviceId: z.string().min(1),
  /** Epoch millis of the tags write. */
  operationTime: z.number().int().nonnegative(),
  /** The twin's version after the change. */
  version: z.number().int().nonnegative(),
  /** The tags patch (`updateTwin`; `null` removed a key) or the whole new tags (`replaceTwin`). */
  tags: jsonObject,
  /** Epoch millis at which the record was put on the ingest stream. */
  enqueuedTime: z.number().int().nonnegative(),
  /** Stamped once by the writer; retries of the write keep it, so it is the event's message id. */
  ingestId: z.string().min(1),
});
export type TwinChangeRecord = z.infer<typeof TwinChangeRecordSchema>;

/** A shadow as `update/documents` shows it before or after an update; extra fields are ignored. */
const shadowSnapshot = z.object({
  state: z
    .object({ desired: jsonObject.nullish(), reported: jsonObject.nullish() })
    .nullish()
    .transform((s) => s ?? {}),
  metadata: z.object({ desired: z.unknown().optional(), reported: z.unknown().optional() }).nullish(),
  version: z.number().int().nonnegative(),
});

/**
 * A shadow documents record: AWS IoT's `$aws/things/{thing}/shadow/update/documents` message (the
 * classic shadow before and after each accepted update) as the shadow documents rule selects it
 * (`SELECT *, 'shadowDocuments' AS kind, topic(3) AS deviceId, timestamp() AS enqueuedTime, newuuid()
 * AS ingestId`, see `shadowDocumentsSql` in `lib/event-sources.ts`). The thing name is the device id.
 */
export const ShadowDocumentsRecordSchema = z.object({
  kind: z.literal(SHADOW_DOCUMENTS_KIND),
  /** `topic(3)`: the thing name, which is the device id. */
  deviceId: z.string().min(1),
  /** The shadow before the update; absent (or null) when the update created it. */
  previous: shadowSnapshot.nullish(),
  current: shadowSnapshot,
  /** Epoch seconds of the update, as the shadow service stamps it. */
  timestamp: z.number().nonnegative().optional(),
  /** `timestamp()` of the rule. */
  enqueuedTime: z.number().int().nonnegative(),
  /** `newuuid()` of the rule. */
  ingestId: z.string().min(1),
});
export type ShadowDocumentsRecord = z.infer<typeof ShadowDocumentsRecordSchema>;

/** Any ingest-stream record, told apart by `kind` (telemetry has none). */
export type ParsedIngestRecord =
  | { readonly kind: 'telemetry'; readonly record: z.infer<typeof IngestRecordSchema> }
  | { readonly kind: typeof LIFECYCLE_KIND; readonly record: LifecycleRecord }
  | { readonly kind: typeof CONNECTION_STATE_KIND; readonly record: ConnectionStateRecord }
  | { readonly kind: typeof TWIN_CHANGE_KIND; readonly record: TwinChangeRecord }
  | { readonly kind: typeof SHADOW_DOCUMENTS_KIND; readonly record: ShadowDocumentsRecord };

/** A record turned into what the router routes: the envelope, its route source and the body bytes conditions read. */
export interface RoutableMessage {
  readonly envelope: D2CEnvelope;
  readonly source: RouteSource;
  /** The raw body (for `$body` conditions). */
  readonly body: Uint8Array;
}

/** The device id and ingest id of a record, as far as they can be read (for dead letters). */
export function recordIds(parsed: ParsedIngestRecord): { deviceId: string; ingestId: string } {
  switch (parsed.kind) {
    case 'telemetry':
      return { deviceId: parsed.record.clientId, ingestId: parsed.record.ingestId };
    case LIFECYCLE_KIND:
      return { deviceId: parsed.record.deviceId, ingestId: parsed.record.ingestId };
    case CONNECTION_STATE_KIND:
      return { deviceId: parsed.record.clientId, ingestId: parsed.record.ingestId };
    case TWIN_CHANGE_KIND:
    case SHADOW_DOCUMENTS_KIND:
      return { deviceId: parsed.record.deviceId, ingestId: parsed.record.ingestId };
  }
}

function schemaError(code: string, what: string, error: z.ZodError): HubError {
  const detail = error.issues.map((i) => `${i.path.join('.') || '(record)'}: ${i.message}`).join('; ');
  return new HubError(code, `${what} does not match the schema: ${detail}`);
}

/**
 * Tells an ingest record's kind and validates it against that kind's schema.
 *
 * @throws HubError `InvalidIngestRecord` (telemetry), `InvalidLifecycleRecord`,
 *   `InvalidConnectionStateRecord`, `InvalidTwinChangeRecord`, `InvalidShadowDocumentsRecord`, or
 *   `UnknownRecordKind` (a `kind` this router does not know: a newer writer, or a corrupt record),
 *   each naming the bad fields.
 */
export function parseIngestRecord(json: unknown): ParsedIngestRecord {
  const kind =
    typeof json === 'object' && json !== null && !Array.isArray(json) && Object.hasOwn(json, 'kind')
      ? (json as { kind: unknown }).kind
      : undefined;
  if (kind === undefined) {
    const parsed = IngestRecordSchema.safeParse(json);
    if (!parsed.success) throw schemaError('InvalidIngestRecord', 'ingest record', parsed.error);
    return { kind: 'telemetry', record: parsed.data };
  }
  if (kind === LIFECYCLE_KIND) {
    const parsed = LifecycleRecordSchema.safeParse(json);
    if (!parsed.success) throw schemaError('InvalidLifecycleRecord', 'device lifecycle record', parsed.error);
    return { kind: LIFECYCLE_KIND, record: parsed.data };
  }
  if (kind === CONNECTION_STATE_KIND) {
    const parsed = ConnectionStateRecordSchema.safeParse(json);
    if (!parsed.success) {
      throw schemaError('InvalidConnectionStateRecord', 'connection state record', parsed.error);
    }
    return { kind: CONNECTION_STATE_KIND, record: parsed.data };
  }
  if (kind === TWIN_CHANGE_KIND) {
    const parsed = TwinChangeRecordSchema.safeParse(json);
    if (!parsed.success) throw schemaError('InvalidTwinChangeRecord', 'twin change record', parsed.error);
    return { kind: TWIN_CHANGE_KIND, record: parsed.data };
  }
  if (kind === SHADOW_DOCUMENTS_KIND) {
    const parsed = ShadowDocumentsRecordSchema.safeParse(json);
    if (!parsed.success) {
      throw schemaError('InvalidShadowDocumentsRecord', 'shadow documents record', parsed.error);
    }
    return { kind: SHADOW_DOCUMENTS_KIND, record: parsed.data };
  }
  const kinds = [LIFECYCLE_KIND, CONNECTION_STATE_KIND, TWIN_CHANGE_KIND, SHADOW_DOCUMENTS_KIND];
  throw new HubError(
    'UnknownRecordKind',
    `ingest record kind ${JSON.stringify(kind)} is unknown (expected no kind for telemetry, or one of ${kinds.map((k) => `'${k}'`).join(', ')})`,
    { kind: typeof kind === 'string' ? kind : String(kind) },
  );
}

/**
 * Turns a parsed record into the envelope the router writes and the route source it is routed
 * under: telemetry through {@link buildEnvelope} (unchanged), events through the builders below.
 * `undefined` for a shadow update that changed neither desired nor reported properties: IoT Hub
 * emits no twin change event for it.
 *
 * @throws what {@link buildEnvelope} throws, and `ValidationError` `DeviceIdMismatch` for a
 *   lifecycle record whose device is not its device id.
 */
export function toRoutableMessage(
  parsed: ParsedIngestRecord,
  options: { readonly limits: EnvelopeLimits; readonly hubName: string },
): RoutableMessage | undefined {
  switch (parsed.kind) {
    case 'telemetry': {
      const envelope = buildEnvelope(parsed.record, options.limits);
      return { envelope, source: 'DeviceMessages', body: Buffer.from(parsed.record.body ?? '', 'base64') };
    }
    case LIFECYCLE_KIND: {
      const envelope = buildLifecycleEnvelope(parsed.record, options.hubName);
      return { envelope, source: 'DeviceLifecycleEvents', body: jsonBytes(envelope.body) };
    }
    case CONNECTION_STATE_KIND: {
      const envelope = buildConnectionStateEnvelope(parsed.record, options.hubName);
      return { envelope, source: 'DeviceConnectionStateEvents', body: jsonBytes(envelope.body) };
    }
    case TWIN_CHANGE_KIND: {
      const envelope = buildTwinChangeEnvelope(parsed.record, options.hubName);
      return { envelope, source: 'TwinChangeEvents', body: jsonBytes(envelope.body) };
    }
    case SHADOW_DOCUMENTS_KIND: {
      const envelope = buildShadowChangeEnvelope(parsed.record, options.hubName);
      return envelope && { envelope, source: 'TwinChangeEvents', body: jsonBytes(envelope.body) };
    }
  }
}

function jsonBytes(value: unknown): Uint8Array {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

/** The device as a lifecycle event's body: {@link DeviceIdentityBody}. The writer calls this. */
export function deviceIdentityBody(device: Device): DeviceIdentityBody {
  const json = toDeviceJson(device);
  const { symmetricKey: _keys, ...authentication } = json.authentication;
  return { ...json, authentication };
}

interface EventParts {
  readonly hubName: string;
  readonly deviceId: string;
  readonly opType: string;
  readonly operationTime: number;
  readonly schema: string;
  readonly source: string;
  readonly enqueuedTime: number;
  readonly ingestId: string;
  readonly body: unknown;
}

function eventEnvelope(parts: EventParts): D2CEnvelope {
  const enqueuedTime = new Date(parts.enqueuedTime).toISOString();
  return {
    version: ENVELOPE_VERSION,
    messageId: parts.ingestId,
    deviceId: parts.deviceId,
    enqueuedTime,
    systemProperties: {
      'message-id': parts.ingestId,
      'content-type': 'application/json',
      'content-encoding': 'utf-8',
      'iothub-connection-device-id': parts.deviceId,
      'iothub-enqueuedtime': enqueuedTime,
      'iothub-message-source': parts.source,
    },
    properties: {
      hubName: parts.hubName,
      deviceId: parts.deviceId,
      opType: parts.opType,
      operationTimestamp: new Date(parts.operationTime).toISOString(),
      'iothub-message-schema': parts.schema,
    },
    bodyEncoding: 'json',
    body: parts.body,
  };
}

/**
 * A device lifecycle event as IoT Hub emits it: application properties `hubName`, `deviceId`,
 * `opType` (`createDeviceIdentity` / `deleteDeviceIdentity`), `operationTimestamp`,
 * `iothub-message-schema: deviceLifecycleNotification`; system property `iothub-message-source:
 * deviceLifecycleEvents`; body the device identity without keys (IoT Hub sends the twin there; this
 * hub has no twins yet). Symmetric keys in the record, which the writer never puts there, are dropped.
 *
 * @throws ValidationError `DeviceIdMismatch` when `device.deviceId` is not `deviceId`.
 */
export function buildLifecycleEnvelope(record: LifecycleRecord, hubName: string): D2CEnvelope {
  if (record.device.deviceId !== record.deviceId) {
    throw new ValidationError(
      'DeviceIdMismatch',
      `lifecycle record for device '${record.deviceId}' carries device '${record.device.deviceId}'`,
      { deviceId: record.deviceId, bodyDeviceId: record.device.deviceId },
    );
  }
  let body: Record<string, unknown> = record.device;
  const auth = body.authentication;
  if (typeof auth === 'object' && auth !== null && Object.hasOwn(auth, 'symmetricKey')) {
    const { symmetricKey: _keys, ...rest } = auth as Record<string, unknown>;
    body = { ...body, authentication: rest };
  }
  return eventEnvelope({
    hubName,
    deviceId: record.deviceId,
    opType: record.opType,
    operationTime: record.operationTime,
    schema: 'deviceLifecycleNotification',
    source: 'deviceLifecycleEvents',
    enqueuedTime: record.enqueuedTime,
    ingestId: record.ingestId,
    body,
  });
}

const hex16 = (n: number): string => Math.trunc(n).toString(16).padStart(16, '0').slice(-16);

/**
 * The `sequenceNumber` of a connection state event. IoT Hub's is 64 hex digits that grow with each
 * event of a device and are compared as strings; this one keeps that shape and property, derived from
 * the presence event: digits 1-16 its timestamp (epoch ms), 17-32 AWS IoT's `versionNumber` (per
 * client, grows with each connection), 33-48 `1` for connected and `2` for disconnected (so the
 * disconnect of a connection sorts after its connect within one millisecond), 49-64 zero. It is
 * monotonic per device as far as the front door's clock is; AWS IoT may deliver presence events out of
 * order or twice, so consumers that keep "the latest state" should keep the larger sequence number,
 * as IoT Hub advises.
 */
export function connectionSequenceNumber(record: ConnectionStateRecord): string {
  const rank = record.eventType === 'connected' ? 1 : 2;
  return `${hex16(record.timestamp)}${hex16(record.versionNumber ?? 0)}${hex16(rank)}${'0'.repeat(16)}`;
}

/**
 * A device connection state event as IoT Hub emits it: application properties `hubName`,
 * `deviceId`, `opType` (`deviceConnected` / `deviceDisconnected`), `operationTimestamp` (the presence
 * event's time), `iothub-message-schema: deviceConnectionStateNotification`; system property
 * `iothub-message-source: deviceConnectionStateEvents`; body `{ "sequenceNumber": ... }` (see
 * {@link connectionSequenceNumber}).
 */
export function buildConnectionStateEnvelope(record: ConnectionStateRecord, hubName: string): D2CEnvelope {
  return eventEnvelope({
    hubName,
    deviceId: record.clientId,
    opType: record.eventType === 'connected' ? 'deviceConnected' : 'deviceDisconnected',
    operationTime: record.timestamp,
    schema: 'deviceConnectionStateNotification',
    source: 'deviceConnectionStateEvents',
    enqueuedTime: record.enqueuedTime,
    ingestId: record.ingestId,
    body: { sequenceNumber: connectionSequenceNumber(record) },
  });
}

/**
 * A twin change event for a tags change, as IoT Hub emits it: application properties `hubName`,
 * `deviceId`, `opType` (`updateTwin` / `replaceTwin`), `operationTimestamp` (the tags write),
 * `iothub-message-schema: twinChangeNotification`; system property `iothub-message-source:
 * twinChangeEvents`. Body: `{ version, tags }` with the tags patch (`null` for a removed tag) for
 * `updateTwin`; `{ deviceId, version, tags }` with all the new tags for `replaceTwin`.
 */
export function buildTwinChangeEnvelope(record: TwinChangeRecord, hubName: string): D2CEnvelope {
  const body =
    record.opType === 'replaceTwin'
      ? { deviceId: record.deviceId, version: record.version, tags: record.tags }
      : { version: record.version, tags: record.tags };
  return eventEnvelope({
    hubName,
    deviceId: record.deviceId,
    opType: record.opType,
    operationTime: record.operationTime,
    schema: 'twinChangeNotification',
    source: 'twinChangeEvents',
    enqueuedTime: record.enqueuedTime,
    ingestId: record.ingestId,
    body,
  });
}

/** The changed part of one property section, with IoT Hub's `$metadata` and `$version`, or `undefined`. */
function changedSection(
  record: ShadowDocumentsRecord,
  section: 'desired' | 'reported',
  fallback: string,
): JsonObject | undefined {
  const before = record.previous?.state[section] ?? {};
  const after = record.current.state[section] ?? {};
  const patch = diffPatch(before, after);
  if (Object.keys(patch).length === 0) return undefined;
  return {
    ...patch,
    $metadata: metadataTree(patch, record.current.metadata?.[section], fallback),
    $version: record.current.version,
  };
}

/**
 * A twin change event for a shadow update (desired properties set through the service API or any
 * shadow client, reported properties from the device), as IoT Hub emits it for an update: `opType`
 * `updateTwin` and the other properties as in {@link buildTwinChangeEnvelope}; body `{ version,
 * properties: { desired?, reported? } }`, where each section holds what the update changed from
 * `previous` to `current` (nested objects down to the changed keys, `null` for a removed key, arrays
 * whole), with `$metadata` (`$lastUpdated` from the shadow's timestamps) and `$version`. `version` and
 * `$version` are the shadow's version (see `docs/routing.md`). `undefined` when neither section changed.
 */
export function buildShadowChangeEnvelope(
  record: ShadowDocumentsRecord,
  hubName: string,
): D2CEnvelope | undefined {
  const operationTime =
    record.timestamp === undefined ? record.enqueuedTime : Math.round(record.timestamp * 1000);
  const fallback = new Date(operationTime).toISOString();
  const desired = changedSection(record, 'desired', fallback);
  const reported = changedSection(record, 'reported', fallback);
  if (desired === undefined && reported === undefined) return undefined;
  return eventEnvelope({
    hubName,
    deviceId: record.deviceId,
    opType: 'updateTwin',
    operationTime,
    schema: 'twinChangeNotification',
    source: 'twinChangeEvents',
    enqueuedTime: record.enqueuedTime,
    ingestId: record.ingestId,
    body: {
      version: record.current.version,
      properties: { ...(desired ? { desired } : {}), ...(reported ? { reported } : {}) },
    },
  });
}
