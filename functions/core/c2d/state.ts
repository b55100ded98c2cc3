/**
 * The C2D message life cycle as a pure function. No I/O, no clock, no randomness: times and lock
 * tokens arrive in the event, so every adapter and every test sees the same rules.
 *
 * ```
 *             deliver                 complete ──────────────▶ Completed
 *  Enqueued ───────────▶ Invisible ── reject ────────────────▶ Rejected
 *     ▲                   │  │  └──── abandon / lockExpired ─┐
 *     └───────────────────┘  │        (deliveryCount < max)  │ (deliveryCount >= max)
 *      abandon / lockExpired │                               ▼
 *                            │                          DeadLettered
 *  Enqueued|Invisible ── expire (now >= expiresAt) ──▶ Expired
 *  Enqueued|Invisible ── purge ──────────────────────▶ Purged
 * ```
 */
import { IllegalTransitionError, MessageNotFoundError, StaleLockTokenError } from './errors.ts';
import { feedbackFor } from './feedback.ts';
import { type C2dMessage, type C2dState, type FeedbackStatus, isFinal } from './message.ts';

/** Device settlement outcomes. */
export type SettleOutcome = 'complete' | 'reject' | 'abandon';

/** Everything that can happen to a message. Times are epoch milliseconds. */
export type C2dEvent =
  | {
      readonly type: 'deliver';
      readonly now: number;
      readonly lockTimeoutMs: number;
      readonly lockToken: string;
      /** Messages wait behind this one for room: settling it should run a delivery pass. */
      readonly wake?: boolean;
    }
  /** Marks an `Invisible` message so that leaving `Invisible` runs a delivery pass (see `C2dMessage.wake`). */
  | { readonly type: 'wake'; readonly now: number }
  | { readonly type: SettleOutcome; readonly lockToken: string; readonly now: number }
  | { readonly type: 'lockExpired'; readonly now: number }
  /** The sweep checked an `Enqueued` message that was due for a delivery check; next check at `nextCheckAt`. */
  | { readonly type: 'recheck'; readonly now: number; readonly nextCheckAt: number }
  | { readonly type: 'expire'; readonly now: number }
  | { readonly type: 'purge'; readonly now: number };

/** The errors {@link transition} can return. */
export type TransitionError = StaleLockTokenError | MessageNotFoundError | IllegalTransitionError;

/** Outcome of {@link transition}: the next message (and feedback owed, if any) or why not. */
export type TransitionResult =
  | { readonly ok: true; readonly next: C2dMessage; readonly feedback?: FeedbackStatus }
  | { readonly ok: false; readonly error: TransitionError };

/**
 * Applies one event to one message. Returns the next message with `version + 1` and, when the
 * new state is final and the sender's ack mode asks for it, the feedback status owed (also kept
 * on the message as `pendingFeedback` until the ledger has written the record).
 *
 * @example
 * const r = transition(message, { type: 'complete', lockToken, now: Date.now() });
 * if (!r.ok) throw r.error;
 */
export function transition(message: C2dMessage | undefined, event: C2dEvent): TransitionResult {
  if (message === undefined) {
    return fail(new MessageNotFoundError('message not found', { event: event.type }));
  }
  const ctx = {
    deviceId: message.deviceId,
    messageId: message.messageId,
    state: message.state,
    event: event.type,
  };
  switch (event.type) {
    case 'deliver': {
      if (message.state !== 'Enqueued')
        return illegal(ctx, `cannot deliver a message in state ${message.state}`);
      if (event.now >= message.expiresAt)
        return illegal({ ...ctx, reason: 'expired' }, 'cannot deliver an expired message');
      if (message.deliveryCount >= message.maxDeliveryCount) {
        return illegal({ ...ctx, reason: 'deliveryCountExceeded' }, 'message has no delivery attempts left');
      }
      const { checkAt: _c, ...unchecked } = message;
      const next: C2dMessage = {
        ...unchecked,
        state: 'Invisible',
        deliveryCount: message.deliveryCount + 1,
        lockToken: event.lockToken,
        lockedUntil: event.now + event.lockTimeoutMs,
        ...(event.wake === true ? { wake: true } : {}),
        version: message.version + 1,
      };
      return { ok: true, next };
    }
    case 'wake': {
      if (message.state !== 'Invisible')
        return illegal(ctx, `no lock to wake from in state ${message.state}`);
      return { ok: true, next: { ...message, wake: true, version: message.version + 1 } };
    }
    case 'complete':
    case 'reject':
    case 'abandon': {
      if (message.state !== 'Invisible' || message.lockToken !== event.lockToken) {
        return fail(
          new StaleLockTokenError('lock token does not hold this message', { ...ctx, reason: 'notLocked' }),
        );
      }
      if (message.lockedUntil === undefined || event.now >= message.lockedUntil) {
        return fail(new StaleLockTokenError('lock has expired', { ...ctx, reason: 'lockExpired' }));
      }
      if (event.type === 'complete') return toFinal(message, 'Completed', event.now);
      if (event.type === 'reject') return toFinal(message, 'Rejected', event.now);
      return release(message, event.now);
    }
    case 'lockExpired': {
      if (message.state !== 'Invisible') return illegal(ctx, `no lock to expire in state ${message.state}`);
      if (message.lockedUntil !== undefined && event.now < message.lockedUntil) {
        return illegal(
          { ...ctx, reason: 'lockHeld', lockedUntil: message.lockedUntil },
          'lock has not expired yet',
        );
      }
      return release(message, event.now);
    }
    case 'recheck': {
      if (message.state !== 'Enqueued') return illegal(ctx, `no delivery check in state ${message.state}`);
      if (message.checkAt === undefined || event.now < message.checkAt) {
        return illegal({ ...ctx, reason: 'notDue' }, 'delivery check is not due');
      }
      if (event.nextCheckAt <= event.now) return illegal(ctx, 'next delivery check must lie ahead');
      return { ok: true, next: { ...message, checkAt: event.nextCheckAt, version: message.version + 1 } };
    }
    case 'expire': {
      if (isFinal(message.state))
        return illegal(ctx, `cannot expire a message in final state ${message.state}`);
      if (event.now < message.expiresAt) {
        return illegal(
          { ...ctx, reason: 'notExpired', expiresAt: message.expiresAt },
          'message has not expired yet',
        );
      }
      return toFinal(message, 'Expired', event.now);
    }
    case 'purge': {
      if (isFinal(message.state))
        return illegal(ctx, `cannot purge a message in final state ${message.state}`);
      return toFinal(message, 'Purged', event.now);
    }
  }
}

/**
 * Clears `pendingFeedback` once the feedback record is written (a bookkeeping change, not a
 * life-cycle event, but still a new version so the write is conditional like every other).
 */
export function markFeedbackWritten(message: C2dMessage): C2dMessage {
  const { pendingFeedback: _written, ...rest } = message;
  return { ...rest, version: message.version + 1 };
}

/**
 * When the message next needs attention from the schedule, or `undefined` if never: the lock
 * expiry while `Invisible`, the expiry while `Enqueued`, right away while feedback is owed; never
 * for a final message that owes nothing (the table's TTL deletes it at `retainUntil`).
 */
export function dueAtOf(message: C2dMessage): number | undefined {
  if (message.state === 'Enqueued') return Math.min(message.expiresAt, message.checkAt ?? message.expiresAt);
  if (message.state === 'Invisible') return message.lockedUntil ?? message.expiresAt;
  // A final message is due only while it owes feedback; its retention ends by TTL (`retainUntil`).
  return message.pendingFeedback === undefined ? undefined : (message.finalAt ?? message.enqueuedAt);
}

function release(message: C2dMessage, now: number): TransitionResult {
  if (message.deliveryCount >= message.maxDeliveryCount) return toFinal(message, 'DeadLettered', now);
  const { lockToken: _t, lockedUntil: _u, wake: _w, ...rest } = message;
  return { ok: true, next: { ...rest, state: 'Enqueued', checkAt: now, version: message.version + 1 } };
}

function toFinal(message: C2dMessage, state: C2dState, now: number): TransitionResult {
  const { lockToken: _t, lockedUntil: _u, pendingFeedback: _p, checkAt: _c, wake: _w, ...rest } = message;
  const feedback = feedbackFor(message.ack, state);
  const next: C2dMessage = {
    ...rest,
    state,
    finalAt: now,
    version: message.version + 1,
    ...(feedback === undefined ? {} : { pendingFeedback: feedback }),
  };
  return feedback === undefined ? { ok: true, next } : { ok: true, next, feedback };
}

function illegal(context: Record<string, unknown>, message: string): TransitionResult {
  return fail(new IllegalTransitionError(message, context));
}

function fail(error: TransitionError): TransitionResult {
  return { ok: false, error };
}
