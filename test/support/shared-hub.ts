import { type HubProcess, startHubProcess } from './hub-process.ts';

// One hub with the default stack per test worker, for the integration files that need no hub of
// their own (no SIGKILL or restart, no special template, no assertion about the whole registry).
// A hub start costs seconds to tens of seconds; the integration project runs with `isolate: false`
// so that this module, and the hub, live as long as the worker. The hub goes with the worker (see
// process-groups.ts). Files that share it use device ids of their own.

let shared: Promise<HubProcess> | undefined;

/**
 * The worker's shared hub, started on first use. What it returns sees only the log lines written
 * since the call (a file's `waitForLog` cannot match what an earlier file caused), and cannot be
 * stopped or killed: the hub is not the file's to end.
 */
export async function sharedHub(): Promise<HubProcess> {
  let current = shared ? await shared.catch(() => undefined) : undefined;
  if (!current?.running()) {
    shared = startHubProcess();
    // A failed start is not cached: the next file tries again.
    shared.catch(() => {
      shared = undefined;
    });
    current = await shared;
  }
  const hub = current;
  const since = hub.logs.length;
  const notYours = () => Promise.reject(new Error('the shared hub is not stopped by a test file'));
  return {
    pid: hub.pid,
    endpoints: hub.endpoints,
    dataDir: hub.dataDir,
    get logs() {
      return hub.logs.slice(since);
    },
    waitForLog: (pattern, timeoutMs, from = 0) => hub.waitForLog(pattern, timeoutMs, since + from),
    running: () => hub.running(),
    kill: notYours,
    stop: notYours,
  };
}
