import type { StreamSink } from '../core/ports.ts';
import type { EndpointConfig, EndpointTarget } from '../core/routing/config.ts';
import { eventBridgeClient, kinesisClient, s3Client, snsClient, sqsClient } from './aws-clients.ts';
import { EventBridgeSink } from './eventbridge-sink.ts';
import { KinesisStreamSink } from './kinesis-sink.ts';
import { S3Sink } from './s3-sink.ts';
import { SnsSink } from './sns-sink.ts';
import { SqsSink } from './sqs-sink.ts';

/** What the sinks need besides their target. */
export interface EndpointSinkOptions {
  /** The hub name (S3 object keys, EventBridge event source). */
  readonly hubName: string;
  /**
   * The endpoint's configuration from the routing configuration (`routing.endpoints`, which the
   * router has in its routing file): S3's `format` and `maxChunkSizeInBytes`, SQS's and SNS's
   * `fifo`. Without it S3 writes JSON lines in chunks of up to `S3_MAX_CHUNK_BYTES`. SQS and SNS are
   * FIFO when the configuration says so or the queue URL or topic ARN ends in `.fifo` (AWS requires
   * that suffix of FIFO queues and topics).
   */
  readonly config?: EndpointConfig;
}

/**
 * The sink that writes a custom endpoint of any type.
 * @throws when `options.config` is of another type than `target`.
 */
export function endpointSink(name: string, target: EndpointTarget, options: EndpointSinkOptions): StreamSink {
  const config = options.config;
  if (config !== undefined && (config.type !== target.type || config.name !== name)) {
    throw new Error(
      `endpoint '${name}': its target is of type '${target.type}' but the configuration given is '${config.name}' of type '${config.type}'`,
    );
  }
  switch (target.type) {
    case 'kinesis':
      return new KinesisStreamSink(kinesisClient(), target.target);
    case 'sqs':
      return new SqsSink(
        sqsClient(),
        target.target,
        config?.type === 'sqs' && config.fifo ? { fifo: true } : {},
      );
    case 'sns':
      return new SnsSink(
        snsClient(),
        target.target,
        config?.type === 'sns' && config.fifo ? { fifo: true } : {},
      );
    case 's3':
      return new S3Sink(s3Client(), {
        bucket: target.target,
        hubName: options.hubName,
        endpointName: name,
        ...(config?.type === 's3'
          ? { format: config.format, maxChunkSizeInBytes: config.maxChunkSizeInBytes }
          : {}),
      });
    case 'eventbridge':
      return new EventBridgeSink(eventBridgeClient(), target.target, options.hubName);
    default: {
      const unknown: never = target.type;
      throw new Error(`endpoint '${name}': type '${String(unknown)}' has no sink`);
    }
  }
}
