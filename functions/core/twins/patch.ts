import { LimitExceededError, ValidationError } from '../errors.ts';
import type { JsonObject, JsonValue } from './twin.ts';

/**
 * Twin documents as callers send them, checked against IoT Hub's rules for tags and properties:
 * keys up to 1 KB (UTF-8) of any characters but control characters, `.`, `$` and space; values JSON
 * (strings up to 4 KB); at most 10 levels of objects; tags up to 8 KB. The shadow adds its own limits
 * to desired properties (8 KB of desired and reported state, its nesting depth), which it enforces.
 */

/** Longest key, in UTF-8 bytes. */
export const MAX_KEY_BYTES = 1024;
/** Longest string value, in UTF-8 bytes. */
export const MAX_STRING_BYTES = 4096;
/** Deepest nesting of objects in tags and properties (`{ "a": 1 }` is depth 1). */
export const MAX_DEPTH = 10;
/** Largest tags document, in UTF-8 bytes of its JSON. */
export const MAX_TAGS_BYTES = 8192;

// C0 and C1 control characters, '.', '$' and space.
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it rejects
const FORBIDDEN_KEY_CHAR = /[\u0000-\u001f\u007f-\u009f.$ ]/;

const bytes = (text: string): number => Buffer.byteLength(text, 'utf8');

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function invalid(field: string, problem: string): ValidationError {
  return new ValidationError('InvalidTwinPatch', `${field}: ${problem}`, { field });
}

/**
 * Checks a tags or properties document (or patch: `null` values allowed where `allowNull`) and returns it
 * typed. Errors name the path of the bad key or value, e.g. `tags.location.bad key: ...`.
 */
export function checkDocument(value: unknown, field: string, allowNull: boolean, depth = 1): JsonObject {
  if (!isObject(value)) throw invalid(field, `expected an object, got ${describe(value)}`);
  if (depth > MAX_DEPTH) throw invalid(field, `nested deeper than ${MAX_DEPTH} levels`);
  for (const [key, child] of Object.entries(value)) {
    const path = `${field}.${key}`;
    if (key === '') throw invalid(field, 'keys must not be empty');
    if (bytes(key) > MAX_KEY_BYTES) throw invalid(field, `key longer than ${MAX_KEY_BYTES} bytes`);
    if (FORBIDDEN_KEY_CHAR.test(key)) {
      throw invalid(path, "keys must not contain control characters, '.', '$' or spaces");
    }
    checkValue(child, path, allowNull, depth);
  }
  return value as JsonObject;
}

function checkValue(value: unknown, path: string, allowNull: boolean, depth: number): void {
  if (value === null) {
    if (!allowNull) throw invalid(path, 'null is only allowed in a patch, where it removes the key');
    return;
  }
  switch (typeof value) {
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value)) throw invalid(path, 'numbers must be finite');
      return;
    case 'string':
      if (bytes(value) > MAX_STRING_BYTES)
        throw invalid(path, `strings must be at most ${MAX_STRING_BYTES} bytes`);
      return;
    case 'object':
      if (Array.isArray(value)) {
        value.forEach((item, i) => {
          if (item === null) return; // arrays may hold nulls; they do not remove anything
          checkValue(item, `${path}[${i}]`, false, depth);
        });
        return;
      }
      checkDocument(value, path, allowNull, depth + 1);
      return;
    default:
      throw invalid(path, `expected a JSON value, got ${typeof value}`);
  }
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value;
}

/** What a caller may change on a twin: tags and desired properties. */
export interface TwinPatch {
  readonly tags?: JsonObject;
  readonly desired?: JsonObject;
}

/** Read-only twin fields a caller may send back unchanged (IoT Hub's SDKs send the whole twin). */
const READ_ONLY_FIELDS = new Set([
  'etag',
  'deviceEtag',
  'version',
  'status',
  'statusReason',
  'statusUpdateTime',
  'connectionState',
  'lastActivityTime',
  'cloudToDeviceMessageCount',
  'authenticationType',
  'x509Thumbprint',
  'modelId',
  'capabilities',
]);

/**
 * The changes in a `PATCH` / `PUT /twins/{id}` body: `tags` and `properties.desired`. The body may carry
 * the twin's read-only fields, which are ignored (IoT Hub's SDKs send a whole twin back), and `deviceId`,
 * which must be the path's. `properties.reported` is the device's alone (a 400 naming it); so are
 * unknown fields. `allowNull`: a patch removes keys with `null`, a replacement has no use for it.
 */
export function parseTwinBody(body: unknown, deviceId: string, allowNull: boolean): TwinPatch {
  if (!isObject(body)) throw invalid('body', `expected a twin object, got ${describe(body)}`);
  let tags: JsonObject | undefined;
  let desired: JsonObject | undefined;
  for (const [key, value] of Object.entries(body)) {
    if (key === 'tags') {
      tags = checkDocument(value, 'tags', allowNull);
    } else if (key === 'properties') {
      if (!isObject(value)) throw invalid('properties', `expected an object, got ${describe(value)}`);
      for (const [section, content] of Object.entries(value)) {
        if (section === 'desired') {
          if (!isObject(content))
            throw invalid('properties.desired', `expected an object, got ${describe(content)}`);
          // A twin read back and sent again carries $metadata and $version: read-only, ignored.
          const { $metadata: _metadata, $version: _version, ...rest } = content;
          desired = checkDocument(rest, 'properties.desired', allowNull);
        } else if (section === 'reported') {
          throw invalid(
            'properties.reported',
            'reported properties are written by the device, not the service',
          );
        } else {
          throw invalid(`properties.${section}`, 'unknown field (expected desired)');
        }
      }
    } else if (key === 'deviceId') {
      if (value !== deviceId)
        throw invalid('deviceId', `does not match the device in the path ('${deviceId}')`);
    } else if (!READ_ONLY_FIELDS.has(key)) {
      throw invalid(key, 'unknown field (a twin takes tags and properties.desired)');
    }
  }
  return { ...(tags !== undefined ? { tags } : {}), ...(desired !== undefined ? { desired } : {}) };
}

/** `patch` merged into `target` (JSON merge patch, RFC 7396): `null` removes, objects merge, the rest replaces. */
export function mergePatch(target: JsonObject, patch: JsonObject): JsonObject {
  const result: JsonObject = { ...target };
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) {
      delete result[key];
    } else if (isObject(value)) {
      const current = result[key];
      result[key] = mergePatch(isObject(current) ? (current as JsonObject) : {}, value as JsonObject);
    } else {
      result[key] = value;
    }
  }
  return result;
}

/** The merge patch that turns `from` into `to`: removed keys `null`, changed values (objects recursively) new. */
export function diffPatch(from: JsonObject, to: JsonObject): JsonObject {
  const patch: JsonObject = {};
  for (const key of Object.keys(from)) {
    if (!Object.hasOwn(to, key)) patch[key] = null;
  }
  for (const [key, value] of Object.entries(to)) {
    const before = from[key];
    if (isObject(value) && isObject(before)) {
      const inner = diffPatch(before as JsonObject, value as JsonObject);
      if (Object.keys(inner).length > 0) patch[key] = inner;
    } else if (!Object.hasOwn(from, key) || !jsonEqual(before, value)) {
      patch[key] = value;
    }
  }
  return patch;
}

/** Deep equality of JSON values. */
export function jsonEqual(a: JsonValue | undefined, b: JsonValue | undefined): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b))
    return a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return (
      keys.length === Object.keys(b).length &&
      keys.every((k) => Object.hasOwn(b, k) && jsonEqual((a as JsonObject)[k], (b as JsonObject)[k]))
    );
  }
  return false;
}

/** Checks merged tags against {@link MAX_TAGS_BYTES}. */
export function checkTagsSize(tags: JsonObject, deviceId: string): void {
  const size = bytes(JSON.stringify(tags));
  if (size > MAX_TAGS_BYTES) {
    throw new LimitExceededError(
      'TwinTooLarge',
      `tags: the tags of '${deviceId}' would be ${size} bytes, more than the ${MAX_TAGS_BYTES} allowed`,
      { field: 'tags', limit: MAX_TAGS_BYTES, bytes: size, deviceId },
    );
  }
}
