import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { CreateTopicCommand } from '@aws-sdk/client-sns';
import { CreateQueueCommand, GetQueueUrlCommand, SendMessageCommand } from '@aws-sdk/client-sqs';
import { startFauxqs } from 'fauxqs';
import { localS3Client, localSnsClient, localSqsClient } from './emulators.ts';
import type { LocalBucket, LocalQueue, LocalTopic } from './template.ts';

/**
 * The SQS, SNS and S3 stand-ins behind the custom endpoints (and any other queue, topic or bucket
 * of the stack): fauxqs, which speaks the services' own protocols to the real SDK clients, in this
 * process; or an emulator the user runs (`npx fauxqs`, LocalStack) at `externalUrl`. fauxqs keeps
 * its contents in memory: what the endpoints hold is gone when the hub stops, unless an external
 * emulator outlives it.
 */
export interface EndpointServices {
  /** The one URL of SQS, SNS and S3 (`AWS_ENDPOINT_URL_SQS` / `_SNS` / `_S3`). */
  readonly url: string;
  /** Queue name → queue URL, for every queue created. */
  readonly queueUrls: ReadonlyMap<string, string>;
  /** Sends `body` to the queue with this ARN (an EventBridge target). */
  sendToQueue(queueArn: string, body: string): Promise<void>;
  close(): Promise<void>;
}

/** Options of {@link startEndpointServices}. */
export interface EndpointServicesOptions {
  readonly host: string;
  readonly port: number;
  /** Use this running SQS/SNS/S3 emulator instead of starting one. */
  readonly externalUrl?: string;
  readonly queues: readonly LocalQueue[];
  readonly topics: readonly LocalTopic[];
  readonly buckets: readonly LocalBucket[];
}

/** Starts (or connects to) the emulator and creates the stack's queues, topics and buckets in it. */
export async function startEndpointServices(options: EndpointServicesOptions): Promise<EndpointServices> {
  const server = options.externalUrl
    ? undefined
    : await startFauxqs({ host: options.host, port: options.port, logger: false });
  const url = options.externalUrl ?? server?.address ?? '';
  const sqs = localSqsClient(url);
  const sns = localSnsClient(url);
  const s3 = localS3Client(url);
  const close = async () => {
    sqs.destroy();
    sns.destroy();
    s3.destroy();
    await server?.stop();
  };
  try {
    const queueUrls = new Map<string, string>();
    // Dead-letter queues first: a redrive policy names a queue that must exist.
    const ordered = [...options.queues].sort(
      (a, b) => Number('RedrivePolicy' in a.attributes) - Number('RedrivePolicy' in b.attributes),
    );
    for (const queue of ordered) {
      const out = await sqs.send(
        new CreateQueueCommand({ QueueName: queue.name, Attributes: queue.attributes }),
      );
      queueUrls.set(queue.name, out.QueueUrl ?? '');
    }
    for (const topic of options.topics) {
      await sns.send(
        new CreateTopicCommand({
          Name: topic.name,
          ...(topic.fifo ? { Attributes: { FifoTopic: 'true' } } : {}),
        }),
      );
    }
    for (const bucket of options.buckets) await s3.send(new CreateBucketCommand({ Bucket: bucket.name }));
    return {
      url,
      queueUrls,
      async sendToQueue(queueArn, body) {
        const name = queueArn.split(':').at(-1) ?? '';
        const queueUrl =
          queueUrls.get(name) ?? (await sqs.send(new GetQueueUrlCommand({ QueueName: name }))).QueueUrl;
        await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: body }));
      },
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}
