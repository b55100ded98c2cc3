/** Binary operators of the supported IoT SQL subset (`!=` is parsed as `<>`). */
export type BinaryOp = 'OR' | 'AND' | '=' | '<>' | '<' | '>' | '<=' | '>=' | '+' | '-' | '*' | '/' | '%';

/** The target types of `cast(x AS Type)`. */
export type CastType = 'String' | 'Int' | 'Decimal' | 'Bool';

/** An expression node. `offset` is the 0-based position of its first token in the source. */
export type Expr =
  | { readonly type: 'literal'; readonly value: unknown; readonly offset: number }
  /** A top-level payload field, e.g. `state` in `state.reported.temp`. */
  | { readonly type: 'field'; readonly name: string; readonly offset: number }
  /** `*` as a function argument: the whole payload (raw bytes for `encode`). */
  | { readonly type: 'wildcard'; readonly offset: number }
  | { readonly type: 'member'; readonly object: Expr; readonly name: string; readonly offset: number }
  | { readonly type: 'index'; readonly object: Expr; readonly index: Expr; readonly offset: number }
  | { readonly type: 'unary'; readonly op: 'NOT' | '-'; readonly operand: Expr; readonly offset: number }
  | {
      readonly type: 'binary';
      readonly op: BinaryOp;
      readonly left: Expr;
      readonly right: Expr;
      readonly offset: number;
    }
  | {
      readonly type: 'is';
      readonly operand: Expr;
      readonly negated: boolean;
      readonly what: 'NULL' | 'UNDEFINED';
      readonly offset: number;
    }
  /** A function call; `name` is lower-cased (function names are case-insensitive). */
  | { readonly type: 'call'; readonly name: string; readonly args: readonly Expr[]; readonly offset: number }
  | { readonly type: 'cast'; readonly operand: Expr; readonly to: CastType; readonly offset: number }
  | {
      readonly type: 'object';
      readonly entries: readonly (readonly [string, Expr])[];
      readonly offset: number;
    }
  | { readonly type: 'array'; readonly items: readonly Expr[]; readonly offset: number }
  | {
      readonly type: 'case';
      readonly subject: Expr | undefined;
      readonly whens: readonly { readonly when: Expr; readonly result: Expr }[];
      readonly otherwise: Expr | undefined;
      readonly offset: number;
    };

/** One item of a SELECT list: `*`, or an expression with its output key. */
export type Column =
  | { readonly kind: 'star' }
  | { readonly kind: 'expr'; readonly expr: Expr; readonly name: string };

/** A parsed `SELECT ... FROM '...' [WHERE ...]` statement. */
export interface Statement {
  readonly select:
    | { readonly kind: 'value'; readonly expr: Expr }
    | { readonly kind: 'columns'; readonly columns: readonly Column[] };
  readonly topicFilter: string;
  readonly where: Expr | undefined;
}
