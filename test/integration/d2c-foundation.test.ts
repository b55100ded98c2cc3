import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ScanCommand } from '@aws-sdk/client-dynamodb';
import { IoTDataPlaneClient, PublishCommand } from '@aws-sdk/client-iot-data-plane';
import mqtt from 'mqtt';
import { beforeAll, describe, expect, it } from 'vitest';
import { LOCAL_CREDENTIALS, localDynamoClient } from '../../local/emulators.ts';
import { type ReadRecord, waitForRecords } from '../support/built-in.ts';
import { registerDevice } from '../support/devices.ts';
import { type HubProcess, startHubProcess, startHubWith, tempDataDir } from '../support/hub-process.ts';
import { sharedHub } from '../support/shared-hub.ts';

function hasCommand(name: string): boolean {
  try {
    execFileSync('which', [name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const byDevice = (records: ReadRecord[], deviceId: string) =>
  records.filter((r) => r.envelope.deviceId === deviceId);
/** The mappings' checkpoints on disk (none yet: empty). */
function readCheckpoints(dataDir: string): Record<string, string> {
  try {
    return JSON.parse(readFileSync(`${dataDir}/checkpoints.json`, 'utf8')) as Record<string, string>;
  } catch {
    return {};
  }
}
const marks = (records: ReadRecord[]) => records.map((r) => r.envelope.properties.n);

describe('the first end-to-end path on the local hub', () => {
  let hub: HubProcess;
  beforeAll(async () => {
    hub = await sharedHub();
  });

  it('delivers 1,000 QoS 1 messages from an mqtt.js device to the built-in endpoint, in order, keyed by device id', async () => {
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'mqtt-bulk-1')),
    });
    const sends: Promise<unknown>[] = [];
    for (let n = 0; n < 1000; n++) {
      sends.push(
        device.publishAsync(`devices/mqtt-bulk-1/messages/events/$.mid=m${n}&n=${n}`, `payload ${n}`, {
          qos: 1,
        }),
      );
    }
    await Promise.all(sends);
    await device.endAsync();

    const records = await waitForRecords(
      hub.endpoints.kinesis,
      hub.endpoints.builtInStream,
      (r) => byDevice(r, 'mqtt-bulk-1').length >= 1000,
    );
    const mine = byDevice(records, 'mqtt-bulk-1');
    expect(new Set(mine.map((r) => r.envelope.messageId)).size).toBe(1000);
    expect(mine.every((r) => r.partitionKey === 'mqtt-bulk-1')).toBe(true);
    expect(new Set(mine.map((r) => r.shardId)).size).toBe(1);
    // Per-device order: read back in the order sent (duplicates, if any, only repeat a prefix).
    const firstSeen = [...new Map(mine.map((r) => [r.envelope.messageId, r])).values()];
    expect(marks(firstSeen)).toEqual(Array.from({ length: 1000 }, (_, n) => String(n)));
    const sample = mine[0]!.envelope;
    expect(sample.systemProperties['iothub-connection-device-id']).toBe('mqtt-bulk-1');
    expect(Date.parse(sample.enqueuedTime)).toBeGreaterThan(Date.now() - 600_000);
    expect(Buffer.from(String(sample.body), 'base64').toString()).toBe('payload 0');
  });

  it('decodes JSON bodies and the property bag into the envelope', async () => {
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'json-1')),
    });
    await device.publishAsync(
      'devices/json-1/messages/events/$.mid=j1&$.cid=c9&$.ct=application%2Fjson&$.ce=utf-8&alert=high%20temp',
      JSON.stringify({ temp: 21.5, nested: { ok: true } }),
      { qos: 1 },
    );
    await device.endAsync();
    const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
      r.some((x) => x.envelope.messageId === 'j1'),
    );
    const envelope = records.find((x) => x.envelope.messageId === 'j1')!.envelope;
    expect(envelope.bodyEncoding).toBe('json');
    expect(envelope.body).toEqual({ temp: 21.5, nested: { ok: true } });
    expect(envelope.properties).toEqual({ alert: 'high temp' });
    expect(envelope.systemProperties).toMatchObject({
      'message-id': 'j1',
      'correlation-id': 'c9',
      'content-type': 'application/json',
      'iothub-message-source': 'Telemetry',
    });
  });

  it('accepts devices over TLS (with the printed CA) and over WebSocket', async () => {
    const ca = readFileSync(hub.endpoints.caCertificate);
    const tls = await mqtt.connectAsync(hub.endpoints.mqtts, {
      ...(await registerDevice(hub.endpoints, 'tls-1')),
      ca,
      servername: 'localhost',
    });
    await tls.publishAsync('devices/tls-1/messages/events/$.mid=t1', 'over tls', { qos: 1 });
    await tls.endAsync();
    const ws = await mqtt.connectAsync(hub.endpoints.ws, {
      ...(await registerDevice(hub.endpoints, 'ws-1')),
    });
    await ws.publishAsync('devices/ws-1/messages/events/$.mid=w1', 'over ws', { qos: 1 });
    await ws.endAsync();
    const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
      ['t1', 'w1'].every((id) => r.some((x) => x.envelope.messageId === id)),
    );
    expect(records.find((x) => x.envelope.messageId === 't1')?.envelope.deviceId).toBe('tls-1');
    expect(records.find((x) => x.envelope.messageId === 'w1')?.envelope.deviceId).toBe('ws-1');
  });

  it.skipIf(!hasCommand('mosquitto_pub') && !process.env.CI)(
    'delivers 1,000 QoS 1 messages sent with mosquitto_pub (Debian mosquitto-clients)',
    async () => {
      const port = new URL(hub.endpoints.mqtt).port;
      // One connection, one message per stdin line (-l), QoS 1: mosquitto_pub waits for each PUBACK.
      const lines = Array.from({ length: 1000 }, (_, n) => `line ${n}`).join('\n');
      const credentials = await registerDevice(hub.endpoints, 'mosq-1');
      const child = spawn('mosquitto_pub', [
        '-u',
        credentials.username,
        '-P',
        credentials.password,
        '-h',
        '127.0.0.1',
        '-p',
        port,
        '-i',
        'mosq-1',
        '-q',
        '1',
        '-t',
        'devices/mosq-1/messages/events/src=mosquitto',
        '-l',
      ]);
      child.stdin.end(`${lines}\n`);
      const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
      expect(code).toBe(0);
      const records = await waitForRecords(
        hub.endpoints.kinesis,
        hub.endpoints.builtInStream,
        (r) => byDevice(r, 'mosq-1').length >= 1000,
      );
      const bodies = byDevice(records, 'mosq-1').map((r) =>
        Buffer.from(String(r.envelope.body), 'base64').toString(),
      );
      expect(new Set(bodies).size).toBe(1000);
      expect(bodies[0]).toBe('line 0');
      expect(bodies[999]).toBe('line 999');
    },
  );

  it('takes publishes through the IoT data plane with the unchanged AWS SDK client', async () => {
    const client = new IoTDataPlaneClient({
      endpoint: hub.endpoints.dataPlane,
      region: hub.endpoints.region,
      credentials: LOCAL_CREDENTIALS,
    });
    const watcher = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'watch-1')),
    });
    await watcher.subscribeAsync('devices/watch-1/messages/devicebound/#', { qos: 1 });
    const got = new Promise<string>((resolve) => watcher.on('message', (_t, p) => resolve(p.toString())));
    await client.send(
      new PublishCommand({
        topic: 'devices/watch-1/messages/devicebound/x=1',
        qos: 1,
        payload: Buffer.from('hello'),
      }),
    );
    expect(await got).toBe('hello');
    await watcher.endAsync();
    client.destroy();
  });
});

describe('bad input at the front door', () => {
  let hub: HubProcess;
  beforeAll(async () => {
    hub = await sharedHub();
  });

  async function expectDisconnected(
    clientId: string,
    topic: string,
    payload: Buffer | string,
  ): Promise<void> {
    const client = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, clientId)),
      reconnectPeriod: 0,
    });
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    client.publish(topic, payload, { qos: 1 });
    await closed;
    client.end(true);
  }

  it('disconnects a device that publishes outside the topic scheme and logs why', async () => {
    await expectDisconnected('bad-1', 'foo/bar', 'x');
    await hub.waitForLog(/publish refused.*device 'bad-1'.*'foo\/bar'/);
  });

  it('disconnects a device that publishes with an empty device id in the topic', async () => {
    await expectDisconnected('bad-2', 'devices//messages/events', 'x');
    await hub.waitForLog(/publish refused.*'devices\/\/messages\/events'/);
  });

  it("disconnects a device that publishes on another device's topic (anti-spoofing)", async () => {
    await expectDisconnected('bad-3', 'devices/victim/messages/events', 'x');
    await hub.waitForLog(/publish refused.*device 'bad-3'.*'devices\/victim\/messages\/events'/);
  });

  it('disconnects a device that sends more than 256 KB and logs the size and the limit', async () => {
    await expectDisconnected('bad-4', 'devices/bad-4/messages/events', Buffer.alloc(256 * 1024 + 1, 1));
    await hub.waitForLog(/publish refused.*'bad-4' sent 262145 bytes.*limit is 262144/);
  });

  it('refuses a subscription to another device’s topics', async () => {
    const client = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'bad-5')),
    });
    // The broker answers SUBACK 0x80 (failure); mqtt.js turns that into a rejection.
    await expect(client.subscribeAsync('devices/other/messages/devicebound/#', { qos: 1 })).rejects.toThrow(
      /Subscribe error/,
    );
    await client.endAsync();
    await hub.waitForLog(/subscribe refused: device 'bad-5'/);
  });

  it('dead-letters a malformed property bag with the reason, and stays up', async () => {
    const client = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'bad-6')),
    });
    await client.publishAsync('devices/bad-6/messages/events/$.bogus=1', 'x', { qos: 1 });
    await client.publishAsync('devices/bad-6/messages/events/ok=%E0%A4%A', 'y', { qos: 1 });
    await client.publishAsync('devices/bad-6/messages/events/$.mid=fine', 'z', { qos: 1 });
    await client.endAsync();
    // The good message after the bad ones arrives: the pipeline is not stuck.
    await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
      r.some((x) => x.envelope.messageId === 'fine'),
    );
    const dynamo = localDynamoClient(hub.endpoints.dynamodb);
    const scan = await dynamo.send(new ScanCommand({ TableName: hub.endpoints.deadLetterTable }));
    dynamo.destroy();
    const letters = (scan.Items ?? []).filter((i) => i.deviceId?.S === 'bad-6');
    expect(letters.map((l) => l.code?.S).sort()).toEqual(['InvalidPropertyBag', 'InvalidPropertyBag']);
    expect(letters.map((l) => l.reason?.S).join('\n')).toMatch(/unknown system property '\$\.bogus'/);
    // The original record is kept for replay.
    expect(letters.every((l) => (l.record?.S ?? '').length > 0)).toBe(true);
  });

  it('is still up and delivering after all of the above', async () => {
    const client = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'good-1')),
    });
    await client.publishAsync('devices/good-1/messages/events/$.mid=after-bad', 'ok', { qos: 1 });
    await client.endAsync();
    const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
      r.some((x) => x.envelope.messageId === 'after-bad'),
    );
    expect(records.some((x) => x.envelope.messageId === 'after-bad')).toBe(true);
  });
});

describe('crash and restart', () => {
  it('keeps every PUBACKed message across a SIGKILL mid-flight and a restart on the same data directory', async () => {
    const dataDir = tempDataDir();
    let hub = await startHubProcess({ dataDir });
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'crash-1')),
      reconnectPeriod: 0,
    });
    device.on('error', () => undefined);
    const acked = new Set<string>();
    let n = 0;
    let stop = false;
    // Keep 20 publishes in flight at all times until the broker goes away.
    const pump = async () => {
      while (!stop) {
        const id = `c${n++}`;
        try {
          await device.publishAsync(`devices/crash-1/messages/events/$.mid=${id}`, id, { qos: 1 });
          acked.add(id);
        } catch {
          return;
        }
      }
    };
    // Not awaited: after the kill, mqtt.js keeps unacknowledged QoS 1 publishes pending forever.
    for (let i = 0; i < 20; i++) void pump();
    while (acked.size < 300) await new Promise((r) => setTimeout(r, 20));
    await hub.kill();
    stop = true;
    device.end(true);
    expect(acked.size).toBeGreaterThanOrEqual(300);

    hub = await startHubProcess({ dataDir });
    try {
      const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) => {
        const ids = new Set(byDevice(r, 'crash-1').map((x) => x.envelope.messageId));
        return [...acked].every((id) => ids.has(id));
      });
      const ids = new Set(byDevice(records, 'crash-1').map((x) => x.envelope.messageId));
      const missing = [...acked].filter((id) => !ids.has(id));
      expect(missing).toEqual([]);
    } finally {
      await hub.stop();
    }
  });

  it('loses no PUBACKed message when killed with ingest batches in flight from many devices', async () => {
    const dataDir = tempDataDir();
    let hub = await startHubProcess({ dataDir });
    const ids = ['gc-1', 'gc-2', 'gc-3', 'gc-4', 'gc-5', 'gc-6'];
    const devices = await Promise.all(
      ids.map(async (id) => {
        const device = await mqtt.connectAsync(hub.endpoints.mqtt, {
          ...(await registerDevice(hub.endpoints, id)),
          reconnectPeriod: 0,
        });
        device.on('error', () => undefined);
        return { id, device };
      }),
    );
    const acked = new Set<string>();
    let n = 0;
    let stop = false;
    // Every device keeps 8 publishes in flight: the rules engine always has a PutRecords call out
    // with records of several devices and more gathering for the next one.
    const pump = async (id: string, device: mqtt.MqttClient) => {
      while (!stop) {
        const mid = `${id}-${n++}`;
        try {
          await device.publishAsync(`devices/${id}/messages/events/$.mid=${mid}`, mid, { qos: 1 });
          acked.add(mid);
        } catch {
          return;
        }
      }
    };
    for (const { id, device } of devices) for (let i = 0; i < 8; i++) void pump(id, device);
    while (acked.size < 400) await new Promise((r) => setTimeout(r, 20));
    await hub.kill();
    stop = true;
    for (const { device } of devices) device.end(true);

    hub = await startHubProcess({ dataDir });
    try {
      const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) => {
        const seen = new Set(r.map((x) => x.envelope.messageId));
        return [...acked].every((id) => seen.has(id));
      });
      const seen = new Set(records.map((x) => x.envelope.messageId));
      expect([...acked].filter((id) => !seen.has(id))).toEqual([]);
    } finally {
      await hub.stop();
    }
  });

  it('replays, never loses, what the router wrote when killed between a router call and its checkpoint', async () => {
    const telemetry = (records: ReadRecord[]) =>
      byDevice(records, 'cp-1').filter((x) => /^cp\d+$/.test(String(x.envelope.messageId)));
    const dataDir = tempDataDir();
    // Checkpoints wait ten minutes to be written: the kill lands after the router's writes, before any checkpoint.
    let hub = await startHubProcess({ dataDir, env: { LOCAL_HUB_CHECKPOINT_MS: '600000' } });
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'cp-1')),
    });
    const sends: Promise<unknown>[] = [];
    for (let i = 0; i < 200; i++)
      sends.push(device.publishAsync(`devices/cp-1/messages/events/$.mid=cp${i}`, `cp${i}`, { qos: 1 }));
    await Promise.all(sends);
    await device.endAsync();
    await waitForRecords(
      hub.endpoints.kinesis,
      hub.endpoints.builtInStream,
      (r) => new Set(telemetry(r).map((x) => x.envelope.messageId)).size >= 200,
    );
    const before = readCheckpoints(dataDir);
    await hub.kill();
    // Nothing the router did was checkpointed yet.
    expect(before).toEqual({});

    hub = await startHubProcess({ dataDir });
    try {
      const records = await waitForRecords(
        hub.endpoints.kinesis,
        hub.endpoints.builtInStream,
        (r) => telemetry(r).length >= 400,
      );
      const mine = telemetry(records);
      const unique = new Set(mine.map((x) => x.envelope.messageId));
      expect(unique.size).toBe(200);
      // At least once: the restart routed the unacknowledged batches again; each message is there twice.
      expect(mine.length - unique.size).toBe(200);
    } finally {
      await hub.stop();
    }
  });

  it('shuts down cleanly on SIGINT and a second start reuses the data', async () => {
    const dataDir = tempDataDir();
    let hub = await startHubProcess({ dataDir });
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'restart-1')),
    });
    await device.publishAsync('devices/restart-1/messages/events/$.mid=before', 'x', { qos: 1 });
    await device.endAsync();
    await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
      r.some((x) => x.envelope.messageId === 'before'),
    );
    expect(await hub.stop()).toBe(0);
    hub = await startHubProcess({ dataDir });
    try {
      const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
        r.some((x) => x.envelope.messageId === 'before'),
      );
      expect(records.filter((x) => x.envelope.messageId === 'before').length).toBe(1);
    } finally {
      await hub.stop();
    }
  });
});

describe('the local hub follows the synthesized template', () => {
  it('uses a changed ingest topic filter from a test stack, with no local code edited', async () => {
    const hub = await startHubWith({ d2cTopicFilter: 'devices/+/messages/events/priority=high' });
    try {
      const device = await mqtt.connectAsync(hub.endpoints.mqtt, {
        ...(await registerDevice(hub.endpoints, 'filter-1')),
      });
      await device.publishAsync('devices/filter-1/messages/events/$.mid=low', 'not taken', { qos: 1 });
      await device.publishAsync('devices/filter-1/messages/events/priority=high', 'taken', { qos: 1 });
      await device.endAsync();
      const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
        r.some((x) => x.envelope.properties.priority === 'high'),
      );
      // Rules run before the PUBACK and in publish order, so by the time the second message is
      // on the stream the first one's rule decision is long made: it was not taken.
      expect(byDevice(records, 'filter-1').map((x) => x.envelope.properties)).toEqual([{ priority: 'high' }]);
    } finally {
      await hub.stop();
    }
  });
});
