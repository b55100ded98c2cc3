import {
  DeleteConnectionCommand,
  IoTDataPlaneClient,
  ResourceNotFoundException,
} from '@aws-sdk/client-iot-data-plane';
import type { APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { IotConnections } from '../../functions/adapters/connections.ts';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import {
  ConflictError,
  HubError,
  LimitExceededError,
  NotFoundError,
  TransientError,
  ValidationError,
} from '../../functions/core/errors.ts';
import type { Device } from '../../functions/core/identity/device.ts';
import { errorResponse, RouteTable } from '../../functions/core/service-api/http.ts';
import type { DeviceConnections } from '../../functions/core/service-api/registry-routes.ts';
import { type EventOptions, urlEvent } from '../support/function-url-event.ts';
import { MemoryLog } from './fakes.ts';

import '../support/service-api-env.ts';

const { makeHandler } = await import('../../functions/service-api.ts');

class FakeConnections implements DeviceConnections {
  readonly disconnected: string[] = [];
  readonly retainedCleared: string[] = [];
  failWith: Error | undefined;
  async disconnect(deviceId: string): Promise<void> {
    this.disconnected.push(deviceId);
    if (this.failWith) throw this.failWith;
  }
  async forgetRetained(deviceId: string): Promise<void> {
    this.retainedCleared.push(deviceId);
  }
}

interface Reply {
  status: number;
  headers: Record<string, string>;
  json: unknown;
  raw: string;
}

/** Parsed JSON seen loosely, for assertions: any member can be indexed further. */
interface Json {
  readonly [key: string]: Json;
}

function reply(result: APIGatewayProxyStructuredResultV2): Reply {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(result.headers ?? {})) headers[name] = String(value);
  const raw = result.body ?? '';
  return { status: result.statusCode ?? 0, headers, json: raw === '' ? undefined : JSON.parse(raw), raw };
}

function body(r: Reply): Json {
  return r.json as Json;
}

function items(r: Reply): Json[] {
  if (!Array.isArray(r.json)) throw new Error(`expected an array, got ${r.raw}`);
  return r.json as Json[];
}

const KEY_A = Buffer.alloc(32, 1).toString('base64');
const KEY_B = Buffer.alloc(32, 2).toString('base64');

let registry: MemoryDeviceRegistry;
let connections: FakeConnections;
let log: MemoryLog;
let handle: ReturnType<typeof makeHandler>;

async function call(method: string, path: string, options: EventOptions = {}): Promise<Reply> {
  return reply(await handle(urlEvent(method, path, options)));
}

async function put(id: string, device: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  return call('PUT', `/devices/${encodeURIComponent(id)}`, {
    body: JSON.stringify(device),
    headers: { 'content-type': 'application/json', ...headers },
  });
}

async function bulk(items: unknown): Promise<Reply> {
  return call('POST', '/devices', { body: JSON.stringify(items) });
}

function expectError(r: Reply, status: number, code: string, field?: string): void {
  expect(r.status).toBe(status);
  expect(r.headers['content-type']).toBe('application/json; charset=utf-8');
  const b = body(r);
  expect(b.code).toBe(code);
  expect(b.status).toBe(status);
  expect(typeof b.message).toBe('string');
  if (field !== undefined) {
    expect(b.message).toContain(field);
    expect(b.context?.field).toBe(field);
  }
}

beforeEach(() => {
  registry = new MemoryDeviceRegistry();
  connections = new FakeConnections();
  log = new MemoryLog();
  handle = makeHandler({ registry, connections, log });
});

describe('PUT /devices/{id}', () => {
  it('creates a device without If-Match: 201, the Device JSON with generated keys, a quoted etag header', async () => {
    const r = await put('dev-1', { deviceId: 'dev-1' });
    expect(r.status).toBe(201);
    expect(r.headers['content-type']).toBe('application/json; charset=utf-8');
    const b = body(r);
    expect(b.deviceId).toBe('dev-1');
    expect(b.status).toBe('enabled');
    expect(b.connectionState).toBe('Disconnected');
    expect(b.cloudToDeviceMessageCount).toBe(0);
    expect(b.capabilities).toEqual({ iotEdge: false });
    expect(b.authentication?.type).toBe('sas');
    expect(b.authentication?.symmetricKey?.primaryKey).toMatch(/^[A-Za-z0-9+/]+=*$/);
    expect(r.headers.etag).toBe(`"${b.etag}"`);
    expect((await registry.get('dev-1')).etag).toBe(b.etag);
  });

  it('accepts and ignores the api-version query parameter', async () => {
    const r = await call('PUT', '/devices/dev-1', {
      body: JSON.stringify({ deviceId: 'dev-1' }),
      query: { 'api-version': '2021-04-12' },
    });
    expect(r.status).toBe(201);
  });

  it('creates with given keys, status and capabilities', async () => {
    const r = await put('dev-1', {
      deviceId: 'dev-1',
      status: 'disabled',
      statusReason: 'not yet',
      authentication: { type: 'sas', symmetricKey: { primaryKey: KEY_A, secondaryKey: KEY_B } },
      capabilities: { iotEdge: true },
    });
    expect(r.status).toBe(201);
    const b = body(r);
    expect(b.status).toBe('disabled');
    expect(b.statusReason).toBe('not yet');
    expect(b.authentication?.symmetricKey).toEqual({ primaryKey: KEY_A, secondaryKey: KEY_B });
    expect(b.capabilities).toEqual({ iotEdge: true });
  });

  it('takes a percent-encoded id with IoT Hub special characters', async () => {
    const id = "a-b.c%d_e*f?g!h(i),j:k=l@m$n'o";
    const r = await put(id, { deviceId: id });
    expect(r.status).toBe(201);
    expect(body(r).deviceId).toBe(id);
    const got = await call('GET', `/devices/${encodeURIComponent(id)}`);
    expect(got.status).toBe(200);
    expect(body(got).deviceId).toBe(id);
  });

  it('fails with 409 DeviceAlreadyExists when creating an existing id', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    expectError(await put('dev-1', { deviceId: 'dev-1' }), 409, 'DeviceAlreadyExists');
  });

  it('replaces with a matching If-Match (quoted): 200 and a new etag', async () => {
    const created = await put('dev-1', { deviceId: 'dev-1' });
    const r = await put(
      'dev-1',
      { deviceId: 'dev-1', statusReason: 'checked' },
      { 'if-match': created.headers.etag! },
    );
    expect(r.status).toBe(200);
    expect(body(r).statusReason).toBe('checked');
    expect(body(r).etag).not.toBe(body(created).etag);
    expect(r.headers.etag).toBe(`"${body(r).etag}"`);
  });

  it('replaces with If-Match * whatever the etag', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    const r = await put('dev-1', { deviceId: 'dev-1', statusReason: 'any' }, { 'if-match': '*' });
    expect(r.status).toBe(200);
    expect(body(r).statusReason).toBe('any');
  });

  it('accepts a GET-modify-PUT round trip of the whole Device JSON', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    const got = await call('GET', '/devices/dev-1');
    const modified = { ...body(got), statusReason: 'round trip' };
    const r = await put('dev-1', modified, { 'if-match': got.headers.etag! });
    expect(r.status).toBe(200);
    expect(body(r).authentication).toEqual(body(got).authentication);
  });

  it('fails with 412 PreconditionFailed on a stale etag', async () => {
    const created = await put('dev-1', { deviceId: 'dev-1' });
    await put('dev-1', { deviceId: 'dev-1', statusReason: 'moved on' }, { 'if-match': '*' });
    const r = await put('dev-1', { deviceId: 'dev-1' }, { 'if-match': created.headers.etag! });
    expectError(r, 412, 'PreconditionFailed');
    expect(body(r).context?.deviceId).toBe('dev-1');
  });

  it('fails with 404 DeviceNotFound when replacing a device that does not exist', async () => {
    expectError(await put('ghost', { deviceId: 'ghost' }, { 'if-match': '*' }), 404, 'DeviceNotFound');
  });

  it('fails with 400 naming if-match for a blank If-Match', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    expectError(
      await put('dev-1', { deviceId: 'dev-1' }, { 'if-match': ' ' }),
      400,
      'InvalidIfMatch',
      'if-match',
    );
  });
});

describe('PUT /devices/{id} bad bodies get 400 naming the field', () => {
  it('a wrong type names the field', async () => {
    expectError(await put('dev-1', { deviceId: 'dev-1', status: 5 }), 400, 'InvalidRequestBody', 'status');
    expectError(
      await put('dev-1', { deviceId: 'dev-1', capabilities: { iotEdge: 'yes' } }),
      400,
      'InvalidRequestBody',
      'capabilities.iotEdge',
    );
  });

  it('a deviceId that is not a string names deviceId', async () => {
    expectError(await put('dev-1', { deviceId: 42 }), 400, 'InvalidRequestBody', 'deviceId');
  });

  it('a bad key names the nested field', async () => {
    const r = await put('dev-1', {
      deviceId: 'dev-1',
      authentication: { type: 'sas', symmetricKey: { primaryKey: 'not base64!', secondaryKey: KEY_B } },
    });
    expectError(r, 400, 'InvalidRequestBody', 'authentication.symmetricKey.primaryKey');
  });

  it('an unknown field is named', async () => {
    const r = await put('dev-1', { deviceId: 'dev-1', colour: 'blue' });
    expectError(r, 400, 'InvalidRequestBody', 'colour');
    expect(body(r).message).toContain('colour: unknown field');
  });

  it('an id with a forbidden character names deviceId', async () => {
    const r = await put('a/b', { deviceId: 'a/b' });
    expectError(r, 400, 'InvalidRequestBody', 'deviceId');
    expect(body(r).message).toContain('"/"');
  });

  it('an id with an MQTT wildcard names deviceId', async () => {
    expectError(await put('a+b', { deviceId: 'a+b' }), 400, 'InvalidRequestBody', 'deviceId');
  });

  it('an id of 129 characters names deviceId and the limit', async () => {
    const id = 'x'.repeat(129);
    const r = await put(id, { deviceId: id });
    expectError(r, 400, 'InvalidRequestBody', 'deviceId');
    expect(body(r).message).toContain('128');
  });

  it('an id of 128 characters is fine', async () => {
    const id = 'x'.repeat(128);
    expect((await put(id, { deviceId: id })).status).toBe(201);
  });

  it('invalid JSON names the body and the problem', async () => {
    const r = await call('PUT', '/devices/dev-1', { body: '{"deviceId": "dev-1",' });
    expectError(r, 400, 'InvalidJson', 'body');
    expect(body(r).message).toMatch(/invalid JSON \(.+\)/);
  });

  it('a missing body names the body', async () => {
    expectError(await call('PUT', '/devices/dev-1'), 400, 'InvalidRequestBody', 'body');
  });

  it('a body that is not an object is refused', async () => {
    expectError(await call('PUT', '/devices/dev-1', { body: '[1, 2]' }), 400, 'InvalidRequestBody');
  });

  it("a body deviceId different from the path's names deviceId", async () => {
    const r = await put('dev-1', { deviceId: 'dev-2' });
    expectError(r, 400, 'DeviceIdMismatch', 'deviceId');
    expect(await registry.find('dev-2')).toBeUndefined();
    expect(await registry.find('dev-1')).toBeUndefined();
  });

  it('several problems are all named', async () => {
    const r = await put('dev-1', { deviceId: 'dev-1', status: 'on', statusReason: 'x'.repeat(129) });
    expect(r.status).toBe(400);
    expect(body(r).message).toContain('status:');
    expect(body(r).message).toContain('statusReason:');
    expect(body(r).context?.issues).toHaveLength(2);
  });
});

describe('GET /devices/{id}', () => {
  it('returns the device with its keys (as IoT Hub does for service callers) and the etag header', async () => {
    const created = await put('dev-1', {
      deviceId: 'dev-1',
      authentication: { type: 'sas', symmetricKey: { primaryKey: KEY_A, secondaryKey: KEY_B } },
    });
    const r = await call('GET', '/devices/dev-1', { query: { 'api-version': '2021-04-12' } });
    expect(r.status).toBe(200);
    expect(body(r)).toEqual(body(created));
    expect(body(r).authentication?.symmetricKey?.primaryKey).toBe(KEY_A);
    expect(r.headers.etag).toBe(created.headers.etag);
  });

  it('answers 404 DeviceNotFound for an unknown device', async () => {
    const r = await call('GET', '/devices/ghost');
    expectError(r, 404, 'DeviceNotFound');
    expect(body(r).context?.deviceId).toBe('ghost');
  });

  it('answers 400 naming deviceId for an over-long id in the path', async () => {
    expectError(await call('GET', `/devices/${'x'.repeat(129)}`), 400, 'InvalidDeviceId', 'deviceId');
  });

  it('answers 400 naming the path for broken percent-encoding', async () => {
    expectError(await call('GET', '/devices/%E0%A4%A'), 400, 'InvalidPath', 'path');
  });

  it('ignores a trailing slash', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    expect((await call('GET', '/devices/dev-1/')).status).toBe(200);
  });

  it('never returns attributes other modules keep on the stored item', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    const base = await registry.get('dev-1');
    const withExtra: Device & { secretInternal: string } = { ...base, secretInternal: 'x' };
    const leaky = new MemoryDeviceRegistry();
    leaky.get = async () => withExtra;
    const h = makeHandler({ registry: leaky, connections, log });
    const r = reply(await h(urlEvent('GET', '/devices/dev-1')));
    expect(r.status).toBe(200);
    expect(r.raw).not.toContain('secretInternal');
  });
});

describe('DELETE /devices/{id}', () => {
  it('deletes without If-Match: 204 with an empty body, then GET is 404', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    const r = await call('DELETE', '/devices/dev-1');
    expect(r.status).toBe(204);
    expect(r.raw).toBe('');
    expectError(await call('GET', '/devices/dev-1'), 404, 'DeviceNotFound');
  });

  it('deletes with a matching If-Match', async () => {
    const created = await put('dev-1', { deviceId: 'dev-1' });
    expect(
      (await call('DELETE', '/devices/dev-1', { headers: { 'if-match': created.headers.etag! } })).status,
    ).toBe(204);
  });

  it('fails with 412 on a stale etag and keeps the device', async () => {
    const created = await put('dev-1', { deviceId: 'dev-1' });
    await put('dev-1', { deviceId: 'dev-1', statusReason: 'moved on' }, { 'if-match': '*' });
    const r = await call('DELETE', '/devices/dev-1', { headers: { 'if-match': created.headers.etag! } });
    expectError(r, 412, 'PreconditionFailed');
    expect(await registry.find('dev-1')).toBeDefined();
    expect(connections.disconnected).toEqual([]);
  });

  it('fails with 404 for an unknown device', async () => {
    expectError(await call('DELETE', '/devices/ghost'), 404, 'DeviceNotFound');
    expect(connections.disconnected).toEqual([]);
    expect(connections.retainedCleared).toEqual([]);
  });

  it("clears the deleted device's retained messages (not a disabled one's)", async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    await put('dev-2', { deviceId: 'dev-2' });
    await put('dev-2', { deviceId: 'dev-2', status: 'disabled' }, { 'if-match': '*' });
    expect((await call('DELETE', '/devices/dev-1')).status).toBe(204);
    expect(connections.retainedCleared).toEqual(['dev-1']);
  });
});

describe('GET /devices (paging)', () => {
  async function seed(count: number): Promise<string[]> {
    const ids = Array.from({ length: count }, (_, i) => `dev-${String(i).padStart(4, '0')}`);
    for (let i = 0; i < ids.length; i += 100) {
      const r = await bulk(ids.slice(i, i + 100).map((id) => ({ id, importMode: 'create' })));
      expect(r.status).toBe(200);
    }
    return ids;
  }

  async function listAll(top: string): Promise<{ ids: string[]; pages: number[] }> {
    const ids: string[] = [];
    const pages: number[] = [];
    let continuation: string | undefined;
    do {
      const r = await call('GET', '/devices', {
        query: { top, 'api-version': '2021-04-12' },
        headers: continuation === undefined ? {} : { 'x-ms-continuation': continuation },
      });
      expect(r.status).toBe(200);
      const page = items(r);
      pages.push(page.length);
      for (const device of page) ids.push(String(device.deviceId));
      continuation = r.headers['x-ms-continuation'];
    } while (continuation !== undefined);
    return { ids, pages };
  }

  it('pages through 250 devices with top=100 via x-ms-continuation', async () => {
    const seeded = await seed(250);
    const { ids, pages } = await listAll('100');
    expect(pages).toEqual([100, 100, 50]);
    expect([...ids].sort()).toEqual(seeded);
  });

  it('uses a page of 100 when top is not given', async () => {
    await seed(150);
    const r = await call('GET', '/devices');
    expect(body(r)).toHaveLength(100);
    expect(r.headers['x-ms-continuation']).toBeDefined();
  });

  it('returns an empty array for an empty registry', async () => {
    const r = await call('GET', '/devices');
    expect(r.status).toBe(200);
    expect(body(r)).toEqual([]);
    expect(r.headers['x-ms-continuation']).toBeUndefined();
  });

  it.each(['0', '1001', 'abc', '1.5', '-3', ''])('answers 400 naming top for top=%j', async (top) => {
    expectError(await call('GET', '/devices', { query: { top } }), 400, 'InvalidQueryParameter', 'top');
  });

  it('answers 400 naming x-ms-continuation for a token it never issued', async () => {
    const r = await call('GET', '/devices', { headers: { 'x-ms-continuation': 'garbage' } });
    expectError(r, 400, 'InvalidContinuationToken', 'x-ms-continuation');
  });
});

describe('POST /devices (bulk)', () => {
  it('imports 1,000 devices in 10 calls of 100, then lists them all', async () => {
    const ids = Array.from({ length: 1000 }, (_, i) => `bulk-${String(i).padStart(4, '0')}`);
    for (let call = 0; call < 10; call++) {
      const r = await bulk(
        ids.slice(call * 100, call * 100 + 100).map((id) => ({ id, importMode: 'create' })),
      );
      expect(r.status).toBe(200);
      expect(body(r)).toEqual({ isSuccessful: true, errors: [], warnings: [] });
    }
    const listed: string[] = [];
    let continuation: string | undefined;
    do {
      const r = await reply(
        await handle(
          urlEvent('GET', '/devices', {
            query: { top: '1000' },
            headers: continuation === undefined ? {} : { 'x-ms-continuation': continuation },
          }),
        ),
      );
      for (const device of items(r)) {
        listed.push(String(device.deviceId));
        expect(device.authentication?.symmetricKey?.primaryKey).toEqual(expect.any(String));
      }
      continuation = r.headers['x-ms-continuation'];
    } while (continuation !== undefined);
    expect(listed.sort()).toEqual(ids);
  });

  it('answers 400 naming the limit for more than 100 items, applying none', async () => {
    const items = Array.from({ length: 101 }, (_, i) => ({ id: `d${i}`, importMode: 'create' }));
    const r = await bulk(items);
    expectError(r, 400, 'TooManyDevicesInBulkOperation');
    expect(body(r).message).toContain('100');
    expect(body(r).context?.limit).toBe(100);
    expect((await registry.list()).devices).toEqual([]);
  });

  it('reports per-item failures with IoT Hub BulkRegistryOperationResult and status 400', async () => {
    await put('exists', { deviceId: 'exists' });
    const r = await bulk([
      { id: 'new-1', importMode: 'create' },
      { id: 'exists', importMode: 'create' },
      { id: 'ghost', importMode: 'update' },
    ]);
    expect(r.status).toBe(400);
    const b = body(r);
    expect(b.isSuccessful).toBe(false);
    expect(b.warnings).toEqual([]);
    expect(b.errors).toEqual([
      { deviceId: 'exists', errorCode: 'DeviceAlreadyExists', errorStatus: expect.any(String) },
      { deviceId: 'ghost', errorCode: 'DeviceNotFound', errorStatus: expect.any(String) },
    ]);
    expect(await registry.find('new-1')).toBeDefined();
  });

  it('applies every import mode', async () => {
    const a = body(await put('a', { deviceId: 'a' }));
    await put('b', { deviceId: 'b' });
    await put('c', { deviceId: 'c' });
    const r = await bulk([
      { id: 'a', importMode: 'updateIfMatchETag', eTag: a.etag, statusReason: 'updated' },
      { id: 'b', importMode: 'createOrUpdate', statusReason: 'upserted' },
      { id: 'c', importMode: 'delete' },
      { id: 'd', importMode: 'createOrUpdateIfMatchETag', eTag: '*' },
    ]);
    expect(body(r)).toEqual({ isSuccessful: true, errors: [], warnings: [] });
    expect((await registry.get('a')).statusReason).toBe('updated');
    expect((await registry.get('b')).statusReason).toBe('upserted');
    expect(await registry.find('c')).toBeUndefined();
    expect(await registry.find('d')).toBeDefined();
  });

  it('answers 400 naming the item field for a bad item', async () => {
    const r = await bulk([
      { id: 'ok', importMode: 'create' },
      { id: 'x'.repeat(129), importMode: 'create' },
    ]);
    expectError(r, 400, 'InvalidRequestBody', '[1].id');
    expect(await registry.find('ok')).toBeUndefined();
  });

  it('answers 400 naming the field for an unknown import mode and an unknown field', async () => {
    expectError(await bulk([{ id: 'a', importMode: 'upsert' }]), 400, 'InvalidRequestBody', '[0].importMode');
    expectError(
      await bulk([{ id: 'a', importMode: 'create', tags: {} }]),
      400,
      'InvalidRequestBody',
      '[0].tags',
    );
  });

  it('answers 400 for a body that is not an array, or an empty one', async () => {
    expect((await bulk({ id: 'a', importMode: 'create' })).status).toBe(400);
    expect((await bulk([])).status).toBe(400);
  });
});

describe('routing', () => {
  it('answers 404 NotFound for an unknown route', async () => {
    expectError(await call('GET', '/nothing/here'), 404, 'NotFound');
    expectError(await call('GET', '/devices/a/b/c'), 404, 'NotFound');
  });

  it('answers 405 with an allow header for a known path under another method', async () => {
    const r = await call('PATCH', '/devices/dev-1');
    expectError(r, 405, 'MethodNotAllowed');
    expect(r.headers.allow?.split(', ').sort()).toEqual(['DELETE', 'GET', 'PUT']);
    const list = await call('DELETE', '/devices');
    expect(list.status).toBe(405);
    expect(list.headers.allow?.split(', ').sort()).toEqual(['GET', 'POST']);
  });

  it('prefers literal segments over parameters and matches literals case-insensitively', async () => {
    const table = new RouteTable([
      { method: 'GET', pattern: '/devices/{id}', handle: async () => errorResponse(new Error('x')) },
      {
        method: 'GET',
        pattern: '/devices/query',
        handle: async () => ({ status: 299, headers: {}, body: '' }),
      },
    ]);
    const match = table.match('GET', '/Devices/QUERY');
    expect(match.kind).toBe('found');
    if (match.kind === 'found') expect(match.route.pattern).toBe('/devices/query');
  });

  it('refuses duplicate and malformed route patterns', () => {
    const handle = async () => errorResponse(new Error('x'));
    expect(
      () =>
        new RouteTable([
          { method: 'GET', pattern: '/devices/{id}', handle },
          { method: 'GET', pattern: '/devices/{deviceId}', handle },
        ]),
    ).toThrow(/duplicate route/);
    expect(() => new RouteTable([{ method: 'GET', pattern: '/devices/x{id}', handle }])).toThrow(/literal/);
  });

  it('adds routes from other modules', async () => {
    const h = makeHandler({
      registry,
      connections,
      log,
      extraRoutes: [
        {
          method: 'POST',
          pattern: '/devices/{id}/messages/deviceBound',
          handle: async (_request, params) => ({
            status: 204,
            headers: { 'content-type': 'application/json; charset=utf-8', 'x-id': params.id ?? '' },
            body: '',
          }),
        },
      ],
    });
    const r = reply(await h(urlEvent('POST', '/devices/a%40b/messages/devicebound')));
    expect(r.status).toBe(204);
    expect(r.headers['x-id']).toBe('a@b');
  });

  it('decodes a base64 body', async () => {
    const r = await call('PUT', '/devices/dev-1', {
      body: JSON.stringify({ deviceId: 'dev-1' }),
      base64: true,
    });
    expect(r.status).toBe(201);
    expect(body(r).deviceId).toBe('dev-1');
  });

  it('answers 400 for a body that is not UTF-8', async () => {
    const event = urlEvent('PUT', '/devices/dev-1');
    const r = reply(
      await handle({
        ...event,
        body: Buffer.from([0xff, 0xfe, 0x7b]).toString('base64'),
        isBase64Encoded: true,
      }),
    );
    expectError(r, 400, 'InvalidRequestBody', 'body');
  });

  it('answers 413 for a body over 256 KB, plain or base64', async () => {
    const big = JSON.stringify({ deviceId: 'dev-1', statusReason: 'x'.repeat(256 * 1024) });
    for (const base64 of [false, true]) {
      const r = await call('PUT', '/devices/dev-1', { body: big, base64 });
      expectError(r, 413, 'RequestEntityTooLarge');
      expect(body(r).context?.limit).toBe(256 * 1024);
    }
    expect(await registry.find('dev-1')).toBeUndefined();
  });

  it('accepts a body of exactly 256 KB (then validates it)', async () => {
    const prefix = '{"deviceId":"dev-1","statusReason":"';
    const text = `${prefix}${'x'.repeat(256 * 1024 - prefix.length - 2)}"}`;
    expect(Buffer.byteLength(text)).toBe(256 * 1024);
    expectError(
      await call('PUT', '/devices/dev-1', { body: text }),
      400,
      'InvalidRequestBody',
      'statusReason',
    );
  });

  it('logs every request with method, path, status and ms at info', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    await call('GET', '/devices/ghost');
    const lines = log.at('info').filter((e) => e.message === 'request');
    expect(lines.map((l) => [l.context?.method, l.context?.path, l.context?.status])).toEqual([
      ['PUT', '/devices/dev-1', 201],
      ['GET', '/devices/ghost', 404],
    ]);
    for (const line of lines) expect(line.context?.ms).toEqual(expect.any(Number));
  });
});

describe('disconnecting disabled and deleted devices', () => {
  it('disables a device: disconnect is called with its id', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    const r = await put('dev-1', { deviceId: 'dev-1', status: 'disabled' }, { 'if-match': '*' });
    expect(r.status).toBe(200);
    expect(connections.disconnected).toEqual(['dev-1']);
  });

  it('a replace that leaves the device enabled does not disconnect it', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    await put('dev-1', { deviceId: 'dev-1', statusReason: 'still fine' }, { 'if-match': '*' });
    expect(connections.disconnected).toEqual([]);
  });

  it('a create does not disconnect anything', async () => {
    await put('dev-1', { deviceId: 'dev-1', status: 'disabled' });
    expect(connections.disconnected).toEqual([]);
  });

  it('deletes a device: disconnect is called with its id', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    expect((await call('DELETE', '/devices/dev-1')).status).toBe(204);
    expect(connections.disconnected).toEqual(['dev-1']);
  });

  it('a disconnect failure is logged and the response is still 200', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    connections.failWith = new Error('iot data plane down');
    const r = await put('dev-1', { deviceId: 'dev-1', status: 'disabled' }, { 'if-match': '*' });
    expect(r.status).toBe(200);
    expect(body(r).status).toBe('disabled');
    expect((await registry.get('dev-1')).status).toBe('disabled');
    const errors = log.at('error');
    expect(errors).toHaveLength(1);
    expect(errors[0]?.context).toMatchObject({
      deviceId: 'dev-1',
      reason: 'disabled',
      error: { message: 'iot data plane down' },
    });
  });

  it('a disconnect failure after delete is logged and the response is still 204', async () => {
    await put('dev-1', { deviceId: 'dev-1' });
    connections.failWith = new Error('boom');
    expect((await call('DELETE', '/devices/dev-1')).status).toBe(204);
    expect(log.at('error')[0]?.context).toMatchObject({ deviceId: 'dev-1', reason: 'deleted' });
  });

  it('bulk deletes and disables disconnect the affected devices only', async () => {
    for (const id of ['a', 'b', 'c', 'd']) await put(id, { deviceId: id });
    const r = await bulk([
      { id: 'a', importMode: 'delete' },
      { id: 'b', importMode: 'update', status: 'disabled' },
      { id: 'c', importMode: 'update', statusReason: 'kept enabled' },
      { id: 'e', importMode: 'create', status: 'disabled' },
      { id: 'ghost', importMode: 'delete' },
    ]);
    expect(r.status).toBe(400);
    expect(connections.disconnected.sort()).toEqual(['a', 'b']);
  });
});

describe('error mapping', () => {
  class FailingRegistry extends MemoryDeviceRegistry {
    constructor(private readonly error: unknown) {
      super();
    }
    override async get(): Promise<Device> {
      throw this.error;
    }
  }

  async function getWith(error: unknown): Promise<Reply> {
    const h = makeHandler({ registry: new FailingRegistry(error), connections, log });
    return reply(await h(urlEvent('GET', '/devices/dev-1')));
  }

  it('answers 500 with a generic message and no stack for an unexpected error, and logs it', async () => {
    const r = await getWith(new Error('secret table name arn:aws:dynamodb:...'));
    expectError(r, 500, 'InternalServerError');
    expect(r.raw).not.toContain('secret');
    expect(r.raw).not.toContain('stack');
    expect(body(r).context).toBeUndefined();
    expect(log.at('error')[0]?.context).toMatchObject({ message: 'secret table name arn:aws:dynamodb:...' });
  });

  it('answers 500 for a HubError of no mapped kind', async () => {
    expectError(
      await getWith(new HubError('MissingEnvironment', 'REGISTRY_TABLE_NAME')),
      500,
      'InternalServerError',
    );
  });

  it('answers 503 with retry-after for a TransientError', async () => {
    const r = await getWith(new TransientError('RegistryUnavailable', 'registry table unavailable'));
    expectError(r, 503, 'RegistryUnavailable');
    expect(r.headers['retry-after']).toBe('1');
  });

  it('answers 429 for a Throttled-coded error', async () => {
    const r = await getWith(new TransientError('Throttled', 'slow down'));
    expectError(r, 429, 'Throttled');
    expect(r.headers['retry-after']).toBe('1');
  });

  it.each([
    [new ValidationError('X', 'm', { field: 'f' }), 400],
    [new NotFoundError('X', 'm'), 404],
    [new ConflictError('X', 'm'), 409],
    [new ConflictError('PreconditionFailed', 'm'), 412],
    [new LimitExceededError('TooManyDevicesInBulkOperation', 'm', { limit: 100 }), 400],
    [new LimitExceededError('RequestEntityTooLarge', 'm', { limit: 1 }), 413],
    [new HubError('IoTHubThrottled', 'm'), 429],
    [new TransientError('X', 'm'), 503],
    ['a string', 500],
  ])('maps %s to %i', (error, status) => {
    const r = errorResponse(error);
    expect(r.status).toBe(status);
    expect(r.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(JSON.parse(r.body).status).toBe(status);
  });

  it('shows only safe context keys', () => {
    const r = errorResponse(
      new ConflictError('PreconditionFailed', 'm', { deviceId: 'd', ifMatch: 'x', currentEtag: 'secret' }),
    );
    expect(JSON.parse(r.body).context).toEqual({ deviceId: 'd' });
  });
});

describe('IotConnections', () => {
  function clientWith(send: (command: unknown) => Promise<unknown>): {
    client: IoTDataPlaneClient;
    sent: unknown[];
  } {
    const client = new IoTDataPlaneClient({
      region: 'eu-west-1',
      credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' },
    });
    const sent: unknown[] = [];
    vi.spyOn(client, 'send').mockImplementation(async (command: unknown) => {
      sent.push(command);
      return send(command);
    });
    return { client, sent };
  }

  it('sends DeleteConnection with the device id as client id', async () => {
    const { client, sent } = clientWith(async () => ({}));
    await new IotConnections(client).disconnect('dev-1');
    expect(sent).toHaveLength(1);
    expect(sent[0]).toBeInstanceOf(DeleteConnectionCommand);
    expect((sent[0] as DeleteConnectionCommand).input).toEqual({ clientId: 'dev-1' });
  });

  it('treats ResourceNotFoundException as not connected', async () => {
    const { client } = clientWith(async () => {
      throw new ResourceNotFoundException({ message: 'no such client', $metadata: {} });
    });
    await expect(new IotConnections(client).disconnect('dev-1')).resolves.toBeUndefined();
  });

  it('rethrows other failures', async () => {
    const { client } = clientWith(async () => {
      throw Object.assign(new Error('denied'), { name: 'ForbiddenException' });
    });
    await expect(new IotConnections(client).disconnect('dev-1')).rejects.toThrow('denied');
  });
});
