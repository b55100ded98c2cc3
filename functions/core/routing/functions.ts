import { finite, type QueryValue, typeOf } from './values.ts';

/** A built-in function: its arity (checked when the condition compiles) and its body. */
export interface BuiltinFunction {
  readonly minArgs: number;
  /** `Infinity` for variadic functions. */
  readonly maxArgs: number;
  readonly apply: (args: readonly QueryValue[]) => QueryValue;
}

const num =
  (f: (x: number) => number) =>
  (args: readonly QueryValue[]): QueryValue => {
    const x = args[0];
    return typeof x === 'number' ? finite(f(x)) : undefined;
  };

const str =
  (f: (s: string) => QueryValue) =>
  (args: readonly QueryValue[]): QueryValue => {
    const s = args[0];
    return typeof s === 'string' ? f(s) : undefined;
  };

const str2 =
  (f: (a: string, b: string) => QueryValue) =>
  (args: readonly QueryValue[]): QueryValue => {
    const [a, b] = args;
    return typeof a === 'string' && typeof b === 'string' ? f(a, b) : undefined;
  };

const is =
  (test: (v: QueryValue) => boolean) =>
  (args: readonly QueryValue[]): QueryValue =>
    test(args[0]);

const one = (apply: BuiltinFunction['apply']): BuiltinFunction => ({ minArgs: 1, maxArgs: 1, apply });
const two = (apply: BuiltinFunction['apply']): BuiltinFunction => ({ minArgs: 2, maxArgs: 2, apply });

/** Decimal number syntax accepted by AS_NUMBER (JSON's, plus a leading '+' and surrounding blanks). */
const NUMBER_TEXT = /^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$/;

/** Clamps a numeric argument to an integer index in [0, max]. */
function index(n: number, max: number): number {
  return Math.min(Math.max(Math.trunc(n), 0), max);
}

/**
 * The functions IoT Hub supports in route conditions, keyed by upper-case name. Arguments of the
 * wrong type make the result undefined (so the route does not match), never an error.
 */
export const BUILTIN_FUNCTIONS: Readonly<Record<string, BuiltinFunction>> = {
  // Type checking and casting.
  IS_DEFINED: one(is((v) => v !== undefined)),
  IS_NULL: one(is((v) => v === null)),
  IS_BOOL: one(is((v) => typeof v === 'boolean')),
  IS_NUMBER: one(is((v) => typeof v === 'number')),
  IS_STRING: one(is((v) => typeof v === 'string')),
  IS_OBJECT: one(is((v) => typeOf(v) === 'object')),
  IS_ARRAY: one(is((v) => Array.isArray(v))),
  IS_PRIMITIVE: one(is((v) => v === null || ['boolean', 'number', 'string'].includes(typeof v))),
  AS_NUMBER: one((args) => {
    const v = args[0];
    if (typeof v === 'number') return v;
    if (typeof v === 'string' && NUMBER_TEXT.test(v)) return finite(Number(v));
    return undefined;
  }),
  // Mathematics.
  ABS: one(num(Math.abs)),
  EXP: one(num(Math.exp)),
  POWER: two((args) => {
    const [x, y] = args;
    return typeof x === 'number' && typeof y === 'number' ? finite(x ** y) : undefined;
  }),
  SQUARE: one(num((x) => x * x)),
  CEILING: one(num(Math.ceil)),
  FLOOR: one(num(Math.floor)),
  SIGN: one(num((x) => (x > 0 ? 1 : x < 0 ? -1 : 0))),
  SQRT: one(num(Math.sqrt)),
  // Strings. Lengths and positions count UTF-16 code units, as .NET strings (and IoT Hub) do.
  CONCAT: {
    minArgs: 2,
    maxArgs: Number.POSITIVE_INFINITY,
    apply: (args) => (args.every((a) => typeof a === 'string') ? args.join('') : undefined),
  },
  LENGTH: one(str((s) => s.length)),
  LOWER: one(str((s) => s.toLowerCase())),
  UPPER: one(str((s) => s.toUpperCase())),
  SUBSTRING: {
    minArgs: 2,
    maxArgs: 3,
    apply: (args) => {
      const [s, start, length] = args;
      if (typeof s !== 'string' || typeof start !== 'number') return undefined;
      const from = index(start, s.length);
      if (length === undefined && args.length === 2) return s.slice(from);
      if (typeof length !== 'number') return undefined;
      return s.slice(from, from + index(length, s.length));
    },
  },
  INDEX_OF: two(str2((s, fragment) => s.indexOf(fragment))),
  STARTS_WITH: two(str2((s, prefix) => s.startsWith(prefix))),
  ENDS_WITH: two(str2((s, suffix) => s.endsWith(suffix))),
  CONTAINS: two(str2((s, fragment) => s.includes(fragment))),
};

/** The arity a function expects, phrased for an error message. */
export function describeArity(fn: BuiltinFunction): string {
  const plural = (n: number) => `${n} argument${n === 1 ? '' : 's'}`;
  if (fn.maxArgs === Number.POSITIVE_INFINITY) return `at least ${plural(fn.minArgs)}`;
  if (fn.minArgs === fn.maxArgs) return plural(fn.minArgs);
  return `${fn.minArgs} to ${plural(fn.maxArgs)}`;
}
