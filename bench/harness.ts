/**
 * The small harness every bench uses: a bench is one module exporting a {@link Bench}, listed once
 * in `bench/run.ts`. No benchmarking library: `performance.now()` loops, medians over rounds, and
 * Markdown tables that paste straight into BENCHMARKS.md.
 */

/** A flag a bench reads (`--name=value`), for `--help` and to catch typos. */
export interface BenchFlag {
  readonly description: string;
  readonly default: number;
}

/** What a bench gets from the runner. */
export interface BenchContext {
  /** The value of `--name=value` (a number), or the flag's declared default. */
  flag(name: string): number;
  /** Prints a Markdown table. */
  table(title: string, rows: readonly Record<string, string | number>[]): void;
  /** Prints a line (progress, notes). */
  log(line: string): void;
}

/** One benchmark: `npm run bench -- {name}` runs it alone. */
export interface Bench {
  readonly name: string;
  /** One line for `--help` and the report heading. */
  readonly description: string;
  readonly flags?: Readonly<Record<string, BenchFlag>>;
  run(ctx: BenchContext): Promise<void>;
}

/** The `p`-th percentile (0..100) of ascending `sorted` values, nearest rank. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] as number;
}

/** The median of unsorted values. */
export function median(values: readonly number[]): number {
  return percentile(
    [...values].sort((a, b) => a - b),
    50,
  );
}

/** `12345.6` → `12,346`; small numbers keep significant digits. */
export function fmt(n: number, digits = 3): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 1000) return Math.round(n).toLocaleString('en-US');
  return Number(n.toPrecision(digits)).toString();
}

/** Renders rows as an aligned Markdown table (columns from the first row's keys). */
export function markdownTable(rows: readonly Record<string, string | number>[]): string {
  const first = rows[0];
  if (!first) return '(no rows)';
  const columns = Object.keys(first);
  const cells = rows.map((r) => columns.map((c) => String(r[c] ?? '')));
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((row) => (row[i] ?? '').length)));
  const numeric = columns.map((_, i) => cells.every((row) => /^[-\d.,×%]*$/.test(row[i] ?? '')));
  const line = (values: readonly string[]) =>
    `| ${values.map((v, i) => (numeric[i] ? v.padStart(widths[i] ?? 0) : v.padEnd(widths[i] ?? 0))).join(' | ')} |`;
  const rule = `| ${widths.map((w, i) => (numeric[i] ? `${'-'.repeat(Math.max(1, w - 1))}:` : '-'.repeat(w))).join(' | ')} |`;
  return [line(columns), rule, ...cells.map(line)].join('\n');
}

/** One case of {@link compareRates}. */
export interface RateCase<T> {
  readonly name: string;
  /** Runs before each round, outside the timing (fresh inputs, say). */
  readonly prepare: () => T;
  /** Does the round's operations and returns how many it did. */
  readonly batch: (input: T) => number;
}

/**
 * Measures the rate (operations per second) of several cases in one run, interleaved round by
 * round (A B C A B C ...), so that whatever else the machine is doing weighs on every case alike
 * and the ratios between them hold even when the absolute numbers wander. Each case gets about
 * `ms` of measured time after `warmupMs` of warm-up; the result is each case's median round.
 */
export function compareRates(
  // biome-ignore lint/suspicious/noExplicitAny: each case has its own input type
  cases: readonly RateCase<any>[],
  options: { readonly ms: number; readonly warmupMs?: number },
): Map<string, { opsPerSecond: number; rounds: number }> {
  const rates = new Map<string, number[]>(cases.map((c) => [c.name, []]));
  const cycle = (record: boolean) => {
    for (const c of cases) {
      const input = c.prepare();
      const start = performance.now();
      const n = c.batch(input);
      const elapsed = performance.now() - start;
      if (record) rates.get(c.name)?.push((n / elapsed) * 1000);
    }
  };
  const warmupUntil = performance.now() + (options.warmupMs ?? 300) * cases.length;
  while (performance.now() < warmupUntil) cycle(false);
  const until = performance.now() + options.ms * cases.length;
  while (performance.now() < until) cycle(true);
  return new Map(
    [...rates].map(([name, r]) => [name, { opsPerSecond: median(r), rounds: r.length }] as const),
  );
}

/** Resolves after `ms`. */
export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
