import { readFileSync } from 'node:fs';
import { ListRetainedMessagesCommand, PublishCommand } from '@aws-sdk/client-iot-data-plane';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { localIoTDataPlaneClient } from '../../local/emulators.ts';
import { waitForRecords } from '../support/built-in.ts';
import { type DeviceCredentials, registerDevice, service } from '../support/devices.ts';
import { type HubProcess, startHubProcess, tempDataDir } from '../support/hub-process.ts';

// Issue 17: the front door's defects, each reproduced as it was reported, on a real hub process.

/** Waits for `condition`, polling; never a fixed sleep. */
async function until(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function connect(hub: HubProcess, creds: DeviceCredentials, extra: mqtt.IClientOptions = {}) {
  return mqtt.connectAsync(hub.endpoints.mqtt, {
    clientId: creds.clientId,
    username: creds.username,
    password: creds.password,
    reconnectPeriod: 0,
    ...extra,
  });
}

describe('a will left by a killed hub (the crash loop of issue 17)', () => {
  // The broker looks for a dead broker's wills every 4 heartbeats: 4 × 250 ms instead of 4 minutes.
  const env = { HUB_BROKER_HEARTBEAT_MS: '250' };

  it('is published as the device after the restart, and the hub stays up', async () => {
    const dataDir = tempDataDir();
    const first = await startHubProcess({ dataDir, env });
    try {
      const creds = await registerDevice(first.endpoints, 'w1');
      const device = await connect(first, creds, {
        will: {
          topic: 'devices/w1/messages/events/will=1',
          payload: Buffer.from('gone'),
          qos: 1,
          retain: false,
        },
      });
      // The will is stored with the session at CONNECT; a subscription round trip shows it is settled.
      await device.subscribeAsync('devices/w1/messages/devicebound/#', { qos: 1 });
      // SIGKILL with w1 connected: its connection is lost with the broker, which leaves its will behind.
      await first.kill();
      device.end(true);
    } finally {
      await first.kill();
    }
    const second = await startHubProcess({ dataDir, env });
    try {
      await second.waitForLog(/published the stale will of 'w1'/, 30_000);
      const records = await waitForRecords(second.endpoints.kinesis, second.endpoints.builtInStream, (rs) =>
        rs.some((r) => r.envelope.deviceId === 'w1' && r.envelope.properties.will === '1'),
      );
      const will = records.find((r) => r.envelope.deviceId === 'w1' && r.envelope.properties.will === '1');
      expect(will?.envelope.systemProperties['iothub-connection-device-id']).toBe('w1');
      expect(second.logs.some((l) => /publish from an unauthenticated client/.test(l))).toBe(false);
      expect((await service(second.endpoints, 'GET', '/devices/w1')).status).toBe(200);
    } finally {
      expect(await second.stop()).toBe(0);
    }
  });

  it('is dropped for good, with the reason logged, when its device was deleted before the restart', async () => {
    const dataDir = tempDataDir();
    const first = await startHubProcess({ dataDir, env });
    try {
      const creds = await registerDevice(first.endpoints, 'w2');
      const device = await connect(first, creds, {
        will: {
          topic: 'devices/w2/messages/events/will=1',
          payload: Buffer.from('gone'),
          qos: 1,
          retain: false,
        },
      });
      await device.subscribeAsync('devices/w2/messages/devicebound/#', { qos: 1 });
      // Killed with w2 connected; w2 is deleted on the next run, before its will is looked at.
      await first.kill();
      device.end(true);
    } finally {
      await first.kill();
    }
    // A long heartbeat on the second run: the device is deleted before the first will check (four
    // heartbeats, 40 s; 8 s lost the race on a loaded machine, where the service API's first call is slow).
    const second = await startHubProcess({ dataDir, env: { HUB_BROKER_HEARTBEAT_MS: '10000' } });
    try {
      expect((await service(second.endpoints, 'DELETE', '/devices/w2')).status).toBe(204);
      await second.waitForLog(
        /stale will of 'w2'.*dropped: the device is not registered or not enabled/,
        90_000,
      );
      expect((await service(second.endpoints, 'GET', '/devices')).status).toBe(200);
    } finally {
      expect(await second.stop()).toBe(0);
    }
  });
});

describe('the front door on one shared hub', () => {
  let hub: HubProcess;
  beforeAll(async () => {
    hub = await startHubProcess({ args: ['--host=0.0.0.0'] });
  });
  afterAll(async () => {
    await hub?.stop();
  });

  it("does not give a deleted device's retained message to a new device registered under its id", async () => {
    const creds = await registerDevice(hub.endpoints, 'r1');
    const device = await connect(hub, creds);
    await device.publishAsync('devices/r1/state', 'old secret', { qos: 1, retain: true });
    await device.endAsync();
    const dataPlane = localIoTDataPlaneClient(hub.endpoints.dataPlane);
    try {
      const retainedOf = async (prefix: string) =>
        ((await dataPlane.send(new ListRetainedMessagesCommand({}))).retainedTopics ?? [])
          .map((t) => t.topic ?? '')
          .filter((t) => t.startsWith(prefix));
      expect(await retainedOf('devices/r1/')).toEqual(['devices/r1/state']);
      expect((await service(hub.endpoints, 'DELETE', '/devices/r1')).status).toBe(204);
      await until(async () => (await retainedOf('devices/r1/')).length === 0, 'the retained message cleared');

      const again = await registerDevice(hub.endpoints, 'r1');
      const newcomer = await connect(hub, again);
      const seen: string[] = [];
      newcomer.on('message', (_topic, payload) => seen.push(payload.toString()));
      await newcomer.subscribeAsync('devices/r1/#', { qos: 1 });
      // A marker published after the SUBACK: retained messages would have come before it.
      await dataPlane.send(
        new PublishCommand({ topic: 'devices/r1/marker', qos: 1, payload: Buffer.from('marker') }),
      );
      await until(() => seen.includes('marker'), 'the marker');
      expect(seen).toEqual(['marker']);
      await newcomer.endAsync();
    } finally {
      dataPlane.destroy();
    }
  });

  it('refuses a retained message over 128 KB (IoT Core keeps no larger one) and keeps a smaller one', async () => {
    const creds = await registerDevice(hub.endpoints, 'r2');
    const small = await connect(hub, creds);
    await small.publishAsync('devices/r2/a', Buffer.alloc(100 * 1024, 1), { qos: 1, retain: true });
    await small.endAsync();
    const big = await connect(hub, creds);
    const closed = new Promise<void>((resolve) => big.once('close', () => resolve()));
    big.publish('devices/r2/b', Buffer.alloc(200 * 1024, 1), { qos: 1, retain: true });
    await closed;
    big.end(true);
    await hub.waitForLog(/retained message of 204800 bytes.*up to 131072 bytes/);
    // Retained only on its own devices/{id}/ topics, where its policy grants iot:RetainPublish.
    const shadow = await connect(hub, creds);
    const shadowClosed = new Promise<void>((resolve) => shadow.once('close', () => resolve()));
    shadow.publish('$aws/things/r2/shadow/update', '{"state":{"reported":{"a":1}}}', {
      qos: 1,
      retain: true,
    });
    await shadowClosed;
    shadow.end(true);
    await hub.waitForLog(/retained message on '\$aws\/things\/r2\/shadow\/update'.*devices\/r2\/\* only/);
  });

  it('keeps the AWS stand-ins on loopback when --host opens the device endpoints to the network', () => {
    const listening = listeningAddresses();
    const port = (url: string) => Number(new URL(url).port);
    for (const url of [hub.endpoints.dynamodb, hub.endpoints.kinesis, hub.endpoints.dataPlane]) {
      expect(listening.get(port(url)), url).toBe('127.0.0.1');
    }
    expect(listening.get(port(hub.endpoints.mqtt))).toBe('0.0.0.0');
  });
});

/** Listening TCP sockets (IPv4) of this machine: port → local address, from /proc/net/tcp. */
function listeningAddresses(): Map<number, string> {
  const out = new Map<number, string>();
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const [, local, , state] = line.trim().split(/\s+/);
    if (state !== '0A' || !local) continue;
    const [hexAddress = '', hexPort = ''] = local.split(':');
    const bytes =
      hexAddress
        .match(/../g)
        ?.map((b) => Number.parseInt(b, 16))
        .reverse() ?? [];
    out.set(Number.parseInt(hexPort, 16), bytes.join('.'));
  }
  return out;
}
