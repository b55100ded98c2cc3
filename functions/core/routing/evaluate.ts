import { BUILTIN_FUNCTIONS } from './functions.ts';
import {
  lookupString,
  type RoutingMessage,
  readBody,
  readSystemProperty,
  systemPropertyKeys,
} from './message.ts';
import type { Expr, PathSegment } from './parser.ts';
import {
  finite,
  getMember,
  isRecord,
  type QueryValue,
  queryCompare,
  queryEquals,
  toQueryValue,
} from './values.ts';

/** A compiled expression: a tree of closures, so evaluation never looks at the syntax again. */
export type Evaluator = (message: RoutingMessage) => QueryValue;

/** Follows a path into a body or twin value; `undefined` where a step does not exist. */
export function walk(value: QueryValue, path: readonly PathSegment[]): QueryValue {
  let current = value;
  for (const segment of path) {
    if (segment.kind === 'key') {
      if (!isRecord(current)) return undefined;
      current = getMember(current, segment.key);
    } else {
      if (!Array.isArray(current) || segment.index >= current.length) return undefined;
      current = toQueryValue(current[segment.index]);
    }
  }
  return current;
}

function compileReference(expr: Expr & { type: 'ref' }): Evaluator {
  const { root, path } = expr;
  switch (root.kind) {
    case 'app': {
      const name = root.name;
      if (path.length === 0) return (m) => lookupString(m.properties, name);
      return (m) => walk(lookupString(m.properties, name), path);
    }
    case 'system': {
      const keys = systemPropertyKeys(root.name);
      const raw = `$${root.name}`;
      if (path.length === 0) return (m) => readSystemProperty(m, keys, raw);
      return (m) => walk(readSystemProperty(m, keys, raw), path);
    }
    case 'body':
      // IoT Hub evaluates functions and comparisons only on properties inside the body, never on
      // the whole body or on `$body[0]`: both are undefined.
      if (path.length === 0 || path[0]?.kind !== 'key') return () => undefined;
      return (m) => walk(readBody(m), path);
    case 'twin':
      if (path.length === 0) return () => undefined;
      return (m) => (m.twin === undefined ? undefined : walk(toQueryValue(m.twin), path));
  }
}

function asBoolean(value: QueryValue): boolean | undefined {
  return typeof value === 'boolean' ? value : undefined;
}

function arithmetic(op: string, a: number, b: number): QueryValue {
  switch (op) {
    case '+':
      return finite(a + b);
    case '-':
      return finite(a - b);
    case '*':
      return finite(a * b);
    case '/':
      return finite(a / b);
    default:
      return finite(a % b);
  }
}

/** Turns a syntax tree into closures. Constant sub-expressions stay cheap: literals return a value. */
export function compileExpr(expr: Expr): Evaluator {
  switch (expr.type) {
    case 'literal': {
      const value = expr.value;
      return () => value;
    }
    case 'array': {
      const items = expr.items.map(compileExpr);
      return (m) => items.map((item) => item(m));
    }
    case 'ref':
      return compileReference(expr);
    case 'not': {
      const operand = compileExpr(expr.operand);
      return (m) => {
        const v = asBoolean(operand(m));
        return v === undefined ? undefined : !v;
      };
    }
    case 'negate':
    case 'plus': {
      const operand = compileExpr(expr.operand);
      const sign = expr.type === 'negate' ? -1 : 1;
      return (m) => {
        const v = operand(m);
        return typeof v === 'number' ? sign * v : undefined;
      };
    }
    case 'and': {
      // Three-valued logic: false wins over undefined, so `false AND <anything>` is false and the
      // right side (maybe a body parse) is skipped.
      const left = compileExpr(expr.left);
      const right = compileExpr(expr.right);
      return (m) => {
        const l = asBoolean(left(m));
        if (l === false) return false;
        const r = asBoolean(right(m));
        if (r === false) return false;
        return l === true && r === true ? true : undefined;
      };
    }
    case 'or': {
      const left = compileExpr(expr.left);
      const right = compileExpr(expr.right);
      return (m) => {
        const l = asBoolean(left(m));
        if (l === true) return true;
        const r = asBoolean(right(m));
        if (r === true) return true;
        return l === false && r === false ? false : undefined;
      };
    }
    case 'compare': {
      const left = compileExpr(expr.left);
      const right = compileExpr(expr.right);
      const op = expr.op;
      if (op === '=' || op === '!=') {
        const negate = op === '!=';
        return (m) => {
          const eq = queryEquals(left(m), right(m));
          return eq === undefined ? undefined : eq !== negate;
        };
      }
      return (m) => {
        const c = queryCompare(left(m), right(m));
        if (c === undefined) return undefined;
        switch (op) {
          case '<':
            return c < 0;
          case '>':
            return c > 0;
          case '<=':
            return c <= 0;
          default:
            return c >= 0;
        }
      };
    }
    case 'arith': {
      // `+` adds numbers only; strings are joined with CONCAT, as in IoT Hub.
      const left = compileExpr(expr.left);
      const right = compileExpr(expr.right);
      const op = expr.op;
      return (m) => {
        const a = left(m);
        const b = right(m);
        return typeof a === 'number' && typeof b === 'number' ? arithmetic(op, a, b) : undefined;
      };
    }
    case 'call': {
      const fn = BUILTIN_FUNCTIONS[expr.name];
      if (fn === undefined) throw new Error(`unreachable: unknown function ${expr.name}`);
      const args = expr.args.map(compileExpr);
      const apply = fn.apply;
      return (m) => apply(args.map((arg) => arg(m)));
    }
  }
}

/** Whether any part of the tree reads the body or the twin; lets the router skip loading them. */
export function collectUses(expr: Expr): { usesBody: boolean; usesTwin: boolean } {
  let usesBody = false;
  let usesTwin = false;
  const visit = (e: Expr): void => {
    switch (e.type) {
      case 'ref':
        if (e.root.kind === 'body') usesBody = true;
        if (e.root.kind === 'twin') usesTwin = true;
        return;
      case 'literal':
        return;
      case 'array':
        e.items.forEach(visit);
        return;
      case 'call':
        e.args.forEach(visit);
        return;
      case 'not':
      case 'negate':
      case 'plus':
        visit(e.operand);
        return;
      default:
        visit(e.left);
        visit(e.right);
    }
  };
  visit(expr);
  return { usesBody, usesTwin };
}
