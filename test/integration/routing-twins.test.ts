import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HubConfigInput } from '../../lib/config.ts';
import { type ReadRecord, waitForRecords } from '../support/built-in.ts';
import { registerDevice, service } from '../support/devices.ts';
import { type HubProcess, startHubWith } from '../support/hub-process.ts';

/**
 * `$twin` routing on a real local hub: twins set through the service API (tags, desired) and by a real
 * mqtt.js device on its shadow topics (reported); telemetry routed by twin conditions and enriched from
 * the twin; tags, desired and reported changes routed as twin change events, in order with the device's
 * telemetry on the built-in endpoint.
 */

const HUB_NAME = 'twin-routing-hub';

const CONFIG: HubConfigInput = {
  hubName: HUB_NAME,
  routing: {
    endpoints: [
      { name: 'east', type: 'kinesis' },
      { name: 'hot', type: 'kinesis' },
    ],
    routes: [
      { name: 'east', condition: "$twin.tags.region = 'east'", endpointNames: ['east'] },
      { name: 'hot', condition: '$twin.properties.reported.temperature > 30', endpointNames: ['hot'] },
      { name: 'all', endpointNames: ['events'] },
      { name: 'twin-changes', source: 'TwinChangeEvents', endpointNames: ['events'] },
    ],
    enrichments: [
      { key: 'site', value: '$twin.tags.site', endpointNames: ['east'] },
      { key: 'mode', value: '$twin.properties.desired.mode', endpointNames: ['east'] },
      { key: 'room', value: '$twin.tags.room', endpointNames: ['east'] },
    ],
  },
};

const TELEMETRY = (device: string, mid: string) =>
  `devices/${device}/messages/events/$.mid=${mid}&$.ct=application%2Fjson&$.ce=utf-8`;

const of = (records: readonly ReadRecord[], device: string) =>
  records.filter((r) => r.envelope.deviceId === device);

/** `telemetry:{id}` for telemetry; `tags`, `desired`, `reported` (or both) for twin change events. */
function kindOf(record: ReadRecord): string {
  const { envelope } = record;
  if (envelope.systemProperties['iothub-message-source'] !== 'twinChangeEvents') {
    return `telemetry:${envelope.messageId}`;
  }
  const body = envelope.body as { tags?: unknown; properties?: Record<string, unknown> };
  return body.tags !== undefined
    ? 'tags'
    : Object.keys(body.properties ?? {})
        .sort()
        .join('+');
}
const kinds = (records: readonly ReadRecord[]) => records.map(kindOf);

interface Device {
  readonly client: MqttClient;
  send(mid: string): Promise<void>;
  /** Reports `reported` on the device's classic shadow and waits for it to be accepted. */
  report(reported: Record<string, unknown>): Promise<void>;
}

async function connect(hub: HubProcess, deviceId: string): Promise<Device> {
  const client = await mqtt.connectAsync(hub.endpoints.mqtt, {
    ...(await registerDevice(hub.endpoints, deviceId)),
    reconnectPeriod: 0,
  });
  await client.subscribeAsync(`$aws/things/${deviceId}/shadow/update/+`, { qos: 1 });
  const accepted: unknown[] = [];
  client.on('message', (topic, payload) => {
    if (topic.endsWith('/update/accepted')) accepted.push(JSON.parse(payload.toString()));
    if (topic.endsWith('/update/rejected')) throw new Error(`shadow update rejected: ${payload.toString()}`);
  });
  return {
    client,
    send: async (mid) => {
      await client.publishAsync(TELEMETRY(deviceId, mid), JSON.stringify({ mid }), { qos: 1 });
    },
    report: async (reported) => {
      const before = accepted.length;
      await client.publishAsync(
        `$aws/things/${deviceId}/shadow/update`,
        JSON.stringify({ state: { reported } }),
        {
          qos: 1,
        },
      );
      const deadline = Date.now() + 10_000;
      while (accepted.length === before) {
        if (Date.now() > deadline) throw new Error(`${deviceId}: no update/accepted for its report`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
  };
}

describe('routing on device twins on the local hub', () => {
  let hub: HubProcess;
  const devices: Device[] = [];
  beforeAll(async () => {
    hub = await startHubWith(CONFIG);
  });
  afterAll(async () => {
    for (const d of devices) await d.client.endAsync();
    await hub?.stop();
  });

  it('routes telemetry by $twin tags and reported properties, enriched from the twin', async () => {
    const { kinesis, builtInStream, customEndpoints } = hub.endpoints;
    const east = await connect(hub, 'tw-east');
    const hot = await connect(hub, 'tw-hot');
    devices.push(east, hot);

    // Before any twin is set: routed by the fallback-free "all" route only.
    await east.send('east-0');
    await hot.send('hot-0');
    await waitForRecords(kinesis, builtInStream, (r) =>
      ['telemetry:east-0', 'telemetry:hot-0'].every((k) => kinds(r).includes(k)),
    );

    const patched = await service(hub.endpoints, 'PATCH', '/twins/tw-east', {
      tags: { region: 'east', site: 'plant-7', room: { floor: 2 } },
      properties: { desired: { mode: 'eco' } },
    });
    expect(patched.status).toBe(200);
    await hot.report({ temperature: 35 });

    await east.send('east-1');
    await hot.send('hot-1');
    const eastRecords = await waitForRecords(kinesis, customEndpoints.east!.target, (r) =>
      kinds(r).includes('telemetry:east-1'),
    );
    const hotRecords = await waitForRecords(kinesis, customEndpoints.hot!.target, (r) =>
      kinds(r).includes('telemetry:hot-1'),
    );
    await waitForRecords(kinesis, builtInStream, (r) =>
      ['telemetry:east-1', 'telemetry:hot-1'].every((k) => kinds(r).includes(k)),
    );

    // Each endpoint got only what its twin condition selects, and only once the twin said so.
    expect(kinds(eastRecords)).toEqual(['telemetry:east-1']);
    expect(kinds(hotRecords)).toEqual(['telemetry:hot-1']);
    for (const r of [...eastRecords, ...hotRecords]) expect(r.partitionKey).toBe(r.envelope.deviceId);
    // Enrichments from tags and desired properties; an object value is stamped as its path, as IoT Hub does.
    expect(eastRecords[0]?.envelope.properties).toEqual({
      site: 'plant-7',
      mode: 'eco',
      room: '$twin.tags.room',
    });
  });

  it("routes desired and reported changes as twin change events, once each, in order with the device's telemetry", async () => {
    const { kinesis, builtInStream } = hub.endpoints;
    const device = await connect(hub, 'tw-shadow');
    devices.push(device);
    await device.send('sh-0');
    await waitForRecords(kinesis, builtInStream, (r) => kinds(of(r, 'tw-shadow')).includes('telemetry:sh-0'));

    const patched = await service(hub.endpoints, 'PATCH', '/twins/tw-shadow', {
      properties: { desired: { interval: 30 } },
    });
    expect(patched.status).toBe(200);
    await device.report({ interval: 30, firmware: '1.2.0' });
    // Shadow changes travel through the ingest stream like telemetry: once they are routed, telemetry
    // sent now must come after them on the built-in endpoint.
    const changes = await waitForRecords(
      kinesis,
      builtInStream,
      (r) => ['desired', 'reported'].every((k) => kinds(of(r, 'tw-shadow')).includes(k)),
      30_000,
    );
    expect(kinds(of(changes, 'tw-shadow'))).toEqual(expect.arrayContaining(['desired', 'reported']));
    await device.send('sh-1');
    const records = of(
      await waitForRecords(kinesis, builtInStream, (r) =>
        kinds(of(r, 'tw-shadow')).includes('telemetry:sh-1'),
      ),
      'tw-shadow',
    );
    // One event per change: the desired change made through the service API is not counted twice; the
    // device's report, which answers it, comes after it.
    expect(kinds(records)).toEqual(['telemetry:sh-0', 'desired', 'reported', 'telemetry:sh-1']);
    for (const r of records) expect(r.partitionKey).toBe('tw-shadow');

    const [, desired, reported] = records.map((r) => r.envelope);
    for (const event of [desired, reported]) {
      expect(event?.properties).toMatchObject({
        hubName: HUB_NAME,
        deviceId: 'tw-shadow',
        opType: 'updateTwin',
        'iothub-message-schema': 'twinChangeNotification',
      });
      expect(event?.systemProperties['iothub-message-source']).toBe('twinChangeEvents');
    }
    expect(desired?.body).toMatchObject({ properties: { desired: { interval: 30 } } });
    const sections = (desired?.body as { properties?: object } | undefined)?.properties ?? {};
    expect(Object.keys(sections)).toEqual(['desired']);
    expect(reported?.body).toMatchObject({
      properties: { reported: { interval: 30, firmware: '1.2.0', $version: expect.any(Number) } },
    });
  });

  it("routes a tags change as a twin change event, in order with the device's telemetry", async () => {
    const { kinesis, builtInStream } = hub.endpoints;
    const device = await connect(hub, 'tw-tags');
    devices.push(device);
    await device.send('tg-0');
    await waitForRecords(kinesis, builtInStream, (r) => kinds(of(r, 'tw-tags')).includes('telemetry:tg-0'));

    const patched = await service(hub.endpoints, 'PATCH', '/twins/tw-tags', { tags: { line: 'A' } });
    expect(patched.status).toBe(200);
    // Tags changes come from the service API (after the tags write), not from the shadow.
    const changes = await waitForRecords(
      kinesis,
      builtInStream,
      (r) => kinds(of(r, 'tw-tags')).includes('tags'),
      30_000,
    );
    expect(kinds(of(changes, 'tw-tags'))).toContain('tags');
    await device.send('tg-1');
    const records = of(
      await waitForRecords(kinesis, builtInStream, (r) => kinds(of(r, 'tw-tags')).includes('telemetry:tg-1')),
      'tw-tags',
    );
    expect(kinds(records)).toEqual(['telemetry:tg-0', 'tags', 'telemetry:tg-1']);
    const tags = records[1]?.envelope;
    expect(tags?.properties).toMatchObject({
      hubName: HUB_NAME,
      deviceId: 'tw-tags',
      opType: 'updateTwin',
      'iothub-message-schema': 'twinChangeNotification',
    });
    expect(tags?.systemProperties['iothub-message-source']).toBe('twinChangeEvents');
    expect(tags?.body).toEqual({
      version: (patched.body as { version: number }).version,
      tags: { line: 'A' },
    });
  });
});
