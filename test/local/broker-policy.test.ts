/**
 * The broker enforces a connection's IoT policy documents as IoT Core does: iot:Connect on the client id at
 * CONNECT, iot:Publish on each PUBLISH (through the bus), iot:Subscribe on each filter, iot:Receive on each
 * message it would forward (dropped silently), allow and deny, with policy variables; and it re-asks for the
 * policy every refresh interval. Real aedes, real mqtt.js clients, documents compiled by local/iot-policy.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type AuthenticatedDevice,
  ConnectionRefusedError,
  type RunningBroker,
  startBroker,
} from '../../local/broker.ts';
import { IotCoreBus } from '../../local/bus.ts';
import { compilePolicies, connectionPolicy } from '../../local/iot-policy.ts';
import { serverCertificate } from '../../local/tls.ts';

const target = { partition: 'aws', region: 'us-east-1', account: '000000000000' };
const ARN = `arn:aws:iot:us-east-1:000000000000`;

/** Allows the device its own `devices/{id}/...` topics; denies what the test names. */
const DOCUMENT = JSON.stringify({
  Version: '2012-10-17',
  Statement: [
    { Effect: 'Allow', Action: 'iot:Connect', Resource: `${ARN}:client/\${iot:ClientId}` },
    { Sid: 'NoBannedClients', Effect: 'Deny', Action: 'iot:Connect', Resource: `${ARN}:client/banned-*` },
    {
      Effect: 'Allow',
      Action: ['iot:Publish', 'iot:Receive'],
      Resource: `${ARN}:topic/devices/\${iot:ClientId}/*`,
    },
    { Effect: 'Allow', Action: 'iot:Subscribe', Resource: `${ARN}:topicfilter/devices/\${iot:ClientId}/*` },
    {
      Sid: 'NoBlockedTelemetry',
      Effect: 'Deny',
      Action: 'iot:Publish',
      Resource: `${ARN}:topic/devices/\${iot:ClientId}/messages/events/blocked*`,
    },
    {
      Sid: 'NoSecretSubscriptions',
      Effect: 'Deny',
      Action: 'iot:Subscribe',
      Resource: `${ARN}:topicfilter/devices/\${iot:ClientId}/secret/*`,
    },
    {
      Sid: 'NoSecretReceive',
      Effect: 'Deny',
      Action: 'iot:Receive',
      Resource: `${ARN}:topic/devices/\${iot:ClientId}/c2d/secret*`,
    },
  ],
});
const compiled = compilePolicies([DOCUMENT]);

const dataDir = mkdtempSync(path.join(tmpdir(), 'broker-policy-test-'));
const lines: string[] = [];
const published: string[] = [];
/** What `refresh.again()` does for each device, set by the refresh test. */
const refreshes = new Map<string, () => Promise<AuthenticatedDevice['policy']>>();
let broker: RunningBroker;
const url = () => `mqtt://127.0.0.1:${broker.ports.mqtt}`;

const bus = new IotCoreBus({
  maxMessageBytes: 1024,
  policy: () => 'no fallback: every identity of this broker carries its policy',
  log: (line) => lines.push(line),
});
bus.attach({
  rules: {
    ingest: async ({ topic }) => {
      published.push(topic);
      return 1;
    },
  },
  shadows: { handleMqtt: async () => undefined },
});

beforeAll(async () => {
  broker = await startBroker({
    dataDir,
    host: '127.0.0.1',
    ports: { mqtt: 0, mqtts: 0, ws: 0 },
    certificate: await serverCertificate(dataDir),
    bus,
    staleWillIdentity: async () => undefined,
    authenticator: {
      authenticate: async ({ clientId }): Promise<AuthenticatedDevice> => {
        const again = () => {
          const next = refreshes.get(clientId);
          if (!next) throw new Error(`no refresh for '${clientId}'`);
          return next();
        };
        return {
          deviceId: clientId,
          principal: `test:${clientId}`,
          policy: connectionPolicy(compiled, { clientId }, target),
          ...(refreshes.has(clientId) ? { refresh: { afterMs: 50, again } } : {}),
        };
      },
    },
    log: (line) => lines.push(line),
  });
  bus.attach({ subscribers: broker });
});

afterAll(async () => {
  await broker?.close();
  rmSync(dataDir, { recursive: true, force: true });
});

const connect = (clientId: string) => mqtt.connectAsync(url(), { clientId, reconnectPeriod: 0 });
const closed = (client: MqttClient) => new Promise<void>((resolve) => client.once('close', () => resolve()));

async function waitForLine(pattern: RegExp): Promise<string> {
  for (;;) {
    const line = lines.find((l) => pattern.test(l));
    if (line) return line;
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('the broker enforces the connection’s policy documents', () => {
  it('connect: allowed for its own client id, refused (CONNACK 5) where a Deny statement matches', async () => {
    const ok = await connect('p-ok');
    await ok.endAsync();
    const refused = await connect('banned-1').then(
      () => 0,
      (error: { code?: number }) => error.code,
    );
    expect(refused).toBe(5);
    expect(await waitForLine(/connect refused: client 'banned-1'/)).toContain(
      `iot:Connect on '${ARN}:client/banned-1' denied by document 1, statement 2 (Sid 'NoBannedClients')`,
    );
  });

  it('publish: PUBACKed where allowed; a denied one disconnects without PUBACK and names the statement', async () => {
    const device = await connect('p-pub');
    await device.publishAsync('devices/p-pub/messages/events/ok', 'x', { qos: 1 });
    expect(published).toContain('devices/p-pub/messages/events/ok');
    const gone = closed(device);
    let acked = false;
    device.publish('devices/p-pub/messages/events/blocked', 'x', { qos: 1 }, (error) => {
      if (!error) acked = true;
    });
    await gone;
    device.end(true);
    expect(acked).toBe(false);
    expect(published).not.toContain('devices/p-pub/messages/events/blocked');
    expect(await waitForLine(/publish refused, disconnecting: device 'p-pub'/)).toContain(
      `iot:Publish on '${ARN}:topic/devices/p-pub/messages/events/blocked' denied by document 1, statement 5 (Sid 'NoBlockedTelemetry')`,
    );
    // Another device's topic: no statement allows it.
    const other = await connect('p-pub2');
    const otherGone = closed(other);
    other.publish('devices/p-pub/messages/events', 'x', { qos: 1 });
    await otherGone;
    other.end(true);
    expect(await waitForLine(/publish refused, disconnecting: device 'p-pub2'/)).toContain(
      `no statement allows iot:Publish on '${ARN}:topic/devices/p-pub/messages/events'`,
    );
  });

  it('subscribe: grants what the policy allows, refuses (SUBACK 128) a denied or foreign filter', async () => {
    const device = await connect('p-sub');
    const granted = await device
      .subscribeAsync({
        'devices/p-sub/messages/devicebound/#': { qos: 1 },
        'devices/p-sub/secret/#': { qos: 1 },
        'devices/other/#': { qos: 0 },
        '#': { qos: 0 },
      })
      .then(
        (grants) => grants.map((g) => g.qos),
        (error: { packet?: { granted?: number[] } }) => error.packet?.granted ?? [],
      );
    expect(granted).toEqual([1, 128, 128, 128]);
    await device.endAsync();
    expect(await waitForLine(/subscribe refused: device 'p-sub'.*secret/)).toContain(
      "denied by document 1, statement 6 (Sid 'NoSecretSubscriptions')",
    );
  });

  it('receive: a message on a topic the policy denies Receive for is not delivered; the next one is', async () => {
    const device = await connect('p-rcv');
    await device.subscribeAsync('devices/p-rcv/c2d/#', { qos: 1 });
    const received: string[] = [];
    const open = new Promise<void>((resolve) =>
      device.on('message', (topic) => {
        received.push(topic);
        if (topic === 'devices/p-rcv/c2d/open') resolve();
      }),
    );
    // In order, on one subscription: the denied message first, so receiving the second proves it was dropped.
    await bus.publish(
      { topic: 'devices/p-rcv/c2d/secret-1', payload: Buffer.from('no'), qos: 1 },
      { kind: 'service', principal: 'iot' },
    );
    await bus.publish(
      { topic: 'devices/p-rcv/c2d/open', payload: Buffer.from('yes'), qos: 1 },
      { kind: 'service', principal: 'iot' },
    );
    await open;
    expect(received).toEqual(['devices/p-rcv/c2d/open']);
    expect(device.connected).toBe(true); // IoT Core drops it silently: the subscriber stays connected
    await device.endAsync();
  });

  it('refresh: a new policy replaces the old; a refusal closes the connection', async () => {
    // After the first refresh the device may also publish under `shared/`.
    const wider = compilePolicies([
      DOCUMENT,
      JSON.stringify({
        Version: '2012-10-17',
        Statement: { Effect: 'Allow', Action: 'iot:Publish', Resource: `${ARN}:topic/shared/*` },
      }),
    ]);
    let refreshed = false;
    refreshes.set('p-refresh', async () => {
      refreshed = true;
      return connectionPolicy(wider, { clientId: 'p-refresh' }, target);
    });
    const device = await connect('p-refresh');
    while (!refreshed) await new Promise((r) => setTimeout(r, 10));
    await device.publishAsync('shared/news', 'x', { qos: 1 });
    expect(published).toContain('shared/news');

    refreshes.set('p-refresh', async () => {
      throw new ConnectionRefusedError(5, 'disabled: the registry says so');
    });
    await closed(device);
    device.end(true);
    expect(await waitForLine(/closing 'p-refresh': refused when re-authorized: disabled/)).toBeDefined();
  });
});
