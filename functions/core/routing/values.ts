/**
 * The values a route condition computes with: JSON values plus `undefined` (a missing property, or
 * an operation that does not apply, such as comparing a string with a number). Arrays and objects
 * come straight from the parsed body or the twin and are inspected lazily, never copied.
 */
export type QueryValue =
  | undefined
  | null
  | boolean
  | number
  | string
  | readonly unknown[]
  | Readonly<Record<string, unknown>>;

export type QueryType = 'undefined' | 'null' | 'boolean' | 'number' | 'string' | 'array' | 'object';

/** Turns anything found in a body or twin into a query value; what JSON cannot hold is undefined. */
export function toQueryValue(value: unknown): QueryValue {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      return Number.isFinite(value) ? value : undefined;
    case 'object':
      if (value === null) return null;
      if (Array.isArray(value)) return value;
      return value as Readonly<Record<string, unknown>>;
    default:
      return undefined;
  }
}

export function typeOf(value: QueryValue): QueryType {
  if (value === undefined) return 'undefined';
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  const t = typeof value;
  if (t === 'boolean' || t === 'number' || t === 'string') return t;
  return 'object';
}

export function isRecord(value: QueryValue): value is Readonly<Record<string, unknown>> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Reads a member by name. An exact match wins; otherwise the first key equal ignoring case, because
 * IoT Hub documents its queries as not case-sensitive. Only own properties count, so `constructor`
 * or `__proto__` in a condition cannot reach the prototype.
 */
export function getMember(record: Readonly<Record<string, unknown>>, key: string): QueryValue {
  if (Object.hasOwn(record, key)) return toQueryValue(record[key]);
  const lower = key.toLowerCase();
  for (const k of Object.keys(record)) {
    if (k.toLowerCase() === lower) return toQueryValue(record[k]);
  }
  return undefined;
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((item, i) => deepEqual(item, b[i]));
  }
  const ra = a as Record<string, unknown>;
  const rb = b as Record<string, unknown>;
  const ka = Object.keys(ra);
  if (ka.length !== Object.keys(rb).length) return false;
  return ka.every((k) => Object.hasOwn(rb, k) && deepEqual(ra[k], rb[k]));
}

/** `=`: undefined when either side is undefined or the types differ; arrays and objects compare deeply. */
export function queryEquals(a: QueryValue, b: QueryValue): boolean | undefined {
  const ta = typeOf(a);
  if (ta === 'undefined' || ta !== typeOf(b)) return undefined;
  if (ta === 'array' || ta === 'object') return deepEqual(a, b);
  return a === b;
}

/**
 * Ordering (`<`, `>`, `<=`, `>=`): numbers numerically, strings ordinally (UTF-16 code units, as
 * .NET's ordinal comparison); any other pairing is undefined.
 */
export function queryCompare(a: QueryValue, b: QueryValue): number | undefined {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  if (typeof a === 'string' && typeof b === 'string') return a < b ? -1 : a > b ? 1 : 0;
  return undefined;
}

/** A finite number or undefined: arithmetic that overflows or divides by zero has no JSON value. */
export function finite(n: number): number | undefined {
  return Number.isFinite(n) ? n : undefined;
}
