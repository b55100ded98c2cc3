/** One line of an import file. */
export interface Line {
  /** Line number, from 1. */
  readonly number: number;
  /** Byte offset just after the line and its newline: where the next line starts. */
  readonly endOffset: number;
  /** The line without its `\n` / `\r\n` (and without a UTF-8 byte order mark on line 1); absent with `problem`. */
  readonly text?: string;
  /** Why the line could not be read as text: too long, or not UTF-8. */
  readonly problem?: string;
}

const NEWLINE = 0x0a;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Splits a byte stream into lines without holding more than one line (up to `maxLineBytes`) and one chunk
 * of the stream in memory, and knows the byte offset after each line, so a job can save "line N ends at
 * byte B" and later resume with a ranged read from B.
 *
 * A line longer than `maxLineBytes` is skipped to its end and reported with a `problem`, as is a line that
 * is not valid UTF-8; neither stops the reader.
 *
 * @example
 * const reader = new LineReader(body, { offset: 0, line: 0 }, 65536);
 * for (let line = await reader.next(); line; line = await reader.next()) console.log(line.number, line.text);
 */
export class LineReader {
  private readonly source: AsyncIterator<Uint8Array>;
  private buffer: Buffer = Buffer.alloc(0);
  /** File offset of `buffer[0]`. */
  private offset: number;
  private line: number;
  private ended = false;
  /** Bytes of a too-long line dropped so far (its end not found yet). */
  private dropping = 0;

  constructor(
    source: AsyncIterable<Uint8Array>,
    start: { readonly offset: number; readonly line: number },
    private readonly maxLineBytes: number,
  ) {
    this.source = source[Symbol.asyncIterator]();
    this.offset = start.offset;
    this.line = start.line;
  }

  /** The next line, or `undefined` at the end of the stream. */
  async next(): Promise<Line | undefined> {
    for (;;) {
      const newline = this.buffer.indexOf(NEWLINE);
      if (newline !== -1) return this.take(newline, newline + 1);
      if (this.buffer.length > this.maxLineBytes) {
        this.dropping += this.buffer.length;
        this.offset += this.buffer.length;
        this.buffer = Buffer.alloc(0);
      }
      if (this.ended) {
        if (this.buffer.length === 0 && this.dropping === 0) return undefined;
        return this.take(this.buffer.length, this.buffer.length);
      }
      const chunk = await this.source.next();
      if (chunk.done) this.ended = true;
      else
        this.buffer =
          this.buffer.length === 0 ? Buffer.from(chunk.value) : Buffer.concat([this.buffer, chunk.value]);
    }
  }

  /** Stops reading the source. */
  async close(): Promise<void> {
    this.ended = true;
    await this.source.return?.();
  }

  private take(contentEnd: number, consumed: number): Line {
    const bytes = this.buffer.subarray(0, contentEnd);
    const dropped = this.dropping;
    this.buffer = this.buffer.subarray(consumed);
    this.offset += consumed;
    this.dropping = 0;
    this.line += 1;
    const base = { number: this.line, endOffset: this.offset };
    if (dropped > 0 || bytes.length > this.maxLineBytes) {
      return { ...base, problem: `line is longer than ${this.maxLineBytes} bytes` };
    }
    let text: string;
    try {
      text = utf8.decode(bytes);
    } catch {
      return { ...base, problem: 'line is not valid UTF-8' };
    }
    if (text.endsWith('\r')) text = text.slice(0, -1);
    if (this.line === 1 && text.startsWith('\uFEFF')) text = text.slice(1);
    return { ...base, text };
  }
}
