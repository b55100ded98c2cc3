/**
 * The local hub's memory across crashes and restarts (issue 17, item 9), and the survival run of
 * its acceptance: a hub that restarts after a crash with stale wills, offline devices and retained
 * messages must stay up, answer and keep its memory bounded.
 *
 * Cycle mode (default): a hub on a fresh data directory, devices registered once; each cycle starts
 * the hub on the same directory, runs a load (QoS 1 D2C from every device, C2D messages completed by
 * the devices, reported-property updates), then SIGKILLs the hub's process group and starts the next.
 * The hub is one process (worker threads included), so its RSS (`/proc/PID/status` VmRSS) is its
 * memory; children it starts (esbuild) are counted apart.
 *
 * Soak mode (`--soak=MINUTES`): devices connect with a QoS 1 will on their own topic and leave
 * retained messages under `devices/{id}/...`; the hub is SIGKILLed and restarted with the devices
 * offline, on the default broker heartbeat (so the stale wills come out after four heartbeats, as a
 * user sees it), and is then watched every minute for MINUTES: alive, RSS, a service API call and an
 * MQTT connect of a device answered.
 *
 * `npm run bench -- memory` or `npm run bench -- memory --soak=30`.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { C2dTestDevice } from '../test/support/c2d-device.ts';
import { type DeviceCredentials, registerDevice, sasCredentials, service } from '../test/support/devices.ts';
import { type HubProcess, startHubProcess, tempDataDir } from '../test/support/hub-process.ts';
import { type Bench, type BenchContext, fmt, sleep } from './harness.ts';

/** What `/proc/PID/status` says about a process: resident and peak memory (MB), threads. */
interface ProcStatus {
  readonly rssMb: number;
  readonly hwmMb: number;
  readonly threads: number;
}

function procStatus(pid: number): ProcStatus {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) =>
    Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? Number.NaN);
  return { rssMb: field('VmRSS') / 1024, hwmMb: field('VmHWM') / 1024, threads: field('Threads') };
}

/** Summed RSS (MB) of the other processes of the hub's process group (esbuild services, say). */
function groupChildrenRssMb(pgid: number): number {
  let total = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === pgid) continue;
    try {
      // Field 5 of /proc/PID/stat is the process group; the command name (field 2) may hold spaces.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) !== pgid) continue;
      total += procStatus(Number(entry)).rssMb;
    } catch {
      // the process ended meanwhile
    }
  }
  return total;
}

/** Runs `task(i)` for i in 0..count-1, at most `limit` at a time. */
async function bounded(count: number, limit: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, count) }, async () => {
      while (next < count) await task(next++);
    }),
  );
}

/** Polls `done` until it holds, or throws after `timeoutMs`. */
async function until(done: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Devices' credentials, renewed for each hub (a SAS token's expiry is absolute). */
interface Fleet {
  readonly ids: readonly string[];
  readonly keys: Map<string, string>;
}

async function registerFleet(hub: HubProcess, prefix: string, count: number): Promise<Fleet> {
  const ids = Array.from({ length: count }, (_, i) => `${prefix}-${i}`);
  const keys = new Map<string, string>();
  await bounded(count, 5, async (i) => {
    const id = ids[i] ?? '';
    keys.set(id, (await registerDevice(hub.endpoints, id)).symmetricKey);
  });
  return { ids, keys };
}

function credentialsOf(hub: HubProcess, fleet: Fleet, id: string): DeviceCredentials {
  return sasCredentials(hub.endpoints, id, fleet.keys.get(id) ?? '');
}

/**
 * One cycle's load: every device publishes `messagesPerDevice` QoS 1 telemetry messages (10 in
 * flight each), completes `c2dPerDevice` C2D messages and reports `twinsPerDevice` property updates.
 */
async function load(
  hub: HubProcess,
  fleet: Fleet,
  messagesPerDevice: number,
  c2dPerDevice: number,
  twinsPerDevice: number,
  cycle: number,
): Promise<void> {
  const devices: C2dTestDevice[] = [];
  try {
    await bounded(fleet.ids.length, 5, async (i) => {
      const id = fleet.ids[i] ?? '';
      devices[i] = await C2dTestDevice.connect(hub.endpoints, credentialsOf(hub, fleet, id));
    });
    const payload = (n: number) =>
      JSON.stringify({ cycle, n, temperature: 20 + (n % 10), pad: 'x'.repeat(200) });
    await Promise.all(
      devices.map(async (device) => {
        const id = device.deviceId;
        let next = 0;
        await Promise.all(
          Array.from({ length: 10 }, async () => {
            while (next < messagesPerDevice) {
              const n = next++;
              await device.client.publishAsync(`devices/${id}/messages/events/n=${n}`, payload(n), {
                qos: 1,
              });
            }
          }),
        );
        for (let t = 0; t < twinsPerDevice; t++) {
          await device.client.publishAsync(
            `$aws/things/${id}/shadow/update`,
            JSON.stringify({ state: { reported: { cycle, t, firmware: `1.${t}` } } }),
            { qos: 1 },
          );
        }
      }),
    );
    // C2D: sent through the service API, completed by the device.
    await bounded(devices.length, 5, async (i) => {
      const device = devices[i] as C2dTestDevice;
      const ids: string[] = [];
      for (let m = 0; m < c2dPerDevice; m++) {
        const messageId = `c${cycle}-${device.deviceId}-${m}`;
        const sent = await service(
          hub.endpoints,
          'POST',
          `/devices/${device.deviceId}/messages/deviceBound`,
          {
            body: `hello ${m}`,
            messageId,
          },
        );
        if (sent.status !== 201)
          throw new Error(`C2D ${messageId}: ${sent.status} ${JSON.stringify(sent.body)}`);
        ids.push(messageId);
      }
      await device.completeAll(ids, 60_000);
    });
  } finally {
    await Promise.all(devices.map((d) => d?.end().catch(() => undefined)));
  }
}

/** RSS sampled every 250 ms while `during` runs; resolves with its result and the largest sample. */
async function sampled<T>(pid: number, during: () => Promise<T>): Promise<{ value: T; peakMb: number }> {
  let peakMb = 0;
  const timer = setInterval(() => {
    try {
      peakMb = Math.max(peakMb, procStatus(pid).rssMb);
    } catch {
      // exited
    }
  }, 250);
  try {
    return { value: await during(), peakMb };
  } finally {
    clearInterval(timer);
  }
}

/** Node options for the hub from `MEMORY_BENCH_NODE_ARGS` (e.g. `--heap-prof --diagnostic-dir=prof`), for a diagnosis. */
function hubNodeArgs(): string[] {
  return (process.env.MEMORY_BENCH_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
}

async function cycles(ctx: BenchContext): Promise<void> {
  const count = ctx.flag('cycles');
  const deviceCount = ctx.flag('devices');
  const messagesPerDevice = Math.ceil(ctx.flag('messages') / deviceCount);
  const c2dPerDevice = ctx.flag('c2d');
  const twinsPerDevice = ctx.flag('twins');
  const settleMs = ctx.flag('settle') * 1000;
  const dataDir = tempDataDir('bench-memory-');
  ctx.log(
    `${count} cycles on ${dataDir}: ${deviceCount} devices × (${messagesPerDevice} D2C QoS 1, ${c2dPerDevice} C2D completed, ${twinsPerDevice} reported updates), then SIGKILL`,
  );
  const rows: Record<string, string | number>[] = [];
  let fleet: Fleet | undefined;
  try {
    for (let cycle = 1; cycle <= count; cycle++) {
      const startedAt = performance.now();
      const hub = await startHubProcess({ dataDir, nodeArgs: hubNodeArgs() });
      try {
        const startSeconds = (performance.now() - startedAt) / 1000;
        const atStart = procStatus(hub.pid);
        fleet ??= await registerFleet(hub, 'mem', deviceCount);
        const loadStart = performance.now();
        const { peakMb } = await sampled(hub.pid, () =>
          load(hub, fleet as Fleet, messagesPerDevice, c2dPerDevice, twinsPerDevice, cycle),
        );
        const loadSeconds = (performance.now() - loadStart) / 1000;
        const afterLoad = procStatus(hub.pid);
        // Idle for a while: what the hub keeps once the load is over (environments, caches).
        await sleep(settleMs);
        const idle = procStatus(hub.pid);
        rows.push({
          cycle,
          'start s': fmt(startSeconds),
          'RSS at ready MB': fmt(atStart.rssMb),
          'threads at ready': atStart.threads,
          'load s': fmt(loadSeconds),
          'peak RSS MB': fmt(Math.max(peakMb, afterLoad.rssMb)),
          'RSS after load MB': fmt(afterLoad.rssMb),
          'threads after load': afterLoad.threads,
          [`RSS after ${fmt(settleMs / 1000)} s idle MB`]: fmt(idle.rssMb),
          'threads idle': idle.threads,
          'children MB': fmt(groupChildrenRssMb(hub.pid)),
        });
        ctx.log(`cycle ${cycle}: ${JSON.stringify(rows.at(-1))}`);
      } finally {
        await hub.kill();
        keepLog(hub, `cycle-${cycle}`);
      }
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
  ctx.table('Hub process memory per restart cycle (VmRSS of the hub process; worker threads included)', rows);
}

/** With `MEMORY_BENCH_LOG_DIR`, writes the hub's log there (`{name}.log`), for the diagnosis. */
function keepLog(hub: HubProcess, name: string): void {
  const dir = process.env.MEMORY_BENCH_LOG_DIR;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, `${name}.log`), `${hub.logs.join('\n')}\n`);
}

/** A device of the survival run: its will on its own topic, QoS 1; a retained message under devices/{id}/. */
async function connectWithWillAndRetained(hub: HubProcess, fleet: Fleet, id: string): Promise<MqttClient> {
  const client = await mqtt.connectAsync(hub.endpoints.mqtt, {
    ...credentialsOf(hub, fleet, id),
    reconnectPeriod: 0,
    clean: false,
    will: {
      topic: `devices/${id}/messages/events/will=1`,
      payload: Buffer.from(JSON.stringify({ gone: id })),
      qos: 1,
      retain: false,
    },
  });
  await client.subscribeAsync(`devices/${id}/messages/devicebound/#`, { qos: 1 });
  await client.publishAsync(`devices/${id}/state`, Buffer.alloc(64 * 1024, 's'), { qos: 1, retain: true });
  return client;
}

async function soak(ctx: BenchContext, minutes: number): Promise<void> {
  const deviceCount = ctx.flag('devices');
  const dataDir = tempDataDir('bench-soak-');
  const rows: Record<string, string | number>[] = [];
  const env = { HUB_BROKER_HEARTBEAT_MS: '' };
  let hub: HubProcess | undefined;
  try {
    hub = await startHubProcess({ dataDir, nodeArgs: hubNodeArgs(), env });
    const fleet = await registerFleet(hub, 'soak', deviceCount);
    // The probe comes and goes cleanly (no will, clean session), so the fleet stays offline with its wills.
    const probeId = 'soak-probe';
    fleet.keys.set(probeId, (await registerDevice(hub.endpoints, probeId)).symmetricKey);
    const clients: MqttClient[] = [];
    await bounded(deviceCount, 5, async (i) => {
      clients[i] = await connectWithWillAndRetained(hub as HubProcess, fleet, fleet.ids[i] ?? '');
    });
    ctx.log(`${deviceCount} devices connected with QoS 1 wills and a 64 KB retained message each; SIGKILL`);
    await hub.kill();
    for (const c of clients) c.end(true);

    const startedAt = performance.now();
    hub = await startHubProcess({ dataDir, nodeArgs: hubNodeArgs(), env });
    const current = hub;
    ctx.log(`restarted in ${fmt((performance.now() - startedAt) / 1000)} s with every device offline`);
    const watchedFrom = Date.now();
    for (let minute = 0; minute <= minutes; minute++) {
      if (minute > 0) await until(() => Date.now() >= watchedFrom + minute * 60_000, 61_000, 'the minute');
      if (!current.running())
        throw new Error(`the hub exited in minute ${minute}:\n${current.logs.slice(-30).join('\n')}`);
      const status = procStatus(current.pid);
      const t0 = performance.now();
      const api = await service(current.endpoints, 'GET', `/devices/${fleet.ids[deviceCount - 1]}`);
      const apiMs = performance.now() - t0;
      if (api.status !== 200) throw new Error(`minute ${minute}: the service API answered ${api.status}`);
      const t1 = performance.now();
      const probe = await mqtt.connectAsync(current.endpoints.mqtt, {
        ...credentialsOf(current, fleet, probeId),
        reconnectPeriod: 0,
        connectTimeout: 30_000,
      });
      const connectMs = performance.now() - t1;
      await probe.endAsync();
      const published = current.logs.filter((l) => /published the stale will/.test(l)).length;
      const dropped = current.logs.filter((l) => /stale will of .* (dropped|kept)/.test(l)).length;
      rows.push({
        minute,
        'RSS MB': fmt(status.rssMb),
        threads: status.threads,
        'GET device ms': fmt(apiMs),
        'MQTT connect ms': fmt(connectMs),
        'stale wills published': published,
        'stale wills dropped/kept': dropped,
      });
      ctx.log(`minute ${minute}: ${JSON.stringify(rows.at(-1))}`);
    }
    // The retained messages outlived the crash and the run: a device reads its own back.
    const reader = await mqtt.connectAsync(current.endpoints.mqtt, {
      ...credentialsOf(current, fleet, fleet.ids[1] ?? ''),
      reconnectPeriod: 0,
    });
    try {
      const got = new Promise<number>((resolve) =>
        reader.once('message', (_t, payload) => resolve(payload.length)),
      );
      await reader.subscribeAsync(`devices/${fleet.ids[1]}/state`, { qos: 1 });
      const bytes = await Promise.race([got, sleep(30_000).then(() => 0)]);
      ctx.log(`at the end ${fleet.ids[1]} read its retained message back: ${bytes} bytes`);
    } finally {
      await reader.endAsync();
    }
    ctx.log(
      `stale will lines in the log: ${current.logs
        .filter((l) => /stale will/.test(l))
        .slice(0, 3)
        .join(' | ')}`,
    );
  } finally {
    await hub?.kill();
    rmSync(dataDir, { recursive: true, force: true });
  }
  ctx.table(`Survival run: ${minutes} minutes after a SIGKILL with ${deviceCount} devices offline`, rows);
}

/** `npm run bench -- memory`: RSS across SIGKILL/restart cycles under load; `--soak=30` for the survival run. */
export const memory: Bench = {
  name: 'memory',
  description: 'hub RSS across SIGKILL + restart cycles under load; --soak=MIN for the survival run',
  flags: {
    cycles: { description: 'SIGKILL/restart cycles', default: 4 },
    devices: { description: 'devices', default: 20 },
    messages: { description: 'D2C messages per cycle (all devices)', default: 4000 },
    c2d: { description: 'C2D messages per device per cycle', default: 5 },
    twins: { description: 'reported-property updates per device per cycle', default: 5 },
    settle: {
      description:
        'idle seconds after the load before the last sample (past the 60 s idle timeout of function environments)',
      default: 90,
    },
    soak: { description: 'minutes of the survival run instead of the cycles (0: cycles)', default: 0 },
  },
  async run(ctx) {
    const minutes = ctx.flag('soak');
    if (minutes > 0) await soak(ctx, minutes);
    else await cycles(ctx);
  },
};
