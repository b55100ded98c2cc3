import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { ValidationError } from '../errors.ts';
import { newQueueKey } from './keys.ts';

/** Largest C2D body, in bytes (IoT Hub's limit). */
export const MAX_BODY_BYTES = 64 * 1024;
/** Shortest allowed time to live of a C2D message: 1 minute. */
export const MIN_TTL_MS = 60_000;
/** Longest allowed time to live of a C2D message: 2 days. */
export const MAX_TTL_MS = 2 * 24 * 60 * 60 * 1000;
/** Total UTF-8 size of application property names and values on one message. */
export const MAX_PROPERTIES_BYTES = 8 * 1024;

/**
 * Which feedback the sender asked for (IoT Hub's `iothub-ack`): `positive` on completion,
 * `negative` on expiry, dead-lettering, rejection or purge, `full` for both.
 */
export type AckMode = 'none' | 'positive' | 'negative' | 'full';

/**
 * Where a message is in its life. `Enqueued` and `Invisible` are active; the rest are final.
 * Abandonment is an event, not a state: an abandoned message is `Enqueued` again.
 */
export type C2dState =
  | 'Enqueued'
  | 'Invisible'
  | 'Completed'
  | 'Rejected'
  | 'Expired'
  | 'DeadLettered'
  | 'Purged';

/** The states a message never leaves. */
export const FINAL_STATES: ReadonlySet<C2dState> = new Set<C2dState>([
  'Completed',
  'Rejected',
  'Expired',
  'DeadLettered',
  'Purged',
]);

/** True when no event can move the message any more. */
export function isFinal(state: C2dState): boolean {
  return FINAL_STATES.has(state);
}

/** Feedback outcomes, named like the values of IoT Hub's `FeedbackStatusCode` (camel-cased). */
export type FeedbackStatus = 'success' | 'expired' | 'deliveryCountExceeded' | 'rejected' | 'purged';

/**
 * One cloud-to-device message as the ledger keeps it. Times are epoch milliseconds.
 * Immutable after enqueue: everything above `state`. The state machine owns the rest.
 */
export interface C2dMessage {
  readonly deviceId: string;
  readonly messageId: string;
  /** Sortable position in the device's queue: `{enqueuedAt ISO}#{seq}`; queue order is its order. */
  readonly queueKey: string;
  readonly body: Uint8Array;
  readonly correlationId?: string;
  readonly userId?: string;
  readonly contentType?: string;
  readonly contentEncoding?: string;
  readonly properties: Readonly<Record<string, string>>;
  readonly ack: AckMode;
  readonly enqueuedAt: number;
  readonly expiresAt: number;
  /** Deliveries allowed before an unsettled message is dead-lettered (hub setting at send time). */
  readonly maxDeliveryCount: number;
  readonly state: C2dState;
  /** Deliveries so far; counted when the lock is taken, so an expired lock is a spent attempt. */
  readonly deliveryCount: number;
  /** Present only while `Invisible`. */
  readonly lockToken?: string;
  /** Present only while `Invisible`. */
  readonly lockedUntil?: number;
  /**
   * While `Enqueued`: when the sweep next checks that the message is on its way (a send, connect or
   * release whose delivery was lost to a crash or a race still gets delivered to a connected device).
   * Due at once when the message is enqueued or released; each check pushes it further out.
   */
  readonly checkAt?: number;
  /** When the message reached its final state. */
  readonly finalAt?: number;
  /** A feedback record is owed for the final state and not yet known to be written. */
  readonly pendingFeedback?: FeedbackStatus;
  /**
   * Set on an `Invisible` message when deliverable messages wait behind it for room in flight: its
   * settlement (or lock lapse) runs a delivery pass. Without it a settlement runs none, so a device
   * whose queue is empty costs no read after each completion.
   */
  readonly wake?: boolean;
  /**
   * Epoch seconds after which storage may delete the item (the table's TTL attribute): set when the
   * message turns final, to `finalAt + retention`. Until TTL deletes it, reads treat it as gone.
   */
  readonly retainUntil?: number;
  /** Incremented by every change; every write is conditional on the version read. */
  readonly version: number;
}

/** Hub-wide C2D settings, validated by {@link c2dConfigSchema}. */
export interface C2dConfig {
  /** Time to live of a message that names no expiry. @default 3_600_000 (1 hour) */
  readonly defaultTtlMs: number;
  /** @default 10 */
  readonly maxDeliveryCount: number;
  /** How long a delivered message stays locked. @default 60_000 */
  readonly lockTimeoutMs: number;
  /** Active (non-final) messages a device may hold. @default 50 */
  readonly maxQueueDepth: number;
}

/** Schema of the hub's C2D settings with IoT Hub's defaults and ranges. */
export const c2dConfigSchema = z.object({
  defaultTtlMs: z.number().int().min(MIN_TTL_MS).max(MAX_TTL_MS).default(3_600_000),
  maxDeliveryCount: z.number().int().min(1).max(100).default(10),
  lockTimeoutMs: z.number().int().min(1_000).max(300_000).default(60_000),
  maxQueueDepth: z.number().int().min(1).max(5_000).default(50),
});

// IoT Hub's message id alphabet: ASCII alphanumerics and - : . + % _ # * ? ! ( ) , = @ ; $ '
const MESSAGE_ID = /^[A-Za-z0-9\-:.+%_#*?!(),=@;$']{1,128}$/;
// Property names become `iothub-app-{name}` headers and property-bag keys: HTTP token characters.
const PROPERTY_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,128}$/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/;

const printable = (max: number) =>
  z
    .string()
    .min(1)
    .max(max)
    .refine((s) => !CONTROL.test(s), 'must not contain control characters');

const propertyName = z
  .string()
  .regex(PROPERTY_NAME, "must be 1-128 characters of A-Z a-z 0-9 ! # $ % & ' * + - . ^ _ ` | ~")
  .refine((n) => !n.startsWith('$') && !n.toLowerCase().startsWith('iothub-'), {
    message: "must not start with '$' or 'iothub-' (reserved for system properties)",
  });

const propertyValue = z
  .string()
  .max(4096)
  .refine((s) => !CONTROL.test(s), 'must not contain control characters');

/**
 * Schema of a send request (`POST /devices/{id}/messages/deviceBound` after the edge has turned
 * headers into fields). `body` is bytes or a string sent as UTF-8. Give at most one of `ttlMs`
 * (relative) and `expiryTimeUtc` (absolute, ISO 8601); with neither the hub default applies.
 */
export const sendRequestSchema = z
  .strictObject({
    body: z
      .union([z.instanceof(Uint8Array), z.string()])
      .refine((b) => byteLength(b) <= MAX_BODY_BYTES, `must be at most ${MAX_BODY_BYTES} bytes`),
    messageId: z
      .string()
      .regex(MESSAGE_ID, "must be 1-128 ASCII characters of A-Z a-z 0-9 - : . + % _ # * ? ! ( ) , = @ ; $ '")
      .optional(),
    correlationId: printable(128).optional(),
    userId: printable(128).optional(),
    contentType: printable(128).optional(),
    contentEncoding: printable(64).optional(),
    properties: z
      .record(propertyName, propertyValue)
      .default({})
      .refine(
        (p) =>
          Object.entries(p).reduce((n, [k, v]) => n + byteLength(k) + byteLength(v), 0) <=
          MAX_PROPERTIES_BYTES,
        `names and values together must be at most ${MAX_PROPERTIES_BYTES} bytes`,
      ),
    ttlMs: z.number().int().min(MIN_TTL_MS).max(MAX_TTL_MS).optional(),
    expiryTimeUtc: z.iso.datetime({ offset: true }).optional(),
    ack: z.enum(['none', 'positive', 'negative', 'full']).default('none'),
  })
  .refine((r) => r.ttlMs === undefined || r.expiryTimeUtc === undefined, {
    message: 'give ttlMs or expiryTimeUtc, not both',
    path: ['expiryTimeUtc'],
  });

/** A send request after validation. */
export type SendRequest = z.output<typeof sendRequestSchema>;

function byteLength(value: Uint8Array | string): number {
  return typeof value === 'string' ? Buffer.byteLength(value, 'utf8') : value.byteLength;
}

/**
 * Validates an untrusted send request. Throws a {@link ValidationError} (`InvalidC2dMessage`)
 * whose message and `context.field` name the first bad field, e.g. `properties.$x`.
 */
export function parseSendRequest(input: unknown): SendRequest {
  const result = sendRequestSchema.safeParse(input);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const field = issue && issue.path.length > 0 ? issue.path.map(String).join('.') : 'request';
  const reason = issue?.message ?? 'is invalid';
  throw new ValidationError('InvalidC2dMessage', `${field}: ${reason}`, {
    field,
    issues: result.error.issues.map((i) => ({ field: i.path.map(String).join('.'), message: i.message })),
  });
}

/**
 * Builds the ledger record for a validated send request: generates the message id when absent,
 * resolves the expiry (absolute expiry must lie in (now, now + 2 days]) and assigns the queue key.
 *
 * @example
 * const message = createMessage('dev-1', parseSendRequest(body), { now: Date.now(), config });
 * await ledger.enqueue('dev-1', message, { maxQueueDepth: config.maxQueueDepth });
 */
export function createMessage(
  deviceId: string,
  request: SendRequest,
  opts: { now: number; config: Pick<C2dConfig, 'defaultTtlMs' | 'maxDeliveryCount'> },
): C2dMessage {
  const { now, config } = opts;
  let expiresAt = now + (request.ttlMs ?? config.defaultTtlMs);
  if (request.expiryTimeUtc !== undefined) {
    expiresAt = Date.parse(request.expiryTimeUtc);
    if (expiresAt <= now || expiresAt > now + MAX_TTL_MS) {
      throw new ValidationError(
        'InvalidC2dMessage',
        'expiryTimeUtc: must be after now and at most 2 days ahead',
        { field: 'expiryTimeUtc', value: request.expiryTimeUtc },
      );
    }
  }
  const body =
    typeof request.body === 'string' ? new Uint8Array(Buffer.from(request.body, 'utf8')) : request.body;
  return {
    deviceId,
    messageId: request.messageId ?? randomUUID(),
    queueKey: newQueueKey(now),
    body,
    ...(request.correlationId === undefined ? {} : { correlationId: request.correlationId }),
    ...(request.userId === undefined ? {} : { userId: request.userId }),
    ...(request.contentType === undefined ? {} : { contentType: request.contentType }),
    ...(request.contentEncoding === undefined ? {} : { contentEncoding: request.contentEncoding }),
    properties: { ...request.properties },
    ack: request.ack,
    enqueuedAt: now,
    expiresAt,
    maxDeliveryCount: config.maxDeliveryCount,
    state: 'Enqueued',
    deliveryCount: 0,
    checkAt: now,
    version: 1,
  };
}
