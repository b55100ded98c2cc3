import type { CastType } from './ast.ts';
import type { Env } from './context.ts';
import { isPlainObject, toNumber, toText } from './values.ts';

/** A compiled expression: evaluates against one message. */
export type Evaluator = (env: Env) => unknown;

/** A built-in function: its arity and its implementation over already-evaluated arguments. */
export interface SqlFunction {
  readonly minArgs: number;
  readonly maxArgs: number;
  readonly call: (args: unknown[], env: Env) => unknown;
}

const fn = (minArgs: number, maxArgs: number, call: SqlFunction['call']): SqlFunction => ({
  minArgs,
  maxArgs,
  call,
});

/** Strings, numbers and booleans as text; anything else is Undefined. */
function scalarText(value: unknown): string | undefined {
  return typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean'
    ? String(value)
    : undefined;
}

/** The bytes `encode(value, ...)` encodes for a non-`*` value: UTF-8 of its text, JSON for objects. */
function bytesOf(value: unknown): Buffer | undefined {
  if (value === undefined || value === null) return undefined;
  const text = toText(value);
  return text === undefined ? undefined : Buffer.from(text, 'utf8');
}

/** Encodes bytes with a scheme name; only `base64` is supported, as in AWS IoT. */
export function encodeBytes(bytes: Buffer | undefined, scheme: unknown): string | undefined {
  if (bytes === undefined || typeof scheme !== 'string' || scheme.toLowerCase() !== 'base64')
    return undefined;
  return bytes.toString('base64');
}

/**
 * The built-in functions, keyed by lower-case name. `encode(*, ...)` and `cast(x AS T)` are
 * compiled specially (see the evaluator); the entry here handles `encode(expr, ...)`.
 */
export const FUNCTIONS: ReadonlyMap<string, SqlFunction> = new Map<string, SqlFunction>([
  [
    'topic',
    fn(0, 1, (args, env) => {
      if (args.length === 0) return env.ctx.topic;
      const n = toNumber(args[0]);
      if (n === undefined || !Number.isInteger(n) || n < 1) return undefined;
      return env.topicLevels[n - 1];
    }),
  ],
  ['clientid', fn(0, 0, (_args, env) => env.ctx.clientId)],
  ['principal', fn(0, 0, (_args, env) => env.ctx.principal)],
  ['timestamp', fn(0, 0, (_args, env) => env.ctx.timestamp)],
  ['newuuid', fn(0, 0, (_args, env) => env.ctx.newuuid())],
  // AWS returns the MQTT 5 trace id when there is one; locally there is none, so a fresh id.
  ['traceid', fn(0, 0, (_args, env) => env.ctx.newuuid())],
  ['encode', fn(2, 2, (args) => encodeBytes(bytesOf(args[0]), args[1]))],
  // MQTT 5 properties (AWS IoT SQL): Undefined for an MQTT 3.1.1 publish or an unknown name.
  [
    'get_mqtt_property',
    fn(1, 1, ([name], env) => {
      const p = env.ctx.mqtt5;
      if (p === undefined) return undefined;
      switch (name) {
        case 'content_type':
          return p.contentType;
        case 'correlation_data':
          return p.correlationData?.toString('base64');
        case 'response_topic':
          return p.responseTopic;
        case 'format_indicator':
          return p.payloadFormatIndicator === 1 ? 'UTF8_DATA' : 'UNSPECIFIED_BYTES';
        default:
          return undefined;
      }
    }),
  ],
  // `get_user_properties()`: every user property as `[{name: value}, ...]` in order;
  // `get_user_properties(name)`: the values of that name, `[value, ...]`. Undefined when there are none.
  [
    'get_user_properties',
    fn(0, 1, (args, env) => {
      const all = env.ctx.mqtt5?.userProperties ?? [];
      if (args.length === 0) return all.length === 0 ? undefined : all.map(([k, v]) => ({ [k]: v }));
      const values = all.filter(([k]) => k === args[0]).map(([, v]) => v);
      return values.length === 0 ? undefined : values;
    }),
  ],
  [
    'get',
    fn(2, 2, ([container, key]) => {
      if (Array.isArray(container)) {
        const i = toNumber(key);
        return i !== undefined && Number.isInteger(i) && i >= 0 ? container[i] : undefined;
      }
      if (isPlainObject(container) && typeof key === 'string') {
        return Object.hasOwn(container, key) ? container[key] : undefined;
      }
      return undefined;
    }),
  ],
  [
    'concat',
    fn(2, Number.POSITIVE_INFINITY, (args) => {
      if (args.some((a) => a === undefined)) return undefined;
      if (args.some((a) => Array.isArray(a))) {
        return args.flatMap((a) => (Array.isArray(a) ? a : [a]));
      }
      let out = '';
      for (const a of args) out += toText(a) ?? '';
      return out;
    }),
  ],
  ['lower', fn(1, 1, ([s]) => scalarText(s)?.toLowerCase())],
  ['upper', fn(1, 1, ([s]) => scalarText(s)?.toUpperCase())],
  [
    'startswith',
    fn(2, 2, ([s, prefix]) => {
      const text = scalarText(s);
      const start = scalarText(prefix);
      return text === undefined || start === undefined ? undefined : text.startsWith(start);
    }),
  ],
  [
    'endswith',
    fn(2, 2, ([s, suffix]) => {
      const text = scalarText(s);
      const end = scalarText(suffix);
      return text === undefined || end === undefined ? undefined : text.endsWith(end);
    }),
  ],
  ['isundefined', fn(1, 1, ([v]) => v === undefined)],
  ['isnull', fn(1, 1, ([v]) => v === null)],
  [
    'abs',
    fn(1, 1, ([v]) => {
      const n = toNumber(v);
      return n === undefined ? undefined : Math.abs(n);
    }),
  ],
]);

/** `cast(value AS type)`, following the AWS IoT conversion tables. */
export function castValue(value: unknown, to: CastType): unknown {
  switch (to) {
    case 'String':
      return value === null ? undefined : toText(value);
    case 'Int': {
      if (typeof value === 'boolean') return value ? 1 : 0;
      const n = toNumber(value);
      return n === undefined ? undefined : Math.trunc(n);
    }
    case 'Decimal':
      if (typeof value === 'boolean') return value ? 1 : 0;
      return toNumber(value);
    case 'Bool':
      if (typeof value === 'boolean') return value;
      if (typeof value === 'number') return value !== 0;
      if (typeof value === 'string') {
        const lower = value.toLowerCase();
        return lower === 'true' ? true : lower === 'false' ? false : undefined;
      }
      return undefined;
  }
}
