import { type QueryValue, toQueryValue } from './values.ts';

/**
 * What a route condition is evaluated against: one device-to-cloud message and, when the route
 * needs it, the sending device's (or module's) twin.
 *
 * @example
 * const message: RoutingMessage = {
 *   systemProperties: { 'content-type': 'application/json', 'content-encoding': 'utf-8',
 *     'iothub-connection-device-id': 'dev-1' },
 *   properties: { processingPath: 'hot' },
 *   body: new TextEncoder().encode('{"Weather":{"Temperature":50}}'),
 * };
 */
export interface RoutingMessage {
  /**
   * System properties keyed by their IoT Hub names (`content-type`, `content-encoding`,
   * `iothub-connection-device-id`, `message-id`, `iothub-enqueuedtime`, ...). Keys are matched
   * ignoring case.
   */
  readonly systemProperties: Readonly<Record<string, string | undefined>>;
  /** Application properties; names are matched ignoring case, values are always strings. */
  readonly properties: Readonly<Record<string, string>>;
  /** Raw body bytes; queried as JSON only with a JSON content type and a UTF-8/16/32 encoding. */
  readonly body: Uint8Array;
  /** The twin, if the router loaded it; without it every `$twin` reference is undefined. */
  readonly twin?: {
    tags?: Record<string, unknown>;
    properties?: { desired?: Record<string, unknown>; reported?: Record<string, unknown> };
  };
}

/** Finds a string property by name, exact match first, then ignoring case. */
export function lookupString(
  record: Readonly<Record<string, string | undefined>>,
  name: string,
): string | undefined {
  if (Object.hasOwn(record, name)) {
    const value = record[name];
    if (typeof value === 'string') return value;
  }
  const lower = name.toLowerCase();
  for (const key of Object.keys(record)) {
    if (key.toLowerCase() === lower) {
      const value = record[key];
      if (typeof value === 'string') return value;
    }
  }
  return undefined;
}

/**
 * Query names (lower case, without `$`) of system properties whose IoT Hub wire name differs.
 * Any other `$name` is looked up under `name` itself, so `$iothub-connection-device-id` and
 * `$content-type` work as well.
 */
const SYSTEM_PROPERTY_ALIASES: Readonly<Record<string, string>> = {
  contenttype: 'content-type',
  contentencoding: 'content-encoding',
  connectiondeviceid: 'iothub-connection-device-id',
  connectionmoduleid: 'iothub-connection-module-id',
  connectionauthmethod: 'iothub-connection-auth-method',
  connectiondevicegenerationid: 'iothub-connection-auth-generation-id',
  messageid: 'message-id',
  correlationid: 'correlation-id',
  userid: 'user-id',
  enqueuedtime: 'iothub-enqueuedtime',
  messagesource: 'iothub-message-source',
  expirytimeutc: 'absolute-expiry-time',
  interfacename: 'iothub-interface-name',
};

/** The record keys to try, in order, for a `$name` system property reference. */
export function systemPropertyKeys(name: string): readonly string[] {
  const lower = name.toLowerCase();
  const alias = Object.hasOwn(SYSTEM_PROPERTY_ALIASES, lower) ? SYSTEM_PROPERTY_ALIASES[lower] : undefined;
  return alias === undefined ? [lower] : [alias, lower];
}

/**
 * Resolves `$name`: the system property first; failing that, an application property literally
 * named `$name`, as IoT Hub documents.
 */
export function readSystemProperty(
  message: RoutingMessage,
  keys: readonly string[],
  raw: string,
): QueryValue {
  for (const key of keys) {
    const value = lookupString(message.systemProperties, key);
    if (value !== undefined) return value;
  }
  return lookupString(message.properties, raw);
}

/** Stands for "the body cannot be queried" (not JSON, unsupported encoding, malformed). */
const NO_BODY: unique symbol = Symbol('no queryable body');

interface BodyCacheEntry {
  readonly contentType: string | undefined;
  readonly contentEncoding: string | undefined;
  readonly byteLength: number;
  readonly value: QueryValue | typeof NO_BODY;
}

/**
 * Parsed bodies, keyed by the body's byte array: every route evaluated against the same message
 * shares one decode and one JSON.parse, and the entry goes away with the message.
 */
const bodyCache = new WeakMap<Uint8Array, BodyCacheEntry>();

function isJsonContentType(contentType: string | undefined): boolean {
  if (contentType === undefined) return false;
  const mediaType = contentType.split(';', 1)[0] ?? '';
  return mediaType.trim().toLowerCase() === 'application/json';
}

type Utf = 'utf-8' | 'utf-16' | 'utf-16le' | 'utf-16be' | 'utf-32' | 'utf-32le' | 'utf-32be';
const ENCODINGS: ReadonlySet<string> = new Set([
  'utf-8',
  'utf-16',
  'utf-16le',
  'utf-16be',
  'utf-32',
  'utf-32le',
  'utf-32be',
]);

function toUtf(contentEncoding: string | undefined): Utf | undefined {
  const e = contentEncoding?.trim().toLowerCase();
  return e !== undefined && ENCODINGS.has(e) ? (e as Utf) : undefined;
}

function decodeUtf16(bytes: Uint8Array, bigEndian: boolean): string {
  if (bytes.length % 2 !== 0) throw new RangeError('odd UTF-16 length');
  let source = bytes;
  if (bigEndian) {
    source = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i += 2) {
      source[i] = bytes[i + 1] as number;
      source[i + 1] = bytes[i] as number;
    }
  }
  return new TextDecoder('utf-16le', { fatal: true }).decode(source);
}

function decodeUtf32(bytes: Uint8Array, bigEndian: boolean): string {
  if (bytes.length % 4 !== 0) throw new RangeError('UTF-32 length is not a multiple of 4');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const parts: string[] = [];
  const codePoints: number[] = [];
  for (let i = 0; i < bytes.length; i += 4) {
    const cp = view.getUint32(i, !bigEndian);
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) throw new RangeError('invalid UTF-32 code point');
    if (i === 0 && cp === 0xfeff) continue;
    codePoints.push(cp);
    if (codePoints.length === 4096) {
      parts.push(String.fromCodePoint(...codePoints));
      codePoints.length = 0;
    }
  }
  parts.push(String.fromCodePoint(...codePoints));
  return parts.join('');
}

/**
 * Decodes text in a UTF encoding. Without a byte order mark UTF-16 and UTF-32 are read
 * little-endian, as .NET's `Encoding.Unicode` / `Encoding.UTF32` (what IoT Hub devices built on
 * the C# SDK send); a BOM overrides that.
 */
function decodeText(bytes: Uint8Array, encoding: Utf): string {
  switch (encoding) {
    case 'utf-8':
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    case 'utf-16le':
      return decodeUtf16(bytes, false);
    case 'utf-16be':
      return decodeUtf16(bytes, true);
    case 'utf-16':
      return decodeUtf16(bytes, bytes[0] === 0xfe && bytes[1] === 0xff);
    case 'utf-32le':
      return decodeUtf32(bytes, false);
    case 'utf-32be':
      return decodeUtf32(bytes, true);
    case 'utf-32':
      return decodeUtf32(bytes, bytes[0] === 0 && bytes[1] === 0 && bytes[2] === 0xfe && bytes[3] === 0xff);
  }
}

function parseBody(bytes: Uint8Array, contentType: string | undefined, contentEncoding: string | undefined) {
  if (!isJsonContentType(contentType)) return NO_BODY;
  const encoding = toUtf(contentEncoding);
  if (encoding === undefined) return NO_BODY;
  try {
    const text = decodeText(bytes, encoding);
    return toQueryValue(JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text));
  } catch {
    return NO_BODY;
  }
}

const CONTENT_TYPE_KEYS = systemPropertyKeys('contentType');
const CONTENT_ENCODING_KEYS = systemPropertyKeys('contentEncoding');

function firstString(record: Readonly<Record<string, string | undefined>>, keys: readonly string[]) {
  for (const key of keys) {
    const value = lookupString(record, key);
    if (value !== undefined) return value;
  }
  return undefined;
}

/**
 * The message body as a JSON value, or `undefined` when the body may not be queried: the content
 * type is not `application/json` (parameters allowed), the encoding is not UTF-8/16/32, or the
 * bytes are not valid text or JSON. Decoded at most once per body.
 */
export function readBody(message: RoutingMessage): QueryValue {
  const contentType = firstString(message.systemProperties, CONTENT_TYPE_KEYS);
  const contentEncoding = firstString(message.systemProperties, CONTENT_ENCODING_KEYS);
  const cached = bodyCache.get(message.body);
  if (
    cached !== undefined &&
    cached.contentType === contentType &&
    cached.contentEncoding === contentEncoding &&
    cached.byteLength === message.body.byteLength
  ) {
    return cached.value === NO_BODY ? undefined : cached.value;
  }
  const value = parseBody(message.body, contentType, contentEncoding);
  bodyCache.set(message.body, { contentType, contentEncoding, byteLength: message.body.byteLength, value });
  return value === NO_BODY ? undefined : value;
}
