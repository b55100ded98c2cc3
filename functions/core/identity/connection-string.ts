import { ValidationError } from '../errors.ts';
import { validateDeviceId } from './device-id.ts';
import { isValidBase64Key } from './keys.ts';

/**
 * A device connection string, IoT Hub's form: `HostName=...;DeviceId=...;` followed by exactly one
 * credential: `SharedAccessKey=...` (the device signs its own tokens), `SharedAccessSignature=...`
 * (a ready-made token) or `x509=true` (the device presents a client certificate).
 */
export interface DeviceConnectionString {
  /** Host the device connects to (`localhost`, `abc123-ats.iot.eu-west-1.amazonaws.com`). */
  readonly hostName: string;
  /** The device's registry id. */
  readonly deviceId: string;
  /** The device's symmetric key, base64. */
  readonly sharedAccessKey?: string;
  /** A SAS token (`SharedAccessSignature sr=...`). */
  readonly sharedAccessSignature?: string;
  /** True when the device authenticates with an X.509 client certificate. */
  readonly x509?: boolean;
}

/** A service connection string: `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`. */
export interface ServiceConnectionString {
  /** Host of the service API. */
  readonly hostName: string;
  /** Name of the shared access policy (IoT Hub's `skn`, e.g. `service`, `registryReadWrite`). */
  readonly sharedAccessKeyName: string;
  /** The policy's key, base64. */
  readonly sharedAccessKey: string;
}

const DEVICE_KEYS = ['HostName', 'DeviceId', 'SharedAccessKey', 'SharedAccessSignature', 'x509'] as const;
const SERVICE_KEYS = ['HostName', 'SharedAccessKeyName', 'SharedAccessKey'] as const;

function invalid(message: string, field?: string): ValidationError {
  return new ValidationError(
    'InvalidConnectionString',
    `connection string: ${message}`,
    field ? { field } : {},
  );
}

/**
 * Splits `Key=value;Key=value` into a map keyed by the canonical names in `allowed`. Names match
 * case-insensitively (IoT Hub tools print `x509`, people type `X509`); values keep everything after the
 * first `=` (base64 padding). Empty segments (a trailing `;`) are ignored.
 */
function splitPairs(text: string, allowed: readonly string[]): Map<string, string> {
  if (typeof text !== 'string' || text.trim().length === 0) throw invalid('is empty');
  const canonical = new Map(allowed.map((k) => [k.toLowerCase(), k]));
  const pairs = new Map<string, string>();
  for (const segment of text.split(';')) {
    const part = segment.trim();
    if (part.length === 0) continue;
    const eq = part.indexOf('=');
    if (eq <= 0) throw invalid(`'${part.slice(0, 40)}' is not a Key=value pair`);
    const name = part.slice(0, eq).trim();
    const key = canonical.get(name.toLowerCase());
    if (key === undefined) throw invalid(`unknown key '${name}' (allowed: ${allowed.join(', ')})`, name);
    if (pairs.has(key)) throw invalid(`${key} appears twice`, key);
    const value = part.slice(eq + 1).trim();
    if (value.length === 0) throw invalid(`${key} is empty`, key);
    pairs.set(key, value);
  }
  return pairs;
}

function requireKey(pairs: Map<string, string>, key: string): string {
  const value = pairs.get(key);
  if (value === undefined) throw invalid(`${key} is missing`, key);
  return value;
}

function checkHostName(hostName: string): string {
  if (!/^[A-Za-z0-9.-]+(?::\d{1,5})?$/.test(hostName)) {
    throw invalid(
      `HostName '${hostName}' is not a host name (letters, digits, '.', '-', optional :port)`,
      'HostName',
    );
  }
  return hostName;
}

function checkKey(key: string, field: string): string {
  if (!isValidBase64Key(key)) throw invalid(`${field} is not a base64 key of 16-64 bytes`, field);
  return key;
}

/**
 * Parses a device connection string. Throws a {@link ValidationError} (`InvalidConnectionString`) that
 * names the missing or bad key; exactly one of `SharedAccessKey`, `SharedAccessSignature`, `x509=true`
 * must be present.
 *
 * @example
 * parseDeviceConnectionString('HostName=localhost;DeviceId=dev1;SharedAccessKey=q3Jp...=');
 */
export function parseDeviceConnectionString(text: string): DeviceConnectionString {
  const pairs = splitPairs(text, DEVICE_KEYS);
  const hostName = checkHostName(requireKey(pairs, 'HostName'));
  const rawId = requireKey(pairs, 'DeviceId');
  let deviceId: string;
  try {
    deviceId = validateDeviceId(rawId, 'DeviceId');
  } catch (cause) {
    throw new ValidationError('InvalidConnectionString', `connection string: ${(cause as Error).message}`, {
      field: 'DeviceId',
    });
  }
  const x509 = pairs.get('x509');
  if (x509 !== undefined && x509.toLowerCase() !== 'true') {
    throw invalid(`x509 must be 'true' when present, got '${x509}'`, 'x509');
  }
  const key = pairs.get('SharedAccessKey');
  const sas = pairs.get('SharedAccessSignature');
  const credentials = [key, sas, x509].filter((v) => v !== undefined).length;
  if (credentials === 0)
    throw invalid('one of SharedAccessKey, SharedAccessSignature or x509=true is missing');
  if (credentials > 1) {
    throw invalid('give only one of SharedAccessKey, SharedAccessSignature and x509=true');
  }
  if (key !== undefined) return { hostName, deviceId, sharedAccessKey: checkKey(key, 'SharedAccessKey') };
  if (sas !== undefined) return { hostName, deviceId, sharedAccessSignature: sas };
  return { hostName, deviceId, x509: true };
}

/** Formats a device connection string in IoT Hub's key order; validates like {@link parseDeviceConnectionString}. */
export function formatDeviceConnectionString(value: DeviceConnectionString): string {
  const parts = [`HostName=${value.hostName}`, `DeviceId=${value.deviceId}`];
  if (value.sharedAccessKey !== undefined) parts.push(`SharedAccessKey=${value.sharedAccessKey}`);
  if (value.sharedAccessSignature !== undefined)
    parts.push(`SharedAccessSignature=${value.sharedAccessSignature}`);
  if (value.x509 === true) parts.push('x509=true');
  const text = parts.join(';');
  parseDeviceConnectionString(text);
  return text;
}

/**
 * Parses a service connection string (`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`).
 * Throws a {@link ValidationError} (`InvalidConnectionString`) naming the missing or bad key.
 */
export function parseServiceConnectionString(text: string): ServiceConnectionString {
  const pairs = splitPairs(text, SERVICE_KEYS);
  const hostName = checkHostName(requireKey(pairs, 'HostName'));
  const sharedAccessKeyName = requireKey(pairs, 'SharedAccessKeyName');
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(sharedAccessKeyName)) {
    throw invalid('SharedAccessKeyName must be 1-64 letters, digits, ., _ or -', 'SharedAccessKeyName');
  }
  const sharedAccessKey = checkKey(requireKey(pairs, 'SharedAccessKey'), 'SharedAccessKey');
  return { hostName, sharedAccessKeyName, sharedAccessKey };
}

/** Formats a service connection string; validates like {@link parseServiceConnectionString}. */
export function formatServiceConnectionString(value: ServiceConnectionString): string {
  const text = `HostName=${value.hostName};SharedAccessKeyName=${value.sharedAccessKeyName};SharedAccessKey=${value.sharedAccessKey}`;
  parseServiceConnectionString(text);
  return text;
}
