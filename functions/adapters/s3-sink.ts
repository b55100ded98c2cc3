import { createHash } from 'node:crypto';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import avro from 'avsc';
import { type D2CEnvelope, decodeEnvelope, ENVELOPE_VERSION } from '../core/d2c/envelope.ts';
import type { SinkLimits, StreamEntry, StreamSink } from '../core/ports.ts';
import { S3_MAX_CHUNK_BYTES } from '../core/routing/config.ts';

/** How an S3 endpoint writes its objects: JSON lines or an Avro object container file. */
export type S3Format = 'json' | 'avro';

/** Entries per object: no S3 limit; bounds the router's batches of small messages. */
export const S3_MAX_ENTRIES = 10_000;

/**
 * The Avro record schema of `avro` objects, modelled on IoT Hub's storage endpoint: one record per
 * message with
 *
 * - `EnqueuedTimeUtc`: the envelope's `enqueuedTime` (ISO 8601);
 * - `Properties`: the application properties (with the endpoint's enrichments);
 * - `SystemProperties`: the envelope's system properties under IoT Hub's Avro names where it has
 *   one (see {@link AVRO_SYSTEM_PROPERTY_NAMES}: `messageId`, `connectionDeviceId`, `contentType`,
 *   ...), any other under its wire name; the message id and device id are always there;
 * - `Body`: the message body bytes: the original bytes when the envelope carries them in base64,
 *   the JSON re-serialized (UTF-8, no whitespace) when it carries parsed JSON.
 *
 * IoT Hub types the map values as a union (`long`, `double`, `string`, `bytes`) and the body as
 * nullable; every value the hub has is a string and every body bytes (possibly empty), so the
 * schema says so. The schema is written into each file's header, as Avro containers do, and
 * {@link avroRecordToEnvelope} turns a record back into the envelope.
 */
export const S3_AVRO_SCHEMA = {
  type: 'record',
  name: 'Message',
  namespace: 'Microsoft.Azure.Devices',
  fields: [
    { name: 'EnqueuedTimeUtc', type: 'string' },
    { name: 'Properties', type: { type: 'map', values: 'string' } },
    { name: 'SystemProperties', type: { type: 'map', values: 'string' } },
    { name: 'Body', type: 'bytes' },
  ],
} satisfies Parameters<typeof avro.Type.forSchema>[0];

/** One record of an `avro` object: see {@link S3_AVRO_SCHEMA}. */
export interface S3AvroMessage {
  readonly EnqueuedTimeUtc: string;
  readonly Properties: Record<string, string>;
  readonly SystemProperties: Record<string, string>;
  readonly Body: Buffer;
}

const AVRO_TYPE = avro.Type.forSchema(S3_AVRO_SCHEMA);

/**
 * Envelope system property name → its name in IoT Hub's Avro `SystemProperties` (the names IoT Hub
 * routing queries use after `$`). Names not listed are written as they are.
 */
export const AVRO_SYSTEM_PROPERTY_NAMES: Readonly<Record<string, string>> = {
  'message-id': 'messageId',
  'correlation-id': 'correlationId',
  'user-id': 'userId',
  'content-type': 'contentType',
  'content-encoding': 'contentEncoding',
  'absolute-expiry-time': 'expiryTimeUtc',
  'iothub-connection-device-id': 'connectionDeviceId',
  'iothub-connection-module-id': 'connectionModuleId',
  'iothub-connection-auth-method': 'connectionAuthMethod',
  'iothub-connection-auth-generation-id': 'connectionDeviceGenerationId',
  'iothub-enqueuedtime': 'enqueuedTime',
  'iothub-message-source': 'messageSource',
  'iothub-interface-name': 'interfaceName',
};

const WIRE_NAMES: Readonly<Record<string, string>> = Object.fromEntries(
  Object.entries(AVRO_SYSTEM_PROPERTY_NAMES).map(([wire, name]) => [name, wire]),
);

function renameKeys(record: Readonly<Record<string, string>>, names: Readonly<Record<string, string>>) {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(record))
    out[Object.hasOwn(names, key) ? names[key]! : key] = value;
  return out;
}

/** The Avro record of an envelope (see {@link S3_AVRO_SCHEMA}). */
export function envelopeToAvroRecord(envelope: D2CEnvelope): S3AvroMessage {
  const system = {
    'message-id': envelope.messageId,
    'iothub-connection-device-id': envelope.deviceId,
    ...envelope.systemProperties,
  };
  return {
    EnqueuedTimeUtc: envelope.enqueuedTime,
    Properties: { ...envelope.properties },
    SystemProperties: renameKeys(system, AVRO_SYSTEM_PROPERTY_NAMES),
    Body:
      envelope.bodyEncoding === 'json'
        ? Buffer.from(JSON.stringify(envelope.body) ?? '', 'utf8')
        : Buffer.from(String(envelope.body ?? ''), 'base64'),
  };
}

const JSON_CONTENT_TYPE = /^application\/json\s*(;|$)/i;

/**
 * The envelope an Avro record was written from. The body is parsed JSON by the envelope's own rule
 * (`docs/envelope.md`): when `contentType` is `application/json`, `contentEncoding` UTF-8 or absent,
 * and the bytes parse; base64 otherwise.
 */
export function avroRecordToEnvelope(record: S3AvroMessage): D2CEnvelope {
  const systemProperties = renameKeys(record.SystemProperties, WIRE_NAMES);
  const contentType = systemProperties['content-type'];
  const contentEncoding = systemProperties['content-encoding'];
  let bodyEncoding: 'json' | 'base64' = 'base64';
  let body: unknown = Buffer.from(record.Body).toString('base64');
  if (
    contentType !== undefined &&
    JSON_CONTENT_TYPE.test(contentType) &&
    (contentEncoding === undefined || /^utf-?8$/i.test(contentEncoding))
  ) {
    try {
      body = JSON.parse(Buffer.from(record.Body).toString('utf8'));
      bodyEncoding = 'json';
    } catch {
      // Not JSON after all: the envelope carried it in base64.
    }
  }
  return {
    version: ENVELOPE_VERSION,
    messageId: systemProperties['message-id'] ?? '',
    deviceId: systemProperties['iothub-connection-device-id'] ?? '',
    enqueuedTime: record.EnqueuedTimeUtc,
    systemProperties,
    properties: { ...record.Properties },
    bodyEncoding,
    body,
  };
}

/** An Avro object container file (deflate blocks) of `records`, with a given 16-byte sync marker. */
export async function encodeAvroContainer(
  records: readonly S3AvroMessage[],
  syncMarker: Buffer,
): Promise<Buffer> {
  const encoder = new avro.streams.BlockEncoder(AVRO_TYPE, { codec: 'deflate', syncMarker });
  const chunks: Buffer[] = [];
  const done = new Promise<Buffer>((resolve, reject) => {
    encoder.on('data', (chunk: Buffer) => chunks.push(chunk));
    encoder.on('end', () => resolve(Buffer.concat(chunks)));
    encoder.on('error', reject);
  });
  for (const record of records) encoder.write(record);
  encoder.end();
  return done;
}

const KEY_ID = /^[A-Za-z0-9._-]{1,128}$/;

/** An entry's id in object keys: its hub id when key-safe, else a digest of that id or its content. */
function entryKeyId(entry: StreamEntry): string {
  if (entry.id !== undefined && KEY_ID.test(entry.id)) return entry.id;
  const hash = createHash('sha256');
  hash.update(entry.id ?? entry.data);
  return hash.digest('hex').slice(0, 32);
}

/** SHA-256 over the ids of a batch, in order (length-prefixed, so no two lists collide). */
function batchDigest(entries: readonly StreamEntry[]): string {
  const hash = createHash('sha256');
  for (const entry of entries) {
    const id = entryKeyId(entry);
    hash.update(`${id.length}:${id};`);
  }
  return hash.digest('hex');
}

/** What {@link s3ObjectKey} builds a key from. */
export interface S3ObjectKeyInput {
  readonly hubName: string;
  readonly endpointName: string;
  readonly format: S3Format;
  /** When the object is written (its UTC minute goes into the key). */
  readonly time: Date;
  /** The object's entries, in order; at least one. */
  readonly entries: readonly StreamEntry[];
}

/**
 * The key of the object holding `entries`:
 *
 * `{hubName}/{endpointName}/{YYYY}/{MM}/{DD}/{HH}/{mm}/{first entry id}-{digest}.{jsonl|avro}`
 *
 * with the UTC date and time of the write, as IoT Hub's storage endpoint lays out blobs (so a
 * prefix lists a minute, an hour, a day, ...). `{first entry id}` is the first entry's hub id (its
 * ingest id; a digest of it when it is not made of key-safe characters, or of the entry's content
 * when it has none); `{digest}` is 16 hex digits of a SHA-256 over every entry's id, in order.
 *
 * Why both: a retried call must overwrite its object, not add a second one, so the name depends only
 * on the batch's content. The first id alone is not enough: when the event source retries a batch
 * from a later record, the router may cut that batch differently, and a call with the same first
 * entry but fewer entries would overwrite, and lose, messages that were written only in the
 * earlier object and are not sent again. With the digest, the same entries give the same key, and
 * other entries give another key: a message is then written twice (in two objects, with one
 * message id, as every endpoint may duplicate on retries) but never lost. A retry with a different
 * first entry is simply another batch, so another object.
 */
export function s3ObjectKey(input: S3ObjectKeyInput): string {
  return keyOf(input, batchDigest(input.entries));
}

function keyOf(input: S3ObjectKeyInput, digest: string): string {
  const first = input.entries[0];
  if (first === undefined) throw new Error('an S3 object needs at least one entry');
  const t = input.time;
  const two = (n: number) => String(n).padStart(2, '0');
  const path = [
    input.hubName,
    input.endpointName,
    String(t.getUTCFullYear()).padStart(4, '0'),
    two(t.getUTCMonth() + 1),
    two(t.getUTCDate()),
    two(t.getUTCHours()),
    two(t.getUTCMinutes()),
  ].join('/');
  return `${path}/${entryKeyId(first)}-${digest.slice(0, 16)}.${input.format === 'avro' ? 'avro' : 'jsonl'}`;
}

/** Options of {@link S3Sink}. */
export interface S3SinkOptions {
  /** The bucket name. */
  readonly bucket: string;
  /** The hub's name: the first key segment. */
  readonly hubName: string;
  /** The endpoint's name: the second key segment. */
  readonly endpointName: string;
  /** @default 'json' */
  readonly format?: S3Format;
  /** Envelope bytes per object (the endpoint's `maxChunkSizeInBytes`). @default {@link S3_MAX_CHUNK_BYTES} */
  readonly maxChunkSizeInBytes?: number;
  /** The clock. @default () => new Date() */
  readonly now?: () => Date;
}

/** How many batches' first write times a sink remembers (see {@link S3Sink}). */
const REMEMBERED_WRITES = 1_000;

const NEWLINE = Buffer.from('\n');

/**
 * An atomic {@link StreamSink} over S3 PutObject: each call becomes one object, under
 * {@link s3ObjectKey}, written whole or not at all (a failed call throws; a written one returns
 * all `true`). `json` objects are JSON lines (`application/x-ndjson`: the envelopes as the router
 * made them, one per line, in call order); `avro` objects are Avro object container files
 * (`application/avro`, deflate blocks) of {@link S3_AVRO_SCHEMA} records.
 *
 * Limits: the router cuts calls at `maxChunkSizeInBytes` of envelope bytes, and takes no single
 * envelope larger than that; the object itself differs by the line ends (JSON lines) or by the
 * Avro framing and body decoding (Avro, usually smaller).
 *
 * A retry of the same batch (same entries) gets the same key, so it overwrites the object: the sink
 * remembers the time of a batch's first write (the last {@link REMEMBERED_WRITES} batches) and
 * reuses it, so that holds across a minute boundary too, and, in a warm Lambda, for a batch the
 * event source retries because another endpoint failed. Avro sync markers are derived from the
 * batch too, so a rewritten object is byte-identical.
 */
export class S3Sink implements StreamSink {
  readonly limits: SinkLimits;
  private readonly format: S3Format;
  private readonly now: () => Date;
  private readonly firstWrites = new Map<string, Date>();

  constructor(
    private readonly client: S3Client,
    private readonly options: S3SinkOptions,
  ) {
    const chunk = options.maxChunkSizeInBytes ?? S3_MAX_CHUNK_BYTES;
    this.limits = { maxEntries: S3_MAX_ENTRIES, maxBytes: chunk, maxEntryBytes: chunk, atomic: true };
    this.format = options.format ?? 'json';
    this.now = options.now ?? (() => new Date());
  }

  async put(entries: readonly StreamEntry[]): Promise<readonly boolean[]> {
    if (entries.length === 0) return [];
    const digest = batchDigest(entries);
    const time = this.firstWrites.get(digest) ?? this.now();
    this.remember(digest, time);
    const key = keyOf({ ...this.options, format: this.format, time, entries }, digest);
    const body =
      this.format === 'avro'
        ? await encodeAvroContainer(
            entries.map((e) => envelopeToAvroRecord(decodeEnvelope(e.data))),
            Buffer.from(digest.slice(0, 32), 'hex'),
          )
        : Buffer.concat(entries.flatMap((e) => [e.data, NEWLINE]));
    await this.client.send(
      new PutObjectCommand({
        Bucket: this.options.bucket,
        Key: key,
        Body: body,
        ContentType: this.format === 'avro' ? 'application/avro' : 'application/x-ndjson',
      }),
    );
    return entries.map(() => true);
  }

  private remember(digest: string, time: Date): void {
    this.firstWrites.delete(digest);
    this.firstWrites.set(digest, time);
    if (this.firstWrites.size > REMEMBERED_WRITES) {
      const oldest = this.firstWrites.keys().next().value;
      if (oldest !== undefined) this.firstWrites.delete(oldest);
    }
  }
}
