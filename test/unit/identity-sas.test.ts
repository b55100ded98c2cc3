import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../functions/core/errors.ts';
import { generateSymmetricKey } from '../../functions/core/identity/keys.ts';
import {
  createSasToken,
  deviceResourceUri,
  parseSasToken,
  resourceUriMatches,
  SAS_EXPIRY_MAX_SECONDS,
  verifySasToken,
} from '../../functions/core/identity/sas.ts';

const key = Buffer.alloc(32, 7).toString('base64');
const otherKey = Buffer.alloc(32, 9).toString('base64');
const uri = deviceResourceUri('myhub.example.com', 'dev-1');
const expiry = 2_000_000_000;

/** A correctly signed token with any `se`, as a client that does not use createSasToken would send it. */
function signedWithExpiry(se: string, signingKey = key): string {
  const sr = encodeURIComponent(uri);
  const sig = createHmac('sha256', Buffer.from(signingKey, 'base64')).update(`${sr}\n${se}`).digest('base64');
  return `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${se}`;
}

describe('createSasToken', () => {
  it('produces IoT Hub format signed over the encoded uri and expiry with the decoded key', () => {
    const token = createSasToken({ resourceUri: uri, key, expiresAt: expiry });
    const encoded = encodeURIComponent(uri);
    const sig = createHmac('sha256', Buffer.from(key, 'base64'))
      .update(`${encoded}\n${expiry}`)
      .digest('base64');
    expect(token).toBe(`SharedAccessSignature sr=${encoded}&sig=${encodeURIComponent(sig)}&se=${expiry}`);
  });

  it('adds skn for a policy token and takes a Date (floored to seconds)', () => {
    const token = createSasToken({
      resourceUri: 'myhub.example.com',
      key,
      expiresAt: new Date(expiry * 1000 + 999),
      policyName: 'service',
    });
    expect(token).toMatch(/&se=2000000000&skn=service$/);
    expect(parseSasToken(token).policyName).toBe('service');
  });

  it('encodes special device id characters strictly', () => {
    const token = createSasToken({ resourceUri: deviceResourceUri('h', "a(b)!*'"), key, expiresAt: expiry });
    expect(token).toContain('sr=h%2Fdevices%2Fa%28b%29%21%2A%27&');
    expect(parseSasToken(token).resourceUri).toBe("h/devices/a(b)!*'");
  });

  it('refuses a non-base64 key, a short key and a bad expiry', () => {
    expect(() => createSasToken({ resourceUri: uri, key: 'not base64!', expiresAt: expiry })).toThrow(
      /key: expected/,
    );
    expect(() =>
      createSasToken({ resourceUri: uri, key: Buffer.alloc(8).toString('base64'), expiresAt: expiry }),
    ).toThrow(/16-64 bytes/);
    expect(() => createSasToken({ resourceUri: uri, key, expiresAt: 1.5 })).toThrow(/expiresAt/);
    expect(() => createSasToken({ resourceUri: uri, key, expiresAt: new Date(Number.NaN) })).toThrow(
      /expiresAt/,
    );
  });

  it('refuses an expiry past 9999-12-31T23:59:59Z, which a verifier would refuse', () => {
    for (const expiresAt of [SAS_EXPIRY_MAX_SECONDS + 1, 9_000_000_000_000, 999_999_999_999_999]) {
      expect(() => createSasToken({ resourceUri: uri, key, expiresAt })).toThrow(/at most 9999-12-31/);
    }
    expect(createSasToken({ resourceUri: uri, key, expiresAt: SAS_EXPIRY_MAX_SECONDS })).toMatch(
      /&se=253402300799$/,
    );
  });
});

describe('parseSasToken', () => {
  it('reads fields in any order', () => {
    const sig = encodeURIComponent(Buffer.alloc(32, 1).toString('base64'));
    const parsed = parseSasToken(`SharedAccessSignature se=123&skn=p&sig=${sig}&sr=h%2Fdevices%2Fd`);
    expect(parsed).toMatchObject({ resourceUri: 'h/devices/d', expiresAt: 123, policyName: 'p' });
    expect(parsed.stringToSign).toBe('h%2Fdevices%2Fd\n123');
  });

  it.each([
    ['', /must start with 'SharedAccessSignature '/],
    ['Bearer abc', /must start with/],
    ['SharedAccessSignature sig=abc&se=1', /sr \(resource URI\) is missing/],
    ['SharedAccessSignature sr=h&se=1', /sig \(signature\) is missing/],
    ['SharedAccessSignature sr=h&sig=abc', /se \(expiry\) is missing/],
    ['SharedAccessSignature sr=h&sig=abc&se=soon', /se \(expiry\) is not a whole number/],
    ['SharedAccessSignature sr=h&sig=abc&se=-1', /se \(expiry\) is not a whole number/],
    ['SharedAccessSignature sr=h&sr=h&sig=abc&se=1', /field 'sr' appears twice/],
    ['SharedAccessSignature sr=h&sig=abc&se=1&foo=bar', /unknown field 'foo'/],
    ['SharedAccessSignature sr=&sig=abc&se=1', /field 'sr' is empty/],
    ['SharedAccessSignature sr=h&sig=abc&se=1&junk', /'junk' is not a name=value field/],
    ['SharedAccessSignature sr=%E0%A4%A&sig=abc&se=1', /sr is not valid URL encoding/],
    ['SharedAccessSignature sr=h&sig=a%20b&se=1', /sig is not base64/],
    [
      'SharedAccessSignature sr=h&sig=abc&se=999999999999999',
      /se \(expiry\) 999999999999999 is out of range/,
    ],
    ['SharedAccessSignature sr=h&sig=abc&se=9000000000000', /se \(expiry\) 9000000000000 is out of range/],
    ['SharedAccessSignature sr=h&sig=abc&se=253402300800', /se \(expiry\) 253402300800 is out of range/],
    ['SharedAccessSignature sr=h&sig=abc&se=1000000000000000', /se \(expiry\) is not a whole number/],
  ])('rejects %j', (token, message) => {
    expect(() => parseSasToken(token)).toThrow(ValidationError);
    expect(() => parseSasToken(token)).toThrow(message);
  });
});

describe('verifySasToken', () => {
  const now = (expiry - 60) * 1000;
  const token = createSasToken({ resourceUri: uri, key, expiresAt: expiry });

  it('accepts a token signed with either key and says which', () => {
    expect(verifySasToken(token, { expectedResourceUri: uri, keys: [key, otherKey], now })).toMatchObject({
      ok: true,
      keyIndex: 0,
    });
    expect(verifySasToken(token, { expectedResourceUri: uri, keys: [otherKey, key], now })).toMatchObject({
      ok: true,
      keyIndex: 1,
    });
  });

  it('refuses a token created with one key when checked against another', () => {
    expect(verifySasToken(token, { expectedResourceUri: uri, keys: [otherKey], now })).toMatchObject({
      ok: false,
      reason: 'bad-signature',
    });
  });

  it('skips missing keys and refuses when there are none', () => {
    expect(
      verifySasToken(token, { expectedResourceUri: uri, keys: [null, undefined, ''], now }),
    ).toMatchObject({
      ok: false,
      reason: 'bad-signature',
    });
  });

  it('holds until the second before se and refuses from se on', () => {
    const opts = { expectedResourceUri: uri, keys: [key] };
    expect(verifySasToken(token, { ...opts, now: expiry * 1000 - 1 }).ok).toBe(true);
    expect(verifySasToken(token, { ...opts, now: expiry * 1000 })).toMatchObject({
      ok: false,
      reason: 'expired',
    });
    expect(verifySasToken(token, { ...opts, now: new Date(expiry * 1000 + 5000) })).toMatchObject({
      ok: false,
      reason: 'expired',
    });
  });

  it('refuses a token for another device even when signed with the same key', () => {
    const other = createSasToken({
      resourceUri: deviceResourceUri('myhub.example.com', 'dev-2'),
      key,
      expiresAt: expiry,
    });
    expect(verifySasToken(other, { expectedResourceUri: uri, keys: [key], now })).toMatchObject({
      ok: false,
      reason: 'wrong-resource',
    });
  });

  it('refuses a forged sr: the signature no longer covers it', () => {
    const forged = token.replace('dev-1', 'dev-2');
    const target = deviceResourceUri('myhub.example.com', 'dev-2');
    expect(verifySasToken(forged, { expectedResourceUri: target, keys: [key], now })).toMatchObject({
      ok: false,
      reason: 'bad-signature',
    });
  });

  it('refuses a forged expiry', () => {
    const forged = token.replace(`se=${expiry}`, `se=${expiry + 86_400}`);
    expect(verifySasToken(forged, { expectedResourceUri: uri, keys: [key], now })).toMatchObject({
      ok: false,
      reason: 'bad-signature',
    });
  });

  it('refuses a hub-scoped token signed with the device key', () => {
    const hubToken = createSasToken({ resourceUri: 'myhub.example.com', key, expiresAt: expiry });
    expect(verifySasToken(hubToken, { expectedResourceUri: uri, keys: [key], now })).toMatchObject({
      ok: false,
      reason: 'wrong-resource',
    });
  });

  it('reports a malformed token with the parse message', () => {
    const result = verifySasToken('SharedAccessSignature sr=x', {
      expectedResourceUri: uri,
      keys: [key],
      now,
    });
    expect(result).toMatchObject({ ok: false, reason: 'malformed' });
    expect(result.ok ? '' : result.message).toMatch(/sig \(signature\) is missing/);
  });

  it.each(['999999999999999', '9000000000000'])(
    'refuses a correctly signed token with se=%s as malformed, naming se',
    (se) => {
      const result = verifySasToken(signedWithExpiry(se), { expectedResourceUri: uri, keys: [key], now });
      expect(result).toMatchObject({ ok: false, reason: 'malformed' });
      expect(result.ok ? '' : result.message).toMatch(new RegExp(`se \\(expiry\\) ${se} is out of range`));
    },
  );

  it('accepts a correctly signed token with the last representable se', () => {
    const result = verifySasToken(signedWithExpiry(String(SAS_EXPIRY_MAX_SECONDS)), {
      expectedResourceUri: uri,
      keys: [key],
      now,
    });
    expect(result).toMatchObject({ ok: true, token: { expiresAt: SAS_EXPIRY_MAX_SECONDS } });
  });

  it('reports a forged token as bad-signature even when it is also expired', () => {
    const forged = createSasToken({ resourceUri: uri, key: otherKey, expiresAt: 1000 });
    expect(verifySasToken(forged, { expectedResourceUri: uri, keys: [key], now })).toMatchObject({
      reason: 'bad-signature',
    });
  });

  it('verifies the sr as presented, whatever the client encoded', () => {
    const sr = 'MyHub.Example.COM%2Fdevices%2Fdev-1';
    const sig = createHmac('sha256', Buffer.from(key, 'base64')).update(`${sr}\n${expiry}`).digest('base64');
    const handmade = `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${expiry}`;
    expect(verifySasToken(handmade, { expectedResourceUri: uri, keys: [key], now }).ok).toBe(true);
  });

  it('works with a generated key', () => {
    const k = generateSymmetricKey();
    const t = createSasToken({ resourceUri: uri, key: k, expiresAt: expiry });
    expect(verifySasToken(t, { expectedResourceUri: uri, keys: [k], now }).ok).toBe(true);
  });
});

describe('resourceUriMatches', () => {
  it('compares the host case-insensitively and the device id exactly', () => {
    expect(resourceUriMatches('HUB.example.com/devices/d', 'hub.example.com/devices/d')).toBe(true);
    expect(resourceUriMatches('hub.example.com/DEVICES/d', 'hub.example.com/devices/d')).toBe(true);
    expect(resourceUriMatches('hub.example.com/devices/D', 'hub.example.com/devices/d')).toBe(false);
    expect(resourceUriMatches('other.example.com/devices/d', 'hub.example.com/devices/d')).toBe(false);
    expect(resourceUriMatches('hub.example.com/devices/d/extra', 'hub.example.com/devices/d')).toBe(false);
  });

  it('accepts a device id the client encoded inside the uri', () => {
    expect(resourceUriMatches('h/devices/a%40b', 'h/devices/a@b')).toBe(true);
  });
});
