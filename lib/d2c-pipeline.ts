import { Duration, Stack, Validations } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as kinesis from 'aws-cdk-lib/aws-kinesis';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sources from 'aws-cdk-lib/aws-lambda-event-sources';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { ENDPOINT_STREAMS_ENV, ROUTING_ENV, type RouterRouting } from '../functions/core/routing/config.ts';
import type { HubConfig } from './config.ts';
import { routedEndpointNames } from './endpoints.ts';
import { HubFunction } from './hub-function.ts';
import { DynamoPutAction, HubTopicRule, KinesisPutAction } from './topic-rule.ts';

/** Props of {@link D2CPipeline}. */
export interface D2CPipelineProps {
  readonly config: HubConfig;
  /** Where routed messages go when no route claims them. */
  readonly builtInEndpoint: kinesis.IStream;
  /**
   * The custom endpoints' streams by endpoint name (see `CustomEndpoints`). The router may write
   * only those that an enabled route sends to. @default none
   */
  readonly customEndpoints?: ReadonlyMap<string, kinesis.IStream>;
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

/** Lambda's limit on a function's environment variables, names and values together. */
export const LAMBDA_ENVIRONMENT_BYTES = 4096;
/** Room left for the router's other variables (names of the built-in stream, the table, ...). */
const OTHER_ENVIRONMENT_BYTES = 512;
/** Longest name CloudFormation generates for a Kinesis stream. */
const STREAM_NAME_BYTES = 128;

/**
 * The router's `ROUTING` value: the validated routing configuration and the hub name, as JSON.
 * @throws when it would not fit in the router's environment with the stream names of `routed`.
 */
export function routingEnvironment(config: HubConfig, routed: readonly string[] = []): string {
  const value: RouterRouting = { hubName: config.hubName, routing: config.routing };
  const json = JSON.stringify(value);
  // ENDPOINT_STREAMS is `{"name":"stream",...}`, its stream names known only at deploy time.
  const streams = routed.reduce((n, name) => n + Buffer.byteLength(name) + STREAM_NAME_BYTES + 6, 2);
  const total =
    ROUTING_ENV.length +
    Buffer.byteLength(json) +
    ENDPOINT_STREAMS_ENV.length +
    streams +
    OTHER_ENVIRONMENT_BYTES;
  if (total > LAMBDA_ENVIRONMENT_BYTES) {
    throw new Error(
      `hub.routing: the routing configuration is ${Buffer.byteLength(json)} bytes as JSON, which with the ` +
        `endpoint stream names needs about ${total} bytes of the router's environment; Lambda allows ` +
        `${LAMBDA_ENVIRONMENT_BYTES}. Use fewer or shorter routes, conditions or enrichments.`,
    );
  }
  return json;
}

/**
 * Device-to-cloud: an IoT rule takes D2C publishes into a durable ingest stream (keyed by client
 * id), and the router function, on a Kinesis event source mapping with partial batch failures,
 * evaluates the routes (`hub.routing`, in `ROUTING`) and writes each message as an envelope to the
 * endpoints its routes select: the built-in endpoint (`events`, and the fallback route) and the
 * routed custom endpoints' streams (in `ENDPOINT_STREAMS`). What the rule cannot deliver lands in the
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

    // Least privilege: the router may write only the custom endpoints an enabled route sends to. An
    // endpoint no enabled route uses keeps its stream but gets no grant and no ENDPOINT_STREAMS entry.
    const routed = routedEndpointNames(config.routing).map((name) => {
      const stream = props.customEndpoints?.get(name);
      if (stream === undefined) throw new Error(`hub.routing: no stream for custom endpoint '${name}'`);
      return [name, stream] as const;
    });
    this.router = new HubFunction(this, 'Router', {
      entry: 'functions/router.ts',
      description: 'Routes D2C messages from the ingest stream to the built-in and custom endpoints',
      timeout: Duration.seconds(60),
      environment: {
        MAX_MESSAGE_BYTES: String(config.maxMessageBytes),
        [ROUTING_ENV]: routingEnvironment(
          config,
          routed.map(([name]) => name),
        ),
      },
    })
      // Fallback and `events` routes write the built-in endpoint.
      .bindStreamWrite('BUILTIN_STREAM_NAME', props.builtInEndpoint)
      .bindTableWrite('DEADLETTER_TABLE_NAME', props.deadLetters);
    // The routed custom endpoints' stream names, `{ endpointName: streamName }`, and write on each.
    this.router.function.addEnvironment(
      ENDPOINT_STREAMS_ENV,
      Stack.of(this).toJsonString(
        Object.fromEntries(routed.map(([name, stream]) => [name, stream.streamName])),
      ),
    );
    for (const [, stream] of routed) stream.grantWrite(this.router.function);

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
