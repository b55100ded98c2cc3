import { readFileSync, writeFileSync } from 'node:fs';
import {
  GetThingShadowCommand,
  type IoTDataPlaneClient,
  ResourceNotFoundException,
  UpdateThingShadowCommand,
} from '@aws-sdk/client-iot-data-plane';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { localIoTDataPlaneClient } from '../../local/emulators.ts';
import type { CfnTemplate } from '../../local/template.ts';
import { type DeviceCredentials, registerDevice } from '../support/devices.ts';
import { type HubProcess, startHubProcess, testTemplate } from '../support/hub-process.ts';

// The local hub's Device Shadow service end to end: a real hub process, real mqtt.js devices with
// SAS tokens, and @aws-sdk/client-iot-data-plane against the hub's data plane.

/**
 * The default stack plus one topic rule on the shadow documents topic that republishes the new
 * reported state to `devices/{thing}/shadow-documents`, where the device itself can read it: proof
 * that shadow messages reach the rules engine, as they do in IoT Core.
 */
function templateWithShadowRule(): string {
  const file = testTemplate({});
  const template = JSON.parse(readFileSync(file, 'utf8')) as CfnTemplate;
  template.Resources.ShadowDocumentsRule = {
    Type: 'AWS::IoT::TopicRule',
    Properties: {
      TopicRulePayload: {
        Sql: "SELECT current.state.reported AS reported, current.version AS version, topic(3) AS thing FROM '$aws/things/+/shadow/update/documents'",
        AwsIotSqlVersion: '2016-03-23',
        RuleDisabled: false,
        Actions: [
          {
            Republish: {
              Topic: 'devices/${topic(3)}/shadow-documents',
              Qos: 1,
              RoleArn: 'arn:aws:iam::000000000000:role/shadow-test',
            },
          },
        ],
      },
    },
  };
  writeFileSync(file, JSON.stringify(template));
  return file;
}

/** A connected device that records every message it receives. */
interface Device {
  readonly client: MqttClient;
  readonly id: string;
  /** Resolves with the next message on `topic` received after this call (or already queued). */
  next(topic: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Messages received on `topic` so far. */
  received(topic: string): Record<string, unknown>[];
}

async function connect(
  hub: HubProcess,
  creds: DeviceCredentials,
  topics: readonly string[],
): Promise<Device> {
  const client = await mqtt.connectAsync(hub.endpoints.mqtt, { ...creds, reconnectPeriod: 0 });
  const inbox = new Map<string, Record<string, unknown>[]>();
  const cursors = new Map<string, number>();
  const waiters: { topic: string; wake: () => void }[] = [];
  client.on('message', (topic, payload) => {
    const list = inbox.get(topic) ?? [];
    list.push(JSON.parse(payload.toString()) as Record<string, unknown>);
    inbox.set(topic, list);
    for (const w of waiters.filter((x) => x.topic === topic)) w.wake();
  });
  if (topics.length > 0) await client.subscribeAsync([...topics], { qos: 1 });
  return {
    client,
    id: creds.clientId,
    received: (topic) => inbox.get(topic) ?? [],
    next: (topic, timeoutMs = 10_000) =>
      new Promise((resolve, reject) => {
        const take = () => {
          const at = cursors.get(topic) ?? 0;
          const message = inbox.get(topic)?.[at];
          if (!message) return false;
          cursors.set(topic, at + 1);
          resolve(message);
          return true;
        };
        if (take()) return;
        const timer = setTimeout(
          () => reject(new Error(`nothing on ${topic} within ${timeoutMs} ms`)),
          timeoutMs,
        );
        const waiter = {
          topic,
          wake: () => {
            if (!take()) return;
            clearTimeout(timer);
            waiters.splice(waiters.indexOf(waiter), 1);
          },
        };
        waiters.push(waiter);
      }),
  };
}

const shadowTopics = (id: string) =>
  [
    'update/accepted',
    'update/rejected',
    'update/delta',
    'update/documents',
    'get/accepted',
    'get/rejected',
  ].map((t) => `$aws/things/${id}/shadow/${t}`);

const json = (payload: Uint8Array | undefined) =>
  JSON.parse(Buffer.from(payload ?? []).toString()) as Record<string, unknown>;

let template: string;
let hub: HubProcess;
let plane: IoTDataPlaneClient;

beforeAll(async () => {
  template = templateWithShadowRule();
  hub = await startHubProcess({ args: [`--template=${template}`] });
  plane = localIoTDataPlaneClient(hub.endpoints.dataPlane);
});
afterAll(async () => {
  plane?.destroy();
  await hub?.stop();
});

describe('device shadows on the local hub', () => {
  it('a device reports over MQTT, gets update/accepted, and a rule on update/documents fires', async () => {
    const creds = await registerDevice(hub.endpoints, 'shadow-report');
    const device = await connect(hub, creds, [...shadowTopics('shadow-report'), 'devices/shadow-report/#']);
    const prefix = '$aws/things/shadow-report/shadow';
    await device.client.publishAsync(
      `${prefix}/update`,
      JSON.stringify({ state: { reported: { temp: 21, fw: '1.0' } }, clientToken: 'r1' }),
      { qos: 1 },
    );
    const accepted = await device.next(`${prefix}/update/accepted`);
    expect(accepted).toMatchObject({
      state: { reported: { temp: 21, fw: '1.0' } },
      metadata: { reported: { temp: { timestamp: expect.any(Number) } } },
      version: 1,
      clientToken: 'r1',
    });
    expect(await device.next(`${prefix}/update/documents`)).toMatchObject({
      current: { state: { reported: { temp: 21, fw: '1.0' } }, version: 1 },
    });
    // The topic rule saw the documents message and republished its selection.
    expect(await device.next('devices/shadow-report/shadow-documents')).toEqual({
      reported: { temp: 21, fw: '1.0' },
      version: 1,
      thing: 'shadow-report',
    });
    // No desired, so no delta.
    expect(device.received(`${prefix}/update/delta`)).toEqual([]);

    await device.client.publishAsync(`${prefix}/update`, '{"state":', { qos: 1 });
    expect(await device.next(`${prefix}/update/rejected`)).toMatchObject({
      code: 400,
      message: 'Invalid JSON',
    });
    await device.client.endAsync();
  });

  it('a desired update through IoTDataPlaneClient reaches the device on update/delta; get over MQTT', async () => {
    const creds = await registerDevice(hub.endpoints, 'shadow-desired');
    const device = await connect(hub, creds, shadowTopics('shadow-desired'));
    const prefix = '$aws/things/shadow-desired/shadow';

    await device.client.publishAsync(`${prefix}/get`, JSON.stringify({ clientToken: 'g0' }), { qos: 1 });
    expect(await device.next(`${prefix}/get/rejected`)).toMatchObject({ code: 404, clientToken: 'g0' });

    const updated = await plane.send(
      new UpdateThingShadowCommand({
        thingName: 'shadow-desired',
        payload: Buffer.from(JSON.stringify({ state: { desired: { fan: 'on', speed: 3 } } })),
      }),
    );
    expect(json(updated.payload)).toMatchObject({ state: { desired: { fan: 'on', speed: 3 } }, version: 1 });
    expect(await device.next(`${prefix}/update/delta`)).toMatchObject({
      state: { fan: 'on', speed: 3 },
      metadata: { fan: { timestamp: expect.any(Number) } },
      version: 1,
    });
    // REST updates are announced on update/accepted too, as MQTT ones are.
    expect(await device.next(`${prefix}/update/accepted`)).toMatchObject({
      state: { desired: { fan: 'on', speed: 3 } },
      version: 1,
    });

    // The device applies part of it and reports; get shows what is still to do.
    await device.client.publishAsync(
      `${prefix}/update`,
      JSON.stringify({ state: { reported: { fan: 'on' } } }),
      {
        qos: 1,
      },
    );
    expect(await device.next(`${prefix}/update/accepted`)).toMatchObject({ version: 2 });
    await device.client.publishAsync(`${prefix}/get`, JSON.stringify({ clientToken: 'g1' }), { qos: 1 });
    expect(await device.next(`${prefix}/get/accepted`)).toMatchObject({
      state: { desired: { fan: 'on', speed: 3 }, reported: { fan: 'on' }, delta: { speed: 3 } },
      version: 2,
      clientToken: 'g1',
    });
    const got = json((await plane.send(new GetThingShadowCommand({ thingName: 'shadow-desired' }))).payload);
    expect(got).toMatchObject({ state: { delta: { speed: 3 } }, version: 2 });
    await device.client.endAsync();
  });

  it('named shadows work over MQTT and the data plane', async () => {
    const creds = await registerDevice(hub.endpoints, 'shadow-named');
    const prefix = '$aws/things/shadow-named/shadow/name/config';
    const device = await connect(hub, creds, [`${prefix}/update/accepted`, `${prefix}/update/delta`]);
    await plane.send(
      new UpdateThingShadowCommand({
        thingName: 'shadow-named',
        shadowName: 'config',
        payload: Buffer.from(JSON.stringify({ state: { desired: { interval: 60 } } })),
      }),
    );
    expect(await device.next(`${prefix}/update/delta`)).toMatchObject({ state: { interval: 60 } });
    expect(await device.next(`${prefix}/update/accepted`)).toMatchObject({ version: 1 });
    await device.client.publishAsync(
      `${prefix}/update`,
      JSON.stringify({ state: { reported: { interval: 60 } } }),
      {
        qos: 1,
      },
    );
    expect(await device.next(`${prefix}/update/accepted`)).toMatchObject({ version: 2 });
    await expect(plane.send(new GetThingShadowCommand({ thingName: 'shadow-named' }))).rejects.toBeInstanceOf(
      ResourceNotFoundException,
    );
    await device.client.endAsync();
  });

  it("device A cannot update device B's shadow: the publish is refused and B's shadow is unchanged", async () => {
    const a = await registerDevice(hub.endpoints, 'shadow-a');
    const b = await registerDevice(hub.endpoints, 'shadow-b');
    await plane.send(
      new UpdateThingShadowCommand({
        thingName: 'shadow-b',
        payload: Buffer.from(JSON.stringify({ state: { desired: { locked: true } } })),
      }),
    );
    const victim = await connect(hub, b, shadowTopics('shadow-b'));
    const intruder = await mqtt.connectAsync(hub.endpoints.mqtt, { ...a, reconnectPeriod: 0 });
    const closed = new Promise<void>((resolve) => intruder.once('close', () => resolve()));
    intruder.publish(
      '$aws/things/shadow-b/shadow/update',
      JSON.stringify({ state: { desired: { locked: false } } }),
      { qos: 1 },
    );
    await closed;
    intruder.end(true);
    await hub.waitForLog(/publish refused.*device 'shadow-a'/);
    const doc = json((await plane.send(new GetThingShadowCommand({ thingName: 'shadow-b' }))).payload);
    expect(doc).toMatchObject({ state: { desired: { locked: true } }, version: 1 });
    expect(victim.received('$aws/things/shadow-b/shadow/update/accepted')).toEqual([]);
    await victim.client.endAsync();
  });

  // Last: it replaces the shared hub with a restarted one.
  it('shadows survive a SIGKILL of the hub and its restart on the same data dir', async () => {
    const creds = await registerDevice(hub.endpoints, 'shadow-durable');
    const prefix = '$aws/things/shadow-durable/shadow';
    const device = await connect(hub, creds, shadowTopics('shadow-durable'));
    await device.client.publishAsync(
      `${prefix}/update`,
      JSON.stringify({ state: { reported: { boot: 1 } } }),
      {
        qos: 1,
      },
    );
    await device.next(`${prefix}/update/accepted`);
    await plane.send(
      new UpdateThingShadowCommand({
        thingName: 'shadow-durable',
        payload: Buffer.from(JSON.stringify({ state: { desired: { mode: 'eco' } } })),
      }),
    );
    const before = json(
      (await plane.send(new GetThingShadowCommand({ thingName: 'shadow-durable' }))).payload,
    );
    device.client.end(true);

    await hub.kill();
    plane.destroy();
    hub = await startHubProcess({ dataDir: hub.dataDir, args: [`--template=${template}`] });
    plane = localIoTDataPlaneClient(hub.endpoints.dataPlane);

    const after = json(
      (await plane.send(new GetThingShadowCommand({ thingName: 'shadow-durable' }))).payload,
    );
    expect({ ...after, timestamp: 0 }).toEqual({ ...before, timestamp: 0 });
    expect(after).toMatchObject({ state: { reported: { boot: 1 }, desired: { mode: 'eco' } }, version: 2 });

    const again = await connect(hub, creds, shadowTopics('shadow-durable'));
    await again.client.publishAsync(
      `${prefix}/update`,
      JSON.stringify({ state: { reported: { mode: 'eco' } } }),
      {
        qos: 1,
      },
    );
    expect(await again.next(`${prefix}/update/accepted`)).toMatchObject({ version: 3 });
    await again.client.endAsync();
  });
});
