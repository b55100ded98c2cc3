import type { BinaryOp, Expr } from './ast.ts';
import { IotSqlError } from './errors.ts';
import { castValue, type Evaluator, encodeBytes, FUNCTIONS } from './functions.ts';
import { isPlainObject, setOwn, sqlEquals, toBool, toNumber } from './values.ts';

/** Reads `name` of an object value; anything else (array, scalar, Undefined) gives Undefined. */
function member(value: unknown, name: string): unknown {
  return isPlainObject(value) && Object.hasOwn(value, name) ? value[name] : undefined;
}

/** `value[index]`: an array element by Int index, or an object field by string key. */
function indexed(value: unknown, index: unknown): unknown {
  if (Array.isArray(value)) {
    return typeof index === 'number' && Number.isInteger(index) && index >= 0 ? value[index] : undefined;
  }
  return typeof index === 'string' ? member(value, index) : undefined;
}

/** Arithmetic on two numbers; Int op Int stays Int for `/` and `%` (truncating), as in AWS IoT. */
function arithmetic(op: '-' | '*' | '/' | '%', a: number, b: number): number | undefined {
  switch (op) {
    case '-':
      return a - b;
    case '*':
      return a * b;
    case '/':
      if (b === 0) return undefined;
      return Number.isInteger(a) && Number.isInteger(b) ? Math.trunc(a / b) : a / b;
    case '%':
      return b === 0 ? undefined : a % b;
  }
}

/** Applies a binary operator to two evaluated operands. */
export function applyBinary(op: BinaryOp, a: unknown, b: unknown): unknown {
  switch (op) {
    case 'AND':
    case 'OR': {
      const l = toBool(a);
      const r = toBool(b);
      if (l === undefined || r === undefined) return undefined;
      return op === 'AND' ? l && r : l || r;
    }
    case '=':
      return sqlEquals(a, b);
    case '<>': {
      const eq = sqlEquals(a, b);
      return eq === undefined ? undefined : !eq;
    }
    case '<':
    case '>':
    case '<=':
    case '>=': {
      const l = toNumber(a);
      const r = toNumber(b);
      if (l === undefined || r === undefined) return undefined;
      return op === '<' ? l < r : op === '>' ? l > r : op === '<=' ? l <= r : l >= r;
    }
    case '+': {
      if (typeof a === 'string' && typeof b === 'string') return a + b;
      const l = toNumber(a);
      const r = toNumber(b);
      return l === undefined || r === undefined ? undefined : l + r;
    }
    default: {
      const l = toNumber(a);
      const r = toNumber(b);
      return l === undefined || r === undefined ? undefined : arithmetic(op, l, r);
    }
  }
}

/**
 * Compiles an expression tree into a closure once, so evaluating a message walks no syntax and
 * looks up no names. Unknown functions and wrong argument counts are compile-time IotSqlErrors.
 */
export function compileExpr(expr: Expr, source: string): Evaluator {
  switch (expr.type) {
    case 'literal': {
      const value = expr.value;
      return () => value;
    }
    case 'field': {
      const name = expr.name;
      return (env) => member(env.doc, name);
    }
    case 'wildcard':
      return (env) => env.doc;
    case 'member': {
      const object = compileExpr(expr.object, source);
      const name = expr.name;
      return (env) => member(object(env), name);
    }
    case 'index': {
      const object = compileExpr(expr.object, source);
      const index = compileExpr(expr.index, source);
      return (env) => indexed(object(env), index(env));
    }
    case 'unary': {
      const operand = compileExpr(expr.operand, source);
      if (expr.op === 'NOT') {
        return (env) => {
          const b = toBool(operand(env));
          return b === undefined ? undefined : !b;
        };
      }
      return (env) => {
        const n = toNumber(operand(env));
        return n === undefined ? undefined : -n;
      };
    }
    case 'binary': {
      const left = compileExpr(expr.left, source);
      const right = compileExpr(expr.right, source);
      const op = expr.op;
      return (env) => applyBinary(op, left(env), right(env));
    }
    case 'is': {
      const operand = compileExpr(expr.operand, source);
      const sentinel = expr.what === 'NULL' ? null : undefined;
      const negated = expr.negated;
      return (env) => (operand(env) === sentinel) !== negated;
    }
    case 'cast': {
      const operand = compileExpr(expr.operand, source);
      const to = expr.to;
      return (env) => castValue(operand(env), to);
    }
    case 'object': {
      const entries = expr.entries.map(([key, value]) => [key, compileExpr(value, source)] as const);
      return (env) => {
        const out: Record<string, unknown> = {};
        for (const [key, value] of entries) {
          const v = value(env);
          if (v !== undefined) setOwn(out, key, v);
        }
        return out;
      };
    }
    case 'array': {
      const items = expr.items.map((item) => compileExpr(item, source));
      return (env) => items.map((item) => item(env));
    }
    case 'case': {
      const subject = expr.subject === undefined ? undefined : compileExpr(expr.subject, source);
      const whens = expr.whens.map((w) => ({
        when: compileExpr(w.when, source),
        result: compileExpr(w.result, source),
      }));
      const otherwise = expr.otherwise === undefined ? undefined : compileExpr(expr.otherwise, source);
      return (env) => {
        const s = subject?.(env);
        for (const w of whens) {
          const hit = subject === undefined ? w.when(env) === true : sqlEquals(s, w.when(env)) === true;
          if (hit) return w.result(env);
        }
        return otherwise?.(env);
      };
    }
    case 'call':
      return compileCall(expr, source);
  }
}

function compileCall(expr: Extract<Expr, { type: 'call' }>, source: string): Evaluator {
  const def = FUNCTIONS.get(expr.name);
  if (def === undefined) {
    throw new IotSqlError(source, expr.offset, 'a supported function', `unknown function '${expr.name}'`);
  }
  const count = expr.args.length;
  if (count < def.minArgs || count > def.maxArgs) {
    const arity =
      def.minArgs === def.maxArgs
        ? `${def.minArgs}`
        : def.maxArgs === Number.POSITIVE_INFINITY
          ? `at least ${def.minArgs}`
          : `${def.minArgs} to ${def.maxArgs}`;
    throw new IotSqlError(source, expr.offset, `${arity} argument(s) for ${expr.name}()`, `${count}`);
  }
  const first = expr.args[0];
  if (expr.name === 'encode' && first?.type === 'wildcard') {
    // encode(*, scheme) encodes the raw payload bytes, JSON or not, empty or not.
    const scheme = compileExpr(expr.args[1]!, source);
    return (env) => encodeBytes(env.ctx.payload, scheme(env));
  }
  const args = expr.args.map((arg) => compileExpr(arg, source));
  const call = def.call;
  if (args.length === 0) return (env) => call([], env);
  return (env) =>
    call(
      args.map((arg) => arg(env)),
      env,
    );
}
