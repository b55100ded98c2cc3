/**
 * The AWS IoT SQL (version 2016-03-23) subset that the local hub's rules engine evaluates:
 * `AWS::IoT::TopicRule` statements from the synthesized template, and the `${...}` substitution
 * templates in their action parameters. Statements are parsed once into a tree and compiled into
 * closures; evaluating a message does no parsing beyond one `JSON.parse` of the payload, and only
 * when an expression reads it.
 *
 * Supported:
 * - `SELECT *`, `SELECT *, expr AS name, ...`, `SELECT expr [AS name], ...`, `SELECT VALUE expr`;
 *   `FROM 'filter'` (quoted MQTT filter with `+` and `#`, `$aws/rules/...` as a plain filter);
 *   optional `WHERE`.
 * - Field paths `a.b.c`, `a[0]`, `a['k']`; string (`'x'` or `"x"`), number, `true`/`false`/`null`
 *   literals; object `{'k': expr}` and array `[expr, ...]` literals; `CASE [x] WHEN ... THEN ...
 *   [ELSE ...] END`.
 * - Operators `AND OR NOT = <> != < > <= >= + - * / %`, parentheses, `IS [NOT] NULL`,
 *   `IS [NOT] UNDEFINED`.
 * - Functions (case-insensitive): `topic()`, `topic(n)`, `clientid()`, `principal()`,
 *   `timestamp()`, `newuuid()`, `traceid()`, `encode(*|expr, 'base64')`, `get(x, key)`,
 *   `concat(a, b, ...)`, `lower()`, `upper()`, `startswith()`, `endswith()`, `isundefined()`,
 *   `isnull()`, `abs()`, `cast(x AS String|Int|Decimal|Bool)`.
 *
 * Semantics follow the AWS IoT SQL reference: a missing field, a function given bad arguments and
 * an operator given mismatched types are Undefined; Undefined SELECT outputs are left out of the
 * result; `WHERE` passes only when it is the Boolean true; `=` of different types is false and of
 * Undefined is Undefined; `<`/`>` compare numbers (numeric strings are converted, anything else is
 * Undefined); `AND`/`OR`/`NOT` take Booleans or the strings "true"/"false"; whole numbers are Ints,
 * so `7 / 2` is `3`. Un-aliased columns are named after the last field of a path (`a.b.c` gives
 * `c`) or, for other expressions, their source text (`topic(2)`).
 *
 * Payloads: a JSON payload's fields are what field paths read and what `*` expands to (only when
 * it is a JSON object). An empty or non-JSON payload (binary, plain text) makes every field path
 * Undefined and `*` contribute no fields to `evaluate`'s object; AWS IoT passes such a payload
 * through unchanged for a bare `SELECT *`, which `evaluatePayload` reproduces.
 * `encode(*, 'base64')` always encodes the raw bytes, JSON or not, empty or not.
 *
 * Not supported (compile errors, or not evaluated): the `SET` clause and variables, `IN`,
 * `LIKE`-style operators, nested `SELECT ... FROM` object queries, `sql_version`-specific
 * quirks of 2015-10-08, `get_thing_shadow`/`aws_lambda`/`get_dynamodb` and other functions not
 * listed above, 34-digit decimal precision (JS doubles are used), MQTT 5 properties
 * (`get_mqtt_property`), and `decode`.
 */
import { Env, type IotSqlContext } from './iot-sql/context.ts';
import { IotSqlError } from './iot-sql/errors.ts';
import { compileExpr } from './iot-sql/evaluator.ts';
import type { Evaluator } from './iot-sql/functions.ts';
import { parseExpression, parseStatement } from './iot-sql/parser.ts';
import { mqttTopicMatches } from './iot-sql/topic.ts';
import { isPlainObject, setOwn, toText } from './iot-sql/values.ts';

export type { IotSqlContext, Mqtt5Properties } from './iot-sql/context.ts';
export { IotSqlError, type IotSqlPosition } from './iot-sql/errors.ts';
export { mqttTopicMatches } from './iot-sql/topic.ts';

/** A rule statement compiled once and evaluated for many messages. */
export interface CompiledIotSql {
  /** The FROM clause's topic filter, unquoted. */
  readonly topicFilter: string;
  /** True when the statement is exactly `SELECT * FROM ...` (AWS passes the payload through as is). */
  readonly selectsWholePayload: boolean;
  /** Whether a message published on `topic` reaches this rule (MQTT filter match, `+` and `#`). */
  matchesTopic(topic: string): boolean;
  /**
   * Runs the statement on one message. Returns undefined when WHERE is false or Undefined;
   * otherwise the SELECT output object (Undefined columns left out). For `SELECT VALUE expr` it is
   * the value when that is an object, else an empty object: use `evaluatePayload` for the exact
   * output of `SELECT VALUE` and of `SELECT *` on non-JSON payloads.
   */
  evaluate(ctx: IotSqlContext): Record<string, unknown> | undefined;
  /**
   * Runs the statement and returns the outgoing payload bytes AWS IoT would hand to an action, or
   * undefined when WHERE does not pass: the incoming bytes unchanged for a bare `SELECT *` on a
   * payload that is not a JSON object, JSON text otherwise (`SELECT VALUE` of Undefined gives empty
   * bytes).
   */
  evaluatePayload(ctx: IotSqlContext): Buffer | undefined;
}

type CompiledColumn =
  | { readonly star: true }
  | { readonly star: false; readonly name: string; readonly value: Evaluator };

/** Compiles an IoT SQL 2016-03-23 statement. Throws IotSqlError (naming the position) on bad syntax. */
export function compileIotSql(sql: string): CompiledIotSql {
  const statement = parseStatement(sql);
  const where = statement.where === undefined ? undefined : compileExpr(statement.where, sql);
  const topicFilter = statement.topicFilter;
  const value = statement.select.kind === 'value' ? compileExpr(statement.select.expr, sql) : undefined;
  const columns: CompiledColumn[] =
    statement.select.kind === 'columns'
      ? statement.select.columns.map((c) =>
          c.kind === 'star' ? { star: true } : { star: false, name: c.name, value: compileExpr(c.expr, sql) },
        )
      : [];
  const selectsWholePayload = columns.length === 1 && columns[0]?.star === true;

  const passes = (env: Env): boolean => where === undefined || where(env) === true;

  const project = (env: Env): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    for (const column of columns) {
      if (column.star) {
        const doc = env.doc;
        if (isPlainObject(doc)) for (const key of Object.keys(doc)) setOwn(out, key, doc[key]);
      } else {
        const v = column.value(env);
        if (v !== undefined) setOwn(out, column.name, v);
      }
    }
    return out;
  };

  return {
    topicFilter,
    selectsWholePayload,
    matchesTopic: (topic) => mqttTopicMatches(topicFilter, topic),
    evaluate(ctx) {
      const env = new Env(ctx);
      if (!passes(env)) return undefined;
      if (value !== undefined) {
        const v = value(env);
        return isPlainObject(v) ? v : {};
      }
      return project(env);
    },
    evaluatePayload(ctx) {
      const env = new Env(ctx);
      if (!passes(env)) return undefined;
      if (value !== undefined) {
        const v = value(env);
        return v === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(v), 'utf8');
      }
      if (selectsWholePayload && !isPlainObject(env.doc)) return ctx.payload;
      return Buffer.from(JSON.stringify(project(env)), 'utf8');
    },
  };
}

/** A substitution template compiled once: literal text and `${expr}` parts. */
export type CompiledSubstitutionTemplate = (ctx: IotSqlContext) => string;

/**
 * Compiles a substitution template such as `prefix-${topic(3)}-x`. Each `${...}` holds one IoT
 * SQL expression (evaluated against the incoming message, not the SELECT output); the rest is
 * literal. A `}` inside a quoted string or an object literal does not end the expression.
 * Throws IotSqlError for an unterminated `${` or a bad expression (the position is in `template`).
 */
export function compileSubstitutionTemplate(template: string): CompiledSubstitutionTemplate {
  const parts: (string | Evaluator)[] = [];
  let literal = '';
  let i = 0;
  while (i < template.length) {
    if (template.startsWith('${', i)) {
      const start = i + 2;
      const end = findTemplateEnd(template, start);
      const inner = template.slice(start, end);
      let evaluator: Evaluator;
      try {
        evaluator = compileExpr(parseExpression(inner), inner);
      } catch (err) {
        if (!(err instanceof IotSqlError)) throw err;
        const ctx = err.context;
        throw new IotSqlError(
          template,
          start + err.position.offset,
          String(ctx.expected),
          String(ctx.found),
          {
            cause: err,
          },
        );
      }
      if (literal !== '') parts.push(literal);
      literal = '';
      parts.push(evaluator);
      i = end + 1;
    } else {
      literal += template[i];
      i++;
    }
  }
  if (literal !== '') parts.push(literal);
  return (ctx) => {
    const env = new Env(ctx);
    let out = '';
    // Undefined renders as the empty string, as AWS IoT serializes it.
    for (const part of parts) out += typeof part === 'string' ? part : (toText(part(env)) ?? '');
    return out;
  };
}

/** Index of the `}` closing a `${` whose expression starts at `start`; skips quotes and nested braces. */
function findTemplateEnd(template: string, start: number): number {
  let depth = 0;
  let quote: string | undefined;
  for (let i = start; i < template.length; i++) {
    const c = template[i];
    if (quote !== undefined) {
      if (c === '\\') i++;
      else if (c === quote) quote = undefined;
    } else if (c === "'" || c === '"') {
      quote = c;
    } else if (c === '{') {
      depth++;
    } else if (c === '}') {
      if (depth === 0) return i;
      depth--;
    }
  }
  throw new IotSqlError(template, start - 2, "a closing '}' for '${'", 'the end of the template');
}

const TEMPLATE_CACHE_LIMIT = 500;
const templateCache = new Map<string, CompiledSubstitutionTemplate>();

/**
 * Evaluates a substitution template: `${expr}` parts are evaluated against the message, the rest is
 * literal (`"${topic(2)}"`, `"${clientid()}"`, `"prefix-${topic(3)}-x"`). Undefined renders as
 * the empty string, objects as JSON. Compiled templates are cached, so repeated calls do not
 * re-parse. Throws IotSqlError on bad syntax.
 */
export function evaluateSubstitutionTemplate(template: string, ctx: IotSqlContext): string {
  let compiled = templateCache.get(template);
  if (compiled === undefined) {
    compiled = compileSubstitutionTemplate(template);
    if (templateCache.size >= TEMPLATE_CACHE_LIMIT) templateCache.clear();
    templateCache.set(template, compiled);
  }
  return compiled(ctx);
}
