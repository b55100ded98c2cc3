import { RouteQueryError } from './errors.ts';

/** Punctuation and operator tokens of the routing query language. */
export type Punct =
  | '('
  | ')'
  | '['
  | ']'
  | ','
  | '.'
  | '='
  | '!='
  | '<>'
  | '<'
  | '>'
  | '<='
  | '>='
  | '+'
  | '-'
  | '*'
  | '/'
  | '%';

interface TokenBase {
  /** 1-based position of the first character. */
  readonly pos: number;
  /** Source text, for error messages. */
  readonly raw: string;
}

/** A word: keyword, function name, property name or path segment; `dollar` when written `$name`. */
export interface IdentToken extends TokenBase {
  readonly kind: 'ident';
  /** The name without its `$` prefix. */
  readonly name: string;
  readonly dollar: boolean;
}

export interface NumberToken extends TokenBase {
  readonly kind: 'number';
  readonly value: number;
  /** Written without a fraction, exponent or hex prefix (usable as an array index). */
  readonly integer: boolean;
}

export interface StringToken extends TokenBase {
  readonly kind: 'string';
  readonly value: string;
}

export interface PunctToken extends TokenBase {
  readonly kind: 'punct';
  readonly value: Punct;
}

export interface EofToken extends TokenBase {
  readonly kind: 'eof';
}

export type Token = IdentToken | NumberToken | StringToken | PunctToken | EofToken;

const IDENT_START = /[\p{L}_]/u;
const IDENT_PART = /[\p{L}\p{N}_]/u;
const DIGIT = /[0-9]/;
const HEX = /[0-9a-fA-F]/;

const TWO_CHAR: ReadonlySet<string> = new Set(['!=', '<>', '<=', '>=']);
const ONE_CHAR: ReadonlySet<string> = new Set([
  '(',
  ')',
  '[',
  ']',
  ',',
  '.',
  '=',
  '<',
  '>',
  '+',
  '-',
  '*',
  '/',
  '%',
]);

/**
 * Splits a route condition into tokens. Positions are 1-based so error messages match what an
 * editor shows in a one-line condition.
 */
export function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  const fail = (message: string, index: number): never => {
    throw new RouteQueryError(`${message} at position ${index + 1}`, index + 1, source);
  };

  while (i < source.length) {
    const ch = source[i] as string;
    if (/\s/.test(ch)) {
      i++;
      continue;
    }
    const start = i;

    if (ch === '$' || IDENT_START.test(ch)) {
      const dollar = ch === '$';
      if (dollar) {
        i++;
        if (i >= source.length || !IDENT_START.test(source[i] as string)) {
          fail("expected a name after '$'", start);
        }
      }
      while (i < source.length) {
        const c = source[i] as string;
        if (IDENT_PART.test(c)) {
          i++;
        } else if (
          dollar &&
          c === '-' &&
          i + 1 < source.length &&
          IDENT_START.test(source[i + 1] as string)
        ) {
          // System property names such as $iothub-enqueuedtime and $dt-dataschema contain hyphens.
          i++;
        } else {
          break;
        }
      }
      const raw = source.slice(start, i);
      tokens.push({ kind: 'ident', name: dollar ? raw.slice(1) : raw, dollar, pos: start + 1, raw });
      continue;
    }

    if (DIGIT.test(ch)) {
      let integer = true;
      let value: number;
      if (ch === '0' && (source[i + 1] === 'x' || source[i + 1] === 'X')) {
        i += 2;
        const digitsStart = i;
        while (i < source.length && HEX.test(source[i] as string)) i++;
        if (i === digitsStart) fail('expected hexadecimal digits', digitsStart);
        value = Number.parseInt(source.slice(digitsStart, i), 16);
        integer = false;
      } else {
        while (i < source.length && DIGIT.test(source[i] as string)) i++;
        if (source[i] === '.' && DIGIT.test(source[i + 1] ?? '')) {
          integer = false;
          i++;
          while (i < source.length && DIGIT.test(source[i] as string)) i++;
        }
        if (source[i] === 'e' || source[i] === 'E') {
          const save = i;
          i++;
          if (source[i] === '+' || source[i] === '-') i++;
          if (DIGIT.test(source[i] ?? '')) {
            integer = false;
            while (i < source.length && DIGIT.test(source[i] as string)) i++;
          } else {
            i = save;
          }
        }
        value = Number(source.slice(start, i));
      }
      if (i < source.length && IDENT_PART.test(source[i] as string)) {
        fail(`invalid number '${source.slice(start, i + 1)}'`, start);
      }
      tokens.push({ kind: 'number', value, integer, pos: start + 1, raw: source.slice(start, i) });
      continue;
    }

    if (ch === "'" || ch === '"') {
      i++;
      let value = '';
      let closed = false;
      while (i < source.length) {
        const c = source[i] as string;
        if (c === ch) {
          // SQL-style doubled quote inside a literal stands for one quote.
          if (source[i + 1] === ch) {
            value += ch;
            i += 2;
            continue;
          }
          i++;
          closed = true;
          break;
        }
        if (c === '\\') {
          const e = source[i + 1];
          if (e === undefined) break;
          const simple: Record<string, string> = {
            "'": "'",
            '"': '"',
            '\\': '\\',
            '/': '/',
            b: '\b',
            f: '\f',
            n: '\n',
            r: '\r',
            t: '\t',
          };
          const mapped = simple[e];
          if (mapped !== undefined) {
            value += mapped;
            i += 2;
            continue;
          }
          if (e === 'u') {
            const hex = source.slice(i + 2, i + 6);
            if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail('expected 4 hexadecimal digits after \\u', i);
            value += String.fromCharCode(Number.parseInt(hex, 16));
            i += 6;
            continue;
          }
          fail(`invalid escape sequence '\\${e}'`, i);
        }
        value += c;
        i++;
      }
      if (!closed) fail('unterminated string literal starting', start);
      tokens.push({ kind: 'string', value, pos: start + 1, raw: source.slice(start, i) });
      continue;
    }

    const two = source.slice(i, i + 2);
    if (TWO_CHAR.has(two)) {
      tokens.push({ kind: 'punct', value: two as Punct, pos: start + 1, raw: two });
      i += 2;
      continue;
    }
    if (ONE_CHAR.has(ch)) {
      tokens.push({ kind: 'punct', value: ch as Punct, pos: start + 1, raw: ch });
      i++;
      continue;
    }
    fail(`unexpected character '${ch}'`, start);
  }
  tokens.push({ kind: 'eof', pos: source.length + 1, raw: '' });
  return tokens;
}
