import { createHash } from 'node:crypto';
import { SendMessageBatchCommand, type SQSClient } from '@aws-sdk/client-sqs';
import type { PutOutcome, SinkLimits, StreamEntry, StreamSink } from '../core/ports.ts';

/** Message attribute carrying the device id, so consumers can filter without parsing the body. */
export const DEVICE_ID_ATTRIBUTE = 'iothub-connection-device-id';
/** Message attribute carrying `iothub-message-source` (`Telemetry`, ...), when the entry has one. */
export const MESSAGE_SOURCE_ATTRIBUTE = 'iothub-message-source';

/**
 * Bytes kept free per entry for its message attributes, which SQS and SNS count in a message's
 * size: names + `String` + values of {@link DEVICE_ID_ATTRIBUTE} with a device id of up to 128
 * characters (IoT Hub's limit) and {@link MESSAGE_SOURCE_ATTRIBUTE} take at most 215 bytes.
 */
export const ATTRIBUTE_RESERVE_BYTES = 256;

/** Entries per SendMessageBatch / PublishBatch call. */
export const MAX_BATCH_ENTRIES = 10;

/**
 * Limits of a batch API where one message and one whole call share one size limit (body plus
 * attributes): the entry data of a call may take the limit less the attribute reserve of a full
 * call, and so may one entry (the router needs `maxEntryBytes <= maxBytes`).
 */
export function batchLimits(callBytes: number): SinkLimits {
  const bytes = callBytes - MAX_BATCH_ENTRIES * ATTRIBUTE_RESERVE_BYTES;
  return { maxEntries: MAX_BATCH_ENTRIES, maxBytes: bytes, maxEntryBytes: bytes };
}

/**
 * SQS SendMessageBatch: 10 messages per call; one message and the whole call (bodies and
 * attributes) at most 1 MiB (1,048,576 bytes) since AWS raised the limit from 256 KiB (AWS Compute
 * Blog, "More room to build: serverless services now support payloads up to 1 MB",
 * https://aws.amazon.com/blogs/compute/more-room-to-build-serverless-services-now-support-payloads-up-to-1-mb,
 * and the SendMessageBatch API reference: "The maximum allowed individual message size and the
 * maximum total payload size ... are both 1 MiB 1,048,576 bytes"). The queue's
 * `MaximumMessageSize` must be left at (or set to) 1 MiB, its default.
 */
export const SQS_LIMITS: SinkLimits = batchLimits(1024 * 1024);

/** Characters (and length) SQS and SNS allow in a FIFO message group id and deduplication id. */
const FIFO_ID = /^[\x21-\x7e]{1,128}$/;

/**
 * A FIFO message group id or deduplication id for `value`: itself when it is 1-128 printable ASCII
 * characters (device ids and ingest ids always are), else its SHA-256 in hex, which is stable, so a
 * device keeps one group and a retried message keeps its deduplication id.
 */
export function fifoId(value: string): string {
  return FIFO_ID.test(value) ? value : createHash('sha256').update(value).digest('hex');
}

/** The FIFO deduplication id of an entry: its hub id, else (no id) a digest of its content. */
export function deduplicationId(entry: StreamEntry): string {
  return entry.id === undefined ? createHash('sha256').update(entry.data).digest('hex') : fifoId(entry.id);
}

/** A string message attribute, in the shape SQS and SNS both take. */
export interface StringAttribute {
  readonly DataType: 'String';
  readonly StringValue: string;
}

/** The message attributes of an entry. */
export function messageAttributes(entry: StreamEntry): Record<string, StringAttribute> {
  return {
    [DEVICE_ID_ATTRIBUTE]: { DataType: 'String', StringValue: entry.partitionKey },
    ...(entry.messageSource
      ? { [MESSAGE_SOURCE_ATTRIBUTE]: { DataType: 'String', StringValue: entry.messageSource } }
      : {}),
  };
}

/**
 * An entry's data as message text. SQS refuses U+FFFE and U+FFFF (they are outside the XML
 * character set it allows), and `JSON.stringify` leaves them unescaped; in an envelope, which is
 * JSON, they can stand only inside strings, where `\ufffe`/`\uffff` mean the same. Characters
 * beyond the Basic Multilingual Plane (emoji) are escaped as `\uXXXX` surrogate pairs too: SQS
 * allows them, but the local hub's SQS emulator (fauxqs) refuses them, and the escaped text is the
 * same JSON value. Every other character `JSON.stringify` writes is allowed (it escapes control
 * characters and lone surrogates).
 */
export function messageText(data: Uint8Array): string {
  return Buffer.from(data)
    .toString('utf8')
    .replace(/[\ufffe\uffff\ud800-\udfff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** A batch API's failed entry (SQS and SNS share the shape). */
interface FailedEntry {
  readonly Id?: string | undefined;
  readonly SenderFault?: boolean | undefined;
  readonly Code?: string | undefined;
  readonly Message?: string | undefined;
}

/**
 * Per-entry outcomes of a batch API by batch entry id (`0`, `1`, ...): written when `Successful`
 * lists it; rejected when `Failed` lists it as the sender's fault (the message itself is at fault,
 * e.g. too large for the queue's `MaximumMessageSize`: retrying cannot help); otherwise retryable.
 */
export function resultsById(
  count: number,
  successful: readonly { Id?: string | undefined }[] | undefined,
  failed: readonly FailedEntry[] | undefined = [],
): readonly PutOutcome[] {
  const ok = new Set((successful ?? []).map((s) => s.Id));
  const refused = new Map(
    (failed ?? []).filter((f) => f.SenderFault === true).map((f) => [f.Id, `${f.Code}: ${f.Message}`]),
  );
  return Array.from({ length: count }, (_, i): PutOutcome => {
    const rejected = refused.get(String(i));
    return ok.has(String(i)) || (rejected === undefined ? false : { rejected });
  });
}

/** Options of {@link SqsSink}. */
export interface SqsSinkOptions {
  /** A FIFO queue. @default whether the queue URL ends in `.fifo` */
  readonly fifo?: boolean;
}

/**
 * A {@link StreamSink} over SQS SendMessageBatch: one message per entry, its body the envelope.
 * On a FIFO queue the device id is the message group (ordered per device; the router sends at most
 * one message per device per call) and the entry's hub id the deduplication id, so a retried
 * message is dropped by SQS within its 5-minute deduplication window. Every message carries
 * {@link DEVICE_ID_ATTRIBUTE} and {@link MESSAGE_SOURCE_ATTRIBUTE} attributes. Entries SQS
 * reports `Failed` come back `false`; a rejected call (no such queue, throttled, ...) throws.
 */
export class SqsSink implements StreamSink {
  readonly limits = SQS_LIMITS;
  private readonly fifo: boolean;

  constructor(
    private readonly client: SQSClient,
    private readonly queueUrl: string,
    options: SqsSinkOptions = {},
  ) {
    this.fifo = options.fifo ?? queueUrl.endsWith('.fifo');
  }

  async put(entries: readonly StreamEntry[]): Promise<readonly PutOutcome[]> {
    if (entries.length === 0) return [];
    const out = await this.client.send(
      new SendMessageBatchCommand({
        QueueUrl: this.queueUrl,
        Entries: entries.map((entry, i) => ({
          Id: String(i),
          MessageBody: messageText(entry.data),
          MessageAttributes: messageAttributes(entry),
          ...(this.fifo
            ? { MessageGroupId: fifoId(entry.partitionKey), MessageDeduplicationId: deduplicationId(entry) }
            : {}),
        })),
      }),
    );
    return resultsById(entries.length, out.Successful, out.Failed);
  }
}
