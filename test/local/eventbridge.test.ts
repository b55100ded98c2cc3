import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  CreateEventBusCommand,
  DeleteEventBusCommand,
  DeleteRuleCommand,
  DescribeEventBusCommand,
  DescribeRuleCommand,
  DisableRuleCommand,
  type EventBridgeClient,
  InvalidEventPatternException,
  LimitExceededException,
  ListEventBusesCommand,
  ListRulesCommand,
  ListTargetsByRuleCommand,
  PutEventsCommand,
  type PutEventsRequestEntry,
  PutRuleCommand,
  PutTargetsCommand,
  RemoveTargetsCommand,
  ResourceAlreadyExistsException,
  ResourceNotFoundException,
  TestEventPatternCommand,
} from '@aws-sdk/client-eventbridge';
import {
  DeleteMessageCommand,
  GetQueueUrlCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { type FauxqsServer, startFauxqs } from 'fauxqs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { localEventBridgeClient, localSqsClient } from '../../local/emulators.ts';
import {
  type DeliveryDetails,
  type EventBridgeOptions,
  type EventBridgeStandIn,
  PUT_EVENTS_MAX_BYTES,
  parseEventPattern,
  putEventsEntrySize,
  startEventBridge,
} from '../../local/eventbridge.ts';

let sqsServer: FauxqsServer;
let sqs: SQSClient;
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  sqsServer = await startFauxqs({ port: 0, logger: false, host: '127.0.0.1' });
  sqs = localSqsClient(sqsServer.address);
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

afterAll(async () => {
  sqs.destroy();
  await sqsServer.stop();
});

/** What the local hub wires: SendMessage to the queue the target ARN names. */
async function sendToQueue(targetArn: string, body: string): Promise<void> {
  const queueName = targetArn.split(':').at(-1);
  const { QueueUrl } = await sqs.send(new GetQueueUrlCommand({ QueueName: queueName }));
  await sqs.send(new SendMessageCommand({ QueueUrl, MessageBody: body }));
}

interface Started {
  readonly eventBridge: EventBridgeStandIn;
  readonly client: EventBridgeClient;
  readonly logs: string[];
}

async function start(options: Partial<EventBridgeOptions> = {}): Promise<Started> {
  const logs: string[] = [];
  const eventBridge = await startEventBridge({
    host: '127.0.0.1',
    port: 0,
    deliver: sendToQueue,
    log: (line) => logs.push(line),
    retry: { attempts: 3, baseDelayMs: 5 },
    ...options,
  });
  const client = localEventBridgeClient(eventBridge.url);
  cleanups.push(async () => {
    client.destroy();
    await eventBridge.close();
  });
  return { eventBridge, client, logs };
}

let queueCount = 0;
function newQueue(): { queueUrl: string; queueArn: string } {
  queueCount += 1;
  return sqsServer.createQueue(`eb-test-${queueCount}`);
}

/** Receives until `count` messages arrived (or `timeoutMs` passed) and returns their bodies. */
async function receive(queueUrl: string, count: number, timeoutMs = 3000): Promise<string[]> {
  const bodies: string[] = [];
  const deadline = Date.now() + timeoutMs;
  while (bodies.length < count && Date.now() < deadline) {
    const out = await sqs.send(
      new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }),
    );
    for (const m of out.Messages ?? []) {
      bodies.push(m.Body ?? '');
      await sqs.send(new DeleteMessageCommand({ QueueUrl: queueUrl, ReceiptHandle: m.ReceiptHandle }));
    }
  }
  return bodies;
}

const entry = (over: Partial<PutEventsRequestEntry> = {}): PutEventsRequestEntry => ({
  Source: 'test.source',
  DetailType: 'Test Event',
  Detail: JSON.stringify({ a: 1 }),
  ...over,
});

describe('event buses', () => {
  it('has the default bus and creates, describes, lists and deletes custom ones', async () => {
    const { client, eventBridge } = await start();
    const created = await client.send(new CreateEventBusCommand({ Name: 'hub-bus', Description: 'd' }));
    expect(created.EventBusArn).toBe('arn:aws:events:us-east-1:000000000000:event-bus/hub-bus');

    const described = await client.send(new DescribeEventBusCommand({ Name: 'hub-bus' }));
    expect(described).toMatchObject({ Name: 'hub-bus', Arn: created.EventBusArn, Description: 'd' });
    expect(described.CreationTime).toBeInstanceOf(Date);
    expect((await client.send(new DescribeEventBusCommand({ Name: created.EventBusArn }))).Name).toBe(
      'hub-bus',
    );
    expect((await client.send(new DescribeEventBusCommand({}))).Name).toBe('default');

    const listed = await client.send(new ListEventBusesCommand({}));
    expect(listed.EventBuses?.map((b) => b.Name)).toEqual(['default', 'hub-bus']);
    const prefixed = await client.send(new ListEventBusesCommand({ NamePrefix: 'hub' }));
    expect(prefixed.EventBuses?.map((b) => b.Name)).toEqual(['hub-bus']);
    const firstPage = await client.send(new ListEventBusesCommand({ Limit: 1 }));
    expect(firstPage.EventBuses).toHaveLength(1);
    const secondPage = await client.send(
      new ListEventBusesCommand({ Limit: 1, NextToken: firstPage.NextToken }),
    );
    expect(secondPage.EventBuses?.map((b) => b.Name)).toEqual(['hub-bus']);
    expect(secondPage.NextToken).toBeUndefined();

    // The programmatic form is idempotent.
    expect(eventBridge.createEventBus('hub-bus')).toBe(created.EventBusArn);

    await client.send(new DeleteEventBusCommand({ Name: 'hub-bus' }));
    await expect(client.send(new DescribeEventBusCommand({ Name: 'hub-bus' }))).rejects.toBeInstanceOf(
      ResourceNotFoundException,
    );
    // Deleting a bus that is not there succeeds, as on AWS.
    await client.send(new DeleteEventBusCommand({ Name: 'hub-bus' }));
  });

  it('refuses a duplicate bus, a bad name and deleting the default bus', async () => {
    const { client } = await start();
    await client.send(new CreateEventBusCommand({ Name: 'dup' }));
    await expect(client.send(new CreateEventBusCommand({ Name: 'dup' }))).rejects.toBeInstanceOf(
      ResourceAlreadyExistsException,
    );
    await expect(client.send(new CreateEventBusCommand({ Name: 'default' }))).rejects.toBeInstanceOf(
      ResourceAlreadyExistsException,
    );
    await expect(client.send(new CreateEventBusCommand({ Name: 'bad name!' }))).rejects.toMatchObject({
      name: 'ValidationException',
    });
    await expect(client.send(new DeleteEventBusCommand({ Name: 'default' }))).rejects.toMatchObject({
      name: 'ValidationException',
      message: 'Cannot delete event bus default.',
    });
  });
});

describe('rules and targets', () => {
  it('creates, describes, lists, updates and deletes rules with their targets', async () => {
    const { client } = await start();
    await client.send(new CreateEventBusCommand({ Name: 'bus-r' }));
    const pattern = JSON.stringify({ source: ['a'] });
    const put = await client.send(
      new PutRuleCommand({ Name: 'r1', EventBusName: 'bus-r', EventPattern: pattern }),
    );
    expect(put.RuleArn).toBe('arn:aws:events:us-east-1:000000000000:rule/bus-r/r1');
    const onDefault = await client.send(new PutRuleCommand({ Name: 'r0', EventPattern: pattern }));
    expect(onDefault.RuleArn).toBe('arn:aws:events:us-east-1:000000000000:rule/r0');

    expect(await client.send(new DescribeRuleCommand({ Name: 'r1', EventBusName: 'bus-r' }))).toMatchObject({
      Name: 'r1',
      Arn: put.RuleArn,
      EventPattern: pattern,
      State: 'ENABLED',
      EventBusName: 'bus-r',
    });
    const rules = await client.send(new ListRulesCommand({ EventBusName: 'bus-r' }));
    expect(rules.Rules?.map((r) => r.Name)).toEqual(['r1']);

    const { queueArn } = newQueue();
    const targets = await client.send(
      new PutTargetsCommand({
        Rule: 'r1',
        EventBusName: 'bus-r',
        Targets: [
          { Id: 'q', Arn: queueArn },
          { Id: 'fn', Arn: 'arn:aws:lambda:us-east-1:000000000000:function:f' },
        ],
      }),
    );
    expect(targets.FailedEntryCount).toBe(1);
    expect(targets.FailedEntries?.[0]).toMatchObject({ TargetId: 'fn', ErrorCode: 'ValidationException' });
    const listed = await client.send(new ListTargetsByRuleCommand({ Rule: 'r1', EventBusName: 'bus-r' }));
    expect(listed.Targets).toEqual([{ Id: 'q', Arn: queueArn }]);

    // Replacing the rule keeps its targets.
    await client.send(
      new PutRuleCommand({ Name: 'r1', EventBusName: 'bus-r', EventPattern: pattern, State: 'DISABLED' }),
    );
    expect(
      (await client.send(new ListTargetsByRuleCommand({ Rule: 'r1', EventBusName: 'bus-r' }))).Targets,
    ).toHaveLength(1);

    await expect(
      client.send(new DeleteRuleCommand({ Name: 'r1', EventBusName: 'bus-r' })),
    ).rejects.toMatchObject({
      name: 'ValidationException',
      message: "Rule can't be deleted since it has targets.",
    });
    const removed = await client.send(
      new RemoveTargetsCommand({ Rule: 'r1', EventBusName: 'bus-r', Ids: ['q', 'nope'] }),
    );
    expect(removed.FailedEntryCount).toBe(1);
    expect(removed.FailedEntries?.[0]).toMatchObject({
      TargetId: 'nope',
      ErrorCode: 'ResourceNotFoundException',
    });
    await client.send(new DeleteRuleCommand({ Name: 'r1', EventBusName: 'bus-r' }));
    await expect(
      client.send(new DescribeRuleCommand({ Name: 'r1', EventBusName: 'bus-r' })),
    ).rejects.toBeInstanceOf(ResourceNotFoundException);
  });

  it('refuses a rule on a missing bus, a schedule, a missing or bad pattern, and a sixth target', async () => {
    const { client } = await start();
    await expect(
      client.send(new PutRuleCommand({ Name: 'r', EventBusName: 'nope', EventPattern: '{"source":["a"]}' })),
    ).rejects.toBeInstanceOf(ResourceNotFoundException);
    await expect(
      client.send(new PutRuleCommand({ Name: 'r', ScheduleExpression: 'rate(1 minute)' })),
    ).rejects.toMatchObject({
      name: 'ValidationException',
    });
    await expect(client.send(new PutRuleCommand({ Name: 'r' }))).rejects.toMatchObject({
      name: 'ValidationException',
      message: 'Parameter(s) EventPattern or ScheduleExpression must be specified.',
    });
    for (const bad of [
      'not json',
      '[]',
      '{}',
      '{"source":"a"}',
      '{"source":[]}',
      '{"source":[{"bogus":1}]}',
    ]) {
      await expect(client.send(new PutRuleCommand({ Name: 'r', EventPattern: bad }))).rejects.toBeInstanceOf(
        InvalidEventPatternException,
      );
    }
    await client.send(new PutRuleCommand({ Name: 'r', EventPattern: '{"source":["a"]}' }));
    const { queueArn } = newQueue();
    const five = [1, 2, 3, 4, 5].map((i) => ({ Id: `t${i}`, Arn: queueArn }));
    await client.send(new PutTargetsCommand({ Rule: 'r', Targets: five }));
    await expect(
      client.send(new PutTargetsCommand({ Rule: 'r', Targets: [{ Id: 't6', Arn: queueArn }] })),
    ).rejects.toBeInstanceOf(LimitExceededException);
    await expect(
      client.send(new PutTargetsCommand({ Rule: 'missing', Targets: [{ Id: 't', Arn: queueArn }] })),
    ).rejects.toBeInstanceOf(ResourceNotFoundException);
  });
});

describe('PutEvents validation', () => {
  it('refuses 0 or 11 entries as a whole', async () => {
    const { client } = await start();
    await expect(
      client.send(new PutEventsCommand({ Entries: Array.from({ length: 11 }, () => entry()) })),
    ).rejects.toMatchObject({
      name: 'ValidationException',
      message: expect.stringContaining('less than or equal to 10'),
    });
    await expect(client.send(new PutEventsCommand({ Entries: [] }))).rejects.toMatchObject({
      name: 'ValidationException',
    });
  });

  it('counts entry sizes as AWS does and refuses a call over 256 KB as a whole', async () => {
    expect(putEventsEntrySize({ Source: 'ab', DetailType: 'é', Detail: '{}', Resources: ['r1', 'r2'] })).toBe(
      2 + 2 + 2 + 4,
    );
    expect(putEventsEntrySize({ Time: new Date(), Source: 's', DetailType: 'd', Detail: '{}' })).toBe(14 + 4);

    const { client } = await start();
    const overhead = putEventsEntrySize(entry({ Detail: '{"x":""}' }));
    const detailOf = (size: number) => JSON.stringify({ x: 'y'.repeat(size - overhead) });
    const half = PUT_EVENTS_MAX_BYTES / 2;
    const atLimit = [entry({ Detail: detailOf(half) }), entry({ Detail: detailOf(half) })];
    expect(atLimit.reduce((s, e) => s + putEventsEntrySize(e), 0)).toBe(PUT_EVENTS_MAX_BYTES);
    const ok = await client.send(new PutEventsCommand({ Entries: atLimit }));
    expect(ok.FailedEntryCount).toBe(0);

    const over = [entry({ Detail: detailOf(half) }), entry({ Detail: detailOf(half + 1) })];
    await expect(client.send(new PutEventsCommand({ Entries: over }))).rejects.toMatchObject({
      name: 'ValidationException',
      message: 'Total size of the entries in the request is over the limit.',
    });
    // Time counts 14 bytes.
    await expect(
      client.send(new PutEventsCommand({ Entries: [{ ...atLimit[0]!, Time: new Date() }, atLimit[1]!] })),
    ).rejects.toMatchObject({ name: 'ValidationException' });
  });

  it('fails bad entries one by one, in order, and accepts the others', async () => {
    const { client } = await start();
    const out = await client.send(
      new PutEventsCommand({
        Entries: [
          entry(),
          entry({ Detail: '{not json' }),
          entry({ Detail: '[1,2]' }),
          entry({ Detail: '"text"' }),
          entry({ Source: undefined }),
          entry({ DetailType: undefined }),
          entry({ Detail: undefined }),
          entry(),
        ],
      }),
    );
    expect(out.FailedEntryCount).toBe(6);
    const results = out.Entries ?? [];
    expect(results).toHaveLength(8);
    expect(results[0]?.EventId).toMatch(/^[0-9a-f-]{36}$/);
    expect(results[1]).toEqual({ ErrorCode: 'MalformedDetail', ErrorMessage: 'Detail is malformed.' });
    expect(results[2]?.ErrorCode).toBe('MalformedDetail');
    expect(results[3]?.ErrorCode).toBe('MalformedDetail');
    expect(results[4]).toMatchObject({
      ErrorCode: 'InvalidArgument',
      ErrorMessage: expect.stringContaining('Source'),
    });
    expect(results[5]).toMatchObject({
      ErrorCode: 'InvalidArgument',
      ErrorMessage: expect.stringContaining('DetailType'),
    });
    expect(results[6]).toMatchObject({
      ErrorCode: 'InvalidArgument',
      ErrorMessage: expect.stringContaining('Detail '),
    });
    expect(results[7]?.EventId).toBeDefined();
    expect(results[7]?.EventId).not.toBe(results[0]?.EventId);
  });

  it('accepts and drops an event for a bus that does not exist, as AWS does, and logs it', async () => {
    const { client, logs } = await start();
    const out = await client.send(
      new PutEventsCommand({ Entries: [entry({ EventBusName: 'no-such-bus' })] }),
    );
    expect(out.FailedEntryCount).toBe(0);
    expect(out.Entries?.[0]?.EventId).toBeDefined();
    expect(logs.join('\n')).toContain('event bus no-such-bus does not exist');
  });

  it('answers an unknown operation and a body that is not JSON with the AWS error types', async () => {
    const { eventBridge } = await start();
    const post = (target: string, body: string) =>
      fetch(eventBridge.url, {
        method: 'POST',
        headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': target },
        body,
      });
    const unknown = await post('AWSEvents.PutPartnerEvents', '{}');
    expect(unknown.status).toBe(400);
    expect(await unknown.json()).toMatchObject({ __type: 'UnknownOperationException' });
    const garbled = await post('AWSEvents.PutEvents', '{');
    expect(garbled.status).toBe(400);
    expect(await garbled.json()).toMatchObject({ __type: 'SerializationException' });
  });
});

describe('event patterns', () => {
  const event = {
    version: '0',
    id: '6a7e8feb-b491-4cf7-a9f1-bf3703467718',
    'detail-type': 'Device Message',
    source: 'iothub.hub1',
    account: '000000000000',
    time: '2026-01-02T03:04:05Z',
    region: 'us-east-1',
    resources: ['arn:aws:iot:us-east-1:000000000000:thing/d1'],
    detail: {
      deviceId: 'd1',
      count: 5,
      ratio: 0.25,
      ok: true,
      none: null,
      tags: ['red', 'blue'],
      properties: { alert: 'high', level: { value: 3 } },
      readings: [{ kind: 'temp', value: 21.5 }, { kind: 'hum' }],
      Mixed: 'CamelCase',
    },
  };

  const rows: [string, object, boolean][] = [
    ['exact string', { source: ['iothub.hub1'] }, true],
    ['exact string, other value', { source: ['iothub.hub2'] }, false],
    ['any of several values', { source: ['x', 'iothub.hub1'] }, true],
    ['all fields must match', { source: ['iothub.hub1'], 'detail-type': ['Other'] }, false],
    ['exact number', { detail: { count: [5] } }, true],
    ['number does not equal string', { detail: { count: ['5'] } }, false],
    ['boolean', { detail: { ok: [true] } }, true],
    ['null', { detail: { none: [null] } }, true],
    ['null does not match a missing field', { detail: { missing: [null] } }, false],
    ['nested field', { detail: { properties: { alert: ['high'] } } }, true],
    ['deeply nested field', { detail: { properties: { level: { value: [3] } } } }, true],
    ['nested field, no match', { detail: { properties: { alert: ['low'] } } }, false],
    ['array value: any element', { detail: { tags: ['blue'] } }, true],
    ['array value: no element', { detail: { tags: ['green'] } }, false],
    ['resources array', { resources: [{ prefix: 'arn:aws:iot:' }] }, true],
    ['array of objects: one element matches', { detail: { readings: { kind: ['hum'] } } }, true],
    ['array of objects: none matches', { detail: { readings: { kind: ['co2'] } } }, false],
    ['prefix', { source: [{ prefix: 'iothub.' }] }, true],
    ['prefix, no match', { source: [{ prefix: 'aws.' }] }, false],
    ['prefix ignores numbers', { detail: { count: [{ prefix: '5' }] } }, false],
    [
      'prefix equals-ignore-case',
      { detail: { Mixed: [{ prefix: { 'equals-ignore-case': 'camel' } }] } },
      true,
    ],
    ['suffix', { source: [{ suffix: '.hub1' }] }, true],
    ['equals-ignore-case', { detail: { Mixed: [{ 'equals-ignore-case': 'camelcase' }] } }, true],
    ['wildcard: ? is a literal', { source: [{ wildcard: 'iot*.hub?' }] }, false],
    ['wildcard star', { source: [{ wildcard: 'iot*1' }] }, true],
    ['anything-but string', { source: [{ 'anything-but': 'iothub.hub2' }] }, true],
    ['anything-but string, excluded', { source: [{ 'anything-but': 'iothub.hub1' }] }, false],
    ['anything-but list', { detail: { deviceId: [{ 'anything-but': ['d2', 'd3'] }] } }, true],
    ['anything-but list, excluded', { detail: { deviceId: [{ 'anything-but': ['d1', 'd3'] }] } }, false],
    ['anything-but number', { detail: { count: [{ 'anything-but': [4, 6] }] } }, true],
    ['anything-but number, excluded', { detail: { count: [{ 'anything-but': 5 }] } }, false],
    ['anything-but prefix', { source: [{ 'anything-but': { prefix: 'aws.' } }] }, true],
    ['anything-but prefix, excluded', { source: [{ 'anything-but': { prefix: 'iot' } }] }, false],
    ['anything-but needs the field', { detail: { missing: [{ 'anything-but': 'x' }] } }, false],
    ['exists true', { detail: { deviceId: [{ exists: true }] } }, true],
    ['exists true, missing', { detail: { missing: [{ exists: true }] } }, false],
    ['exists false, missing', { detail: { missing: [{ exists: false }] } }, true],
    ['exists false, present', { detail: { deviceId: [{ exists: false }] } }, false],
    ['exists false under a missing object', { detail: { nothing: { here: [{ exists: false }] } } }, true],
    ['exists only sees leaves', { detail: { properties: [{ exists: true }] } }, false],
    ['numeric range', { detail: { count: [{ numeric: ['>', 0, '<=', 5] }] } }, true],
    ['numeric range, outside', { detail: { count: [{ numeric: ['>', 5] }] } }, false],
    ['numeric equals', { detail: { ratio: [{ numeric: ['=', 0.25] }] } }, true],
    ['numeric on a nested array', { detail: { readings: { value: [{ numeric: ['>=', 20] }] } } }, true],
    ['numeric ignores strings', { detail: { deviceId: [{ numeric: ['>', 0] }] } }, false],
    ['$or: one branch', { $or: [{ source: ['nope'] }, { detail: { count: [5] } }] }, true],
    ['$or: no branch', { $or: [{ source: ['nope'] }, { detail: { count: [6] } }] }, false],
  ];

  it.each(rows)('%s', (_name, pattern, expected) => {
    expect(parseEventPattern(pattern).matches(event)).toBe(expected);
  });

  it('answers TestEventPattern through the SDK the same way', async () => {
    const { client } = await start();
    for (const [, pattern, expected] of rows.slice(0, 12)) {
      const out = await client.send(
        new TestEventPatternCommand({ EventPattern: JSON.stringify(pattern), Event: JSON.stringify(event) }),
      );
      expect(out.Result).toBe(expected);
    }
    await expect(
      client.send(new TestEventPatternCommand({ EventPattern: '{"source":["a"]}', Event: '{"source":"a"}' })),
    ).rejects.toMatchObject({ name: 'ValidationException', message: 'Parameter Event is not valid.' });
  });

  it.each([
    ['numeric with a string bound', { a: [{ numeric: ['>', 'x'] }] }],
    ['numeric with two lower bounds', { a: [{ numeric: ['>', 1, '>=', 2] }] }],
    ['numeric with an odd list', { a: [{ numeric: ['>'] }] }],
    ['exists with a non-boolean', { a: [{ exists: 'yes' }] }],
    ['prefix with a number', { a: [{ prefix: 1 }] }],
    ['anything-but with mixed types', { a: [{ 'anything-but': ['x', 1] }] }],
    ['two operators in one matcher', { a: [{ prefix: 'x', suffix: 'y' }] }],
    ['a scalar where an array belongs', { a: 'x' }],
    ['cidr, not supported here', { a: [{ cidr: '10.0.0.0/8' }] }],
  ])('refuses an invalid pattern: %s', (_name, pattern) => {
    expect(() => parseEventPattern(pattern)).toThrow(/Event pattern is not valid/);
  });
});

describe('delivery to SQS targets', () => {
  it('delivers the whole event envelope of a matching event, and nothing else', async () => {
    const { client } = await start();
    await client.send(new CreateEventBusCommand({ Name: 'deliver-bus' }));
    await client.send(
      new PutRuleCommand({
        Name: 'alerts',
        EventBusName: 'deliver-bus',
        EventPattern: JSON.stringify({
          source: [{ prefix: 'iothub.' }],
          detail: { properties: { alert: ['high'] } },
        }),
      }),
    );
    const { queueArn, queueUrl } = newQueue();
    await client.send(
      new PutTargetsCommand({
        Rule: 'alerts',
        EventBusName: 'deliver-bus',
        Targets: [{ Id: 'q', Arn: queueArn }],
      }),
    );
    const time = new Date('2026-03-04T05:06:07.890Z');
    const out = await client.send(
      new PutEventsCommand({
        Entries: [
          entry({
            EventBusName: 'deliver-bus',
            Source: 'iothub.hub1',
            DetailType: 'Device Message',
            Detail: JSON.stringify({ deviceId: 'd1', properties: { alert: 'high' } }),
            Resources: ['r1'],
            Time: time,
          }),
          entry({
            EventBusName: 'deliver-bus',
            Source: 'iothub.hub1',
            Detail: JSON.stringify({ properties: { alert: 'low' } }),
          }),
          entry({ Source: 'iothub.hub1', Detail: JSON.stringify({ properties: { alert: 'high' } }) }),
        ],
      }),
    );
    expect(out.FailedEntryCount).toBe(0);
    const bodies = await receive(queueUrl, 1);
    expect(bodies).toHaveLength(1);
    const delivered = JSON.parse(bodies[0]!);
    expect(delivered).toEqual({
      version: '0',
      id: out.Entries?.[0]?.EventId,
      'detail-type': 'Device Message',
      source: 'iothub.hub1',
      account: '000000000000',
      time: '2026-03-04T05:06:07Z',
      region: 'us-east-1',
      resources: ['r1'],
      detail: { deviceId: 'd1', properties: { alert: 'high' } },
    });
    expect(Object.keys(delivered)).toEqual([
      'version',
      'id',
      'detail-type',
      'source',
      'account',
      'time',
      'region',
      'resources',
      'detail',
    ]);
    // The non-matching event and the one on another bus never arrive.
    expect(await receive(queueUrl, 1, 1200)).toEqual([]);
  });

  it('sends Input or the InputPath selection instead of the envelope, and skips disabled rules', async () => {
    const { client, eventBridge } = await start();
    eventBridge.putRule({ name: 'sel', eventPattern: { source: ['sel'] } });
    const constant = newQueue();
    const selected = newQueue();
    await client.send(
      new PutTargetsCommand({
        Rule: 'sel',
        Targets: [
          { Id: 'const', Arn: constant.queueArn, Input: '{"fixed":true}' },
          { Id: 'path', Arn: selected.queueArn, InputPath: '$.detail.inner' },
        ],
      }),
    );
    await client.send(
      new PutEventsCommand({ Entries: [entry({ Source: 'sel', Detail: '{"inner":{"v":1}}' })] }),
    );
    expect(await receive(constant.queueUrl, 1)).toEqual(['{"fixed":true}']);
    expect(await receive(selected.queueUrl, 1)).toEqual(['{"v":1}']);

    await client.send(new DisableRuleCommand({ Name: 'sel' }));
    await client.send(new PutEventsCommand({ Entries: [entry({ Source: 'sel' })] }));
    await eventBridge.idle();
    expect(await receive(constant.queueUrl, 1, 1200)).toEqual([]);
  });

  it('retries a failing delivery with backoff, then logs it and keeps serving', async () => {
    let calls = 0;
    const { client, eventBridge, logs } = await start({
      deliver: async () => {
        calls += 1;
        throw new Error('queue unavailable');
      },
      retry: { attempts: 4, baseDelayMs: 10 },
    });
    eventBridge.putRule({ name: 'fail', eventPattern: { source: ['f'] } });
    eventBridge.putTargets('fail', [{ id: 'q', arn: 'arn:aws:sqs:us-east-1:000000000000:gone' }]);
    const started = Date.now();
    const out = await client.send(new PutEventsCommand({ Entries: [entry({ Source: 'f' })] }));
    expect(out.FailedEntryCount).toBe(0);
    await eventBridge.idle();
    expect(calls).toBe(4);
    // 10 + 20 + 40 ms of backoff between the four attempts.
    expect(Date.now() - started).toBeGreaterThanOrEqual(60);
    const gaveUp = logs.filter((l) => l.includes('gave up'));
    expect(gaveUp).toHaveLength(1);
    expect(gaveUp[0]).toContain(out.Entries?.[0]?.EventId);
    expect(gaveUp[0]).toContain('after 4 attempts: queue unavailable');
    // The server is still up.
    expect((await client.send(new ListEventBusesCommand({}))).EventBuses).toHaveLength(1);
  });

  it('delivers after transient failures without logging a give-up', async () => {
    let calls = 0;
    const { client, eventBridge, logs } = await start({
      deliver: async (arn, body) => {
        calls += 1;
        if (calls < 3) throw new Error('throttled');
        await sendToQueue(arn, body);
      },
      retry: { attempts: 5, baseDelayMs: 5 },
    });
    const { queueArn, queueUrl } = newQueue();
    eventBridge.putRule({ name: 'flaky', eventPattern: { source: ['flaky'] } });
    eventBridge.putTargets('flaky', [{ id: 'q', arn: queueArn }]);
    await client.send(new PutEventsCommand({ Entries: [entry({ Source: 'flaky' })] }));
    await eventBridge.idle();
    expect(calls).toBe(3);
    expect(await receive(queueUrl, 1)).toHaveLength(1);
    expect(logs.filter((l) => l.includes('gave up'))).toEqual([]);
  });
});

describe('FIFO queue targets', () => {
  it('need a message group, and hand it and the event id to deliver', async () => {
    const calls: { arn: string; details: DeliveryDetails }[] = [];
    const { client, eventBridge } = await start({
      deliver: async (arn, _body, details) => {
        calls.push({ arn, details });
      },
    });
    eventBridge.putRule({ name: 'fifo', eventPattern: { source: ['fifo'] } });
    const fifoArn = 'arn:aws:sqs:us-east-1:000000000000:ordered.fifo';
    const refused = await client.send(
      new PutTargetsCommand({ Rule: 'fifo', Targets: [{ Id: 'f', Arn: fifoArn }] }),
    );
    expect(refused.FailedEntries?.[0]?.ErrorMessage).toBe(
      'Parameter(s) SqsParameters must be specified for target: f.',
    );
    eventBridge.putTargets('fifo', [{ id: 'f', arn: fifoArn, messageGroupId: 'g1' }]);
    const out = await client.send(new PutEventsCommand({ Entries: [entry({ Source: 'fifo' })] }));
    await eventBridge.idle();
    expect(calls).toEqual([
      { arn: fifoArn, details: { eventId: out.Entries?.[0]?.EventId, messageGroupId: 'g1' } },
    ]);
  });
});

describe('persistence', () => {
  it('keeps buses, rules and targets across a restart with the same data directory', async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'eb-state-'));
    cleanups.push(async () => fs.rmSync(dataDir, { recursive: true, force: true }));
    const { queueArn, queueUrl } = newQueue();

    const first = await start({ dataDir });
    await first.client.send(new CreateEventBusCommand({ Name: 'kept', Description: 'survives' }));
    await first.client.send(
      new PutRuleCommand({ Name: 'kept-rule', EventBusName: 'kept', EventPattern: '{"source":["kept"]}' }),
    );
    await first.client.send(
      new PutTargetsCommand({
        Rule: 'kept-rule',
        EventBusName: 'kept',
        Targets: [{ Id: 'q', Arn: queueArn }],
      }),
    );
    await first.client.send(new CreateEventBusCommand({ Name: 'dropped' }));
    await first.client.send(new DeleteEventBusCommand({ Name: 'dropped' }));
    first.client.destroy();
    await first.eventBridge.close();
    expect(fs.existsSync(path.join(dataDir, 'eventbridge.json'))).toBe(true);

    const second = await start({ dataDir });
    const buses = await second.client.send(new ListEventBusesCommand({}));
    expect(buses.EventBuses?.map((b) => b.Name)).toEqual(['default', 'kept']);
    expect((await second.client.send(new DescribeEventBusCommand({ Name: 'kept' }))).Description).toBe(
      'survives',
    );
    expect(
      (await second.client.send(new DescribeRuleCommand({ Name: 'kept-rule', EventBusName: 'kept' })))
        .EventPattern,
    ).toBe('{"source":["kept"]}');
    expect(
      (await second.client.send(new ListTargetsByRuleCommand({ Rule: 'kept-rule', EventBusName: 'kept' })))
        .Targets,
    ).toEqual([{ Id: 'q', Arn: queueArn }]);

    await second.client.send(
      new PutEventsCommand({ Entries: [entry({ EventBusName: 'kept', Source: 'kept', Detail: '{"n":1}' })] }),
    );
    const bodies = await receive(queueUrl, 1);
    expect(JSON.parse(bodies[0]!).detail).toEqual({ n: 1 });
  });

  it('refuses to start on a corrupt state file rather than losing it', async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'eb-state-'));
    cleanups.push(async () => fs.rmSync(dataDir, { recursive: true, force: true }));
    fs.writeFileSync(path.join(dataDir, 'eventbridge.json'), '{"version":1,"buses":[{');
    await expect(start({ dataDir })).rejects.toThrow(/cannot read/);
  });
});
