import { readFileSync } from 'node:fs';
import { createSasToken, deviceResourceUri } from '../../functions/core/identity/sas.ts';
import type { LocalHubEndpoints } from '../../local/hub.ts';

/** A service API response. */
export interface ServiceResponse {
  readonly status: number;
  readonly headers: Headers;
  readonly body: unknown;
}

/** Calls the local hub's service API with its service token (or the given Authorization). */
export async function service(
  endpoints: LocalHubEndpoints,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<ServiceResponse> {
  const authorization = readFileSync(endpoints.serviceTokenPath, 'utf8');
  const response = await fetch(`${endpoints.serviceApi}${path}`, {
    method,
    headers: { authorization, 'content-type': 'application/json', ...headers },
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
  const text = await response.text();
  return {
    status: response.status,
    headers: response.headers,
    body: text ? (JSON.parse(text) as unknown) : undefined,
  };
}

/** MQTT options of a device: client id, IoT Hub username and a SAS token password. */
export interface DeviceCredentials {
  readonly clientId: string;
  readonly username: string;
  readonly password: string;
  /** The device's primary key (not named `key`: mqtt.js would take that as a TLS private key). */
  readonly symmetricKey: string;
}

/** The MQTT credentials IoT Hub devices use, for a device key. */
export function sasCredentials(
  endpoints: LocalHubEndpoints,
  deviceId: string,
  key: string,
  expiresAt = new Date(Date.now() + 3600_000),
): DeviceCredentials {
  return {
    clientId: deviceId,
    username: `${endpoints.hostName}/${deviceId}/?api-version=2021-04-12`,
    password: createSasToken({
      resourceUri: deviceResourceUri(endpoints.hostName, deviceId),
      key,
      expiresAt,
    }),
    symmetricKey: key,
  };
}

/** Registers a SAS device through the service API and returns its MQTT credentials. */
export async function registerDevice(
  endpoints: LocalHubEndpoints,
  deviceId: string,
): Promise<DeviceCredentials> {
  const created = await service(endpoints, 'PUT', `/devices/${encodeURIComponent(deviceId)}`, {
    deviceId,
    authentication: { type: 'sas' },
  });
  if (created.status !== 201)
    throw new Error(`creating ${deviceId}: ${created.status} ${JSON.stringify(created.body)}`);
  const key = (created.body as { authentication: { symmetricKey: { primaryKey: string } } }).authentication
    .symmetricKey.primaryKey;
  return sasCredentials(endpoints, deviceId, key);
}
