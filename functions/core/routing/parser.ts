import { RouteQueryError } from './errors.ts';
import { BUILTIN_FUNCTIONS, describeArity } from './functions.ts';
import { type Punct, type Token, tokenize } from './lexer.ts';
import type { QueryValue } from './values.ts';

/** One step of a path: `.name` / `['name']`, or `[0]`. */
export type PathSegment =
  | { readonly kind: 'key'; readonly key: string }
  | { readonly kind: 'index'; readonly index: number };

/** Where a reference starts. */
export type ReferenceRoot =
  | { readonly kind: 'system'; readonly name: string }
  | { readonly kind: 'app'; readonly name: string }
  | { readonly kind: 'body' }
  | { readonly kind: 'twin' };

export type ComparisonOp = '=' | '!=' | '<' | '>' | '<=' | '>=';
export type ArithmeticOp = '+' | '-' | '*' | '/' | '%';

/** The syntax tree of a route condition. */
export type Expr =
  | { readonly type: 'literal'; readonly value: QueryValue }
  | { readonly type: 'array'; readonly items: readonly Expr[] }
  | { readonly type: 'ref'; readonly root: ReferenceRoot; readonly path: readonly PathSegment[] }
  | { readonly type: 'not'; readonly operand: Expr }
  | { readonly type: 'negate' | 'plus'; readonly operand: Expr }
  | { readonly type: 'and' | 'or'; readonly left: Expr; readonly right: Expr }
  | { readonly type: 'compare'; readonly op: ComparisonOp; readonly left: Expr; readonly right: Expr }
  | { readonly type: 'arith'; readonly op: ArithmeticOp; readonly left: Expr; readonly right: Expr }
  | { readonly type: 'call'; readonly name: string; readonly args: readonly Expr[] };

/** Deeper nesting than any real route needs; the limit keeps a hostile condition off the stack's edge. */
const MAX_DEPTH = 64;

const COMPARISON: ReadonlySet<Punct> = new Set(['=', '!=', '<>', '<', '>', '<=', '>=']);

class Parser {
  private readonly tokens: Token[];
  private at = 0;
  private depth = 0;

  constructor(private readonly source: string) {
    this.tokens = tokenize(source);
  }

  parseCondition(): Expr {
    const expr = this.parseOr();
    const next = this.peek();
    if (next.kind !== 'eof') this.fail('an operator (AND, OR, =, ...) or the end of the condition', next);
    return expr;
  }

  private peek(): Token {
    return this.tokens[this.at] as Token;
  }

  private advance(): Token {
    const token = this.peek();
    if (token.kind !== 'eof') this.at++;
    return token;
  }

  private fail(expected: string, found: Token): never {
    const what = found.kind === 'eof' ? 'end of input' : `'${found.raw}'`;
    throw new RouteQueryError(
      `expected ${expected} at position ${found.pos} but found ${what}`,
      found.pos,
      this.source,
    );
  }

  private isKeyword(token: Token, keyword: string): boolean {
    return token.kind === 'ident' && !token.dollar && token.name.toUpperCase() === keyword;
  }

  private isPunct(token: Token, value: Punct): boolean {
    return token.kind === 'punct' && token.value === value;
  }

  private expectPunct(value: Punct): Token {
    const token = this.peek();
    if (!this.isPunct(token, value)) this.fail(`'${value}'`, token);
    return this.advance();
  }

  private nest<T>(at: Token, parse: () => T): T {
    if (++this.depth > MAX_DEPTH) {
      throw new RouteQueryError(
        `nesting deeper than ${MAX_DEPTH} levels at position ${at.pos}`,
        at.pos,
        this.source,
      );
    }
    try {
      return parse();
    } finally {
      this.depth--;
    }
  }

  private parseOr(): Expr {
    let left = this.parseAnd();
    while (this.isKeyword(this.peek(), 'OR')) {
      this.advance();
      left = { type: 'or', left, right: this.parseAnd() };
    }
    return left;
  }

  private parseAnd(): Expr {
    let left = this.parseNot();
    while (this.isKeyword(this.peek(), 'AND')) {
      this.advance();
      left = { type: 'and', left, right: this.parseNot() };
    }
    return left;
  }

  private parseNot(): Expr {
    const token = this.peek();
    if (this.isKeyword(token, 'NOT')) {
      this.advance();
      return this.nest(token, () => ({ type: 'not', operand: this.parseNot() }));
    }
    return this.parseComparison();
  }

  private parseComparison(): Expr {
    let left = this.parseAdditive();
    for (
      let token = this.peek();
      token.kind === 'punct' && COMPARISON.has(token.value);
      token = this.peek()
    ) {
      this.advance();
      const op: ComparisonOp = token.value === '<>' ? '!=' : (token.value as ComparisonOp);
      left = { type: 'compare', op, left, right: this.parseAdditive() };
    }
    return left;
  }

  private parseAdditive(): Expr {
    let left = this.parseMultiplicative();
    for (let token = this.peek(); this.isPunct(token, '+') || this.isPunct(token, '-'); token = this.peek()) {
      this.advance();
      const op = (token as { value: ArithmeticOp }).value;
      left = { type: 'arith', op, left, right: this.parseMultiplicative() };
    }
    return left;
  }

  private parseMultiplicative(): Expr {
    let left = this.parseUnary();
    for (
      let token = this.peek();
      this.isPunct(token, '*') || this.isPunct(token, '/') || this.isPunct(token, '%');
      token = this.peek()
    ) {
      this.advance();
      const op = (token as { value: ArithmeticOp }).value;
      left = { type: 'arith', op, left, right: this.parseUnary() };
    }
    return left;
  }

  private parseUnary(): Expr {
    const token = this.peek();
    if (this.isPunct(token, '-') || this.isPunct(token, '+')) {
      this.advance();
      return this.nest(token, () => {
        const operand = this.parseUnary();
        if (token.raw === '+') return { type: 'plus', operand };
        // Fold "-5" into a constant so array constants and literals stay constants.
        if (operand.type === 'literal' && typeof operand.value === 'number') {
          return { type: 'literal', value: -operand.value };
        }
        return { type: 'negate', operand };
      });
    }
    return this.parsePrimary();
  }

  private parsePrimary(): Expr {
    const token = this.peek();
    switch (token.kind) {
      case 'number':
      case 'string':
        this.advance();
        return { type: 'literal', value: token.value };
      case 'punct':
        if (token.value === '(') {
          this.advance();
          const inner = this.nest(token, () => this.parseOr());
          this.expectPunct(')');
          return inner;
        }
        if (token.value === '[') return this.parseArray();
        return this.fail('an expression', token);
      case 'ident':
        return token.dollar ? this.parseDollarReference() : this.parseWord();
      case 'eof':
        return this.fail('an expression', token);
    }
  }

  private parseArray(): Expr {
    const open = this.advance();
    const items: Expr[] = [];
    if (this.isPunct(this.peek(), ']')) {
      this.advance();
      return { type: 'array', items };
    }
    this.nest(open, () => {
      for (;;) {
        items.push(this.parseOr());
        const next = this.peek();
        if (this.isPunct(next, ',')) {
          this.advance();
          continue;
        }
        if (this.isPunct(next, ']')) {
          this.advance();
          return;
        }
        this.fail("',' or ']'", next);
      }
    });
    return { type: 'array', items };
  }

  private parseWord(): Expr {
    const token = this.advance();
    if (token.kind !== 'ident') return this.fail('a name', token);
    const upper = token.name.toUpperCase();
    switch (upper) {
      case 'TRUE':
        return { type: 'literal', value: true };
      case 'FALSE':
        return { type: 'literal', value: false };
      case 'NULL':
        return { type: 'literal', value: null };
      case 'UNDEFINED':
        return { type: 'literal', value: undefined };
      case 'AND':
      case 'OR':
      case 'NOT':
        return this.fail('an expression', token);
    }
    if (this.isPunct(this.peek(), '(')) return this.parseCall(token);
    return { type: 'ref', root: { kind: 'app', name: token.name }, path: this.parsePath() };
  }

  private parseCall(nameToken: Token & { kind: 'ident' }): Expr {
    const name = nameToken.name.toUpperCase();
    const fn = Object.hasOwn(BUILTIN_FUNCTIONS, name) ? BUILTIN_FUNCTIONS[name] : undefined;
    if (fn === undefined) {
      throw new RouteQueryError(
        `unknown function '${nameToken.name}' at position ${nameToken.pos}`,
        nameToken.pos,
        this.source,
      );
    }
    const open = this.advance();
    const args: Expr[] = [];
    if (this.isPunct(this.peek(), ')')) {
      this.advance();
    } else {
      this.nest(open, () => {
        for (;;) {
          args.push(this.parseOr());
          const next = this.peek();
          if (this.isPunct(next, ',')) {
            this.advance();
            continue;
          }
          if (this.isPunct(next, ')')) {
            this.advance();
            return;
          }
          this.fail("',' or ')'", next);
        }
      });
    }
    if (args.length < fn.minArgs || args.length > fn.maxArgs) {
      throw new RouteQueryError(
        `${name} expects ${describeArity(fn)} but got ${args.length} at position ${nameToken.pos}`,
        nameToken.pos,
        this.source,
      );
    }
    return { type: 'call', name, args };
  }

  private parseDollarReference(): Expr {
    const token = this.advance();
    if (token.kind !== 'ident') return this.fail('a name', token);
    const lower = token.name.toLowerCase();
    const root: ReferenceRoot =
      lower === 'body'
        ? { kind: 'body' }
        : lower === 'twin'
          ? { kind: 'twin' }
          : { kind: 'system', name: token.name };
    return { type: 'ref', root, path: this.parsePath() };
  }

  private parsePath(): PathSegment[] {
    const path: PathSegment[] = [];
    for (;;) {
      const token = this.peek();
      if (this.isPunct(token, '.')) {
        this.advance();
        const name = this.advance();
        // Twin documents carry keys such as $metadata and $version, so '$' is allowed here.
        if (name.kind !== 'ident') this.fail('a property name', name);
        path.push({ kind: 'key', key: (name as { raw: string }).raw });
      } else if (this.isPunct(token, '[')) {
        this.advance();
        const key = this.advance();
        if (key.kind === 'string') {
          path.push({ kind: 'key', key: key.value });
        } else if (key.kind === 'number' && key.integer) {
          path.push({ kind: 'index', index: key.value });
        } else {
          this.fail('an array index (a non-negative integer) or a quoted property name', key);
        }
        this.expectPunct(']');
      } else {
        return path;
      }
    }
  }
}

/** Parses a route condition into a syntax tree; throws {@link RouteQueryError} on bad input. */
export function parseCondition(source: string): Expr {
  return new Parser(source).parseCondition();
}
