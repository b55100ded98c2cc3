import { ValidationError } from '../../functions/core/errors.ts';

/** Where in the SQL text a problem was found: a 0-based offset and its 1-based line and column. */
export interface IotSqlPosition {
  /** 0-based character offset into the SQL text. */
  readonly offset: number;
  /** 1-based line number. */
  readonly line: number;
  /** 1-based column number within the line. */
  readonly column: number;
}

/**
 * A rule statement (or substitution template) that the local rules engine cannot compile. The
 * message names the position (`line:column`) and what was expected there, e.g.
 * `iot sql: expected FROM at position 10 (line 1, column 10), found 'WHERE'` (positions are 1-based);
 * `context` carries `sql`, `offset`, `line`,
 * `column`, `expected` and `found`.
 */
export class IotSqlError extends ValidationError {
  /** The position of the offending token. */
  readonly position: IotSqlPosition;

  constructor(sql: string, offset: number, expected: string, found: string, options?: ErrorOptions) {
    const position = positionOf(sql, offset);
    super(
      'InvalidIotSql',
      `iot sql: expected ${expected} at position ${offset + 1} (line ${position.line}, column ${position.column}), found ${found}`,
      { sql, offset, line: position.line, column: position.column, expected, found },
      options,
    );
    this.position = position;
  }
}

/** Computes the 1-based line and column of a 0-based offset into `text`. */
export function positionOf(text: string, offset: number): IotSqlPosition {
  let line = 1;
  let lineStart = 0;
  const end = Math.min(offset, text.length);
  for (let i = 0; i < end; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return { offset, line, column: offset - lineStart + 1 };
}
