import { ScanCommand } from '@aws-sdk/client-dynamodb';
import { PutRuleCommand, PutTargetsCommand } from '@aws-sdk/client-eventbridge';
import { SubscribeCommand } from '@aws-sdk/client-sns';
import { CreateQueueCommand, DeleteQueueCommand, SetQueueAttributesCommand } from '@aws-sdk/client-sqs';
import avro from 'avsc';
import { startFauxqs } from 'fauxqs';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { D2CEnvelope } from '../../functions/core/d2c/envelope.ts';
import type { HubConfigInput } from '../../lib/config.ts';
import {
  localDynamoClient,
  localEventBridgeClient,
  localS3Client,
  localSnsClient,
  localSqsClient,
} from '../../local/emulators.ts';
import { type ReadRecord, waitForRecords } from '../support/built-in.ts';
import { registerDevice } from '../support/devices.ts';
import { createQueue, drainQueue, envelopeOf, type QueueMessage, readBucket } from '../support/endpoints.ts';
import { type HubProcess, startHubWith, tempDataDir } from '../support/hub-process.ts';

const HUB_NAME = 'endpoints-test-hub';

const CONFIG: HubConfigInput = {
  hubName: HUB_NAME,
  routing: {
    endpoints: [
      { name: 'orders', type: 'sqs' },
      { name: 'ordered', type: 'sqs', fifo: true },
      { name: 'fanout', type: 'sns' },
      { name: 'archive', type: 's3', format: 'json' },
      { name: 'archive-avro', type: 's3', format: 'avro' },
      { name: 'bus', type: 'eventbridge' },
      { name: 'hot', type: 'kinesis' },
    ],
    routes: [
      { name: 'critical', condition: "level = 'critical'", endpointNames: ['orders'] },
      { name: 'alarm', condition: "kind = 'alarm'", endpointNames: ['fanout'] },
      { name: 'archive', condition: "archive = 'yes'", endpointNames: ['archive'] },
      { name: 'floor-3', condition: '$body.site.floor = 3', endpointNames: ['archive-avro'] },
      { name: 'info', condition: "level = 'info'", endpointNames: ['bus'] },
      // Two routes, one condition: the ordered runs go to a FIFO queue and a stream alike.
      { name: 'run-fifo', condition: "run = 'order'", endpointNames: ['ordered'] },
      { name: 'run-stream', condition: "run = 'order'", endpointNames: ['hot'] },
    ],
    enrichments: [{ key: 'hub', value: '$iothubname', endpointNames: ['orders', 'bus', 'archive'] }],
  },
};

const TELEMETRY = (device: string, mid: string, props = '') =>
  `devices/${device}/messages/events/$.mid=${mid}&$.ct=application%2Fjson&$.ce=utf-8${props ? `&${props}` : ''}`;

const target = (hub: HubProcess, name: string): string => {
  const endpoint = hub.endpoints.customEndpoints[name];
  if (endpoint === undefined) throw new Error(`no custom endpoint '${name}' in endpoints.json`);
  return endpoint.target;
};

const midsOf = (envelopes: readonly D2CEnvelope[]) => envelopes.map((e) => e.messageId).sort();

describe('custom endpoints of every type on the local hub', () => {
  let hub: HubProcess;
  beforeAll(async () => {
    hub = await startHubWith(CONFIG);
  });
  afterAll(async () => {
    await hub?.stop();
  });

  it('routes by property and $body to SQS, SNS, S3 (JSON lines and Avro) and EventBridge, with enrichments', async () => {
    const e = hub.endpoints;
    expect(Object.fromEntries(Object.entries(e.customEndpoints).map(([n, x]) => [n, x.type]))).toEqual({
      orders: 'sqs',
      ordered: 'sqs',
      fanout: 'sns',
      archive: 's3',
      'archive-avro': 's3',
      bus: 'eventbridge',
      hot: 'kinesis',
    });
    const sqs = localSqsClient(e.awsServices);
    const sns = localSnsClient(e.awsServices);
    const events = localEventBridgeClient(e.eventBridge);
    const s3 = localS3Client(e.awsServices);
    try {
      // Consumers, as a user would attach them: a queue on the SNS topic, a rule with a queue target on the bus.
      const snsSubscriber = await createQueue(sqs, 'test-sns-subscriber');
      await sns.send(
        new SubscribeCommand({
          TopicArn: target(hub, 'fanout'),
          Protocol: 'sqs',
          Endpoint: snsSubscriber.arn,
          Attributes: { RawMessageDelivery: 'true' },
        }),
      );
      const busQueue = await createQueue(sqs, 'test-bus-target');
      await events.send(
        new PutRuleCommand({
          Name: 'device-messages',
          EventBusName: target(hub, 'bus'),
          EventPattern: JSON.stringify({ source: [`iothub.${HUB_NAME}`], 'detail-type': ['Device Message'] }),
        }),
      );
      await events.send(
        new PutTargetsCommand({
          Rule: 'device-messages',
          EventBusName: target(hub, 'bus'),
          Targets: [{ Id: 'queue', Arn: busQueue.arn }],
        }),
      );

      const device = await mqtt.connectAsync(e.mqtt, await registerDevice(e, 'ep-1'));
      const send = (mid: string, props: string, body: string) =>
        device.publishAsync(TELEMETRY('ep-1', mid, props), body, { qos: 1 });
      await send('crit-1', 'level=critical', '{"temp":1}');
      await send('crit-alarm', 'level=critical&kind=alarm', '{"temp":2}');
      await send('alarm-1', 'kind=alarm', '{"temp":3}');
      await send('arch-1', 'archive=yes', '{"temp":4}');
      await send('arch-2', 'archive=yes&level=info', '{"temp":5}');
      await send('floor-1', '', '{"site":{"floor":3},"temp":6}');
      await send('info-1', 'level=info', '{"temp":7}');
      await send('plain', '', '{"temp":8}');
      await device.endAsync();

      const orders = await drainQueue(sqs, target(hub, 'orders'), (m) => m.length >= 2);
      expect(midsOf(orders.map(envelopeOf))).toEqual(['crit-1', 'crit-alarm']);
      for (const m of orders) {
        expect(envelopeOf(m).properties.hub).toBe(HUB_NAME);
        expect(m.attributes['iothub-connection-device-id']).toBe('ep-1');
        expect(m.attributes['iothub-message-source']).toBe('Telemetry');
      }

      const fanout = await drainQueue(sqs, snsSubscriber.url, (m) => m.length >= 2);
      expect(midsOf(fanout.map(envelopeOf))).toEqual(['alarm-1', 'crit-alarm']);
      // No enrichment on this endpoint.
      expect(fanout.map((m) => envelopeOf(m).properties.hub)).toEqual([undefined, undefined]);

      const bus = await drainQueue(sqs, busQueue.url, (m) => m.length >= 2);
      const busEvents = bus.map((m) => JSON.parse(m.body) as { source: string; detail: D2CEnvelope });
      expect(busEvents.map((x) => x.source)).toEqual([`iothub.${HUB_NAME}`, `iothub.${HUB_NAME}`]);
      expect(midsOf(busEvents.map((x) => x.detail))).toEqual(['arch-2', 'info-1']);
      expect(busEvents[0]?.detail.properties.hub).toBe(HUB_NAME);

      const deadline = Date.now() + 30_000;
      let objects = await readBucket(s3, target(hub, 'archive'));
      while (objects.length === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 250));
        objects = await readBucket(s3, target(hub, 'archive'));
      }
      const lines = objects.flatMap((o) =>
        Buffer.from(o.body)
          .toString('utf8')
          .split('\n')
          .filter((l) => l !== '')
          .map((l) => JSON.parse(l) as D2CEnvelope),
      );
      expect(midsOf(lines)).toEqual(['arch-1', 'arch-2']);
      for (const o of objects)
        expect(o.key).toMatch(
          new RegExp(`^${HUB_NAME}/archive/\\d{4}/\\d{2}/\\d{2}/\\d{2}/\\d{2}/.+\\.jsonl$`),
        );
      expect(lines.every((l) => l.properties.hub === HUB_NAME)).toBe(true);

      let avroObjects = await readBucket(s3, target(hub, 'archive-avro'));
      while (avroObjects.length === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 250));
        avroObjects = await readBucket(s3, target(hub, 'archive-avro'));
      }
      expect(avroObjects).toHaveLength(1);
      expect(avroObjects[0]?.key).toMatch(/\.avro$/);
      const decoded = await decodeAvro(avroObjects[0]!.body);
      expect(decoded).toHaveLength(1);
      const [record] = decoded as { SystemProperties: Record<string, string>; Body: Buffer }[];
      // IoT Hub's Avro names for system properties.
      expect(record?.SystemProperties).toMatchObject({ messageId: 'floor-1', connectionDeviceId: 'ep-1' });
      expect(JSON.parse(record!.Body.toString('utf8'))).toEqual({ site: { floor: 3 }, temp: 6 });

      // Only 'plain' matched no route: the fallback route sent it to the built-in endpoint.
      const builtIn = await waitForRecords(e.kinesis, e.builtInStream, (r) =>
        r.some((x) => x.envelope.messageId === 'plain'),
      );
      expect(builtIn.filter((r) => r.envelope.deviceId === 'ep-1').map((r) => r.envelope.messageId)).toEqual([
        'plain',
      ]);
    } finally {
      sqs.destroy();
      sns.destroy();
      events.destroy();
      s3.destroy();
    }
  });

  it('keeps per-device order across 10 devices x 500 messages on a FIFO queue and a stream', async () => {
    const e = hub.endpoints;
    const perDevice = 500;
    const devices = Array.from({ length: 10 }, (_, d) => `run-${d}`);
    await Promise.all(
      devices.map(async (id) => {
        const client = await mqtt.connectAsync(e.mqtt, await registerDevice(e, id));
        // 20 publishes in flight per device: the front door must keep their order too.
        for (let i = 0; i < perDevice; i += 20) {
          await Promise.all(
            Array.from({ length: Math.min(20, perDevice - i) }, (_, k) =>
              client.publishAsync(TELEMETRY(id, `${id}-${i + k}`, 'run=order'), `{"n":${i + k}}`, { qos: 1 }),
            ),
          );
        }
        await client.endAsync();
      }),
    );
    const expected = (id: string) => Array.from({ length: perDevice }, (_, i) => `${id}-${i}`);
    // At least once: a message may repeat after a retry, but never overtakes an earlier one.
    const firstOccurrences = (mids: readonly string[]) => [...new Set(mids)];

    const stream = await waitForRecords(
      e.kinesis,
      target(hub, 'hot'),
      (r) => new Set(r.map((x) => x.envelope.messageId)).size >= devices.length * perDevice,
      180_000,
    );
    const sqs = localSqsClient(e.awsServices);
    try {
      const fifo = await drainQueue(
        sqs,
        target(hub, 'ordered'),
        (m) => new Set(m.map((x) => envelopeOf(x).messageId)).size >= devices.length * perDevice,
        180_000,
      );
      for (const id of devices) {
        const onStream = stream.filter((r: ReadRecord) => r.envelope.deviceId === id);
        expect(new Set(onStream.map((r) => r.shardId)).size).toBe(1);
        expect(firstOccurrences(onStream.map((r) => r.envelope.messageId))).toEqual(expected(id));
        const onQueue = fifo.filter((m: QueueMessage) => envelopeOf(m).deviceId === id);
        expect(new Set(onQueue.map((m) => m.groupId))).toEqual(new Set([id]));
        expect(firstOccurrences(onQueue.map((m) => envelopeOf(m).messageId))).toEqual(expected(id));
      }
    } finally {
      sqs.destroy();
    }
  });

  it('loses nothing while an endpoint is gone for a while (its queue deleted) and comes back', async () => {
    const e = hub.endpoints;
    const sqs = localSqsClient(e.awsServices);
    try {
      const queueUrl = target(hub, 'orders');
      const queueName = queueUrl.split('/').at(-1) ?? '';
      await sqs.send(new DeleteQueueCommand({ QueueUrl: queueUrl }));
      const failuresBefore = hub.logs.filter((l) => l.includes('endpoint write failed')).length;

      const device = await mqtt.connectAsync(e.mqtt, await registerDevice(e, 'outage-1'));
      for (let i = 0; i < 20; i++) {
        await device.publishAsync(TELEMETRY('outage-1', `out-${i}`, 'level=critical'), '{}', { qos: 1 });
      }
      await device.publishAsync(TELEMETRY('outage-1', 'bystander'), '{}', { qos: 1 });
      await device.endAsync();

      // The router really fails against the missing queue before the queue comes back.
      const deadline = Date.now() + 30_000;
      while (hub.logs.filter((l) => l.includes('endpoint write failed')).length <= failuresBefore) {
        if (Date.now() > deadline) throw new Error('the router never failed against the deleted queue');
        await new Promise((r) => setTimeout(r, 100));
      }
      await new Promise((r) => setTimeout(r, 2_000));
      const recreated = await sqs.send(new CreateQueueCommand({ QueueName: queueName }));
      expect(recreated.QueueUrl).toBe(queueUrl);

      const arrived = await drainQueue(
        sqs,
        queueUrl,
        (m) => new Set(m.map((x) => envelopeOf(x).messageId)).size >= 20,
        90_000,
      );
      expect([...new Set(arrived.map((m) => envelopeOf(m).messageId))].sort()).toEqual(
        Array.from({ length: 20 }, (_, i) => `out-${i}`).sort(),
      );
      // The message behind them on the same shard was held back, not lost.
      const builtIn = await waitForRecords(e.kinesis, e.builtInStream, (r) =>
        r.some((x) => x.envelope.messageId === 'bystander'),
      );
      expect(builtIn.some((x) => x.envelope.messageId === 'bystander')).toBe(true);
    } finally {
      sqs.destroy();
    }
  });
  it('dead-letters a message the queue refuses for good (too large for it) and keeps the messages behind it flowing', async () => {
    const e = hub.endpoints;
    const sqs = localSqsClient(e.awsServices);
    const dynamo = localDynamoClient(e.dynamodb);
    const queueUrl = target(hub, 'orders');
    const gaveUp = () => hub.logs.filter((l) => l.includes('endpoint write gave up')).length;
    const gaveUpBefore = gaveUp();
    try {
      // An operator lowers the queue's limit: a 2 KB message can never be sent to it again.
      await sqs.send(
        new SetQueueAttributesCommand({ QueueUrl: queueUrl, Attributes: { MaximumMessageSize: '1024' } }),
      );
      const device = await mqtt.connectAsync(e.mqtt, await registerDevice(e, 'refused-1'));
      await device.publishAsync(
        TELEMETRY('refused-1', 'too-big', 'level=critical'),
        `{"pad":"${'x'.repeat(2000)}"}`,
        {
          qos: 1,
        },
      );
      await device.publishAsync(TELEMETRY('refused-1', 'after', 'level=critical'), '{}', { qos: 1 });
      await device.endAsync();

      const arrived = await drainQueue(sqs, queueUrl, (m) =>
        m.some((x) => envelopeOf(x).messageId === 'after'),
      );
      expect(arrived.map((m) => envelopeOf(m).messageId)).toEqual(['after']);
      const deadline = Date.now() + 30_000;
      let letters: Record<string, { S?: string }>[] = [];
      while (letters.length === 0 && Date.now() < deadline) {
        const scan = await dynamo.send(new ScanCommand({ TableName: e.deadLetterTable }));
        letters = (scan.Items ?? []).filter((i) => i.deviceId?.S === 'refused-1') as typeof letters;
        if (letters.length === 0) await new Promise((r) => setTimeout(r, 250));
      }
      expect(letters).toHaveLength(1);
      expect(letters[0]?.code?.S).toBe('EndpointRejected');
      expect(letters[0]?.sk?.S).toMatch(/@orders$/);
      expect(letters[0]?.reason?.S).toMatch(/^endpoint 'orders' refused the message: /);
      // The original record is kept, to replay once the queue takes it again.
      expect(letters[0]?.record?.S).toContain('too-big');
      // Refused once, not retried until the event source gave up.
      expect(gaveUp()).toBe(gaveUpBefore);
    } finally {
      await sqs.send(
        new SetQueueAttributesCommand({ QueueUrl: queueUrl, Attributes: { MaximumMessageSize: '1048576' } }),
      );
      sqs.destroy();
      dynamo.destroy();
    }
  });
});

describe('a router crash mid-batch with custom endpoints', () => {
  it('loses nothing on a FIFO queue and a stream across a SIGKILL and a restart', async () => {
    // The endpoints' emulator runs here, outside the hub, so that it outlives the crash as AWS would.
    const services = await startFauxqs({ host: '127.0.0.1', port: 0, logger: false });
    const dataDir = tempDataDir('routing-crash-');
    const options = { dataDir, args: [`--aws-services-url=${services.address}`] };
    let hub = await startHubWith(CONFIG, options);
    try {
      const device = await mqtt.connectAsync(hub.endpoints.mqtt, {
        ...(await registerDevice(hub.endpoints, 'crash-r')),
        reconnectPeriod: 0,
      });
      device.on('error', () => undefined);
      const acked: string[] = [];
      let n = 0;
      let stop = false;
      const pump = async () => {
        while (!stop) {
          const id = `k${n++}`;
          try {
            await device.publishAsync(TELEMETRY('crash-r', id, 'run=order'), '{}', { qos: 1 });
            acked.push(id);
          } catch {
            return;
          }
        }
      };
      for (let i = 0; i < 10; i++) void pump();
      // Kill while the router is busy: some records routed, many still on the ingest stream.
      await waitForRecords(hub.endpoints.kinesis, target(hub, 'hot'), (r) => r.length >= 50, 60_000);
      await hub.kill();
      stop = true;
      device.end(true);
      expect(acked.length).toBeGreaterThan(50);

      hub = await startHubWith(CONFIG, options);
      const want = new Set(acked);
      const stream = await waitForRecords(
        hub.endpoints.kinesis,
        target(hub, 'hot'),
        (r) => [...want].every((id) => r.some((x) => x.envelope.messageId === id)),
        120_000,
      );
      const sqs = localSqsClient(services.address);
      try {
        const fifo = await drainQueue(
          sqs,
          target(hub, 'ordered'),
          (m) => {
            const got = new Set(m.map((x) => envelopeOf(x).messageId));
            return [...want].every((id) => got.has(id));
          },
          120_000,
        );
        const order = (mids: readonly string[]) =>
          [...new Set(mids)].filter((id) => want.has(id)).map((id) => Number(id.slice(1)));
        // Publishes in flight together may be acknowledged in any order, but the hub keeps the order it took them in.
        const streamOrder = order(
          stream.filter((r) => r.envelope.deviceId === 'crash-r').map((r) => r.envelope.messageId),
        );
        const fifoOrder = order(fifo.map((m) => envelopeOf(m).messageId));
        expect(streamOrder).toHaveLength(want.size);
        expect(fifoOrder).toEqual(streamOrder);
      } finally {
        sqs.destroy();
      }
    } finally {
      await hub.stop();
      await services.stop();
    }
  });
});

/** Decodes an Avro object container file into its records. */
function decodeAvro(bytes: Uint8Array): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const records: unknown[] = [];
    const decoder = new avro.streams.BlockDecoder();
    decoder.on('data', (r: unknown) => records.push(r));
    decoder.on('end', () => resolve(records));
    decoder.on('error', reject);
    decoder.end(Buffer.from(bytes));
  });
}
