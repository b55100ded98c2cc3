import { describe, expect, it } from 'vitest';
import { MemoryDeliveryLedger } from '../../functions/adapters/ledger-memory.ts';
import {
  C2D_SETTINGS_ENV,
  c2dSettingsFromEnv,
  c2dSettingsSchema,
  DEFAULT_C2D_SETTINGS,
} from '../../functions/core/c2d/config.ts';
import {
  assertDeliverable,
  C2dDelivery,
  deviceboundPropertyBag,
  MAX_TOPIC_BYTES,
} from '../../functions/core/c2d/delivery.ts';
import type { FeedbackRecord } from '../../functions/core/c2d/feedback.ts';
import { newLockToken, newQueueKey } from '../../functions/core/c2d/keys.ts';
import type { DeliveryLedger } from '../../functions/core/c2d/ledger.ts';
import { type C2dMessage, createMessage, parseSendRequest } from '../../functions/core/c2d/message.ts';
import {
  coversDevicebound,
  deviceboundFilter,
  deviceboundTopic,
  settleResponseTopic,
} from '../../functions/core/c2d/topics.ts';
import { HubError, ValidationError } from '../../functions/core/errors.ts';
import { statusOf } from '../../functions/core/service-api/http.ts';
import { decodeDelivery, FakeClock, MemoryLog, RecordingPublisher } from './fakes.ts';

const T0 = Date.parse('2030-01-01T00:00:00.000Z');
const LOCK_MS = 30_000;
const TTL_MS = 3_600_000;

interface SetupOptions {
  maxInFlight?: number;
  maxDeliveryCount?: number;
  feedbackSink?: (record: FeedbackRecord) => Promise<void>;
}

function setup(options: SetupOptions = {}) {
  const clock = new FakeClock(T0);
  const ledger = new MemoryDeliveryLedger(
    options.feedbackSink === undefined ? {} : { feedbackSink: options.feedbackSink },
  );
  const publisher = new RecordingPublisher();
  const log = new MemoryLog();
  const maxDeliveryCount = options.maxDeliveryCount ?? 10;
  const delivery = new C2dDelivery({
    ledger,
    publisher,
    settings: { lockTimeoutMs: LOCK_MS, maxInFlight: options.maxInFlight ?? 5 },
    log,
    now: clock.now,
  });
  const build = (deviceId: string, request: Record<string, unknown> = {}): C2dMessage =>
    createMessage(deviceId, parseSendRequest({ body: 'hello', ...request }), {
      now: clock.now(),
      config: { defaultTtlMs: TTL_MS, maxDeliveryCount },
    });
  const send = (deviceId: string, request: Record<string, unknown> = {}): Promise<C2dMessage> =>
    ledger.enqueue(deviceId, build(deviceId, request), { maxQueueDepth: 50 });
  const state = async (deviceId: string, messageId: string): Promise<C2dMessage> => {
    const m = await ledger.get(deviceId, messageId);
    if (m === undefined) throw new Error(`no message ${messageId}`);
    return m;
  };
  return { clock, ledger, publisher, log, delivery, build, send, state };
}

async function allFeedback(ledger: DeliveryLedger): Promise<FeedbackRecord[]> {
  const out: FeedbackRecord[] = [];
  let cursor: string | undefined;
  for (;;) {
    const page = await ledger.readFeedback({ limit: 50, ...(cursor === undefined ? {} : { cursor }) });
    if (page.records.length === 0) return out;
    out.push(...page.records);
    cursor = page.cursor;
  }
}

const connected = async () => true;
const disconnected = async () => false;

describe('C2dDelivery.deliver', () => {
  it('delivers a queue in order, at most maxInFlight unsettled, and nothing of other devices', async () => {
    const t = setup({ maxInFlight: 2 });
    for (const id of ['m1', 'm2', 'm3', 'm4']) await t.send('dev', { messageId: id, body: `body-${id}` });
    await t.send('other', { messageId: 'o1' });

    const report = await t.delivery.deliver('dev');

    expect(report).toEqual({ deviceId: 'dev', delivered: ['m1', 'm2'], failed: [] });
    const seen = t.publisher.deliveries();
    expect(seen.map((d) => d.props['$.mid'])).toEqual(['m1', 'm2']);
    expect(seen.map((d) => d.body)).toEqual(['body-m1', 'body-m2']);
    expect(seen.every((d) => d.deviceId === 'dev')).toBe(true);
    expect((await t.state('dev', 'm1')).state).toBe('Invisible');
    expect((await t.state('dev', 'm2')).state).toBe('Invisible');
    expect((await t.state('dev', 'm3')).state).toBe('Enqueued');
    expect((await t.state('other', 'o1')).state).toBe('Enqueued');

    // Full: a second pass publishes nothing more.
    expect(await t.delivery.deliver('dev')).toEqual({ deviceId: 'dev', delivered: [], failed: [] });
    expect(t.publisher.published).toHaveLength(2);
  });

  it('two racing passes together lock each message once and stay within maxInFlight', async () => {
    const t = setup({ maxInFlight: 2 });
    for (const id of ['m1', 'm2', 'm3', 'm4']) await t.send('dev', { messageId: id });

    const reports = await Promise.all([t.delivery.deliver('dev'), t.delivery.deliver('dev')]);

    const delivered = reports.flatMap((r) => r.delivered).sort();
    expect(delivered).toEqual(['m1', 'm2']);
    expect(
      t.publisher
        .deliveries()
        .map((d) => d.props['$.mid'])
        .sort(),
    ).toEqual(['m1', 'm2']);
    for (const id of ['m1', 'm2']) expect((await t.state('dev', id)).deliveryCount).toBe(1);
    expect((await t.state('dev', 'm3')).state).toBe('Enqueued');
  });

  it('with maxInFlight 1, completing a message frees the room and the next one is delivered', async () => {
    const t = setup({ maxInFlight: 1 });
    for (const id of ['m1', 'm2', 'm3']) await t.send('dev', { messageId: id });
    await t.delivery.deliver('dev');
    expect(t.publisher.deliveries().map((d) => d.props['$.mid'])).toEqual(['m1']);

    for (const [done, next] of [
      ['m1', 'm2'],
      ['m2', 'm3'],
    ] as const) {
      const lockToken = (await t.state('dev', done)).lockToken ?? '';
      const answer = await t.delivery.settle('dev', 'complete', lockToken);
      expect(answer.status).toBe(200);
      expect(t.publisher.deliveries().at(-1)?.props['$.mid']).toBe(next);
      expect((await t.state('dev', next)).state).toBe('Invisible');
    }
    expect(t.publisher.deliveries().map((d) => d.props['$.mid'])).toEqual(['m1', 'm2', 'm3']);
  });

  it('a settlement that left nothing waiting runs no delivery pass (no read of the queue)', async () => {
    const t = setup();
    await t.send('dev', { messageId: 'm1' });
    await t.delivery.deliver('dev');
    let plans = 0;
    const plan = t.ledger.deliveryPlan.bind(t.ledger);
    t.ledger.deliveryPlan = (...args) => {
      plans++;
      return plan(...args);
    };
    const answer = await t.delivery.settle('dev', 'complete', (await t.state('dev', 'm1')).lockToken ?? '');
    expect(answer.status).toBe(200);
    expect(plans).toBe(0);
  });

  it('a message sent when there is no room is delivered when an in-flight message settles (wake)', async () => {
    const t = setup({ maxInFlight: 1 });
    const first = await t.delivery.send('dev', t.build('dev', { messageId: 'm1' }), {
      maxQueueDepth: 50,
      connected: true,
    });
    expect(first.state).toBe('Invisible');
    const second = await t.delivery.send('dev', t.build('dev', { messageId: 'm2' }), {
      maxQueueDepth: 50,
      connected: true,
    });
    expect(second.state).toBe('Enqueued');
    // The send's pass found no room and marked m1, which was locked before m2 existed.
    expect((await t.state('dev', 'm1')).wake).toBe(true);
    const answer = await t.delivery.settle('dev', 'complete', (await t.state('dev', 'm1')).lockToken ?? '');
    expect(answer.status).toBe(200);
    expect(t.publisher.deliveries().map((d) => d.props['$.mid'])).toEqual(['m1', 'm2']);
    expect((await t.state('dev', 'm2')).state).toBe('Invisible');
  });

  it('writes the property bag IoT Hub-style; decoded, it carries the message and a lock token that settles it', async () => {
    const t = setup();
    await t.send('dev-1', {
      messageId: 'mid-1',
      body: '{"on":true}',
      correlationId: 'corr/1 &x',
      userId: 'user-1',
      contentType: 'application/json',
      contentEncoding: 'utf-8',
      properties: { 'a&b': 'x=1&y=2 /ü', plain: 'v' },
      ack: 'full',
      ttlMs: 120_000,
    });
    await t.delivery.deliver('dev-1');
    const [published] = t.publisher.published;
    const [d] = t.publisher.deliveries();
    if (published === undefined || d === undefined) throw new Error('nothing published');
    const stored = await t.state('dev-1', 'mid-1');

    expect(published.topic.startsWith(deviceboundTopic('dev-1', ''))).toBe(true);
    // One topic level for the whole bag: values' '/', '&', '=', '+', '#' and spaces are encoded.
    expect(published.topic.split('/')).toHaveLength(5);
    expect(published.topic).not.toMatch(/[ +#]/);
    expect(d.pairs.filter(([k]) => k === 'a&b')).toEqual([['a&b', 'x=1&y=2 /ü']]);
    expect(d.body).toBe('{"on":true}');
    expect(d.props).toEqual({
      '$.mid': 'mid-1',
      '$.lt': stored.lockToken,
      '$.exp': new Date(T0 + 120_000).toISOString(),
      '$.cid': 'corr/1 &x',
      '$.uid': 'user-1',
      '$.ct': 'application/json',
      '$.ce': 'utf-8',
      'iothub-ack': 'full',
      '$.dc': '1',
      'a&b': 'x=1&y=2 /ü',
      plain: 'v',
    });
    expect(d.pairs.slice(0, 2).map(([k]) => k)).toEqual(['$.mid', '$.lt']);

    const answer = await t.delivery.settle('dev-1', 'complete', d.props['$.lt'] ?? '');
    expect(answer.status).toBe(200);
    expect(answer.body.state).toBe('Completed');
    expect((await t.state('dev-1', 'mid-1')).state).toBe('Completed');
  });

  it('leaves out iothub-ack and optional system properties that were not given', async () => {
    const t = setup();
    await t.send('dev', { messageId: 'plain' });
    await t.delivery.deliver('dev');
    const [d] = t.publisher.deliveries();
    expect(Object.keys(d?.props ?? {}).sort()).toEqual(['$.dc', '$.exp', '$.lt', '$.mid']);
  });

  it('stops the pass at a failed publish so later messages stay queued, and logs it', async () => {
    const t = setup({ maxInFlight: 3 });
    for (const id of ['m1', 'm2', 'm3']) await t.send('dev', { messageId: id });
    t.publisher.failWhen = (_topic, attempt) => attempt === 2;

    const report = await t.delivery.deliver('dev');

    expect(report).toEqual({ deviceId: 'dev', delivered: ['m1'], failed: ['m2'] });
    expect(t.publisher.published.map((p) => p.topic)).toHaveLength(1);
    expect(t.publisher.attempts).toHaveLength(2);
    const m2 = await t.state('dev', 'm2');
    expect([m2.state, m2.deliveryCount]).toEqual(['Invisible', 1]);
    const m3 = await t.state('dev', 'm3');
    expect([m3.state, m3.deliveryCount]).toEqual(['Enqueued', 0]);
    expect(t.log.at('warn').some((e) => e.context?.messageId === 'm2')).toBe(true);
  });

  it('redelivers a message whose publish failed once its lock lapses, when the device is connected', async () => {
    const t = setup({ maxInFlight: 1 });
    await t.send('dev', { messageId: 'm1' });
    await t.send('dev', { messageId: 'm2' });
    t.publisher.failWhen = (_topic, attempt) => attempt === 1;
    expect(await t.delivery.deliver('dev')).toEqual({ deviceId: 'dev', delivered: [], failed: ['m1'] });
    t.publisher.failWhen = undefined;
    const asked: string[] = [];
    const isConnected = async (id: string) => {
      asked.push(id);
      return true;
    };

    t.clock.advance(LOCK_MS - 1);
    const early = await t.delivery.sweep({ limit: 100, isConnected });
    // m2 waits behind m1 (maxInFlight 1): its delivery check is due, but there is no room yet.
    expect(early.report.changed).toEqual([
      { deviceId: 'dev', messageId: 'm2', from: 'Enqueued', to: 'Enqueued' },
    ]);
    expect(early.deliveries).toEqual([{ deviceId: 'dev', delivered: [], failed: [] }]);
    expect(t.publisher.published).toEqual([]);
    asked.length = 0;

    t.clock.advance(1);
    const swept = await t.delivery.sweep({ limit: 100, isConnected });
    // m1 was locked with m2 waiting behind it, so it carried `wake`.
    expect(swept.report.changed).toEqual([
      { deviceId: 'dev', messageId: 'm1', from: 'Invisible', to: 'Enqueued', wake: true },
    ]);
    expect(asked).toEqual(['dev']);
    expect(swept.deliveries).toEqual([{ deviceId: 'dev', delivered: ['m1'], failed: [] }]);
    const [again] = t.publisher.deliveries();
    expect(again?.props['$.mid']).toBe('m1');
    expect(again?.props['$.dc']).toBe('2');
    expect(again?.props['$.lt']).toBe((await t.state('dev', 'm1')).lockToken);
    expect((await t.state('dev', 'm2')).state).toBe('Enqueued');
  });

  it('delivers a queued message whose delivery trigger was lost once the sweep checks it, and backs off', async () => {
    const t = setup({ maxInFlight: 5 });
    // Enqueued, but the deliver call that should follow (send, connect) never ran: a crash or a race.
    await t.send('dev', { messageId: 'lost' });
    let connected = false;
    const isConnected = async () => connected;

    const offline = await t.delivery.sweep({ limit: 100, isConnected });
    expect(offline.report.changed).toEqual([
      { deviceId: 'dev', messageId: 'lost', from: 'Enqueued', to: 'Enqueued' },
    ]);
    expect(t.publisher.published).toEqual([]);
    // Checked: not due again at once (backs off), so an offline device costs one write per interval.
    expect((await t.delivery.sweep({ limit: 100, isConnected })).report.changed).toEqual([]);

    connected = true;
    t.clock.advance(10_000);
    const online = await t.delivery.sweep({ limit: 100, isConnected });
    expect(online.deliveries).toEqual([{ deviceId: 'dev', delivered: ['lost'], failed: [] }]);
    expect((await t.state('dev', 'lost')).state).toBe('Invisible');
  });

  it('releases but does not redeliver to a device that is not connected; its next connect delivers', async () => {
    const t = setup({ maxInFlight: 1 });
    await t.send('dev', { messageId: 'm1' });
    t.publisher.failWhen = () => true;
    await t.delivery.deliver('dev');
    t.publisher.failWhen = undefined;

    t.clock.advance(LOCK_MS);
    const swept = await t.delivery.sweep({ limit: 100, isConnected: disconnected });
    expect(swept.report.changed.map((c) => c.to)).toEqual(['Enqueued']);
    expect(swept.deliveries).toEqual([]);
    expect(t.publisher.published).toEqual([]);
    const m1 = await t.state('dev', 'm1');
    expect([m1.state, m1.deliveryCount]).toEqual(['Enqueued', 1]);

    expect((await t.delivery.deliver('dev')).delivered).toEqual(['m1']);
    expect(t.publisher.deliveries()[0]?.props['$.dc']).toBe('2');
  });

  it('a sweep that cannot tell whether a device is connected logs and goes on with the others', async () => {
    const t = setup({ maxInFlight: 1 });
    await t.send('a', { messageId: 'a1' });
    await t.send('b', { messageId: 'b1' });
    t.publisher.failWhen = () => true;
    await t.delivery.deliver('a');
    await t.delivery.deliver('b');
    t.publisher.failWhen = undefined;
    t.clock.advance(LOCK_MS);
    const swept = await t.delivery.sweep({
      limit: 100,
      isConnected: async (id) => {
        if (id === 'a') throw new Error('registry down');
        return true;
      },
    });
    expect(swept.deliveries.map((d) => d.deviceId)).toEqual(['b']);
    expect(t.log.at('warn').some((e) => e.context?.deviceId === 'a')).toBe(true);
  });
});

describe('C2dDelivery.settle', () => {
  it.each([
    ['complete', 'Completed'],
    ['reject', 'Rejected'],
    ['abandon', 'Enqueued'],
  ] as const)(
    '%s answers 200 with the new state and publishes the answer on settle/res/200/{token}',
    async (outcome, state) => {
      const t = setup();
      await t.send('dev', { messageId: 'm1' });
      await t.delivery.deliver('dev');
      const lockToken = (await t.state('dev', 'm1')).lockToken ?? '';

      const answer = await t.delivery.settle('dev', outcome, lockToken);

      expect(answer).toEqual({
        status: 200,
        body: { status: 200, outcome, lockToken, messageId: 'm1', state },
      });
      const answers = t.publisher.answers();
      expect(answers).toHaveLength(1);
      expect(answers[0]?.topic).toBe(settleResponseTopic('dev', 200, lockToken));
      expect(answers[0]?.topic).toBe(`devices/dev/messages/settle/res/200/${lockToken}`);
      expect(answers[0]?.body).toEqual(answer.body);
      if (outcome !== 'abandon') expect((await t.state('dev', 'm1')).state).toBe(state);
    },
  );

  it('abandon redelivers at once, with a new lock token, ahead of the messages behind it', async () => {
    const t = setup({ maxInFlight: 1 });
    await t.send('dev', { messageId: 'm1' });
    await t.send('dev', { messageId: 'm2' });
    await t.delivery.deliver('dev');
    const first = (await t.state('dev', 'm1')).lockToken ?? '';

    expect((await t.delivery.settle('dev', 'abandon', first)).status).toBe(200);

    const seen = t.publisher.deliveries();
    expect(seen.map((d) => [d.props['$.mid'], d.props['$.dc']])).toEqual([
      ['m1', '1'],
      ['m1', '2'],
    ]);
    const again = await t.state('dev', 'm1');
    expect(again.state).toBe('Invisible');
    expect(again.lockToken).not.toBe(first);
    expect(seen[1]?.props['$.lt']).toBe(again.lockToken);
    expect((await t.state('dev', 'm2')).state).toBe('Enqueued');
  });

  it('an unknown lock token answers 404 and delivers nothing', async () => {
    const t = setup();
    await t.send('dev', { messageId: 'm1' });
    for (const token of ['not-a-token', newLockToken(newQueueKey(T0))]) {
      const answer = await t.delivery.settle('dev', 'complete', token);
      expect(answer.status).toBe(404);
      expect(answer.body).toMatchObject({ status: 404, code: 'MessageNotFound', lockToken: token });
      expect(t.publisher.answers().at(-1)?.topic).toBe(settleResponseTopic('dev', 404, token));
    }
    expect(t.publisher.deliveries()).toEqual([]);
    expect((await t.state('dev', 'm1')).state).toBe('Enqueued');
  });

  it('a token settled twice answers 412 StaleLockToken the second time', async () => {
    const t = setup();
    await t.send('dev', { messageId: 'm1' });
    await t.delivery.deliver('dev');
    const lockToken = (await t.state('dev', 'm1')).lockToken ?? '';
    expect((await t.delivery.settle('dev', 'complete', lockToken)).status).toBe(200);

    const again = await t.delivery.settle('dev', 'reject', lockToken);

    expect(again.status).toBe(412);
    expect(again.body).toMatchObject({ status: 412, code: 'StaleLockToken', lockToken });
    expect(t.publisher.answers().map((a) => a.status)).toEqual([200, 412]);
    expect((await t.state('dev', 'm1')).state).toBe('Completed');
  });

  it('a token whose lock lapsed answers 412 and changes nothing', async () => {
    const t = setup();
    await t.send('dev', { messageId: 'm1' });
    await t.delivery.deliver('dev');
    const before = await t.state('dev', 'm1');
    t.clock.advance(LOCK_MS);
    const answer = await t.delivery.settle('dev', 'complete', before.lockToken ?? '');
    expect(answer.status).toBe(412);
    expect(await t.state('dev', 'm1')).toEqual(before);
  });

  it('an unknown outcome answers 400 and leaves the message locked', async () => {
    const t = setup();
    await t.send('dev', { messageId: 'm1' });
    await t.delivery.deliver('dev');
    const before = await t.state('dev', 'm1');
    const lockToken = before.lockToken ?? '';

    const answer = await t.delivery.settle('dev', 'accept', lockToken);

    expect(answer.status).toBe(400);
    expect(answer.body).toMatchObject({ status: 400, code: 'InvalidSettlement', lockToken });
    expect(String(answer.body.message)).toContain('accept');
    expect(t.publisher.answers().map((a) => a.topic)).toEqual([settleResponseTopic('dev', 400, lockToken)]);
    expect(await t.state('dev', 'm1')).toEqual(before);
  });

  it("another device's lock token answers 404 to that device and leaves the message untouched", async () => {
    const t = setup();
    await t.send('dev-a', { messageId: 'm1' });
    await t.delivery.deliver('dev-a');
    const before = await t.state('dev-a', 'm1');
    const lockToken = before.lockToken ?? '';

    const answer = await t.delivery.settle('dev-b', 'complete', lockToken);

    expect(answer.status).toBe(404);
    expect(t.publisher.answers().map((a) => a.topic)).toEqual([settleResponseTopic('dev-b', 404, lockToken)]);
    expect(await t.state('dev-a', 'm1')).toEqual(before);
    expect((await t.delivery.settle('dev-a', 'complete', lockToken)).status).toBe(200);
  });

  it('still settles when the answer cannot be published, and logs it', async () => {
    const t = setup();
    await t.send('dev', { messageId: 'm1' });
    await t.delivery.deliver('dev');
    const lockToken = (await t.state('dev', 'm1')).lockToken ?? '';
    t.publisher.failWhen = (topic) => topic.includes('/settle/res/');
    const answer = await t.delivery.settle('dev', 'complete', lockToken);
    expect(answer.status).toBe(200);
    expect((await t.state('dev', 'm1')).state).toBe('Completed');
    expect(t.log.at('warn').some((e) => e.context?.lockToken === lockToken)).toBe(true);
  });

  it('abandoning past maxDeliveryCount dead-letters with deliveryCountExceeded feedback', async () => {
    const t = setup({ maxInFlight: 1, maxDeliveryCount: 2 });
    await t.send('dev', { messageId: 'm1', ack: 'negative' });
    await t.send('dev', { messageId: 'm2' });
    await t.delivery.deliver('dev');

    const states: unknown[] = [];
    for (let i = 0; i < 2; i++) {
      const lockToken = (await t.state('dev', 'm1')).lockToken ?? '';
      states.push((await t.delivery.settle('dev', 'abandon', lockToken)).body.state);
    }

    expect(states).toEqual(['Enqueued', 'DeadLettered']);
    const m1 = await t.state('dev', 'm1');
    expect([m1.state, m1.deliveryCount]).toEqual(['DeadLettered', 2]);
    expect(t.publisher.deliveries().map((d) => d.props['$.mid'])).toEqual(['m1', 'm1', 'm2']);
    const feedback = await allFeedback(t.ledger);
    expect(feedback).toHaveLength(1);
    expect(feedback[0]).toMatchObject({
      originalMessageId: 'm1',
      deviceId: 'dev',
      status: 'deliveryCountExceeded',
      statusCode: 'DeliveryCountExceeded',
    });
  });

  it('lapsing locks past maxDeliveryCount dead-letter in the sweep, with feedback, and are not redelivered', async () => {
    const t = setup({ maxInFlight: 1, maxDeliveryCount: 2 });
    await t.send('dev', { messageId: 'm1', ack: 'full' });
    await t.delivery.deliver('dev');
    t.clock.advance(LOCK_MS);
    const first = await t.delivery.sweep({ limit: 100, isConnected: connected });
    expect(first.deliveries).toEqual([{ deviceId: 'dev', delivered: ['m1'], failed: [] }]);
    t.clock.advance(LOCK_MS);

    const second = await t.delivery.sweep({ limit: 100, isConnected: connected });

    expect(second.report.changed).toEqual([
      { deviceId: 'dev', messageId: 'm1', from: 'Invisible', to: 'DeadLettered' },
    ]);
    expect(second.report.feedback.map((f) => f.status)).toEqual(['deliveryCountExceeded']);
    expect(second.deliveries).toEqual([]);
    expect(t.publisher.deliveries()).toHaveLength(2);
    expect((await allFeedback(t.ledger)).map((f) => f.status)).toEqual(['deliveryCountExceeded']);
  });
});

describe('feedbackSink', () => {
  it('receives each feedback record the ledger writes', async () => {
    const received: FeedbackRecord[] = [];
    const t = setup({ maxInFlight: 3, feedbackSink: async (r) => void received.push(r) });
    await t.send('dev', { messageId: 'ok', ack: 'full', correlationId: 'c-1' });
    await t.send('dev', { messageId: 'no', ack: 'negative' });
    await t.send('dev', { messageId: 'quiet', ack: 'none' });
    await t.delivery.deliver('dev');
    for (const [id, outcome] of [
      ['ok', 'complete'],
      ['no', 'reject'],
      ['quiet', 'complete'],
    ] as const) {
      await t.delivery.settle('dev', outcome, (await t.state('dev', id)).lockToken ?? '');
    }
    await t.send('dev', { messageId: 'gone', ack: 'full' });
    await t.ledger.purge('dev', t.clock.now());

    expect(received.map((r) => [r.originalMessageId, r.status])).toEqual([
      ['ok', 'success'],
      ['no', 'rejected'],
      ['gone', 'purged'],
    ]);
    expect(received[0]?.correlationId).toBe('c-1');
    const stored = await allFeedback(t.ledger);
    expect([...stored].sort(byId)).toEqual([...received].sort(byId));
    for (const id of ['ok', 'no', 'gone']) expect((await t.state('dev', id)).pendingFeedback).toBeUndefined();
  });

  it('a sink that throws leaves the feedback owed; the next sweep calls it again, then no more', async () => {
    const calls: FeedbackRecord[] = [];
    let failing = true;
    const t = setup({
      feedbackSink: async (r) => {
        calls.push(r);
        if (failing) throw new Error('stream down');
      },
    });
    await t.send('dev', { messageId: 'm1', ack: 'positive' });
    await t.delivery.deliver('dev');

    const answer = await t.delivery.settle('dev', 'complete', (await t.state('dev', 'm1')).lockToken ?? '');

    expect(answer.status).toBe(200);
    expect(calls).toHaveLength(1);
    const owed = await t.state('dev', 'm1');
    expect([owed.state, owed.pendingFeedback]).toEqual(['Completed', 'success']);
    expect(await allFeedback(t.ledger)).toHaveLength(1); // in the ledger already, only the stream missed it

    failing = false;
    t.clock.advance(1);
    const swept = await t.delivery.sweep({ limit: 100, isConnected: connected });

    expect(calls).toHaveLength(2);
    expect(calls[1]).toEqual(calls[0]); // same record, same id: consumers drop the duplicate
    expect(swept.report.feedback.map((f) => f.id)).toEqual([calls[0]?.id]);
    expect((await t.state('dev', 'm1')).pendingFeedback).toBeUndefined();
    expect(await allFeedback(t.ledger)).toHaveLength(1);

    t.clock.advance(1);
    await t.delivery.sweep({ limit: 100, isConnected: connected });
    expect(calls).toHaveLength(2);
  });

  it('a sink that keeps failing does not stop the sweep releasing locks of other messages', async () => {
    let calls = 0;
    const t = setup({
      maxInFlight: 1,
      feedbackSink: async () => {
        calls++;
        throw new Error('stream down');
      },
    });
    await t.send('a', { messageId: 'a1', ack: 'full' });
    await t.delivery.deliver('a');
    await t.delivery.settle('a', 'complete', (await t.state('a', 'a1')).lockToken ?? '');
    await t.send('b', { messageId: 'b1' });
    t.publisher.failWhen = () => true;
    await t.delivery.deliver('b');
    t.publisher.failWhen = undefined;
    expect(calls).toBe(1);

    t.clock.advance(LOCK_MS);
    const swept = await t.delivery.sweep({ limit: 100, isConnected: connected });

    expect(calls).toBe(2);
    expect(swept.report.changed).toEqual([
      { deviceId: 'b', messageId: 'b1', from: 'Invisible', to: 'Enqueued' },
    ]);
    expect(swept.deliveries).toEqual([{ deviceId: 'b', delivered: ['b1'], failed: [] }]);
    expect((await t.state('a', 'a1')).pendingFeedback).toBe('success');

    t.clock.advance(1);
    await t.delivery.sweep({ limit: 100, isConnected: connected });
    expect(calls).toBe(3);
  });
});

function byId(a: FeedbackRecord, b: FeedbackRecord): number {
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

describe('assertDeliverable', () => {
  const t = setup();

  it('refuses a message whose devicebound topic would be over 256 bytes with a 400 naming properties and the limit', () => {
    const message = t.build('dev', { properties: { note: 'n'.repeat(200) } });
    let error: unknown;
    try {
      assertDeliverable(message);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ValidationError);
    const v = error as ValidationError;
    expect(v.code).toBe('C2dTopicTooLong');
    expect(v.message).toContain('properties');
    expect(v.message).toContain(String(MAX_TOPIC_BYTES));
    expect(v.context.field).toBe('properties');
    expect(v.context.limit).toBe(MAX_TOPIC_BYTES);
    expect(v.context.bytes).toBeGreaterThan(MAX_TOPIC_BYTES);
    expect(statusOf(v)).toBe(400);
  });

  /** The longest value of property `p` that `assertDeliverable` accepts on top of `request`, found by growing it. */
  function room(request: Record<string, unknown>, char = 'v'): number {
    let n = 0;
    for (;;) {
      try {
        assertDeliverable(t.build('d1', { ...request, properties: { p: char.repeat(n + 1) } }));
      } catch {
        return n;
      }
      n++;
      if (n > 1000) throw new Error('no limit found');
    }
  }

  it('counts URL-encoding: a multi-byte character takes its percent-encoded size', () => {
    const ascii = room({ messageId: 'm1' });
    expect(ascii).toBeGreaterThan(6);
    // 'é' is 2 UTF-8 bytes, 6 once percent-encoded (%C3%A9).
    expect(room({ messageId: 'm1' }, 'é')).toBe(Math.floor(ascii / 6));
  });

  it('counts the worst case: the longest lock token and the last delivery count', () => {
    // A message with more delivery attempts has a longer %24.dc to carry on its last delivery.
    const one = room({ messageId: 'm1' });
    const t100 = setup({ maxDeliveryCount: 100 });
    let n = 0;
    while (n < 1000) {
      try {
        assertDeliverable(t100.build('d1', { messageId: 'm1', properties: { p: 'v'.repeat(n + 1) } }));
        n++;
      } catch {
        break;
      }
    }
    expect(n).toBe(one - 1); // '100' is one character longer than '10'
  });

  it.each([
    ['a short message', { messageId: 'm1' }],
    ['a 64 KB body (the body is not in the topic)', { messageId: 'm1', body: 'b'.repeat(64 * 1024) }],
    ['a message with a generated message id', {}],
    ['a message that asks for feedback', { ack: 'full' }],
    ['a JSON message with a correlation id', { contentType: 'application/json', correlationId: 'c1' }],
    [
      'a message with two short properties',
      { messageId: 'order-17', properties: { kind: 'led', state: 'on' } },
    ],
  ])('accepts an ordinary message: %s', (_name, request) => {
    expect(() => assertDeliverable(t.build('device-01', request))).not.toThrow();
  });

  it('every message it accepts is published on a topic of at most 256 bytes, up to its last delivery', async () => {
    const d = setup({ maxInFlight: 1, maxDeliveryCount: 10 });
    const longest = room({ messageId: 'edge' });
    const request = { messageId: 'edge', properties: { p: 'v'.repeat(longest) } };
    expect(() => assertDeliverable(d.build('d1', request))).not.toThrow();

    await d.send('d1', request);
    await d.delivery.deliver('d1');
    for (let i = 1; i < 10; i++) {
      await d.delivery.settle('d1', 'abandon', (await d.state('d1', 'edge')).lockToken ?? '');
    }
    const seen = d.publisher.deliveries();
    expect(seen).toHaveLength(10);
    expect(seen.at(-1)?.props['$.dc']).toBe('10');
    for (const { topic } of seen)
      expect(Buffer.byteLength(topic, 'utf8')).toBeLessThanOrEqual(MAX_TOPIC_BYTES);
  });

  it('deviceboundPropertyBag numbers deliveries from the message, not the caller', () => {
    const m = { ...t.build('dev', { messageId: 'm' }), deliveryCount: 3 };
    const { props } = decodeDelivery({
      topic: deviceboundTopic('dev', deviceboundPropertyBag(m, 'tok')),
      payload: new Uint8Array(),
    });
    expect(props['$.dc']).toBe('3');
    expect(props['$.lt']).toBe('tok');
  });
});

describe('coversDevicebound', () => {
  it.each([
    ['the device filter itself', deviceboundFilter('dev-1'), true],
    ['#', '#', true],
    ['devices/#', 'devices/#', true],
    ['devices/dev-1/#', 'devices/dev-1/#', true],
    ['+ for the device', 'devices/+/messages/devicebound/#', true],
    ['+ for messages', 'devices/dev-1/+/devicebound/#', true],
    ['+ for the property bag', 'devices/dev-1/messages/devicebound/+', true],
    ['+ and # after the bag level', 'devices/dev-1/messages/devicebound/+/#', true],
    ['five +', '+/+/+/+/+', true],
    ['+/#', '+/#', true],
    ['another device', 'devices/dev-2/messages/devicebound/#', false],
    ['another device, + after it', 'devices/dev-2/messages/devicebound/+', false],
    ['a prefix of the id', 'devices/dev-/messages/devicebound/#', false],
    ['the device-to-cloud topics', 'devices/dev-1/messages/events/#', false],
    ['the settlement responses', 'devices/dev-1/messages/settle/res/#', false],
    ['devicebound without a bag level', 'devices/dev-1/messages/devicebound', false],
    ['a trailing empty level', 'devices/dev-1/messages/devicebound/', false],
    ['shorter: devices/dev-1', 'devices/dev-1', false],
    ['shorter: four +', '+/+/+/+', false],
    ['longer: six levels', 'devices/dev-1/messages/devicebound/+/+', false],
    ['a literal bag level', 'devices/dev-1/messages/devicebound/x', false],
    ['a literal bag level like a property bag', 'devices/dev-1/messages/devicebound/%24.mid=1', false],
    ['case differs', 'Devices/dev-1/messages/devicebound/#', false],
  ])('%s: %s → %s', (_name, filter, covers) => {
    expect(coversDevicebound('dev-1', filter)).toBe(covers);
  });
});

describe('c2dSettingsFromEnv', () => {
  it('gives the defaults when the variable is missing or empty', () => {
    const defaults = c2dSettingsSchema.parse({});
    expect(c2dSettingsFromEnv({})).toEqual(defaults);
    expect(c2dSettingsFromEnv({ [C2D_SETTINGS_ENV]: '' })).toEqual(defaults);
    expect(DEFAULT_C2D_SETTINGS).toEqual(defaults);
    expect(defaults).toMatchObject({
      maxInFlight: 5,
      sweepIntervalMs: 10_000,
      lockTimeoutMs: 60_000,
      maxDeliveryCount: 10,
      maxQueueDepth: 50,
      defaultTtlMs: 3_600_000,
    });
  });

  it('reads given fields and defaults the rest', () => {
    const settings = c2dSettingsFromEnv({
      [C2D_SETTINGS_ENV]: JSON.stringify({ maxInFlight: 1, lockTimeoutMs: 5_000 }),
    });
    expect(settings).toEqual({ ...c2dSettingsSchema.parse({}), maxInFlight: 1, lockTimeoutMs: 5_000 });
  });

  it('refuses text that is not JSON, naming the variable', () => {
    const error = catchError(() => c2dSettingsFromEnv({ [C2D_SETTINGS_ENV]: '{maxInFlight: 1' }));
    expect(error).toBeInstanceOf(HubError);
    expect((error as HubError).code).toBe('InvalidEnvironment');
    expect((error as HubError).message).toContain(C2D_SETTINGS_ENV);
    expect((error as HubError).context.key).toBe(C2D_SETTINGS_ENV);
  });

  it.each([
    ['maxInFlight', 0],
    ['maxInFlight', 101],
    ['maxInFlight', 1.5],
    ['sweepIntervalMs', 999],
    ['sweepIntervalMs', 60_001],
    ['lockTimeoutMs', 'soon'],
    ['maxQueueDepth', 0],
  ])('refuses %s = %j, naming the field', (field, value) => {
    const error = catchError(() =>
      c2dSettingsFromEnv({ [C2D_SETTINGS_ENV]: JSON.stringify({ [field]: value }) }),
    );
    expect(error).toBeInstanceOf(HubError);
    expect((error as HubError).code).toBe('InvalidEnvironment');
    expect((error as HubError).message).toContain(C2D_SETTINGS_ENV);
    expect((error as HubError).message).toContain(field);
  });

  it('refuses an unknown field, naming it', () => {
    const error = catchError(() => c2dSettingsFromEnv({ [C2D_SETTINGS_ENV]: '{"maxInflight":3}' }));
    expect((error as HubError).code).toBe('InvalidEnvironment');
    expect((error as HubError).message).toContain('maxInflight');
  });

  it('refuses JSON that is not an object', () => {
    for (const raw of ['[]', '3', 'null']) {
      expect((catchError(() => c2dSettingsFromEnv({ [C2D_SETTINGS_ENV]: raw })) as HubError).code).toBe(
        'InvalidEnvironment',
      );
    }
  });
});

function catchError(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error('expected an error');
}
