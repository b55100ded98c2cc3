import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Identity,
  type RunningBroker,
  type SubscriptionEvent,
  startBroker,
} from '../../local/broker.ts';
import { serverCertificate } from '../../local/tls.ts';

const dataDir = mkdtempSync(path.join(tmpdir(), 'broker-test-'));
let broker: RunningBroker;
let failIngest = true;
const ingested: string[] = [];
const lines: string[] = [];
const subscriptionEvents: SubscriptionEvent[] = [];
let onSubscription: (event: SubscriptionEvent) => void = () => undefined;

beforeAll(async () => {
  broker = await startBroker({
    dataDir,
    host: '127.0.0.1',
    ports: { mqtt: 0, mqtts: 0, ws: 0 },
    certificate: await serverCertificate(dataDir),
    maxMessageBytes: 1024,
    authenticator: {
      authenticate: async ({ clientId }): Promise<Identity> => ({
        deviceId: clientId,
        principal: `test:${clientId}`,
      }),
    },
    ingest: async ({ payload }) => {
      if (failIngest) throw new Error('ingest stream unavailable');
      ingested.push(payload.toString());
    },
    onSubscription: (event) => {
      subscriptionEvents.push(event);
      onSubscription(event);
    },
    log: (line) => lines.push(line),
  });
});

afterAll(async () => {
  await broker.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('the front door withholds PUBACK until the ingest is durable', () => {
  it('gives no PUBACK and closes the connection when the ingest fails, so the device sends again', async () => {
    const url = `mqtt://127.0.0.1:${broker.ports.mqtt}`;
    const device = await mqtt.connectAsync(url, { clientId: 'd1', reconnectPeriod: 0 });
    let acked = false;
    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    device.publish('devices/d1/messages/events', 'first', { qos: 1 }, (error) => {
      if (!error) acked = true;
    });
    await closed;
    device.end(true);
    expect(acked).toBe(false);
    expect(ingested).toEqual([]);
    expect(lines.join('\n')).toMatch(
      /publish not accepted, disconnecting so the device retries: ingest stream unavailable/,
    );

    failIngest = false;
    const again = await mqtt.connectAsync(url, { clientId: 'd1', reconnectPeriod: 0 });
    await again.publishAsync('devices/d1/messages/events', 'first', { qos: 1 });
    await again.endAsync();
    expect(ingested).toEqual(['first']);
  });

  it('ingests one device’s publishes in the order it sent them, even with many in flight', async () => {
    failIngest = false;
    ingested.length = 0;
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.ports.mqtt}`, { clientId: 'd2' });
    await Promise.all(
      Array.from({ length: 200 }, (_, n) =>
        device.publishAsync('devices/d2/messages/events', `${n}`, { qos: 1 }),
      ),
    );
    await device.endAsync();
    expect(ingested).toEqual(Array.from({ length: 200 }, (_, n) => `${n}`));
  });
});

describe('subscribe/unsubscribe lifecycle events', () => {
  const url = () => `mqtt://127.0.0.1:${broker.ports.mqtt}`;
  const eventsOf = (clientId: string) => subscriptionEvents.filter((e) => e.clientId === clientId);
  const settle = () => new Promise((r) => setTimeout(r, 100));

  it.each([
    ['a clean session', true],
    ['a persistent session', false],
  ])('in %s, a publish made on the subscribed event reaches the device', async (_name, clean) => {
    const id = clean ? 'c2d-clean' : 'c2d-persistent';
    const filter = `devices/${id}/messages/devicebound/#`;
    // As the hub's C2D delivery does: on the event, publish to the device right away.
    onSubscription = (event) => {
      if (event.clientId === id && event.eventType === 'subscribed') {
        void broker.publish(`devices/${id}/messages/devicebound/%24.mid=m1`, Buffer.from('hello'), 1);
      }
    };
    const device = await mqtt.connectAsync(url(), { clientId: id, clean, reconnectPeriod: 0 });
    const received = new Promise<[string, string]>((resolve) =>
      device.once('message', (topic, payload) => resolve([topic, payload.toString()])),
    );
    await device.subscribeAsync(filter, { qos: 1 });
    expect(await received).toEqual([`devices/${id}/messages/devicebound/%24.mid=m1`, 'hello']);
    onSubscription = () => undefined;
    await device.endAsync();
    const [event] = eventsOf(id);
    expect(event).toEqual({
      clientId: id,
      timestamp: expect.any(Number),
      eventType: 'subscribed',
      sessionIdentifier: `test:${id}`,
      principalIdentifier: `test:${id}`,
      topics: [filter],
    });
    expect(Math.abs(event!.timestamp - Date.now())).toBeLessThan(10_000);
  });

  it('lists only the granted filters of a SUBSCRIBE, and none for a refused one', async () => {
    const device = await mqtt.connectAsync(url(), { clientId: 'sub-1', reconnectPeriod: 0 });
    // mqtt.js rejects a SUBACK with a refusal in it; the packet rides on the error.
    const suback = (subscriptions: Record<string, { qos: 0 | 1 }>) =>
      device.subscribeAsync(subscriptions).then(
        () => [] as number[],
        (error: { packet?: { granted?: number[] } }) => error.packet?.granted ?? [],
      );
    expect(
      await suback({
        'devices/sub-1/messages/devicebound/#': { qos: 1 },
        'devices/other/messages/devicebound/#': { qos: 1 },
        'devices/sub-1/messages/settle/res/#': { qos: 0 },
      }),
    ).toEqual([1, 128, 0]);
    expect(await suback({ 'devices/other/#': { qos: 1 } })).toEqual([128]);
    await settle();
    expect(eventsOf('sub-1').map((e) => [e.eventType, e.topics])).toEqual([
      ['subscribed', ['devices/sub-1/messages/devicebound/#', 'devices/sub-1/messages/settle/res/#']],
    ]);
    await device.endAsync();
  });

  it('reports an UNSUBSCRIBE, but not the subscriptions a disconnect drops', async () => {
    const device = await mqtt.connectAsync(url(), { clientId: 'unsub-1', reconnectPeriod: 0 });
    await device.subscribeAsync(['devices/unsub-1/messages/devicebound/#', 'devices/unsub-1/a']);
    await device.unsubscribeAsync(['devices/unsub-1/messages/devicebound/#', 'devices/other/x']);
    await device.endAsync();
    await settle();
    expect(eventsOf('unsub-1').map((e) => [e.eventType, e.topics])).toEqual([
      ['subscribed', ['devices/unsub-1/messages/devicebound/#', 'devices/unsub-1/a']],
      ['unsubscribed', ['devices/unsub-1/messages/devicebound/#']],
    ]);
    expect(eventsOf('unsub-1')[1]).toMatchObject({ principalIdentifier: 'test:unsub-1' });
  });

  it('emits nothing when a persistent session is restored on reconnect', async () => {
    const options = { clientId: 'restore-1', clean: false, reconnectPeriod: 0 };
    const first = await mqtt.connectAsync(url(), options);
    await first.subscribeAsync('devices/restore-1/messages/devicebound/#', { qos: 1 });
    await first.endAsync();
    const again = await mqtt.connectAsync(url(), options);
    const received = new Promise<string>((resolve) =>
      again.once('message', (_t, p) => resolve(p.toString())),
    );
    await broker.publish('devices/restore-1/messages/devicebound/x=1', Buffer.from('restored'), 1);
    expect(await received).toBe('restored');
    await again.endAsync();
    await settle();
    expect(eventsOf('restore-1').map((e) => e.eventType)).toEqual(['subscribed']);
  });
});
