import { describe, expect, it } from 'vitest';
import {
  IllegalTransitionError,
  MessageNotFoundError,
  StaleLockTokenError,
} from '../../functions/core/c2d/errors.ts';
import { FEEDBACK_STATUS_CODES, feedbackFor } from '../../functions/core/c2d/feedback.ts';
import { LOCK_TOKEN_LENGTH, newLockToken, queueKeyOfLockToken } from '../../functions/core/c2d/keys.ts';
import {
  type AckMode,
  type C2dMessage,
  type C2dState,
  createMessage,
  type FeedbackStatus,
  FINAL_STATES,
  MAX_TTL_MS,
  parseSendRequest,
} from '../../functions/core/c2d/message.ts';
import { type C2dEvent, dueAtOf, markFeedbackWritten, transition } from '../../functions/core/c2d/state.ts';
import { ConflictError, HubError, ValidationError } from '../../functions/core/errors.ts';

const T0 = Date.parse('2030-01-01T00:00:00.000Z');
const LOCK_MS = 60_000;
const TOKEN = 'token-a';

const enqueued: C2dMessage = {
  deviceId: 'dev-1',
  messageId: 'm-1',
  queueKey: '2030-01-01T00:00:00.000Z#00000001abcdef',
  body: new Uint8Array([1, 2, 3]),
  properties: { k: 'v' },
  ack: 'full',
  enqueuedAt: T0,
  expiresAt: T0 + 3_600_000,
  maxDeliveryCount: 3,
  state: 'Enqueued',
  deliveryCount: 1,
  version: 4,
};
const invisible: C2dMessage = {
  ...enqueued,
  state: 'Invisible',
  deliveryCount: 2,
  lockToken: TOKEN,
  lockedUntil: T0 + LOCK_MS,
  version: 5,
};
const lastAttempt: C2dMessage = { ...invisible, deliveryCount: 3 };
const finals: C2dMessage[] = [...FINAL_STATES].map((state) => ({
  ...enqueued,
  state,
  deliveryCount: 2,
  finalAt: T0 + 1_000,
  version: 6,
}));

const early = T0 + 10;
const ev = {
  deliver: { type: 'deliver', now: early, lockTimeoutMs: LOCK_MS, lockToken: 'token-new' },
  complete: { type: 'complete', lockToken: TOKEN, now: early },
  reject: { type: 'reject', lockToken: TOKEN, now: early },
  abandon: { type: 'abandon', lockToken: TOKEN, now: early },
  lockExpired: { type: 'lockExpired', now: T0 + LOCK_MS },
  expire: { type: 'expire', now: enqueued.expiresAt },
  purge: { type: 'purge', now: early },
  recheck: { type: 'recheck', now: early, nextCheckAt: early + 10_000 },
} satisfies Record<string, C2dEvent>;
const allEvents: C2dEvent[] = Object.values(ev);

interface Legal {
  name: string;
  from: C2dMessage;
  event: C2dEvent;
  to: C2dState;
  feedback?: FeedbackStatus;
  check?: (next: C2dMessage) => void;
}

const legal: Legal[] = [
  {
    name: 'recheck of a queued message whose delivery check is due pushes the check out',
    from: { ...enqueued, checkAt: T0 },
    event: ev.recheck,
    to: 'Enqueued',
    check: (n) => {
      expect(n.checkAt).toBe(early + 10_000);
      expect(n.deliveryCount).toBe(enqueued.deliveryCount);
    },
  },
  {
    name: 'deliver clears the delivery check',
    from: { ...enqueued, checkAt: T0 },
    event: ev.deliver,
    to: 'Invisible',
    check: (n) => expect(n.checkAt).toBeUndefined(),
  },
  {
    name: 'a lock lapse makes the delivery check due at once',
    from: invisible,
    event: ev.lockExpired,
    to: 'Enqueued',
    check: (n) => expect(n.checkAt).toBe(T0 + LOCK_MS),
  },
  {
    name: 'deliver locks an Enqueued message and counts the attempt',
    from: enqueued,
    event: ev.deliver,
    to: 'Invisible',
    check: (n) => {
      expect(n.deliveryCount).toBe(2);
      expect(n.lockToken).toBe('token-new');
      expect(n.lockedUntil).toBe(early + LOCK_MS);
    },
  },
  {
    name: 'expire at expiresAt moves Enqueued to Expired',
    from: enqueued,
    event: ev.expire,
    to: 'Expired',
    feedback: 'expired',
  },
  {
    name: 'purge moves Enqueued to Purged',
    from: enqueued,
    event: ev.purge,
    to: 'Purged',
    feedback: 'purged',
  },
  {
    name: 'complete with the lock token',
    from: invisible,
    event: ev.complete,
    to: 'Completed',
    feedback: 'success',
  },
  {
    name: 'reject with the lock token dead-letters',
    from: invisible,
    event: ev.reject,
    to: 'Rejected',
    feedback: 'rejected',
  },
  {
    name: 'abandon with attempts left re-enqueues without a new count',
    from: invisible,
    event: ev.abandon,
    to: 'Enqueued',
    check: (n) => expect(n.deliveryCount).toBe(2),
  },
  {
    name: 'abandon of the last attempt dead-letters',
    from: lastAttempt,
    event: ev.abandon,
    to: 'DeadLettered',
    feedback: 'deliveryCountExceeded',
  },
  {
    name: 'lock expiry with attempts left re-enqueues (the attempt stays counted)',
    from: invisible,
    event: ev.lockExpired,
    to: 'Enqueued',
    check: (n) => expect(n.deliveryCount).toBe(2),
  },
  {
    name: 'lock expiry of the last attempt dead-letters',
    from: lastAttempt,
    event: ev.lockExpired,
    to: 'DeadLettered',
    feedback: 'deliveryCountExceeded',
  },
  {
    name: 'expire moves Invisible to Expired',
    from: invisible,
    event: ev.expire,
    to: 'Expired',
    feedback: 'expired',
  },
  {
    name: 'purge moves Invisible to Purged',
    from: invisible,
    event: ev.purge,
    to: 'Purged',
    feedback: 'purged',
  },
];

describe('transition: every legal transition', () => {
  it.each(legal)('$name ($from.state --$event.type--> $to)', ({ from, event, to, feedback, check }) => {
    const result = transition(from, event);
    if (!result.ok) throw result.error;
    const { next } = result;
    expect(next.state).toBe(to);
    expect(next.version).toBe(from.version + 1);
    expect(result.feedback).toBe(feedback);
    expect(next.pendingFeedback).toBe(feedback);
    // Immutable fields never change.
    for (const key of [
      'deviceId',
      'messageId',
      'queueKey',
      'body',
      'properties',
      'ack',
      'enqueuedAt',
      'expiresAt',
    ] as const) {
      expect(next[key]).toEqual(from[key]);
    }
    if (to !== 'Invisible') {
      expect(next.lockToken).toBeUndefined();
      expect(next.lockedUntil).toBeUndefined();
    }
    if (FINAL_STATES.has(to)) expect(next.finalAt).toBe(event.now);
    else expect(next.finalAt).toBeUndefined();
    check?.(next);
  });

  it('does not mutate its input', () => {
    const before = structuredClone(invisible);
    transition(invisible, ev.complete);
    expect(invisible).toEqual(before);
  });
});

type ErrorClass = typeof StaleLockTokenError | typeof IllegalTransitionError | typeof MessageNotFoundError;

interface Illegal {
  name: string;
  from: C2dMessage | undefined;
  event: C2dEvent;
  error: ErrorClass;
}

const illegal: Illegal[] = [
  { name: 'complete an Enqueued message', from: enqueued, event: ev.complete, error: StaleLockTokenError },
  { name: 'reject an Enqueued message', from: enqueued, event: ev.reject, error: StaleLockTokenError },
  { name: 'abandon an Enqueued message', from: enqueued, event: ev.abandon, error: StaleLockTokenError },
  {
    name: 'expire the lock of an Enqueued message',
    from: enqueued,
    event: ev.lockExpired,
    error: IllegalTransitionError,
  },
  {
    name: 'expire an Enqueued message before expiresAt',
    from: enqueued,
    event: { type: 'expire', now: enqueued.expiresAt - 1 },
    error: IllegalTransitionError,
  },
  {
    name: 'deliver an Enqueued message at or after expiresAt',
    from: enqueued,
    event: { ...ev.deliver, now: enqueued.expiresAt },
    error: IllegalTransitionError,
  },
  {
    name: 'deliver an Enqueued message with no attempts left',
    from: { ...enqueued, deliveryCount: 3 },
    event: ev.deliver,
    error: IllegalTransitionError,
  },
  { name: 'deliver an Invisible message', from: invisible, event: ev.deliver, error: IllegalTransitionError },
  ...(['complete', 'reject', 'abandon'] as const).flatMap((type): Illegal[] => [
    {
      name: `${type} with another lock token`,
      from: invisible,
      event: { type, lockToken: 'token-other', now: early },
      error: StaleLockTokenError,
    },
    {
      name: `${type} after the lock expired`,
      from: invisible,
      event: { type, lockToken: TOKEN, now: T0 + LOCK_MS },
      error: StaleLockTokenError,
    },
  ]),
  {
    name: 'expire the lock of an Invisible message before lockedUntil',
    from: invisible,
    event: { type: 'lockExpired', now: T0 + LOCK_MS - 1 },
    error: IllegalTransitionError,
  },
  {
    name: 'expire an Invisible message before expiresAt',
    from: invisible,
    event: { type: 'expire', now: enqueued.expiresAt - 1 },
    error: IllegalTransitionError,
  },
  {
    name: 'recheck a queued message before its check is due',
    from: { ...enqueued, checkAt: early + 1 },
    event: ev.recheck,
    error: IllegalTransitionError,
  },
  {
    name: 'recheck a queued message that has no delivery check',
    from: enqueued,
    event: ev.recheck,
    error: IllegalTransitionError,
  },
  {
    name: 'recheck with a next check that is not ahead',
    from: { ...enqueued, checkAt: T0 },
    event: { type: 'recheck', now: early, nextCheckAt: early },
    error: IllegalTransitionError,
  },
  {
    name: 'recheck an Invisible message',
    from: { ...invisible, checkAt: T0 },
    event: ev.recheck,
    error: IllegalTransitionError,
  },
  ...finals.flatMap((from) =>
    allEvents.map(
      (event): Illegal => ({
        name: `${event.type} a ${from.state} message`,
        from: { ...from, lockToken: TOKEN },
        event,
        error: ['complete', 'reject', 'abandon'].includes(event.type)
          ? StaleLockTokenError
          : IllegalTransitionError,
      }),
    ),
  ),
  ...allEvents.map(
    (event): Illegal => ({
      name: `${event.type} a missing message`,
      from: undefined,
      event,
      error: MessageNotFoundError,
    }),
  ),
];

describe('transition: every illegal transition fails and changes nothing', () => {
  it.each(illegal)('$name fails with $error.name', ({ from, event, error }) => {
    const before = structuredClone(from);
    const result = transition(from, event);
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.error).toBeInstanceOf(error);
    expect(result.error).toBeInstanceOf(HubError);
    expect(from).toEqual(before);
  });

  it('maps stale lock tokens and illegal transitions to ConflictError (409/412 at the edge)', () => {
    const stale = transition(invisible, { ...ev.complete, lockToken: 'x' });
    const wrong = transition(invisible, ev.deliver);
    expect(!stale.ok && stale.error).toBeInstanceOf(ConflictError);
    expect(!wrong.ok && wrong.error).toBeInstanceOf(ConflictError);
    expect(!stale.ok && stale.error.code).toBe('StaleLockToken');
  });
});

describe('feedback by ack mode', () => {
  const cases: Array<[AckMode, C2dState, FeedbackStatus | undefined]> = [];
  const expected: Record<AckMode, Partial<Record<C2dState, FeedbackStatus>>> = {
    none: {},
    positive: { Completed: 'success' },
    negative: {
      Expired: 'expired',
      DeadLettered: 'deliveryCountExceeded',
      Rejected: 'rejected',
      Purged: 'purged',
    },
    full: {
      Completed: 'success',
      Expired: 'expired',
      DeadLettered: 'deliveryCountExceeded',
      Rejected: 'rejected',
      Purged: 'purged',
    },
  };
  for (const ack of ['none', 'positive', 'negative', 'full'] as const) {
    for (const state of FINAL_STATES) cases.push([ack, state, expected[ack][state]]);
  }
  it.each(cases)('ack %s on %s owes %s', (ack, state, status) => {
    expect(feedbackFor(ack, state)).toBe(status);
  });

  it('a transition owes no feedback when the ack mode does not ask', () => {
    const result = transition({ ...invisible, ack: 'negative' }, ev.complete);
    expect(result.ok && result.feedback).toBeUndefined();
    expect(result.ok && result.next.pendingFeedback).toBeUndefined();
  });

  it('uses IoT Hub FeedbackStatusCode names and values', () => {
    expect(Object.values(FEEDBACK_STATUS_CODES).map((c) => [c.name, c.value])).toEqual([
      ['Success', 0],
      ['Expired', 1],
      ['DeliveryCountExceeded', 2],
      ['Rejected', 3],
      ['Purged', 4],
    ]);
  });
});

describe('bookkeeping', () => {
  it('markFeedbackWritten clears the pending feedback with a new version', () => {
    const result = transition(invisible, ev.complete);
    if (!result.ok) throw result.error;
    const cleared = markFeedbackWritten(result.next);
    expect(cleared.pendingFeedback).toBeUndefined();
    expect(cleared.version).toBe(result.next.version + 1);
    expect(cleared.state).toBe('Completed');
  });

  it('dueAtOf: expiry when Enqueued, lock expiry when Invisible, now while feedback is owed, then never (TTL)', () => {
    expect(dueAtOf(enqueued)).toBe(enqueued.expiresAt);
    expect(dueAtOf({ ...enqueued, checkAt: T0 + 7 })).toBe(T0 + 7);
    expect(dueAtOf({ ...enqueued, checkAt: enqueued.expiresAt + 7 })).toBe(enqueued.expiresAt);
    expect(dueAtOf(invisible)).toBe(invisible.lockedUntil);
    const owed = {
      ...enqueued,
      state: 'Completed' as const,
      finalAt: T0 + 5,
      pendingFeedback: 'success' as const,
    };
    expect(dueAtOf(owed)).toBe(T0 + 5);
    expect(dueAtOf(markFeedbackWritten(owed))).toBeUndefined();
  });

  it('lock tokens carry the queue key and reject tampering', () => {
    const token = newLockToken(enqueued.queueKey);
    expect(queueKeyOfLockToken(token)).toBe(enqueued.queueKey);
    expect(newLockToken(enqueued.queueKey)).not.toBe(token);
    expect(queueKeyOfLockToken('nonsense')).toBeUndefined();
    expect(
      queueKeyOfLockToken(`${Buffer.from('msg#x').toString('base64url')}.${'0'.repeat(32)}`),
    ).toBeUndefined();
    expect(token).toHaveLength(LOCK_TOKEN_LENGTH);
    expect(queueKeyOfLockToken(`${token.slice(0, -1)}g`)).toBeUndefined();
  });
});

describe('send request schema', () => {
  const config = { defaultTtlMs: 3_600_000, maxDeliveryCount: 10 };

  it('fills defaults and builds an Enqueued message with a generated id', () => {
    const message = createMessage('dev-1', parseSendRequest({ body: 'hi' }), { now: T0, config });
    expect(message).toMatchObject({
      deviceId: 'dev-1',
      ack: 'none',
      state: 'Enqueued',
      deliveryCount: 0,
      version: 1,
      expiresAt: T0 + 3_600_000,
      maxDeliveryCount: 10,
      properties: {},
    });
    expect(message.messageId).toMatch(/^[0-9a-f-]{36}$/);
    expect(Buffer.from(message.body).toString()).toBe('hi');
    expect(message.queueKey.startsWith('2030-01-01T00:00:00.000Z#')).toBe(true);
  });

  it('keeps ids, properties, ttl and ack', () => {
    const request = parseSendRequest({
      body: new Uint8Array([0, 255]),
      messageId: 'order-42',
      correlationId: 'c-1',
      userId: 'backend',
      properties: { 'x-kind': 'reboot' },
      ttlMs: 120_000,
      ack: 'full',
    });
    const message = createMessage('d', request, { now: T0, config });
    expect(message).toMatchObject({
      messageId: 'order-42',
      correlationId: 'c-1',
      userId: 'backend',
      ack: 'full',
    });
    expect(message.properties).toEqual({ 'x-kind': 'reboot' });
    expect(message.expiresAt).toBe(T0 + 120_000);
  });

  it('takes an absolute expiry within two days', () => {
    const at = new Date(T0 + 86_400_000).toISOString();
    expect(
      createMessage('d', parseSendRequest({ body: '', expiryTimeUtc: at }), { now: T0, config }).expiresAt,
    ).toBe(T0 + 86_400_000);
  });

  const bad: Array<[string, unknown, string]> = [
    ['a body over 64 KB', { body: new Uint8Array(64 * 1024 + 1) }, 'body'],
    ['a missing body', {}, 'body'],
    ['a message id with a space', { body: '', messageId: 'a b' }, 'messageId'],
    ['a message id over 128 characters', { body: '', messageId: 'a'.repeat(129) }, 'messageId'],
    ['a property name starting with $', { body: '', properties: { $x: 'v' } }, 'properties'],
    ['a property name with iothub- prefix', { body: '', properties: { 'iothub-x': 'v' } }, 'properties'],
    ['a property name with a slash', { body: '', properties: { 'a/b': 'v' } }, 'properties'],
    ['a property value with a control character', { body: '', properties: { a: 'x\ny' } }, 'properties.a'],
    ['a property value that is not a string', { body: '', properties: { a: 1 } }, 'properties.a'],
    ['a ttl under one minute', { body: '', ttlMs: 59_999 }, 'ttlMs'],
    ['a ttl over two days', { body: '', ttlMs: MAX_TTL_MS + 1 }, 'ttlMs'],
    ['an expiry that is not ISO 8601', { body: '', expiryTimeUtc: 'tomorrow' }, 'expiryTimeUtc'],
    [
      'both ttl and expiry',
      { body: '', ttlMs: 60_000, expiryTimeUtc: '2030-01-01T01:00:00Z' },
      'expiryTimeUtc',
    ],
    ['an unknown ack mode', { body: '', ack: 'sometimes' }, 'ack'],
    ['an unknown field', { body: '', to: 'x' }, 'request'],
  ];
  it.each(bad)('rejects %s, naming the field', (_name, input, field) => {
    let caught: unknown;
    try {
      parseSendRequest(input);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ValidationError);
    const error = caught as ValidationError;
    expect(error.code).toBe('InvalidC2dMessage');
    expect(String(error.context.field).startsWith(field)).toBe(true);
    expect(error.message.startsWith(field)).toBe(true);
  });

  it.each([
    ['in the past', T0 - 1],
    ['more than two days ahead', T0 + MAX_TTL_MS + 1],
  ])('rejects an absolute expiry %s', (_name, at) => {
    const request = parseSendRequest({ body: '', expiryTimeUtc: new Date(at).toISOString() });
    expect(() => createMessage('d', request, { now: T0, config })).toThrow(/expiryTimeUtc/);
  });
});
