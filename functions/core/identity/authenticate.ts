import type { AuthenticationType, Device } from './device.ts';
import { isMqttSafeDeviceId } from './device-id.ts';
import { normalizeThumbprint } from './keys.ts';
import type { DeviceRegistry } from './registry.ts';
import { deviceResourceUri, SAS_TOKEN_PREFIX, verifySasToken } from './sas.ts';

/**
 * Host name device tokens are scoped to when the hub has no other (the local hub): devices sign
 * `localhost/devices/{deviceId}`. The cloud uses the IoT Core endpoint (`HUB_HOSTNAME`).
 */
export const SAS_HOSTNAME_DEFAULT = 'localhost';

/** Authentication types a device can connect with (`none` never connects). */
export type ConnectingAuthType = Exclude<AuthenticationType, 'none'>;

/** Why a connection was refused; stable strings for logs and metrics. */
export type AuthRefusalReason =
  | 'unknown-device'
  | 'disabled'
  | 'bad-credentials'
  | 'expired'
  | 'malformed'
  | 'wrong-auth-type'
  | 'client-id-mismatch';

/**
 * MQTT 3.1.1 CONNACK return codes a refusal maps to: 2 identifier rejected, 4 bad user name or password,
 * 5 not authorized.
 */
export type RefusalConnackCode = 2 | 4 | 5;

/** A device the hub let in. */
export interface AuthAccepted {
  readonly ok: true;
  /** The registry id; equals the MQTT client id. */
  readonly deviceId: string;
  /** The mechanism that proved the identity. */
  readonly authType: ConnectingAuthType;
  /** `{authType}:{deviceId}`: what the local broker reports as `principal()` to the rules. */
  readonly principal: string;
  /** When the credential stops being valid (a SAS token's `se`); absent for certificates. */
  readonly expiresAt?: Date;
}

/** A refused connection. `message` is for logs: it names the device and the cause, never a key or token. */
export interface AuthRefused {
  readonly ok: false;
  /** Stable cause. */
  readonly reason: AuthRefusalReason;
  /** One log-friendly sentence. */
  readonly message: string;
  /** CONNACK return code to answer with. */
  readonly connackCode: RefusalConnackCode;
}

/** Outcome of {@link authenticateDevice}. */
export type AuthDecision = AuthAccepted | AuthRefused;

/** A TLS client certificate as the transport saw it. */
export interface PresentedCertificate {
  /** SHA-1 fingerprint, hex in any case, with or without `:` separators. */
  readonly thumbprintSha1: string;
  /** SHA-256 fingerprint, hex in any case, with or without `:` separators. */
  readonly thumbprintSha256: string;
  /**
   * Whether the certificate chains to a CA registered with the hub. Required (true) for
   * `certificateAuthority` devices; the transport computes it, this module cannot.
   */
  readonly issuerMatchesRegisteredCa?: boolean;
  /**
   * The certificate subject's common name. IoT Hub requires it to equal the device id for CA-signed
   * devices; when given, a `certificateAuthority` device is refused unless it does. A caller that omits it
   * must fold that check into `issuerMatchesRegisteredCa`, or one CA-signed certificate opens every
   * CA-signed device.
   */
  readonly subjectCommonName?: string;
}

/** What a connecting client presented. */
export interface AuthInput {
  /** MQTT client id; must be the device id. */
  readonly clientId: string;
  /** MQTT user name: `{hostName}/{deviceId}/?api-version=...` (IoT Hub), or absent. */
  readonly username?: string | undefined;
  /** MQTT password: a SAS token (UTF-8). */
  readonly password?: Buffer | string | undefined;
  /** TLS client certificate, when the connection presented one. */
  readonly clientCertificate?: PresentedCertificate | undefined;
}

/** What {@link authenticateDevice} needs. */
export interface AuthDeps {
  /** Where devices are looked up (`find` only). */
  readonly registry: Pick<DeviceRegistry, 'find'>;
  /** Host name tokens must be scoped to (`sr = {hostName}/devices/{id}`, host compared case-insensitively). */
  readonly hostName: string;
  /** The current time, for token expiry. */
  readonly now: () => Date;
}

const CONNACK: Record<AuthRefusalReason, RefusalConnackCode> = {
  'unknown-device': 5,
  disabled: 5,
  'wrong-auth-type': 5,
  'bad-credentials': 4,
  expired: 4,
  malformed: 4,
  'client-id-mismatch': 2,
};

function refuse(reason: AuthRefusalReason, message: string, connackCode = CONNACK[reason]): AuthRefused {
  return { ok: false, reason, message, connackCode };
}

function accept(deviceId: string, authType: ConnectingAuthType, expiresAt?: Date): AuthAccepted {
  const principal = `${authType}:${deviceId}`;
  return expiresAt === undefined
    ? { ok: true, deviceId, authType, principal }
    : { ok: true, deviceId, authType, principal, expiresAt };
}

/** A short, safe rendering of client-supplied text for a log line (no control characters, bounded). */
function show(text: string, max = 64): string {
  const clean = text.replace(/[^\x20-\x7e]/g, '?');
  return JSON.stringify(clean.length > max ? `${clean.slice(0, max)}...` : clean);
}

/**
 * The device id a user name names, or `undefined` when it names none. IoT Hub's form is
 * `{hostName}/{deviceId}/?api-version=...`; the host is not checked here (the token's `sr` is), and a
 * URL-encoded id is accepted.
 */
function usernameDeviceId(username: string): string | undefined {
  const segment = username.split('/')[1];
  if (segment === undefined || segment === '') return undefined;
  const withoutQuery = segment.split('?')[0] ?? '';
  try {
    return decodeURIComponent(withoutQuery);
  } catch {
    return withoutQuery;
  }
}

const SAFE_QUOTED = new Set(["'sr'", "'sig'", "'se'", "'skn'", `'${SAS_TOKEN_PREFIX.trim()} '`]);

/**
 * The SAS parser quotes fragments of the token it could not read; those fragments could be a signature,
 * so they are blanked, keeping only the quoted field names.
 */
function redactQuoted(message: string): string {
  return message.replace(/'[^']*'/g, (quoted) => (SAFE_QUOTED.has(quoted) ? quoted : "'...'"));
}

function passwordText(password: Buffer | string | undefined): string | undefined {
  if (password === undefined) return undefined;
  const text = typeof password === 'string' ? password : password.toString('utf8');
  return text.length === 0 ? undefined : text;
}

function verifySas(device: Device, token: string, deps: AuthDeps): AuthDecision {
  const { deviceId } = device;
  const { primaryKey, secondaryKey } = device.authentication.symmetricKey;
  const result = verifySasToken(token, {
    expectedResourceUri: deviceResourceUri(deps.hostName, deviceId),
    keys: [primaryKey, secondaryKey],
    now: deps.now(),
  });
  if (result.ok) return accept(deviceId, 'sas', new Date(result.token.expiresAt * 1000));
  switch (result.reason) {
    case 'malformed':
      return refuse(
        'malformed',
        `device '${deviceId}': password is not a SAS token: ${redactQuoted(result.message.replace(/^SAS token: /, ''))}`,
      );
    case 'wrong-resource':
      return refuse(
        'bad-credentials',
        `device '${deviceId}': the SAS token is not scoped to this device (expected sr=${deviceResourceUri(deps.hostName, deviceId)})`,
      );
    case 'bad-signature':
      return refuse(
        'bad-credentials',
        `device '${deviceId}': SAS token signature matches neither the primary nor the secondary key`,
      );
    case 'expired':
      return refuse('expired', `device '${deviceId}': SAS ${result.message}`);
  }
}

function verifyCertificate(device: Device, cert: PresentedCertificate): AuthDecision {
  const { deviceId } = device;
  if (device.authentication.type === 'selfSigned') {
    const registered = [
      device.authentication.x509Thumbprint.primaryThumbprint,
      device.authentication.x509Thumbprint.secondaryThumbprint,
    ]
      .filter((t): t is string => typeof t === 'string' && t.length > 0)
      .map(normalizeThumbprint);
    const presented = [cert.thumbprintSha1, cert.thumbprintSha256]
      .filter((t) => typeof t === 'string' && t.length > 0)
      .map(normalizeThumbprint);
    if (presented.some((t) => registered.includes(t))) return accept(deviceId, 'selfSigned');
    return refuse(
      'bad-credentials',
      `device '${deviceId}': client certificate thumbprint matches neither registered thumbprint`,
    );
  }
  if (cert.issuerMatchesRegisteredCa !== true) {
    return refuse(
      'bad-credentials',
      `device '${deviceId}': client certificate is not issued by a registered certificate authority`,
    );
  }
  if (cert.subjectCommonName !== undefined && cert.subjectCommonName !== deviceId) {
    return refuse(
      'bad-credentials',
      `device '${deviceId}': client certificate subject CN ${show(cert.subjectCommonName)} is not the device id`,
    );
  }
  return accept(deviceId, 'certificateAuthority');
}

/**
 * Decides whether a connecting MQTT client may connect, by IoT Hub's conventions. Used by the local
 * broker's `authenticate` hook and by the IoT Core custom authorizer, so both refuse the same clients.
 *
 * In order:
 * 1. the client id must be an MQTT-safe device id (`malformed`, CONNACK 2);
 * 2. a user name, when given, must name the same device in its second `/` segment
 *    (`{hostName}/{deviceId}/?api-version=...`; `client-id-mismatch`, CONNACK 2);
 * 3. the device must be registered (`unknown-device`, 5) and enabled (`disabled`, 5, with its status reason);
 * 4. the credential must fit the device's authentication type (`wrong-auth-type`, 5): a SAS device needs a
 *    password, an X.509 device a client certificate (a SAS device that also presents a certificate, or an
 *    X.509 device that also sends a password, is judged on its own credential);
 * 5. SAS: the password is a token with `sr = {hostName}/devices/{deviceId}` signed by the primary or
 *    secondary key and not expired (`malformed` / `bad-credentials` / `expired`, CONNACK 4);
 *    `selfSigned`: the SHA-1 or SHA-256 thumbprint equals a registered one (`bad-credentials`, 4);
 *    `certificateAuthority`: the transport says the issuer is a registered CA (`bad-credentials`, 4).
 *
 * Registry failures (outage, throttling) are thrown, not turned into refusals: the caller answers
 * "server unavailable" so the device retries.
 *
 * @example
 * const decision = await authenticateDevice(
 *   { clientId: 'dev1', username: 'localhost/dev1/?api-version=2021-04-12', password: token },
 *   { registry, hostName: SAS_HOSTNAME_DEFAULT, now: () => new Date() },
 * );
 * if (!decision.ok) {
 *   const { returnCode, message } = connectionRefusal(decision);
 *   throw new ConnectionRefusedError(returnCode, message);
 * }
 */
export async function authenticateDevice(input: AuthInput, deps: AuthDeps): Promise<AuthDecision> {
  const { clientId } = input;
  if (!isMqttSafeDeviceId(clientId)) {
    return refuse(
      'malformed',
      `client id ${show(String(clientId))} is not a device id (1-128 letters, digits and - . % _ * ? ! ( ) , : = @ $ ')`,
      2,
    );
  }
  if (input.username !== undefined && input.username !== '') {
    const named = usernameDeviceId(input.username);
    if (named === undefined) {
      return refuse(
        'malformed',
        `client '${clientId}': user name ${show(input.username)} is not '{hostName}/{deviceId}/?api-version=...'`,
      );
    }
    if (named !== clientId) {
      return refuse(
        'client-id-mismatch',
        `client '${clientId}': user name names device ${show(named)}; client id and user name must name the same device`,
      );
    }
  }
  const device = await deps.registry.find(clientId);
  if (device === undefined) return refuse('unknown-device', `unknown device '${clientId}': not registered`);
  if (device.status !== 'enabled') {
    const why = device.statusReason ? `: ${device.statusReason}` : '';
    return refuse('disabled', `device '${clientId}' is disabled${why}`);
  }
  const type = device.authentication.type;
  const password = passwordText(input.password);
  const cert = input.clientCertificate;
  if (type === 'none') {
    return refuse(
      'wrong-auth-type',
      `device '${clientId}' has authentication type 'none' and cannot connect`,
    );
  }
  if (type === 'sas') {
    if (password !== undefined) return verifySas(device, password, deps);
    if (cert !== undefined) {
      return refuse(
        'wrong-auth-type',
        `device '${clientId}' authenticates with SAS tokens but presented only a client certificate`,
      );
    }
    return refuse('bad-credentials', `device '${clientId}': no password (SAS token) given`);
  }
  if (cert !== undefined) return verifyCertificate(device, cert);
  if (password !== undefined) {
    return refuse(
      'wrong-auth-type',
      `device '${clientId}' authenticates with an X.509 certificate (${type}) but presented only a password`,
    );
  }
  return refuse('bad-credentials', `device '${clientId}': no client certificate presented (${type})`);
}

/**
 * The CONNACK return code and log message for a refusal, in the shape of the local broker's
 * `ConnectionRefusedError(returnCode, message)`.
 */
export function connectionRefusal(decision: AuthRefused): {
  returnCode: RefusalConnackCode;
  message: string;
} {
  return { returnCode: decision.connackCode, message: `${decision.reason}: ${decision.message}` };
}
