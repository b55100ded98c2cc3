import mqtt from 'mqtt';
import { beforeAll, describe, expect, it } from 'vitest';
import { registerDevice, service } from '../support/devices.ts';
import type { HubProcess } from '../support/hub-process.ts';
import { sharedHub } from '../support/shared-hub.ts';

// Twins on the real local hub: the service API (GET/PATCH/PUT /twins/{id}) over tags in the registry
// table and desired/reported in the hub's shadow service, and a real mqtt.js device on the shadow topics.

interface Twin {
  deviceId: string;
  etag: string;
  version: number;
  tags: Record<string, unknown>;
  properties: {
    desired: Record<string, unknown> & { $version: number; $metadata: Record<string, unknown> };
    reported: Record<string, unknown> & { $version: number; $metadata: Record<string, unknown> };
  };
}

/** A device connected over MQTT, collecting what arrives on its shadow topics. */
async function shadowDevice(hub: HubProcess, deviceId: string) {
  const creds = await registerDevice(hub.endpoints, deviceId);
  const client = await mqtt.connectAsync(hub.endpoints.mqtt, { ...creds, reconnectPeriod: 0 });
  const received: { topic: string; body: Record<string, unknown> }[] = [];
  client.on('message', (topic, payload) => received.push({ topic, body: JSON.parse(payload.toString()) }));
  await client.subscribeAsync(`$aws/things/${deviceId}/shadow/#`, { qos: 1 });
  const next = async (suffix: string, after = 0) => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const found = received.slice(after).find((m) => m.topic === `$aws/things/${deviceId}/shadow/${suffix}`);
      if (found) return found.body;
      if (Date.now() > deadline) throw new Error(`no message on ${suffix}; got ${JSON.stringify(received)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const report = async (reported: Record<string, unknown>) => {
    const mark = received.length;
    await client.publishAsync(
      `$aws/things/${deviceId}/shadow/update`,
      JSON.stringify({ state: { reported } }),
      {
        qos: 1,
      },
    );
    return next('update/accepted', mark);
  };
  return { client, received, next, report };
}

async function twinOf(hub: HubProcess, deviceId: string) {
  const response = await service(hub.endpoints, 'GET', `/twins/${deviceId}`);
  return response;
}

describe('device twins on the local hub', () => {
  let hub: HubProcess;

  beforeAll(async () => {
    hub = await sharedHub();
  });

  it('a desired change through the service API reaches the device as a delta; its report shows in the twin', async () => {
    const device = await shadowDevice(hub, 'twin-1');
    try {
      const patched = await service(hub.endpoints, 'PATCH', '/twins/twin-1', {
        tags: { building: 'b43', floor: 2 },
        properties: { desired: { telemetryInterval: 30, mode: { led: 'on' } } },
      });
      expect(patched.status).toBe(200);
      const twin = patched.body as Twin;
      expect(twin.tags).toEqual({ building: 'b43', floor: 2 });
      expect(twin.properties.desired).toMatchObject({ telemetryInterval: 30, mode: { led: 'on' } });
      expect(patched.headers.get('etag')).toBe(`"${twin.etag}"`);

      const delta = await device.next('update/delta');
      expect(delta.state).toEqual({ telemetryInterval: 30, mode: { led: 'on' } });

      const accepted = await device.report({ telemetryInterval: 30, mode: { led: 'on' }, firmware: '1.0.2' });
      expect(accepted).toHaveProperty('version');

      const after = (await twinOf(hub, 'twin-1')).body as Twin;
      expect(after.properties.reported).toMatchObject({ telemetryInterval: 30, firmware: '1.0.2' });
      expect(after.properties.reported.$metadata).toHaveProperty('firmware.$lastUpdated');
      expect(after.version).toBeGreaterThan(twin.version);
      expect(after.etag).not.toBe(twin.etag);
    } finally {
      await device.client.endAsync();
    }
  });

  it('null removes a desired key, and the device sees the shadow without it', async () => {
    const device = await shadowDevice(hub, 'twin-2');
    try {
      await service(hub.endpoints, 'PATCH', '/twins/twin-2', { properties: { desired: { a: 1, b: 2 } } });
      await service(hub.endpoints, 'PATCH', '/twins/twin-2', { properties: { desired: { a: null } } });
      const mark = device.received.length;
      await device.client.publishAsync('$aws/things/twin-2/shadow/get', '{}', { qos: 1 });
      const got = await device.next('get/accepted', mark);
      expect((got.state as { desired: unknown }).desired).toEqual({ b: 2 });
    } finally {
      await device.client.endAsync();
    }
  });

  it('PUT replaces tags and desired properties', async () => {
    await registerDevice(hub.endpoints, 'twin-3');
    await service(hub.endpoints, 'PATCH', '/twins/twin-3', {
      tags: { a: 1, b: { c: 2 } },
      properties: { desired: { x: { y: 1, z: 2 } } },
    });
    const replaced = await service(hub.endpoints, 'PUT', '/twins/twin-3', {
      tags: { b: { d: 3 } },
      properties: { desired: { x: { y: 1 } } },
    });
    expect(replaced.status).toBe(200);
    const twin = (await twinOf(hub, 'twin-3')).body as Twin;
    expect(twin.tags).toEqual({ b: { d: 3 } });
    const { $metadata: _m, $version: _v, ...desired } = twin.properties.desired;
    expect(desired).toEqual({ x: { y: 1 } });
  });

  it('If-Match: a write with the etag read applies, one with a stale etag gets 412 and changes nothing', async () => {
    const device = await shadowDevice(hub, 'twin-4');
    try {
      const read = (await twinOf(hub, 'twin-4')).body as Twin;
      const ok = await service(
        hub.endpoints,
        'PATCH',
        '/twins/twin-4',
        { tags: { v: 1 } },
        { 'if-match': `"${read.etag}"` },
      );
      expect(ok.status).toBe(200);
      const stale = await service(
        hub.endpoints,
        'PATCH',
        '/twins/twin-4',
        { tags: { v: 2 } },
        { 'if-match': `"${read.etag}"` },
      );
      expect(stale.status).toBe(412);
      expect(stale.body).toMatchObject({ code: 'PreconditionFailed' });

      // The device reports between the read and the write: the desired write is refused too.
      const current = (await twinOf(hub, 'twin-4')).body as Twin;
      await device.report({ t: 1 });
      const raced = await service(
        hub.endpoints,
        'PATCH',
        '/twins/twin-4',
        { properties: { desired: { x: 1 } } },
        { 'if-match': `"${current.etag}"` },
      );
      expect(raced.status).toBe(412);
      const final = (await twinOf(hub, 'twin-4')).body as Twin;
      expect(final.tags).toEqual({ v: 1 });
      expect(final.properties.desired).not.toHaveProperty('x');
    } finally {
      await device.client.endAsync();
    }
  });

  it('bad bodies get a 400 naming the field; unknown devices a 404', async () => {
    await registerDevice(hub.endpoints, 'twin-5');
    const cases: [unknown, string][] = [
      [{ properties: { reported: { a: 1 } } }, 'properties.reported'],
      [{ tags: { 'a.b': 1 } }, 'tags.a.b'],
      [{ tags: [] }, 'tags'],
      [{ colour: 'red' }, 'colour'],
      [{ deviceId: 'someone-else', tags: {} }, 'deviceId'],
    ];
    for (const [body, field] of cases) {
      const response = await service(hub.endpoints, 'PATCH', '/twins/twin-5', body);
      expect(response.status, JSON.stringify(body)).toBe(400);
      expect(response.body).toMatchObject({ context: { field } });
    }
    const badJson = await service(hub.endpoints, 'PATCH', '/twins/twin-5', '{"tags": ');
    expect(badJson.status).toBe(400);
    expect((await twinOf(hub, 'nobody')).status).toBe(404);
    expect((await service(hub.endpoints, 'PATCH', '/twins/nobody', { tags: { a: 1 } })).status).toBe(404);
    // Nothing was written by the refused calls.
    expect(((await twinOf(hub, 'twin-5')).body as Twin).tags).toEqual({});
  });

  it('deleting a device deletes its twin: a new device with the same id starts empty', async () => {
    await registerDevice(hub.endpoints, 'twin-6');
    await service(hub.endpoints, 'PATCH', '/twins/twin-6', {
      tags: { old: true },
      properties: { desired: { old: 1 } },
    });
    expect((await service(hub.endpoints, 'DELETE', '/devices/twin-6')).status).toBe(204);
    expect((await twinOf(hub, 'twin-6')).status).toBe(404);
    await registerDevice(hub.endpoints, 'twin-6');
    const twin = (await twinOf(hub, 'twin-6')).body as Twin;
    expect(twin.tags).toEqual({});
    const { $metadata: _m, $version: _v, ...desired } = twin.properties.desired;
    expect(desired).toEqual({});
  });
  // A device touching another device's shadow is refused: test/integration/shadow.test.ts.
});
