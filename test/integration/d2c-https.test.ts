import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { ScanCommand } from '@aws-sdk/client-dynamodb';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { D2CEnvelope } from '../../functions/core/d2c/envelope.ts';
import { createSasToken, deviceResourceUri } from '../../functions/core/identity/sas.ts';
import { parseHubConfig } from '../../lib/config.ts';
import { PROJECT_ROOT } from '../../lib/hub-function.ts';
import { localDynamoClient } from '../../local/emulators.ts';
import { type ReadRecord, waitForRecords } from '../support/built-in.ts';
import { type DeviceCredentials, registerDevice, service } from '../support/devices.ts';
import { type HubProcess, startHubProcess, startHubWith, tempDataDir } from '../support/hub-process.ts';
import { sharedHub } from '../support/shared-hub.ts';

// D2C over HTTPS (`POST /topics/{topic}`, the local stand-in for IoT Core's HTTPS publish) and Basic
// Ingest, against a real hub process, with real clients: fetch, curl and mqtt.js.

const cdkJson = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'cdk.json'), 'utf8')) as {
  context?: { hub?: unknown };
};
const MAX_MESSAGE_BYTES = parseHubConfig(cdkJson.context?.hub).maxMessageBytes;

interface Answer {
  readonly status: number;
  readonly body: { message?: string; traceId?: string };
}

/** POSTs to the hub's HTTP publish endpoint with the topic URL-encoded, as IoT Core's HTTPS publish takes it. */
async function post(
  hub: HubProcess,
  topic: string,
  body: string | Buffer,
  options: {
    authorization?: string;
    query?: string;
    headers?: Record<string, string>;
    rawTopic?: string;
  } = {},
): Promise<Answer> {
  const url = `${hub.endpoints.httpPublish}/topics/${options.rawTopic ?? encodeURIComponent(topic)}?${options.query ?? 'qos=1'}`;
  const response = await fetch(url, {
    method: 'POST',
    headers: {
      ...(options.authorization === undefined ? {} : { authorization: options.authorization }),
      ...options.headers,
    },
    body,
  });
  const text = await response.text();
  return { status: response.status, body: text ? (JSON.parse(text) as Answer['body']) : {} };
}

const byDevice = (records: ReadRecord[], deviceId: string) =>
  records.filter((r) => r.envelope.deviceId === deviceId);

async function envelopeWithId(hub: HubProcess, messageId: string): Promise<D2CEnvelope> {
  const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
    r.some((x) => x.envelope.messageId === messageId),
  );
  const found = records.find((x) => x.envelope.messageId === messageId);
  if (!found) throw new Error(`no envelope with message id ${messageId} on the built-in endpoint`);
  return found.envelope;
}

/** Every dead-letter item, as text, to look for marks in. */
async function deadLetterText(hub: HubProcess): Promise<string> {
  const dynamo = localDynamoClient(hub.endpoints.dynamodb);
  try {
    const scan = await dynamo.send(new ScanCommand({ TableName: hub.endpoints.deadLetterTable }));
    return JSON.stringify(scan.Items ?? []);
  } finally {
    dynamo.destroy();
  }
}

describe('D2C over HTTPS on the local hub', () => {
  let hub: HubProcess;
  let device: DeviceCredentials;
  beforeAll(async () => {
    hub = await sharedHub();
    device = await registerDevice(hub.endpoints, 'h1');
  });

  it('takes a message with a property bag and a JSON body to the built-in endpoint', async () => {
    const answer = await post(
      hub,
      'devices/h1/messages/events/$.mid=h-1&$.cid=corr-1&$.ct=application%2Fjson&$.ce=utf-8&alert=high%20temp&site=north',
      JSON.stringify({ temp: 21.5, nested: { ok: true } }),
      { authorization: device.password },
    );
    expect(answer.status).toBe(200);
    expect(answer.body.message).toBe('OK');
    expect(answer.body.traceId).toMatch(/^[0-9a-f-]{36}$/);

    const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, (r) =>
      r.some((x) => x.envelope.messageId === 'h-1'),
    );
    const record = records.find((x) => x.envelope.messageId === 'h-1');
    expect(record?.partitionKey).toBe('h1');
    const envelope = record!.envelope;
    expect(envelope.deviceId).toBe('h1');
    expect(envelope.bodyEncoding).toBe('json');
    expect(envelope.body).toEqual({ temp: 21.5, nested: { ok: true } });
    expect(envelope.properties).toEqual({ alert: 'high temp', site: 'north' });
    expect(envelope.systemProperties).toMatchObject({
      'message-id': 'h-1',
      'correlation-id': 'corr-1',
      'content-type': 'application/json',
      'content-encoding': 'utf-8',
      'iothub-connection-device-id': 'h1',
      'iothub-message-source': 'Telemetry',
    });
    expect(JSON.parse(envelope.systemProperties['iothub-connection-auth-method'] ?? '')).toEqual({
      scope: 'device',
      type: 'sas',
      issuer: 'iothub',
      acceptingIpFilterRule: null,
    });
  });

  it('works with curl and the topic written with plain slashes, as the README shows', async () => {
    const out = execFileSync(
      'curl',
      [
        '-s',
        '-w',
        '\n%{http_code}',
        '-X',
        'POST',
        '-H',
        `Authorization: ${device.password}`,
        '--data-binary',
        '{"temp":1}',
        `${hub.endpoints.httpPublish}/topics/devices/h1/messages/events/$.mid=curl-1&$.ct=application%252Fjson?qos=1`,
      ],
      { encoding: 'utf8' },
    );
    const [json, code] = out.trim().split('\n');
    expect(code).toBe('200');
    expect(JSON.parse(json ?? '{}')).toMatchObject({ message: 'OK' });
    const envelope = await envelopeWithId(hub, 'curl-1');
    expect(envelope.body).toEqual({ temp: 1 });
    expect(envelope.systemProperties['content-type']).toBe('application/json');
  });

  it('maps the MQTT 5 properties of the Publish API (query and x-amz-mqtt5-* headers); the topic bag wins', async () => {
    const b64 = (text: string) => Buffer.from(text).toString('base64');
    const answer = await post(hub, 'devices/h1/messages/events/$.mid=h-mqtt5&alert=topic', '{"v":2}', {
      authorization: device.password,
      query: `qos=1&contentType=${encodeURIComponent('application/json')}`,
      headers: {
        'x-amz-mqtt5-user-properties': b64(JSON.stringify([{ alert: 'header' }, { site: 'south' }])),
        'x-amz-mqtt5-correlation-data': b64('req-9'),
        'x-amz-mqtt5-payload-format-indicator': 'UTF8_DATA',
      },
    });
    expect(answer.status).toBe(200);
    const envelope = await envelopeWithId(hub, 'h-mqtt5');
    expect(envelope.properties).toEqual({ alert: 'topic', site: 'south' });
    expect(envelope.systemProperties['content-type']).toBe('application/json');
    expect(envelope.systemProperties['correlation-id']).toBe('req-9');
    expect(envelope.body).toEqual({ v: 2 });
  });

  it('keeps the order of 50 sequential posts', async () => {
    const seq = await registerDevice(hub.endpoints, 'h-seq');
    for (let n = 0; n < 50; n++) {
      const answer = await post(hub, `devices/h-seq/messages/events/$.mid=s${n}&n=${n}`, `m${n}`, {
        authorization: seq.password,
      });
      expect(answer.status).toBe(200);
    }
    const records = await waitForRecords(
      hub.endpoints.kinesis,
      hub.endpoints.builtInStream,
      (r) => byDevice(r, 'h-seq').length >= 50,
    );
    const mine = byDevice(records, 'h-seq');
    const firstSeen = [...new Map(mine.map((r) => [r.envelope.messageId, r])).values()];
    expect(firstSeen.map((r) => r.envelope.properties.n)).toEqual(
      Array.from({ length: 50 }, (_, n) => String(n)),
    );
    expect(new Set(mine.map((r) => r.shardId)).size).toBe(1);
  });

  it('forwards the publish to MQTT subscribers of the topic, as IoT Core does', async () => {
    const listener = await registerDevice(hub.endpoints, 'h-listen');
    const client = await mqtt.connectAsync(hub.endpoints.mqtt, { ...listener });
    try {
      await client.subscribeAsync('devices/h-listen/messages/events/#', { qos: 1 });
      const received = new Promise<{ topic: string; payload: string }>((resolve) => {
        client.on('message', (topic, payload) => resolve({ topic, payload: payload.toString() }));
      });
      const answer = await post(hub, 'devices/h-listen/messages/events/k=v', 'hello', {
        authorization: listener.password,
      });
      expect(answer.status).toBe(200);
      expect(await received).toEqual({ topic: 'devices/h-listen/messages/events/k=v', payload: 'hello' });
    } finally {
      await client.endAsync();
    }
  });

  describe('refusals, each with the reason named and nothing on the built-in endpoint', () => {
    const refusedMarks: string[] = [];
    let other: DeviceCredentials;
    let disabledToken: string;
    beforeAll(async () => {
      other = await registerDevice(hub.endpoints, 'h-other');
      const created = await service(hub.endpoints, 'PUT', '/devices/h-off', {
        deviceId: 'h-off',
        status: 'disabled',
        statusReason: 'decommissioned',
        authentication: { type: 'sas' },
      });
      expect(created.status).toBe(201);
      const key = (created.body as { authentication: { symmetricKey: { primaryKey: string } } })
        .authentication.symmetricKey.primaryKey;
      disabledToken = createSasToken({
        resourceUri: deviceResourceUri(hub.endpoints.hostName, 'h-off'),
        key,
        expiresAt: new Date(Date.now() + 3600_000),
      });
    });

    const refused = async (
      mark: string,
      topic: string,
      authorization: string | undefined,
      status: number,
      reason: RegExp,
      extra: Parameters<typeof post>[3] = {},
    ) => {
      refusedMarks.push(mark);
      const answer = await post(hub, topic, `refused ${mark}`, {
        ...(authorization === undefined ? {} : { authorization }),
        ...extra,
      });
      expect(answer.status).toBe(status);
      expect(answer.body.message).toMatch(reason);
      expect(answer.body.traceId).toMatch(/^[0-9a-f-]{36}$/);
      return answer;
    };

    it('401 for a wrong key', async () => {
      const wrong = createSasToken({
        resourceUri: deviceResourceUri(hub.endpoints.hostName, 'h1'),
        key: Buffer.alloc(32, 9).toString('base64'),
        expiresAt: new Date(Date.now() + 3600_000),
      });
      await refused(
        'r-wrong',
        'devices/h1/messages/events/$.mid=r-wrong',
        wrong,
        401,
        /^bad-credentials: .*signature/,
      );
    });

    it('401 for no Authorization, an expired token and a token that is not a SAS token', async () => {
      await refused(
        'r-none',
        'devices/h1/messages/events/$.mid=r-none',
        undefined,
        401,
        /no Authorization header/,
      );
      const expired = createSasToken({
        resourceUri: deviceResourceUri(hub.endpoints.hostName, 'h1'),
        key: device.symmetricKey,
        expiresAt: new Date(Date.now() - 60_000),
      });
      await refused('r-expired', 'devices/h1/messages/events/$.mid=r-expired', expired, 401, /^expired: /);
      await refused(
        'r-basic',
        'devices/h1/messages/events/$.mid=r-basic',
        'Basic aDE6eA==',
        401,
        /not a SAS token/,
      );
    });

    it('401 for an unknown device', async () => {
      const ghost = createSasToken({
        resourceUri: deviceResourceUri(hub.endpoints.hostName, 'h-ghost'),
        key: device.symmetricKey,
        expiresAt: new Date(Date.now() + 3600_000),
      });
      await refused(
        'r-ghost',
        'devices/h-ghost/messages/events/$.mid=r-ghost',
        ghost,
        401,
        /^unknown-device: .*'h-ghost'/,
      );
    });

    it('401 for a disabled device, with its status reason', async () => {
      await refused(
        'r-off',
        'devices/h-off/messages/events/$.mid=r-off',
        disabledToken,
        401,
        /^disabled: device 'h-off' is disabled: decommissioned/,
      );
    });

    it("403 for another device's topic, and for topics outside the device's own", async () => {
      await refused(
        'r-spoof',
        'devices/h-other/messages/events/$.mid=r-spoof',
        device.password,
        403,
        /device 'h1' may publish only under 'devices\/h1\/'.*'devices\/h-other\/messages\/events/,
      );
      await refused('r-foreign', 'telemetry/all', device.password, 403, /'telemetry\/all'/);
      // Basic Ingest is off on this hub.
      await refused(
        'r-basic-ingest',
        '$aws/rules/any/devices/h1/messages/events/$.mid=r-basic-ingest',
        device.password,
        403,
        /\$aws\/rules\/any/,
      );
    });

    it('413 for a body over the limit, while a body of exactly the limit is taken', async () => {
      const answer = await post(
        hub,
        'devices/h1/messages/events/$.mid=r-big',
        Buffer.alloc(MAX_MESSAGE_BYTES + 1, 0x61),
        { authorization: device.password },
      );
      refusedMarks.push('r-big');
      expect(answer.status).toBe(413);
      expect(answer.body.message).toContain(`larger than ${MAX_MESSAGE_BYTES} bytes`);
      const fits = await post(
        hub,
        'devices/h1/messages/events/$.mid=h-limit',
        Buffer.alloc(MAX_MESSAGE_BYTES, 0x62),
        {
          authorization: device.password,
        },
      );
      expect(fits.status).toBe(200);
      const envelope = await envelopeWithId(hub, 'h-limit');
      expect(Buffer.from(String(envelope.body), 'base64')).toHaveLength(MAX_MESSAGE_BYTES);
    });

    it('400 for a malformed topic: bad URL encoding, a wildcard, a bad property bag, a bad qos', async () => {
      await refused('r-enc', '', device.password, 400, /not valid URL encoding/, {
        rawTopic: 'devices%2Fh1%2Fmessages%2Fevents%2F%ZZ',
      });
      await refused('r-wild', 'devices/h1/messages/events/#', device.password, 400, /wildcard/);
      await refused(
        'r-bag',
        'devices/h1/messages/events/$.mid=r-bag&$.bogus=1',
        device.password,
        400,
        /unknown system property '\$\.bogus'/,
      );
      await refused(
        'r-qos',
        'devices/h1/messages/events/$.mid=r-qos',
        device.password,
        400,
        /qos must be 0 or 1/,
        {
          query: 'qos=2',
        },
      );
    });

    it('answers 404 for other paths and 405 for other methods', async () => {
      const other404 = await fetch(`${hub.endpoints.httpPublish}/devices/h1/messages/events`, {
        method: 'POST',
        headers: { authorization: device.password },
        body: 'x',
      });
      expect(other404.status).toBe(404);
      const get = await fetch(`${hub.endpoints.httpPublish}/topics/devices%2Fh1%2Fmessages%2Fevents`, {
        headers: { authorization: device.password },
      });
      expect(get.status).toBe(405);
      expect(get.headers.get('allow')).toBe('POST');
    });

    it('put none of the refused messages anywhere: not on the built-in endpoint, not among the dead letters', async () => {
      // Later messages of the same devices arrive, so the earlier refused ones would have too.
      for (const [creds, mark] of [
        [device, 'after-h1'],
        [other, 'after-h-other'],
      ] as const) {
        const answer = await post(hub, `devices/${creds.clientId}/messages/events/$.mid=${mark}`, 'after', {
          authorization: creds.password,
        });
        expect(answer.status).toBe(200);
        await envelopeWithId(hub, mark);
      }
      const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, () => true);
      const text = JSON.stringify(records.map((r) => r.envelope));
      expect(refusedMarks.length).toBeGreaterThanOrEqual(14);
      for (const mark of refusedMarks) {
        expect(text).not.toContain(`"${mark}"`);
        expect(text).not.toContain(Buffer.from(`refused ${mark}`).toString('base64'));
      }
      expect(byDevice(records, 'h-ghost')).toEqual([]);
      expect(byDevice(records, 'h-off')).toEqual([]);
      const deadLetters = await deadLetterText(hub);
      for (const mark of refusedMarks) expect(deadLetters).not.toContain(mark);
    });
  });
});

describe('D2C over HTTPS: a 200 means durable', () => {
  it('loses none of the acknowledged posts when the hub is SIGKILLed right after the last 200', async () => {
    const dataDir = tempDataDir();
    const first = await startHubProcess({ dataDir });
    let creds: DeviceCredentials;
    try {
      creds = await registerDevice(first.endpoints, 'h-crash');
      for (let n = 0; n < 20; n++) {
        const answer = await post(first, `devices/h-crash/messages/events/$.mid=c${n}&n=${n}`, `c${n}`, {
          authorization: creds.password,
        });
        expect(answer.status).toBe(200);
      }
    } finally {
      await first.kill();
    }
    const second = await startHubProcess({ dataDir });
    try {
      const records = await waitForRecords(
        second.endpoints.kinesis,
        second.endpoints.builtInStream,
        (r) => new Set(byDevice(r, 'h-crash').map((x) => x.envelope.messageId)).size >= 20,
      );
      const ids = new Set(byDevice(records, 'h-crash').map((r) => r.envelope.messageId));
      expect([...ids].sort()).toEqual(Array.from({ length: 20 }, (_, n) => `c${n}`).sort());
    } finally {
      await second.stop();
    }
  });
});

describe('Basic Ingest on the local hub (hub.basicIngest on)', () => {
  let hub: HubProcess;
  let prefix: string;
  beforeAll(async () => {
    hub = await startHubWith({ basicIngest: true });
    prefix = hub.endpoints.basicIngestTopicPrefix;
  });
  afterAll(async () => {
    await hub?.stop();
  });

  it("publishes the ingest rule's Basic Ingest prefix", () => {
    expect(prefix).toMatch(/^\$aws\/rules\/[a-zA-Z0-9_]+\/$/);
  });

  it('takes a QoS 1 mqtt.js publish on $aws/rules/{rule}/devices/{id}/messages/events/... to the built-in endpoint', async () => {
    const creds = await registerDevice(hub.endpoints, 'bi-1');
    const client = await mqtt.connectAsync(hub.endpoints.mqtt, { ...creds });
    try {
      await client.publishAsync(
        `${prefix}devices/bi-1/messages/events/$.mid=bi-1&$.ct=application%2Fjson&k=v`,
        JSON.stringify({ basic: true }),
        { qos: 1 },
      );
    } finally {
      await client.endAsync();
    }
    const envelope = await envelopeWithId(hub, 'bi-1');
    expect(envelope.deviceId).toBe('bi-1');
    expect(envelope.properties).toEqual({ k: 'v' });
    expect(envelope.body).toEqual({ basic: true });
    expect(JSON.parse(envelope.systemProperties['iothub-connection-auth-method'] ?? '')).toMatchObject({
      type: 'sas',
    });
  });

  it('takes a Basic Ingest topic over HTTPS too', async () => {
    const creds = await registerDevice(hub.endpoints, 'bi-http');
    const answer = await post(hub, `${prefix}devices/bi-http/messages/events/$.mid=bi-http&h=1`, 'x', {
      authorization: creds.password,
    });
    expect(answer.status).toBe(200);
    expect((await envelopeWithId(hub, 'bi-http')).properties).toEqual({ h: '1' });
  });

  it('delivers a Basic Ingest publish to no subscriber: none may subscribe to it, nor is it re-published on the plain topic', async () => {
    const creds = await registerDevice(hub.endpoints, 'bi-sub');
    const client = await mqtt.connectAsync(hub.endpoints.mqtt, { ...creds });
    try {
      // Nobody may subscribe to a Basic Ingest topic (SUBACK 128, which mqtt.js reports as an error).
      await expect(
        client.subscribeAsync(`${prefix}devices/bi-sub/messages/events/#`, { qos: 1 }),
      ).rejects.toThrow(/Subscribe error/);
      await client.subscribeAsync('devices/bi-sub/messages/events/#', { qos: 1 });
      const received: string[] = [];
      client.on('message', (topic) => received.push(topic));
      await client.publishAsync(`${prefix}devices/bi-sub/messages/events/$.mid=bi-sub`, 'x', { qos: 1 });
      await envelopeWithId(hub, 'bi-sub');
      await client.publishAsync('devices/bi-sub/messages/events/$.mid=bi-sub-plain', 'y', { qos: 1 });
      await envelopeWithId(hub, 'bi-sub-plain');
      // The plain publish reached the subscription; the Basic Ingest one, published first, did not
      // (IoT Core's Basic Ingest skips the broker; the rule sees the plain topic, subscribers do not).
      await new Promise((r) => setTimeout(r, 200));
      expect(received).toEqual(['devices/bi-sub/messages/events/$.mid=bi-sub-plain']);
    } finally {
      await client.endAsync();
    }
  });

  it("refuses another device's Basic Ingest topic (no PUBACK, disconnected) and another rule's, with nothing delivered", async () => {
    const victim = await registerDevice(hub.endpoints, 'bi-victim');
    const intruder = await registerDevice(hub.endpoints, 'bi-intruder');
    for (const topic of [
      `${prefix}devices/bi-victim/messages/events/$.mid=bi-spoof`,
      '$aws/rules/SomeOtherRule/devices/bi-intruder/messages/events/$.mid=bi-other-rule',
    ]) {
      const client = await mqtt.connectAsync(hub.endpoints.mqtt, { ...intruder, reconnectPeriod: 0 });
      const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
      const outcome = await Promise.race([
        client.publishAsync(topic, 'spoof', { qos: 1 }).then(
          () => 'puback',
          () => 'refused',
        ),
        closed.then(() => 'closed'),
      ]);
      expect(outcome).not.toBe('puback');
      const escaped = topic.replace(/[.*+?^${}()|[\]\\$]/g, '\\$&');
      await hub.waitForLog(new RegExp(`publish refused, disconnecting: device 'bi-intruder' .*'${escaped}'`));
      client.end(true);
    }
    // The victim's own later message arrives; the spoofed one never does.
    const answer = await post(hub, `devices/bi-victim/messages/events/$.mid=bi-victim-after`, 'ok', {
      authorization: victim.password,
    });
    expect(answer.status).toBe(200);
    await envelopeWithId(hub, 'bi-victim-after');
    const records = await waitForRecords(hub.endpoints.kinesis, hub.endpoints.builtInStream, () => true);
    const ids = records.map((r) => r.envelope.messageId);
    expect(ids).not.toContain('bi-spoof');
    expect(ids).not.toContain('bi-other-rule');
    expect(byDevice(records, 'bi-intruder')).toEqual([]);
  });
});
