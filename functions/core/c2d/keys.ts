/**
 * Key formats of the delivery ledger. They are a storage contract shared by every adapter (and by
 * the stack, which creates the table and its index), so they live here, once:
 *
 * | item | pk | sk | gsi1pk / gsi1sk |
 * | --- | --- | --- | --- |
 * | message | `dev#{deviceId}` | `msg#{queueKey}` | `due#{shard}` / `{dueAt ISO}#{deviceId}#{messageId}` while something is due |
 * | message-id pointer | `dev#{deviceId}` | `mid#{messageId}` | - |
 *
 * Final messages and pointers carry `retainUntil` (epoch seconds), the table's TTL attribute.
 * | feedback record | `feedback#{shard}` | `{finalAt ISO}#{deviceId}#{queueKey}#{status}` | - |
 *
 * `queueKey` = `{enqueuedAt ISO}#{seq}` sorts in enqueue order; `shard` = FNV-1a(deviceId) mod shards.
 */
import { randomBytes } from 'node:crypto';
import type { FeedbackStatus } from './message.ts';

/**
 * The ledger table's TTL attribute (epoch seconds): set on final messages (`finalAt + retention`) and
 * on message-id pointers. DynamoDB deletes expired items for free; the local hub's `local/ttl.ts` does
 * the same on dynalite, which has no TTL. Not `expiresAt`: that is a message's expiry in milliseconds.
 */
export const LEDGER_TTL_ATTRIBUTE = 'retainUntil';

/**
 * The ledger's sparse local secondary index of active messages (sort key {@link LEDGER_ACTIVE_KEY},
 * carried by `Enqueued` and `Invisible` messages only, = their queue key), projecting all attributes.
 */
export const LEDGER_ACTIVE_INDEX = 'active';
/** Sort key attribute of {@link LEDGER_ACTIVE_INDEX}. */
export const LEDGER_ACTIVE_KEY = 'activeKey';

/** Prefix of message items inside a device partition. */
export const MESSAGE_SK_PREFIX = 'msg#';
/** Prefix of message-id pointer items inside a device partition. */
export const POINTER_SK_PREFIX = 'mid#';
/** Default number of shards of the due index and of the feedback list. */
export const DEFAULT_SHARDS = 8;

let sequence = 0;
const processTag = randomBytes(3).toString('hex');

/** Epoch milliseconds as a fixed-width (24 character) ISO 8601 string, so strings sort like times. */
export function isoOf(ms: number): string {
  return new Date(ms).toISOString();
}

/**
 * A new queue key for a message enqueued at `now`. Keys from one process are strictly increasing for
 * the same millisecond (a counter); keys from different processes in the same millisecond are
 * ordered arbitrarily, which is fine for sends that were concurrent anyway.
 */
export function newQueueKey(now: number): string {
  sequence = (sequence + 1) % 36 ** 8;
  return `${isoOf(now)}#${sequence.toString(36).padStart(8, '0')}${processTag}`;
}

const QUEUE_KEY = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z#[0-9a-z]{8}[0-9a-f]{6}$/;
const QUEUE_KEY_PARTS = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)#([0-9a-z]{8}[0-9a-f]{6})$/;

/** Partition key of a device's messages and pointers. */
export function devicePk(deviceId: string): string {
  return `dev#${deviceId}`;
}

/** Sort key of a message item. */
export function messageSk(queueKey: string): string {
  return `${MESSAGE_SK_PREFIX}${queueKey}`;
}

/** Sort key of the pointer from a message id to its queue key. */
export function pointerSk(messageId: string): string {
  return `${POINTER_SK_PREFIX}${messageId}`;
}

/**
 * A new lock token for a delivery of the message at `queueKey`: the queue key, compacted (enqueue
 * time as 9 base-36 digits, then the key's counter and process tag), a dot, and 96 random bits as hex.
 * Carrying the queue key lets a settlement find the message with one read inside the settling
 * device's own partition, so another device's token can never reach it. Compact because the token
 * travels in the MQTT topic, which AWS IoT Core caps at 256 bytes: at most {@link LOCK_TOKEN_LENGTH}.
 */
export function newLockToken(queueKey: string): string {
  const match = QUEUE_KEY_PARTS.exec(queueKey);
  if (!match?.[1] || !match[2]) throw new Error(`not a queue key: ${queueKey}`);
  const ms = Date.parse(match[1]).toString(36).padStart(9, '0');
  return `${ms}${match[2]}.${randomBytes(12).toString('hex')}`;
}

/** Length of every lock token. */
export const LOCK_TOKEN_LENGTH = 9 + 14 + 1 + 24;

/** The queue key inside a lock token, or `undefined` when the token is malformed. */
export function queueKeyOfLockToken(lockToken: string): string | undefined {
  const match = /^([0-9a-z]{9})([0-9a-z]{8}[0-9a-f]{6})\.[0-9a-f]{24}$/.exec(lockToken);
  if (!match?.[1] || !match[2]) return undefined;
  const ms = Number.parseInt(match[1], 36);
  if (!Number.isSafeInteger(ms) || Number.isNaN(new Date(ms).getTime())) return undefined;
  const queueKey = `${isoOf(ms)}#${match[2]}`;
  return QUEUE_KEY.test(queueKey) ? queueKey : undefined;
}

/** FNV-1a 32-bit hash of the device id, mod `shards`: spreads index and feedback writes. */
export function shardOf(deviceId: string, shards: number): number {
  let hash = 0x811c9dc5;
  for (const byte of Buffer.from(deviceId, 'utf8')) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash % shards;
}

/** Where a message sits in the due index (`gsi1pk` / `gsi1sk`). */
export interface DueSlot {
  readonly pk: string;
  readonly sk: string;
}

/** Due-index keys for a message that is due at `dueAt`. */
export function dueSlot(deviceId: string, messageId: string, dueAt: number, shards: number): DueSlot {
  return { pk: duePk(shardOf(deviceId, shards)), sk: `${isoOf(dueAt)}#${deviceId}#${messageId}` };
}

/** Partition key of one shard of the due index. */
export function duePk(shard: number): string {
  return `due#${shard}`;
}

/**
 * Exclusive upper bound of due-index sort keys due at or before `now`: every `{now ISO}#...` sorts
 * below `{now ISO}$` because `#` < `$`, and ISO strings of equal width compare as times.
 */
export function dueBefore(now: number): string {
  return `${isoOf(now)}$`;
}

/** One entry read from the due index (keys only). */
export interface DueRow {
  readonly deviceId: string;
  readonly messageId: string;
  readonly queueKey: string;
  readonly dueAt: number;
  /** The `gsi1sk`, for ordering across shards. */
  readonly indexSk: string;
}

/**
 * Decodes a due-index row from the keys a KEYS_ONLY projection returns. The device id comes from
 * `pk`, so message ids containing `#` still decode.
 */
export function parseDueRow(pk: string, sk: string, indexSk: string): DueRow | undefined {
  if (!pk.startsWith('dev#') || !sk.startsWith(MESSAGE_SK_PREFIX)) return undefined;
  const deviceId = pk.slice(4);
  const prefix = `${indexSk.slice(0, 24)}#${deviceId}#`;
  if (!indexSk.startsWith(prefix)) return undefined;
  const dueAt = Date.parse(indexSk.slice(0, 24));
  if (Number.isNaN(dueAt)) return undefined;
  return { deviceId, messageId: indexSk.slice(prefix.length), queueKey: sk.slice(4), dueAt, indexSk };
}

/** Partition key of one shard of the feedback list. */
export function feedbackPk(shard: number): string {
  return `feedback#${shard}`;
}

/**
 * Sort key of the feedback record of one message instance and status. Deterministic (`finalAt` is
 * stored on the message when it turns final), so a repeated write lands on the same item.
 */
export function feedbackSk(
  finalAt: number,
  deviceId: string,
  queueKey: string,
  status: FeedbackStatus,
): string {
  return `${isoOf(finalAt)}#${deviceId}#${queueKey}#${status}`;
}

/** Opaque id of a feedback record (what `acknowledgeFeedback` takes). */
export function feedbackId(pk: string, sk: string): string {
  return Buffer.from(`${pk}\n${sk}`, 'utf8').toString('base64url');
}

/** Inverse of {@link feedbackId}; `undefined` when the id is malformed. */
export function parseFeedbackId(id: string): { pk: string; sk: string } | undefined {
  if (!/^[A-Za-z0-9_-]+$/.test(id)) return undefined;
  const [pk, sk, extra] = Buffer.from(id, 'base64url').toString('utf8').split('\n');
  if (!pk?.startsWith('feedback#') || !sk || extra !== undefined) return undefined;
  return { pk, sk };
}

/** Position of a reader in each shard of a sharded list. */
export type ShardCursor = Record<string, string>;

/** Encodes per-shard positions into an opaque cursor. */
export function encodeCursor(positions: ShardCursor): string {
  return Buffer.from(JSON.stringify(positions), 'utf8').toString('base64url');
}

/** Decodes a cursor; `undefined` when it is malformed. */
export function decodeCursor(cursor: string): ShardCursor | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
    const out: ShardCursor = {};
    for (const [k, v] of Object.entries(value)) {
      if (typeof v !== 'string') return undefined;
      out[k] = v;
    }
    return out;
  } catch {
    return undefined;
  }
}
