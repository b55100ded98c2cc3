import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { createSasToken, deviceResourceUri } from '../functions/core/identity/sas.ts';
import type { LocalHubEndpoints } from './hub.ts';

// `npm run device -- <deviceId>`: creates the device in the running local hub's registry (or
// reads it if it exists) and prints its connection string and the MQTT username/password a
// device uses, as shell exports.

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'data-dir': { type: 'string' },
    'ttl-hours': { type: 'string', default: '24' },
    help: { type: 'boolean', short: 'h' },
  },
});
const deviceId = positionals[0];
if (values.help || !deviceId) {
  process.stdout.write('Usage: npm run device -- <deviceId> [--ttl-hours 24] [--data-dir .hub-data]\n');
  process.exit(values.help ? 0 : 2);
}
const dataDir = values['data-dir'] ?? process.env.HUB_DATA_DIR ?? '.hub-data';
const endpoints = JSON.parse(readFileSync(path.join(dataDir, 'endpoints.json'), 'utf8')) as LocalHubEndpoints;
const authorization = readFileSync(endpoints.serviceTokenPath, 'utf8');
const url = `${endpoints.serviceApi}/devices/${encodeURIComponent(deviceId)}?api-version=2021-04-12`;
const headers = { authorization, 'content-type': 'application/json' };

let response = await fetch(url, {
  method: 'PUT',
  headers,
  body: JSON.stringify({ deviceId, status: 'enabled', authentication: { type: 'sas' } }),
});
if (response.status === 409) response = await fetch(url, { headers });
const body = (await response.json()) as {
  message?: string;
  authentication?: { symmetricKey?: { primaryKey?: string } };
};
const key = body.authentication?.symmetricKey?.primaryKey;
if (!response.ok || !key) {
  process.stderr.write(
    `could not create or read device '${deviceId}': ${response.status} ${body.message ?? ''}\n`,
  );
  process.exit(1);
}
const hours = Number(values['ttl-hours']);
const password = createSasToken({
  resourceUri: deviceResourceUri(endpoints.hostName, deviceId),
  key,
  expiresAt: new Date(Date.now() + hours * 3600 * 1000),
});
const username = `${endpoints.hostName}/${deviceId}/?api-version=2021-04-12`;
process.stdout.write(
  [
    `# device '${deviceId}' (SAS token valid ${hours} h)`,
    `export CONNECTION_STRING='HostName=${endpoints.hostName};DeviceId=${deviceId};SharedAccessKey=${key}'`,
    `export DEVICE_ID='${deviceId}'`,
    `export USERNAME='${username}'`,
    `export PASSWORD='${password}'`,
    '',
  ].join('\n'),
);
