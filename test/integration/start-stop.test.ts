import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../lib/hub-function.ts';
import { DEFAULT_PORTS } from '../../local/hub.ts';
import { tempDataDir, ZERO_PORTS } from '../support/hub-process.ts';
import {
  forgetProcessGroup,
  killProcessGroup,
  trackProcessGroup,
  waitForGroupsGone,
} from '../support/process-groups.ts';

// `npm start` as people use it: help, a port in use, and stopping with signals, against real
// processes (node, npm, sh) and a real listening socket.

interface Run {
  readonly child: ChildProcess;
  readonly stdout: string[];
  readonly stderr: string[];
  /** Resolves with the exit code once the process has exited and its output is read. */
  readonly exited: Promise<number | null>;
}

const started: number[] = [];
afterAll(() => {
  for (const pgid of started) {
    killProcessGroup(pgid);
    forgetProcessGroup(pgid);
  }
});

/** Spawns a command in its own process group (recorded, so that it cannot outlive the run). */
function run(command: string, args: readonly string[]): Run {
  const child = spawn(command, args, {
    cwd: PROJECT_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
    env: { ...process.env, HUB_FUNCTION_LOG_LEVEL: 'WARN' },
  });
  if (child.pid === undefined) throw new Error(`${command} did not start`);
  trackProcessGroup(child.pid);
  started.push(child.pid);
  const stdout: string[] = [];
  const stderr: string[] = [];
  const out = createInterface({ input: child.stdout! });
  const err = createInterface({ input: child.stderr! });
  out.on('line', (l) => stdout.push(l));
  err.on('line', (l) => stderr.push(l));
  const exited = Promise.all([once(child, 'exit'), once(out, 'close'), once(err, 'close')]).then(
    ([[code]]) => code as number | null,
  );
  return { child, stdout, stderr, exited };
}

/** Resolves once a stdout line matches, rejects if the process exits first. */
async function waitForLine(r: Run, pattern: RegExp, timeoutMs = 110_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void r.exited.then(() => {
    exited = true;
  });
  for (;;) {
    const line = r.stdout.find((l) => pattern.test(l));
    if (line !== undefined) return line;
    if (exited || Date.now() > deadline) {
      throw new Error(
        `no line matching ${pattern}${exited ? ' before the process exited' : ''}:\n${[...r.stdout, ...r.stderr].join('\n')}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const hub = (args: readonly string[]) => run(process.execPath, ['--import', 'tsx', 'local/main.ts', ...args]);

// A module hook that makes any import of aws-cdk-lib fail, loaded after tsx so that it sees the
// specifiers first.
const FORBID_CDK = `data:text/javascript,${encodeURIComponent(
  `import { register } from 'node:module';
register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(
    `export async function resolve(specifier, context, next) {
  if (specifier === 'aws-cdk-lib' || specifier.startsWith('aws-cdk-lib/')) throw new Error('aws-cdk-lib was imported');
  return next(specifier, context);
}`,
  )}));`,
)}`;

describe('npm start --help', () => {
  it('answers without loading the CDK, and lists every port flag with its default', async () => {
    // The hook does catch an import of the CDK: without this, the next check would prove nothing.
    const control = run(process.execPath, [
      '--import',
      'tsx',
      '--import',
      FORBID_CDK,
      '--input-type=module',
      '-e',
      "await import('./lib/hub-function.ts');",
    ]);
    expect(await control.exited).not.toBe(0);
    expect(control.stderr.join('\n')).toContain('aws-cdk-lib was imported');

    const help = run(process.execPath, [
      '--import',
      'tsx',
      '--import',
      FORBID_CDK,
      'local/main.ts',
      '--help',
    ]);
    expect(await help.exited, help.stderr.join('\n')).toBe(0);
    const text = help.stdout.join('\n');
    expect(text).toMatch(/^Usage: npm start -- \[options\]/);
    const flags: Record<keyof typeof DEFAULT_PORTS, string> = {
      mqtt: 'mqtt-port',
      mqtts: 'mqtts-port',
      ws: 'ws-port',
      dynamodb: 'dynamodb-port',
      kinesis: 'kinesis-port',
      dataPlane: 'data-plane-port',
      serviceApi: 'service-api-port',
      awsServices: 'aws-services-port',
      eventBridge: 'eventbridge-port',
      httpPublish: 'http-publish-port',
    };
    for (const [key, flag] of Object.entries(flags)) {
      const port = DEFAULT_PORTS[key as keyof typeof DEFAULT_PORTS];
      expect(text).toMatch(new RegExp(`--${flag} N .*\\(default ${port};`));
    }
  });

  it('refuses an unknown option and a bad port with one line and exit code 2', async () => {
    const unknown = hub(['--mqtt-prot=1']);
    expect(await unknown.exited).toBe(2);
    expect(unknown.stderr[0]).toMatch(/'--mqtt-prot'/);
    const bad = hub(['--kinesis-port=http']);
    expect(await bad.exited).toBe(2);
    expect(bad.stderr).toEqual([
      "invalid port for --kinesis-port (HUB_KINESIS_PORT): 'http' (an integer 0..65535; 0 = any free port)",
    ]);
  });
});

describe('a port in use at start', () => {
  let holder: Server | undefined;
  afterAll(async () => {
    await new Promise((resolve) => (holder ? holder.close(resolve) : resolve(undefined)));
  });

  it.each([
    ['mqtt-port', 'MQTT'],
    ['dynamodb-port', 'DynamoDB'],
  ])(
    '--%s: one line naming the port, the service and the flag; exit code 2; no stack',
    async (flag, service) => {
      holder ??= createServer();
      if (!holder.listening) {
        holder.listen(0, '127.0.0.1');
        await once(holder, 'listening');
      }
      const address = holder.address();
      if (address === null || typeof address === 'string') throw new Error('no port');
      const port = address.port;
      const args = [
        '--json',
        `--data-dir=${tempDataDir()}`,
        ...ZERO_PORTS.filter((a) => !a.startsWith(`--${flag}=`)),
        `--${flag}=${port}`,
      ];
      const start = hub(args);
      expect(await start.exited).toBe(2);
      expect(start.stderr).toEqual([
        `port ${port} (${service}) is in use: stop what holds it or pass --${flag} N (0 = any free port)`,
      ]);
      expect(start.stdout).toEqual([]);
    },
  );
});

describe('stopping a hub started with npm start', () => {
  /** `npm start` as a background job of a non-interactive shell (`npm start &`); resolves when ready. */
  async function npmStartInBackground(): Promise<{ shell: Run; npmPid: number }> {
    const shell = run('/bin/sh', [
      '-c',
      'npm start -- "$@" & echo "npm pid $!"; wait',
      'sh',
      `--data-dir=${tempDataDir()}`,
      ...ZERO_PORTS,
      '--json',
    ]);
    const npmLine = await waitForLine(shell, /^npm pid \d+$/, 10_000);
    await waitForLine(shell, /^\{"event":"ready"/);
    return { shell, npmPid: Number(npmLine.split(' ')[2]) };
  }

  it('SIGINT to the npm process stops the hub, and every process of the group is gone', async () => {
    const { shell, npmPid } = await npmStartInBackground();
    const pgid = shell.child.pid!;
    process.kill(npmPid, 'SIGINT');
    // The hub closed and exited 0 (npm's status, which the shell's `wait` returns), not killed by the signal.
    expect(await shell.exited, [...shell.stdout, ...shell.stderr].join('\n')).toBe(0);
    expect(await waitForGroupsGone([pgid], 20_000)).toEqual([]);
    expect(shell.stderr.join('\n')).not.toMatch(/shutdown failed|npm error|npm ERR/);
  });

  it('SIGTERM to the process group stops the hub, and every process of the group is gone', async () => {
    const { shell } = await npmStartInBackground();
    const pgid = shell.child.pid!;
    process.kill(-pgid, 'SIGTERM');
    await shell.exited;
    expect(await waitForGroupsGone([pgid], 20_000)).toEqual([]);
    expect(shell.stderr.join('\n')).not.toMatch(/shutdown failed/);
  });
});
