import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { createSasToken, verifySasToken } from '../functions/core/identity/sas.ts';

/** The shared-access policy name of the local hub's service key, as IoT Hub names its owner policy. */
export const SERVICE_POLICY = 'iothubowner';

/** The local hub's service credential: a key, and a long-lived SAS token made from it. */
export interface ServiceCredentials {
  readonly hostName: string;
  readonly keyName: string;
  readonly key: string;
  /** `SharedAccessSignature sr=...&sig=...&se=...&skn=iothubowner`, valid one year. */
  readonly token: string;
  /** `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...` */
  readonly connectionString: string;
  /** Where the token is stored, for `curl -H "Authorization: $(cat ...)"`. */
  readonly tokenPath: string;
}

/**
 * Loads the service key from `dataDir/service-key.json`, generating it on first start, and
 * makes a fresh one-year token (written to `dataDir/service-token`). In the cloud the service API
 * uses IAM (SigV4) instead; this key exists only in the local hub.
 */
export function serviceCredentials(dataDir: string, hostName: string, now = new Date()): ServiceCredentials {
  mkdirSync(dataDir, { recursive: true });
  const keyPath = path.join(dataDir, 'service-key.json');
  if (!existsSync(keyPath)) {
    const fresh = { keyName: SERVICE_POLICY, key: randomBytes(32).toString('base64') };
    writeFileSync(keyPath, `${JSON.stringify(fresh, null, 2)}\n`, { mode: 0o600 });
  }
  const { keyName, key } = JSON.parse(readFileSync(keyPath, 'utf8')) as { keyName: string; key: string };
  const token = createSasToken({
    resourceUri: hostName,
    key,
    policyName: keyName,
    expiresAt: new Date(now.getTime() + 365 * 24 * 3600 * 1000),
  });
  const tokenPath = path.join(dataDir, 'service-token');
  writeFileSync(tokenPath, token, { mode: 0o600 });
  return {
    hostName,
    keyName,
    key,
    token,
    tokenPath,
    connectionString: `HostName=${hostName};SharedAccessKeyName=${keyName};SharedAccessKey=${key}`,
  };
}

/** Checks an `Authorization` header against the service key; returns why it is refused, or undefined. */
export function refuseServiceCaller(
  authorization: string | undefined,
  credentials: ServiceCredentials,
  now = new Date(),
): string | undefined {
  if (!authorization)
    return 'missing Authorization header (a SharedAccessSignature made with the service key)';
  const result = verifySasToken(authorization, {
    expectedResourceUri: credentials.hostName,
    keys: [credentials.key],
    now,
  });
  if (!result.ok) return result.message;
  if (result.token.policyName !== credentials.keyName) {
    return `the token must name the shared access policy '${credentials.keyName}' (skn)`;
  }
  return undefined;
}
