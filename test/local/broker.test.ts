import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import mqtt from 'mqtt';
import { generate } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { publishRefusal, subscribeRefusal } from '../../functions/core/identity/topics.ts';
import {
  type Identity,
  type RunningBroker,
  type SubscriptionEvent,
  startBroker,
} from '../../local/broker.ts';
import { IotCoreBus } from '../../local/bus.ts';
import { serverCertificate } from '../../local/tls.ts';

const dataDir = mkdtempSync(path.join(tmpdir(), 'broker-test-'));
let broker: RunningBroker;
let failIngest = true;
const ingested: string[] = [];
const lines: string[] = [];
const subscriptionEvents: SubscriptionEvent[] = [];
let onSubscription: (event: SubscriptionEvent) => void = () => undefined;

const bus = new IotCoreBus({
  maxMessageBytes: 1024,
  policy: (identity, topic) => publishRefusal(identity.deviceId, topic),
  log: (line) => lines.push(line),
});
bus.attach({
  rules: {
    ingest: async ({ payload }) => {
      if (failIngest) throw new Error('ingest stream unavailable');
      ingested.push(payload.toString());
      return 1;
    },
  },
  shadows: { handleMqtt: async () => undefined },
});
/** Devices the stale-will path treats as registered and enabled. */
const registered = new Set<string>(['w1']);

beforeAll(async () => {
  broker = await startBroker({
    dataDir,
    host: '127.0.0.1',
    ports: { mqtt: 0, mqtts: 0, ws: 0 },
    certificate: await serverCertificate(dataDir),
    bus,
    subscribePolicy: (identity, filter) => subscribeRefusal(identity.deviceId, filter),
    staleWillIdentity: async (deviceId) =>
      registered.has(deviceId) ? { deviceId, principal: `test:${deviceId}` } : undefined,
    heartbeatIntervalMs: 100,
    authenticator: {
      authenticate: async ({ clientId }): Promise<Identity> => ({
        deviceId: clientId,
        principal: `test:${clientId}`,
      }),
    },
    onSubscription: (event) => {
      subscriptionEvents.push(event);
      onSubscription(event);
    },
    log: (line) => lines.push(line),
  });
  bus.attach({ subscribers: broker });
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
        void broker.deliver({
          topic: `devices/${id}/messages/devicebound/%24.mid=m1`,
          payload: Buffer.from('hello'),
          qos: 1,
        });
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
    await broker.deliver({
      topic: 'devices/restore-1/messages/devicebound/x=1',
      payload: Buffer.from('restored'),
      qos: 1,
    });
    expect(await received).toBe('restored');
    await again.endAsync();
    await settle();
    expect(eventsOf('restore-1').map((e) => e.eventType)).toEqual(['subscribed']);
  });
});

/** A raw TCP connection to the broker, collecting what it answers (bytes), before any CONNECT. */
async function rawSocket(): Promise<{
  socket: net.Socket;
  received: () => Buffer;
  clear: () => void;
  closed: Promise<void>;
}> {
  const socket = net.connect(broker.ports.mqtt, '127.0.0.1');
  let received = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    received = Buffer.concat([received, chunk]);
  });
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  return {
    socket,
    received: () => received,
    clear: () => {
      received = Buffer.alloc(0);
    },
    closed,
  };
}

/** A raw connection that speaks MQTT packets built by hand, for what mqtt.js refuses to send. */
async function rawClient(clientId: string): Promise<{
  socket: net.Socket;
  received: () => Buffer;
  closed: Promise<void>;
  write: (packet: Buffer) => void;
}> {
  const { socket, received, clear, closed } = await rawSocket();
  socket.write(
    generate({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clientId,
      clean: true,
      keepalive: 30,
    }),
  );
  await until(() => received().length >= 4);
  expect([...received().subarray(0, 4)]).toEqual([0x20, 0x02, 0x00, 0x00]);
  clear();
  return { socket, received, closed, write: (packet) => socket.write(packet) };
}

/** A QoS 1 PUBLISH whose topic is the given bytes, unvalidated. */
function rawPublish(topic: Buffer, payload: string, messageId: number, qos = 1): Buffer {
  const body = Buffer.concat([
    Buffer.from([topic.length >> 8, topic.length & 0xff]),
    topic,
    Buffer.from([messageId >> 8, messageId & 0xff]),
    Buffer.from(payload),
  ]);
  return Buffer.concat([Buffer.from([0x30 | (qos << 1), body.length]), body]);
}

async function until(condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('what IoT Core refuses, the front door refuses (issue 17)', () => {
  it.each([
    ['U+0000', Buffer.from('devices/bad-1/messages/events/a\u0000b')],
    [
      'bytes that are not UTF-8 (FF FE C3)',
      Buffer.concat([Buffer.from('devices/bad-1/messages/events/'), Buffer.from([0xff, 0xfe, 0xc3])]),
    ],
    ['U+FFFF', Buffer.from('devices/bad-1/messages/events/\uffff')],
  ])(
    'closes the connection without PUBACK for a topic holding %s, and takes nothing',
    async (_what, topic) => {
      failIngest = false;
      const before = ingested.length;
      const device = await rawClient('bad-1');
      device.write(rawPublish(topic, 'mangled', 7));
      await device.closed;
      expect(device.received().length).toBe(0); // no PUBACK
      expect(ingested.length).toBe(before);
      expect(lines.some((l) => /publish refused.*which a topic may not hold/.test(l))).toBe(true);
    },
  );

  it('refuses a QoS 2 publish: no PUBREC, closed, nothing taken however often it is sent', async () => {
    failIngest = false;
    const before = ingested.length;
    for (let i = 0; i < 3; i++) {
      const device = await rawClient('qos2-1');
      device.write(rawPublish(Buffer.from('devices/qos2-1/messages/events/'), 'twice?', 9, 2));
      await device.closed;
      expect(device.received().length).toBe(0);
    }
    expect(ingested.length).toBe(before);
    expect(lines.some((l) => /QoS 2.*IoT Core takes QoS 0 and 1 only/.test(l))).toBe(true);
  });

  it('refuses a QoS 2 subscription: no SUBACK, the connection is closed and the reason logged', async () => {
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.ports.mqtt}`, {
      clientId: 'qos2-sub',
      reconnectPeriod: 0,
    });
    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    device.subscribe('devices/qos2-sub/messages/devicebound/#', { qos: 2 });
    await closed;
    expect(lines.some((l) => /subscribe refused.*QoS 2/.test(l))).toBe(true);
    device.end(true);
  });

  it('refuses a topic over 256 bytes, as IoT Core and the HTTPS endpoint do', async () => {
    failIngest = false;
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.ports.mqtt}`, {
      clientId: 'long-1',
      reconnectPeriod: 0,
    });
    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    const topic = `devices/long-1/messages/events/${'a'.repeat(240)}`;
    device.publish(topic, 'x', { qos: 1 });
    await closed;
    expect(lines.some((l) => /publish refused.*bytes; the limit is 256/.test(l))).toBe(true);
    device.end(true);
  });

  it('answers a CONNECT with protocol level 6 with CONNACK 1 and logs it', async () => {
    const { socket, received, closed } = await rawSocket();
    // CONNECT, protocol name MQTT, level 6, clean session, keepalive 30, client id "v6"; sent in two
    // pieces, so the guard must wait for the level byte.
    const connect = Buffer.from([0x10, 14, 0, 4, 0x4d, 0x51, 0x54, 0x54, 6, 0x02, 0, 30, 0, 2, 0x76, 0x36]);
    socket.write(connect.subarray(0, 5));
    await new Promise((r) => setTimeout(r, 20));
    socket.write(connect.subarray(5));
    await closed;
    expect([...received()]).toEqual([0x20, 0x02, 0x00, 0x01]);
    expect(lines.some((l) => /protocol level 6 is not MQTT 3\.1\.1 \(CONNACK 1\)/.test(l))).toBe(true);
  });
});

describe('stale wills (a will left by a broker that died)', () => {
  // The integration test kills a real hub; here the broker's own heartbeat stops, so aedes takes the
  // wills it stores for those of a dead broker and publishes them with no client, as after a restart.
  const internals = () =>
    broker.broker as unknown as {
      _heartbeatInterval: NodeJS.Timeout;
      brokers: Record<string, number>;
      id: string;
    };
  beforeAll(() => {
    clearInterval(internals()._heartbeatInterval);
    delete internals().brokers[internals().id];
  });
  const deadWill = (clientId: string, topic: string) =>
    persistence().putWill(
      { id: clientId },
      {
        cmd: 'publish',
        topic,
        payload: Buffer.from(`will of ${clientId}`),
        qos: 1,
        retain: false,
      },
    );
  const persistence = () =>
    (
      broker.broker as unknown as {
        persistence: {
          putWill(client: unknown, packet: unknown): Promise<void>;
          getWill(client: unknown): Promise<unknown>;
        };
      }
    ).persistence;

  it('publishes the will of a registered device through the bus, once, and the broker stays up', async () => {
    failIngest = false;
    await deadWill('w1', 'devices/w1/messages/events/will=1');
    await until(() => ingested.includes('will of w1'));
    await until(() => lines.some((l) => l.includes("published the stale will of 'w1'")));
    await until(async () => (await persistence().getWill({ id: 'w1' })) === undefined);
    expect(ingested.filter((p) => p === 'will of w1')).toHaveLength(1);
  });

  it('drops the will of a device that is gone, logs why, and does not try it again', async () => {
    await deadWill('gone-1', 'devices/gone-1/messages/events/will=1');
    await until(() =>
      lines.some((l) => /stale will of 'gone-1'.*dropped: the device is not registered/.test(l)),
    );
    await until(async () => (await persistence().getWill({ id: 'gone-1' })) === undefined);
    expect(ingested).not.toContain('will of gone-1');
  });
});
