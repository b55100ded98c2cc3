import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import type { SNSClient } from '@aws-sdk/client-sns';
import {
  DeleteMessageCommand,
  type Message,
  ReceiveMessageCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import avro from 'avsc';
import { type FauxqsServer, startFauxqs } from 'fauxqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { s3PathStyle } from '../../functions/adapters/aws-clients.ts';
import { endpointSink } from '../../functions/adapters/endpoint-sinks.ts';
import { EventBridgeSink } from '../../functions/adapters/eventbridge-sink.ts';
import { KinesisStreamSink } from '../../functions/adapters/kinesis-sink.ts';
import {
  AVRO_SYSTEM_PROPERTY_NAMES,
  avroRecordToEnvelope,
  S3_MAX_ENTRIES,
  type S3AvroMessage,
  S3Sink,
  s3ObjectKey,
} from '../../functions/adapters/s3-sink.ts';
import { SNS_LIMITS, SnsSink } from '../../functions/adapters/sns-sink.ts';
import {
  ATTRIBUTE_RESERVE_BYTES,
  DEVICE_ID_ATTRIBUTE,
  fifoId,
  MESSAGE_SOURCE_ATTRIBUTE,
  messageText,
  SQS_LIMITS,
  SqsSink,
} from '../../functions/adapters/sqs-sink.ts';
import { buildEnvelope, type D2CEnvelope, decodeEnvelope } from '../../functions/core/d2c/envelope.ts';
import type { StreamEntry } from '../../functions/core/ports.ts';
import { routingConfigSchema, S3_MAX_CHUNK_BYTES } from '../../functions/core/routing/config.ts';
import { localS3Client, localSnsClient, localSqsClient } from '../../local/emulators.ts';

const NOW = new Date('2030-01-02T03:04:05.000Z');

let server: FauxqsServer;
let sqs: SQSClient;
let sns: SNSClient;
let s3: S3Client;

beforeAll(async () => {
  server = await startFauxqs({ port: 0, logger: false, host: '127.0.0.1' });
  sqs = localSqsClient(server.address);
  sns = localSnsClient(server.address);
  s3 = localS3Client(server.address);
});

afterAll(async () => {
  sqs?.destroy();
  sns?.destroy();
  s3?.destroy();
  await server?.stop();
});

/** A real envelope, as the router builds it: JSON body, or binary (base64) when `binary`. */
function envelopeOf(device: string, mid: string, options: { binary?: boolean; props?: string } = {}) {
  const bag = options.binary
    ? `$.mid=${mid}${options.props ? `&${options.props}` : ''}`
    : `$.mid=${mid}&$.ct=application%2Fjson&$.ce=utf-8${options.props ? `&${options.props}` : ''}`;
  const body = options.binary ? Buffer.from([0, 1, 2, 254, 255, mid.length]) : Buffer.from(`{"n":"${mid}"}`);
  return buildEnvelope(
    {
      topic: `devices/${device}/messages/events/${bag}`,
      clientId: device,
      principal: `sas:${device}`,
      enqueuedTime: NOW.getTime(),
      ingestId: `ingest-${mid}`,
      body: body.toString('base64'),
    },
    { maxMessageBytes: 256 * 1024 },
  );
}

/** The stream entry the router makes of an envelope. */
function entryOf(envelope: D2CEnvelope): StreamEntry {
  return {
    partitionKey: envelope.deviceId,
    data: Buffer.from(JSON.stringify(envelope)),
    id: `ingest-${envelope.messageId}`,
    messageSource: envelope.systemProperties['iothub-message-source'] ?? 'Telemetry',
  };
}

const entry = (device: string, mid: string, options?: { binary?: boolean; props?: string }) =>
  entryOf(envelopeOf(device, mid, options));

/** Receives (and deletes) every message of a queue, in receive order. */
async function drain(queueUrl: string, expected: number): Promise<Message[]> {
  const out: Message[] = [];
  for (let empty = 0; out.length < expected || empty < 1; ) {
    const got = await sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: queueUrl,
        MaxNumberOfMessages: 10,
        WaitTimeSeconds: 0,
        MessageAttributeNames: ['All'],
        MessageSystemAttributeNames: ['All'],
      }),
    );
    const messages = got.Messages ?? [];
    if (messages.length === 0) {
      empty += 1;
      if (out.length < expected) await new Promise((r) => setTimeout(r, 20));
      if (empty > 50) break;
      continue;
    }
    for (const m of messages) {
      out.push(m);
      await sqs.send(new DeleteMessageCommand({ QueueUrl: queueUrl, ReceiptHandle: m.ReceiptHandle }));
    }
  }
  return out;
}

const attr = (m: Message, name: string) => m.MessageAttributes?.[name]?.StringValue;
const midOf = (m: Message) => decodeEnvelope(m.Body ?? '').messageId;

describe('SqsSink', () => {
  it('writes a standard batch whose messages read back as the envelopes, with filterable attributes', async () => {
    const { queueUrl } = server.createQueue('standard-q');
    const sink = new SqsSink(sqs, queueUrl);
    const entries = Array.from({ length: 10 }, (_, i) => entry(`dev-${i}`, `m-${i}`));
    expect(await sink.put(entries)).toEqual(entries.map(() => true));

    const messages = await drain(queueUrl, 10);
    expect(messages.map(midOf).sort()).toEqual(entries.map((_, i) => `m-${i}`).sort());
    for (const m of messages) {
      const envelope = decodeEnvelope(m.Body ?? '');
      expect(m.Body).toBe(JSON.stringify(envelope));
      expect(attr(m, DEVICE_ID_ATTRIBUTE)).toBe(envelope.deviceId);
      expect(attr(m, MESSAGE_SOURCE_ATTRIBUTE)).toBe('Telemetry');
      expect(m.Attributes?.MessageGroupId).toBeUndefined();
    }
  });

  it('omits the message source attribute when the entry has none, and writes nothing for no entries', async () => {
    const { queueUrl } = server.createQueue('no-source-q');
    const sink = new SqsSink(sqs, queueUrl);
    const { messageSource: _, ...plain } = entry('d1', 'plain');
    expect(await sink.put([])).toEqual([]);
    expect(await sink.put([plain])).toEqual([true]);
    const [m] = await drain(queueUrl, 1);
    expect(attr(m!, DEVICE_ID_ATTRIBUTE)).toBe('d1');
    expect(m!.MessageAttributes?.[MESSAGE_SOURCE_ATTRIBUTE]).toBeUndefined();
  });

  it('keeps per-device order on a FIFO queue across calls and drops a retried message', async () => {
    const { queueUrl } = server.createQueue('ordered-q.fifo', {
      attributes: { FifoQueue: 'true' },
    });
    expect(queueUrl.endsWith('.fifo')).toBe(true);
    const sink = new SqsSink(sqs, queueUrl);
    // What the router sends: at most one entry per device per call.
    const calls = [
      [entry('a', 'a-0'), entry('b', 'b-0')],
      [entry('b', 'b-1'), entry('a', 'a-1')],
      [entry('a', 'a-2')],
      // A retry of a-1 (say its first result was lost): same id, so SQS drops it.
      [entry('a', 'a-1'), entry('b', 'b-2')],
    ];
    for (const call of calls) expect(await sink.put(call)).toEqual(call.map(() => true));

    const messages = await drain(queueUrl, 6);
    expect(messages).toHaveLength(6);
    const ids = (device: string) =>
      messages.filter((m) => attr(m, DEVICE_ID_ATTRIBUTE) === device).map(midOf);
    expect(ids('a')).toEqual(['a-0', 'a-1', 'a-2']);
    expect(ids('b')).toEqual(['b-0', 'b-1', 'b-2']);
    for (const m of messages) {
      expect(m.Attributes?.MessageGroupId).toBe(attr(m, DEVICE_ID_ATTRIBUTE));
      expect(m.Attributes?.MessageDeduplicationId).toBe(`ingest-${midOf(m)}`);
    }
  });

  it('uses a stable hash for FIFO ids outside the allowed set', async () => {
    const { queueUrl } = server.createQueue('hashed-q.fifo', { attributes: { FifoQueue: 'true' } });
    const sink = new SqsSink(sqs, queueUrl);
    const odd: StreamEntry = { ...entry('dev ü', 'odd'), id: 'id with spaces and ü' };
    expect(await sink.put([odd])).toEqual([true]);
    expect(await sink.put([odd])).toEqual([true]); // deduplicated
    const messages = await drain(queueUrl, 1);
    expect(messages).toHaveLength(1);
    expect(messages[0]?.Attributes?.MessageGroupId).toMatch(/^[0-9a-f]{64}$/);
    expect(messages[0]?.Attributes?.MessageDeduplicationId).toBe(fifoId('id with spaces and ü'));
    expect(fifoId('ingest-0b9c-uuid')).toBe('ingest-0b9c-uuid');
    expect(fifoId('x'.repeat(129))).toMatch(/^[0-9a-f]{64}$/);
  });

  it('throws while its queue is gone and writes again once it is back', async () => {
    const { queueUrl } = server.createQueue('gone-q');
    const sink = new SqsSink(sqs, queueUrl);
    server.deleteQueue('gone-q');
    await expect(sink.put([entry('a', 'lost')])).rejects.toThrow();
    server.createQueue('gone-q');
    expect(await sink.put([entry('a', 'back')])).toEqual([true]);
    expect((await drain(queueUrl, 1)).map(midOf)).toEqual(['back']);
  });

  it("reports per entry: an entry SQS refuses as the sender's fault comes back rejected, with the reason, the others true", async () => {
    const { queueUrl } = server.createQueue('small-q', { attributes: { MaximumMessageSize: '1024' } });
    const sink = new SqsSink(sqs, queueUrl);
    const big = entry('b', `big-${'x'.repeat(2000)}`);
    const [first, refused, last] = await sink.put([entry('a', 'ok-1'), big, entry('c', 'ok-2')]);
    expect([first, last]).toEqual([true, true]);
    expect(refused).toEqual({ rejected: expect.stringMatching(/\S+: .+/) });
  });

  it('has limits a full call at them fits in: 10 entries, 1 MiB with attributes', async () => {
    expect(SQS_LIMITS).toEqual({
      maxEntries: 10,
      maxBytes: 1024 * 1024 - 10 * ATTRIBUTE_RESERVE_BYTES,
      maxEntryBytes: 1024 * 1024 - 10 * ATTRIBUTE_RESERVE_BYTES,
    });
    const { queueUrl } = server.createQueue('full-q');
    const sink = new SqsSink(sqs, queueUrl);
    const each = Math.floor(SQS_LIMITS.maxBytes / 10);
    // Worst-case attributes: a 128-character device id and the longest message source.
    const full = Array.from({ length: 10 }, (_, i) => sized(`${i}`.padEnd(128, 'd'), each));
    expect(await sink.put(full)).toEqual(full.map(() => true));
    expect(await sink.put([sized('d'.repeat(128), SQS_LIMITS.maxEntryBytes)])).toEqual([true]);
    expect((await drain(queueUrl, 11)).length).toBe(11);
  });

  it('escapes the two characters SQS refuses and emoji, keeping the JSON value', async () => {
    const { queueUrl } = server.createQueue('chars-q');
    const sink = new SqsSink(sqs, queueUrl);
    const value = { s: 'a\uffffb\ufffec', e: 'hot 🔥 ü' };
    const data = Buffer.from(JSON.stringify(value));
    expect(messageText(data)).toBe('{"s":"a\\uffffb\\ufffec","e":"hot \\ud83d\\udd25 ü"}');
    expect(await sink.put([{ partitionKey: 'd', data, id: 'chars' }])).toEqual([true]);
    const [m] = await drain(queueUrl, 1);
    expect(JSON.parse(m!.Body ?? '')).toEqual(value);
  });
});

/** An entry of exactly `bytes` bytes of JSON, with worst-case attributes. */
function sized(device: string, bytes: number): StreamEntry {
  const skeleton = JSON.stringify({ pad: '' });
  return {
    partitionKey: device,
    data: Buffer.from(JSON.stringify({ pad: 'p'.repeat(bytes - skeleton.length) })),
    id: `sized-${device}-${bytes}`,
    messageSource: 'deviceConnectionStateEvents',
  };
}

describe('SnsSink', () => {
  it('publishes a batch that an SQS subscription receives with the attributes', async () => {
    const { topicArn } = server.createTopic('hub-topic');
    const { queueUrl } = server.createQueue('hub-topic-sub');
    server.subscribe({
      topic: 'hub-topic',
      queue: 'hub-topic-sub',
      attributes: { RawMessageDelivery: 'true' },
    });
    const sink = new SnsSink(sns, topicArn);
    expect(sink.limits).toBe(SNS_LIMITS);
    const entries = [entry('a', 'sns-0'), entry('b', 'sns-1', { binary: true }), entry('a', 'sns-2')];
    expect(await sink.put(entries)).toEqual([true, true, true]);

    const messages = await drain(queueUrl, 3);
    expect(messages.map(midOf).sort()).toEqual(['sns-0', 'sns-1', 'sns-2']);
    for (const m of messages) {
      const envelope = decodeEnvelope(m.Body ?? '');
      expect(envelope).toEqual(
        envelopeOf(envelope.deviceId, envelope.messageId, { binary: envelope.messageId === 'sns-1' }),
      );
      expect(attr(m, DEVICE_ID_ATTRIBUTE)).toBe(envelope.deviceId);
      expect(attr(m, MESSAGE_SOURCE_ATTRIBUTE)).toBe('Telemetry');
    }
  });

  it('carries the attributes in the notification when delivery is not raw', async () => {
    const { topicArn } = server.createTopic('wrapped-topic');
    const { queueUrl } = server.createQueue('wrapped-sub');
    server.subscribe({ topic: 'wrapped-topic', queue: 'wrapped-sub' });
    expect(await new SnsSink(sns, topicArn).put([entry('w', 'wrapped')])).toEqual([true]);
    const [m] = await drain(queueUrl, 1);
    const notification = JSON.parse(m!.Body ?? '') as {
      Message: string;
      MessageAttributes: Record<string, { Value: string }>;
    };
    expect(decodeEnvelope(notification.Message).messageId).toBe('wrapped');
    expect(notification.MessageAttributes[DEVICE_ID_ATTRIBUTE]?.Value).toBe('w');
    expect(notification.MessageAttributes[MESSAGE_SOURCE_ATTRIBUTE]?.Value).toBe('Telemetry');
  });

  it('keeps per-device order through a FIFO topic and drops a retried message', async () => {
    const { topicArn } = server.createTopic('ordered-topic.fifo', {
      attributes: { FifoTopic: 'true' },
    });
    const { queueUrl } = server.createQueue('ordered-sub.fifo', { attributes: { FifoQueue: 'true' } });
    server.subscribe({
      topic: 'ordered-topic.fifo',
      queue: 'ordered-sub.fifo',
      attributes: { RawMessageDelivery: 'true' },
    });
    const sink = new SnsSink(sns, topicArn);
    const calls = [
      [entry('a', 'fa-0'), entry('b', 'fb-0')],
      [entry('a', 'fa-1')],
      [entry('a', 'fa-1'), entry('b', 'fb-1')],
    ];
    for (const call of calls) expect(await sink.put(call)).toEqual(call.map(() => true));
    const messages = await drain(queueUrl, 4);
    const ids = (device: string) =>
      messages.filter((m) => attr(m, DEVICE_ID_ATTRIBUTE) === device).map(midOf);
    expect(ids('a')).toEqual(['fa-0', 'fa-1']);
    expect(ids('b')).toEqual(['fb-0', 'fb-1']);
    for (const m of messages) expect(m.Attributes?.MessageGroupId).toBe(attr(m, DEVICE_ID_ATTRIBUTE));
  });

  it('throws for a topic that does not exist', async () => {
    const sink = new SnsSink(sns, 'arn:aws:sns:us-east-1:000000000000:no-such-topic');
    await expect(sink.put([entry('a', 'x')])).rejects.toThrow();
  });

  it('has 256 KiB limits a full message fits in, or a raised topic maximum', async () => {
    expect(SNS_LIMITS).toEqual({
      maxEntries: 10,
      maxBytes: 256 * 1024 - 10 * ATTRIBUTE_RESERVE_BYTES,
      maxEntryBytes: 256 * 1024 - 10 * ATTRIBUTE_RESERVE_BYTES,
    });
    expect(new SnsSink(sns, 'arn:x', { maxCallBytes: 1024 * 1024 }).limits.maxEntryBytes).toBe(
      1024 * 1024 - 10 * ATTRIBUTE_RESERVE_BYTES,
    );
    const { topicArn } = server.createTopic('big-topic');
    const sink = new SnsSink(sns, topicArn);
    expect(await sink.put([sized('d'.repeat(128), SNS_LIMITS.maxEntryBytes)])).toEqual([true]);
    expect(await sink.put([sized('d', 256 * 1024 + 1)])).toEqual([{ rejected: expect.any(String) }]);
  });
});

async function objectBytes(bucket: string, key: string) {
  const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return { bytes: Buffer.from(await got.Body!.transformToByteArray()), contentType: got.ContentType };
}

async function keys(bucket: string, prefix = ''): Promise<string[]> {
  const listed = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
  return (listed.Contents ?? []).map((o) => o.Key ?? '').sort();
}

/** Decodes an Avro object container file with avsc, independently of the sink. */
async function avroRecords(bytes: Buffer): Promise<{ records: S3AvroMessage[]; schema: unknown }> {
  const decoder = new avro.streams.BlockDecoder();
  const records: S3AvroMessage[] = [];
  let schema: unknown;
  decoder.on('metadata', (type: avro.Type) => {
    schema = type.schema();
  });
  const done = new Promise<void>((resolve, reject) => {
    decoder.on('data', (record: S3AvroMessage) => records.push(record));
    decoder.on('end', resolve);
    decoder.on('error', reject);
  });
  decoder.end(bytes);
  await done;
  return { records, schema };
}

describe('S3Sink', () => {
  let clock = NOW;
  const now = () => clock;

  it('writes one JSON lines object per call under the documented key', async () => {
    server.createBucket('jsonl-bucket');
    const sink = new S3Sink(s3, { bucket: 'jsonl-bucket', hubName: 'my-hub', endpointName: 'archive', now });
    const envelopes = [
      envelopeOf('a', 'j-0'),
      envelopeOf('a', 'j-1'),
      envelopeOf('b', 'j-2', { binary: true }),
    ];
    const entries = envelopes.map(entryOf);
    expect(await sink.put(entries)).toEqual([true, true, true]);

    const key = s3ObjectKey({
      hubName: 'my-hub',
      endpointName: 'archive',
      format: 'json',
      time: NOW,
      entries,
    });
    expect(key).toMatch(/^my-hub\/archive\/2030\/01\/02\/03\/04\/ingest-j-0-[0-9a-f]{16}\.jsonl$/);
    expect(await keys('jsonl-bucket')).toEqual([key]);
    const { bytes, contentType } = await objectBytes('jsonl-bucket', key);
    expect(contentType).toBe('application/x-ndjson');
    const text = bytes.toString('utf8');
    expect(text.endsWith('\n')).toBe(true);
    const lines = text.split('\n').slice(0, -1);
    expect(lines.map((l) => decodeEnvelope(l))).toEqual(envelopes);
  });

  it('overwrites the object on a retry of the same entries, even a minute later; other entries get another key', async () => {
    server.createBucket('retry-bucket');
    clock = new Date('2030-01-02T03:04:59.900Z');
    const sink = new S3Sink(s3, { bucket: 'retry-bucket', hubName: 'h', endpointName: 'e', now });
    const entries = [entry('a', 'r-0'), entry('b', 'r-1'), entry('a', 'r-2')];
    await sink.put(entries);
    clock = new Date('2030-01-02T03:06:00.000Z');
    await sink.put(entries);
    expect(await keys('retry-bucket')).toHaveLength(1);
    expect((await keys('retry-bucket'))[0]).toMatch(/^h\/e\/2030\/01\/02\/03\/04\/ingest-r-0-/);

    // Same first entry, fewer entries (a batch the router cut differently): a new object, nothing lost.
    await sink.put(entries.slice(0, 2));
    const all = await keys('retry-bucket');
    expect(all).toHaveLength(2);
    expect(all[1]).toMatch(/^h\/e\/2030\/01\/02\/03\/06\/ingest-r-0-/);
    clock = NOW;
  });

  it('keeps the same key for the same entries whatever their data, and names entries without a key-safe id by digest', () => {
    const input = { hubName: 'h', endpointName: 'e', format: 'avro' as const, time: NOW };
    const a = [entry('a', 'k-0')];
    const changed = [{ ...a[0]!, data: Buffer.from('{}') }];
    expect(s3ObjectKey({ ...input, entries: a })).toBe(s3ObjectKey({ ...input, entries: changed }));
    expect(s3ObjectKey({ ...input, entries: a })).toMatch(/\/ingest-k-0-[0-9a-f]{16}\.avro$/);
    const odd = { ...a[0]!, id: 'a/b c' };
    expect(s3ObjectKey({ ...input, entries: [odd] })).toMatch(
      /\/2030\/01\/02\/03\/04\/[0-9a-f]{32}-[0-9a-f]{16}\.avro$/,
    );
    expect(() => s3ObjectKey({ ...input, entries: [] })).toThrow();
  });

  it('writes an Avro object container file that avsc decodes back to the envelopes', async () => {
    server.createBucket('avro-bucket');
    const sink = new S3Sink(s3, {
      bucket: 'avro-bucket',
      hubName: 'my-hub',
      endpointName: 'cold',
      format: 'avro',
      maxChunkSizeInBytes: 64 * 1024,
      now,
    });
    const envelopes = [
      envelopeOf('a', 'v-0', { props: 'level=critical&site=north' }),
      envelopeOf('a', 'v-1', { binary: true }),
      envelopeOf('b', 'v-2', { props: '$.cid=corr-1' }),
    ];
    const entries = envelopes.map(entryOf);
    expect(await sink.put(entries)).toEqual([true, true, true]);

    const key = s3ObjectKey({ hubName: 'my-hub', endpointName: 'cold', format: 'avro', time: NOW, entries });
    expect(key).toMatch(/^my-hub\/cold\/2030\/01\/02\/03\/04\/ingest-v-0-[0-9a-f]{16}\.avro$/);
    const { bytes, contentType } = await objectBytes('avro-bucket', key);
    expect(contentType).toBe('application/avro');
    expect(bytes.subarray(0, 4).toString('latin1')).toBe('Obj\u0001');

    const { records, schema } = await avroRecords(bytes);
    expect(schema).toMatchObject({ type: 'record', name: 'Microsoft.Azure.Devices.Message' });
    expect(records.map(avroRecordToEnvelope)).toEqual(envelopes);

    const [first, binary, third] = records;
    expect(first?.EnqueuedTimeUtc).toBe(NOW.toISOString());
    expect(first?.Properties).toEqual({ level: 'critical', site: 'north' });
    expect(first?.SystemProperties).toMatchObject({
      messageId: 'v-0',
      connectionDeviceId: 'a',
      contentType: 'application/json',
      contentEncoding: 'utf-8',
      enqueuedTime: NOW.toISOString(),
      messageSource: 'Telemetry',
    });
    expect(Object.keys(first?.SystemProperties ?? {}).filter((k) => k.includes('-'))).toEqual([]);
    expect(Buffer.from(first!.Body).toString('utf8')).toBe('{"n":"v-0"}');
    expect(Buffer.from(binary!.Body)).toEqual(Buffer.from([0, 1, 2, 254, 255, 3]));
    expect(third?.SystemProperties.correlationId).toBe('corr-1');
    expect(AVRO_SYSTEM_PROPERTY_NAMES['iothub-connection-device-id']).toBe('connectionDeviceId');

    // A retry rewrites a byte-identical object (the sync marker comes from the batch).
    await sink.put(entries);
    expect((await objectBytes('avro-bucket', key)).bytes.equals(bytes)).toBe(true);
  });

  it('is atomic, with the chunk size as its byte limits', () => {
    const sink = new S3Sink(s3, {
      bucket: 'b',
      hubName: 'h',
      endpointName: 'e',
      maxChunkSizeInBytes: 128 * 1024,
    });
    expect(sink.limits).toEqual({
      maxEntries: S3_MAX_ENTRIES,
      maxBytes: 128 * 1024,
      maxEntryBytes: 128 * 1024,
      atomic: true,
    });
    expect(new S3Sink(s3, { bucket: 'b', hubName: 'h', endpointName: 'e' }).limits.maxBytes).toBe(
      S3_MAX_CHUNK_BYTES,
    );
  });

  it('throws when the bucket does not exist', async () => {
    const sink = new S3Sink(s3, { bucket: 'no-such-bucket', hubName: 'h', endpointName: 'e' });
    await expect(sink.put([entry('a', 'x')])).rejects.toThrow();
  });
});

describe('endpointSink', () => {
  const config = routingConfigSchema.parse({
    endpoints: [
      { name: 'q', type: 'sqs', fifo: true },
      { name: 't', type: 'sns' },
      { name: 'bucket', type: 's3', format: 'avro', maxChunkSizeInBytes: 1024 * 1024 },
      { name: 'k', type: 'kinesis' },
    ],
  });
  const configOf = (name: string) => config.endpoints.find((e) => e.name === name);

  it('makes the sink of each type, with the endpoint configuration', () => {
    const hub = { hubName: 'h' };
    expect(endpointSink('k', { type: 'kinesis', target: 'stream' }, hub)).toBeInstanceOf(KinesisStreamSink);
    expect(endpointSink('eb', { type: 'eventbridge', target: 'bus' }, hub)).toBeInstanceOf(EventBridgeSink);
    expect(
      endpointSink('q', { type: 'sqs', target: 'https://sqs/q' }, { ...hub, config: configOf('q') }),
    ).toBeInstanceOf(SqsSink);
    expect(
      endpointSink('t', { type: 'sns', target: 'arn:t' }, { ...hub, config: configOf('t') }).limits,
    ).toBe(SNS_LIMITS);
    const s3Sink = endpointSink(
      'bucket',
      { type: 's3', target: 'b' },
      { ...hub, config: configOf('bucket') },
    );
    expect(s3Sink).toBeInstanceOf(S3Sink);
    expect(s3Sink.limits).toMatchObject({ maxBytes: 1024 * 1024, atomic: true });
    expect(endpointSink('bucket', { type: 's3', target: 'b' }, hub).limits?.maxBytes).toBe(
      S3_MAX_CHUNK_BYTES,
    );
  });

  it('refuses a configuration of another endpoint or type', () => {
    expect(() =>
      endpointSink('q', { type: 's3', target: 'b' }, { hubName: 'h', config: configOf('q') }),
    ).toThrow(/type/);
    expect(() =>
      endpointSink('other', { type: 'sqs', target: 'u' }, { hubName: 'h', config: configOf('q') }),
    ).toThrow();
  });

  it('writes through the FIFO sink the configuration asks for', async () => {
    const { queueUrl } = server.createQueue('configured.fifo', { attributes: { FifoQueue: 'true' } });
    const sink = new SqsSink(sqs, queueUrl, { fifo: true });
    expect(await sink.put([entry('a', 'cfg')])).toEqual([true]);
    expect((await drain(queueUrl, 1))[0]?.Attributes?.MessageGroupId).toBe('a');
  });
});

describe('s3PathStyle', () => {
  it('is on when an endpoint URL points S3 elsewhere', () => {
    expect(s3PathStyle({ AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:4566' })).toBe(true);
    expect(s3PathStyle({ AWS_ENDPOINT_URL: 'http://127.0.0.1:4566' })).toBe(true);
    expect(s3PathStyle({})).toBe(false);
  });
});
