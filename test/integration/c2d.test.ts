import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readJsonStream } from '../support/built-in.ts';
import { C2dTestDevice } from '../support/c2d-device.ts';
import { type DeviceCredentials, registerDevice, sasCredentials, service } from '../support/devices.ts';
import { type HubProcess, startHubProcess, tempDataDir, testTemplate } from '../support/hub-process.ts';

// Functional tests run with a lock long enough that a loaded machine never lapses one by accident;
// the lapse, dead-letter, race and crash tests use a short lock and sweep so those happen in seconds.
const LONG_LOCK_MS = 30_000;
const LOCK_MS = 2_000;
const MAX_DELIVERIES = 3;

// The crash-then-settle test needs its redeliveries to outlast a slow restart: a loaded machine can let
// two 2 s locks lapse before the device's completions arrive, and a third would dead-letter the message.
const CRASH_SETTLE_MAX_DELIVERIES = 10;

const templates = new Map<string, string>();
/** The stack synthesized with test C2D settings, written once per lock timeout and delivery limit. */
function c2dTemplate(lockTimeoutMs: number, maxDeliveryCount = MAX_DELIVERIES): string {
  const key = `${lockTimeoutMs}/${maxDeliveryCount}`;
  const cached = templates.get(key);
  if (cached !== undefined) return cached;
  const file = testTemplate({
    c2d: { lockTimeoutMs, sweepIntervalMs: 1_000, maxDeliveryCount, maxInFlight: 5 },
  });
  templates.set(key, file);
  return file;
}

function startC2dHub(
  dataDir?: string,
  lockTimeoutMs = LOCK_MS,
  maxDeliveryCount = MAX_DELIVERIES,
): Promise<HubProcess> {
  return startHubProcess({
    ...(dataDir ? { dataDir } : {}),
    args: [`--template=${c2dTemplate(lockTimeoutMs, maxDeliveryCount)}`],
  });
}

interface MessageStatus {
  messageId: string;
  state: string;
  deliveryCount: number;
}

interface FeedbackRecord {
  id: string;
  originalMessageId: string;
  deviceId: string;
  status: string;
  statusCode: string;
}

async function send(hub: HubProcess, deviceId: string, message: Record<string, unknown>) {
  return service(hub.endpoints, 'POST', `/devices/${deviceId}/messages/deviceBound`, message);
}

async function sendOk(hub: HubProcess, deviceId: string, message: Record<string, unknown>) {
  const response = await send(hub, deviceId, message);
  if (response.status !== 201) throw new Error(`send: ${response.status} ${JSON.stringify(response.body)}`);
  return response.body as MessageStatus;
}

async function status(hub: HubProcess, deviceId: string, messageId: string): Promise<MessageStatus> {
  const response = await service(
    hub.endpoints,
    'GET',
    `/devices/${deviceId}/messages/deviceBound/${messageId}`,
  );
  if (response.status !== 200) throw new Error(`status: ${response.status} ${JSON.stringify(response.body)}`);
  return response.body as MessageStatus;
}

async function eventually<T>(read: () => Promise<T>, ok: (value: T) => boolean, what: string, ms = 20_000) {
  const deadline = Date.now() + ms;
  let last: T = await read();
  while (!ok(last)) {
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 200));
    last = await read();
  }
  return last;
}

/** All unacknowledged feedback records (every page). */
async function allFeedback(hub: HubProcess): Promise<FeedbackRecord[]> {
  const records: FeedbackRecord[] = [];
  let cursor: string | undefined;
  for (;;) {
    const query = cursor === undefined ? '' : `&cursor=${encodeURIComponent(cursor)}`;
    const page = await service(hub.endpoints, 'GET', `/messages/serviceBound/feedback?limit=100${query}`);
    const body = page.body as { records: FeedbackRecord[]; cursor: string };
    records.push(...body.records);
    if (body.records.length < 100) return records;
    cursor = body.cursor;
  }
}

async function feedbackFor(hub: HubProcess, messageId: string): Promise<FeedbackRecord> {
  const records = await eventually(
    () => allFeedback(hub),
    (r) => r.some((f) => f.originalMessageId === messageId),
    `feedback for ${messageId}`,
  );
  return records.find((f) => f.originalMessageId === messageId)!;
}

describe('cloud-to-device messages on the local hub', () => {
  let hub: HubProcess;
  beforeAll(async () => {
    hub = await startC2dHub(undefined, LONG_LOCK_MS);
  });
  afterAll(async () => {
    await hub?.stop();
  });

  it('delivers at once to a connected device, with its properties, and completes with positive feedback', async () => {
    const device = await C2dTestDevice.connect(
      hub.endpoints,
      await registerDevice(hub.endpoints, 'c2d-online'),
    );
    try {
      await eventually(
        async () =>
          (await service(hub.endpoints, 'GET', '/devices/c2d-online')).body as { connectionState: string },
        (d) => d.connectionState === 'Connected',
        'the registry to see the device connected',
      );
      const sent = await sendOk(hub, 'c2d-online', {
        body: '{"led":"on"}',
        messageId: 'm-online',
        correlationId: 'corr-1',
        contentType: 'application/json',
        contentEncoding: 'utf-8',
        properties: { priority: 'high', 'x-y': 'a&b=c d/e' },
        ack: 'full',
      });
      expect(sent.messageId).toBe('m-online');
      const [got] = await device.receivedCount(1);
      expect(got!.body).toBe('{"led":"on"}');
      expect(got!.properties).toMatchObject({
        '$.mid': 'm-online',
        '$.cid': 'corr-1',
        '$.ct': 'application/json',
        '$.ce': 'utf-8',
        'iothub-ack': 'full',
        '$.dc': '1',
        priority: 'high',
        'x-y': 'a&b=c d/e',
      });
      expect(Date.parse(got!.properties['$.exp']!)).toBeGreaterThan(Date.now());
      expect((await status(hub, 'c2d-online', 'm-online')).state).toBe('Invisible');

      const answer = await device.settle('complete', got!.lockToken);
      expect(answer).toMatchObject({ status: 200, body: { state: 'Completed', messageId: 'm-online' } });
      expect(await status(hub, 'c2d-online', 'm-online')).toMatchObject({
        state: 'Completed',
        deliveryCount: 1,
      });
      expect(await feedbackFor(hub, 'm-online')).toMatchObject({
        deviceId: 'c2d-online',
        status: 'success',
        statusCode: 'Success',
      });
      // The same record is on the feedback stream (the feedback endpoint), keyed by device id.
      const record = await feedbackFor(hub, 'm-online');
      const onStream = await eventually(
        () => readJsonStream(hub.endpoints.kinesis, hub.endpoints.feedbackStream),
        (rs) => rs.some((r) => r.json.id === record.id),
        'the feedback record on the feedback stream',
      );
      expect(onStream.find((r) => r.json.id === record.id)).toEqual({
        partitionKey: 'c2d-online',
        json: record,
      });
    } finally {
      await device.end();
    }
  });

  it('keeps messages for an offline device and delivers the queue in order when it connects', async () => {
    const creds = await registerDevice(hub.endpoints, 'c2d-offline');
    for (let i = 0; i < 8; i++) await sendOk(hub, 'c2d-offline', { body: `n${i}`, messageId: `off-${i}` });
    expect((await status(hub, 'c2d-offline', 'off-0')).state).toBe('Enqueued');
    const device = await C2dTestDevice.connect(hub.endpoints, creds);
    try {
      // maxInFlight 5: the first five arrive; each completion makes room for the next.
      const first = await device.receivedCount(5);
      expect(first.map((m) => m.body)).toEqual(['n0', 'n1', 'n2', 'n3', 'n4']);
      const ids = Array.from({ length: 8 }, (_, i) => `off-${i}`);
      await device.completeAll(ids);
      expect(device.firstDeliveryOrder()).toEqual(ids);
      for (let i = 0; i < 8; i++)
        expect((await status(hub, 'c2d-offline', `off-${i}`)).state).toBe('Completed');
    } finally {
      await device.end();
    }
  });

  it('rejects (dead-letters with feedback) and abandons (redelivers at once)', async () => {
    const device = await C2dTestDevice.connect(
      hub.endpoints,
      await registerDevice(hub.endpoints, 'c2d-settle'),
    );
    try {
      await sendOk(hub, 'c2d-settle', { body: 'r', messageId: 'rej', ack: 'negative' });
      await sendOk(hub, 'c2d-settle', { body: 'a', messageId: 'aba' });
      const [rej, aba] = await device.receivedCount(2);
      expect((await device.settle('reject', rej!.lockToken)).body).toMatchObject({ state: 'Rejected' });
      expect(await feedbackFor(hub, 'rej')).toMatchObject({ status: 'rejected', statusCode: 'Rejected' });

      expect((await device.settle('abandon', aba!.lockToken)).body).toMatchObject({ state: 'Enqueued' });
      const again = await device.until(
        () => device.received.find((m) => m.messageId === 'aba' && m.deliveryCount === 2),
        'the abandoned message again',
      );
      expect(again.lockToken).not.toBe(aba!.lockToken);
      expect((await device.settle('complete', again.lockToken)).status).toBe(200);
      expect(await status(hub, 'c2d-settle', 'aba')).toMatchObject({ state: 'Completed', deliveryCount: 2 });
    } finally {
      await device.end();
    }
  });

  it('expires a message that was never delivered, with feedback', async () => {
    await registerDevice(hub.endpoints, 'c2d-expiry');
    await sendOk(hub, 'c2d-expiry', {
      body: 'late',
      messageId: 'exp',
      ack: 'negative',
      expiryTimeUtc: new Date(Date.now() + 1_500).toISOString(),
    });
    await eventually(
      () => status(hub, 'c2d-expiry', 'exp'),
      (s) => s.state === 'Expired',
      'expiry',
    );
    expect(await feedbackFor(hub, 'exp')).toMatchObject({ status: 'expired', statusCode: 'Expired' });
  });

  it('refuses the 51st message of a full queue with 403 naming the limit; purge empties it', async () => {
    const creds = await registerDevice(hub.endpoints, 'c2d-full');
    for (let i = 0; i < 50; i++)
      await sendOk(hub, 'c2d-full', { body: String(i), ack: i === 0 ? 'negative' : 'none' });
    const full = await send(hub, 'c2d-full', { body: '50' });
    expect(full.status).toBe(403);
    expect(full.body).toMatchObject({ code: 'DeviceMaximumQueueDepthExceeded', context: { limit: 50 } });

    const purged = await service(hub.endpoints, 'DELETE', '/devices/c2d-full/commands');
    expect(purged).toMatchObject({ status: 200, body: { deviceId: 'c2d-full', totalMessagesPurged: 50 } });
    const feedback = (await allFeedback(hub)).filter((f) => f.deviceId === 'c2d-full');
    expect(feedback.map((f) => f.status)).toEqual(['purged']);
    // The device finds nothing waiting, and the queue takes messages again.
    const device = await C2dTestDevice.connect(hub.endpoints, creds);
    try {
      await sendOk(hub, 'c2d-full', { body: 'after purge' });
      const [only] = await device.receivedCount(1);
      expect(only!.body).toBe('after purge');
      await new Promise((r) => setTimeout(r, 500));
      expect(device.received).toHaveLength(1);
    } finally {
      await device.end();
    }
  });

  it('refuses sends to unknown devices (404) and bad bodies (400 naming the field)', async () => {
    expect(await send(hub, 'c2d-nobody', { body: 'x' })).toMatchObject({
      status: 404,
      body: { code: 'DeviceNotFound' },
    });
    await registerDevice(hub.endpoints, 'c2d-bad');
    const cases: [unknown, string][] = [
      [{ body: 'x', ttlMs: 5 }, 'ttlMs'],
      [{ body: 'x', colour: 'red' }, 'colour'],
      [{ body: 'x', messageId: 'a b' }, 'messageId'],
      [{ body: 'x'.repeat(64 * 1024 + 1) }, 'body'],
      [{ body: 'x', properties: { $bad: '1' } }, 'properties'],
      [{ body: 'x', ack: 'sometimes' }, 'ack'],
      [{ body: 'x', properties: { long: 'v'.repeat(300) } }, 'properties'],
    ];
    for (const [body, field] of cases) {
      const response = await send(hub, 'c2d-bad', body as Record<string, unknown>);
      expect(response.status, JSON.stringify(body).slice(0, 80)).toBe(400);
      expect((response.body as { message: string }).message).toContain(field);
    }
    const notJson = await service(hub.endpoints, 'POST', '/devices/c2d-bad/messages/deviceBound', '{"body":');
    expect(notJson).toMatchObject({ status: 400, body: { code: 'InvalidJson' } });
  });

  it('does not let a device settle another device’s message', async () => {
    const owner = await C2dTestDevice.connect(
      hub.endpoints,
      await registerDevice(hub.endpoints, 'c2d-owner'),
    );
    const thief = await C2dTestDevice.connect(
      hub.endpoints,
      await registerDevice(hub.endpoints, 'c2d-thief'),
    );
    try {
      await sendOk(hub, 'c2d-owner', { body: 'mine', messageId: 'owned' });
      const [got] = await owner.receivedCount(1);
      // With the owner's token on its own topic: not found in the thief's queue.
      expect((await thief.settle('complete', got!.lockToken)).status).toBe(404);
      // On the owner's topic: the broker refuses the publish (topic policy) and drops the thief's
      // connection; nothing reaches the settlement rule.
      const closed = new Promise<void>((resolve) => thief.client.once('close', () => resolve()));
      thief.client.publish(`devices/c2d-owner/messages/settle/complete/${got!.lockToken}`, '', { qos: 1 });
      await closed;
      await hub.waitForLog(/c2d-thief.*devices\/c2d-owner\/messages\/settle/);
      await new Promise((r) => setTimeout(r, 300));
      expect((await status(hub, 'c2d-owner', 'owned')).state).toBe('Invisible');
      expect((await owner.settle('complete', got!.lockToken)).status).toBe(200);
    } finally {
      await owner.end();
      thief.client.end(true);
    }
  });

  it('purges the queue of a deleted device, with feedback', async () => {
    await registerDevice(hub.endpoints, 'c2d-deleted');
    await sendOk(hub, 'c2d-deleted', { body: 'bye', messageId: 'gone', ack: 'full' });
    expect(
      (await service(hub.endpoints, 'DELETE', '/devices/c2d-deleted', undefined, { 'if-match': '*' })).status,
    ).toBe(204);
    expect(await feedbackFor(hub, 'gone')).toMatchObject({ status: 'purged', statusCode: 'Purged' });
  });

  it('lets a back end acknowledge feedback so it is read once', async () => {
    await registerDevice(hub.endpoints, 'c2d-ack');
    await sendOk(hub, 'c2d-ack', { body: 'x', messageId: 'ackme', ack: 'negative' });
    await service(hub.endpoints, 'DELETE', '/devices/c2d-ack/commands');
    const record = await feedbackFor(hub, 'ackme');
    const ack = await service(hub.endpoints, 'POST', '/messages/serviceBound/feedback/acknowledge', {
      ids: [record.id],
    });
    expect(ack).toMatchObject({ status: 200, body: { acknowledged: 1 } });
    expect((await allFeedback(hub)).some((f) => f.id === record.id)).toBe(false);
  });
});

describe('lock lapses, dead-lettering and races (short locks)', () => {
  let hub: HubProcess;
  beforeAll(async () => {
    hub = await startC2dHub();
  });
  afterAll(async () => {
    await hub?.stop();
  });

  it('redelivers after the lock lapses; the old lock token is then stale (412) and a made-up one unknown (404)', async () => {
    const device = await C2dTestDevice.connect(
      hub.endpoints,
      await registerDevice(hub.endpoints, 'c2d-lapse'),
    );
    try {
      await sendOk(hub, 'c2d-lapse', { body: 'x', messageId: 'lapse' });
      const [first] = await device.receivedCount(1);
      const second = await device.until(
        () => device.received.find((m) => m.deliveryCount === 2),
        'a redelivery after the lock lapsed',
      );
      expect(second.messageId).toBe('lapse');
      const stale = await device.settle('complete', first!.lockToken);
      expect(stale).toMatchObject({ status: 412, body: { code: 'StaleLockToken' } });
      const unknown = await device.settle(
        'complete',
        `${second.lockToken.slice(0, 9)}00000000000000.${'0'.repeat(24)}`,
      );
      expect(unknown.status).toBe(404);
      expect((await device.settle('finish', second.lockToken)).status).toBe(400);
      await device.completeAll(['lapse']);
      // Settling twice: the second is stale and changes nothing.
      const last = device.received.filter((m) => m.messageId === 'lapse').at(-1)!;
      expect((await device.settle('reject', last.lockToken)).status).toBe(412);
      expect((await status(hub, 'c2d-lapse', 'lapse')).state).toBe('Completed');
    } finally {
      await device.end();
    }
  });

  it('dead-letters a message never settled after maxDeliveryCount deliveries, with feedback', async () => {
    const device = await C2dTestDevice.connect(hub.endpoints, await registerDevice(hub.endpoints, 'c2d-dlq'));
    try {
      await sendOk(hub, 'c2d-dlq', { body: 'ignored', messageId: 'dlq', ack: 'full' });
      const final = await eventually(
        () => status(hub, 'c2d-dlq', 'dlq'),
        (s) => s.state === 'DeadLettered',
        'dead-lettering',
        30_000,
      );
      expect(final.deliveryCount).toBe(MAX_DELIVERIES);
      expect(device.received.map((m) => m.deliveryCount)).toEqual([1, 2, 3]);
      expect(await feedbackFor(hub, 'dlq')).toMatchObject({
        status: 'deliveryCountExceeded',
        statusCode: 'DeliveryCountExceeded',
      });
    } finally {
      await device.end();
    }
  });

  it('ends a race of two settlements and a lock lapse on one message in exactly one final state', async () => {
    const device = await C2dTestDevice.connect(
      hub.endpoints,
      await registerDevice(hub.endpoints, 'c2d-race'),
    );
    try {
      for (let round = 0; round < 3; round++) {
        const messageId = `race-${round}`;
        await sendOk(hub, 'c2d-race', { body: 'r', messageId });
        const got = await device.until(
          () => device.received.find((m) => m.messageId === messageId),
          `delivery of ${messageId}`,
        );
        // Fire both settlements as the lock is about to lapse, while the sweep runs every second.
        await new Promise((r) => setTimeout(r, LOCK_MS - 150 + round * 100));
        const [a, b] = await Promise.all([
          device.settle('complete', got.lockToken),
          device.settle('reject', got.lockToken),
        ]);
        const wins = [a, b].filter((x) => x.status === 200);
        expect(wins.length).toBeLessThanOrEqual(1);
        const final = await status(hub, 'c2d-race', messageId);
        if (wins.length === 1) {
          expect(final.state).toBe(wins[0]!.body.state);
          expect(['Completed', 'Rejected']).toContain(final.state);
        } else {
          // The lapse won: both tokens stale, the message went back to the queue and is redelivered.
          expect([a.status, b.status]).toEqual([412, 412]);
          await device.completeAll([messageId]);
          expect((await status(hub, 'c2d-race', messageId)).state).toBe('Completed');
        }
      }
    } finally {
      await device.end();
    }
  });
});

describe('cloud-to-device messages survive a crash of the local hub (SIGKILL)', () => {
  async function deviceOn(hub: HubProcess, creds: DeviceCredentials): Promise<C2dTestDevice> {
    return C2dTestDevice.connect(
      hub.endpoints,
      sasCredentials(hub.endpoints, creds.clientId, creds.symmetricKey),
    );
  }

  it('between send and delivery: every message is delivered after the restart', async () => {
    const dataDir = tempDataDir();
    let hub = await startC2dHub(dataDir);
    const creds = await registerDevice(hub.endpoints, 'crash-send');
    for (let i = 0; i < 10; i++) await sendOk(hub, 'crash-send', { body: `s${i}`, messageId: `cs-${i}` });
    await hub.kill();
    hub = await startC2dHub(dataDir);
    const device = await deviceOn(hub, creds);
    try {
      const ids = Array.from({ length: 10 }, (_, i) => `cs-${i}`);
      await device.completeAll(ids);
      expect(device.firstDeliveryOrder()).toEqual(ids);
      for (let i = 0; i < 10; i++)
        expect((await status(hub, 'crash-send', `cs-${i}`)).state).toBe('Completed');
    } finally {
      await device.end();
      await hub.stop();
    }
  });

  it('between delivery and settlement: redelivered after the restart and settled', async () => {
    const dataDir = tempDataDir();
    let hub = await startC2dHub(dataDir, LOCK_MS, CRASH_SETTLE_MAX_DELIVERIES);
    const creds = await registerDevice(hub.endpoints, 'crash-settle');
    let device = await deviceOn(hub, creds);
    for (let i = 0; i < 5; i++) await sendOk(hub, 'crash-settle', { body: `d${i}`, messageId: `cd-${i}` });
    const first = device;
    await first.until(() => new Set(first.received.map((m) => m.messageId)).size === 5, 'all five delivered');
    await hub.kill();
    await device.end().catch(() => undefined);
    hub = await startC2dHub(dataDir, LOCK_MS, CRASH_SETTLE_MAX_DELIVERIES);
    device = await deviceOn(hub, creds);
    try {
      await device.completeAll(Array.from({ length: 5 }, (_, i) => `cd-${i}`));
      for (let i = 0; i < 5; i++) {
        expect(await status(hub, 'crash-settle', `cd-${i}`)).toMatchObject({ state: 'Completed' });
        expect((await status(hub, 'crash-settle', `cd-${i}`)).deliveryCount).toBeGreaterThanOrEqual(2);
      }
    } finally {
      await device.end();
      await hub.stop();
    }
  });

  it('during the retry schedule: after the restart every message is final, none lost or stuck', async () => {
    const dataDir = tempDataDir();
    let hub = await startC2dHub(dataDir);
    const creds = await registerDevice(hub.endpoints, 'crash-sweep');
    const device = await deviceOn(hub, creds);
    const ids = Array.from({ length: 5 }, (_, i) => `cr-${i}`);
    for (const id of ids) await sendOk(hub, 'crash-sweep', { body: id, messageId: id, ack: 'full' });
    // Never settled: locks lapse and the sweep redelivers; kill it while redeliveries are under way.
    await device.until(() => device.received.some((m) => m.deliveryCount === 2), 'the first redelivery');
    await hub.kill();
    await device.end().catch(() => undefined);
    hub = await startC2dHub(dataDir);
    const again = await deviceOn(hub, creds);
    try {
      for (const id of ids) {
        await eventually(
          () => status(hub, 'crash-sweep', id),
          (s) => s.state === 'DeadLettered',
          `${id} dead-lettered`,
          40_000,
        );
      }
      const feedback = (await allFeedback(hub)).filter((f) => f.deviceId === 'crash-sweep');
      expect(new Set(feedback.map((f) => f.originalMessageId))).toEqual(new Set(ids));
      expect(feedback.every((f) => f.status === 'deliveryCountExceeded')).toBe(true);
      // At least once on the feedback stream too, across the crash.
      const stream = await eventually(
        () => readJsonStream(hub.endpoints.kinesis, hub.endpoints.feedbackStream),
        (rs) => ids.every((id) => rs.some((r) => r.json.originalMessageId === id)),
        'every dead-lettered message on the feedback stream',
      );
      expect(
        stream
          .filter((r) => r.partitionKey === 'crash-sweep')
          .every((r) => r.json.status === 'deliveryCountExceeded'),
      ).toBe(true);
    } finally {
      await again.end();
      await hub.stop();
    }
  });
});
