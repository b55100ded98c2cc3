/**
 * Cloud-to-device, three ways:
 *
 * 1. Latency with the device online: a real hub process (`npm start`), one mqtt.js device subscribed
 *    to its devicebound topics, the back end sending one message at a time through the service API
 *    (`POST /devices/{id}/messages/deviceBound`) and the device completing each.
 * 2. Throughput to 100 connected devices: messages sent concurrently (bounded) and spread over the
 *    devices, every device completing what it receives; next to it, in the same run, raw publishes
 *    through the local IoT data plane to the same devices (what a C2D delivery costs at least).
 * 3. Cost per message: in-process against dynalite, the real service route, `C2dDelivery` and sweep
 *    with a controllable clock, counting DynamoDB requests by operation and phase, IoT publishes and
 *    feedback sink calls. Deterministic: the same code path makes the same requests on every run.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { CreateTableCommand } from '@aws-sdk/client-dynamodb';
import { IoTDataPlaneClient, PublishCommand } from '@aws-sdk/client-iot-data-plane';
import type { MqttClient } from 'mqtt';
import {
  DynamoDbDeliveryLedger,
  LEDGER_DUE_INDEX,
  LEDGER_TTL_ATTRIBUTE,
  ledgerTableDefinition,
} from '../functions/adapters/ledger-dynamodb.ts';
import { type C2dSettings, DEFAULT_C2D_SETTINGS } from '../functions/core/c2d/config.ts';
import { C2dDelivery, type DeliveryReport, type DevicePublisher } from '../functions/core/c2d/delivery.ts';
import type { FeedbackRecord } from '../functions/core/c2d/feedback.ts';
import { settleTopic } from '../functions/core/c2d/topics.ts';
import type { Device } from '../functions/core/identity/device.ts';
import type { Log } from '../functions/core/ports.ts';
import { c2dRoutes } from '../functions/core/service-api/c2d-routes.ts';
import type { ApiResponse, RouteEntry } from '../functions/core/service-api/http.ts';
import { LOCAL_CREDENTIALS } from '../local/emulators.ts';
import type { LocalHubEndpoints } from '../local/hub.ts';
import type { LocalTable } from '../local/template.ts';
import { sweepExpired } from '../local/ttl.ts';
import { C2dTestDevice, decodeDevicebound } from '../test/support/c2d-device.ts';
import { registerDevice } from '../test/support/devices.ts';
import { startTestDynamo, type TestDynamo } from '../test/support/emulators.ts';
import { type HubProcess, startHubProcess } from '../test/support/hub-process.ts';
import { type Bench, type BenchContext, fmt, percentile, sleep } from './harness.ts';

const now = () => performance.now();

/** Resolves when `done()` holds, or rejects after `timeoutMs`. */
async function until(done: () => boolean, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what()}`);
    await sleep(2);
  }
}

/** Runs `task(0..count-1)` with at most `limit` running at once. */
async function bounded(count: number, limit: number, task: (n: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < count) await task(next++);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, count)) }, worker));
}

const sorted = (values: Iterable<number>) => [...values].sort((a, b) => a - b);

// ---------------------------------------------------------------------------------------------
// Parts 1 and 2: a real hub process
// ---------------------------------------------------------------------------------------------

/** The service API with the hub's service token read once. */
function serviceApi(endpoints: LocalHubEndpoints) {
  const authorization = readFileSync(endpoints.serviceTokenPath, 'utf8');
  return async (
    method: string,
    route: string,
    body?: unknown,
  ): Promise<{ status: number; body: unknown }> => {
    const response = await fetch(`${endpoints.serviceApi}${route}`, {
      method,
      headers: { authorization, 'content-type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await response.text();
    return { status: response.status, body: text ? (JSON.parse(text) as unknown) : undefined };
  };
}

type ServiceApi = ReturnType<typeof serviceApi>;

/** What the devices saw of one message. */
interface Arrival {
  readonly deviceId: string;
  readonly receivedAt: number;
  readonly lockToken: string;
  readonly deliveryCount: number;
  settledAt?: number;
  settleStatus?: number;
}

/**
 * Listens on the devices' connections: records when each message id arrives (first delivery) and
 * when its settlement is answered, and completes hub messages as they arrive when `autoComplete`
 * says so. Raw data-plane publishes (`$.mid=raw-…`) carry no lock token and are only recorded.
 */
class Inbox {
  readonly arrivals = new Map<string, Arrival>();
  readonly #byLockToken = new Map<string, string>();
  redeliveries = 0;
  settled = 0;
  refused = 0;
  lastSettledAt = 0;
  lastRawAt = 0;
  rawReceived = 0;

  constructor(private readonly autoComplete: (messageId: string) => boolean) {}

  attach(deviceId: string, client: MqttClient): void {
    // Nagle off, as a device that settles right after it receives should: with it on, the settlement
    // waits for the TCP ACK of the PUBACK just written, which the broker delays by 40 ms.
    (client.stream as Partial<Socket>).setNoDelay?.(true);
    const devicebound = `devices/${deviceId}/messages/devicebound/`;
    const answers = `devices/${deviceId}/messages/settle/res/`;
    client.on('message', (topic) => {
      const at = now();
      if (topic.startsWith(devicebound)) {
        const props = decodeDevicebound(deviceId, topic);
        const messageId = props['$.mid'] ?? '';
        const lockToken = props['$.lt'] ?? '';
        if (messageId.startsWith('raw-')) {
          this.rawReceived++;
          this.lastRawAt = at;
          if (!this.arrivals.has(messageId)) {
            this.arrivals.set(messageId, { deviceId, receivedAt: at, lockToken, deliveryCount: 0 });
          }
          return;
        }
        const deliveryCount = Number(props['$.dc']);
        if (this.arrivals.has(messageId)) this.redeliveries++;
        else this.arrivals.set(messageId, { deviceId, receivedAt: at, lockToken, deliveryCount });
        this.#byLockToken.set(lockToken, messageId);
        if (this.autoComplete(messageId)) {
          client.publish(settleTopic(deviceId, 'complete', lockToken), '', { qos: 1 });
        }
      } else if (topic.startsWith(answers)) {
        const [status, lockToken = ''] = topic.slice(answers.length).split('/');
        const messageId = this.#byLockToken.get(lockToken);
        const arrival = messageId === undefined ? undefined : this.arrivals.get(messageId);
        if (arrival === undefined || arrival.settledAt !== undefined) return;
        arrival.settledAt = at;
        arrival.settleStatus = Number(status);
        if (arrival.settleStatus === 200) {
          this.settled++;
          this.lastSettledAt = at;
        } else this.refused++;
      }
    });
  }
}

/** Registers, connects and subscribes `ids` (bounded), then waits until the registry says Connected. */
async function connectDevices(
  hub: HubProcess,
  api: ServiceApi,
  ids: readonly string[],
  inbox: Inbox,
): Promise<C2dTestDevice[]> {
  const devices: C2dTestDevice[] = new Array(ids.length);
  await bounded(ids.length, 10, async (n) => {
    const id = ids[n] ?? '';
    const device = await C2dTestDevice.connect(hub.endpoints, await registerDevice(hub.endpoints, id));
    inbox.attach(id, device.client);
    devices[n] = device;
  });
  await bounded(ids.length, 10, async (n) => {
    const id = ids[n] ?? '';
    let state = '';
    const deadline = Date.now() + 30_000;
    while (state !== 'Connected') {
      if (Date.now() > deadline) throw new Error(`the registry never saw ${id} connected (${state})`);
      state =
        ((await api('GET', `/devices/${id}`)).body as { connectionState?: string }).connectionState ?? '';
      if (state !== 'Connected') await sleep(50);
    }
  });
  return devices;
}

/** Sends one C2D message; throws unless the hub answers 201. */
async function sendC2d(api: ServiceApi, deviceId: string, messageId: string, body: string): Promise<void> {
  const response = await api('POST', `/devices/${deviceId}/messages/deviceBound`, { body, messageId });
  if (response.status !== 201) {
    throw new Error(`send ${messageId}: ${response.status} ${JSON.stringify(response.body)}`);
  }
}

interface LatencyResult {
  readonly sendToReceived: number[];
  readonly sendTo201: number[];
  readonly settleToAnswer: number[];
  readonly perMessage: number;
}

/** Part 1: one device, one message at a time, each completed before the next is sent. */
async function latencyOnline(
  hub: HubProcess,
  api: ServiceApi,
  count: number,
  warmup: number,
  body: string,
): Promise<LatencyResult> {
  const inbox = new Inbox(() => false);
  const [device] = await connectDevices(hub, api, ['c2d-latency'], inbox);
  if (device === undefined) throw new Error('no device');
  const sendToReceived: number[] = [];
  const sendTo201: number[] = [];
  const settleToAnswer: number[] = [];
  try {
    const start = now();
    for (let i = -warmup; i < count; i++) {
      const messageId = `lat-${i + warmup}`;
      const sentAt = now();
      const sending = sendC2d(api, device.deviceId, messageId, body).then(() => now());
      await until(
        () => inbox.arrivals.has(messageId),
        20_000,
        () => `delivery of ${messageId}`,
      );
      const arrival = inbox.arrivals.get(messageId) as Arrival;
      const answeredAt = await sending;
      const settleAt = now();
      const answer = await device.settle('complete', arrival.lockToken);
      if (answer.status !== 200) throw new Error(`complete ${messageId}: ${answer.status}`);
      if (i < 0) continue;
      sendToReceived.push(arrival.receivedAt - sentAt);
      sendTo201.push(answeredAt - sentAt);
      settleToAnswer.push(now() - settleAt);
    }
    return {
      sendToReceived,
      sendTo201,
      settleToAnswer,
      perMessage: (now() - start) / (count + warmup),
    };
  } finally {
    await device.end().catch(() => undefined);
  }
}

interface ThroughputResult {
  readonly hubRate: number;
  readonly hubSendToReceived: number[];
  readonly hubSendToSettled: number[];
  readonly redeliveries: number;
  readonly rawRate: number;
  readonly rawPublishToReceived: number[];
}

/** Part 2: `deviceCount` devices, `count` messages sent `concurrency` at a time; raw publishes after. */
async function throughput(
  hub: HubProcess,
  api: ServiceApi,
  ctx: BenchContext,
  opts: { count: number; deviceCount: number; concurrency: number; warmup: number; body: string },
): Promise<ThroughputResult> {
  const ids = Array.from({ length: opts.deviceCount }, (_, i) => `c2d-tp-${i}`);
  const inbox = new Inbox((messageId) => messageId.startsWith('tp-') || messageId.startsWith('wu-'));
  const connectStart = now();
  const devices = await connectDevices(hub, api, ids, inbox);
  ctx.log(
    `${ids.length} devices registered, connected and Connected in ${fmt((now() - connectStart) / 1000)} s`,
  );
  const plane = new IoTDataPlaneClient({
    endpoint: hub.endpoints.dataPlane,
    region: hub.endpoints.region,
    credentials: LOCAL_CREDENTIALS,
  });
  try {
    const sentAt = new Map<string, number>();
    const hubRound = async (prefix: string, count: number) => {
      const settledBefore = inbox.settled;
      const first = now();
      await bounded(count, opts.concurrency, async (n) => {
        const messageId = `${prefix}-${n}`;
        sentAt.set(messageId, now());
        await sendC2d(api, ids[n % ids.length] ?? '', messageId, opts.body);
      });
      await until(
        () => inbox.settled - settledBefore >= count,
        180_000,
        () => `${prefix}: ${inbox.settled - settledBefore}/${count} settled (${inbox.refused} refused)`,
      );
      return { first, last: inbox.lastSettledAt };
    };
    if (opts.warmup > 0) await hubRound('wu', opts.warmup);
    const redeliveriesBefore = inbox.redeliveries;
    const run = await hubRound('tp', opts.count);
    const hubIds = Array.from({ length: opts.count }, (_, n) => `tp-${n}`);
    const hubSendToReceived = sorted(
      hubIds.map((id) => (inbox.arrivals.get(id)?.receivedAt ?? Number.NaN) - (sentAt.get(id) ?? 0)),
    );
    const hubSendToSettled = sorted(
      hubIds.map((id) => (inbox.arrivals.get(id)?.settledAt ?? Number.NaN) - (sentAt.get(id) ?? 0)),
    );

    // Baseline: the same number of raw QoS 1 publishes through the data plane to the same devices.
    const rawSentAt = new Map<string, number>();
    const rawFirst = now();
    await bounded(opts.count, opts.concurrency, async (n) => {
      const messageId = `raw-${n}`;
      const deviceId = ids[n % ids.length] ?? '';
      rawSentAt.set(messageId, now());
      await plane.send(
        new PublishCommand({
          topic: `devices/${deviceId}/messages/devicebound/$.mid=${messageId}`,
          qos: 1,
          payload: Buffer.from(opts.body),
        }),
      );
    });
    await until(
      () => inbox.rawReceived >= opts.count,
      60_000,
      () => `raw publishes: ${inbox.rawReceived}/${opts.count} received`,
    );
    const rawPublishToReceived = sorted(
      [...rawSentAt].map(([id, at]) => (inbox.arrivals.get(id)?.receivedAt ?? Number.NaN) - at),
    );
    return {
      hubRate: (opts.count / (run.last - run.first)) * 1000,
      hubSendToReceived,
      hubSendToSettled,
      redeliveries: inbox.redeliveries - redeliveriesBefore,
      rawRate: (opts.count / (inbox.lastRawAt - rawFirst)) * 1000,
      rawPublishToReceived,
    };
  } finally {
    plane.destroy();
    await Promise.allSettled(devices.map((d) => d.end()));
  }
}

// ---------------------------------------------------------------------------------------------
// Part 3: requests per message, in-process against dynalite
// ---------------------------------------------------------------------------------------------

/**
 * Phases in table order. Each delivery pass is counted apart from what triggered it, as
 * `deliver (after …)`: the send route delivers at once to a connected device, and every successful
 * settlement (and a sweep that released a lock) runs another pass to fill the freed room.
 */
const PHASES = [
  'send',
  'deliver (after send)',
  'settle',
  'deliver (after settle)',
  'sweep',
  'deliver (after sweep)',
  'feedback',
  'ttl (local only)',
] as const;
type Phase = (typeof PHASES)[number] | 'uncounted';
/**
 * Item operations: what one message costs. The reads shared by every message they return, whose
 * count does not grow with messages, are counted apart as `Query (due index)` (a sweep pass) and
 * `Query (feedback page)` (the back end reading feedback): each reads every shard once.
 */
const ITEM_OPERATIONS = ['PutItem', 'UpdateItem', 'GetItem', 'Query', 'DeleteItem'] as const;
/** The local TTL sweeper's table scan: one per pass over the whole table, not per message. */
const SCAN = 'Scan (ttl pass)';
const READS = new Set(['GetItem', 'Query', 'BatchGetItem', 'Scan']);

/** Requests and the capacity units dynalite reports for them, by operation. */
interface Counts {
  readonly ops: Map<string, { requests: number; units: number }>;
  deliveries: number;
  answers: number;
  feedbackSink: number;
}

const emptyCounts = (): Counts => ({ ops: new Map(), deliveries: 0, answers: 0, feedbackSink: 0 });

/** The string value of `:pk`, marshalled or not (the document client marshals at the same step). */
function pkValue(input: Record<string, unknown>): string {
  const value = (input.ExpressionAttributeValues as Record<string, unknown> | undefined)?.[':pk'];
  if (typeof value === 'string') return value;
  const s = (value as { S?: unknown } | undefined)?.S;
  return typeof s === 'string' ? s : '';
}

/**
 * Counts what the C2D code does: DynamoDB requests by operation (an SDK middleware on the client,
 * which the document client shares), the capacity units dynalite reports for them, publishes by kind
 * and feedback sink calls, each under the phase running at the time.
 */
class Meter {
  phase: Phase = 'uncounted';
  #counts = new Map<Phase, Counts>();

  reset(): void {
    this.#counts = new Map();
  }

  counts(phase: Phase): Counts {
    let counts = this.#counts.get(phase);
    if (counts === undefined) {
      counts = emptyCounts();
      this.#counts.set(phase, counts);
    }
    return counts;
  }

  /** Runs `fn` with `phase` as the current phase, then restores the previous one. */
  async in<T>(phase: Phase, fn: () => Promise<T>): Promise<T> {
    const previous = this.phase;
    this.phase = phase;
    try {
      return await fn();
    } finally {
      this.phase = previous;
    }
  }

  instrument(dynamo: TestDynamo): void {
    dynamo.client.middlewareStack.add(
      (next, context) => async (args) => {
        const input = args.input as Record<string, unknown>;
        const command = (context.commandName ?? 'Unknown').replace(/Command$/, '');
        const op =
          command === 'Scan'
            ? SCAN
            : command !== 'Query'
              ? command
              : input.IndexName === LEDGER_DUE_INDEX
                ? 'Query (due index)'
                : pkValue(input).startsWith('feedback#')
                  ? 'Query (feedback page)'
                  : 'Query';
        const counts = this.counts(this.phase);
        const entry = counts.ops.get(op) ?? { requests: 0, units: 0 };
        counts.ops.set(op, entry);
        entry.requests++;
        const result = await next({ ...args, input: { ...input, ReturnConsumedCapacity: 'TOTAL' } });
        const consumed = (result.output as { ConsumedCapacity?: { CapacityUnits?: number } })
          .ConsumedCapacity;
        entry.units += consumed?.CapacityUnits ?? 0;
        return result;
      },
      { step: 'initialize', name: 'benchRequestCounter' },
    );
  }

  publisher(): DevicePublisher {
    return {
      publish: async (topic) => {
        const counts = this.counts(this.phase);
        if (topic.includes('/messages/devicebound/')) counts.deliveries++;
        else counts.answers++;
        this.lastTopic = topic;
      },
    };
  }

  feedbackSink(): (record: FeedbackRecord) => Promise<void> {
    return async () => {
      this.counts(this.phase).feedbackSink++;
    };
  }

  lastTopic = '';
}

const SILENT: Log = { info: () => undefined, warn: () => undefined, error: () => undefined };

/** `C2dDelivery` whose every delivery pass counts as `deliver (after {the phase that triggered it})`. */
class MeteredDelivery extends C2dDelivery {
  constructor(
    deps: ConstructorParameters<typeof C2dDelivery>[0],
    private readonly meter: Meter,
  ) {
    super(deps);
  }

  override deliver(deviceId: string): Promise<DeliveryReport> {
    const trigger = this.meter.phase;
    const phase = PHASES.find((p) => p === `deliver (after ${trigger})`) ?? trigger;
    return this.meter.in(phase, () => super.deliver(deviceId));
  }
}

/** One scenario's totals per phase, divided by the messages it ran. */
interface CostRow {
  readonly scenario: string;
  readonly phase: string;
  readonly counts: Counts;
  readonly per: number;
}

interface CostResult {
  readonly rows: CostRow[];
  readonly sweepPass: Counts;
  readonly feedbackPage: Counts;
  readonly retained: { readonly held: number; readonly counts: Counts }[];
}

async function costPerMessage(perScenario: number, retainedCounts: readonly number[]): Promise<CostResult> {
  const dynamo = await startTestDynamo();
  const meter = new Meter();
  meter.instrument(dynamo);
  const tableName = 'bench-c2d-ledger';
  await dynamo.client.send(new CreateTableCommand(ledgerTableDefinition(tableName)));
  // The table as the local hub's template has it: what the local TTL sweeper reads.
  const localTable: LocalTable = {
    logicalId: 'Ledger',
    name: tableName,
    properties: {
      ...ledgerTableDefinition(tableName),
      TimeToLiveSpecification: { AttributeName: LEDGER_TTL_ATTRIBUTE, Enabled: true },
    },
  };
  const retentionMs = 60_000;
  let clock = Date.parse('2030-01-01T00:00:00.000Z');
  const at = () => clock;
  const settings: C2dSettings = DEFAULT_C2D_SETTINGS;
  const ledger = new DynamoDbDeliveryLedger({
    client: dynamo.doc,
    tableName,
    finalRetentionMs: retentionMs,
    feedbackSink: meter.feedbackSink(),
  });
  const delivery = new MeteredDelivery(
    { ledger, publisher: meter.publisher(), settings, log: SILENT, now: at },
    meter,
  );
  const connected = {
    get: async (deviceId: string) => ({ deviceId, connectionState: 'Connected' }) as Device,
  };
  const routes = c2dRoutes({ registry: connected, ledger, delivery, settings, log: SILENT, now: at });
  const route = (method: string, pattern: string): RouteEntry => {
    const found = routes.find((r) => r.method === method && r.pattern === pattern);
    if (found === undefined) throw new Error(`no route ${method} ${pattern}`);
    return found;
  };
  const sendRoute = route('POST', '/devices/{id}/messages/deviceBound');
  const feedbackRoute = route('GET', '/messages/serviceBound/feedback');
  const ackRoute = route('POST', '/messages/serviceBound/feedback/acknowledge');
  const call = async (entry: RouteEntry, p: string, params: Record<string, string>, body?: unknown) => {
    const response: ApiResponse = await entry.handle(
      {
        method: entry.method,
        path: p,
        query: {},
        headers: { 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      },
      params,
    );
    return { status: response.status, body: JSON.parse(response.body || 'null') as Record<string, unknown> };
  };
  const lockTokenOfLastDelivery = (deviceId: string) => {
    if (!meter.lastTopic.startsWith(`devices/${deviceId}/messages/devicebound/`)) {
      throw new Error(`expected a delivery to ${deviceId}, last publish was ${meter.lastTopic}`);
    }
    return decodeDevicebound(deviceId, meter.lastTopic)['$.lt'] ?? '';
  };

  /** Send (delivered at once: the device is connected) and settle with each outcome in turn. */
  const lifecycle = async (deviceId: string, messageId: string, ack: string, outcomes: readonly string[]) => {
    const sent = await meter.in('send', () =>
      call(
        sendRoute,
        `/devices/${deviceId}/messages/deviceBound`,
        { id: deviceId },
        {
          body: '{"led":"on","level":42}',
          messageId,
          contentType: 'application/json',
          ack,
        },
      ),
    );
    if (sent.status !== 201 || sent.body.state !== 'Invisible') {
      throw new Error(`send ${messageId}: ${sent.status} ${JSON.stringify(sent.body)}`);
    }
    for (const outcome of outcomes) {
      clock += 100;
      const answer = await meter.in('settle', () =>
        delivery.settle(deviceId, outcome, lockTokenOfLastDelivery(deviceId)),
      );
      if (answer.status !== 200) throw new Error(`${outcome} ${messageId}: ${JSON.stringify(answer.body)}`);
    }
    clock += 100;
  };

  /**
   * One sweep pass after the retention (nothing is due: final messages are not in the due index),
   * then what the local TTL sweeper deletes once both the messages and their id pointers have
   * expired (DynamoDB's TTL does this for free in the cloud); checks (uncounted) that all is gone.
   */
  const retire = async (deviceIds: readonly string[], messageId: string) => {
    clock += retentionMs + 1_000;
    await meter.in('sweep', () => delivery.sweep({ limit: 100, isConnected: async () => true }));
    // Pointers outlive the message's expiry by the retention and a day.
    clock += settings.defaultTtlMs + retentionMs + 86_400_000;
    const deleted = await meter.in('ttl (local only)', () =>
      sweepExpired(dynamo.client, [localTable], clock),
    );
    if (deleted !== 2 * deviceIds.length) {
      throw new Error(`the TTL pass deleted ${deleted} items for ${deviceIds.length} messages`);
    }
    for (const deviceId of deviceIds) {
      if ((await ledger.get(deviceId, messageId, clock)) !== undefined) {
        throw new Error(`${deviceId}/${messageId} outlived its retention`);
      }
    }
  };

  const scenarios: { name: string; ack: string; outcomes: string[]; feedback: boolean }[] = [
    { name: 'complete', ack: 'none', outcomes: ['complete'], feedback: false },
    { name: "complete, ack 'full'", ack: 'full', outcomes: ['complete'], feedback: true },
    { name: 'abandon once, then complete', ack: 'none', outcomes: ['abandon', 'complete'], feedback: false },
  ];
  const rows: CostRow[] = [];
  let sweepPass = emptyCounts();
  let feedbackPage = emptyCounts();
  try {
    for (const [s, scenario] of scenarios.entries()) {
      meter.reset();
      // One device per message, so every message meets an empty queue (see the retained table for the other case).
      const deviceIds = Array.from({ length: perScenario }, (_, i) => `cost-${s}-${i}`);
      for (const deviceId of deviceIds) await lifecycle(deviceId, 'm1', scenario.ack, scenario.outcomes);
      if (scenario.feedback) {
        // The back end reads the feedback (one page: every shard, once) and acknowledges each record.
        const page = await meter.in('feedback', () =>
          call(feedbackRoute, '/messages/serviceBound/feedback', {}),
        );
        const records = (page.body.records ?? []) as FeedbackRecord[];
        if (records.length !== perScenario) throw new Error(`${records.length} feedback records`);
        const ids = records.map((r) => r.id);
        for (let i = 0; i < ids.length; i += 100) {
          await meter.in('feedback', () =>
            call(ackRoute, '/messages/serviceBound/feedback/acknowledge', {}, { ids: ids.slice(i, i + 100) }),
          );
        }
      }
      await retire(deviceIds, 'm1');
      for (const phase of PHASES) {
        const counts = meter.counts(phase);
        if (counts.ops.size === 0 && counts.deliveries + counts.answers + counts.feedbackSink === 0) continue;
        rows.push({ scenario: scenario.name, phase, counts, per: perScenario });
      }
    }

    // Fixed costs that do not grow with messages: one sweep pass with nothing due, one feedback page.
    meter.reset();
    await meter.in('sweep', () => delivery.sweep({ limit: 100, isConnected: async () => true }));
    sweepPass = meter.counts('sweep');
    await meter.in('feedback', () => call(feedbackRoute, '/messages/serviceBound/feedback', {}));
    feedbackPage = meter.counts('feedback');

    // A device that already holds completed messages (kept for the retention): send, deliver, complete.
    const retained: { held: number; counts: Counts }[] = [];
    for (const held of retainedCounts) {
      const deviceId = `held-${held}`;
      for (let i = 0; i < held; i++) await lifecycle(deviceId, `old-${i}`, 'none', ['complete']);
      meter.reset();
      await lifecycle(deviceId, 'new', 'none', ['complete']);
      const total = emptyCounts();
      for (const phase of PHASES) addCounts(total, meter.counts(phase));
      retained.push({ held, counts: total });
    }
    return { rows, sweepPass, feedbackPage, retained };
  } finally {
    await dynamo.close();
  }
}

function addCounts(into: Counts, from: Counts): void {
  for (const [op, { requests, units }] of from.ops) {
    const entry = into.ops.get(op) ?? { requests: 0, units: 0 };
    into.ops.set(op, { requests: entry.requests + requests, units: entry.units + units });
  }
  into.deliveries += from.deliveries;
  into.answers += from.answers;
  into.feedbackSink += from.feedbackSink;
}

/**
 * One table row: requests per operation in `ops`, their total and capacity units (dynalite's
 * figures: reads in 4 KB units, halved when eventually consistent; writes in 1 KB units), publishes
 * and feedback sink calls, all divided by `per` messages.
 */
function costColumns(counts: Counts, per: number, ops: readonly string[]): Record<string, string> {
  const n = (v: number) => (v === 0 ? '' : fmt(v / per));
  const row: Record<string, string> = {};
  let total = 0;
  let rcu = 0;
  let wcu = 0;
  for (const op of ops) {
    const entry = counts.ops.get(op) ?? { requests: 0, units: 0 };
    row[op] = n(entry.requests);
    total += entry.requests;
    if (READS.has(op.split(' ')[0] ?? '')) rcu += entry.units;
    else wcu += entry.units;
  }
  row['DynamoDB requests'] = fmt(total / per);
  row.RCU = n(rcu);
  row.WCU = n(wcu);
  row['publishes (deliver + answer)'] =
    counts.deliveries + counts.answers === 0
      ? ''
      : `${fmt(counts.deliveries / per)} + ${fmt(counts.answers / per)}`;
  row['feedback sink'] = n(counts.feedbackSink);
  return row;
}

// ---------------------------------------------------------------------------------------------

export const c2d: Bench = {
  name: 'c2d',
  description:
    'C2D on the local hub: online latency, 100-device throughput vs raw data-plane publishes, requests per message',
  flags: {
    latency: { description: 'messages sent one at a time to one online device', default: 100 },
    messages: {
      description: 'messages in the throughput run (and raw publishes in its baseline)',
      default: 500,
    },
    devices: { description: 'connected devices in the throughput run', default: 100 },
    concurrency: { description: 'sends (and raw publishes) in flight at once', default: 16 },
    warmup: { description: 'messages sent before each measured hub run', default: 20 },
    'cost-messages': {
      description: 'messages per cost scenario, 1 to 100 (the counts are per message)',
      default: 10,
    },
    retained: {
      description: 'completed messages a device holds in the retained-messages cost row',
      default: 100,
    },
  },
  run: async (ctx) => {
    const latencyCount = ctx.flag('latency');
    const count = ctx.flag('messages');
    const deviceCount = ctx.flag('devices');
    const concurrency = ctx.flag('concurrency');
    const warmup = ctx.flag('warmup');
    const perScenario = Math.min(100, Math.max(1, ctx.flag('cost-messages')));
    const retainedHeld = ctx.flag('retained');
    const body = JSON.stringify({ led: 'on', level: 42, pad: 'x'.repeat(64) });

    // Part 3 runs in-process while the hub process starts (its counts do not depend on timing).
    const startedAt = now();
    const nodeArgs = process.env.BENCH_HUB_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [];
    const dataDir = mkdtempSync(path.join(tmpdir(), 'bench-c2d-'));
    let readyAt = 0;
    const starting = startHubProcess({ dataDir, nodeArgs }).then((h) => {
      readyAt = now();
      return h;
    });
    const costing = costPerMessage(perScenario, retainedHeld > 0 ? [0, retainedHeld] : [0]).then((cost) => {
      ctx.log(`cost scenarios (in-process, dynalite) done in ${fmt((now() - startedAt) / 1000)} s`);
      return cost;
    });
    const [started, costed] = await Promise.allSettled([starting, costing]);
    if (started.status === 'rejected') {
      rmSync(dataDir, { recursive: true, force: true });
      throw started.reason;
    }
    const hub = started.value;
    ctx.log(`hub process ready in ${fmt((readyAt - startedAt) / 1000)} s`);
    let latency: LatencyResult;
    let tp: ThroughputResult;
    try {
      if (costed.status === 'rejected') throw costed.reason;
      if (hub.endpoints.ledgerTable === '') throw new Error('the hub was synthesized without C2D');
      const api = serviceApi(hub.endpoints);
      latency = await latencyOnline(hub, api, latencyCount, warmup, body);
      tp = await throughput(hub, api, ctx, { count, deviceCount, concurrency, warmup, body });
    } finally {
      await hub.stop();
      rmSync(hub.dataDir, { recursive: true, force: true });
    }
    const cost = costed.value;

    const lat = (values: number[]) => {
      const s = sorted(values);
      return {
        'p50 ms': fmt(percentile(s, 50)),
        'p99 ms': fmt(percentile(s, 99)),
        'max ms': fmt(s.at(-1) ?? 0),
      };
    };
    ctx.table(
      `c2d latency: 1 online device, ${latencyCount} messages one at a time (${Buffer.byteLength(body)} B body), each completed before the next; ${fmt(latency.perMessage)} ms per send + complete cycle`,
      [
        { case: 'send start → device receives the message', ...lat(latency.sendToReceived) },
        { case: 'send start → service API answers 201', ...lat(latency.sendTo201) },
        { case: 'device publishes complete → answer 200 arrives', ...lat(latency.settleToAnswer) },
      ],
    );
    const vs = (rate: number) => `${fmt(rate / tp.rawRate, 2)}×`;
    ctx.table(
      `c2d throughput: ${count} messages over ${deviceCount} connected devices, ${concurrency} sends in flight, every message completed (${tp.redeliveries} redeliveries)`,
      [
        {
          case: 'hub: send → delivered → completed (answer 200)',
          'msgs/s': fmt(tp.hubRate),
          'p50 ms → device': fmt(percentile(tp.hubSendToReceived, 50)),
          'p99 ms → device': fmt(percentile(tp.hubSendToReceived, 99)),
          'p50 ms → settled': fmt(percentile(tp.hubSendToSettled, 50)),
          'p99 ms → settled': fmt(percentile(tp.hubSendToSettled, 99)),
          'vs raw publish': vs(tp.hubRate),
        },
        {
          case: 'raw: data-plane Publish QoS 1 → received',
          'msgs/s': fmt(tp.rawRate),
          'p50 ms → device': fmt(percentile(tp.rawPublishToReceived, 50)),
          'p99 ms → device': fmt(percentile(tp.rawPublishToReceived, 99)),
          'p50 ms → settled': '',
          'p99 ms → settled': '',
          'vs raw publish': '1×',
        },
      ],
    );
    ctx.table(
      `c2d cost per delivered-and-completed message (in-process, dynalite; ${perScenario} messages per scenario, one device each; deterministic); item operations only: the reads shared by every message a sweep pass or feedback page handles are in the next table`,
      cost.rows.flatMap((r, i) => {
        const row = {
          scenario: r.scenario,
          phase: r.phase,
          ...costColumns(r.counts, r.per, ITEM_OPERATIONS),
        };
        const last = cost.rows[i + 1]?.scenario !== r.scenario;
        if (!last) return [row];
        const total = emptyCounts();
        const cloud = emptyCounts();
        for (const x of cost.rows.filter((x) => x.scenario === r.scenario)) {
          addCounts(total, x.counts);
          if (x.phase !== 'ttl (local only)') addCounts(cloud, x.counts);
        }
        return [
          row,
          {
            scenario: r.scenario,
            phase: '**total, local hub**',
            ...costColumns(total, r.per, ITEM_OPERATIONS),
          },
          {
            scenario: r.scenario,
            phase: '**total, cloud** (TTL deletes free)',
            ...costColumns(cloud, r.per, ITEM_OPERATIONS),
          },
        ];
      }),
    );
    const queries = (counts: Counts) => [...counts.ops.values()].reduce((n, e) => n + e.requests, 0);
    const sweepsPerDay = 86_400_000 / DEFAULT_C2D_SETTINGS.sweepIntervalMs;
    ctx.table('c2d fixed costs, not per message (deterministic)', [
      {
        case: 'one sweep pass: reads every shard of the due index',
        'Query requests': queries(cost.sweepPass),
        'how often': `every sweepIntervalMs (${DEFAULT_C2D_SETTINGS.sweepIntervalMs / 1000} s), messages or not: ${fmt(sweepsPerDay * queries(cost.sweepPass))} a day`,
      },
      {
        case: 'one feedback read: reads every feedback shard',
        'Query requests': queries(cost.feedbackPage),
        'how often': 'per GET /messages/serviceBound/feedback (a page of up to 100 records)',
      },
    ]);
    ctx.table(
      'c2d cost of one more message (send, deliver, complete) to a device that already holds completed messages in retention',
      cost.retained.map((r) => ({
        'completed messages held': r.held,
        ...costColumns(r.counts, 1, ITEM_OPERATIONS),
      })),
    );
  },
};
