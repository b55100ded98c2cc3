import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { z } from 'zod';

// The local stand-in for the AWS IoT Device Shadow service: classic and named shadows with AWS's
// documented document semantics (merge, `null` deletes, delta, per-leaf metadata, versions,
// optimistic locking, size and depth limits), its MQTT request/response topics and the data-plane
// REST operations (see `local/data-plane.ts`). Shadows are kept as one JSON file per thing under
// `dataDir/shadows`, written atomically, so they survive a restart or a SIGKILL of the hub.

/** A JSON value, as shadow documents hold it. */
export type JsonValue = null | boolean | number | string | JsonValue[] | JsonObject;
/** A JSON object. */
export interface JsonObject {
  [key: string]: JsonValue;
}

/** `{ timestamp }` (epoch seconds) at each leaf, arrays of them for arrays, objects for objects. */
export type ShadowMetadata = JsonValue;

/** AWS's limit on `desired` + `reported` (their JSON, metadata excluded). */
export const MAX_SHADOW_STATE_BYTES = 8 * 1024;
/**
 * AWS's limit on nesting: levels of keys counted from `desired`/`reported` (level 1), so
 * `desired.one.two.three.four.five` is the deepest path accepted (AWS's quota example).
 */
export const MAX_SHADOW_DEPTH = 6;
/** A longer `clientToken` is refused with `Invalid clientToken`. */
export const MAX_CLIENT_TOKEN_BYTES = 64;
/** After this long a deleted shadow's version is forgotten and a new shadow starts again at 1. */
export const DELETED_VERSION_RETENTION_SECONDS = 48 * 3600;

/** AWS IoT thing names: `[a-zA-Z0-9:_-]+`, 1–128 characters. */
export const THING_NAME_PATTERN = /^[a-zA-Z0-9:_-]{1,128}$/;
/** AWS IoT shadow names: `[a-zA-Z0-9:_-]+`, 1–64 characters. */
export const SHADOW_NAME_PATTERN = /^[a-zA-Z0-9:_-]{1,64}$/;

/** The data-plane exception name of each shadow error code (the `x-amzn-errortype` header). */
export const SHADOW_ERROR_TYPES = {
  400: 'InvalidRequestException',
  404: 'ResourceNotFoundException',
  409: 'ConflictException',
  413: 'RequestEntityTooLargeException',
  415: 'UnsupportedDocumentEncodingException',
  500: 'InternalFailureException',
} as const;

/** An HTTP status the shadow service answers a refused request with. */
export type ShadowErrorCode = keyof typeof SHADOW_ERROR_TYPES;

/**
 * A refused request: AWS's error response document (`code`, `message`, `timestamp`, `clientToken`),
 * published on `.../rejected` for MQTT requests and answered with `code` and `errorType` over REST.
 */
export interface ShadowRejection {
  readonly code: ShadowErrorCode;
  readonly errorType: (typeof SHADOW_ERROR_TYPES)[ShadowErrorCode];
  readonly message: string;
  /** Epoch seconds. */
  readonly timestamp: number;
  readonly clientToken?: string;
}

/** What a shadow operation resolves to: the response document, or why it was refused. */
export type ShadowResult<T> =
  | { readonly ok: true; readonly document: T }
  | { readonly ok: false; readonly rejection: ShadowRejection };

/** The `desired` and `reported` sections (each present only when it has keys). */
export interface ShadowSections {
  desired?: JsonObject;
  reported?: JsonObject;
}

/** `GetThingShadow` and `/get/accepted`: the whole shadow with its delta. */
export interface ShadowGetResponse {
  readonly state: ShadowSections & { delta?: JsonObject };
  readonly metadata: { desired?: ShadowMetadata; reported?: ShadowMetadata };
  readonly version: number;
  readonly timestamp: number;
  readonly clientToken?: string;
}

/** `UpdateThingShadow` and `/update/accepted`: the request's state echoed, with its metadata. */
export interface ShadowUpdateAccepted {
  readonly state: { desired?: JsonObject | null; reported?: JsonObject | null };
  readonly metadata: { desired?: ShadowMetadata; reported?: ShadowMetadata };
  readonly version: number;
  readonly timestamp: number;
  readonly clientToken?: string;
}

/** `DeleteThingShadow` and `/delete/accepted`. */
export interface ShadowDeleteAccepted {
  /** The version the shadow had when it was deleted; the next update creates version + 1. */
  readonly version: number;
  readonly timestamp: number;
  readonly clientToken?: string;
}

/** `ListNamedShadowsForThing`. */
export interface NamedShadowList {
  readonly results: string[];
  readonly nextToken?: string;
  readonly timestamp: number;
}

/** Where the service sends what it publishes (responses, deltas, documents). */
export type ShadowPublisher = (topic: string, payload: Buffer) => Promise<void>;

/** Options of {@link ShadowService}. */
export interface ShadowServiceOptions {
  /** Shadows are kept under `dataDir/shadows`. */
  readonly dataDir: string;
  /**
   * Receives every message the service publishes, in order per thing. Publishing happens after the
   * operation has resolved, so a slow or failing subscriber never holds up or fails an update.
   * @default nothing is published
   */
  readonly publish?: ShadowPublisher;
  /** @default Date.now */
  readonly now?: () => number;
  /** @default writes to stderr */
  readonly log?: (line: string) => void;
}

/** A shadow request topic, taken apart. */
export interface ShadowRequestTopic {
  readonly thingName: string;
  /** Absent for the classic (unnamed) shadow. */
  readonly shadowName?: string;
  readonly operation: 'update' | 'get' | 'delete';
}

const REQUEST_TOPIC = /^\$aws\/things\/([^/]+)\/shadow(?:\/name\/([^/]+))?\/(update|get|delete)$/;

/**
 * The thing, shadow and operation of a shadow request topic (`$aws/things/{thing}/shadow/update`,
 * `.../shadow/name/{shadow}/get`, ...), or undefined for any other topic, responses included.
 */
export function parseShadowRequestTopic(topic: string): ShadowRequestTopic | undefined {
  const m = REQUEST_TOPIC.exec(topic);
  if (!m?.[1] || !m[3]) return undefined;
  const operation = m[3] as ShadowRequestTopic['operation'];
  return { thingName: m[1], ...(m[2] ? { shadowName: m[2] } : {}), operation };
}

/** `$aws/things/{thing}/shadow` or `$aws/things/{thing}/shadow/name/{shadow}`. */
export function shadowTopicPrefix(thingName: string, shadowName?: string): string {
  return shadowName === undefined
    ? `$aws/things/${thingName}/shadow`
    : `$aws/things/${thingName}/shadow/name/${shadowName}`;
}

// ---------------------------------------------------------------------------------------------
// Document semantics (pure)

function isObject(value: JsonValue | undefined): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** An object without a prototype, so a key like `__proto__` is just a key. */
function emptyObject(): JsonObject {
  return Object.create(null) as JsonObject;
}

/** Structural JSON equality (key order ignored). */
export function jsonEqual(a: JsonValue | undefined, b: JsonValue | undefined): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((item, i) => jsonEqual(item, b[i]));
  }
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => k in b && jsonEqual(a[k], b[k]));
  }
  return false;
}

/** A deep copy (also turning every object into a prototype-less one). */
function copy<T extends JsonValue>(value: T): T {
  if (Array.isArray(value)) return value.map((v) => copy(v)) as T;
  if (isObject(value)) {
    const out = emptyObject();
    for (const [k, v] of Object.entries(value)) out[k] = copy(v);
    return out as T;
  }
  return value;
}

/**
 * The metadata of a request section as AWS returns it in `/update/accepted`: `{ timestamp }` at
 * every leaf (a `null` too), an array of per-element metadata for an array, objects for objects.
 */
export function requestMetadata(value: JsonValue, timestamp: number): ShadowMetadata {
  if (Array.isArray(value)) return value.map((v) => requestMetadata(v, timestamp));
  if (isObject(value)) {
    const out = emptyObject();
    for (const [k, v] of Object.entries(value)) out[k] = requestMetadata(v, timestamp);
    return out;
  }
  return { timestamp };
}

/** A patch object with its `null`s removed; undefined when only `null`s made it empty. */
function withoutNulls(patch: JsonObject): JsonObject | undefined {
  const out = emptyObject();
  let droppedNull = false;
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) {
      droppedNull = true;
      continue;
    }
    if (isObject(v)) {
      const child = withoutNulls(v);
      if (child === undefined) droppedNull = true;
      else out[k] = child;
      continue;
    }
    out[k] = copy(v);
  }
  return droppedNull && Object.keys(out).length === 0 ? undefined : out;
}

/**
 * Merges a request section into a stored one, with its metadata, as the shadow service does:
 * objects merge key by key, a `null` removes the key, anything else (scalars, arrays, an object
 * over a non-object) replaces the value. Inputs are not modified.
 */
export function mergeSection(
  state: JsonObject | undefined,
  metadata: JsonObject | undefined,
  patch: JsonObject,
  timestamp: number,
): { state: JsonObject; metadata: JsonObject } {
  const outState = copy(state ?? emptyObject());
  const outMeta = copy(metadata ?? emptyObject());
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) {
      delete outState[k];
      delete outMeta[k];
      continue;
    }
    const current = outState[k];
    if (isObject(v) && isObject(current)) {
      const currentMeta = outMeta[k];
      const merged = mergeSection(current, isObject(currentMeta) ? currentMeta : undefined, v, timestamp);
      outState[k] = merged.state;
      outMeta[k] = merged.metadata;
      continue;
    }
    if (isObject(v)) {
      // A new object: its nulls mean nothing, and one made only of nulls adds nothing.
      const fresh = withoutNulls(v);
      if (fresh === undefined) {
        delete outState[k];
        delete outMeta[k];
      } else {
        outState[k] = fresh;
        outMeta[k] = requestMetadata(fresh, timestamp);
      }
      continue;
    }
    outState[k] = copy(v);
    outMeta[k] = requestMetadata(v, timestamp);
  }
  return { state: outState, metadata: outMeta };
}

/**
 * The delta: every `desired` key whose value differs from `reported`'s, recursing into objects on
 * both sides (so only the differing leaves of a nested object appear); arrays compare whole.
 * Undefined when nothing differs.
 */
export function computeDelta(
  desired: JsonObject | undefined,
  reported: JsonObject | undefined,
): JsonObject | undefined {
  if (!desired) return undefined;
  const out = emptyObject();
  for (const [k, d] of Object.entries(desired)) {
    const r = reported?.[k];
    if (isObject(d) && isObject(r)) {
      const sub = computeDelta(d, r);
      if (sub) out[k] = sub;
    } else if (!jsonEqual(d, r)) {
      out[k] = copy(d);
    }
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

/** The metadata of a delta: `desired`'s metadata for exactly the delta's keys. */
export function deltaMetadata(delta: JsonValue, desiredMetadata: ShadowMetadata | undefined): ShadowMetadata {
  if (isObject(delta) && isObject(desiredMetadata) && !isLeafMetadata(desiredMetadata)) {
    const out = emptyObject();
    for (const [k, v] of Object.entries(delta)) out[k] = deltaMetadata(v, desiredMetadata[k]);
    return out;
  }
  return copy(desiredMetadata ?? null);
}

function isLeafMetadata(meta: JsonObject): boolean {
  const keys = Object.keys(meta);
  return keys.length === 1 && keys[0] === 'timestamp' && typeof meta.timestamp === 'number';
}

/** Levels of keys below a value: 0 for a scalar or an empty container. */
function depthBelow(value: JsonValue): number {
  const children = Array.isArray(value) ? value : isObject(value) ? Object.values(value) : [];
  let deepest = 0;
  for (const child of children) deepest = Math.max(deepest, 1 + depthBelow(child));
  return deepest;
}

/** The path of the first `null` inside an array (AWS refuses those), or undefined. */
function nullInArray(value: JsonValue, at: string, inArray = false): string | undefined {
  if (value === null) return inArray ? at : undefined;
  if (Array.isArray(value)) {
    for (const [i, v] of value.entries()) {
      const found = nullInArray(v, `${at}[${i}]`, true);
      if (found) return found;
    }
  } else if (isObject(value)) {
    for (const [k, v] of Object.entries(value)) {
      const found = nullInArray(v, `${at}.${k}`);
      if (found) return found;
    }
  }
  return undefined;
}

/** Bytes of `desired` plus bytes of `reported` as JSON: what AWS holds against the 8 KB limit. */
export function shadowStateBytes(sections: ShadowSections): number {
  const size = (v: JsonObject | undefined) => (v ? Buffer.byteLength(JSON.stringify(v), 'utf8') : 0);
  return size(sections.desired) + size(sections.reported);
}

/** A validated update request. `desired`/`reported`: undefined = not in the request, null = clear it. */
export interface ShadowUpdateRequest {
  readonly desired?: JsonObject | null;
  readonly reported?: JsonObject | null;
  readonly version?: number;
  readonly clientToken?: string;
}

type Parsed<T> =
  | { ok: true; value: T }
  | { ok: false; code: 400 | 415; message: string; clientToken?: string };

/** Whether `value` is a JSON value (what `JSON.parse` yields; no `undefined`, functions, NaN, cycles). */
export function isJsonValue(value: unknown, seen: Set<object> = new Set()): value is JsonValue {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return true;
  if (typeof value === 'number') return Number.isFinite(value);
  if (typeof value !== 'object' || seen.has(value)) return false;
  seen.add(value);
  const ok = Array.isArray(value)
    ? value.every((v) => isJsonValue(v, seen))
    : Object.values(value).every((v) => isJsonValue(v, seen));
  seen.delete(value);
  return ok;
}

/** Decodes bytes as UTF-8 JSON: 415 for bytes that are not UTF-8, 400 for text that is not JSON. */
function parseJson(body: Uint8Array | string): Parsed<JsonValue> {
  let text: string;
  if (typeof body === 'string') text = body;
  else {
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(body);
    } catch {
      return {
        ok: false,
        code: 415,
        message: 'Unsupported documented encoding; supported encoding is UTF-8',
      };
    }
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, code: 400, message: 'Invalid JSON' };
  }
  return isJsonValue(value) ? { ok: true, value } : { ok: false, code: 400, message: 'Invalid JSON' };
}

/** The client token of a request, if it has a valid one (for echoing on responses). */
function clientTokenOf(value: JsonValue): string | undefined {
  if (!isObject(value)) return undefined;
  const token = value.clientToken;
  return typeof token === 'string' && Buffer.byteLength(token, 'utf8') <= MAX_CLIENT_TOKEN_BYTES
    ? token
    : undefined;
}

/**
 * Checks an update request against the shadow service's rules, with its messages: `Invalid JSON`,
 * `Missing required node: state`, `State node must be an object`, `Desired node must be an object`,
 * `Reported node must be an object`, `State contains an invalid node`, `Invalid version`,
 * `Invalid clientToken`, `JSON contains too many levels of nesting; maximum is 6`. Fields other than
 * `state`, `version` and `clientToken` are ignored, as AWS ignores them.
 */
export function parseUpdateRequest(body: unknown): Parsed<ShadowUpdateRequest> {
  let value: JsonValue;
  if (typeof body === 'string' || body instanceof Uint8Array) {
    const parsed = parseJson(body);
    if (!parsed.ok) return parsed;
    value = parsed.value;
  } else if (isJsonValue(body)) {
    value = body;
  } else {
    return { ok: false, code: 400, message: 'Invalid JSON' };
  }
  if (!isObject(value)) return { ok: false, code: 400, message: 'Invalid JSON' };
  const token = value.clientToken;
  if (
    token !== undefined &&
    (typeof token !== 'string' || Buffer.byteLength(token, 'utf8') > MAX_CLIENT_TOKEN_BYTES)
  ) {
    return { ok: false, code: 400, message: 'Invalid clientToken' };
  }
  const clientToken = typeof token === 'string' ? token : undefined;
  const fail = (message: string): Parsed<ShadowUpdateRequest> => ({
    ok: false,
    code: 400,
    message,
    ...(clientToken !== undefined ? { clientToken } : {}),
  });
  const version = value.version;
  if (
    version !== undefined &&
    !(typeof version === 'number' && Number.isSafeInteger(version) && version >= 0)
  ) {
    return fail('Invalid version');
  }
  if (!('state' in value)) return fail('Missing required node: state');
  const state = value.state;
  if (!isObject(state)) return fail('State node must be an object');
  for (const key of Object.keys(state)) {
    if (key !== 'desired' && key !== 'reported') return fail('State contains an invalid node');
  }
  const sections: { desired?: JsonObject | null; reported?: JsonObject | null } = {};
  for (const key of ['desired', 'reported'] as const) {
    if (!(key in state)) continue;
    const section = state[key];
    if (section === null) {
      sections[key] = null;
      continue;
    }
    if (!isObject(section)) {
      return fail(key === 'desired' ? 'Desired node must be an object' : 'Reported node must be an object');
    }
    if (1 + depthBelow(section) > MAX_SHADOW_DEPTH) {
      return fail(`JSON contains too many levels of nesting; maximum is ${MAX_SHADOW_DEPTH}`);
    }
    const badNull = nullInArray(section, `state.${key}`);
    if (badNull) return fail(`Invalid JSON: arrays can't contain null values (${badNull})`);
    sections[key] = section;
  }
  return {
    ok: true,
    value: {
      ...sections,
      ...(typeof version === 'number' ? { version } : {}),
      ...(clientToken !== undefined ? { clientToken } : {}),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Storage

/** The metadata kept for the two sections. */
interface SectionsMetadata {
  desired?: JsonObject;
  reported?: JsonObject;
}

/** One shadow as stored: live (with state) or deleted (only its last version, kept for 48 hours). */
interface StoredShadow {
  readonly version: number;
  readonly state?: ShadowSections;
  readonly metadata?: SectionsMetadata;
  /** Epoch seconds of the delete; set only on a deleted shadow. */
  readonly deletedAt?: number;
}

/** Everything kept for one thing: its classic shadow and its named shadows. */
interface ThingShadows {
  readonly classic?: StoredShadow;
  readonly named: ReadonlyMap<string, StoredShadow>;
}

// The sections are checked with a guard rather than rebuilt by a schema, so that keys such as
// `__proto__` survive a restart as they are.
const jsonObject = z.custom<JsonObject>((v) => isJsonValue(v) && isObject(v), 'expected a JSON object');
const sectionsSchema = z.object({ desired: jsonObject.optional(), reported: jsonObject.optional() });
const storedShadowSchema = z.object({
  version: z.number().int().nonnegative(),
  state: sectionsSchema.optional(),
  metadata: sectionsSchema.optional(),
  deletedAt: z.number().optional(),
});
const thingFileSchema = z.object({
  thingName: z.string(),
  classic: storedShadowSchema.optional(),
  named: z.array(storedShadowSchema.extend({ name: z.string() })),
});

const SHADOWS_DIR = 'shadows';

/** The file of a thing: its name percent-encoded, so `:` never reaches the file system. */
function fileNameOf(thingName: string): string {
  return `${encodeURIComponent(thingName).replace(/:/g, '%3A')}.json`;
}

/** A message the service publishes. */
interface Outgoing {
  readonly topic: string;
  readonly payload: object;
}

/**
 * The Device Shadow service of the local hub. One instance serves both transports: the data-plane
 * REST operations call {@link ShadowService.get}, {@link ShadowService.update},
 * {@link ShadowService.delete} and {@link ShadowService.listNamedShadows}; MQTT requests go through
 * {@link ShadowService.handleMqtt}. Operations on one thing are serialized; what they publish goes
 * out afterwards, in order per thing.
 *
 * @example
 * const shadows = new ShadowService({ dataDir, publish: (topic, payload) => broker.publish(topic, payload, 1) });
 * const result = await shadows.update('dev-1', '{"state":{"desired":{"fan":"on"}}}');
 * if (!result.ok) console.log(result.rejection.code, result.rejection.message);
 */
export class ShadowService {
  private readonly dir: string;
  private readonly publisher: ShadowPublisher | undefined;
  private readonly now: () => number;
  private readonly log: (line: string) => void;
  private readonly things = new Map<string, ThingShadows>();
  /** Per thing: the tail of its operations (state changes and file writes). */
  private readonly locks = new Map<string, Promise<unknown>>();
  /** Per thing: the tail of its publishes. */
  private readonly outboxes = new Map<string, Promise<void>>();

  /** @throws Error when a stored shadow file cannot be read (the hub must not start without its shadows). */
  constructor(options: ShadowServiceOptions) {
    this.dir = path.join(options.dataDir, SHADOWS_DIR);
    mkdirSync(this.dir, { recursive: true });
    this.publisher = options.publish;
    this.now = options.now ?? Date.now;
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
    this.load();
  }

  /** The shadow with its delta (`GetThingShadow`, `/get`), or 404 when it does not exist. */
  async get(
    thingName: string,
    shadowName?: string,
    options: { clientToken?: string } = {},
  ): Promise<ShadowResult<ShadowGetResponse>> {
    const invalid = this.checkNames(thingName, shadowName, options.clientToken);
    if (invalid) return invalid;
    return this.serialize(thingName, async () => {
      const timestamp = this.seconds();
      const shadow = this.live(thingName, shadowName);
      if (!shadow) return this.notFound(thingName, shadowName, timestamp, options.clientToken);
      const state = copySections(shadow.state);
      const delta = computeDelta(state.desired, state.reported);
      const document: ShadowGetResponse = {
        state: { ...state, ...(delta ? { delta } : {}) },
        metadata: copySections(shadow.metadata),
        version: shadow.version,
        timestamp,
        ...tokenField(options.clientToken),
      };
      return { ok: true, document };
    });
  }

  /**
   * Applies an update request (`UpdateThingShadow`, `/update`): the raw body (bytes or text), or a
   * request document already parsed. Creates the shadow if needed. Publishes `/update/accepted`,
   * `/update/delta` (when the request has `desired` and desired and reported then differ, with the
   * whole delta) and `/update/documents`.
   */
  async update(
    thingName: string,
    body: Uint8Array | string | object,
    shadowName?: string,
  ): Promise<ShadowResult<ShadowUpdateAccepted>> {
    const parsed = parseUpdateRequest(body);
    if (!parsed.ok) return this.reject(parsed.code, parsed.message, this.seconds(), parsed.clientToken);
    const request = parsed.value;
    const invalid = this.checkNames(thingName, shadowName, request.clientToken);
    if (invalid) return invalid;
    return this.serialize(thingName, async () => {
      const timestamp = this.seconds();
      const before = this.live(thingName, shadowName);
      const lastVersion = before?.version ?? this.deletedVersion(thingName, shadowName, timestamp) ?? 0;
      if (request.version !== undefined && request.version !== lastVersion) {
        return this.reject(409, 'Version conflict', timestamp, request.clientToken);
      }
      // Shallow copies: mergeSection never modifies what it is given.
      const sections: ShadowSections = { ...before?.state };
      const metadata: SectionsMetadata = { ...before?.metadata };
      const acceptedMetadata: ShadowUpdateAccepted['metadata'] = {};
      for (const key of ['desired', 'reported'] as const) {
        const patch = request[key];
        if (patch === undefined) continue;
        if (patch === null) {
          delete sections[key];
          delete metadata[key];
          acceptedMetadata[key] = { timestamp };
          continue;
        }
        const merged = mergeSection(sections[key], metadata[key], patch, timestamp);
        if (Object.keys(merged.state).length > 0) {
          sections[key] = merged.state;
          metadata[key] = merged.metadata;
        } else {
          delete sections[key];
          delete metadata[key];
        }
        acceptedMetadata[key] = requestMetadata(patch, timestamp);
      }
      if (shadowStateBytes(sections) > MAX_SHADOW_STATE_BYTES) {
        return this.reject(
          413,
          'The payload exceeds the maximum size allowed',
          timestamp,
          request.clientToken,
        );
      }
      const after: StoredShadow = { version: lastVersion + 1, state: sections, metadata };
      const failed = await this.store(thingName, shadowName, after, timestamp, request.clientToken);
      if (failed) return failed;

      const prefix = shadowTopicPrefix(thingName, shadowName);
      const token = tokenField(request.clientToken);
      const accepted: ShadowUpdateAccepted = {
        state: {
          ...(request.desired !== undefined ? { desired: copy(request.desired) } : {}),
          ...(request.reported !== undefined ? { reported: copy(request.reported) } : {}),
        },
        metadata: acceptedMetadata,
        version: after.version,
        timestamp,
        ...token,
      };
      const out: Outgoing[] = [{ topic: `${prefix}/update/accepted`, payload: accepted }];
      const delta = computeDelta(sections.desired, sections.reported);
      if (delta && request.desired) {
        const deltaDocument = {
          version: after.version,
          timestamp,
          state: delta,
          metadata: deltaMetadata(delta, metadata.desired),
          ...token,
        };
        out.push({ topic: `${prefix}/update/delta`, payload: deltaDocument });
      }
      const documents = {
        ...(before ? { previous: documentsView(before) } : {}),
        current: documentsView(after),
        timestamp,
        ...token,
      };
      out.push({ topic: `${prefix}/update/documents`, payload: documents });
      this.enqueue(thingName, out);
      return { ok: true, document: accepted };
    });
  }

  /**
   * Deletes a shadow (`DeleteThingShadow`, `/delete`), or 404 when there is none. Its version is
   * remembered for 48 hours, so a shadow created again continues from it, as on AWS. Publishes
   * `/delete/accepted`.
   */
  async delete(
    thingName: string,
    shadowName?: string,
    options: { clientToken?: string } = {},
  ): Promise<ShadowResult<ShadowDeleteAccepted>> {
    const invalid = this.checkNames(thingName, shadowName, options.clientToken);
    if (invalid) return invalid;
    return this.serialize(thingName, async () => {
      const timestamp = this.seconds();
      const shadow = this.live(thingName, shadowName);
      if (!shadow) return this.notFound(thingName, shadowName, timestamp, options.clientToken);
      const tombstone: StoredShadow = { version: shadow.version, deletedAt: timestamp };
      const failed = await this.store(thingName, shadowName, tombstone, timestamp, options.clientToken);
      if (failed) return failed;
      const document: ShadowDeleteAccepted = {
        version: shadow.version,
        timestamp,
        ...tokenField(options.clientToken),
      };
      const topic = `${shadowTopicPrefix(thingName, shadowName)}/delete/accepted`;
      this.enqueue(thingName, [{ topic, payload: document }]);
      return { ok: true, document };
    });
  }

  /**
   * The names of a thing's named shadows (`ListNamedShadowsForThing`), sorted; with `pageSize`, one
   * page at a time (`nextToken` continues).
   */
  async listNamedShadows(
    thingName: string,
    options: { nextToken?: string; pageSize?: number } = {},
  ): Promise<ShadowResult<NamedShadowList>> {
    const invalid = this.checkNames(thingName, undefined, undefined);
    if (invalid) return invalid;
    const timestamp = this.seconds();
    const start = options.nextToken === undefined ? 0 : Number(options.nextToken);
    if (!Number.isSafeInteger(start) || start < 0) {
      return this.reject(400, `nextToken '${options.nextToken}' is not one this service returned`, timestamp);
    }
    const { pageSize } = options;
    if (pageSize !== undefined && !(Number.isSafeInteger(pageSize) && pageSize > 0)) {
      return this.reject(400, `pageSize ${pageSize} is not a positive integer`, timestamp);
    }
    return this.serialize(thingName, async () => {
      const named = this.things.get(thingName)?.named ?? new Map<string, StoredShadow>();
      const names = [...named.entries()]
        .filter(([, shadow]) => shadow.deletedAt === undefined)
        .map(([name]) => name)
        .sort();
      const end = pageSize === undefined ? names.length : start + pageSize;
      const results = names.slice(start, end);
      const nextToken = end < names.length ? { nextToken: String(end) } : {};
      return { ok: true, document: { results, ...nextToken, timestamp } };
    });
  }

  /**
   * Handles a publish to a shadow request topic (`$aws/things/{thing}/shadow[/name/{shadow}]/update`,
   * `/get`, `/delete`) as the shadow service does for MQTT: the outcome is published on the
   * matching `/accepted` or `/rejected` topic. Resolves to false, doing nothing, for any other topic.
   * Callers (the hub's front doors) have already authorized the publisher for the topic.
   */
  async handleMqtt(topic: string, payload: Uint8Array): Promise<boolean> {
    const request = parseShadowRequestTopic(topic);
    if (!request) return false;
    const { thingName, shadowName, operation } = request;
    const prefix = shadowTopicPrefix(thingName, shadowName);
    let outcome: ShadowResult<object>;
    if (operation === 'update') {
      outcome = await this.update(thingName, payload, shadowName);
    } else {
      // The body of get and delete is ignored, except for a client token to echo.
      const parsed = payload.length > 0 ? parseJson(payload) : undefined;
      const clientToken = parsed?.ok ? clientTokenOf(parsed.value) : undefined;
      const options = clientToken !== undefined ? { clientToken } : {};
      outcome =
        operation === 'get'
          ? await this.get(thingName, shadowName, options)
          : await this.delete(thingName, shadowName, options);
      // Update and delete publish their own accepted messages; get has only this caller.
      if (outcome.ok && operation === 'get') {
        this.enqueue(thingName, [{ topic: `${prefix}/get/accepted`, payload: outcome.document }]);
      }
    }
    if (!outcome.ok) {
      const { code, message } = outcome.rejection;
      const which = shadowName === undefined ? '' : ` (shadow '${shadowName}')`;
      this.log(`shadow ${operation} of '${thingName}'${which} rejected: ${code} ${message}`);
      const rejected = {
        topic: `${prefix}/${operation}/rejected`,
        payload: errorDocument(outcome.rejection),
      };
      this.enqueue(thingName, [rejected]);
    }
    return true;
  }

  /** Resolves once every operation so far has finished and its messages were handed to the publisher. */
  async idle(): Promise<void> {
    for (;;) {
      const pending = [...this.locks.values(), ...this.outboxes.values()];
      if (pending.length === 0) return;
      await Promise.allSettled(pending);
    }
  }

  // -------------------------------------------------------------------------------------------

  private seconds(): number {
    return Math.floor(this.now() / 1000);
  }

  private reject<T>(
    code: ShadowErrorCode,
    message: string,
    timestamp: number,
    clientToken?: string,
  ): ShadowResult<T> {
    const rejection = {
      code,
      errorType: SHADOW_ERROR_TYPES[code],
      message,
      timestamp,
      ...tokenField(clientToken),
    };
    return { ok: false, rejection };
  }

  private notFound<T>(
    thingName: string,
    shadowName: string | undefined,
    timestamp: number,
    clientToken?: string,
  ): ShadowResult<T> {
    return this.reject(
      404,
      `No shadow exists with name: '${shadowName ?? thingName}'`,
      timestamp,
      clientToken,
    );
  }

  /** 400 for a thing or shadow name AWS would refuse, naming the field. */
  private checkNames(
    thingName: string,
    shadowName: string | undefined,
    clientToken: string | undefined,
  ): ShadowResult<never> | undefined {
    if (!THING_NAME_PATTERN.test(thingName)) {
      const message = `thingName '${thingName}' is not a thing name: use 1-128 of [a-zA-Z0-9:_-]`;
      return this.reject(400, message, this.seconds(), clientToken);
    }
    if (shadowName !== undefined && !SHADOW_NAME_PATTERN.test(shadowName)) {
      const message = `shadowName '${shadowName}' is not a shadow name: use 1-64 of [a-zA-Z0-9:_-]`;
      return this.reject(400, message, this.seconds(), clientToken);
    }
    return undefined;
  }

  /** Runs `work` after every earlier operation on the same thing has finished. */
  private serialize<T>(thingName: string, work: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(thingName) ?? Promise.resolve();
    const next = previous.then(work);
    const tail = next.catch(() => undefined);
    this.locks.set(thingName, tail);
    void tail.then(() => {
      if (this.locks.get(thingName) === tail) this.locks.delete(thingName);
    });
    return next;
  }

  /** Hands messages to the publisher after the thing's earlier ones; a failure is logged, never thrown. */
  private enqueue(thingName: string, messages: readonly Outgoing[]): void {
    const publish = this.publisher;
    if (!publish) return;
    const previous = this.outboxes.get(thingName) ?? Promise.resolve();
    const tail = previous.then(async () => {
      for (const m of messages) {
        try {
          await publish(m.topic, Buffer.from(JSON.stringify(m.payload)));
        } catch (error) {
          this.log(`shadow: publishing to '${m.topic}' failed: ${String(error)}`);
        }
      }
    });
    this.outboxes.set(thingName, tail);
    void tail.then(() => {
      if (this.outboxes.get(thingName) === tail) this.outboxes.delete(thingName);
    });
  }

  private stored(thingName: string, shadowName: string | undefined): StoredShadow | undefined {
    const thing = this.things.get(thingName);
    return shadowName === undefined ? thing?.classic : thing?.named.get(shadowName);
  }

  /** The shadow if it exists (is not deleted). */
  private live(thingName: string, shadowName: string | undefined): StoredShadow | undefined {
    const shadow = this.stored(thingName, shadowName);
    return shadow?.deletedAt === undefined ? shadow : undefined;
  }

  /** The version of a shadow deleted in the last 48 hours, which a new shadow continues from. */
  private deletedVersion(thingName: string, shadowName: string | undefined, now: number): number | undefined {
    const shadow = this.stored(thingName, shadowName);
    if (shadow?.deletedAt === undefined) return undefined;
    return now - shadow.deletedAt <= DELETED_VERSION_RETENTION_SECONDS ? shadow.version : undefined;
  }

  /**
   * Writes the thing's file with `shadow` in place (temp file + rename), then updates memory; a
   * failed write changes nothing and answers 500.
   */
  private async store(
    thingName: string,
    shadowName: string | undefined,
    shadow: StoredShadow,
    timestamp: number,
    clientToken: string | undefined,
  ): Promise<ShadowResult<never> | undefined> {
    const current: ThingShadows = this.things.get(thingName) ?? { named: new Map() };
    const next: ThingShadows =
      shadowName === undefined
        ? { ...current, classic: shadow }
        : { ...current, named: new Map(current.named).set(shadowName, shadow) };
    const file = path.join(this.dir, fileNameOf(thingName));
    const temp = `${file}.${process.pid}.tmp`;
    const content: z.input<typeof thingFileSchema> = {
      thingName,
      ...(next.classic ? { classic: next.classic } : {}),
      named: [...next.named.entries()].map(([name, s]) => ({ name, ...s })),
    };
    try {
      await writeFile(temp, JSON.stringify(content));
      await rename(temp, file);
    } catch (error) {
      this.log(`shadow: cannot write ${file}: ${String(error)}`);
      return this.reject(500, 'Internal service failure', timestamp, clientToken);
    }
    this.things.set(thingName, next);
    return undefined;
  }

  /** Reads every thing's file. */
  private load(): void {
    for (const entry of readdirSync(this.dir)) {
      if (!entry.endsWith('.json')) continue;
      const file = path.join(this.dir, entry);
      let parsed: z.output<typeof thingFileSchema>;
      try {
        parsed = thingFileSchema.parse(JSON.parse(readFileSync(file, 'utf8')));
      } catch (error) {
        throw new Error(`shadow: cannot read ${file}: ${String(error)}`, { cause: error });
      }
      const named = new Map(parsed.named.map(({ name, ...shadow }) => [name, shadow] as const));
      this.things.set(parsed.thingName, { ...(parsed.classic ? { classic: parsed.classic } : {}), named });
    }
  }
}

function tokenField(clientToken: string | undefined): { clientToken?: string } {
  return clientToken === undefined ? {} : { clientToken };
}

/** A deep copy of stored sections, for a caller that may modify what it gets. */
function copySections(sections: { desired?: JsonObject; reported?: JsonObject } | undefined): {
  desired?: JsonObject;
  reported?: JsonObject;
} {
  return {
    ...(sections?.desired ? { desired: copy(sections.desired) } : {}),
    ...(sections?.reported ? { reported: copy(sections.reported) } : {}),
  };
}

/** A shadow as `/update/documents` shows it: state (no delta), metadata, version. */
function documentsView(shadow: StoredShadow): object {
  return {
    state: copySections(shadow.state),
    metadata: copySections(shadow.metadata),
    version: shadow.version,
  };
}

/** AWS's error response document, as published on `.../rejected`. */
export function errorDocument(rejection: ShadowRejection): JsonObject {
  return {
    code: rejection.code,
    message: rejection.message,
    timestamp: rejection.timestamp,
    ...tokenField(rejection.clientToken),
  };
}
