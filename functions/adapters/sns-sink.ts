import { PublishBatchCommand, type SNSClient } from '@aws-sdk/client-sns';
import type { PutOutcome, SinkLimits, StreamEntry, StreamSink } from '../core/ports.ts';
import {
  batchLimits,
  deduplicationId,
  fifoId,
  messageAttributes,
  messageText,
  resultsById,
} from './sqs-sink.ts';

/**
 * SNS PublishBatch with a topic's default `MaximumMessageSize`: 10 messages per call; one message
 * and the whole call (bodies and attributes) at most 256 KiB (262,144 bytes) (PublishBatch API
 * reference; "Amazon SNS message batching",
 * https://docs.aws.amazon.com/sns/latest/dg/sns-batch-api-actions.html). Unlike SQS, SNS did not
 * raise its default to 1 MiB; a topic whose `MaximumMessageSize` is raised can take a larger
 * `callBytes` (see {@link SnsSinkOptions.maxCallBytes}).
 */
export const SNS_LIMITS: SinkLimits = batchLimits(256 * 1024);

/** Options of {@link SnsSink}. */
export interface SnsSinkOptions {
  /** A FIFO topic. @default whether the topic ARN ends in `.fifo` */
  readonly fifo?: boolean;
  /** The topic's `MaximumMessageSize` (one message and one call). @default 262,144 */
  readonly maxCallBytes?: number;
}

/**
 * A {@link StreamSink} over SNS PublishBatch: one message per entry, its body the envelope, with
 * the {@link messageAttributes} SQS messages get (so subscription filter policies can select by
 * device or message source). On a FIFO topic the device id is the message group and the entry's
 * hub id the deduplication id. Entries SNS reports `Failed` come back `false`; a rejected call
 * (no such topic, throttled, ...) throws.
 */
export class SnsSink implements StreamSink {
  readonly limits: SinkLimits;
  private readonly fifo: boolean;

  constructor(
    private readonly client: SNSClient,
    private readonly topicArn: string,
    options: SnsSinkOptions = {},
  ) {
    this.fifo = options.fifo ?? topicArn.endsWith('.fifo');
    this.limits = options.maxCallBytes === undefined ? SNS_LIMITS : batchLimits(options.maxCallBytes);
  }

  async put(entries: readonly StreamEntry[]): Promise<readonly PutOutcome[]> {
    if (entries.length === 0) return [];
    const out = await this.client.send(
      new PublishBatchCommand({
        TopicArn: this.topicArn,
        PublishBatchRequestEntries: entries.map((entry, i) => ({
          Id: String(i),
          Message: messageText(entry.data),
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
