import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { App } from 'aws-cdk-lib';
import { buildHub, HUB_STACK_ID } from '../../lib/app.ts';
import { type HubConfigInput, parseHubConfig } from '../../lib/config.ts';
import { PROJECT_ROOT } from '../../lib/hub-function.ts';
import type { LocalHubEndpoints } from '../../local/hub.ts';

/** A local hub running as a child process, as `npm start` runs it, on free loopback ports. */
export interface HubProcess {
  readonly endpoints: LocalHubEndpoints;
  readonly dataDir: string;
  /** Every line the hub printed so far (its log). */
  readonly logs: string[];
  /** Waits for a log line matching `pattern`. */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** SIGKILL: no shutdown code runs. */
  kill(): Promise<void>;
  /** SIGINT, as Ctrl-C: a clean shutdown. Resolves with the exit code. */
  stop(): Promise<number | null>;
}

/** A fresh data directory under the OS temp dir. */
export function tempDataDir(prefix = 'hub-test-'): string {
  return mkdtempSync(path.join(tmpdir(), prefix));
}

/** Options of {@link startHubProcess}. */
export interface StartOptions {
  readonly dataDir?: string;
  readonly args?: readonly string[];
  readonly env?: Record<string, string>;
  /** Node options before the script, e.g. `['--cpu-prof', '--cpu-prof-dir=prof']`. */
  readonly nodeArgs?: readonly string[];
}

const ZERO_PORTS = [
  '--mqtt-port=0',
  '--mqtts-port=0',
  '--ws-port=0',
  '--dynamodb-port=0',
  '--kinesis-port=0',
  '--data-plane-port=0',
  '--service-api-port=0',
  '--http-publish-port=0',
  '--aws-services-port=0',
  '--eventbridge-port=0',
];

// Hubs still running when the test process exits (a test failed before it stopped its hub) are
// killed with it, so no hub outlives the run.
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** Starts `local/main.ts --json` and resolves when it prints its ready line. */
export async function startHubProcess(options: StartOptions = {}): Promise<HubProcess> {
  const dataDir = options.dataDir ?? tempDataDir();
  const child: ChildProcess = spawn(
    process.execPath,
    [
      ...(options.nodeArgs ?? []),
      '--import',
      'tsx',
      'local/main.ts',
      '--json',
      `--data-dir=${dataDir}`,
      ...ZERO_PORTS,
      ...(options.args ?? []),
    ],
    { cwd: PROJECT_ROOT, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const logs: string[] = [];
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  const onLine = (line: string) => {
    logs.push(line);
    for (const w of [...waiters]) {
      if (w.pattern.test(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  };
  createInterface({ input: child.stdout! }).on('line', onLine);
  createInterface({ input: child.stderr! }).on('line', onLine);
  live.add(child);
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      live.delete(child);
      resolve(code);
    }),
  );

  const waitForLog = (pattern: RegExp, timeoutMs = 30_000) => {
    const seen = logs.find((l) => pattern.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `no log line matching ${pattern} within ${timeoutMs} ms; log:\n${logs.slice(-40).join('\n')}`,
          ),
        );
      }, timeoutMs);
      waiters.push({
        pattern,
        resolve: (line) => {
          clearTimeout(timer);
          resolve(line);
        },
      });
    });
  };

  const ready = await Promise.race([
    waitForLog(/^\{"event":"ready"/, 90_000),
    exited.then((code) => {
      throw new Error(`hub exited with ${code} before it was ready:\n${logs.join('\n')}`);
    }),
  ]);
  const endpoints = JSON.parse(ready) as LocalHubEndpoints;
  return {
    endpoints,
    dataDir,
    logs,
    waitForLog,
    kill: async () => {
      child.kill('SIGKILL');
      await exited;
    },
    stop: async () => {
      child.kill('SIGINT');
      return exited;
    },
  };
}

/**
 * Synthesizes the hub stack with `config` (bundling skipped, as the local hub runs the sources) and
 * writes its template to a file under a fresh temp directory; returns the file's path.
 */
export function testTemplate(config: HubConfigInput): string {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  buildHub(app, parseHubConfig(config));
  const file = path.join(tempDataDir('template-'), 'hub.template.json');
  writeFileSync(file, JSON.stringify(app.synth().getStackByName(HUB_STACK_ID).template));
  return file;
}

/** Starts a hub process on the stack synthesized with `config` (see {@link testTemplate}). */
export function startHubWith(config: HubConfigInput, options: StartOptions = {}): Promise<HubProcess> {
  return startHubProcess({
    ...options,
    args: [`--template=${testTemplate(config)}`, ...(options.args ?? [])],
  });
}
