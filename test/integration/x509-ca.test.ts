import { readFileSync } from 'node:fs';
import mqtt, { type IClientOptions } from 'mqtt';
import { beforeAll, describe, expect, it } from 'vitest';
import { service } from '../support/devices.ts';
import type { HubProcess } from '../support/hub-process.ts';
import { sharedHub } from '../support/shared-hub.ts';
import { makeCa, makeLeaf, type TestCertificate } from '../support/x509.ts';

let hub: HubProcess;
let root: TestCertificate;

/** Connects over mqtts and resolves with the CONNACK refusal code, or 0 when the connection was accepted. */
async function connackCode(options: IClientOptions): Promise<number> {
  try {
    const client = await mqtt.connectAsync(hub.endpoints.mqtts, {
      ca: readFileSync(hub.endpoints.caCertificate),
      servername: 'localhost',
      reconnectPeriod: 0,
      ...options,
    });
    await client.endAsync();
    return 0;
  } catch (error) {
    return (error as { code?: number }).code ?? -1;
  }
}

/** TLS options of a device certificate, with the intermediates it sends after it. */
function tlsOf(deviceId: string, leaf: TestCertificate, ...intermediates: TestCertificate[]): IClientOptions {
  return {
    clientId: deviceId,
    key: leaf.key,
    cert: [leaf.cert, ...intermediates.map((c) => c.cert)].join('\n'),
  };
}

/** Uploads a CA through the service API and, unless told not to, proves possession of its key. */
async function registerCa(name: string, ca: TestCertificate, verify = true): Promise<void> {
  const put = await service(hub.endpoints, 'PUT', `/certificates/${name}`, {
    properties: { certificate: ca.cert },
  });
  expect(put.status, JSON.stringify(put.body)).toBe(201);
  if (!verify) return;
  const code = await service(
    hub.endpoints,
    'POST',
    `/certificates/${name}/generateVerificationCode`,
    undefined,
    {
      'if-match': put.headers.get('etag') ?? '',
    },
  );
  expect(code.status).toBe(200);
  const { verificationCode } = (code.body as { properties: { verificationCode: string } }).properties;
  const proof = await makeLeaf(verificationCode, { issuer: ca });
  const verified = await service(hub.endpoints, 'POST', `/certificates/${name}/verify`, {
    certificate: proof.cert,
  });
  expect(verified.status, JSON.stringify(verified.body)).toBe(200);
  expect(verified.body).toMatchObject({ properties: { isVerified: true } });
}

/** Registers a `certificateAuthority` device. */
async function registerCaDevice(deviceId: string): Promise<void> {
  const created = await service(hub.endpoints, 'PUT', `/devices/${deviceId}`, {
    deviceId,
    authentication: { type: 'certificateAuthority' },
  });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
}

beforeAll(async () => {
  hub = await sharedHub();
  root = await makeCa('Hub Test Root');
  await registerCa('root', root);
});

describe('CA-signed (certificateAuthority) devices on the local hub', () => {
  it('lets in a device whose certificate (CN = device id) a verified CA issued, and takes its telemetry', async () => {
    await registerCaDevice('ca-dev-1');
    const leaf = await makeLeaf('ca-dev-1', { issuer: root });
    const device = await mqtt.connectAsync(hub.endpoints.mqtts, {
      ca: readFileSync(hub.endpoints.caCertificate),
      servername: 'localhost',
      reconnectPeriod: 0,
      ...tlsOf('ca-dev-1', leaf),
    });
    await device.publishAsync('devices/ca-dev-1/messages/events/', 'hello', { qos: 1 });
    await device.endAsync();
  });

  it('lets in a device through an intermediate CA it sends, and refuses it when it does not send it', async () => {
    const intermediate = await makeCa('Hub Test Intermediate', { issuer: root });
    await registerCaDevice('ca-dev-mid');
    const leaf = await makeLeaf('ca-dev-mid', { issuer: intermediate });
    expect(await connackCode(tlsOf('ca-dev-mid', leaf, intermediate))).toBe(0);
    expect(await connackCode(tlsOf('ca-dev-mid', leaf))).toBe(4);
  });

  it('refuses a device whose CA is registered but not verified (CONNACK 4)', async () => {
    const unverified = await makeCa('Unverified Root');
    await registerCa('unverified', unverified, false);
    await registerCaDevice('ca-dev-unverified');
    const leaf = await makeLeaf('ca-dev-unverified', { issuer: unverified });
    expect(await connackCode(tlsOf('ca-dev-unverified', leaf))).toBe(4);
    await hub.waitForLog(
      /connect refused: client 'ca-dev-unverified': bad-credentials: .*not issued by a registered certificate authority/,
    );
  });

  it('refuses a certificate from a CA that was never registered, even with a matching name', async () => {
    await registerCaDevice('ca-dev-stranger');
    const impostor = await makeCa('Hub Test Root');
    const leaf = await makeLeaf('ca-dev-stranger', { issuer: impostor });
    expect(await connackCode(tlsOf('ca-dev-stranger', leaf, impostor))).toBe(4);
  });

  it('refuses a certificate whose CN is another device id (CONNACK 4)', async () => {
    await registerCaDevice('ca-dev-a');
    await registerCaDevice('ca-dev-b');
    const leafOfB = await makeLeaf('ca-dev-b', { issuer: root });
    expect(await connackCode(tlsOf('ca-dev-a', leafOfB))).toBe(4);
    await hub.waitForLog(
      /connect refused: client 'ca-dev-a': bad-credentials: .*CN "ca-dev-b" is not the device id/,
    );
    expect(await connackCode(tlsOf('ca-dev-b', leafOfB))).toBe(0);
  });

  it('refuses a CA-signed device once it is disabled, and once it is deleted (CONNACK 5)', async () => {
    await registerCaDevice('ca-dev-off');
    const leaf = await makeLeaf('ca-dev-off', { issuer: root });
    expect(await connackCode(tlsOf('ca-dev-off', leaf))).toBe(0);
    const disabled = await service(
      hub.endpoints,
      'PUT',
      '/devices/ca-dev-off',
      { deviceId: 'ca-dev-off', status: 'disabled' },
      { 'if-match': '*' },
    );
    expect(disabled.status).toBe(200);
    expect(await connackCode(tlsOf('ca-dev-off', leaf))).toBe(5);
    expect((await service(hub.endpoints, 'DELETE', '/devices/ca-dev-off')).status).toBe(204);
    expect(await connackCode(tlsOf('ca-dev-off', leaf))).toBe(5);
  });

  it('refuses devices of a CA from the next connect after the CA is deleted', async () => {
    const doomed = await makeCa('Doomed Root');
    await registerCa('doomed', doomed);
    await registerCaDevice('ca-dev-doomed');
    const leaf = await makeLeaf('ca-dev-doomed', { issuer: doomed });
    expect(await connackCode(tlsOf('ca-dev-doomed', leaf))).toBe(0);
    expect((await service(hub.endpoints, 'DELETE', '/certificates/doomed')).status).toBe(204);
    expect(await connackCode(tlsOf('ca-dev-doomed', leaf))).toBe(4);
  });

  it('does not let a selfSigned device in with a certificate a verified CA issued', async () => {
    // A selfSigned device still needs its thumbprint: a CA-issued certificate is not enough.
    const created = await service(hub.endpoints, 'PUT', '/devices/ss-dev', {
      deviceId: 'ss-dev',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: 'A'.repeat(40) } },
    });
    expect(created.status).toBe(201);
    expect(await connackCode(tlsOf('ss-dev', await makeLeaf('ss-dev', { issuer: root })))).toBe(4);
  });
});

describe('certificates service API over HTTP', () => {
  it('lists, reads and guards writes with etags', async () => {
    const list = await service(hub.endpoints, 'GET', '/certificates?api-version=2021-07-02');
    expect(list.status).toBe(200);
    expect((list.body as { value: { name: string }[] }).value.map((c) => c.name)).toContain('root');
    const got = await service(hub.endpoints, 'GET', '/certificates/root');
    expect(got.body).toMatchObject({
      name: 'root',
      properties: { isVerified: true, subject: 'CN=Hub Test Root' },
    });
    const stale = await service(
      hub.endpoints,
      'PUT',
      '/certificates/root',
      { properties: { certificate: root.cert } },
      {
        'if-match': '"stale"',
      },
    );
    expect(stale.status).toBe(412);
    const again = await service(hub.endpoints, 'PUT', '/certificates/root', {
      properties: { certificate: root.cert },
    });
    expect(again.status).toBe(409);
  });

  it.each([
    ['no properties', '/certificates/x', 'PUT', {}, /properties: required/],
    [
      'a non-PEM certificate',
      '/certificates/x',
      'PUT',
      { properties: { certificate: 'nope' } },
      /properties\.certificate/,
    ],
    [
      'an unknown field',
      '/certificates/x',
      'PUT',
      { properties: { certificate: 'x', colour: 1 } },
      /properties\.colour/,
    ],
    ['a bad name', '/certificates/a%20b', 'PUT', { properties: { certificate: 'x' } }, /^name: /],
    ['a verify without certificate', '/certificates/root/verify', 'POST', {}, /^certificate: /],
  ])('answers 400 naming the field for %s', async (_label, path, method, body, field) => {
    const response = await service(hub.endpoints, method, path, body);
    expect(response.status).toBe(400);
    expect((response.body as { message: string }).message).toMatch(field);
  });

  it('answers 400 naming properties.certificate for a device certificate uploaded as a CA', async () => {
    const leaf = await makeLeaf('not-a-ca');
    const response = await service(hub.endpoints, 'PUT', '/certificates/leaf', {
      properties: { certificate: leaf.cert },
    });
    expect(response.status).toBe(400);
    expect(response.body).toMatchObject({
      code: 'CertificateNotCa',
      context: { field: 'properties.certificate' },
    });
  });
});
