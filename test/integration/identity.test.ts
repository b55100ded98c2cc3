import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { IoTDataPlaneClient, PublishCommand } from '@aws-sdk/client-iot-data-plane';
import mqtt, { type IClientOptions } from 'mqtt';
import { generate } from 'selfsigned';
import { beforeAll, describe, expect, it } from 'vitest';
import { LOCAL_CREDENTIALS } from '../../local/emulators.ts';
import { waitForRecords } from '../support/built-in.ts';
import { registerDevice, sasCredentials, service } from '../support/devices.ts';
import type { HubProcess } from '../support/hub-process.ts';
import { sharedHub } from '../support/shared-hub.ts';

/** Connects and resolves with the CONNACK refusal code, or 0 when the connection was accepted. */
async function connackCode(url: string, options: IClientOptions): Promise<number> {
  try {
    const client = await mqtt.connectAsync(url, { ...options, reconnectPeriod: 0 });
    await client.endAsync();
    return 0;
  } catch (error) {
    return (error as { code?: number }).code ?? -1;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let hub: HubProcess;
beforeAll(async () => {
  hub = await sharedHub();
});

describe('device authentication on the local hub', () => {
  it('lets a registered device in with a valid SAS token (primary or secondary key)', async () => {
    const creds = await registerDevice(hub.endpoints, 'auth-ok');
    expect(await connackCode(hub.endpoints.mqtt, creds)).toBe(0);
    const device = (await service(hub.endpoints, 'GET', '/devices/auth-ok')).body as {
      authentication: { symmetricKey: { secondaryKey: string } };
    };
    const secondary = sasCredentials(
      hub.endpoints,
      'auth-ok',
      device.authentication.symmetricKey.secondaryKey,
    );
    expect(await connackCode(hub.endpoints.mqtt, secondary)).toBe(0);
  });

  it('refuses a token signed with the wrong key (CONNACK 4, bad username or password)', async () => {
    await registerDevice(hub.endpoints, 'auth-wrong-key');
    const forged = sasCredentials(hub.endpoints, 'auth-wrong-key', Buffer.alloc(32, 9).toString('base64'));
    expect(await connackCode(hub.endpoints.mqtt, forged)).toBe(4);
    await hub.waitForLog(/connect refused: client 'auth-wrong-key': bad-credentials/);
  });

  it('refuses an expired token (CONNACK 4)', async () => {
    const creds = await registerDevice(hub.endpoints, 'auth-expired');
    const expired = sasCredentials(
      hub.endpoints,
      'auth-expired',
      creds.symmetricKey,
      new Date(Date.now() - 1000),
    );
    expect(await connackCode(hub.endpoints.mqtt, expired)).toBe(4);
    await hub.waitForLog(/connect refused: client 'auth-expired': expired/);
  });

  it('refuses an unknown device (CONNACK 5, not authorized)', async () => {
    const ghost = sasCredentials(hub.endpoints, 'auth-ghost', Buffer.alloc(32, 1).toString('base64'));
    expect(await connackCode(hub.endpoints.mqtt, ghost)).toBe(5);
    await hub.waitForLog(/connect refused: client 'auth-ghost': unknown-device/);
  });

  it('refuses a disabled device (CONNACK 5) and logs the reason', async () => {
    const creds = await registerDevice(hub.endpoints, 'auth-disabled');
    const put = await service(
      hub.endpoints,
      'PUT',
      '/devices/auth-disabled',
      { deviceId: 'auth-disabled', status: 'disabled', statusReason: 'stolen' },
      { 'if-match': '*' },
    );
    expect(put.status).toBe(200);
    expect(await connackCode(hub.endpoints.mqtt, creds)).toBe(5);
    await hub.waitForLog(/connect refused: client 'auth-disabled': disabled/);
  });

  it('refuses a token made for another device, and a client id that is not the token’s device', async () => {
    const a = await registerDevice(hub.endpoints, 'auth-a');
    await registerDevice(hub.endpoints, 'auth-b');
    expect(await connackCode(hub.endpoints.mqtt, { ...a, clientId: 'auth-b' })).not.toBe(0);
    const tokenForA = sasCredentials(hub.endpoints, 'auth-a', a.symmetricKey);
    expect(
      await connackCode(hub.endpoints.mqtt, {
        ...tokenForA,
        clientId: 'auth-b',
        username: tokenForA.username,
      }),
    ).not.toBe(0);
  });

  it('disconnects a device within 5 s when it is disabled while connected', async () => {
    const creds = await registerDevice(hub.endpoints, 'auth-live');
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, { ...creds, reconnectPeriod: 0 });
    const closed = new Promise<number>((resolve) => device.once('close', () => resolve(Date.now())));
    const disabledAt = Date.now();
    const put = await service(
      hub.endpoints,
      'PUT',
      '/devices/auth-live',
      { deviceId: 'auth-live', status: 'disabled' },
      { 'if-match': '*' },
    );
    expect(put.status).toBe(200);
    const closedAt = await Promise.race([closed, sleep(5000).then(() => Number.NaN)]);
    expect(closedAt - disabledAt).toBeLessThan(5000);
    device.end(true);
    expect(await connackCode(hub.endpoints.mqtt, creds)).toBe(5);
  });

  it('disconnects a device when it is deleted while connected', async () => {
    const creds = await registerDevice(hub.endpoints, 'auth-deleted');
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, { ...creds, reconnectPeriod: 0 });
    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    expect((await service(hub.endpoints, 'DELETE', '/devices/auth-deleted')).status).toBe(204);
    await Promise.race([
      closed,
      sleep(5000).then(() => Promise.reject(new Error('not disconnected in 5 s'))),
    ]);
    device.end(true);
    expect(await connackCode(hub.endpoints.mqtt, creds)).toBe(5);
  });

  it('closes the connection when the device’s SAS token expires', async () => {
    const creds = await registerDevice(hub.endpoints, 'auth-short');
    const shortLived = sasCredentials(
      hub.endpoints,
      'auth-short',
      creds.symmetricKey,
      new Date(Date.now() + 2000),
    );
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, { ...shortLived, reconnectPeriod: 0 });
    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    await Promise.race([
      closed,
      sleep(10_000).then(() => Promise.reject(new Error('still connected after expiry'))),
    ]);
    device.end(true);
    await hub.waitForLog(/closing 'auth-short': its SAS token expired/);
  });

  it('records connection state and last activity from presence events', async () => {
    const creds = await registerDevice(hub.endpoints, 'auth-presence');
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, creds);
    const state = async () =>
      (await service(hub.endpoints, 'GET', '/devices/auth-presence')).body as {
        connectionState: string;
        lastActivityTime: string;
      };
    for (let i = 0; i < 50 && (await state()).connectionState !== 'Connected'; i++) await sleep(100);
    const connected = await state();
    expect(connected.connectionState).toBe('Connected');
    expect(Date.parse(connected.lastActivityTime)).toBeGreaterThan(Date.now() - 60_000);
    await device.endAsync();
    for (let i = 0; i < 50 && (await state()).connectionState !== 'Disconnected'; i++) await sleep(100);
    expect((await state()).connectionState).toBe('Disconnected');
  });
});

describe('X.509 devices over TLS', () => {
  it('lets a self-signed device in with its registered certificate and refuses an unregistered one', async () => {
    const mine = await generate([{ name: 'commonName', value: 'x509-dev' }], {
      keySize: 2048,
      algorithm: 'sha256',
    });
    const other = await generate([{ name: 'commonName', value: 'x509-dev' }], {
      keySize: 2048,
      algorithm: 'sha256',
    });
    const thumbprint = new X509Certificate(mine.cert).fingerprint.replaceAll(':', '');
    const created = await service(hub.endpoints, 'PUT', '/devices/x509-dev', {
      deviceId: 'x509-dev',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: thumbprint } },
    });
    expect(created.status).toBe(201);
    const tls = {
      ca: readFileSync(hub.endpoints.caCertificate),
      servername: 'localhost',
      clientId: 'x509-dev',
    };
    expect(await connackCode(hub.endpoints.mqtts, { ...tls, key: mine.private, cert: mine.cert })).toBe(0);
    expect(await connackCode(hub.endpoints.mqtts, { ...tls, key: other.private, cert: other.cert })).toBe(4);
    // Without any certificate (and no password) the device cannot prove who it is.
    expect(await connackCode(hub.endpoints.mqtts, tls)).not.toBe(0);
  });

  it('delivers telemetry from an X.509 device with the auth method in the envelope', async () => {
    const cert = await generate([{ name: 'commonName', value: 'x509-tel' }], {
      keySize: 2048,
      algorithm: 'sha256',
    });
    const thumbprint = new X509Certificate(cert.cert).fingerprint256;
    await service(hub.endpoints, 'PUT', '/devices/x509-tel', {
      deviceId: 'x509-tel',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: thumbprint } },
    });
    const device = await mqtt.connectAsync(hub.endpoints.mqtts, {
      clientId: 'x509-tel',
      ca: readFileSync(hub.endpoints.caCertificate),
      servername: 'localhost',
      key: cert.private,
      cert: cert.cert,
    });
    await device.publishAsync('devices/x509-tel/messages/events/$.mid=x1', 'hi', { qos: 1 });
    await device.endAsync();
    const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
      r.some((x) => x.envelope.messageId === 'x1'),
    );
    const envelope = records.find((x) => x.envelope.messageId === 'x1')?.envelope;
    expect(JSON.parse(envelope?.systemProperties['iothub-connection-auth-method'] ?? '{}').type).toBe(
      'selfSigned',
    );
  });
});

describe("a device cannot touch another device's topics", () => {
  const families = [
    'devices/victim/messages/events',
    'devices/victim/messages/events/$.mid=spoof',
    'devices/victim/messages/devicebound/x=1',
    'devices/victim/anything',
    '$aws/things/victim/shadow/update',
    '$aws/rules/ingest/devices/victim/messages/events',
  ];

  it.each(families)(
    'publishing to %s disconnects the intruder and nothing reaches the victim',
    async (topic) => {
      const victim = await mqtt.connectAsync(hub.endpoints.mqtt, {
        ...(await registerDevice(hub.endpoints, `victim-${families.indexOf(topic)}`)),
      });
      await victim.endAsync();
      const intruderId = `intruder-${families.indexOf(topic)}`;
      const intruder = await mqtt.connectAsync(hub.endpoints.mqtt, {
        ...(await registerDevice(hub.endpoints, intruderId)),
        reconnectPeriod: 0,
      });
      const closed = new Promise<void>((resolve) => intruder.once('close', () => resolve()));
      intruder.publish(topic, 'spoofed', { qos: 1 });
      await closed;
      intruder.end(true);
      await hub.waitForLog(new RegExp(`publish refused.*device '${intruderId}'`));
    },
  );

  it('subscribing to any other device’s topics (or to wildcards across devices) is refused', async () => {
    const device = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'nosy')),
    });
    for (const filter of [
      'devices/victim/messages/devicebound/#',
      'devices/+/messages/devicebound/#',
      '$aws/things/victim/shadow/#',
      '$aws/things/+/shadow/update/delta',
      '#',
      'devices/#',
    ]) {
      await expect(device.subscribeAsync(filter, { qos: 1 }), filter).rejects.toThrow(/Subscribe error/);
    }
    await device.endAsync();
  });

  it("a publish on the victim's C2D topic never reaches the victim, and a real one does", async () => {
    const victim = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'victim-c2d')),
    });
    await victim.subscribeAsync('devices/victim-c2d/messages/devicebound/#', { qos: 1 });
    const received: string[] = [];
    victim.on('message', (_topic, payload) => received.push(payload.toString()));
    const intruder = await mqtt.connectAsync(hub.endpoints.mqtt, {
      ...(await registerDevice(hub.endpoints, 'intruder-c2d')),
      reconnectPeriod: 0,
    });
    const closed = new Promise<void>((resolve) => intruder.once('close', () => resolve()));
    intruder.publish('devices/victim-c2d/messages/devicebound/x=1', 'spoofed', { qos: 1 });
    await closed;
    intruder.end(true);
    // Positive control: the hub itself can still reach the victim.
    const plane = new IoTDataPlaneClient({
      endpoint: hub.endpoints.dataPlane,
      region: hub.endpoints.region,
      credentials: LOCAL_CREDENTIALS,
    });
    await plane.send(
      new PublishCommand({
        topic: 'devices/victim-c2d/messages/devicebound/x=2',
        qos: 1,
        payload: Buffer.from('real'),
      }),
    );
    plane.destroy();
    for (let i = 0; i < 50 && received.length === 0; i++) await sleep(100);
    expect(received).toEqual(['real']);
    await victim.endAsync();
  });
});

describe('registry service API over HTTP', () => {
  it('refuses callers without the service token (401) or with a forged one', async () => {
    const none = await fetch(`${hub.endpoints.serviceApi}/devices`);
    expect(none.status).toBe(401);
    const forged = await service(hub.endpoints, 'GET', '/devices', undefined, {
      authorization: 'SharedAccessSignature sr=localhost&sig=AAAA&se=9999999999&skn=iothubowner',
    });
    expect(forged.status).toBe(401);
  });

  it('creates, reads, updates with etags, and deletes a device', async () => {
    const created = await service(hub.endpoints, 'PUT', '/devices/crud-1?api-version=2021-04-12', {
      deviceId: 'crud-1',
    });
    expect(created.status).toBe(201);
    const etag = created.headers.get('etag') ?? '';
    expect(etag).toMatch(/^".+"$/);
    expect((await service(hub.endpoints, 'PUT', '/devices/crud-1', { deviceId: 'crud-1' })).status).toBe(409);
    const stale = await service(
      hub.endpoints,
      'PUT',
      '/devices/crud-1',
      { deviceId: 'crud-1', status: 'disabled' },
      { 'if-match': '"not-the-etag"' },
    );
    expect(stale.status).toBe(412);
    expect(stale.body).toMatchObject({ code: 'PreconditionFailed', status: 412 });
    const updated = await service(
      hub.endpoints,
      'PUT',
      '/devices/crud-1',
      { deviceId: 'crud-1', status: 'disabled', statusReason: 'maintenance' },
      { 'if-match': etag },
    );
    expect(updated.status).toBe(200);
    expect(updated.body).toMatchObject({ status: 'disabled', statusReason: 'maintenance' });
    expect(
      (await service(hub.endpoints, 'DELETE', '/devices/crud-1', undefined, { 'if-match': etag })).status,
    ).toBe(412);
    expect((await service(hub.endpoints, 'DELETE', '/devices/crud-1')).status).toBe(204);
    expect((await service(hub.endpoints, 'GET', '/devices/crud-1')).status).toBe(404);
  });

  it.each([
    [{ deviceId: 'bad-1', status: 'asleep' }, 'bad-1', /status/],
    [{ deviceId: 'bad-2', color: 'red' }, 'bad-2', /color/],
    [
      { deviceId: 'bad-3', authentication: { type: 'sas', symmetricKey: { primaryKey: 'nope' } } },
      'bad-3',
      /primaryKey/,
    ],
    [{ deviceId: 'x'.repeat(129) }, 'x'.repeat(129), /deviceId/],
    [{ deviceId: 'has/slash' }, 'has%2Fslash', /deviceId/],
    [{ deviceId: 'other' }, 'bad-6', /deviceId/],
    ['{"deviceId": ', 'bad-7', /JSON/i],
  ])('answers 400 naming the field for body %j', async (body, id, field) => {
    const response = await service(hub.endpoints, 'PUT', `/devices/${id}`, body);
    expect(response.status).toBe(400);
    expect((response.body as { message: string }).message).toMatch(field);
  });

  it('imports 1,000 devices in bulk calls of 100 and exports them all by paging', async () => {
    for (let call = 0; call < 10; call++) {
      const batch = Array.from({ length: 100 }, (_, i) => ({
        id: `bulk-${call * 100 + i}`,
        importMode: 'create',
      }));
      const response = await service(hub.endpoints, 'POST', '/devices', batch);
      expect(response.status).toBe(200);
      expect((response.body as { isSuccessful: boolean }).isSuccessful).toBe(true);
    }
    const tooMany = Array.from({ length: 101 }, (_, i) => ({ id: `over-${i}`, importMode: 'create' }));
    expect((await service(hub.endpoints, 'POST', '/devices', tooMany)).status).toBe(400);

    const seen = new Set<string>();
    let continuation: string | null = null;
    do {
      const page: Awaited<ReturnType<typeof service>> = await service(
        hub.endpoints,
        'GET',
        '/devices?top=300',
        undefined,
        continuation ? { 'x-ms-continuation': continuation } : {},
      );
      expect(page.status).toBe(200);
      for (const d of page.body as { deviceId: string }[]) seen.add(d.deviceId);
      continuation = page.headers.get('x-ms-continuation');
    } while (continuation);
    const bulk = [...seen].filter((id) => id.startsWith('bulk-'));
    expect(bulk).toHaveLength(1000);
  });
});
