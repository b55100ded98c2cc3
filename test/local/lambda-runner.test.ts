import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { build } from 'esbuild';
import { afterEach, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../lib/hub-function.ts';
import {
  DEFAULT_LOCAL_CONCURRENCY,
  environmentLimitsFromEnv,
  FunctionError,
  LambdaRunner,
  type LambdaRunnerOptions,
} from '../../local/lambda-runner.ts';
import type { LocalFunction } from '../../local/template.ts';

const BASE_ENV = { BASE_VAR: 'base', PATH: process.env.PATH ?? '' };

function fn(logicalId: string, fixture: string, extra: Partial<LocalFunction> = {}): LocalFunction {
  return {
    logicalId,
    name: `test-${logicalId}`,
    arn: `arn:aws:lambda:us-east-1:000000000000:function:test-${logicalId}`,
    entry: `test/fixtures/functions/${fixture}.ts`,
    environment: {},
    timeoutSeconds: 2,
    files: {},
    ...extra,
  };
}

const runners: LambdaRunner[] = [];
function runner(
  functions: LocalFunction[],
  lines: string[] = [],
  options: Partial<LambdaRunnerOptions> = {},
): LambdaRunner {
  const r = new LambdaRunner({
    functions,
    projectRoot: PROJECT_ROOT,
    baseEnv: BASE_ENV,
    log: (line) => lines.push(line),
    ...options,
  });
  runners.push(r);
  return r;
}

afterEach(async () => {
  await Promise.all(runners.splice(0).map((r) => r.close()));
});

/** Awaits a rejection and returns it as a FunctionError (fails the test if it is anything else). */
async function functionError(promise: Promise<unknown>): Promise<FunctionError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(FunctionError);
  return error as FunctionError;
}

interface EchoResult {
  x?: string;
  y?: string;
  base?: string;
  functionName?: string;
  timeout?: string;
  keys: string[];
  event: unknown;
}
interface SlowResult {
  threadId: number;
  invocations: number;
  tag?: string;
}

describe('LambdaRunner', () => {
  it("writes each function's bundled files to a folder of its own, its LAMBDA_TASK_ROOT, afresh at every start", async () => {
    const codeDir = mkdtempSync(path.join(tmpdir(), 'runner-code-'));
    try {
      const big = 'x'.repeat(200_000);
      const first = runner(
        [
          fn('ReaderA', 'read-file', { files: { 'routing.json': '{"a":1}', 'big.txt': big } }),
          fn('ReaderB', 'read-file', { files: { 'routing.json': '{"b":2}' } }),
        ],
        [],
        { codeDir },
      );
      const a = (await first.invoke('ReaderA', { name: 'routing.json' })) as {
        root: string;
        content: string;
      };
      const b = (await first.invoke('ReaderB', { name: 'routing.json' })) as {
        root: string;
        content: string;
      };
      expect(a).toEqual({ root: path.join(codeDir, 'ReaderA'), content: '{"a":1}' });
      expect(b).toEqual({ root: path.join(codeDir, 'ReaderB'), content: '{"b":2}' });
      expect(((await first.invoke('ReaderA', { name: 'big.txt' })) as { content: string }).content).toBe(big);
      await first.close();
      // A later template without big.txt: the old file must not linger.
      const second = runner([fn('ReaderA', 'read-file', { files: { 'routing.json': '{"a":2}' } })], [], {
        codeDir,
      });
      expect(
        ((await second.invoke('ReaderA', { name: 'routing.json' })) as { content: string }).content,
      ).toBe('{"a":2}');
      expect(existsSync(path.join(codeDir, 'ReaderA', 'big.txt'))).toBe(false);
    } finally {
      rmSync(codeDir, { recursive: true, force: true });
    }
  });

  it('gives each function its own environment plus the base environment, and passes the event', async () => {
    const previous = process.env.PARENT_ONLY_VAR;
    process.env.PARENT_ONLY_VAR = 'leak';
    try {
      const r = runner([
        fn('EchoA', 'echo-env', { environment: { X: 'from-a' }, timeoutSeconds: 2 }),
        fn('EchoB', 'echo-env', { environment: { X: 'from-b', Y: 'only-b' }, timeoutSeconds: 1 }),
      ]);
      const [a, b] = (await Promise.all([
        r.invoke('EchoA', { hello: 'a', n: [1, 2] }),
        r.invoke('EchoB', { hello: 'b' }),
      ])) as [EchoResult, EchoResult];

      expect(a.x).toBe('from-a');
      expect(a.y).toBeUndefined();
      expect(a.base).toBe('base');
      expect(a.functionName).toBe('test-EchoA');
      expect(a.timeout).toBe('2');
      expect(a.event).toEqual({ hello: 'a', n: [1, 2] });

      expect(b.x).toBe('from-b');
      expect(b.y).toBe('only-b');
      expect(b.base).toBe('base');
      expect(b.functionName).toBe('test-EchoB');
      expect(b.timeout).toBe('1');
      expect(b.event).toEqual({ hello: 'b' });

      // Nothing of the hub's own process environment leaks in.
      const runtimeKeys = [
        'AWS_LAMBDA_FUNCTION_NAME',
        'AWS_LAMBDA_FUNCTION_TIMEOUT',
        'POWERTOOLS_SERVICE_NAME',
      ];
      expect(a.keys).not.toContain('PARENT_ONLY_VAR');
      expect(a.keys).toEqual(expect.arrayContaining(['BASE_VAR', 'PATH', 'X', ...runtimeKeys]));
      expect(a.keys.filter((k) => !['BASE_VAR', 'PATH', 'X', ...runtimeKeys].includes(k))).toEqual([]);
      expect(b.keys.filter((k) => !['BASE_VAR', 'PATH', 'X', 'Y', ...runtimeKeys].includes(k))).toEqual([]);
    } finally {
      if (previous === undefined) delete process.env.PARENT_ONLY_VAR;
      else process.env.PARENT_ONLY_VAR = previous;
    }
  });

  it('turns a thrown error into a FunctionError whose errorType is the error name', async () => {
    const r = runner([fn('Throws', 'throws')]);
    const e = await functionError(r.invoke('Throws', {}));
    expect(e.errorType).toBe('DeviceNotFoundError');
    expect(e.functionName).toBe('test-Throws');
    expect(e.message).toContain('device d1 is not registered');

    // A thrown non-Error still rejects, as a plain Error.
    const s = await functionError(r.invoke('Throws', { kind: 'string' }));
    expect(s.errorType).toBe('Error');
    expect(s.message).toContain('a bare string');
  });

  it('rejects a timed-out invocation with Sandbox.Timedout and replaces the environment', async () => {
    const lines: string[] = [];
    const r = runner([fn('Slow', 'slow', { timeoutSeconds: 1 })], lines);
    const warm = (await r.invoke('Slow', { sleepMs: 0, tag: 'warm' })) as SlowResult;
    expect(warm.invocations).toBe(1);

    const started = Date.now();
    const e = await functionError(r.invoke('Slow', { sleepMs: 10_000 }));
    expect(e.errorType).toBe('Sandbox.Timedout');
    expect(Date.now() - started).toBeLessThan(3000);
    expect(lines.some((l) => l.includes('timed out'))).toBe(true);

    const after = (await r.invoke('Slow', { sleepMs: 0, tag: 'after' })) as SlowResult;
    expect(after.tag).toBe('after');
    // A fresh environment: a new thread, with module state from scratch.
    expect(after.threadId).not.toBe(warm.threadId);
    expect(after.invocations).toBe(1);
  });

  it('rejects when the handler ends its process, and the next invocation gets a new environment', async () => {
    const r = runner([fn('Exits', 'exits')]);
    const before = (await r.invoke('Exits', {})) as { threadId: number };
    const e = await functionError(r.invoke('Exits', { exit: true }));
    expect(e.errorType).toBe('Runtime.ExitError');
    const after = (await r.invoke('Exits', {})) as { threadId: number };
    expect(after.threadId).not.toBe(before.threadId);
  });

  it('reports a module that fails to load as Runtime.ImportModuleError, every time, without harming others', async () => {
    const r = runner([fn('Bad', 'bad-import'), fn('Echo', 'echo-env', { environment: { X: 'ok' } })]);
    const first = await functionError(r.invoke('Bad', {}));
    expect(first.errorType).toBe('Runtime.ImportModuleError');
    expect(first.message).toContain('bad-import fixture fails at module load');
    const second = await functionError(r.invoke('Bad', {}));
    expect(second.errorType).toBe('Runtime.ImportModuleError');
    expect(((await r.invoke('Echo', {})) as EchoResult).x).toBe('ok');
  });

  it('loads the same module fine when its environment lets it', async () => {
    const r = runner([fn('Bad', 'bad-import', { environment: { BAD_IMPORT_DISABLED: 'yes' } })]);
    expect(await r.invoke('Bad', {})).toBe('loaded');
  });

  it('rejects a module without a handler export at load time', async () => {
    const r = runner([fn('NoHandler', 'no-handler')]);
    const e = await functionError(r.invoke('NoHandler', {}));
    expect(e.message).toMatch(/handler/);
  });

  it('rejects an unknown function', async () => {
    const r = runner([fn('Echo', 'echo-env')]);
    await expect(r.invoke('Nope', {})).rejects.toThrow(/no function Nope/);
  });

  it('runs concurrent invocations in environments of their own, one at a time each, up to the limit', async () => {
    const r = runner([fn('Slow', 'slow', { timeoutSeconds: 5 }), fn('Echo', 'echo-env')]);
    const results = (await Promise.all(
      Array.from({ length: 12 }, (_, i) => r.invoke('Slow', { sleepMs: 200, tag: `t${i}` })),
    )) as SlowResult[];
    expect(results.map((x) => x.tag)).toEqual(Array.from({ length: 12 }, (_, i) => `t${i}`));
    // At most the default limit of environments, each used one invocation after the other: an
    // environment's invocation counts are 1, 2, 3, ... (two at once would share a count's neighbour).
    const threads = new Set(results.map((x) => x.threadId));
    expect(threads.size).toBe(DEFAULT_LOCAL_CONCURRENCY);
    expect(r.environmentCount('Slow')).toBe(DEFAULT_LOCAL_CONCURRENCY);
    for (const thread of threads) {
      const counts = results
        .filter((x) => x.threadId === thread)
        .map((x) => x.invocations)
        .sort((a, b) => a - b);
      expect(counts).toEqual(counts.map((_, i) => i + 1));
    }

    const mixed = await Promise.all([
      r.invoke('Echo', { i: 1 }),
      r.invoke('Slow', { sleepMs: 10, tag: 'x' }),
      r.invoke('Echo', { i: 2 }),
    ]);
    expect((mixed[0] as EchoResult).event).toEqual({ i: 1 });
    expect((mixed[1] as SlowResult).tag).toBe('x');
    expect((mixed[2] as EchoResult).event).toEqual({ i: 2 });
    // A warm environment was reused, not a new one started.
    expect(threads.has((mixed[1] as SlowResult).threadId)).toBe(true);
  });

  it("honours the template's ReservedConcurrentExecutions and reuses an idle environment", async () => {
    const r = runner([fn('Slow', 'slow', { timeoutSeconds: 5, reservedConcurrency: 2 })]);
    const first = (await r.invoke('Slow', { sleepMs: 0 })) as SlowResult;
    const second = (await r.invoke('Slow', { sleepMs: 0 })) as SlowResult;
    expect(second.threadId).toBe(first.threadId);
    expect(second.invocations).toBe(2);
    expect(r.environmentCount('Slow')).toBe(1);
    const burst = (await Promise.all(
      Array.from({ length: 6 }, () => r.invoke('Slow', { sleepMs: 50 })),
    )) as SlowResult[];
    expect(new Set(burst.map((x) => x.threadId)).size).toBe(2);
    expect(r.environmentCount('Slow')).toBe(2);
  });

  it('a timed-out environment is replaced for the invocation waiting for one', async () => {
    const r = runner([fn('Slow', 'slow', { timeoutSeconds: 1, reservedConcurrency: 1 })]);
    const [timedOut, next] = await Promise.allSettled([
      r.invoke('Slow', { sleepMs: 10_000 }),
      r.invoke('Slow', { sleepMs: 0, tag: 'next' }),
    ]);
    expect(timedOut.status).toBe('rejected');
    expect(((timedOut as PromiseRejectedResult).reason as FunctionError).errorType).toBe('Sandbox.Timedout');
    expect(next.status === 'fulfilled' && (next.value as SlowResult).invocations).toBe(1);
  });

  it('close() terminates the workers', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runner-close-'));
    try {
      const file = path.join(dir, 'beats');
      const r = runner([fn('Heart', 'heartbeat'), fn('Slow', 'slow')]);
      expect(await r.invoke('Heart', { file })).toBe('beating');
      const warm = (await r.invoke('Slow', { sleepMs: 0 })) as SlowResult;
      await waitUntil(() => existsSync(file) && Number(readFileSync(file, 'utf8')) >= 3);

      await r.close();
      const stopped = readFileSync(file, 'utf8');
      await new Promise((res) => setTimeout(res, 150));
      expect(readFileSync(file, 'utf8')).toBe(stopped);

      // The runner can still be used: a new environment starts.
      const again = (await r.invoke('Slow', { sleepMs: 0 })) as SlowResult;
      expect(again.threadId).not.toBe(warm.threadId);
      expect(again.invocations).toBe(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // close() ends an invocation in flight at once, with its timer (it must not keep the process alive).
  it('close() rejects an invocation in flight at once', async () => {
    const r = runner([fn('Slow', 'slow', { timeoutSeconds: 2 })]);
    await r.invoke('Slow', { sleepMs: 0 });
    const started = Date.now();
    const inFlight = r.invoke('Slow', { sleepMs: 10_000 }).then(
      () => 'resolved',
      () => Date.now() - started,
    );
    await new Promise((res) => setTimeout(res, 100));
    await r.close();
    const settledAfter = await inFlight;
    expect(settledAfter).toBeTypeOf('number');
    expect(settledAfter).toBeLessThan(1000);
  });

  // The timer of an invocation in flight at close() must not later end a newer environment.
  it("an invocation made after close() is not killed by an older invocation's timer", async () => {
    const r = runner([fn('Slow', 'slow', { timeoutSeconds: 2 })]);
    await r.invoke('Slow', { sleepMs: 0 });
    const old = r.invoke('Slow', { sleepMs: 10_000 }).catch(() => 'old rejected');
    await new Promise((res) => setTimeout(res, 700));
    await r.close();
    // Runs 1.5 s of its 2 s budget; the old invocation's timer fires ~1.3 s from now.
    const fresh = (await r.invoke('Slow', { sleepMs: 1500, tag: 'fresh' })) as SlowResult;
    expect(fresh.tag).toBe('fresh');
    await old;
  });
});

// Each environment is a worker thread of ~60 MB: idle ones are retired, as Lambda reclaims them,
// so the hub's memory goes back down after a burst (issue 17, item 9). The clock is the test's.
describe('LambdaRunner idle environments', () => {
  it('retires an environment idle for the idle timeout (its thread ends); the next invocation starts a new one', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runner-idle-'));
    try {
      let now = 1_000_000;
      const r = runner([fn('Heart', 'heartbeat'), fn('Slow', 'slow')], [], {
        idleTimeoutMs: 30_000,
        clock: () => now,
      });
      const file = path.join(dir, 'beats');
      expect(await r.invoke('Heart', { file })).toBe('beating');
      const warm = (await r.invoke('Slow', { sleepMs: 0 })) as SlowResult;
      await waitUntil(() => existsSync(file) && Number(readFileSync(file, 'utf8')) >= 3);
      expect(r.totalEnvironments()).toBe(2);

      now += 29_999;
      expect(r.retireIdleEnvironments()).toBe(0);
      expect(r.totalEnvironments()).toBe(2);

      now += 1;
      expect(r.retireIdleEnvironments()).toBe(2);
      expect(r.environmentCount('Heart')).toBe(0);
      expect(r.environmentCount('Slow')).toBe(0);
      // The retired environment's thread is gone: its timer writes no more.
      const stopped = readFileSync(file, 'utf8');
      await new Promise((res) => setTimeout(res, 150));
      expect(readFileSync(file, 'utf8')).toBe(stopped);

      const cold = (await r.invoke('Slow', { sleepMs: 0 })) as SlowResult;
      expect(cold.threadId).not.toBe(warm.threadId);
      expect(cold.invocations).toBe(1);
      expect(r.environmentCount('Slow')).toBe(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('never retires a busy environment; its idle time counts from the end of its invocation', async () => {
    let now = 0;
    const r = runner([fn('Slow', 'slow', { timeoutSeconds: 5 })], [], {
      idleTimeoutMs: 1000,
      clock: () => now,
    });
    const running = r.invoke('Slow', { sleepMs: 300, tag: 'long' });
    // The invocation has its environment at once; the clock passes the timeout while it runs.
    expect(r.environmentCount('Slow')).toBe(1);
    now += 5000;
    expect(r.retireIdleEnvironments()).toBe(0);
    expect(((await running) as SlowResult).tag).toBe('long');
    expect(r.retireIdleEnvironments()).toBe(0);
    expect(r.environmentCount('Slow')).toBe(1);
    now += 1000;
    expect(r.retireIdleEnvironments()).toBe(1);
    expect(r.environmentCount('Slow')).toBe(0);
  });

  it('at maxEnvironments retires the least recently used idle environment of any function, and never makes a caller wait', async () => {
    let now = 0;
    const r = runner([fn('A', 'slow', { timeoutSeconds: 5 }), fn('B', 'echo-env'), fn('C', 'slow')], [], {
      maxEnvironments: 2,
      clock: () => now,
    });
    now = 1;
    await r.invoke('A', { sleepMs: 0 });
    now = 2;
    await r.invoke('B', {});
    expect(r.totalEnvironments()).toBe(2);
    // A third environment: A's, the least recently used, makes room.
    now = 3;
    await r.invoke('C', { sleepMs: 0 });
    expect([r.environmentCount('A'), r.environmentCount('B'), r.environmentCount('C')]).toEqual([0, 1, 1]);

    // Three at once of A: the idle B and C go, and the third starts beyond the cap rather than wait.
    now = 4;
    const burst = (await Promise.all(
      Array.from({ length: 3 }, (_, i) => r.invoke('A', { sleepMs: 100, tag: `a${i}` })),
    )) as SlowResult[];
    expect(burst.map((x) => x.tag)).toEqual(['a0', 'a1', 'a2']);
    expect(new Set(burst.map((x) => x.threadId)).size).toBe(3);
    expect([r.environmentCount('A'), r.environmentCount('B'), r.environmentCount('C')]).toEqual([3, 0, 0]);
  });

  it('takes its limits from HUB_LAMBDA_IDLE_MS and HUB_LAMBDA_MAX_ENVIRONMENTS, refusing a bad value by name', () => {
    expect(environmentLimitsFromEnv({})).toEqual({});
    expect(
      environmentLimitsFromEnv({ HUB_LAMBDA_IDLE_MS: '5000', HUB_LAMBDA_MAX_ENVIRONMENTS: '3' }),
    ).toEqual({
      idleTimeoutMs: 5000,
      maxEnvironments: 3,
    });
    expect(() => environmentLimitsFromEnv({ HUB_LAMBDA_IDLE_MS: '10s' })).toThrow(
      "HUB_LAMBDA_IDLE_MS must be a positive whole number, got '10s'",
    );
    expect(() => environmentLimitsFromEnv({ HUB_LAMBDA_MAX_ENVIRONMENTS: '0' })).toThrow(
      /HUB_LAMBDA_MAX_ENVIRONMENTS .* got '0'/,
    );
    expect(() => runner([], [], { idleTimeoutMs: -1 })).toThrow(/idleTimeoutMs must be a positive/);
  });
});

/**
 * Bundles a fixture as HubFunction's NodejsFunction does (ESM, minified, source map, the
 * createRequire banner) into `<dir>/<logicalId>/index.mjs`, plus `files`; returns the folder.
 */
async function bundle(dir: string, logicalId: string, fixture: string, files: Record<string, string> = {}) {
  const out = path.join(dir, logicalId);
  await build({
    entryPoints: [path.join(PROJECT_ROOT, 'test/fixtures/functions', `${fixture}.ts`)],
    outfile: path.join(out, 'index.mjs'),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node22',
    minify: true,
    sourcemap: true,
    banner: { js: "import { createRequire } from 'module'; const require = createRequire(import.meta.url);" },
    logLevel: 'silent',
  });
  for (const [name, content] of Object.entries(files)) writeFileSync(path.join(out, name), content);
  return out;
}

describe('LambdaRunner with bundles', () => {
  it("runs the bundle's index.mjs with its folder as LAMBDA_TASK_ROOT, the source only without one", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runner-bundles-'));
    try {
      const bundled = await bundle(dir, 'Reader', 'read-file', { 'routing.json': '{"bundled":true}' });
      const codeDir = path.join(dir, 'code');
      const r = runner(
        [
          fn('Reader', 'read-file', { files: { 'routing.json': '{"from":"metadata"}' } }),
          fn('SourceReader', 'read-file', { files: { 'routing.json': '{"from":"source"}' } }),
        ],
        [],
        { assetDirOf: (id) => (id === 'Reader' ? bundled : undefined), codeDir },
      );
      expect(await r.invoke('Reader', { name: 'routing.json' })).toEqual({
        root: bundled,
        content: '{"bundled":true}',
      });
      // The bundle's folder holds its files: nothing is written for it.
      expect(existsSync(path.join(codeDir, 'Reader'))).toBe(false);
      expect(await r.invoke('SourceReader', { name: 'routing.json' })).toEqual({
        root: path.join(codeDir, 'SourceReader'),
        content: '{"from":"source"}',
      });
      // What runs is the bundle, not the source: a bundle that differs from its source shows it.
      writeFileSync(path.join(bundled, 'index.mjs'), 'export const handler = async () => "the bundle";\n');
      const fresh = runner([fn('Reader', 'read-file')], [], { assetDirOf: () => bundled });
      expect(await fresh.invoke('Reader', {})).toBe('the bundle');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("maps a bundle's stack trace to the TypeScript source when the template enables source maps", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runner-bundles-'));
    try {
      const bundled = await bundle(dir, 'Throws', 'throws');
      const withMaps = runner(
        [fn('Throws', 'throws', { environment: { NODE_OPTIONS: '--enable-source-maps' } })],
        [],
        { assetDirOf: () => bundled },
      );
      const e = await functionError(withMaps.invoke('Throws', {}));
      expect(e.errorType).toBe('DeviceNotFoundError');
      expect(e.trace.join('\n')).toMatch(/test\/fixtures\/functions\/throws\.ts:\d+/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a bundle folder without index.mjs, naming the function', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runner-bundles-'));
    try {
      expect(() => runner([fn('Echo', 'echo-env')], [], { assetDirOf: () => dir })).toThrow(
        /function Echo: its bundle .* has no index\.mjs/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

interface FailureRecord {
  version: string;
  requestContext: {
    requestId: string;
    functionArn: string;
    condition: string;
    approximateInvokeCount: number;
  };
  requestPayload: unknown;
  responseContext: { functionError: string };
  responsePayload: { errorType: string; errorMessage: string; trace: string[] };
}

describe('LambdaRunner.invokeAsync', () => {
  const fast = { asyncRetryDelayMs: (n: number) => n * 20 };

  it('retries a failing event twice by default, then logs that it was dropped', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runner-async-'));
    try {
      const lines: string[] = [];
      const r = runner([fn('Flaky', 'fails-until')], lines, fast);
      const file = path.join(dir, 'attempts');
      r.invokeAsync('Flaky', { file });
      await r.asyncIdle();
      expect(readFileSync(file, 'utf8')).toBe('3');
      expect(lines.some((l) => /Flaky failed \(RetriesExhausted, 3 attempts\).*event dropped/.test(l))).toBe(
        true,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('stops retrying once an attempt succeeds', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runner-async-'));
    try {
      const lines: string[] = [];
      const sent: string[] = [];
      const r = runner(
        [
          fn('Flaky', 'fails-until', {
            asyncInvoke: { maximumRetryAttempts: 2, maximumEventAgeSeconds: 60, onFailureQueueName: 'q' },
          }),
        ],
        lines,
        { ...fast, sendToQueue: async (_q, body) => void sent.push(body) },
      );
      const file = path.join(dir, 'attempts');
      r.invokeAsync('Flaky', { file, succeedOn: 2 });
      await r.asyncIdle();
      expect(readFileSync(file, 'utf8')).toBe('2');
      expect(sent).toEqual([]);
      expect(lines.filter((l) => l.includes('async invocation'))).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("follows the EventInvokeConfig's retry count and sends Lambda's failure record to the on-failure queue", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runner-async-'));
    try {
      const sent: { queue: string; body: string }[] = [];
      const f = fn('Flaky', 'fails-until', {
        asyncInvoke: {
          maximumRetryAttempts: 1,
          maximumEventAgeSeconds: 60,
          onFailureQueueName: 'hub-Failures',
        },
      });
      const r = runner([f], [], {
        ...fast,
        sendToQueue: async (queue, body) => void sent.push({ queue, body }),
      });
      const event = { file: path.join(dir, 'attempts') };
      r.invokeAsync('Flaky', event);
      await r.asyncIdle();
      expect(readFileSync(event.file, 'utf8')).toBe('2');
      expect(sent.map((s) => s.queue)).toEqual(['hub-Failures']);
      const record = JSON.parse(sent[0]?.body ?? '{}') as FailureRecord;
      expect(record.version).toBe('1.0');
      expect(record.requestContext).toMatchObject({
        functionArn: `${f.arn}:$LATEST`,
        condition: 'RetriesExhausted',
        approximateInvokeCount: 2,
      });
      expect(record.requestContext.requestId).toMatch(/^[0-9a-f-]{36}$/);
      expect(record.requestPayload).toEqual(event);
      expect(record.responseContext.functionError).toBe('Unhandled');
      expect(record.responsePayload).toMatchObject({
        errorType: 'TypeError',
        errorMessage: 'attempt 2 failed',
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('gives up with EventAgeExceeded when the next retry would come after the maximum event age', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runner-async-'));
    try {
      const sent: string[] = [];
      const r = runner(
        [
          fn('Flaky', 'fails-until', {
            asyncInvoke: { maximumRetryAttempts: 2, maximumEventAgeSeconds: 60, onFailureQueueName: 'q' },
          }),
        ],
        [],
        { asyncRetryDelayMs: () => 61_000, sendToQueue: async (_q, body) => void sent.push(body) },
      );
      const file = path.join(dir, 'attempts');
      r.invokeAsync('Flaky', { file });
      await r.asyncIdle();
      expect(readFileSync(file, 'utf8')).toBe('1');
      const record = JSON.parse(sent[0] ?? '{}') as FailureRecord;
      expect(record.requestContext.condition).toBe('EventAgeExceeded');
      expect(record.requestContext.approximateInvokeCount).toBe(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('logs, and does not throw, when the on-failure queue cannot be reached', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runner-async-'));
    try {
      const lines: string[] = [];
      const r = runner(
        [
          fn('Flaky', 'fails-until', {
            asyncInvoke: { maximumRetryAttempts: 0, maximumEventAgeSeconds: 60, onFailureQueueName: 'q' },
          }),
        ],
        lines,
        { ...fast, sendToQueue: async () => Promise.reject(new Error('queue unreachable')) },
      );
      r.invokeAsync('Flaky', { file: path.join(dir, 'attempts') });
      await r.asyncIdle();
      expect(lines.some((l) => /sending the record to q failed too.*queue unreachable/.test(l))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a function with an on-failure queue when it has no way to send to it, and an unknown function', () => {
    expect(() =>
      runner([
        fn('F', 'throws', {
          asyncInvoke: { maximumRetryAttempts: 2, maximumEventAgeSeconds: 60, onFailureQueueName: 'q' },
        }),
      ]),
    ).toThrow(/function F has an on-failure queue/);
    expect(() => runner([fn('Echo', 'echo-env')]).invokeAsync('Nope', {})).toThrow(/no function Nope/);
  });

  it('close() drops pending retries', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runner-async-'));
    try {
      const r = runner([fn('Flaky', 'fails-until')], [], { asyncRetryDelayMs: () => 60_000 });
      const file = path.join(dir, 'attempts');
      r.invokeAsync('Flaky', { file });
      await waitUntil(() => existsSync(file));
      await r.close();
      await r.asyncIdle();
      expect(readFileSync(file, 'utf8')).toBe('1');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

async function waitUntil(done: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
