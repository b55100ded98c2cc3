import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../lib/hub-function.ts';
import { tempDataDir } from '../support/hub-process.ts';
import { killProcessGroup, processGroupAlive } from '../support/process-groups.ts';

// A test run kills every hub it started, however its tests end: a child vitest run of files that
// start hubs and fail, time out, or lose their worker to SIGKILL; once it has exited, none of
// those hubs may be alive.

const leaked = path.join(tempDataDir('leaked-hubs-'), 'pids');
const pids = (): number[] =>
  (existsSync(leaked) ? readFileSync(leaked, 'utf8') : '').split('\n').filter(Boolean).map(Number);

afterAll(() => {
  // If the run under test did not kill them, this one does.
  for (const pid of pids()) killProcessGroup(pid);
});

it('no hub of a run outlives it after a failed test, a timed-out test or a killed worker', async () => {
  const child = spawn(
    process.execPath,
    [
      path.join(PROJECT_ROOT, 'node_modules/vitest/vitest.mjs'),
      'run',
      '--config',
      'test/support/hub-cleanup/vitest.config.ts',
    ],
    {
      cwd: PROJECT_ROOT,
      env: { ...process.env, LEAKED_HUBS_FILE: leaked },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let output = '';
  const collect = (chunk: Buffer) => {
    output += chunk.toString();
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  const [status] = (await once(child, 'close')) as [number | null];
  expect(status, output).toBe(1);
  // Each way of leaving happened: a failure, a timeout, a dead worker.
  expect(output).toMatch(/fails/);
  expect(output).toMatch(/Test timed out in 500ms/);
  expect(output).toMatch(/Worker exited unexpectedly/);
  const started = pids();
  expect(started).toHaveLength(2);
  expect(started.filter(processGroupAlive)).toEqual([]);
}, 300_000);
