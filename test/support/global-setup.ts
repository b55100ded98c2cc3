import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { killRecordedProcessGroups, RUN_DIR_ENV } from './process-groups.ts';

/**
 * Global setup of the suites that start hub processes: a run directory where each hub's process
 * group is recorded, and a teardown that kills every group still recorded and checks that none is
 * left, so that no hub outlives a test run, however its tests and workers ended.
 */
export default function setup(): () => Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'hub-test-run-'));
  // Set before the workers start, so they (and what they spawn) inherit it.
  process.env[RUN_DIR_ENV] = dir;
  return async () => {
    const survivors = await killRecordedProcessGroups(dir);
    if (survivors.length > 0) {
      throw new Error(
        `hub process groups still alive after the run (SIGKILL did not end them): ${survivors.join(', ')}`,
      );
    }
    rmSync(dir, { recursive: true, force: true });
  };
}
