import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';

// Every hub a test run starts runs detached, in its own process group, and is recorded as a file
// `{pgid}.pgid` in the run directory that the global setup creates (env HUB_TEST_RUN_DIR). A hub is
// killed (the whole group, so what it started goes too):
// - by its test, on `stop`/`kill`;
// - when the worker that started it exits or is told to stop (SIGTERM/SIGINT/SIGHUP), also after a
//   test failed or timed out before stopping it;
// - at the latest by the global teardown, which kills every group still recorded: this covers a
//   worker that was SIGKILLed and ran no code at all.

/** Environment variable naming the run directory of the current test run. */
export const RUN_DIR_ENV = 'HUB_TEST_RUN_DIR';

const mine = new Set<number>();
let hooked = false;

const recordOf = (dir: string, pgid: number) => path.join(dir, `${pgid}.pgid`);

/** Records a detached child (its pid is its process group id) so that it cannot outlive the run. */
export function trackProcessGroup(pgid: number): void {
  mine.add(pgid);
  const dir = process.env[RUN_DIR_ENV];
  if (dir) writeFileSync(recordOf(dir, pgid), `started by ${process.pid}\n`);
  hookExit();
}

/** Drops the record of a group that has ended. */
export function forgetProcessGroup(pgid: number): void {
  mine.delete(pgid);
  const dir = process.env[RUN_DIR_ENV];
  if (dir) rmSync(recordOf(dir, pgid), { force: true });
}

/** SIGKILLs every process of a group; false when none was left. */
export function killProcessGroup(pgid: number): boolean {
  try {
    process.kill(-pgid, 'SIGKILL');
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw error;
  }
}

/** Whether any process of the group is still alive. */
export function processGroupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/** Waits (up to `timeoutMs`) until none of `pgids` has a live process; returns those that still do. */
export async function waitForGroupsGone(pgids: readonly number[], timeoutMs = 10_000): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  let alive = pgids.filter(processGroupAlive);
  while (alive.length > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    alive = alive.filter(processGroupAlive);
  }
  return alive;
}

/** The process groups recorded in a run directory. */
export function recordedProcessGroups(dir: string): number[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.pgid'))
    .map((f) => Number(f.slice(0, -'.pgid'.length)))
    .filter((n) => Number.isInteger(n) && n > 0);
}

/**
 * Kills every group recorded in `dir` and waits for them to be gone. Returns the groups that
 * survived (none, unless something is badly wrong).
 */
export async function killRecordedProcessGroups(dir: string): Promise<number[]> {
  const groups = recordedProcessGroups(dir);
  for (const pgid of groups) killProcessGroup(pgid);
  const survivors = await waitForGroupsGone(groups);
  for (const pgid of groups) if (!survivors.includes(pgid)) rmSync(recordOf(dir, pgid), { force: true });
  return survivors;
}

function killMine(): void {
  for (const pgid of mine) killProcessGroup(pgid);
}

/** Kills this process's groups when it exits or is told to stop, then lets the signal do its work. */
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', killMine);
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.once(signal, () => {
      killMine();
      // With no listener left the default action (exit) applies, unless someone else listens.
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    });
  }
}
