import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HubConfigInput } from '../../lib/config.ts';
import { type ReadRecord, waitForRecords } from '../support/built-in.ts';
import { registerDevice } from '../support/devices.ts';
import { type HubProcess, startHubWith } from '../support/hub-process.ts';

/** Starts a hub process on the stack synthesized with `config`. */
function hubWith(config: HubConfigInput, env: Record<string, string> = {}): Promise<HubProcess> {
  return startHubWith(config, { env });
}

const ROUTES: HubConfigInput = {
  hubName: 'routing-test-hub',
  routing: {
    endpoints: [
      { name: 'alerts', type: 'kinesis' },
      { name: 'hot', type: 'kinesis' },
    ],
    routes: [
      { name: 'critical', condition: "level = 'critical'", endpointNames: ['alerts'] },
      { name: 'hot-body', condition: '$body.temp > 40', endpointNames: ['hot'] },
      {
        name: 'floor-3',
        condition: "$body.site.floor = 3 AND $connectionDeviceId = 'r-1'",
        endpointNames: ['hot'],
      },
    ],
    enrichments: [
      { key: 'hub', value: '$iothubname', endpointNames: ['alerts'] },
      { key: 'tier', value: 'gold', endpointNames: ['alerts', 'events'] },
    ],
  },
};

const TELEMETRY = (device: string, mid: string, props = '') =>
  `devices/${device}/messages/events/$.mid=${mid}&$.ct=application%2Fjson&$.ce=utf-8${props ? `&${props}` : ''}`;

const ids = (records: readonly ReadRecord[], device?: string) =>
  records
    .filter((r) => device === undefined || r.envelope.deviceId === device)
    .map((r) => r.envelope.messageId);

describe('routes on the local hub, fallback route on', () => {
  let hub: HubProcess;
  beforeAll(async () => {
    hub = await hubWith(ROUTES);
  });
  afterAll(async () => {
    await hub?.stop();
  });

  it('routes by property and by $body to custom endpoints, the rest to the built-in endpoint, with enrichments', async () => {
    const streams = Object.fromEntries(
      Object.entries(hub.endpoints.customEndpoints).map(([name, e]) => [name, e.target]),
    );
    expect(hub.endpoints.customEndpoints.hot?.type).toBe('kinesis');
    expect(Object.keys(streams).sort()).toEqual(['alerts', 'hot']);
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, await registerDevice(hub.endpoints, 'r-1'));
    await device.publishAsync(TELEMETRY('r-1', 'crit-hot', 'level=critical&tier=bronze'), '{"temp":55}', {
      qos: 1,
    });
    await device.publishAsync(TELEMETRY('r-1', 'crit', 'level=critical'), '{"temp":5}', { qos: 1 });
    await device.publishAsync(TELEMETRY('r-1', 'hot', 'level=info'), '{"temp":41.5}', { qos: 1 });
    await device.publishAsync(TELEMETRY('r-1', 'floor', 'level=info'), '{"temp":1,"site":{"floor":3}}', {
      qos: 1,
    });
    await device.publishAsync(TELEMETRY('r-1', 'plain', 'LEVEL=info'), '{"temp":20}', { qos: 1 });
    // Not JSON by content type: $body is undefined, so no body route matches.
    await device.publishAsync('devices/r-1/messages/events/$.mid=binary', '{"temp":99}', { qos: 1 });
    await device.endAsync();

    const alerts = await waitForRecords(hub.endpoints.kinesis, streams.alerts!, (r) => r.length >= 2);
    const hotRecords = await waitForRecords(hub.endpoints.kinesis, streams.hot!, (r) => r.length >= 3);
    const builtIn = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
      ['plain', 'binary'].every((id) => ids(r).includes(id)),
    );
    expect(ids(alerts)).toEqual(['crit-hot', 'crit']);
    expect(ids(hotRecords)).toEqual(['crit-hot', 'hot', 'floor']);
    expect(ids(builtIn, 'r-1')).toEqual(['plain', 'binary']);
    expect(alerts[0]!.envelope.properties).toEqual({
      level: 'critical',
      tier: 'gold',
      hub: 'routing-test-hub',
    });
    expect(hotRecords[0]!.envelope.properties).toEqual({ level: 'critical', tier: 'bronze' });
    expect(builtIn.find((r) => r.envelope.messageId === 'plain')!.envelope.properties).toEqual({
      LEVEL: 'info',
      tier: 'gold',
    });
    for (const r of [...alerts, ...hotRecords]) expect(r.partitionKey).toBe('r-1');
  });
});

describe('routes on the local hub, fallback route off', () => {
  let hub: HubProcess;
  beforeAll(async () => {
    // Info logs from functions, to see the router count what it dropped.
    hub = await hubWith(
      { ...ROUTES, routing: { ...ROUTES.routing, fallbackRoute: { isEnabled: false } } },
      { HUB_FUNCTION_LOG_LEVEL: 'INFO' },
    );
  });
  afterAll(async () => {
    await hub?.stop();
  });

  it('drops messages that match no route and still routes the others', async () => {
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, await registerDevice(hub.endpoints, 'nf-1'));
    await device.publishAsync(TELEMETRY('nf-1', 'unrouted', 'level=info'), '{"temp":1}', { qos: 1 });
    await device.publishAsync(TELEMETRY('nf-1', 'routed', 'level=critical'), '{"temp":1}', { qos: 1 });
    await device.endAsync();
    const alerts = await waitForRecords(
      hub.endpoints.kinesis,
      hub.endpoints.customEndpoints.alerts!.target,
      (r) => ids(r).includes('routed'),
    );
    expect(ids(alerts)).toEqual(['routed']);
    // The router handled the batch holding both (the routed one is out), so the unrouted one is decided:
    // dropped and counted (with the device's lifecycle and connection events, which no route takes either).
    await hub.waitForLog(/"unrouted":[1-9]/);
    const builtIn = await waitForRecords(
      hub.endpoints.kinesis,
      hub.endpoints.builtInStream,
      () => false,
      1_000,
    );
    expect(ids(builtIn, 'nf-1')).toEqual([]);
  });
});
