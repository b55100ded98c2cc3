import { IotSqlError } from './errors.ts';

/** The kinds of token the IoT SQL lexer produces. Keywords are identifiers; the parser decides. */
export type TokenKind = 'ident' | 'number' | 'string' | 'op' | 'eof';

/** One lexical token with its 0-based offset in the source text. */
export interface Token {
  readonly kind: TokenKind;
  /** Identifier name, operator text, decoded string value or number text. */
  readonly text: string;
  /** The token exactly as written (quotes included), for error messages and default column names. */
  readonly raw: string;
  readonly offset: number;
}

const OPERATORS = [
  '<>',
  '!=',
  '<=',
  '>=',
  '=',
  '<',
  '>',
  '(',
  ')',
  ',',
  '.',
  '*',
  '+',
  '-',
  '/',
  '%',
  '[',
  ']',
  '{',
  '}',
  ':',
];

const isIdentStart = (c: string): boolean => /[A-Za-z_]/.test(c);
const isIdentPart = (c: string): boolean => /[A-Za-z0-9_]/.test(c);
const isDigit = (c: string): boolean => c >= '0' && c <= '9';

/** Splits IoT SQL text into tokens; throws IotSqlError on an unterminated string or a stray character. */
export function tokenize(sql: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < sql.length) {
    const c = sql[i]!;
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r') {
      i++;
      continue;
    }
    const start = i;
    if (isIdentStart(c)) {
      while (i < sql.length && isIdentPart(sql[i]!)) i++;
      const text = sql.slice(start, i);
      tokens.push({ kind: 'ident', text, raw: text, offset: start });
      continue;
    }
    if (isDigit(c) || (c === '.' && isDigit(sql[i + 1] ?? ''))) {
      while (i < sql.length && isDigit(sql[i]!)) i++;
      if (sql[i] === '.' && isDigit(sql[i + 1] ?? '')) {
        i++;
        while (i < sql.length && isDigit(sql[i]!)) i++;
      }
      if ((sql[i] === 'e' || sql[i] === 'E') && /^[eE][+-]?\d/.test(sql.slice(i, i + 3))) {
        i += sql[i + 1] === '+' || sql[i + 1] === '-' ? 2 : 1;
        while (i < sql.length && isDigit(sql[i]!)) i++;
      }
      const text = sql.slice(start, i);
      tokens.push({ kind: 'number', text, raw: text, offset: start });
      continue;
    }
    if (c === "'" || c === '"') {
      i++;
      let value = '';
      let closed = false;
      while (i < sql.length) {
        const ch = sql[i]!;
        if (ch === '\\' && i + 1 < sql.length) {
          const next = sql[i + 1]!;
          value += next === 'n' ? '\n' : next === 't' ? '\t' : next === 'r' ? '\r' : next;
          i += 2;
          continue;
        }
        if (ch === c) {
          // SQL style doubled quote: 'it''s'
          if (sql[i + 1] === c) {
            value += c;
            i += 2;
            continue;
          }
          closed = true;
          i++;
          break;
        }
        value += ch;
        i++;
      }
      if (!closed) throw new IotSqlError(sql, start, `a closing ${c}`, 'the end of the statement');
      tokens.push({ kind: 'string', text: value, raw: sql.slice(start, i), offset: start });
      continue;
    }
    const op = OPERATORS.find((o) => sql.startsWith(o, i));
    if (op === undefined) throw new IotSqlError(sql, start, 'a token', `'${c}'`);
    i += op.length;
    tokens.push({ kind: 'op', text: op, raw: op, offset: start });
  }
  tokens.push({ kind: 'eof', text: '', raw: '', offset: sql.length });
  return tokens;
}
