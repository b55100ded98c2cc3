import type { APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { beforeEach, describe, expect, it } from 'vitest';
import { MemoryDeliveryLedger } from '../../functions/adapters/ledger-memory.ts';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import { type C2dSettings, DEFAULT_C2D_SETTINGS } from '../../functions/core/c2d/config.ts';
import { C2dDelivery } from '../../functions/core/c2d/delivery.ts';
import type { FeedbackRecord } from '../../functions/core/c2d/feedback.ts';
import { MAX_BODY_BYTES } from '../../functions/core/c2d/message.ts';
import type { DeviceConnections } from '../../functions/core/service-api/registry-routes.ts';
import { type EventOptions, urlEvent } from '../support/function-url-event.ts';
import { FakeClock, MemoryLog, RecordingPublisher } from './fakes.ts';

import '../support/service-api-env.ts';

const { makeHandler } = await import('../../functions/service-api.ts');

const T0 = Date.parse('2030-01-01T00:00:00.000Z');

class FakeConnections implements DeviceConnections {
  readonly disconnected: string[] = [];
  async disconnect(deviceId: string): Promise<void> {
    this.disconnected.push(deviceId);
  }
}

/** Parsed JSON seen loosely, for assertions. */
interface Json {
  readonly [key: string]: Json;
}

interface Reply {
  status: number;
  headers: Record<string, string>;
  body: Json;
  raw: string;
}

function reply(result: APIGatewayProxyStructuredResultV2): Reply {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(result.headers ?? {})) headers[name] = String(value);
  const raw = result.body ?? '';
  return {
    status: result.statusCode ?? 0,
    headers,
    body: (raw === '' ? undefined : JSON.parse(raw)) as Json,
    raw,
  };
}

const settings: C2dSettings = DEFAULT_C2D_SETTINGS;

let clock: FakeClock;
let registry: MemoryDeviceRegistry;
let ledger: MemoryDeliveryLedger;
let publisher: RecordingPublisher;
let connections: FakeConnections;
let log: MemoryLog;
let handle: ReturnType<typeof makeHandler>;

beforeEach(async () => {
  clock = new FakeClock(T0);
  registry = new MemoryDeviceRegistry();
  ledger = new MemoryDeliveryLedger();
  publisher = new RecordingPublisher();
  connections = new FakeConnections();
  log = new MemoryLog();
  const delivery = new C2dDelivery({ ledger, publisher, settings, log, now: clock.now });
  handle = makeHandler({ registry, connections, log, c2d: { ledger, delivery, settings, now: clock.now } });
  await registry.create({ deviceId: 'd1' });
});

async function call(method: string, path: string, options: EventOptions = {}): Promise<Reply> {
  return reply(await handle(urlEvent(method, path, options)));
}

function send(deviceId: string, request: unknown): Promise<Reply> {
  return call('POST', `/devices/${encodeURIComponent(deviceId)}/messages/deviceBound`, {
    body: typeof request === 'string' ? request : JSON.stringify(request),
  });
}

function expectError(r: Reply, status: number, code: string, field?: string): void {
  expect(r.status).toBe(status);
  expect(r.body.code).toBe(code);
  expect(r.body.status).toBe(status);
  if (field !== undefined) {
    expect(r.body.message).toContain(field);
    expect(r.body.context?.field).toBe(field);
  }
}

async function connect(deviceId: string): Promise<void> {
  await registry.setConnectionState(deviceId, 'Connected', new Date(T0 + 1));
}

async function storedBody(deviceId: string, messageId: string): Promise<Uint8Array | undefined> {
  return (await ledger.get(deviceId, messageId))?.body;
}

async function readAllFeedback(): Promise<FeedbackRecord[]> {
  const r = await call('GET', '/messages/serviceBound/feedback');
  expect(r.status).toBe(200);
  return r.body.records as unknown as FeedbackRecord[];
}

describe('POST /devices/{id}/messages/deviceBound', () => {
  it('accepts a message: 201, a location that reads it back, and its status', async () => {
    const r = await send('d1', { body: 'hello', messageId: 'm:1', properties: { a: '1' } });

    expect(r.status).toBe(201);
    expect(r.headers.location).toBe(`/devices/d1/messages/deviceBound/${encodeURIComponent('m:1')}`);
    expect(r.body).toEqual({
      deviceId: 'd1',
      messageId: 'm:1',
      state: 'Enqueued',
      deliveryCount: 0,
      maxDeliveryCount: settings.maxDeliveryCount,
      ack: 'none',
      enqueuedTimeUtc: new Date(T0).toISOString(),
      expiryTimeUtc: new Date(T0 + settings.defaultTtlMs).toISOString(),
    });
    expect(Buffer.from((await storedBody('d1', 'm:1')) ?? []).toString('utf8')).toBe('hello');

    const read = await call('GET', r.headers.location ?? '');
    expect(read.status).toBe(200);
    expect(read.body).toEqual(r.body);
  });

  it('takes a base64 body as bytes', async () => {
    const bytes = new Uint8Array([0xff, 0x00, 0x80, 0x41]);
    const r = await send('d1', {
      body: Buffer.from(bytes).toString('base64'),
      bodyEncoding: 'base64',
      messageId: 'b',
    });
    expect(r.status).toBe(201);
    expect(await storedBody('d1', 'b')).toEqual(bytes);
    const utf8 = await send('d1', { body: 'aGk=', bodyEncoding: 'utf8', messageId: 'u' });
    expect(utf8.status).toBe(201);
    expect(Buffer.from((await storedBody('d1', 'u')) ?? []).toString('utf8')).toBe('aGk=');
  });

  it('answers 404 DeviceNotFound for an unknown device and stores nothing', async () => {
    const r = await send('nobody', { body: 'x', messageId: 'm1' });
    expectError(r, 404, 'DeviceNotFound');
    expect(await ledger.get('nobody', 'm1')).toBeUndefined();
  });

  it.each([
    ['invalid JSON', '{"body": ', 'InvalidJson', 'body'],
    ['a body that is not an object', '["x"]', 'InvalidC2dMessage', 'body'],
    ['a bad message id', { body: 'x', messageId: 'has space' }, 'InvalidC2dMessage', 'messageId'],
    [
      'a message id over 128 characters',
      { body: 'x', messageId: 'm'.repeat(129) },
      'InvalidC2dMessage',
      'messageId',
    ],
    ['a ttl under a minute', { body: 'x', messageId: 'm1', ttlMs: 59_999 }, 'InvalidC2dMessage', 'ttlMs'],
    [
      'a ttl over two days',
      { body: 'x', messageId: 'm1', ttlMs: 2 * 86_400_000 + 1 },
      'InvalidC2dMessage',
      'ttlMs',
    ],
    ['an unknown bodyEncoding', { body: 'x', bodyEncoding: 'hex' }, 'InvalidC2dMessage', 'bodyEncoding'],
    [
      'a base64 body that is not base64',
      { body: 'not base64!', bodyEncoding: 'base64' },
      'InvalidC2dMessage',
      'body',
    ],
    [
      'a body over 64 KB',
      { body: 'x'.repeat(MAX_BODY_BYTES + 1), messageId: 'm1' },
      'InvalidC2dMessage',
      'body',
    ],
    [
      'a base64 body over 64 KB decoded',
      { body: Buffer.alloc(MAX_BODY_BYTES + 1).toString('base64'), bodyEncoding: 'base64', messageId: 'm1' },
      'InvalidC2dMessage',
      'body',
    ],
    ['a bad ack', { body: 'x', messageId: 'm1', ack: 'always' }, 'InvalidC2dMessage', 'ack'],
    [
      'a reserved property name',
      { body: 'x', properties: { 'iothub-x': '1' } },
      'InvalidC2dMessage',
      'properties.iothub-x',
    ],
  ])('answers 400 naming the field for %s', async (_name, request, code, field) => {
    const r = await send('d1', request);
    expectError(r, 400, code, field);
    expect(await ledger.get('d1', 'm1')).toBeUndefined();
  });

  it('names the limit for a body over 64 KB', async () => {
    const r = await send('d1', { body: 'x'.repeat(MAX_BODY_BYTES + 1), messageId: 'm1' });
    expect(r.body.message).toContain(String(MAX_BODY_BYTES));
    expect((await send('d1', { body: 'x'.repeat(MAX_BODY_BYTES), messageId: 'm1' })).status).toBe(201);
  });

  it('answers 400 naming an unknown field', async () => {
    const r = await send('d1', { body: 'x', messageId: 'm1', colour: 'red' });
    expect(r.status).toBe(400);
    expect(r.body.code).toBe('InvalidC2dMessage');
    expect(r.body.message).toContain('colour');
  });

  it('answers 400 C2dTopicTooLong naming properties and the limit when the property bag cannot fit in a topic', async () => {
    const r = await send('d1', { body: 'x', messageId: 'm1', properties: { note: 'n'.repeat(300) } });
    expectError(r, 400, 'C2dTopicTooLong', 'properties');
    expect(r.body.context?.limit).toBe(256);
    expect(r.body.message).toContain('256');
    expect(await ledger.get('d1', 'm1')).toBeUndefined();
  });

  it('generates a message id (a UUID) when none is given', async () => {
    const r = await send('d1', { body: 'hello', ack: 'full', contentType: 'text/plain' });
    expect(r.status).toBe(201);
    const id = String(r.body.messageId);
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(r.headers.location).toBe(`/devices/d1/messages/deviceBound/${id}`);
    expect((await ledger.get('d1', id))?.state).toBe('Enqueued');
  });

  it('answers 403 DeviceMaximumQueueDepthExceeded for the message past maxQueueDepth, naming the limit', async () => {
    for (let i = 0; i < settings.maxQueueDepth; i++) {
      expect((await send('d1', { body: 'x', messageId: `q${i}` })).status).toBe(201);
    }
    const r = await send('d1', { body: 'x', messageId: 'over' });
    expectError(r, 403, 'DeviceMaximumQueueDepthExceeded');
    expect(r.body.context?.limit).toBe(settings.maxQueueDepth);
    expect(await ledger.get('d1', 'over')).toBeUndefined();

    // Settling frees room: purge one device's queue, then it takes messages again.
    expect((await call('DELETE', '/devices/d1/commands')).status).toBe(200);
    expect((await send('d1', { body: 'x', messageId: 'over' })).status).toBe(201);
  });

  it('answers 409 DuplicateMessageId for a message id the device already has', async () => {
    expect((await send('d1', { body: 'first', messageId: 'dup' })).status).toBe(201);
    const r = await send('d1', { body: 'second', messageId: 'dup' });
    expectError(r, 409, 'DuplicateMessageId');
    expect(Buffer.from((await storedBody('d1', 'dup')) ?? []).toString('utf8')).toBe('first');
    await registry.create({ deviceId: 'd2' });
    expect((await send('d2', { body: 'x', messageId: 'dup' })).status).toBe(201);
  });

  it('delivers at once to a Connected device', async () => {
    await connect('d1');
    const r = await send('d1', { body: 'now', messageId: 'm1' });
    expect(r.status).toBe(201);
    expect(r.body.state).toBe('Invisible');
    expect(r.body.deliveryCount).toBe(1);
    expect(r.body.lockedUntilUtc).toBe(new Date(T0 + settings.lockTimeoutMs).toISOString());
    const seen = publisher.deliveries('d1');
    expect(seen.map((d) => [d.props['$.mid'], d.body])).toEqual([['m1', 'now']]);
  });

  it('only queues for a Disconnected device', async () => {
    const r = await send('d1', { body: 'later', messageId: 'm1' });
    expect(r.status).toBe(201);
    expect(r.body.state).toBe('Enqueued');
    expect(publisher.published).toEqual([]);
  });

  it('still answers 201 when the delivery right after the send fails, and logs it', async () => {
    await connect('d1');
    const down = {
      publish: async () => {
        throw new Error('iot down');
      },
    };
    const failing = makeHandler({
      registry,
      connections,
      log,
      c2d: {
        ledger,
        delivery: new C2dDelivery({ ledger, publisher: down, settings, log, now: clock.now }),
        settings,
        now: clock.now,
      },
    });
    const r = reply(
      await failing(
        urlEvent('POST', '/devices/d1/messages/deviceBound', { body: '{"body":"x","messageId":"m1"}' }),
      ),
    );
    expect(r.status).toBe(201);
    // Locked as it was written; the publish failed, so the lock lapses and the sweep delivers it again.
    expect(r.body.state).toBe('Invisible');
    expect((await ledger.get('d1', 'm1', T0))?.deliveryCount).toBe(1);
    expect(log.at('warn').some((e) => e.context?.messageId === 'm1')).toBe(true);
  });
});

describe('GET /devices/{id}/messages/deviceBound/{messageId}', () => {
  it('follows the message through delivery and settlement', async () => {
    await send('d1', { body: 'x', messageId: 'm1', correlationId: 'c1' });
    expect((await call('GET', '/devices/d1/messages/deviceBound/m1')).body).toMatchObject({
      state: 'Enqueued',
      deliveryCount: 0,
      correlationId: 'c1',
    });
    await connect('d1');
    const delivery = new C2dDelivery({ ledger, publisher, settings, log, now: clock.now });
    await delivery.deliver('d1');
    const locked = await call('GET', '/devices/d1/messages/deviceBound/m1');
    expect(locked.body).toMatchObject({ state: 'Invisible', deliveryCount: 1 });
    clock.advance(5);
    await delivery.settle('d1', 'complete', publisher.deliveries()[0]?.props['$.lt'] ?? '');
    const done = await call('GET', '/devices/d1/messages/deviceBound/m1');
    expect(done.body).toMatchObject({ state: 'Completed', finalTimeUtc: new Date(T0 + 5).toISOString() });
    expect(done.body.lockedUntilUtc).toBeUndefined();
  });

  it('answers 404 MessageNotFound for an unknown message and 400 for a bad device id', async () => {
    expectError(await call('GET', '/devices/d1/messages/deviceBound/nope'), 404, 'MessageNotFound');
    const bad = await call('GET', `/devices/${'x'.repeat(129)}/messages/deviceBound/m1`);
    expect(bad.status).toBe(400);
  });
});

describe('DELETE /devices/{id}/commands (purge)', () => {
  it('purges the queue: totalMessagesPurged, Purged states and purged feedback where asked', async () => {
    await send('d1', { body: 'x', messageId: 'p1', ack: 'negative' });
    await send('d1', { body: 'x', messageId: 'p2', ack: 'none' });
    await send('d1', { body: 'x', messageId: 'p3', ack: 'full' });
    clock.advance(10);

    const r = await call('DELETE', '/devices/d1/commands');

    expect(r.status).toBe(200);
    expect(r.body).toEqual({ deviceId: 'd1', totalMessagesPurged: 3 });
    for (const id of ['p1', 'p2', 'p3']) {
      expect((await call('GET', `/devices/d1/messages/deviceBound/${id}`)).body.state).toBe('Purged');
    }
    const feedback = await readAllFeedback();
    expect(feedback.map((f) => [f.originalMessageId, f.status, f.statusCode]).sort()).toEqual([
      ['p1', 'purged', 'Purged'],
      ['p3', 'purged', 'Purged'],
    ]);
    expect(feedback.every((f) => f.statusTimeUtc === new Date(T0 + 10).toISOString())).toBe(true);

    expect((await call('DELETE', '/devices/d1/commands')).body).toEqual({
      deviceId: 'd1',
      totalMessagesPurged: 0,
    });
  });

  it('answers 404 for an unknown device', async () => {
    expectError(await call('DELETE', '/devices/nobody/commands'), 404, 'DeviceNotFound');
  });
});

describe('DELETE /devices/{id} with C2D', () => {
  it("purges the deleted device's queue, with purged feedback when ack was asked, and disconnects it", async () => {
    await send('d1', { body: 'x', messageId: 'k1', ack: 'negative' });
    await send('d1', { body: 'x', messageId: 'k2' });
    await registry.create({ deviceId: 'd2' });
    await send('d2', { body: 'x', messageId: 'other', ack: 'full' });
    clock.advance(20);

    const r = await call('DELETE', '/devices/d1');

    expect(r.status).toBe(204);
    expect(connections.disconnected).toEqual(['d1']);
    expect((await ledger.get('d1', 'k1'))?.state).toBe('Purged');
    expect((await ledger.get('d1', 'k2'))?.state).toBe('Purged');
    expect((await ledger.get('d2', 'other'))?.state).toBe('Enqueued');
    const feedback = await readAllFeedback();
    expect(feedback).toHaveLength(1);
    expect(feedback[0]).toMatchObject({ deviceId: 'd1', originalMessageId: 'k1', status: 'purged' });
    expect(feedback[0]?.statusTimeUtc).toBe(new Date(T0 + 20).toISOString());
  });

  it('deletes the device even when the purge fails, and logs the failure', async () => {
    const broken = new MemoryDeliveryLedger();
    broken.purge = async () => {
      throw new Error('table gone');
    };
    const h = makeHandler({
      registry,
      connections,
      log,
      c2d: {
        ledger: broken,
        delivery: { send: async (_deviceId, message) => message },
        settings,
      },
    });
    const r = reply(await h(urlEvent('DELETE', '/devices/d1')));
    expect(r.status).toBe(204);
    expect(await registry.find('d1')).toBeUndefined();
    expect(connections.disconnected).toEqual(['d1']);
    expect(log.at('error').some((e) => e.context?.deviceId === 'd1')).toBe(true);
  });
});

describe('feedback', () => {
  async function makeFeedback(count: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      await send('d1', { body: 'x', messageId: `f${i}`, ack: 'full' });
      clock.advance(1);
    }
    await call('DELETE', '/devices/d1/commands');
  }

  it('reads records in pages with limit and cursor', async () => {
    await makeFeedback(5);
    const seen: string[] = [];
    let cursor: string | undefined;
    const sizes: number[] = [];
    for (let page = 0; page < 5; page++) {
      const r = await call('GET', '/messages/serviceBound/feedback', {
        query: { limit: '2', ...(cursor === undefined ? {} : { cursor }) },
      });
      expect(r.status).toBe(200);
      const records = r.body.records as unknown as FeedbackRecord[];
      sizes.push(records.length);
      seen.push(...records.map((f) => f.originalMessageId));
      expect(typeof r.body.cursor).toBe('string');
      cursor = r.body.cursor as unknown as string;
      if (records.length === 0) break;
    }
    expect(sizes).toEqual([2, 2, 1, 0]);
    expect([...seen].sort()).toEqual(['f0', 'f1', 'f2', 'f3', 'f4']);
  });

  it('acknowledged records are gone; the others stay', async () => {
    await makeFeedback(3);
    const all = await readAllFeedback();
    expect(all).toHaveLength(3);
    const ids = all.slice(0, 2).map((f) => f.id);

    const r = await call('POST', '/messages/serviceBound/feedback/acknowledge', {
      body: JSON.stringify({ ids }),
    });

    expect(r.status).toBe(200);
    expect(r.body).toEqual({ acknowledged: 2 });
    expect((await readAllFeedback()).map((f) => f.id)).toEqual([all[2]?.id]);
  });

  it.each([
    ['limit 0', { limit: '0' }, 'limit'],
    ['limit over 100', { limit: '101' }, 'limit'],
    ['a limit that is not a number', { limit: 'ten' }, 'limit'],
    ['a cursor it never issued', { cursor: 'garbage' }, 'cursor'],
  ])('answers 400 for %s', async (_name, query, field) => {
    const r = await call('GET', '/messages/serviceBound/feedback', { query });
    expect(r.status).toBe(400);
    expect(r.body.context?.field).toBe(field);
    expect(r.body.message).toContain(field);
  });

  it.each([
    ['no body', undefined],
    ['invalid JSON', '{"ids": ['],
    ['no ids', '{}'],
    ['empty ids', '{"ids": []}'],
    ['ids that are not a list', '{"ids": "a"}'],
    ['an empty id', '{"ids": [""]}'],
    ['an unknown field', '{"ids": ["a"], "all": true}'],
    ['over 100 ids', JSON.stringify({ ids: Array.from({ length: 101 }, (_, i) => `id-${i}`) })],
  ])('answers 400 to an acknowledgement with %s, removing nothing', async (_name, body) => {
    await makeFeedback(1);
    const r = await call(
      'POST',
      '/messages/serviceBound/feedback/acknowledge',
      body === undefined ? {} : { body },
    );
    expect(r.status).toBe(400);
    expect(typeof r.body.message).toBe('string');
    expect(await readAllFeedback()).toHaveLength(1);
  });
});

describe('without c2d deps', () => {
  it('serves no C2D routes', async () => {
    const plain = makeHandler({ registry, connections, log });
    const r = reply(
      await plain(urlEvent('POST', '/devices/d1/messages/deviceBound', { body: '{"body":"x"}' })),
    );
    expect(r.status).toBe(404);
    expect(r.body.code).toBe('NotFound');
  });
});
