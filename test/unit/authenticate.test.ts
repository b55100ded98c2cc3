import { createHash, createHmac } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import { TransientError } from '../../functions/core/errors.ts';
import {
  type AuthDecision,
  type AuthInput,
  type AuthRefusalReason,
  authenticateDevice,
  connectionRefusal,
  SAS_HOSTNAME_DEFAULT,
} from '../../functions/core/identity/authenticate.ts';
import { createSasToken, deviceResourceUri } from '../../functions/core/identity/sas.ts';

const HOST = 'myhub.example.com';
const NOW = new Date('2030-01-01T00:00:00Z');
const HOUR = 3_600_000;
const PRIMARY = Buffer.alloc(32, 1).toString('base64');
const SECONDARY = Buffer.alloc(32, 2).toString('base64');
const OTHER_KEY = Buffer.alloc(32, 3).toString('base64');
const DEV2_KEY = Buffer.alloc(32, 4).toString('base64');
const SHA1 = createHash('sha1').update('device certificate').digest('hex');
const SHA256 = createHash('sha256').update('device certificate').digest('hex');
const OTHER_SHA1 = createHash('sha1').update('another certificate').digest('hex');
const OTHER_SHA256 = createHash('sha256').update('another certificate').digest('hex');
const USERNAME = `${HOST}/dev-1/?api-version=2021-04-12`;

let registry: MemoryDeviceRegistry;
/** Every key and token a test handed in: no refusal message may contain any of them. */
let secrets: string[];

function token(options: { deviceId?: string; key?: string; expiresAt?: Date; host?: string } = {}): string {
  const value = createSasToken({
    resourceUri: deviceResourceUri(options.host ?? HOST, options.deviceId ?? 'dev-1'),
    key: options.key ?? PRIMARY,
    expiresAt: options.expiresAt ?? new Date(NOW.getTime() + HOUR),
  });
  const sig = /sig=([^&]+)/.exec(value)?.[1];
  secrets.push(value);
  if (sig) secrets.push(sig, decodeURIComponent(sig));
  return value;
}

function colons(hex: string): string {
  return hex.match(/../g)!.join(':');
}

function auth(input: AuthInput, hostName = HOST): Promise<AuthDecision> {
  return authenticateDevice(input, { registry, hostName, now: () => NOW });
}

function expectRefused(decision: AuthDecision, reason: AuthRefusalReason, connackCode: 2 | 4 | 5): string {
  expect(decision.ok).toBe(false);
  if (decision.ok) throw new Error('unreachable');
  expect(decision.reason).toBe(reason);
  expect(decision.connackCode).toBe(connackCode);
  for (const secret of secrets) expect(decision.message).not.toContain(secret);
  return decision.message;
}

beforeEach(async () => {
  secrets = [PRIMARY, SECONDARY, OTHER_KEY, DEV2_KEY];
  registry = new MemoryDeviceRegistry({ clock: () => NOW });
  await registry.create({
    deviceId: 'dev-1',
    authentication: { type: 'sas', symmetricKey: { primaryKey: PRIMARY, secondaryKey: SECONDARY } },
  });
  await registry.create({
    deviceId: 'dev-2',
    authentication: { type: 'sas', symmetricKey: { primaryKey: DEV2_KEY, secondaryKey: OTHER_KEY } },
  });
  await registry.create({
    deviceId: 'off',
    status: 'disabled',
    statusReason: 'reported stolen',
    authentication: { type: 'sas', symmetricKey: { primaryKey: PRIMARY, secondaryKey: SECONDARY } },
  });
  await registry.create({
    deviceId: 'self',
    authentication: {
      type: 'selfSigned',
      x509Thumbprint: { primaryThumbprint: SHA1.toUpperCase(), secondaryThumbprint: SHA256.toUpperCase() },
    },
  });
  await registry.create({
    deviceId: 'self-256',
    authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: SHA256 } },
  });
  await registry.create({ deviceId: 'ca', authentication: { type: 'certificateAuthority' } });
  await registry.create({ deviceId: 'nothing', authentication: { type: 'none' } });
});

describe('authenticateDevice with SAS tokens', () => {
  it('accepts a token signed with the primary key, with principal and expiry', async () => {
    const decision = await auth({ clientId: 'dev-1', username: USERNAME, password: token() });
    expect(decision).toEqual({
      ok: true,
      deviceId: 'dev-1',
      authType: 'sas',
      principal: 'sas:dev-1',
      expiresAt: new Date(NOW.getTime() + HOUR),
    });
  });

  it('accepts a token signed with the secondary key', async () => {
    const decision = await auth({
      clientId: 'dev-1',
      username: USERNAME,
      password: token({ key: SECONDARY }),
    });
    expect(decision.ok).toBe(true);
  });

  it('accepts the password as a Buffer and a host that differs only in case', async () => {
    const password = Buffer.from(token({ host: HOST.toUpperCase() }));
    expect((await auth({ clientId: 'dev-1', username: USERNAME, password })).ok).toBe(true);
  });

  it.each([
    ['the IoT Hub form', `${HOST}/dev-1/?api-version=2021-04-12`],
    ['host and device only', `${HOST}/dev-1`],
    ['host and device with a trailing slash', `${HOST}/dev-1/`],
    ['any host, device second', 'whatever/dev-1/anything?x=1'],
    ['a URL-encoded device id', `${HOST}/dev%2D1/?api-version=2021-04-12`],
    ['no user name', undefined],
    ['an empty user name', ''],
  ])('accepts %s as user name', async (_name, username) => {
    expect((await auth({ clientId: 'dev-1', username, password: token() })).ok).toBe(true);
  });

  it('works with the local default host name', async () => {
    expect(SAS_HOSTNAME_DEFAULT).toBe('localhost');
    const password = token({ host: SAS_HOSTNAME_DEFAULT });
    const decision = await auth({ clientId: 'dev-1', password }, SAS_HOSTNAME_DEFAULT);
    expect(decision.ok).toBe(true);
  });

  it('a token signed with a wrong key must be refused as bad credentials (4)', async () => {
    const decision = await auth({
      clientId: 'dev-1',
      username: USERNAME,
      password: token({ key: OTHER_KEY }),
    });
    expect(expectRefused(decision, 'bad-credentials', 4)).toMatch(/signature/);
  });

  it('an expired token must be refused as expired (4), also at the second named by se', async () => {
    const past = await auth({
      clientId: 'dev-1',
      username: USERNAME,
      password: token({ expiresAt: new Date(NOW.getTime() - 1000) }),
    });
    expect(expectRefused(past, 'expired', 4)).toMatch(/expired at 2029-12-31T23:59:59/);
    const boundary = await auth({ clientId: 'dev-1', password: token({ expiresAt: NOW }) });
    expectRefused(boundary, 'expired', 4);
  });

  it.each(['999999999999999', '9000000000000'])(
    'a correctly signed token with se=%s (no representable date) must be refused as malformed (4), naming se',
    async (se) => {
      const sr = encodeURIComponent(deviceResourceUri(HOST, 'dev-1'));
      const sig = createHmac('sha256', Buffer.from(PRIMARY, 'base64'))
        .update(`${sr}\n${se}`)
        .digest('base64');
      const password = `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${se}`;
      secrets.push(sig, encodeURIComponent(sig));
      const decision = await auth({ clientId: 'dev-1', username: USERNAME, password });
      expect(expectRefused(decision, 'malformed', 4)).toMatch(
        new RegExp(`se \\(expiry\\) ${se} is out of range`),
      );
    },
  );

  it('a forged token that is also expired must be refused as forged, not expired', async () => {
    const decision = await auth({
      clientId: 'dev-1',
      password: token({ key: OTHER_KEY, expiresAt: new Date(NOW.getTime() - HOUR) }),
    });
    expectRefused(decision, 'bad-credentials', 4);
  });

  it("another device's valid token must be refused (4)", async () => {
    const decision = await auth({
      clientId: 'dev-1',
      username: USERNAME,
      password: token({ deviceId: 'dev-2', key: DEV2_KEY }),
    });
    expect(expectRefused(decision, 'bad-credentials', 4)).toMatch(/not scoped to this device/);
  });

  it('a token for the right device on another hub must be refused (4)', async () => {
    const decision = await auth({ clientId: 'dev-1', password: token({ host: 'other.example.com' }) });
    expectRefused(decision, 'bad-credentials', 4);
  });

  it('a user name naming another device must be refused as client-id-mismatch (2)', async () => {
    const decision = await auth({
      clientId: 'dev-1',
      username: `${HOST}/dev-2/?api-version=2021-04-12`,
      password: token(),
    });
    expect(expectRefused(decision, 'client-id-mismatch', 2)).toMatch(/dev-2/);
  });

  it('a user name without a device segment must be refused as malformed (4)', async () => {
    expectRefused(await auth({ clientId: 'dev-1', username: HOST, password: token() }), 'malformed', 4);
    expectRefused(
      await auth({ clientId: 'dev-1', username: `${HOST}//x`, password: token() }),
      'malformed',
      4,
    );
  });

  it('an unknown device must be refused as not authorized (5), saying unknown device', async () => {
    const decision = await auth({
      clientId: 'ghost',
      username: `${HOST}/ghost/?api-version=2021-04-12`,
      password: token({ deviceId: 'ghost' }),
    });
    expect(expectRefused(decision, 'unknown-device', 5)).toMatch(/unknown device 'ghost'/);
  });

  it('a disabled device must be refused (5) with its status reason, even with a valid token', async () => {
    const decision = await auth({
      clientId: 'off',
      username: `${HOST}/off/?api-version=2021-04-12`,
      password: token({ deviceId: 'off' }),
    });
    const message = expectRefused(decision, 'disabled', 5);
    expect(message).toMatch(/disabled/);
    expect(message).toMatch(/reported stolen/);
  });

  it.each([
    ['plain text', 'hunter2'],
    ['the scheme word only', 'SharedAccessSignature '],
    ['a field without a value', 'SharedAccessSignature sr=a&sigSECRETSIGNATUREPART'],
    ['an unknown field name', 'SharedAccessSignature sr=a&SECRETFIELD=1&se=1'],
    ['a missing signature', 'SharedAccessSignature sr=myhub.example.com%2Fdevices%2Fdev-1&se=1999999999'],
    ['a non-numeric expiry', 'SharedAccessSignature sr=a&sig=abcd&se=tomorrow'],
  ])(
    'a malformed password (%s) must be refused as malformed (4) without echoing it',
    async (_name, password) => {
      secrets.push(password, 'SECRET', 'hunter2');
      const decision = await auth({ clientId: 'dev-1', username: USERNAME, password });
      expect(expectRefused(decision, 'malformed', 4)).toMatch(/not a SAS token/);
    },
  );

  it('a SAS device without any password must be refused (4)', async () => {
    expectRefused(await auth({ clientId: 'dev-1', username: USERNAME }), 'bad-credentials', 4);
    expectRefused(await auth({ clientId: 'dev-1', password: Buffer.alloc(0) }), 'bad-credentials', 4);
  });

  it.each([
    ['empty', ''],
    ['with a slash', 'dev/1'],
    ['with a plus', 'dev+1'],
    ['with a hash', 'dev#1'],
    ['too long', 'x'.repeat(129)],
    ['with a space', 'dev 1'],
  ])(
    'a client id that is not a device id (%s) must be refused as identifier rejected (2)',
    async (_n, id) => {
      expectRefused(await auth({ clientId: id, password: token() }), 'malformed', 2);
    },
  );

  it('a SAS device that also presents a certificate is judged on its token', async () => {
    const clientCertificate = { thumbprintSha1: OTHER_SHA1, thumbprintSha256: OTHER_SHA256 };
    expect((await auth({ clientId: 'dev-1', password: token(), clientCertificate })).ok).toBe(true);
  });

  it('registry failures are thrown, not turned into refusals', async () => {
    const failing = {
      find: async (): Promise<never> => {
        throw new TransientError('Throttled', 'slow down');
      },
    };
    await expect(
      authenticateDevice(
        { clientId: 'dev-1', password: token() },
        { registry: failing, hostName: HOST, now: () => NOW },
      ),
    ).rejects.toThrow(TransientError);
  });
});

describe('authenticateDevice with X.509 certificates', () => {
  it.each([
    ['SHA-1, lower case', { thumbprintSha1: SHA1, thumbprintSha256: OTHER_SHA256 }],
    ['SHA-1, upper case with colons', { thumbprintSha1: colons(SHA1.toUpperCase()), thumbprintSha256: '' }],
    ['SHA-1, lower case with colons', { thumbprintSha1: colons(SHA1), thumbprintSha256: OTHER_SHA256 }],
    ['SHA-256 against the secondary, lower case', { thumbprintSha1: OTHER_SHA1, thumbprintSha256: SHA256 }],
    ['SHA-256 with colons', { thumbprintSha1: OTHER_SHA1, thumbprintSha256: colons(SHA256) }],
  ])('accepts a self-signed device presenting its %s thumbprint', async (_name, clientCertificate) => {
    const decision = await auth({ clientId: 'self', clientCertificate });
    expect(decision).toEqual({
      ok: true,
      deviceId: 'self',
      authType: 'selfSigned',
      principal: 'selfSigned:self',
    });
  });

  it('accepts a SHA-256 primary thumbprint registered in upper case, presented with colons', async () => {
    const decision = await auth({
      clientId: 'self-256',
      clientCertificate: { thumbprintSha1: OTHER_SHA1, thumbprintSha256: colons(SHA256.toUpperCase()) },
    });
    expect(decision.ok).toBe(true);
  });

  it('a certificate whose thumbprints match neither registered one must be refused (4)', async () => {
    const decision = await auth({
      clientId: 'self',
      clientCertificate: { thumbprintSha1: OTHER_SHA1, thumbprintSha256: OTHER_SHA256 },
    });
    expect(expectRefused(decision, 'bad-credentials', 4)).toMatch(/thumbprint/);
  });

  it('empty thumbprints must not match anything', async () => {
    const decision = await auth({
      clientId: 'self',
      clientCertificate: { thumbprintSha1: '', thumbprintSha256: '' },
    });
    expectRefused(decision, 'bad-credentials', 4);
  });

  it("a self-signed device presenting another device's registered certificate is refused (4)", async () => {
    const decision = await auth({
      clientId: 'self-256',
      clientCertificate: { thumbprintSha1: SHA1, thumbprintSha256: OTHER_SHA256 },
    });
    expectRefused(decision, 'bad-credentials', 4);
  });

  it('accepts a CA device whose certificate chains to a registered CA', async () => {
    const decision = await auth({
      clientId: 'ca',
      clientCertificate: {
        thumbprintSha1: OTHER_SHA1,
        thumbprintSha256: OTHER_SHA256,
        issuerMatchesRegisteredCa: true,
        subjectCommonName: 'ca',
      },
    });
    expect(decision).toEqual({
      ok: true,
      deviceId: 'ca',
      authType: 'certificateAuthority',
      principal: 'certificateAuthority:ca',
    });
  });

  it.each([
    ['issuer not a registered CA', false],
    ['issuer unknown', undefined],
  ])('a CA device must be refused (4) when %s', async (_name, issuerMatchesRegisteredCa) => {
    const decision = await auth({
      clientId: 'ca',
      clientCertificate: { thumbprintSha1: SHA1, thumbprintSha256: SHA256, issuerMatchesRegisteredCa },
    });
    expect(expectRefused(decision, 'bad-credentials', 4)).toMatch(/certificate authority/);
  });

  it("a CA device presenting a CA-signed certificate issued to another device's id must be refused (4)", async () => {
    const decision = await auth({
      clientId: 'ca',
      clientCertificate: {
        thumbprintSha1: SHA1,
        thumbprintSha256: SHA256,
        issuerMatchesRegisteredCa: true,
        subjectCommonName: 'dev-1',
      },
    });
    expect(expectRefused(decision, 'bad-credentials', 4)).toMatch(/CN/);
  });

  it('an X.509 device that also sends a password is judged on its certificate', async () => {
    const decision = await auth({
      clientId: 'self',
      password: 'anything',
      clientCertificate: { thumbprintSha1: SHA1, thumbprintSha256: SHA256 },
    });
    expect(decision.ok).toBe(true);
  });

  it('an X.509 device without a certificate or password must be refused (4)', async () => {
    expectRefused(await auth({ clientId: 'self' }), 'bad-credentials', 4);
  });
});

describe('authenticateDevice with the wrong kind of credential', () => {
  it('a SAS device presenting only a certificate must be refused as wrong-auth-type (5)', async () => {
    const decision = await auth({
      clientId: 'dev-1',
      username: USERNAME,
      clientCertificate: { thumbprintSha1: SHA1, thumbprintSha256: SHA256, issuerMatchesRegisteredCa: true },
    });
    expect(expectRefused(decision, 'wrong-auth-type', 5)).toMatch(/SAS/);
  });

  it('a self-signed device presenting only a password must be refused as wrong-auth-type (5)', async () => {
    const password = token({ deviceId: 'self' });
    const decision = await auth({ clientId: 'self', username: `${HOST}/self`, password });
    expect(expectRefused(decision, 'wrong-auth-type', 5)).toMatch(/X\.509/);
  });

  it('a CA device presenting only a password must be refused as wrong-auth-type (5)', async () => {
    expectRefused(await auth({ clientId: 'ca', password: token({ deviceId: 'ca' }) }), 'wrong-auth-type', 5);
  });

  it("a device with authentication type 'none' must be refused (5)", async () => {
    expectRefused(
      await auth({ clientId: 'nothing', password: token({ deviceId: 'nothing' }) }),
      'wrong-auth-type',
      5,
    );
  });
});

describe('connectionRefusal', () => {
  it('maps a refusal to the CONNACK return code and a message naming the reason', async () => {
    const decision = await auth({ clientId: 'ghost', password: token({ deviceId: 'ghost' }) });
    if (decision.ok) throw new Error('expected a refusal');
    expect(connectionRefusal(decision)).toEqual({
      returnCode: 5,
      message: `unknown-device: ${decision.message}`,
    });
  });
});
