import { DeleteEventBusCommand, type EventBridgeClient } from '@aws-sdk/client-eventbridge';
import {
  DeleteMessageCommand,
  GetQueueUrlCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { type FauxqsServer, startFauxqs } from 'fauxqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  detailTypeOf,
  EventBridgeSink,
  eventBridgeLimits,
  eventSourceOf,
  PUT_EVENTS_REQUEST_BYTES,
} from '../../functions/adapters/eventbridge-sink.ts';
import type { StreamEntry } from '../../functions/core/ports.ts';
import { localEventBridgeClient, localSqsClient } from '../../local/emulators.ts';
import {
  type EventBridgeStandIn,
  PUT_EVENTS_MAX_BYTES,
  putEventsEntrySize,
  startEventBridge,
} from '../../local/eventbridge.ts';

const HUB = 'unit-hub';
const BUS = 'hub-endpoint';

let sqsServer: FauxqsServer;
let sqs: SQSClient;
let eventBridge: EventBridgeStandIn;
let client: EventBridgeClient;
let queueUrl: string;
const logs: string[] = [];

beforeAll(async () => {
  sqsServer = await startFauxqs({ port: 0, logger: false, host: '127.0.0.1' });
  sqs = localSqsClient(sqsServer.address);
  eventBridge = await startEventBridge({
    host: '127.0.0.1',
    port: 0,
    log: (line) => logs.push(line),
    deliver: async (arn, body) => {
      const { QueueUrl } = await sqs.send(new GetQueueUrlCommand({ QueueName: arn.split(':').at(-1) }));
      await sqs.send(new SendMessageCommand({ QueueUrl, MessageBody: body }));
    },
  });
  client = localEventBridgeClient(eventBridge.url);
  const queue = sqsServer.createQueue('sink-events');
  queueUrl = queue.queueUrl;
  eventBridge.createEventBus(BUS);
  eventBridge.putRule({
    name: 'all-hub-events',
    eventBusName: BUS,
    eventPattern: { source: [eventSourceOf(HUB)] },
  });
  eventBridge.putTargets('all-hub-events', [{ id: 'q', arn: queue.queueArn }], BUS);
});

afterAll(async () => {
  client.destroy();
  await eventBridge.close();
  sqs.destroy();
  await sqsServer.stop();
});

/** Receives until `count` events arrived (or `timeoutMs` passed), parsed. */
async function receiveEvents(count: number, timeoutMs = 3000): Promise<Record<string, unknown>[]> {
  const events: Record<string, unknown>[] = [];
  const deadline = Date.now() + timeoutMs;
  while (events.length < count && Date.now() < deadline) {
    const out = await sqs.send(
      new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }),
    );
    for (const m of out.Messages ?? []) {
      events.push(JSON.parse(m.Body ?? '{}'));
      await sqs.send(new DeleteMessageCommand({ QueueUrl: queueUrl, ReceiptHandle: m.ReceiptHandle }));
    }
  }
  return events;
}

const encoder = new TextEncoder();
const entryOf = (deviceId: string, body: unknown, messageSource?: string): StreamEntry => ({
  partitionKey: deviceId,
  data: encoder.encode(JSON.stringify({ version: 1, deviceId, body })),
  ...(messageSource !== undefined ? { messageSource } : {}),
});

/** An envelope-like entry whose data is exactly `bytes` long. */
function sizedEntry(deviceId: string, bytes: number, messageSource?: string): StreamEntry {
  const shell = JSON.stringify({ deviceId, pad: '' });
  const data = encoder.encode(JSON.stringify({ deviceId, pad: 'x'.repeat(bytes - shell.length) }));
  expect(data.length).toBe(bytes);
  return { partitionKey: deviceId, data, ...(messageSource !== undefined ? { messageSource } : {}) };
}

describe('EventBridgeSink', () => {
  it('maps message sources to detail types', () => {
    expect(detailTypeOf('Telemetry')).toBe('Device Message');
    expect(detailTypeOf('deviceLifecycleEvents')).toBe('Device Lifecycle Event');
    expect(detailTypeOf('deviceConnectionStateEvents')).toBe('Device Connection State Event');
    expect(detailTypeOf(undefined)).toBe('Device Message');
    expect(detailTypeOf('somethingElse')).toBe('Device Message');
  });

  it('keeps a 10-entry call of max-size entries within PutEvents 256 KB', () => {
    const source = eventSourceOf(HUB);
    const limits = eventBridgeLimits(source);
    expect(limits.maxEntries).toBe(10);
    expect(limits.atomic).toBeUndefined();
    expect(limits.maxEntryBytes).toBeLessThanOrEqual(limits.maxBytes);
    // The worst call: ten entries, data summing to maxBytes, each with the longest detail type.
    const longest = 'Device Connection State Event';
    const sizes = Array.from(
      { length: 10 },
      (_, i) => Math.floor(limits.maxBytes / 10) + (i === 0 ? limits.maxBytes % 10 : 0),
    );
    const total = sizes.reduce(
      (sum, size) =>
        sum + putEventsEntrySize({ Source: source, DetailType: longest, Detail: 'x'.repeat(size) }),
      0,
    );
    expect(total).toBeLessThanOrEqual(PUT_EVENTS_REQUEST_BYTES);
    // A single entry at the limit fits too.
    expect(
      putEventsEntrySize({ Source: source, DetailType: longest, Detail: 'x'.repeat(limits.maxEntryBytes) }),
    ).toBeLessThanOrEqual(PUT_EVENTS_REQUEST_BYTES);
    // A longer hub name leaves less room.
    expect(eventBridgeLimits(eventSourceOf('a-much-longer-hub-name')).maxBytes).toBeLessThan(limits.maxBytes);
    // The default matches the stand-in's.
    expect(PUT_EVENTS_REQUEST_BYTES).toBe(PUT_EVENTS_MAX_BYTES);
  });

  it('writes entries as events with the hub source, the detail type and the envelope as detail', async () => {
    const sink = new EventBridgeSink(client, BUS, HUB);
    const entries = [
      entryOf('d1', { temp: 21.5 }, 'Telemetry'),
      entryOf('d2', { op: 'create' }, 'deviceLifecycleEvents'),
      entryOf('d3', { state: 'connected' }, 'deviceConnectionStateEvents'),
      entryOf('d4', 'no source'),
    ];
    expect(await sink.put(entries)).toEqual([true, true, true, true]);
    const events = await receiveEvents(4);
    expect(events).toHaveLength(4);
    const byDevice = new Map(events.map((e) => [(e.detail as { deviceId: string }).deviceId, e]));
    expect(byDevice.get('d1')).toMatchObject({
      source: 'iothub.unit-hub',
      'detail-type': 'Device Message',
      resources: [],
      detail: { version: 1, deviceId: 'd1', body: { temp: 21.5 } },
    });
    expect(byDevice.get('d2')?.['detail-type']).toBe('Device Lifecycle Event');
    expect(byDevice.get('d3')?.['detail-type']).toBe('Device Connection State Event');
    expect(byDevice.get('d4')?.['detail-type']).toBe('Device Message');
    expect(await sink.put([])).toEqual([]);
  });

  it('writes a full call: 10 entries whose data fills maxBytes, with the longest detail type', async () => {
    const sink = new EventBridgeSink(client, BUS, HUB);
    const { maxBytes, maxEntries } = sink.limits;
    const size = Math.floor(maxBytes / maxEntries);
    const entries = Array.from({ length: maxEntries }, (_, i) =>
      sizedEntry(`full-${i}`, i === 0 ? size + (maxBytes % maxEntries) : size, 'deviceConnectionStateEvents'),
    );
    expect(entries.reduce((s, e) => s + e.data.length, 0)).toBe(maxBytes);
    expect(await sink.put(entries)).toEqual(Array(10).fill(true));
    expect(
      await sink.put([sizedEntry('single', sink.limits.maxEntryBytes, 'deviceConnectionStateEvents')]),
    ).toEqual([true]);
    expect(await receiveEvents(11)).toHaveLength(11);
  });

  it('reports a malformed entry as rejected (EventBridge blames the entry) and the others as true', async () => {
    const sink = new EventBridgeSink(client, BUS, HUB);
    const bad: StreamEntry = { partitionKey: 'bad', data: encoder.encode('not a json object') };
    expect(await sink.put([entryOf('ok1', 1), bad, entryOf('ok2', 2)])).toEqual([
      true,
      { rejected: expect.stringMatching(/^MalformedDetail: /) },
      true,
    ]);
    const events = await receiveEvents(2);
    expect(events.map((e) => (e.detail as { deviceId: string }).deviceId).sort()).toEqual(['ok1', 'ok2']);
  });

  it('throws when EventBridge refuses the whole call (a sink allowed more than the bus takes)', async () => {
    const sink = new EventBridgeSink(client, BUS, HUB, 1024 * 1024);
    const entries = [sizedEntry('big1', 200_000), sizedEntry('big2', 200_000)];
    await expect(sink.put(entries)).rejects.toMatchObject({
      name: 'ValidationException',
      message: 'Total size of the entries in the request is over the limit.',
    });
  });

  // EventBridge answers PutEvents for a bus that does not exist with EventIds and drops the events
  // (aws/aws-cli#9186, aws/aws-sdk#186); the stand-in does the same. So a deleted bus is not a
  // per-entry failure the router could retry: the writes "succeed" and the events are lost.
  it('reports success for a deleted bus, as AWS does, and the events go nowhere', async () => {
    const gone = 'deleted-bus';
    eventBridge.createEventBus(gone);
    await client.send(new DeleteEventBusCommand({ Name: gone }));
    const sink = new EventBridgeSink(client, gone, HUB);
    expect(await sink.put([entryOf('lost1', 1), entryOf('lost2', 2)])).toEqual([true, true]);
    expect(logs.filter((l) => l.includes(`event bus ${gone} does not exist`))).toHaveLength(2);
    await eventBridge.idle();
    expect(await receiveEvents(1, 1200)).toEqual([]);
  });
});
