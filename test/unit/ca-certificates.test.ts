import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { caCertificateKey, DynamoDbCaCertificateStore } from '../../functions/adapters/ca-store-dynamodb.ts';
import { MemoryCaCertificateStore } from '../../functions/adapters/ca-store-memory.ts';
import { DynamoDbDeviceRegistry } from '../../functions/adapters/registry-dynamodb.ts';
import {
  ConflictError,
  LimitExceededError,
  NotFoundError,
  ValidationError,
} from '../../functions/core/errors.ts';
import {
  CA_CERTIFICATE_LIMIT,
  type CaCertificate,
  type CaCertificateStore,
  CaCertificates,
  parseCertificateText,
} from '../../functions/core/identity/ca-certificates.ts';
import { certificateRoutes } from '../../functions/core/service-api/certificate-routes.ts';
import { type ApiRequest, dispatch, RouteTable } from '../../functions/core/service-api/http.ts';
import { startTestDynamo, type TestDynamo } from '../support/emulators.ts';
import { makeCa, makeLeaf, type TestCertificate } from '../support/x509.ts';

const DAY = 24 * 3600_000;
let dynamo: TestDynamo;
let tables = 0;
// Made at load time: the tables of it.each below use them.
const root = await makeCa('Test Root');
const other = await makeCa('Other Root');

beforeAll(async () => {
  dynamo = await startTestDynamo();
});
afterAll(() => dynamo?.close());

const stores: { name: string; make: () => Promise<CaCertificateStore> }[] = [
  { name: 'memory', make: async () => new MemoryCaCertificateStore() },
  {
    name: 'dynamodb (dynalite)',
    make: async () =>
      new DynamoDbCaCertificateStore({
        client: dynamo.doc,
        tableName: await dynamo.createPkSkTable(`cacerts-${++tables}`),
      }),
  },
];

function record(name: string, etag = 'e1'): CaCertificate {
  return {
    name,
    etag,
    certificate: root.cert,
    subject: 'CN=Test Root',
    thumbprint: 'AB',
    thumbprintSha256: 'CD',
    expiry: '2030-01-01T00:00:00.000Z',
    isVerified: false,
    verificationCode: null,
    created: '2026-01-01T00:00:00.000Z',
    updated: '2026-01-01T00:00:00.000Z',
  };
}

describe.each(stores)('CaCertificateStore contract: $name', ({ make }) => {
  let store: CaCertificateStore;
  beforeEach(async () => {
    store = await make();
  });

  it('puts only when absent, then only on the stored etag', async () => {
    expect(await store.put(record('a'), 'absent')).toBe(true);
    expect(await store.put(record('a', 'e2'), 'absent')).toBe(false);
    expect(await store.put(record('a', 'e2'), { etag: 'wrong' })).toBe(false);
    expect((await store.find('a'))?.etag).toBe('e1');
    expect(await store.put(record('a', 'e2'), { etag: 'e1' })).toBe(true);
    expect(await store.find('a')).toEqual(record('a', 'e2'));
    expect(await store.put(record('missing', 'e2'), { etag: 'e1' })).toBe(false);
    expect(await store.find('missing')).toBeUndefined();
  });

  it('lists every record in name order', async () => {
    for (const name of ['c', 'a', 'b']) await store.put(record(name), 'absent');
    expect((await store.list()).map((r) => r.name)).toEqual(['a', 'b', 'c']);
  });

  it('deletes only on the stored etag', async () => {
    await store.put(record('a'), 'absent');
    expect(await store.delete('a', 'wrong')).toBe(false);
    expect(await store.delete('missing', 'e1')).toBe(false);
    expect(await store.delete('a', 'e1')).toBe(true);
    expect(await store.find('a')).toBeUndefined();
    expect(await store.list()).toEqual([]);
  });
});

describe('CA certificates in the registry table', () => {
  it('live beside devices without showing up in the device list', async () => {
    const tableName = await dynamo.createPkSkTable(`shared-${++tables}`);
    const registry = new DynamoDbDeviceRegistry({ client: dynamo.doc, tableName });
    const cas = new DynamoDbCaCertificateStore({ client: dynamo.doc, tableName });
    await registry.create({ deviceId: 'cacert' });
    await cas.put(record('cacert'), 'absent');
    expect((await registry.list()).devices.map((d) => d.deviceId)).toEqual(['cacert']);
    expect((await cas.list()).map((r) => r.name)).toEqual(['cacert']);
    expect(caCertificateKey('x')).toEqual({ pk: 'cacert', sk: 'cacert#x' });
  });
});

describe('parseCertificateText', () => {
  it('takes PEM and bare base64 DER', () => {
    expect(parseCertificateText(root.cert, 'f').fingerprint).toBe(root.x509.fingerprint);
    expect(parseCertificateText(root.x509.raw.toString('base64'), 'f').fingerprint).toBe(
      root.x509.fingerprint,
    );
  });

  it.each([
    ['', /f: expected a PEM certificate/],
    ['hello world!', /f: expected a PEM certificate/],
    ['-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----', /f: not a valid X.509 certificate/],
    ['QUJDRA==', /f: expected a PEM certificate .* or base64 DER of one/],
  ])('refuses %j naming the field', (text, message) => {
    expect(() => parseCertificateText(text, 'f')).toThrow(message);
  });

  it('refuses two certificates in one PEM', () => {
    expect(() => parseCertificateText(`${root.cert}\n${other.cert}`, 'f')).toThrow(
      /f: expected one certificate, got 2/,
    );
  });
});

describe('CaCertificates', () => {
  let cas: CaCertificates;
  beforeEach(() => {
    cas = new CaCertificates(new MemoryCaCertificateStore());
  });

  /** Runs proof of possession for `name` with the CA's key; returns the verified record. */
  async function prove(name: string, ca: TestCertificate): Promise<CaCertificate> {
    const { verificationCode } = await cas.generateVerificationCode(name, undefined);
    const proof = await makeLeaf(verificationCode ?? '', { issuer: ca });
    return cas.verify(name, proof.cert, undefined);
  }

  it('registers a CA unverified, with IoT Hub’s description fields', async () => {
    const created = await cas.create('root', root.cert);
    expect(created).toMatchObject({
      name: 'root',
      subject: 'CN=Test Root',
      thumbprint: root.x509.fingerprint.replaceAll(':', ''),
      isVerified: false,
      verificationCode: null,
      expiry: new Date(root.x509.validTo).toISOString(),
    });
    expect(await cas.get('root')).toEqual(created);
    await expect(cas.create('root', root.cert)).rejects.toThrow(ConflictError);
  });

  it('refuses a certificate that is not a CA, or expired', async () => {
    const leaf = await makeLeaf('dev-1');
    await expect(cas.create('leaf', leaf.cert)).rejects.toThrow(
      /properties.certificate: not a CA certificate \(basicConstraints CA:TRUE/,
    );
    const expired = await makeCa('Old', {
      notBefore: new Date(Date.now() - 10 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    await expect(cas.create('old', expired.cert)).rejects.toThrow(/properties.certificate: expired on/);
    await expect(cas.create('bad name!', root.cert)).rejects.toThrow(/^name: /);
  });

  it('verifies with a certificate whose CN is the code, signed by the CA; the code is spent', async () => {
    await cas.create('root', root.cert);
    const withCode = await cas.generateVerificationCode('root', undefined);
    expect(withCode.verificationCode).toMatch(/^[0-9A-F]{40}$/);
    const proof = await makeLeaf(withCode.verificationCode!, { issuer: root });
    const verified = await cas.verify('root', proof.cert, undefined);
    expect(verified).toMatchObject({ isVerified: true, verificationCode: null });
    await expect(cas.verify('root', proof.cert, undefined)).rejects.toThrow(
      /no outstanding verification code/,
    );
  });

  it.each([
    ['has the wrong CN', async (_code: string) => makeLeaf('not-the-code', { issuer: root })],
    ['is signed by another CA', async (code: string) => makeLeaf(code, { issuer: other })],
    ['is self-signed with the code', async (code: string) => makeLeaf(code)],
    [
      'is expired',
      async (code: string) =>
        makeLeaf(code, {
          issuer: root,
          notBefore: new Date(Date.now() - 10 * DAY),
          notAfter: new Date(Date.now() - DAY),
        }),
    ],
  ])('refuses a proof that %s, naming certificate, and stays unverified', async (_what, proofFor) => {
    await cas.create('root', root.cert);
    const { verificationCode } = await cas.generateVerificationCode('root', undefined);
    const proof = await proofFor(verificationCode!);
    const error = await cas.verify('root', proof.cert, undefined).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ValidationError);
    expect((error as ValidationError).message).toMatch(/^certificate: /);
    expect((error as ValidationError).context.field).toBe('certificate');
    expect((await cas.get('root')).isVerified).toBe(false);
  });

  it('refuses the proof of a code replaced by a newer one', async () => {
    await cas.create('root', root.cert);
    const first = await cas.generateVerificationCode('root', undefined);
    await cas.generateVerificationCode('root', undefined);
    const proof = await makeLeaf(first.verificationCode!, { issuer: root });
    await expect(cas.verify('root', proof.cert, undefined)).rejects.toThrow(/CN is not the outstanding/);
  });

  it('keeps verification when the same certificate is put again, and drops it for new content', async () => {
    await cas.create('root', root.cert);
    const verified = await prove('root', root);
    const same = await cas.replace('root', root.cert, verified.etag);
    expect(same.isVerified).toBe(true);
    expect(same.etag).not.toBe(verified.etag);
    const changed = await cas.replace('root', other.cert, '*');
    expect(changed).toMatchObject({ isVerified: false, subject: 'CN=Other Root', created: verified.created });
  });

  it('checks If-Match on every write and answers 404 for unknown names', async () => {
    const created = await cas.create('root', root.cert);
    await expect(cas.replace('root', root.cert, '"stale"')).rejects.toMatchObject({
      code: 'PreconditionFailed',
    });
    await expect(cas.generateVerificationCode('root', 'stale')).rejects.toMatchObject({
      code: 'PreconditionFailed',
    });
    await expect(cas.delete('root', 'stale')).rejects.toMatchObject({ code: 'PreconditionFailed' });
    await expect(cas.replace('nope', root.cert, '*')).rejects.toThrow(NotFoundError);
    await expect(cas.delete('nope', undefined)).rejects.toThrow(NotFoundError);
    expect(await cas.delete('root', `"${created.etag}"`)).toEqual(created);
    await expect(cas.get('root')).rejects.toThrow(NotFoundError);
  });

  it(`keeps at most ${CA_CERTIFICATE_LIMIT} CAs`, async () => {
    for (let i = 0; i < CA_CERTIFICATE_LIMIT; i++) await cas.create(`ca-${i}`, root.cert);
    await expect(cas.create('one-more', root.cert)).rejects.toThrow(LimitExceededError);
  });

  it('trusts a chain only to verified CAs, and stops trusting a deleted one', async () => {
    const leaf = await makeLeaf('dev-1', { issuer: root });
    await cas.create('root', root.cert);
    expect((await cas.chainTrust([leaf.x509.raw])).ok).toBe(false);
    await prove('root', root);
    expect(await cas.chainTrust([leaf.x509.raw])).toMatchObject({ ok: true, ca: 'root' });
    expect((await cas.chainTrust([Buffer.from('junk')])).ok).toBe(false);
    await cas.delete('root', undefined);
    expect((await cas.chainTrust([leaf.x509.raw])).ok).toBe(false);
  });
});

describe('certificate routes', () => {
  let table: RouteTable;
  const call = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
    const request: ApiRequest = {
      method,
      path,
      query: {},
      headers,
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    };
    const response = await dispatch(table, request);
    return {
      ...response,
      json: response.body ? (JSON.parse(response.body) as Record<string, never>) : undefined,
    };
  };

  beforeEach(() => {
    table = new RouteTable(
      certificateRoutes({ certificates: new CaCertificates(new MemoryCaCertificateStore()) }),
    );
  });

  it('runs the IoT Hub flow: upload, code, verify, list, delete', async () => {
    const put = await call('PUT', '/certificates/root', { properties: { certificate: root.cert } });
    expect(put.status).toBe(201);
    expect(put.headers.etag).toBe(`"${(put.json as unknown as { etag: string }).etag}"`);
    expect(put.json).toMatchObject({
      name: 'root',
      id: '/certificates/root',
      type: 'Microsoft.Devices/IotHubs/Certificates',
      properties: { subject: 'CN=Test Root', isVerified: false },
    });
    expect((put.json as unknown as { properties: object }).properties).not.toHaveProperty('verificationCode');
    const code = await call('POST', '/certificates/root/generateVerificationCode', undefined, {
      'if-match': put.headers.etag ?? '',
    });
    expect(code.status).toBe(200);
    const verificationCode = (code.json as unknown as { properties: { verificationCode: string } }).properties
      .verificationCode;
    const proof = await makeLeaf(verificationCode, { issuer: root });
    const verified = await call('POST', '/certificates/root/verify', { certificate: proof.cert });
    expect(verified.status).toBe(200);
    expect(verified.json).toMatchObject({ properties: { isVerified: true } });
    const list = await call('GET', '/certificates');
    expect(list.json).toMatchObject({ value: [{ name: 'root', properties: { isVerified: true } }] });
    // A GET-modify-PUT round trip is accepted (read-only members ignored; isVerified cannot be forced).
    const again = await call('PUT', '/certificates/root', verified.json, { 'if-match': '*' });
    expect(again.status).toBe(200);
    expect((await call('DELETE', '/certificates/root', undefined, { 'if-match': '"stale"' })).status).toBe(
      412,
    );
    expect((await call('DELETE', '/certificates/root')).status).toBe(204);
    expect((await call('GET', '/certificates/root')).status).toBe(404);
  });

  it('answers 409 for a second upload without If-Match', async () => {
    await call('PUT', '/certificates/root', { properties: { certificate: root.cert } });
    const second = await call('PUT', '/certificates/root', { properties: { certificate: root.cert } });
    expect(second.status).toBe(409);
    expect(second.json).toMatchObject({ code: 'CertificateAlreadyExists' });
  });

  it('cannot mark a CA verified by uploading isVerified: true', async () => {
    const put = await call('PUT', '/certificates/root', {
      properties: { certificate: root.cert, isVerified: true },
    });
    expect(put.json).toMatchObject({ properties: { isVerified: false } });
  });

  it.each([
    ['no body', 'PUT', '/certificates/a', undefined, /body: required/],
    ['broken JSON', 'PUT', '/certificates/a', '{"properties":', /body: invalid JSON/],
    ['no properties', 'PUT', '/certificates/a', {}, /properties: required/],
    ['no certificate', 'PUT', '/certificates/a', { properties: {} }, /properties.certificate: required/],
    [
      'a number',
      'PUT',
      '/certificates/a',
      { properties: { certificate: 42 } },
      /properties.certificate: required/,
    ],
    [
      'not PEM',
      'PUT',
      '/certificates/a',
      { properties: { certificate: 'nope' } },
      /properties.certificate: expected a PEM/,
    ],
    [
      'an unknown property',
      'PUT',
      '/certificates/a',
      { properties: { certificate: root.cert, color: 'red' } },
      /properties.color: unknown field/,
    ],
    [
      'an unknown member',
      'PUT',
      '/certificates/a',
      { properties: { certificate: root.cert }, extra: 1 },
      /extra: unknown field/,
    ],
    ['a bad name', 'PUT', '/certificates/bad%20name', { properties: { certificate: root.cert } }, /^name: /],
    ['no proof', 'POST', '/certificates/a/verify', {}, /certificate: required/],
    [
      'an empty proof',
      'POST',
      '/certificates/a/verify',
      { certificate: '' },
      /certificate: must not be empty/,
    ],
  ])('answers 400 naming the field for %s (%s %s)', async (_label, method, path, body, message) => {
    const response = await call(method, path, body);
    expect(response.status).toBe(400);
    expect((response.json as unknown as { message: string }).message).toMatch(message);
  });

  it('answers 400 naming the field for a leaf certificate and a bad proof', async () => {
    const leaf = await makeLeaf('dev-1');
    const notCa = await call('PUT', '/certificates/a', { properties: { certificate: leaf.cert } });
    expect(notCa.status).toBe(400);
    expect(notCa.json).toMatchObject({
      code: 'CertificateNotCa',
      context: { field: 'properties.certificate' },
    });
    await call('PUT', '/certificates/a', { properties: { certificate: root.cert } });
    const noCode = await call('POST', '/certificates/a/verify', { certificate: leaf.cert });
    expect(noCode.status).toBe(400);
    expect(noCode.json).toMatchObject({
      code: 'VerificationCodeNotGenerated',
      context: { field: 'certificate' },
    });
  });
});
