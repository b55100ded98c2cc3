import { Duration, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as kinesis from 'aws-cdk-lib/aws-kinesis';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { S3_SERVER_ACCESS_LOGS_USE_BUCKET_POLICY } from 'aws-cdk-lib/cx-api';
import { Construct, type IConstruct } from 'constructs';
import {
  BUILT_IN_ENDPOINT,
  type EndpointConfig,
  type EndpointType,
  type RoutingConfig,
} from '../functions/core/routing/config.ts';
import { BuiltInEndpoint } from './built-in-endpoint.ts';

/** Props of {@link CustomEndpoints}. */
export interface CustomEndpointsProps {
  /** The custom endpoints of the routing configuration (`hub.routing.endpoints`). */
  readonly endpoints: RoutingConfig['endpoints'];
}

/** What every custom endpoint exposes, whatever its type. */
interface EndpointBase {
  /** The endpoint's name in `hub.routing`. */
  readonly name: string;
  /**
   * What the router is given in `ENDPOINTS` to write it (a deploy-time token): the stream name
   * (`kinesis`), queue URL (`sqs`), topic ARN (`sns`), bucket name (`s3`) or event bus name
   * (`eventbridge`).
   */
  readonly target: string;
  /** ARN of the resource the router writes. */
  readonly arn: string;
  /** The resource the router writes (its CloudFormation resource is the default child). */
  readonly resource: IConstruct;
  /**
   * Grants `grantee` exactly what the router needs to write the endpoint, on this resource only:
   * see {@link WRITE_ACTIONS}.
   */
  grantWrite(grantee: iam.IGrantable): iam.Grant;
}

/** A custom endpoint and the resources the hub made for it. */
export type CustomEndpoint =
  | (EndpointBase & { readonly type: 'kinesis'; readonly stream: kinesis.Stream })
  | (EndpointBase & {
      readonly type: 'sqs';
      readonly queue: sqs.Queue;
      /** Where the queue's consumers' failures go, after 10 receives. */
      readonly deadLetterQueue: sqs.Queue;
    })
  | (EndpointBase & { readonly type: 'sns'; readonly topic: sns.Topic })
  | (EndpointBase & {
      readonly type: 's3';
      readonly bucket: s3.Bucket;
      /** The bucket's server access logs. */
      readonly accessLogs: s3.Bucket;
    })
  | (EndpointBase & { readonly type: 'eventbridge'; readonly eventBus: events.EventBus });

/**
 * The IAM actions the router gets per endpoint type, each on the endpoint's own resource (objects
 * of the bucket for `s3`). SendMessageBatch, PublishBatch and PutRecords batches are authorized by
 * these same actions.
 */
export const WRITE_ACTIONS: { readonly [T in EndpointType]: readonly string[] } = {
  kinesis: ['kinesis:PutRecord', 'kinesis:PutRecords'],
  sqs: ['sqs:SendMessage'],
  sns: ['sns:Publish'],
  s3: ['s3:PutObject'],
  eventbridge: ['events:PutEvents'],
};

/** Days the SQS endpoint queues and their dead-letter queues keep messages (the most SQS allows). */
const QUEUE_RETENTION = Duration.days(14);
/** Receives of one message by the queue's consumers before it moves to the dead-letter queue. */
const MAX_RECEIVE_COUNT = 10;

/**
 * The routing configuration's custom endpoints, each made by the hub (no physical names) and written
 * by the router as envelopes:
 *
 * - `kinesis`: a data stream made like the built-in endpoint's (on-demand, AWS-managed Kinesis key),
 *   keeping records for `retentionDays`;
 * - `sqs`: a queue (FIFO when `fifo`, high-throughput per message group, no content-based
 *   deduplication: the router sets deduplication ids), SQS-managed encryption, TLS only, 14 days,
 *   with a dead-letter queue that takes a message after 10 receives by its consumers;
 * - `sns`: a topic (FIFO when `fifo`), encrypted with the AWS-managed SNS key, TLS-only publishing;
 * - `s3`: a bucket, versioned, S3-managed encryption, public access blocked, TLS only, with server
 *   access logs in a bucket of its own;
 * - `eventbridge`: a custom event bus.
 *
 * Stateful: each endpoint's construct id is its name, so renaming an endpoint in `hub.routing.endpoints`
 * replaces its resources. Streams, queues and buckets are retained when removed from the stack, like
 * the hub's tables; topics and buses hold no data.
 */
export class CustomEndpoints extends Construct {
  /** Endpoint name → endpoint, in configuration order. */
  readonly endpoints: ReadonlyMap<string, CustomEndpoint>;

  constructor(scope: Construct, id: string, props: CustomEndpointsProps) {
    super(scope, id);
    const endpoints = new Map<string, CustomEndpoint>();
    for (const config of props.endpoints) endpoints.set(config.name, this.create(config));
    this.endpoints = endpoints;
  }

  /** The named endpoint. @throws when there is no such custom endpoint. */
  endpoint(name: string): CustomEndpoint {
    const endpoint = this.endpoints.get(name);
    if (endpoint === undefined) throw new Error(`no custom endpoint '${name}'`);
    return endpoint;
  }

  /**
   * Every endpoint as JSON `{ "<name>": { "type", "target", "arn" } }` (deploy-time values), what
   * consumers need to read them: the stack output `CustomEndpoints`.
   */
  describe(): string {
    return Stack.of(this).toJsonString(
      Object.fromEntries(
        [...this.endpoints.values()].map((e) => [e.name, { type: e.type, target: e.target, arn: e.arn }]),
      ),
    );
  }

  private create(config: EndpointConfig): CustomEndpoint {
    const { name } = config;
    const grantOn =
      (type: EndpointType, resourceArn: string) =>
      (grantee: iam.IGrantable): iam.Grant =>
        iam.Grant.addToPrincipal({ grantee, actions: [...WRITE_ACTIONS[type]], resourceArns: [resourceArn] });
    switch (config.type) {
      case 'kinesis': {
        // Construct path CustomEndpoints/<name>/Stream, as before other types existed.
        const { stream } = new BuiltInEndpoint(this, name, {
          config: { retentionDays: config.retentionDays, mode: 'on-demand' },
        });
        return {
          type: 'kinesis',
          name,
          stream,
          resource: stream,
          target: stream.streamName,
          arn: stream.streamArn,
          // Not stream.grantWrite: that adds kinesis:ListShards, which the router does not call.
          grantWrite: grantOn('kinesis', stream.streamArn),
        };
      }
      case 'sqs': {
        const scope = new Construct(this, name);
        const fifo = config.fifo ? { fifo: true } : {};
        const deadLetterQueue = new sqs.Queue(scope, 'DeadLetterQueue', {
          ...fifo,
          encryption: sqs.QueueEncryption.SQS_MANAGED,
          enforceSSL: true,
          retentionPeriod: QUEUE_RETENTION,
          removalPolicy: RemovalPolicy.RETAIN,
        });
        Validations.of(deadLetterQueue).acknowledge(
          {
            id: 'AwsSolutions-SQS3',
            reason: 'This queue is itself the dead-letter queue of a custom SQS endpoint',
          },
          {
            id: 'Serverless-SQSRedrivePolicy',
            reason: 'This queue is itself the dead-letter queue of a custom SQS endpoint',
          },
        );
        const queue = new sqs.Queue(scope, 'Queue', {
          ...(config.fifo
            ? {
                fifo: true,
                // The router sets a deduplication id (the message id) and the device id as group.
                contentBasedDeduplication: false,
                deduplicationScope: sqs.DeduplicationScope.MESSAGE_GROUP,
                fifoThroughputLimit: sqs.FifoThroughputLimit.PER_MESSAGE_GROUP_ID,
              }
            : {}),
          encryption: sqs.QueueEncryption.SQS_MANAGED,
          enforceSSL: true,
          retentionPeriod: QUEUE_RETENTION,
          deadLetterQueue: { queue: deadLetterQueue, maxReceiveCount: MAX_RECEIVE_COUNT },
          removalPolicy: RemovalPolicy.RETAIN,
        });
        return {
          type: 'sqs',
          name,
          queue,
          deadLetterQueue,
          resource: queue,
          target: queue.queueUrl,
          arn: queue.queueArn,
          // SQS-managed encryption: senders need no KMS permission.
          grantWrite: grantOn('sqs', queue.queueArn),
        };
      }
      case 'sns': {
        const scope = new Construct(this, name);
        const topic = new sns.Topic(scope, 'Topic', {
          ...(config.fifo
            ? {
                fifo: true,
                // The router sets a deduplication id (the message id) and the device id as group.
                contentBasedDeduplication: false,
                fifoThroughputScope: sns.FifoThroughputScope.MESSAGE_GROUP,
              }
            : {}),
          // The AWS-managed SNS key: its key policy lets principals of this account use it through
          // SNS, so the router needs no KMS grant, and there is no key to rotate or pay for.
          masterKey: kms.Alias.fromAliasName(scope, 'AwsManagedKey', 'alias/aws/sns'),
          enforceSSL: true,
        });
        return {
          type: 'sns',
          name,
          topic,
          resource: topic,
          target: topic.topicArn,
          arn: topic.topicArn,
          grantWrite: grantOn('sns', topic.topicArn),
        };
      }
      case 's3': {
        const scope = new Construct(this, name);
        // Log delivery through a bucket policy (aws:SourceArn-scoped), not the legacy ACL.
        scope.node.setContext(S3_SERVER_ACCESS_LOGS_USE_BUCKET_POLICY, true);
        const accessLogs = new s3.Bucket(scope, 'AccessLogs', {
          blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
          // The only encryption S3 server access logging delivers to.
          encryption: s3.BucketEncryption.S3_MANAGED,
          enforceSSL: true,
          lifecycleRules: [{ expiration: Duration.days(365) }],
          removalPolicy: RemovalPolicy.RETAIN,
        });
        Validations.of(accessLogs).acknowledge({
          id: 'AwsSolutions-S1',
          reason:
            "This bucket holds the S3 endpoint bucket's server access logs; logging it would log the logs",
        });
        const bucket = new s3.Bucket(scope, 'Bucket', {
          blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
          encryption: s3.BucketEncryption.S3_MANAGED,
          enforceSSL: true,
          versioned: true,
          // Objects consumers delete stay as noncurrent versions for a month, then go.
          lifecycleRules: [{ noncurrentVersionExpiration: Duration.days(30) }],
          serverAccessLogsBucket: accessLogs,
          removalPolicy: RemovalPolicy.RETAIN,
        });
        const objects = bucket.arnForObjects('*');
        return {
          type: 's3',
          name,
          bucket,
          accessLogs,
          resource: bucket,
          target: bucket.bucketName,
          arn: bucket.bucketArn,
          // Not bucket.grantPut/grantWrite: they add wildcard actions (s3:Abort*, and s3:PutObject* or,
          // with @aws-cdk/aws-s3:grantWriteWithoutAcl, PutObjectLegalHold/Retention/(Version)Tagging;
          // grantWrite also s3:DeleteObject*), none of which the router uses.
          grantWrite: (grantee) => {
            const grant = grantOn('s3', objects)(grantee);
            const principal = grantee.grantPrincipal;
            if (principal instanceof Construct) {
              Validations.of(principal).acknowledge({
                id: `AwsSolutions-IAM5[Resource::<${Stack.of(bucket).getLogicalId(bucket.node.defaultChild as s3.CfnBucket)}.Arn>/*]`,
                reason:
                  `The router names each object it writes ({hubName}/{endpoint}/{time}/...), so it may put any ` +
                  `key, but only in the '${name}' endpoint bucket, which holds nothing else`,
              });
            }
            return grant;
          },
        };
      }
      case 'eventbridge': {
        const scope = new Construct(this, name);
        const eventBus = new events.EventBus(scope, 'Bus', {
          description: `Custom endpoint '${name}' of the IoT hub`,
        });
        return {
          type: 'eventbridge',
          name,
          eventBus,
          resource: eventBus,
          target: eventBus.eventBusName,
          arn: eventBus.eventBusArn,
          grantWrite: grantOn('eventbridge', eventBus.eventBusArn),
        };
      }
      default: {
        const unknown: never = config;
        throw new Error(
          `custom endpoint type '${String((unknown as { type: unknown }).type)}' is not supported`,
        );
      }
    }
  }
}

/**
 * Custom endpoints that some enabled route sends to, in configuration order. Only these are written
 * by the router, so only these get a write grant and a place in `ENDPOINTS`; the built-in endpoint
 * (`events`) is not among them.
 */
export function routedEndpointNames(routing: RoutingConfig): string[] {
  const routed = new Set(
    routing.routes.filter((route) => route.isEnabled).flatMap((route) => route.endpointNames),
  );
  return routing.endpoints.map((e) => e.name).filter((n) => n !== BUILT_IN_ENDPOINT && routed.has(n));
}
