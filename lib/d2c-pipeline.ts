import { Duration, Validations } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as kinesis from 'aws-cdk-lib/aws-kinesis';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sources from 'aws-cdk-lib/aws-lambda-event-sources';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import type { HubConfig } from './config.ts';
import { HubFunction } from './hub-function.ts';
import { DynamoPutAction, HubTopicRule, KinesisPutAction } from './topic-rule.ts';

/** Props of {@link D2CPipeline}. */
export interface D2CPipelineProps {
  readonly config: HubConfig;
  /** Where routed messages go when no route claims them. */
  readonly builtInEndpoint: kinesis.IStream;
  /** Where messages that cannot be delivered or accepted are kept, with the reason. */
  readonly deadLetters: dynamodb.ITable;
}

/**
 * Ingest rule SQL. Its output is `IngestRecordSchema` in `functions/core/d2c/envelope.ts`:
 * the body is carried base64 so binary payloads survive, and `newuuid()` gives each publish one
 * id that every retry of the pipeline keeps.
 */
export function ingestSql(topicFilter: string): string {
  return (
    "SELECT encode(*, 'base64') AS body, topic() AS topic, clientid() AS clientId, principal() AS principal, " +
    `timestamp() AS enqueuedTime, newuuid() AS ingestId FROM '${topicFilter}'`
  );
}

/**
 * Device-to-cloud: an IoT rule takes D2C publishes into a durable ingest stream (keyed by client
 * id), and the router function, on a Kinesis event source mapping with partial batch failures,
 * writes them as envelopes to the built-in endpoint. What the rule cannot deliver lands in the
 * dead-letter table (the rule's error action); what the mapping gives up on after its retries is
 * described on an SQS queue, and the records stay on the ingest stream for replay.
 */
export class D2CPipeline extends Construct {
  readonly ingestStream: kinesis.Stream;
  readonly rule: HubTopicRule;
  readonly router: HubFunction;
  readonly routerFailures: sqs.Queue;

  constructor(scope: Construct, id: string, props: D2CPipelineProps) {
    super(scope, id);
    const { config } = props;
    this.ingestStream = new kinesis.Stream(this, 'IngestStream', {
      encryption: kinesis.StreamEncryption.MANAGED,
      // A week gives an operator time to replay what the router gave up on.
      retentionPeriod: Duration.days(7),
      streamMode: kinesis.StreamMode.ON_DEMAND,
    });

    this.rule = new HubTopicRule(this, 'IngestRule', {
      description: 'Device-to-cloud telemetry into the ingest stream',
      sql: ingestSql(config.d2cTopicFilter),
      actions: [new KinesisPutAction(this.ingestStream, { partitionKey: '${clientid()}' })],
      errorAction: new DynamoPutAction(props.deadLetters, {
        hashKeyValue: 'dl#${clientid()}',
        rangeKeyValue: 'rule-error#${newuuid()}',
        payloadField: 'ruleError',
      }),
    });

    this.routerFailures = new sqs.Queue(this, 'RouterFailures', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
    });

    this.router = new HubFunction(this, 'Router', {
      entry: 'functions/router.ts',
      description: 'Routes D2C messages from the ingest stream to the built-in endpoint',
      timeout: Duration.seconds(60),
      environment: { MAX_MESSAGE_BYTES: String(config.maxMessageBytes) },
    })
      .bindStreamWrite('BUILTIN_STREAM_NAME', props.builtInEndpoint)
      .bindTableWrite('DEADLETTER_TABLE_NAME', props.deadLetters);

    this.router.function.addEventSource(
      new sources.KinesisEventSource(this.ingestStream, {
        startingPosition: lambda.StartingPosition.TRIM_HORIZON,
        batchSize: 100,
        bisectBatchOnError: true,
        reportBatchItemFailures: true,
        retryAttempts: 20,
        // One batch per shard at a time keeps each device's order.
        parallelizationFactor: 1,
        onFailure: new sources.SqsDlq(this.routerFailures),
      }),
    );
    Validations.of(this.routerFailures).acknowledge(
      {
        id: 'AwsSolutions-SQS3',
        reason: 'This queue is itself the failure destination of the router mapping',
      },
      {
        id: 'Serverless-SQSRedrivePolicy',
        reason: 'This queue is itself the failure destination of the router mapping',
      },
    );
    Validations.of(this.router.function).acknowledge({
      id: 'Serverless-LambdaDLQ',
      reason: 'Invoked synchronously by a Kinesis event source mapping, whose on-failure destination is set',
    });
  }
}
