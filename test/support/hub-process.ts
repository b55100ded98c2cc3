import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { App } from 'aws-cdk-lib';
import { buildHub, HUB_STACK_ID } from '../../lib/app.ts';
import { type HubConfigInput, parseHubConfig } from '../../lib/config.ts';
import { PROJECT_ROOT } from '../../lib/hub-function.ts';
import type { LocalHubEndpoints } from '../../local/hub.ts';
import { forgetProcessGroup, killProcessGroup, RUN_DIR_ENV, trackProcessGroup } from './process-groups.ts';

/** A local hub running as a child process, as `npm start` runs it, on free loopback ports. */
export interface HubProcess {
  /** The hub's pid, which is also its process group id (it runs detached). */
  readonly pid: number;
  readonly endpoints: LocalHubEndpoints;
  readonly dataDir: string;
  /** Every line the hub printed so far (its log). */
  readonly logs: string[];
  /** Waits for a log line matching `pattern` (among the lines from index `since` on). */
  waitForLog(pattern: RegExp, timeoutMs?: number, since?: number): Promise<string>;
  /** False once the process has exited. */
  running(): boolean;
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

/** Every port flag of `npm start` set to 0 (any free port). */
export const ZERO_PORTS = [
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

/**
 * Starts `local/main.ts --json` and resolves when it prints its ready line.
 *
 * The hub runs in its own process group, recorded in the run directory (see `process-groups.ts`):
 * whatever happens to the test (a failure before `stop`, a timeout, a killed worker), the group
 * is killed with the worker or, at the latest, by the run's global teardown.
 */
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
      ...templateArgs(options.args ?? []),
      ...(options.args ?? []),
    ],
    {
      cwd: PROJECT_ROOT,
      env: { ...process.env, ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    },
  );
  const pid = child.pid;
  if (pid === undefined) throw new Error('the hub process did not start');
  trackProcessGroup(pid);
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
  let running = true;
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      running = false;
      // What the hub started (esbuild services) goes with it.
      killProcessGroup(pid);
      forgetProcessGroup(pid);
      resolve(code);
    }),
  );

  const waitForLog = (pattern: RegExp, timeoutMs = 30_000, since = 0) => {
    const seen = logs.slice(since).find((l) => pattern.test(l));
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
  ]).catch(async (error: unknown) => {
    killProcessGroup(pid);
    await exited;
    throw error;
  });
  const endpoints = JSON.parse(ready) as LocalHubEndpoints;
  return {
    pid,
    endpoints,
    dataDir,
    logs,
    waitForLog,
    running: () => running,
    kill: async () => {
      killProcessGroup(pid);
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
 * writes its template to a file under a fresh temp directory; returns the file's path (the caller
 * may edit that file).
 *
 * A synth takes seconds, so each config is synthesized once per run: the template is kept in the
 * run directory (when there is one) and copied for each caller.
 */
export function testTemplate(config: HubConfigInput): string {
  const file = path.join(tempDataDir('template-'), 'hub.template.json');
  writeFileSync(file, synthesized(config));
  return file;
}

/**
 * The template `npm start` synthesizes (the hub config and context of cdk.json), written once per
 * run: hubs started without `--template` run it instead of each spending seconds (tens on a busy
 * machine) on the same synth. `npm start`'s own synth is tested in start-stop.test.ts.
 */
function templateArgs(args: readonly string[]): string[] {
  const runDir = process.env[RUN_DIR_ENV];
  // Outside a test run (bench/) a hub starts as `npm start` does, synth included.
  if (!runDir || args.some((a) => a.startsWith('--template'))) return [];
  const file = path.join(runDir, 'template-default.json');
  if (!existsSync(file)) {
    const cdkJson = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'cdk.json'), 'utf8')) as {
      context?: Record<string, unknown>;
    };
    const config = cdkJson.context?.hub as HubConfigInput | undefined;
    writeWhole(file, synthesized(config ?? {}, cdkJson.context ?? {}));
  }
  return [`--template=${file}`];
}

/** Writes a file whole or not at all: another worker may read it at the same moment. */
function writeWhole(file: string, text: string): void {
  const partial = `${file}.${process.pid}`;
  writeFileSync(partial, text);
  renameSync(partial, file);
}

const synthCache = new Map<string, string>();

function synthesized(config: HubConfigInput, context: Record<string, unknown> = {}): string {
  const key = createHash('sha256')
    .update(JSON.stringify([config, context]))
    .digest('hex')
    .slice(0, 16);
  const runDir = process.env[RUN_DIR_ENV];
  const cacheFile = runDir ? path.join(runDir, `template-${key}.json`) : undefined;
  const cached =
    synthCache.get(key) ?? (cacheFile && existsSync(cacheFile) ? readFileSync(cacheFile, 'utf8') : undefined);
  if (cached !== undefined) return cached;
  const app = new App({ context: { ...context, 'aws:cdk:bundling-stacks': [] } });
  buildHub(app, parseHubConfig(config));
  const text = JSON.stringify(app.synth().getStackByName(HUB_STACK_ID).template);
  synthCache.set(key, text);
  if (cacheFile) writeWhole(cacheFile, text);
  return text;
}

/** Starts a hub process on the stack synthesized with `config` (see {@link testTemplate}). */
export function startHubWith(config: HubConfigInput, options: StartOptions = {}): Promise<HubProcess> {
  return startHubProcess({
    ...options,
    args: [`--template=${testTemplate(config)}`, ...(options.args ?? [])],
  });
}
