import type { BinaryOp, CastType, Column, Expr, Statement } from './ast.ts';
import { IotSqlError } from './errors.ts';
import { type Token, tokenize } from './lexer.ts';
import { validateTopicFilter } from './topic.ts';

/** Words that cannot name a payload field (they end or structure an expression). */
const RESERVED = new Set([
  'SELECT',
  'FROM',
  'WHERE',
  'AND',
  'OR',
  'NOT',
  'AS',
  'IS',
  'WHEN',
  'THEN',
  'ELSE',
  'END',
]);

const CAST_TYPES: Readonly<Record<string, CastType>> = {
  STRING: 'String',
  INT: 'Int',
  DECIMAL: 'Decimal',
  BOOL: 'Bool',
  BOOLEAN: 'Bool',
};

const COMPARISONS: Readonly<Record<string, BinaryOp>> = {
  '=': '=',
  '<>': '<>',
  '!=': '<>',
  '<': '<',
  '>': '>',
  '<=': '<=',
  '>=': '>=',
};

/** Describes a token for an error message: `'WHERE'`, `'*'` or `the end of the statement`. */
function describe(token: Token): string {
  if (token.kind === 'eof') return 'the end of the statement';
  return token.kind === 'string' ? token.raw : `'${token.raw}'`;
}

/** A recursive-descent parser over the token list of one statement or one template expression. */
class Parser {
  private readonly tokens: Token[];
  private pos = 0;

  constructor(private readonly source: string) {
    this.tokens = tokenize(source);
  }

  /** `SELECT [VALUE] expr | *, ... FROM 'filter' [WHERE expr]` followed by the end. */
  parseStatement(): Statement {
    this.expectKeyword('SELECT');
    let select: Statement['select'];
    if (this.isKeyword(this.peek(), 'VALUE') && !this.valueIsField()) {
      this.next();
      select = { kind: 'value', expr: this.parseExpr() };
    } else {
      select = { kind: 'columns', columns: this.parseColumns() };
    }
    this.expectKeyword('FROM');
    const filterToken = this.peek();
    if (filterToken.kind !== 'string') {
      throw this.error(filterToken, "a quoted topic filter such as 'devices/+/messages/events/#'");
    }
    this.next();
    const problem = validateTopicFilter(filterToken.text);
    if (problem !== undefined) throw this.error(filterToken, `a valid MQTT topic filter (${problem})`);
    let where: Expr | undefined;
    if (this.isKeyword(this.peek(), 'WHERE')) {
      this.next();
      where = this.parseExpr();
    }
    this.expectEnd(where === undefined ? 'WHERE or the end of the statement' : 'an operator or the end');
    return { select, topicFilter: filterToken.text, where };
  }

  /** A single expression followed by the end of input (the inside of a `${...}` template). */
  parseStandaloneExpr(): Expr {
    const expr = this.parseExpr();
    this.expectEnd('an operator or the end of the expression');
    return expr;
  }

  // `SELECT value AS v` or `SELECT value, x` reads a field named `value`, not SELECT VALUE.
  private valueIsField(): boolean {
    const after = this.tokens[this.pos + 1];
    if (after === undefined) return false;
    if (after.kind === 'op') return [',', '.', '['].includes(after.text);
    return this.isKeyword(after, 'AS') || this.isKeyword(after, 'FROM');
  }

  private parseColumns(): Column[] {
    const columns: Column[] = [];
    do {
      const token = this.peek();
      if (token.kind === 'op' && token.text === '*') {
        this.next();
        columns.push({ kind: 'star' });
        continue;
      }
      const start = token.offset;
      const expr = this.parseExpr();
      const end = this.previousEnd();
      let name: string;
      if (this.isKeyword(this.peek(), 'AS')) {
        this.next();
        const alias = this.peek();
        if (alias.kind !== 'ident' && alias.kind !== 'string')
          throw this.error(alias, 'a column name after AS');
        this.next();
        name = alias.text;
      } else {
        name = defaultColumnName(expr, this.source.slice(start, end));
      }
      columns.push({ kind: 'expr', expr, name });
    } while (this.acceptOp(','));
    return columns;
  }

  private parseExpr(): Expr {
    return this.parseOr();
  }

  private parseOr(): Expr {
    let left = this.parseAnd();
    while (this.isKeyword(this.peek(), 'OR')) {
      const offset = this.next().offset;
      left = { type: 'binary', op: 'OR', left, right: this.parseAnd(), offset };
    }
    return left;
  }

  private parseAnd(): Expr {
    let left = this.parseNot();
    while (this.isKeyword(this.peek(), 'AND')) {
      const offset = this.next().offset;
      left = { type: 'binary', op: 'AND', left, right: this.parseNot(), offset };
    }
    return left;
  }

  private parseNot(): Expr {
    if (this.isKeyword(this.peek(), 'NOT')) {
      const offset = this.next().offset;
      return { type: 'unary', op: 'NOT', operand: this.parseNot(), offset };
    }
    return this.parseComparison();
  }

  private parseComparison(): Expr {
    let left = this.parseAdditive();
    for (;;) {
      const token = this.peek();
      if (token.kind === 'op' && COMPARISONS[token.text] !== undefined) {
        this.next();
        left = {
          type: 'binary',
          op: COMPARISONS[token.text]!,
          left,
          right: this.parseAdditive(),
          offset: token.offset,
        };
        continue;
      }
      if (this.isKeyword(token, 'IS')) {
        this.next();
        const negated = this.isKeyword(this.peek(), 'NOT');
        if (negated) this.next();
        const what = this.peek();
        if (!this.isKeyword(what, 'NULL') && !this.isKeyword(what, 'UNDEFINED')) {
          throw this.error(what, negated ? 'NULL or UNDEFINED' : 'NOT, NULL or UNDEFINED');
        }
        this.next();
        left = {
          type: 'is',
          operand: left,
          negated,
          what: what.text.toUpperCase() as 'NULL' | 'UNDEFINED',
          offset: token.offset,
        };
        continue;
      }
      return left;
    }
  }

  private parseAdditive(): Expr {
    let left = this.parseMultiplicative();
    for (;;) {
      const token = this.peek();
      if (token.kind !== 'op' || (token.text !== '+' && token.text !== '-')) return left;
      this.next();
      left = {
        type: 'binary',
        op: token.text,
        left,
        right: this.parseMultiplicative(),
        offset: token.offset,
      };
    }
  }

  private parseMultiplicative(): Expr {
    let left = this.parseUnary();
    for (;;) {
      const token = this.peek();
      if (token.kind !== 'op' || (token.text !== '*' && token.text !== '/' && token.text !== '%'))
        return left;
      this.next();
      left = { type: 'binary', op: token.text, left, right: this.parseUnary(), offset: token.offset };
    }
  }

  private parseUnary(): Expr {
    const token = this.peek();
    if (token.kind === 'op' && (token.text === '-' || token.text === '+')) {
      this.next();
      const operand = this.parseUnary();
      if (token.text === '+') return operand;
      if (operand.type === 'literal' && typeof operand.value === 'number') {
        return { type: 'literal', value: -operand.value, offset: token.offset };
      }
      return { type: 'unary', op: '-', operand, offset: token.offset };
    }
    return this.parsePostfix();
  }

  private parsePostfix(): Expr {
    let expr = this.parsePrimary();
    for (;;) {
      if (this.acceptOp('.')) {
        const name = this.peek();
        if (name.kind !== 'ident') throw this.error(name, 'a field name after .');
        this.next();
        expr = { type: 'member', object: expr, name: name.text, offset: name.offset };
      } else if (this.peekOp('[')) {
        const offset = this.next().offset;
        const index = this.parseExpr();
        this.expectOp(']');
        expr = { type: 'index', object: expr, index, offset };
      } else {
        return expr;
      }
    }
  }

  private parsePrimary(): Expr {
    const token = this.peek();
    const offset = token.offset;
    switch (token.kind) {
      case 'number':
        this.next();
        return { type: 'literal', value: Number(token.text), offset };
      case 'string':
        this.next();
        return { type: 'literal', value: token.text, offset };
      case 'ident': {
        const upper = token.text.toUpperCase();
        if (upper === 'TRUE' || upper === 'FALSE') {
          this.next();
          return { type: 'literal', value: upper === 'TRUE', offset };
        }
        if (upper === 'NULL') {
          this.next();
          return { type: 'literal', value: null, offset };
        }
        if (upper === 'CASE') return this.parseCase();
        if (RESERVED.has(upper)) throw this.error(token, 'an expression');
        this.next();
        if (this.peekOp('(')) return this.parseCall(token);
        return { type: 'field', name: token.text, offset };
      }
      case 'op':
        if (token.text === '(') {
          this.next();
          const inner = this.parseExpr();
          this.expectOp(')');
          return inner;
        }
        if (token.text === '{') return this.parseObject();
        if (token.text === '[') return this.parseArray();
        throw this.error(token, 'an expression');
      default:
        throw this.error(token, 'an expression');
    }
  }

  private parseCall(nameToken: Token): Expr {
    const name = nameToken.text.toLowerCase();
    this.expectOp('(');
    if (name === 'cast') {
      const operand = this.parseExpr();
      this.expectKeyword('AS');
      const typeToken = this.peek();
      const to = typeToken.kind === 'ident' ? CAST_TYPES[typeToken.text.toUpperCase()] : undefined;
      if (to === undefined) throw this.error(typeToken, 'a cast type (String, Int, Decimal or Bool)');
      this.next();
      this.expectOp(')');
      return { type: 'cast', operand, to, offset: nameToken.offset };
    }
    const args: Expr[] = [];
    if (!this.acceptOp(')')) {
      do {
        const token = this.peek();
        const after = this.tokens[this.pos + 1];
        if (
          token.kind === 'op' &&
          token.text === '*' &&
          after?.kind === 'op' &&
          (after.text === ',' || after.text === ')')
        ) {
          this.next();
          args.push({ type: 'wildcard', offset: token.offset });
        } else {
          args.push(this.parseExpr());
        }
      } while (this.acceptOp(','));
      this.expectOp(')', "',' or ')'");
    }
    return { type: 'call', name, args, offset: nameToken.offset };
  }

  private parseCase(): Expr {
    const offset = this.next().offset;
    const subject = this.isKeyword(this.peek(), 'WHEN') ? undefined : this.parseExpr();
    const whens: { when: Expr; result: Expr }[] = [];
    while (this.isKeyword(this.peek(), 'WHEN')) {
      this.next();
      const when = this.parseExpr();
      this.expectKeyword('THEN');
      whens.push({ when, result: this.parseExpr() });
    }
    if (whens.length === 0) throw this.error(this.peek(), 'WHEN');
    let otherwise: Expr | undefined;
    if (this.isKeyword(this.peek(), 'ELSE')) {
      this.next();
      otherwise = this.parseExpr();
    }
    this.expectKeyword('END');
    return { type: 'case', subject, whens, otherwise, offset };
  }

  private parseObject(): Expr {
    const offset = this.next().offset;
    const entries: (readonly [string, Expr])[] = [];
    if (!this.acceptOp('}')) {
      do {
        const key = this.peek();
        if (key.kind !== 'string' && key.kind !== 'ident') throw this.error(key, 'an object key');
        this.next();
        this.expectOp(':');
        entries.push([key.text, this.parseExpr()]);
      } while (this.acceptOp(','));
      this.expectOp('}', "',' or '}'");
    }
    return { type: 'object', entries, offset };
  }

  private parseArray(): Expr {
    const offset = this.next().offset;
    const items: Expr[] = [];
    if (!this.acceptOp(']')) {
      do items.push(this.parseExpr());
      while (this.acceptOp(','));
      this.expectOp(']', "',' or ']'");
    }
    return { type: 'array', items, offset };
  }

  private peek(): Token {
    return this.tokens[this.pos]!;
  }

  private next(): Token {
    const token = this.tokens[this.pos]!;
    if (token.kind !== 'eof') this.pos++;
    return token;
  }

  private previousEnd(): number {
    const prev = this.tokens[this.pos - 1];
    return prev === undefined ? 0 : prev.offset + prev.raw.length;
  }

  private isKeyword(token: Token, keyword: string): boolean {
    return token.kind === 'ident' && token.text.toUpperCase() === keyword;
  }

  private peekOp(op: string): boolean {
    const token = this.peek();
    return token.kind === 'op' && token.text === op;
  }

  private acceptOp(op: string): boolean {
    if (!this.peekOp(op)) return false;
    this.next();
    return true;
  }

  private expectOp(op: string, expected = `'${op}'`): void {
    if (!this.acceptOp(op)) throw this.error(this.peek(), expected);
  }

  private expectKeyword(keyword: string): void {
    const token = this.peek();
    if (!this.isKeyword(token, keyword)) throw this.error(token, keyword);
    this.next();
  }

  private expectEnd(expected: string): void {
    const token = this.peek();
    if (token.kind !== 'eof') throw this.error(token, expected);
  }

  private error(token: Token, expected: string): IotSqlError {
    return new IotSqlError(this.source, token.offset, expected, describe(token));
  }
}

/** The output key of an un-aliased column: the last field name of a path, else the source text. */
function defaultColumnName(expr: Expr, text: string): string {
  if (expr.type === 'field' || expr.type === 'member') return expr.name;
  return text.trim();
}

/** Parses a full rule statement. Throws IotSqlError naming the position on bad syntax. */
export function parseStatement(sql: string): Statement {
  return new Parser(sql).parseStatement();
}

/** Parses one expression (the inside of a `${...}` substitution template). */
export function parseExpression(text: string): Expr {
  return new Parser(text).parseStandaloneExpr();
}
