import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Identity, type RunningBroker, startBroker } from '../../local/broker.ts';
import { serverCertificate } from '../../local/tls.ts';

const dataDir = mkdtempSync(path.join(tmpdir(), 'broker-test-'));
let broker: RunningBroker;
let failIngest = true;
const ingested: string[] = [];
const lines: string[] = [];

beforeAll(async () => {
  broker = await startBroker({
    dataDir,
    host: '127.0.0.1',
    ports: { mqtt: 0, mqtts: 0, ws: 0 },
    certificate: await serverCertificate(dataDir),
    maxMessageBytes: 1024,
    authenticator: {
      authenticate: async ({ clientId }): Promise<Identity> => ({
        deviceId: clientId,
        principal: `test:${clientId}`,
      }),
    },
    ingest: async ({ payload }) => {
      if (failIngest) throw new Error('ingest stream unavailable');
      ingested.push(payload.toString());
    },
    log: (line) => lines.push(line),
  });
});

afterAll(async () => {
  await broker.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('the front door withholds PUBACK until the ingest is durable', () => {
  it('gives no PUBACK and closes the connection when the ingest fails, so the device sends again', async () => {
    const url = `mqtt://127.0.0.1:${broker.ports.mqtt}`;
    const device = await mqtt.connectAsync(url, { clientId: 'd1', reconnectPeriod: 0 });
    let acked = false;
    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    device.publish('devices/d1/messages/events', 'first', { qos: 1 }, (error) => {
      if (!error) acked = true;
    });
    await closed;
    device.end(true);
    expect(acked).toBe(false);
    expect(ingested).toEqual([]);
    expect(lines.join('\n')).toMatch(
      /publish not accepted, disconnecting so the device retries: ingest stream unavailable/,
    );

    failIngest = false;
    const again = await mqtt.connectAsync(url, { clientId: 'd1', reconnectPeriod: 0 });
    await again.publishAsync('devices/d1/messages/events', 'first', { qos: 1 });
    await again.endAsync();
    expect(ingested).toEqual(['first']);
  });

  it('ingests one device’s publishes in the order it sent them, even with many in flight', async () => {
    failIngest = false;
    ingested.length = 0;
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.ports.mqtt}`, { clientId: 'd2' });
    await Promise.all(
      Array.from({ length: 200 }, (_, n) =>
        device.publishAsync('devices/d2/messages/events', `${n}`, { qos: 1 }),
      ),
    );
    await device.endAsync();
    expect(ingested).toEqual(Array.from({ length: 200 }, (_, n) => `${n}`));
  });
});
