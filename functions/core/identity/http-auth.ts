import { type AuthDecision, type AuthDeps, type AuthRefused, authenticateDevice } from './authenticate.ts';
import { parseSasToken, SAS_TOKEN_PREFIX } from './sas.ts';

/**
 * Authentication of devices that publish over HTTPS (IoT Core's HTTPS publish in the cloud, the local
 * hub's `POST /topics/{topic}`), by IoT Hub's HTTPS convention: the device's SAS token in the
 * `Authorization` header. There is no MQTT client id; the device is the one the token's `sr` names
 * (`{hostName}/devices/{deviceId}`), and the decision is then {@link authenticateDevice}'s, the same as
 * for an MQTT connection with that id and the token as password.
 */

/** What an HTTPS publisher presented. */
export interface HttpAuthInput {
  /** The `Authorization` header (`SharedAccessSignature sr=...&sig=...&se=...`), or absent. */
  readonly authorization?: string | undefined;
}

function refuse(reason: AuthRefused['reason'], message: string): AuthRefused {
  return { ok: false, reason, message, connackCode: 4 };
}

/** A SAS token parse message without quoted client text (which may hold parts of a signature). */
function redacted(message: string): string {
  return message.replace(/^SAS token: /, '').replace(/'[^']*'/g, "'...'");
}

/**
 * The device id a SAS token is scoped to: the last part of `sr = {host}/devices/{deviceId}`
 * (URL-decoded once more when the client encoded the id inside the URI, as some SDKs do), or a refusal.
 */
export function sasTokenDeviceId(token: string): { ok: true; deviceId: string } | AuthRefused {
  let resourceUri: string;
  try {
    resourceUri = parseSasToken(token).resourceUri;
  } catch (error) {
    return refuse('malformed', `the SAS token is malformed: ${redacted((error as Error).message)}`);
  }
  const match = /^[^/]+\/devices\/([^/]+)$/i.exec(resourceUri);
  if (!match?.[1]) {
    return refuse(
      'malformed',
      "the SAS token's sr is not a device resource: expected '{hostName}/devices/{deviceId}'",
    );
  }
  let deviceId = match[1];
  if (deviceId.includes('%')) {
    try {
      deviceId = decodeURIComponent(deviceId);
    } catch {
      // not encoded twice: the id is taken as it stands and the device check decides
    }
  }
  return { ok: true, deviceId };
}

/**
 * Authenticates an HTTPS publisher from its `Authorization` header: no header (`bad-credentials`), a
 * header that is not a SAS token or a token whose `sr` names no device (`malformed`), then whatever
 * {@link authenticateDevice} decides for the device the token names (`unknown-device`, `disabled`,
 * `bad-credentials`, `expired`, `wrong-auth-type`). Messages name the device and the cause, never the
 * token. Registry failures are thrown, as by {@link authenticateDevice}: answer 503 so the device retries.
 */
export async function authenticateHttpDevice(input: HttpAuthInput, deps: AuthDeps): Promise<AuthDecision> {
  const header = input.authorization?.trim();
  if (header === undefined || header === '') {
    return refuse(
      'bad-credentials',
      "no Authorization header: send the device's SAS token ('SharedAccessSignature sr=...&sig=...&se=...')",
    );
  }
  if (!header.startsWith(SAS_TOKEN_PREFIX)) {
    return refuse(
      'malformed',
      "the Authorization header is not a SAS token: expected 'SharedAccessSignature sr=...&sig=...&se=...'",
    );
  }
  const scoped = sasTokenDeviceId(header);
  if (!scoped.ok) return scoped;
  return authenticateDevice({ clientId: scoped.deviceId, password: header }, deps);
}
