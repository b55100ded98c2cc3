import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HubConfigInput } from '../../lib/config.ts';
import { type ReadRecord, waitForRecords } from '../support/built-in.ts';
import { registerDevice, service } from '../support/devices.ts';
import { type HubProcess, startHubWith } from '../support/hub-process.ts';

/**
 * Route sources besides telemetry on a real local hub: lifecycle events from the service API and
 * connection state events from the broker's presence events (through the synthesized presence rule),
 * routed by source, with conditions on their properties and body.
 */

const HUB_NAME = 'sources-test-hub';

const WITH_EVENT_ROUTES: HubConfigInput = {
  hubName: HUB_NAME,
  routing: {
    endpoints: [
      { name: 'connects', type: 'kinesis' },
      { name: 'created', type: 'kinesis' },
    ],
    routes: [
      { name: 'lifecycle', source: 'DeviceLifecycleEvents', endpointNames: ['events'] },
      { name: 'connection-state', source: 'DeviceConnectionStateEvents', endpointNames: ['events'] },
      {
        name: 'connects-only',
        source: 'DeviceConnectionStateEvents',
        condition: "opType = 'deviceConnected'",
        endpointNames: ['connects'],
      },
      {
        name: 'enabled-creates',
        source: 'DeviceLifecycleEvents',
        condition: "opType = 'createDeviceIdentity' AND $body.status = 'enabled'",
        endpointNames: ['created'],
      },
    ],
  },
};

const TELEMETRY = (device: string, mid: string) =>
  `devices/${device}/messages/events/$.mid=${mid}&$.ct=application%2Fjson&$.ce=utf-8`;

const of = (records: readonly ReadRecord[], device: string) =>
  records.filter((r) => r.envelope.deviceId === device);

/** `opType` of events, the message id of telemetry. */
const kinds = (records: readonly ReadRecord[]) =>
  records.map((r) => r.envelope.properties.opType ?? `telemetry:${r.envelope.messageId}`);

async function waitUntilDisconnected(hub: HubProcess, deviceId: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const got = await service(hub.endpoints, 'GET', `/devices/${deviceId}`);
    if ((got.body as { connectionState?: string }).connectionState === 'Disconnected') return;
    if (Date.now() > deadline) throw new Error(`${deviceId} never showed as disconnected`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('lifecycle and connection state routes on the local hub', () => {
  let hub: HubProcess;
  beforeAll(async () => {
    hub = await startHubWith(WITH_EVENT_ROUTES);
  });
  afterAll(async () => {
    await hub?.stop();
  });

  it('routes create, connect, disconnect and delete events of a device in order, with IoT Hub properties', async () => {
    const { kinesis, builtInStream } = hub.endpoints;
    const credentials = await registerDevice(hub.endpoints, 'ev-1');
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, credentials);
    // Presence events and telemetry take separate paths through the front door (as in AWS IoT):
    // wait for the connect event before publishing, so the expected order is the real one.
    await waitForRecords(kinesis, builtInStream, (r) => kinds(of(r, 'ev-1')).includes('deviceConnected'));
    await device.publishAsync(TELEMETRY('ev-1', 'hello'), '{"temp":21}', { qos: 1 });
    await device.endAsync();
    await waitUntilDisconnected(hub, 'ev-1');
    expect((await service(hub.endpoints, 'DELETE', '/devices/ev-1')).status).toBe(204);

    const records = of(
      await waitForRecords(kinesis, builtInStream, (r) =>
        kinds(of(r, 'ev-1')).includes('deleteDeviceIdentity'),
      ),
      'ev-1',
    );
    expect(kinds(records)).toEqual([
      'createDeviceIdentity',
      'deviceConnected',
      'telemetry:hello',
      'deviceDisconnected',
      'deleteDeviceIdentity',
    ]);
    for (const r of records) expect(r.partitionKey).toBe('ev-1');

    const [created, connected, , disconnected, deleted] = records.map((r) => r.envelope);
    for (const [envelope, source, schema] of [
      [created, 'deviceLifecycleEvents', 'deviceLifecycleNotification'],
      [deleted, 'deviceLifecycleEvents', 'deviceLifecycleNotification'],
      [connected, 'deviceConnectionStateEvents', 'deviceConnectionStateNotification'],
      [disconnected, 'deviceConnectionStateEvents', 'deviceConnectionStateNotification'],
    ] as const) {
      expect(envelope?.properties).toMatchObject({
        hubName: HUB_NAME,
        deviceId: 'ev-1',
        'iothub-message-schema': schema,
      });
      expect(Number.isNaN(Date.parse(envelope?.properties.operationTimestamp ?? ''))).toBe(false);
      expect(envelope?.systemProperties).toMatchObject({
        'iothub-message-source': source,
        'iothub-connection-device-id': 'ev-1',
        'content-type': 'application/json',
        'content-encoding': 'utf-8',
        'message-id': envelope?.messageId,
      });
      expect(envelope?.bodyEncoding).toBe('json');
    }
    // Lifecycle bodies: the device identity, never its keys.
    expect(created?.body).toMatchObject({
      deviceId: 'ev-1',
      status: 'enabled',
      authentication: { type: 'sas' },
    });
    expect(JSON.stringify(created)).not.toContain(credentials.symmetricKey);
    expect(JSON.stringify(deleted)).not.toContain(credentials.symmetricKey);
    // Connection state bodies: IoT Hub's sequence number, growing per device.
    const seq = (e: typeof connected) =>
      (e?.body as { sequenceNumber?: string } | undefined)?.sequenceNumber ?? '';
    expect(seq(connected)).toMatch(/^[0-9a-f]{64}$/);
    expect(seq(disconnected) > seq(connected)).toBe(true);

    // A condition on an event property selects only the connects; one on $body only enabled creates.
    const connects = await waitForRecords(
      kinesis,
      hub.endpoints.customEndpoints.connects!.target,
      (r) => of(r, 'ev-1').length >= 1,
    );
    const createdOnly = await waitForRecords(
      kinesis,
      hub.endpoints.customEndpoints.created!.target,
      (r) => of(r, 'ev-1').length >= 1,
    );
    expect(kinds(of(connects, 'ev-1'))).toEqual(['deviceConnected']);
    expect(kinds(of(createdOnly, 'ev-1'))).toEqual(['createDeviceIdentity']);
    expect(of(connects, 'ev-1')[0]?.envelope.messageId).toBe(connected?.messageId);
  });

  it('emits lifecycle events for bulk creates and deletes', async () => {
    const bulk = await service(hub.endpoints, 'POST', '/devices', [
      { id: 'bulk-1', importMode: 'create' },
      { id: 'bulk-2', importMode: 'create', status: 'disabled' },
    ]);
    expect(bulk.status).toBe(200);
    const removed = await service(hub.endpoints, 'POST', '/devices', [
      { id: 'bulk-1', importMode: 'delete' },
      { id: 'bulk-2', importMode: 'delete' },
    ]);
    expect(removed.status).toBe(200);
    const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
      ['bulk-1', 'bulk-2'].every((d) => kinds(of(r, d)).includes('deleteDeviceIdentity')),
    );
    expect(kinds(of(records, 'bulk-1'))).toEqual(['createDeviceIdentity', 'deleteDeviceIdentity']);
    expect(kinds(of(records, 'bulk-2'))).toEqual(['createDeviceIdentity', 'deleteDeviceIdentity']);
    // Only enabled creates pass the $body condition.
    const createdOnly = await waitForRecords(
      hub.endpoints.kinesis,
      hub.endpoints.customEndpoints.created!.target,
      (r) => of(r, 'bulk-1').length >= 1,
    );
    expect(of(createdOnly, 'bulk-1')).toHaveLength(1);
    expect(of(createdOnly, 'bulk-2')).toHaveLength(0);
  });
});

describe('no event routes: the fallback route takes telemetry only', () => {
  let hub: HubProcess;
  beforeAll(async () => {
    // Info logs from functions, to see the router count the events it dropped.
    hub = await startHubWith({ hubName: HUB_NAME }, { env: { HUB_FUNCTION_LOG_LEVEL: 'INFO' } });
  });
  afterAll(async () => {
    await hub?.stop();
  });

  it('drops lifecycle and connection state events, and routes telemetry to the built-in endpoint', async () => {
    const { kinesis, builtInStream } = hub.endpoints;
    const first = await mqtt.connectAsync(hub.endpoints.mqtt, await registerDevice(hub.endpoints, 'quiet-1'));
    await first.publishAsync(TELEMETRY('quiet-1', 'before'), '{"n":1}', { qos: 1 });
    await first.endAsync();
    await waitUntilDisconnected(hub, 'quiet-1');
    expect((await service(hub.endpoints, 'DELETE', '/devices/quiet-1')).status).toBe(204);
    // Same device id again: its records share the partition key, so once this telemetry is routed,
    // every event before it on the stream (create, connect, disconnect, delete, create) has been too.
    const again = await mqtt.connectAsync(hub.endpoints.mqtt, await registerDevice(hub.endpoints, 'quiet-1'));
    await again.publishAsync(TELEMETRY('quiet-1', 'after'), '{"n":2}', { qos: 1 });
    await again.endAsync();

    const records = await waitForRecords(kinesis, builtInStream, (r) =>
      kinds(of(r, 'quiet-1')).includes('telemetry:after'),
    );
    expect(kinds(of(records, 'quiet-1'))).toEqual(['telemetry:before', 'telemetry:after']);
    for (const r of records) expect(r.envelope.systemProperties['iothub-message-source']).toBe('Telemetry');
    // The router counted the events it dropped: at least the five before `after`.
    const dropped = () =>
      hub.logs.flatMap((line) => [...line.matchAll(/"unrouted":(\d+)/g)].map((m) => Number(m[1])));
    const deadline = Date.now() + 10_000;
    while (dropped().reduce((a, b) => a + b, 0) < 5 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(dropped().reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(5);
  });
});
