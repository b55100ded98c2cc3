import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import {
  CreateQueueCommand,
  DeleteMessageBatchCommand,
  GetQueueAttributesCommand,
  type Message,
  ReceiveMessageCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { type D2CEnvelope, decodeEnvelope } from '../../functions/core/d2c/envelope.ts';

/** A message read from a queue: its envelope (the body, or an SNS/EventBridge wrapper's payload) and attributes. */
export interface QueueMessage {
  readonly body: string;
  readonly attributes: Readonly<Record<string, string>>;
  readonly groupId?: string;
}

/**
 * Receives and deletes messages from a queue until `done(all so far)` holds or `timeoutMs` passes
 * (then throws, naming what arrived). FIFO queues hand out one message group at a time, so deleting
 * as we go is what lets the next message of a device through.
 */
export async function drainQueue(
  client: SQSClient,
  queueUrl: string,
  done: (messages: readonly QueueMessage[]) => boolean,
  timeoutMs = 60_000,
): Promise<QueueMessage[]> {
  const out: QueueMessage[] = [];
  const deadline = Date.now() + timeoutMs;
  while (!done(out)) {
    if (Date.now() > deadline) {
      throw new Error(
        `queue ${queueUrl}: condition not met within ${timeoutMs} ms; got ${out.length} messages`,
      );
    }
    const page = await client.send(
      new ReceiveMessageCommand({
        QueueUrl: queueUrl,
        MaxNumberOfMessages: 10,
        WaitTimeSeconds: 1,
        MessageAttributeNames: ['All'],
        MessageSystemAttributeNames: ['MessageGroupId'],
      }),
    );
    const messages: Message[] = page.Messages ?? [];
    for (const m of messages) {
      out.push({
        body: m.Body ?? '',
        attributes: Object.fromEntries(
          Object.entries(m.MessageAttributes ?? {}).map(([k, v]) => [k, v.StringValue ?? '']),
        ),
        ...(m.Attributes?.MessageGroupId ? { groupId: m.Attributes.MessageGroupId } : {}),
      });
    }
    if (messages.length > 0) {
      await client.send(
        new DeleteMessageBatchCommand({
          QueueUrl: queueUrl,
          Entries: messages.map((m, i) => ({ Id: String(i), ReceiptHandle: m.ReceiptHandle ?? '' })),
        }),
      );
    }
  }
  return out;
}

/** The envelope an SQS endpoint message carries. */
export function envelopeOf(message: QueueMessage): D2CEnvelope {
  return decodeEnvelope(Buffer.from(message.body));
}

/** Creates a queue in the emulator (a test's own, e.g. an SNS subscriber) and returns its URL and ARN. */
export async function createQueue(client: SQSClient, name: string): Promise<{ url: string; arn: string }> {
  const url = (await client.send(new CreateQueueCommand({ QueueName: name }))).QueueUrl ?? '';
  const attrs = await client.send(
    new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['QueueArn'] }),
  );
  return { url, arn: attrs.Attributes?.QueueArn ?? '' };
}

/** Every object in a bucket, with its content, in key order. */
export async function readBucket(
  client: S3Client,
  bucket: string,
): Promise<{ key: string; body: Uint8Array }[]> {
  const out: { key: string; body: Uint8Array }[] = [];
  let token: string | undefined;
  do {
    const page = await client.send(
      new ListObjectsV2Command({ Bucket: bucket, ...(token ? { ContinuationToken: token } : {}) }),
    );
    for (const o of page.Contents ?? []) {
      const got = await client.send(new GetObjectCommand({ Bucket: bucket, Key: o.Key }));
      out.push({ key: o.Key ?? '', body: await got.Body!.transformToByteArray() });
    }
    token = page.NextContinuationToken;
  } while (token);
  return out.sort((a, b) => a.key.localeCompare(b.key));
}
