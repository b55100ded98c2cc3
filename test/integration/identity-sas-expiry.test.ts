import { createHmac } from 'node:crypto';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceResourceUri } from '../../functions/core/identity/sas.ts';
import { registerDevice } from '../support/devices.ts';
import { type HubProcess, startHubProcess } from '../support/hub-process.ts';

/**
 * Issue 17, item 2: a correctly signed SAS token whose `se` names no representable date used to be
 * accepted, after which the broker's expiry timer (an Invalid Date) fired at once and the device was
 * cut off without a CONNACK. It must be refused at CONNECT (return code 4), and the hub must say why.
 */

/**
 * Connects once and resolves with the CONNACK refusal code, 0 when accepted, or -1 when the connection
 * closed without any CONNACK (the landed bug).
 */
function connackCode(url: string, options: mqtt.IClientOptions): Promise<number> {
  return new Promise((resolve) => {
    const client = mqtt.connect(url, { ...options, reconnectPeriod: 0 });
    client.once('connect', () => {
      client.end(true);
      resolve(0);
    });
    client.once('error', (error) => {
      client.end(true);
      resolve((error as { code?: number }).code ?? -1);
    });
    client.once('close', () => resolve(-1));
  });
}

/** A token signed with the device key over `sr` and this `se`, as any IoT Hub client would make it. */
function signedToken(hostName: string, deviceId: string, key: string, se: string): string {
  const sr = encodeURIComponent(deviceResourceUri(hostName, deviceId));
  const sig = createHmac('sha256', Buffer.from(key, 'base64')).update(`${sr}\n${se}`).digest('base64');
  return `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${se}`;
}

let hub: HubProcess;
beforeAll(async () => {
  hub = await startHubProcess();
});
afterAll(async () => {
  await hub?.stop();
});

describe('SAS tokens whose expiry is out of range', () => {
  it.each([
    ['999999999999999', 'sas-se-far'],
    ['9000000000000', 'sas-se-13'],
  ])('refuses se=%s at CONNECT with return code 4 and logs that se is out of range', async (se, deviceId) => {
    const creds = await registerDevice(hub.endpoints, deviceId);
    const password = signedToken(hub.endpoints.hostName, deviceId, creds.symmetricKey, se);
    expect(await connackCode(hub.endpoints.mqtt, { ...creds, password })).toBe(4);
    await hub.waitForLog(
      new RegExp(`connect refused: client '${deviceId}': malformed: .*se \\(expiry\\) ${se} is out of range`),
    );
    expect(hub.logs.some((line) => line.includes(`closing '${deviceId}': its SAS token expired`))).toBe(
      false,
    );
  });

  it('still lets a device in with an ordinary token', async () => {
    const creds = await registerDevice(hub.endpoints, 'sas-se-ok');
    expect(await connackCode(hub.endpoints.mqtt, creds)).toBe(0);
  });
});
