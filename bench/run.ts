/**
 * `npm run bench` runs every bench; `npm run bench -- routing d2c` runs the named ones;
 * `--name=value` sets a bench's flag (`npm run bench -- d2c --messages=20000`); `--help` lists them.
 * Output is Markdown, so a run pastes straight into BENCHMARKS.md.
 *
 * To add a bench: write `bench/{name}.ts` exporting a `Bench` (see `bench/harness.ts`) and add it
 * to BENCHES below.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { c2d } from './c2d.ts';
import { d2c } from './d2c.ts';
import { type Bench, type BenchContext, fmt, markdownTable } from './harness.ts';
import { memory } from './memory.ts';
import { routing } from './routing.ts';

// The SDK's "Node 20 support ends" notice would land in the middle of the tables.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** Every bench, in the order `npm run bench` runs them. */
const BENCHES: readonly Bench[] = [routing, d2c, c2d, memory];

function cpuModel(): string {
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('model name'));
    return line?.split(':')[1]?.trim() ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function usage(): string {
  const lines = ['usage: npm run bench -- [bench ...] [--flag=value ...]', '', 'benches:'];
  for (const b of BENCHES) {
    lines.push(`  ${b.name.padEnd(10)} ${b.description}`);
    for (const [flag, f] of Object.entries(b.flags ?? {})) {
      lines.push(`    --${`${flag}=N`.padEnd(14)} ${f.description} (default ${f.default})`);
    }
  }
  return lines.join('\n');
}

function parse(argv: readonly string[]): { names: string[]; flags: Map<string, string> } {
  const names: string[] = [];
  const flags = new Map<string, string>();
  for (const arg of argv) {
    if (arg === '--help' || arg === '-h') flags.set('help', 'true');
    else if (arg.startsWith('--')) {
      const [name = '', value = 'true'] = arg.slice(2).split(/=(.*)/s);
      flags.set(name, value);
    } else names.push(arg);
  }
  return { names, flags };
}

async function main(): Promise<number> {
  const { names, flags } = parse(process.argv.slice(2));
  if (flags.has('help')) {
    console.log(usage());
    return 0;
  }
  const unknown = names.filter((n) => !BENCHES.some((b) => b.name === n));
  if (unknown.length > 0) {
    console.error(`unknown bench ${unknown.join(', ')}\n\n${usage()}`);
    return 2;
  }
  const selected = names.length > 0 ? BENCHES.filter((b) => names.includes(b.name)) : BENCHES;
  const known = new Set(selected.flatMap((b) => Object.keys(b.flags ?? {})));
  const stray = [...flags.keys()].filter((f) => !known.has(f));
  if (stray.length > 0) {
    console.error(`no selected bench takes --${stray.join(', --')}\n\n${usage()}`);
    return 2;
  }

  console.log(`# npm run bench ${process.argv.slice(2).join(' ')}`.trimEnd());
  console.log('');
  console.log(
    `${new Date().toISOString()} · ${cpuModel()} · ${availableParallelism()} CPUs · Node ${process.version} · load average ${loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}`,
  );
  let failed = 0;
  for (const bench of selected) {
    console.log(`\n## ${bench.name}: ${bench.description}\n`);
    const ctx: BenchContext = {
      flag: (name) => {
        const declared = bench.flags?.[name];
        if (!declared) throw new Error(`bench ${bench.name} reads undeclared flag --${name}`);
        const raw = flags.get(name);
        if (raw === undefined) return declared.default;
        const value = Number(raw);
        if (!Number.isFinite(value) || value < 0) throw new Error(`--${name}=${raw} is not a number`);
        return value;
      },
      table: (title, rows) => console.log(`\n${title}\n\n${markdownTable(rows)}\n`),
      log: (line) => console.log(`- ${line}`),
    };
    const start = performance.now();
    try {
      await bench.run(ctx);
      console.log(`(${bench.name} took ${fmt((performance.now() - start) / 1000)} s)`);
    } catch (error) {
      failed++;
      console.error(
        `bench ${bench.name} failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
      );
    }
  }
  return failed > 0 ? 1 : 0;
}

process.exitCode = await main();
