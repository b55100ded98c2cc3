import type { Device } from '../identity/device.ts';
import { isThingName } from '../identity/topics.ts';

/**
 * Device twins, IoT Hub's model on AWS parts: `tags` are kept by the hub in the registry table (only
 * the service API writes them), `properties.desired` and `properties.reported` are the device's
 * classic AWS IoT Device Shadow (`$aws/things/{deviceId}/shadow`), so devices use the shadow topics
 * and any AWS shadow client, and back ends use IoT Hub's twin API. `docs/twins.md` documents the
 * mapping.
 */

/** A JSON value as twins hold it. */
export type JsonValue = null | boolean | number | string | JsonValue[] | JsonObject;
/** A JSON object. */
export interface JsonObject {
  [key: string]: JsonValue;
}

/** Per-leaf metadata as the shadow service keeps it: `{ timestamp }` (epoch seconds) at each leaf. */
export type ShadowMetadata =
  | { readonly timestamp: number }
  | { readonly [key: string]: ShadowMetadata }
  | ShadowMetadata[];

/** A shadow document as `GetThingShadow` / `update/accepted` return it. */
export interface ShadowDocument {
  readonly state: {
    readonly desired?: JsonObject;
    readonly reported?: JsonObject;
    readonly delta?: JsonObject;
  };
  readonly metadata?: { readonly desired?: ShadowMetadata; readonly reported?: ShadowMetadata };
  /** Grows by one with every accepted update. */
  readonly version: number;
  /** Epoch seconds of the response. */
  readonly timestamp?: number;
}

/**
 * The device shadow, as far as twins use it. Implemented in the cloud by `adapters/shadow-iot.ts`
 * (`@aws-sdk/client-iot-data-plane`) and locally by the same adapter against the local hub's shadow
 * service.
 */
export interface ShadowStore {
  /** The classic shadow of a thing, or `undefined` when it has none. */
  get(thingName: string): Promise<ShadowDocument | undefined>;
  /**
   * Merges `desired` into the shadow's desired state (a `null` removes a key). With `expectedVersion`
   * the update applies only at that version. Resolves to the shadow after the update.
   * @throws ShadowVersionConflictError when `expectedVersion` is not the shadow's version.
   * @throws ShadowRejectedError when the shadow service refuses the document (too large, too deep).
   */
  updateDesired(thingName: string, desired: JsonObject, expectedVersion?: number): Promise<ShadowDocument>;
  /** Deletes the classic shadow; succeeds when there is none. */
  delete(thingName: string): Promise<void>;
}

/** Whether a device can have a shadow, hence desired and reported properties: its id is a thing name. */
export const hasShadow = isThingName;

/** The tags of one device's twin, as stored. */
export interface StoredTags {
  readonly tags: JsonObject;
  /** 1 for the first write, +1 per write. */
  readonly version: number;
  /** The device generation the tags belong to; tags of an earlier device with the same id count as none. */
  readonly generationId: string;
  /** ISO-8601 time of the last write. */
  readonly updatedTime: string;
}

/**
 * Where twin tags are kept (the registry table, item `sk = twin` next to the device's). Implemented by
 * `adapters/twin-tags-dynamodb.ts` and, for tests, {@link MemoryTagsStore}.
 */
export interface TagsStore {
  /** The stored tags, or `undefined`. Callers compare `generationId` with the device's. */
  get(deviceId: string): Promise<StoredTags | undefined>;
  /**
   * Writes `next` if the stored item is still `expected` (its version and generation); `expected`
   * `undefined` means "none stored for this generation" (no item, or one of an earlier generation).
   * @throws TagsConflictError when another write came first.
   */
  put(
    deviceId: string,
    next: StoredTags,
    expected: { version: number; generationId: string } | undefined,
  ): Promise<void>;
  /** Removes the tags; succeeds when there are none. */
  delete(deviceId: string): Promise<void>;
}

/** The parts a twin is assembled from. */
export interface TwinParts {
  readonly device: Device;
  /** The device's tags (already checked to belong to its generation), or `undefined`. */
  readonly tags: StoredTags | undefined;
  readonly shadow: ShadowDocument | undefined;
}

/** The versions a twin etag stands for. */
export interface TwinVersions {
  readonly tags: number;
  readonly shadow: number;
}

/**
 * The twin's etag: changes whenever tags or the shadow change. It encodes both versions, so a
 * conditional update can check each store against what the caller saw.
 */
export function twinEtag(versions: TwinVersions): string {
  return Buffer.from(`${versions.tags}.${versions.shadow}`, 'utf8').toString('base64url');
}

/** The versions in a twin etag, or `undefined` when it is not one this hub made. */
export function parseTwinEtag(etag: string): TwinVersions | undefined {
  const text = Buffer.from(etag.replace(/^"|"$/g, ''), 'base64url').toString('utf8');
  const match = /^(\d{1,15})\.(\d{1,15})$/.exec(text);
  if (!match?.[1] || !match[2]) return undefined;
  return { tags: Number(match[1]), shadow: Number(match[2]) };
}

/** The tags of a device's current generation, or `undefined` for tags left by an earlier device. */
export function tagsOfGeneration(device: Device, stored: StoredTags | undefined): StoredTags | undefined {
  return stored !== undefined && stored.generationId === device.generationId ? stored : undefined;
}

/** The versions of the parts. */
export function versionsOf(parts: Pick<TwinParts, 'tags' | 'shadow'>): TwinVersions {
  return { tags: parts.tags?.version ?? 0, shadow: parts.shadow?.version ?? 0 };
}

/** A twin property section (`desired` / `reported`) as IoT Hub returns it. */
export type TwinSection = JsonObject & { $metadata: JsonObject; $version: number };

/** A twin as the service API returns it (IoT Hub's Twin JSON). */
export interface TwinJson {
  readonly deviceId: string;
  readonly etag: string;
  readonly deviceEtag: string;
  readonly version: number;
  readonly status: Device['status'];
  readonly statusReason: string | null;
  readonly statusUpdateTime: string;
  readonly connectionState: Device['connectionState'];
  readonly lastActivityTime: string;
  readonly cloudToDeviceMessageCount: number;
  readonly authenticationType: Device['authentication']['type'];
  readonly x509Thumbprint: Device['authentication']['x509Thumbprint'];
  readonly modelId: string;
  readonly capabilities: { readonly iotEdge: boolean };
  readonly tags: JsonObject;
  readonly properties: { readonly desired: TwinSection; readonly reported: TwinSection };
}

/** A section with IoT Hub's `$metadata` and `$version`, from the shadow's state and metadata. */
function section(
  state: JsonObject | undefined,
  metadata: ShadowMetadata | undefined,
  version: number,
  fallback: string,
): TwinSection {
  return { ...(state ?? {}), $metadata: metadataTree(state ?? {}, metadata, fallback), $version: version };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The latest leaf timestamp (epoch seconds) under a shadow metadata node, or `undefined`. */
function latestTimestamp(metadata: unknown): number | undefined {
  if (Array.isArray(metadata)) {
    return metadata.reduce<number | undefined>((max, m) => {
      const t = latestTimestamp(m);
      return t === undefined ? max : Math.max(max ?? t, t);
    }, undefined);
  }
  if (!isObject(metadata)) return undefined;
  if (typeof metadata.timestamp === 'number') return metadata.timestamp;
  return latestTimestamp(Object.values(metadata));
}

const iso = (epochSeconds: number): string => new Date(epochSeconds * 1000).toISOString();

/**
 * IoT Hub's `$metadata` for a state node: `{ $lastUpdated, <key>: <its metadata>, ... }`, where a
 * leaf (or array) has only `$lastUpdated` and an object's `$lastUpdated` is its latest child's.
 * `fallback` stands in where the shadow kept no timestamp (an empty section).
 */
export function metadataTree(state: JsonValue, metadata: unknown, fallback: string): JsonObject {
  if (!isObject(state)) {
    const t = latestTimestamp(metadata);
    return { $lastUpdated: t === undefined ? fallback : iso(t) };
  }
  const node: JsonObject = {};
  let latest: string | undefined;
  for (const [key, value] of Object.entries(state)) {
    const child = metadataTree(value, isObject(metadata) ? metadata[key] : undefined, fallback);
    node[key] = child;
    const t = child.$lastUpdated as string;
    if (latest === undefined || t > latest) latest = t;
  }
  return { $lastUpdated: latest ?? fallback, ...node };
}

/**
 * The twin of a device, IoT Hub's Twin JSON: the device's identity fields, its tags, and desired and
 * reported properties from its shadow with IoT Hub's `$metadata` (`$lastUpdated` per node) and
 * `$version`. `version` grows with every change of tags or shadow; `etag` see {@link twinEtag}.
 *
 * `$version` of both sections is the shadow's version: the shadow keeps one version for both, where
 * IoT Hub keeps one per section. It still grows with every change of the section, which is what
 * devices and back ends compare it for.
 */
export function toTwinJson(parts: TwinParts): TwinJson {
  const { device, tags, shadow } = parts;
  const versions = versionsOf(parts);
  const lastWrite = device.statusUpdatedTime;
  return {
    deviceId: device.deviceId,
    etag: twinEtag(versions),
    deviceEtag: device.etag,
    version: versions.tags + versions.shadow,
    status: device.status,
    statusReason: device.statusReason,
    statusUpdateTime: device.statusUpdatedTime,
    connectionState: device.connectionState,
    lastActivityTime: device.lastActivityTime,
    cloudToDeviceMessageCount: device.cloudToDeviceMessageCount,
    authenticationType: device.authentication.type,
    x509Thumbprint: device.authentication.x509Thumbprint,
    modelId: '',
    capabilities: { iotEdge: device.capabilities?.iotEdge ?? false },
    tags: tags?.tags ?? {},
    properties: {
      desired: section(shadow?.state.desired, shadow?.metadata?.desired, versions.shadow, lastWrite),
      reported: section(shadow?.state.reported, shadow?.metadata?.reported, versions.shadow, lastWrite),
    },
  };
}

/** What `$twin` conditions and enrichments read: tags and the two property sections, without metadata. */
export interface RoutingTwin {
  readonly tags: JsonObject;
  readonly properties: { readonly desired: JsonObject; readonly reported: JsonObject };
}

/** The part of a twin that routing reads. */
export function toRoutingTwin(parts: Pick<TwinParts, 'tags' | 'shadow'>): RoutingTwin {
  return {
    tags: parts.tags?.tags ?? {},
    properties: { desired: parts.shadow?.state.desired ?? {}, reported: parts.shadow?.state.reported ?? {} },
  };
}
