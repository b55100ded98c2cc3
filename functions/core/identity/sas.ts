import { createHmac, timingSafeEqual } from 'node:crypto';
import { ValidationError } from '../errors.ts';
import { isValidBase64Key } from './keys.ts';

/** Scheme word every IoT Hub SAS token starts with. */
export const SAS_TOKEN_PREFIX = 'SharedAccessSignature ';

/** A SAS token split into its fields. */
export interface ParsedSasToken {
  /** The resource URI the token grants, URL-decoded (`myhub.example.com/devices/dev1`). */
  readonly resourceUri: string;
  /** The `sr` field exactly as presented; the signature covers this form, not a re-encoding. */
  readonly encodedResourceUri: string;
  /** The signature, base64 (URL-decoded from `sig`). */
  readonly signature: string;
  /** Expiry, seconds since the Unix epoch (`se`). */
  readonly expiresAt: number;
  /** Shared access policy name (`skn`); absent for tokens signed with a device's own key. */
  readonly policyName?: string;
  /** The exact string the signature was computed over: `{sr as presented}\n{se as presented}`. */
  readonly stringToSign: string;
}

/**
 * The latest expiry a SAS token may name: 9999-12-31T23:59:59Z, in seconds since the epoch. IoT Hub reads
 * `se` into a .NET DateTime, whose range ends there; a later `se` is not a date at all (past about
 * 8.64e12 s, `new Date(se * 1000)` is an Invalid Date, and a timer set from it fires at once), so it is
 * refused as malformed rather than accepted as "never expires".
 */
export const SAS_EXPIRY_MAX_SECONDS = 253_402_300_799;

/** Why {@link verifySasToken} refused a token. */
export type SasFailureReason = 'malformed' | 'wrong-resource' | 'bad-signature' | 'expired';

/** Outcome of {@link verifySasToken}: either accepted (with the key that signed it) or a typed refusal. */
export type SasVerification =
  | { readonly ok: true; readonly token: ParsedSasToken; readonly keyIndex: number }
  | { readonly ok: false; readonly reason: SasFailureReason; readonly message: string };

/** Input of {@link createSasToken}. */
export interface CreateSasTokenOptions {
  /** Resource the token grants, unencoded; for a device {@link deviceResourceUri}. */
  readonly resourceUri: string;
  /** Signing key, base64 (a device's primary/secondary key or a policy key). */
  readonly key: string;
  /** Expiry: a Date, or a whole number of seconds since the Unix epoch, at most {@link SAS_EXPIRY_MAX_SECONDS}. */
  readonly expiresAt: Date | number;
  /** Shared access policy name (`skn`); omit for a device token. */
  readonly policyName?: string;
}

/** Input of {@link verifySasToken}. */
export interface VerifySasTokenOptions {
  /** The resource the caller must hold, unencoded; for a device {@link deviceResourceUri}. */
  readonly expectedResourceUri: string;
  /** Candidate keys, base64 (primary then secondary); invalid or empty entries are skipped. */
  readonly keys: readonly (string | null | undefined)[];
  /** The current time: a Date or milliseconds since the epoch. */
  readonly now: Date | number;
}

/**
 * The resource URI of a device, as IoT Hub scopes device tokens: `{hostName}/devices/{deviceId}`
 * (no scheme).
 */
export function deviceResourceUri(hostName: string, deviceId: string): string {
  return `${hostName}/devices/${deviceId}`;
}

/**
 * `encodeURIComponent` plus `! ' ( ) *`, as the Azure IoT SDKs encode `sr`. Verification signs the
 * `sr` as presented, so tokens from clients that leave those characters alone verify as well.
 */
function encodeStrict(value: string): string {
  return encodeURIComponent(value).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

function hmac(key: string, stringToSign: string): Buffer {
  return createHmac('sha256', Buffer.from(key, 'base64')).update(stringToSign, 'utf8').digest();
}

/**
 * Creates an IoT Hub SAS token:
 * `SharedAccessSignature sr={URL-encoded uri}&sig={URL-encoded base64 HMAC-SHA256}&se={expiry}[&skn={policy}]`,
 * where the HMAC key is the base64-decoded `key` and the message is `{URL-encoded uri}\n{expiry}`.
 *
 * @example
 * const password = createSasToken({
 *   resourceUri: deviceResourceUri('localhost', 'thermostat-1'),
 *   key: device.authentication.symmetricKey.primaryKey,
 *   expiresAt: new Date(Date.now() + 3600_000),
 * });
 */
export function createSasToken(options: CreateSasTokenOptions): string {
  const { resourceUri, key, expiresAt, policyName } = options;
  if (!isValidBase64Key(key)) {
    throw new ValidationError('InvalidSasKey', 'key: expected a base64 key of 16-64 bytes', { field: 'key' });
  }
  if (resourceUri.length === 0) {
    throw new ValidationError('InvalidSasResource', 'resourceUri: must not be empty', {
      field: 'resourceUri',
    });
  }
  const expiry = expiresAt instanceof Date ? Math.floor(expiresAt.getTime() / 1000) : expiresAt;
  if (!Number.isSafeInteger(expiry) || expiry <= 0 || expiry > SAS_EXPIRY_MAX_SECONDS) {
    throw new ValidationError(
      'InvalidSasExpiry',
      'expiresAt: expected a valid Date or a positive whole number of epoch seconds, at most 9999-12-31T23:59:59Z',
      { field: 'expiresAt', expiresAt: String(expiresAt) },
    );
  }
  const sr = encodeStrict(resourceUri);
  const sig = encodeURIComponent(hmac(key, `${sr}\n${expiry}`).toString('base64'));
  const skn = policyName === undefined ? '' : `&skn=${encodeURIComponent(policyName)}`;
  return `${SAS_TOKEN_PREFIX}sr=${sr}&sig=${sig}&se=${expiry}${skn}`;
}

function malformed(message: string, context: Record<string, unknown> = {}): ValidationError {
  return new ValidationError('MalformedSasToken', `SAS token: ${message}`, context);
}

function decodeField(name: string, value: string): string {
  try {
    return decodeURIComponent(value);
  } catch (cause) {
    throw new ValidationError(
      'MalformedSasToken',
      `SAS token: ${name} is not valid URL encoding`,
      { field: name },
      {
        cause,
      },
    );
  }
}

const FIELDS = new Set(['sr', 'sig', 'se', 'skn']);

/**
 * Splits a SAS token into its fields, in any order. Throws a {@link ValidationError}
 * (`MalformedSasToken`) naming what is wrong: a missing prefix, a missing/empty/duplicate/unknown
 * field, bad URL encoding, a non-base64 signature, a non-numeric expiry, or an expiry past
 * {@link SAS_EXPIRY_MAX_SECONDS} (which no Date can hold, or no hub would honour).
 */
export function parseSasToken(token: string): ParsedSasToken {
  if (typeof token !== 'string' || !token.startsWith(SAS_TOKEN_PREFIX)) {
    throw malformed(`must start with '${SAS_TOKEN_PREFIX.trim()} '`);
  }
  const raw = new Map<string, string>();
  for (const part of token.slice(SAS_TOKEN_PREFIX.length).split('&')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw malformed(`'${part.slice(0, 40)}' is not a name=value field`);
    const name = part.slice(0, eq);
    const value = part.slice(eq + 1);
    if (!FIELDS.has(name))
      throw malformed(`unknown field '${name}' (expected sr, sig, se and optionally skn)`);
    if (raw.has(name)) throw malformed(`field '${name}' appears twice`);
    if (value.length === 0) throw malformed(`field '${name}' is empty`);
    raw.set(name, value);
  }
  const sr = raw.get('sr');
  const sig = raw.get('sig');
  const se = raw.get('se');
  const skn = raw.get('skn');
  if (sr === undefined) throw malformed('sr (resource URI) is missing', { field: 'sr' });
  if (sig === undefined) throw malformed('sig (signature) is missing', { field: 'sig' });
  if (se === undefined) throw malformed('se (expiry) is missing', { field: 'se' });
  const resourceUri = decodeField('sr', sr);
  const signature = decodeField('sig', sig);
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(signature)) throw malformed('sig is not base64', { field: 'sig' });
  if (!/^\d{1,15}$/.test(se))
    throw malformed('se (expiry) is not a whole number of epoch seconds', { field: 'se' });
  const expiresAt = Number(se);
  if (!Number.isSafeInteger(expiresAt) || expiresAt > SAS_EXPIRY_MAX_SECONDS) {
    throw malformed(
      `se (expiry) ${se} is out of range: at most ${SAS_EXPIRY_MAX_SECONDS} (9999-12-31T23:59:59Z)`,
      { field: 'se' },
    );
  }
  const parsed: ParsedSasToken = {
    resourceUri,
    encodedResourceUri: sr,
    signature,
    expiresAt,
    stringToSign: `${sr}\n${se}`,
  };
  return skn === undefined ? parsed : { ...parsed, policyName: decodeField('skn', skn) };
}

function splitHost(uri: string): { host: string; path: string } {
  const slash = uri.indexOf('/');
  return slash < 0 ? { host: uri, path: '' } : { host: uri.slice(0, slash), path: uri.slice(slash) };
}

/**
 * Whether a token's resource grants `expected`. Host names compare case-insensitively (DNS does) and so
 * does the literal `/devices/` segment; the device id compares exactly, because ids are case-sensitive.
 * A device id that the client URL-encoded inside the URI before encoding the whole URI (some SDKs do)
 * is decoded once and accepted.
 */
export function resourceUriMatches(actual: string, expected: string): boolean {
  const a = splitHost(actual);
  const e = splitHost(expected);
  if (a.host.toLowerCase() !== e.host.toLowerCase()) return false;
  const canonical = (path: string): string => path.replace(/^\/devices\//i, '/devices/');
  const expectedPath = canonical(e.path);
  if (canonical(a.path) === expectedPath) return true;
  try {
    return canonical(decodeURIComponent(a.path)) === expectedPath;
  } catch {
    return false;
  }
}

/**
 * Verifies a SAS token presented by a client. Checks, in order: it parses (`malformed`), it grants
 * `expectedResourceUri` (`wrong-resource`), one of `keys` signed it (`bad-signature`, compared with
 * `timingSafeEqual`), and it has not expired (`expired`: valid while `now < se`, so a token is refused
 * from the second named by `se`). Signature comes before expiry so that a forged token is reported as
 * forged, not as merely old.
 */
export function verifySasToken(token: string, options: VerifySasTokenOptions): SasVerification {
  let parsed: ParsedSasToken;
  try {
    parsed = parseSasToken(token);
  } catch (error) {
    return {
      ok: false,
      reason: 'malformed',
      message: error instanceof Error ? error.message : String(error),
    };
  }
  if (!resourceUriMatches(parsed.resourceUri, options.expectedResourceUri)) {
    return {
      ok: false,
      reason: 'wrong-resource',
      message: `token grants '${parsed.resourceUri}', not '${options.expectedResourceUri}'`,
    };
  }
  const presented = Buffer.from(parsed.signature, 'base64');
  let keyIndex = -1;
  options.keys.forEach((key, index) => {
    if (keyIndex >= 0 || !isValidBase64Key(key)) return;
    const expected = hmac(key, parsed.stringToSign);
    if (expected.length === presented.length && timingSafeEqual(expected, presented)) keyIndex = index;
  });
  if (keyIndex < 0) {
    return {
      ok: false,
      reason: 'bad-signature',
      message: 'signature does not match any key of the identity',
    };
  }
  const nowMs = options.now instanceof Date ? options.now.getTime() : options.now;
  if (Math.floor(nowMs / 1000) >= parsed.expiresAt) {
    return {
      ok: false,
      reason: 'expired',
      message: `token expired at ${new Date(parsed.expiresAt * 1000).toISOString()}`,
    };
  }
  return { ok: true, token: parsed, keyIndex };
}
