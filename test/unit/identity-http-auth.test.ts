import { createHmac } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import { authenticateHttpDevice, sasTokenDeviceId } from '../../functions/core/identity/http-auth.ts';
import { createSasToken, deviceResourceUri } from '../../functions/core/identity/sas.ts';

const HOST = 'hub.example.com';
const NOW = new Date('2030-01-01T00:00:00Z');
const KEY = Buffer.alloc(32, 5).toString('base64');
const WRONG = Buffer.alloc(32, 7).toString('base64');

let registry: MemoryDeviceRegistry;
const deps = () => ({ registry, hostName: HOST, now: () => NOW });
const token = (uri: string, key = KEY) =>
  createSasToken({ resourceUri: uri, key, expiresAt: new Date(NOW.getTime() + 3600_000) });

/** A correctly signed token for d1 with any `se` (createSasToken refuses out-of-range ones). */
function signedWithExpiry(se: string): string {
  const sr = encodeURIComponent(deviceResourceUri(HOST, 'd1'));
  const sig = createHmac('sha256', Buffer.from(KEY, 'base64')).update(`${sr}\n${se}`).digest('base64');
  return `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${se}`;
}

beforeEach(async () => {
  registry = new MemoryDeviceRegistry({ clock: () => NOW });
  for (const deviceId of ['d1', "a(b)!*'"]) {
    await registry.create({
      deviceId,
      authentication: { type: 'sas', symmetricKey: { primaryKey: KEY, secondaryKey: WRONG } },
    });
  }
});

describe('sasTokenDeviceId', () => {
  it("names the device of the token's sr, also when the id was encoded inside the URI", () => {
    expect(sasTokenDeviceId(token(deviceResourceUri(HOST, 'd1')))).toEqual({ ok: true, deviceId: 'd1' });
    const encodedTwice = token(`${HOST}/devices/${encodeURIComponent("a(b)!*'")}`);
    expect(sasTokenDeviceId(encodedTwice)).toEqual({ ok: true, deviceId: "a(b)!*'" });
  });

  it.each([
    ['a service token', () => token(`${HOST}`)],
    ['a module token', () => token(`${HOST}/devices/d1/modules/m1`)],
    ['not a token', () => 'SharedAccessSignature nope'],
  ])('refuses %s as malformed, without echoing it', (_name, make) => {
    const value = make();
    const result = sasTokenDeviceId(value);
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.reason).toBe('malformed');
    expect(result.message).not.toContain(value.slice(22));
  });
});

describe('authenticateHttpDevice', () => {
  it('accepts a device by the SAS token in Authorization, as authenticateDevice would over MQTT', async () => {
    const decision = await authenticateHttpDevice(
      { authorization: token(deviceResourceUri(HOST, 'd1')) },
      deps(),
    );
    expect(decision).toMatchObject({ ok: true, deviceId: 'd1', authType: 'sas', principal: 'sas:d1' });
  });

  it.each([
    ['no header', undefined, 'bad-credentials', /no Authorization header/],
    ['an empty header', '  ', 'bad-credentials', /no Authorization header/],
    ['another scheme', 'Basic ZDE6cHc=', 'malformed', /not a SAS token/],
    [
      'a wrong key',
      () => token(deviceResourceUri(HOST, 'd1'), Buffer.alloc(32, 9).toString('base64')),
      'bad-credentials',
      /signature/,
    ],
    ['an unknown device', () => token(deviceResourceUri(HOST, 'ghost')), 'unknown-device', /'ghost'/],
    [
      'se=999999999999999',
      () => signedWithExpiry('999999999999999'),
      'malformed',
      /se \(expiry\) 999999999999999 is out of range/,
    ],
    [
      'se=9000000000000',
      () => signedWithExpiry('9000000000000'),
      'malformed',
      /se \(expiry\) 9000000000000 is out of range/,
    ],
    [
      'another host',
      () => token(deviceResourceUri('elsewhere.example.com', 'd1')),
      'bad-credentials',
      /not scoped/,
    ],
  ])('refuses %s, naming the reason', async (_name, header, reason, message) => {
    const authorization = typeof header === 'function' ? header() : header;
    const decision = await authenticateHttpDevice({ authorization }, deps());
    expect(decision).toMatchObject({ ok: false, reason });
    if (decision.ok) return;
    expect(decision.message).toMatch(message);
  });
});
