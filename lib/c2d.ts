import { type CfnElement, Duration, Stack, Validations } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as kinesis from 'aws-cdk-lib/aws-kinesis';
import { Construct } from 'constructs';
import { C2D_SETTINGS_ENV } from '../functions/core/c2d/config.ts';
import {
  CONNECTED_EVENTS_SQL,
  DEVICEBOUND_TOPIC_PATTERN,
  SETTLE_RESPONSE_TOPIC_PATTERN,
  SETTLE_RULE_SQL,
  SUBSCRIBED_EVENTS_SQL,
} from '../functions/core/c2d/topics.ts';
import type { HubConfig } from './config.ts';
import { HubFunction } from './hub-function.ts';
import { DynamoPutAction, HubTopicRule, LambdaInvokeAction } from './topic-rule.ts';

/** Props of {@link C2dMessaging}. */
export interface C2dMessagingProps {
  readonly config: HubConfig;
  /** The delivery ledger: per-device queues, locks, the due index `gsi1` and feedback. */
  readonly ledger: dynamodb.ITable;
  /** The identity registry, which delivery reads (device status). */
  readonly registry: dynamodb.ITable;
  /** Where lifecycle and settlement events that cannot be handed to a function go. */
  readonly deadLetters: dynamodb.ITable;
  /** The service API, which enqueues, purges and reads feedback, and delivers right after a send. */
  readonly serviceApi: HubFunction;
}

/** Environment variable names the C2D functions read. */
export const C2D_ENV = {
  ledgerTable: 'LEDGER_TABLE_NAME',
  registryTable: 'REGISTRY_TABLE_NAME',
  feedbackStream: 'FEEDBACK_STREAM_NAME',
  settings: C2D_SETTINGS_ENV,
} as const;

/** The cdk-nag finding id of a wildcard IoT topic ARN built by `HubFunction.grantPublish`. */
function topicWildcardFinding(pattern: string): string {
  return `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:topic/${pattern}]`;
}

/** The cdk-nag finding id of the `{table}/index/*` resource that a DynamoDB data grant adds. */
function tableIndexFinding(table: dynamodb.ITable): string {
  const element = table.node.defaultChild as CfnElement | undefined;
  if (element === undefined) throw new Error('the ledger must be a table of this app');
  return `AwsSolutions-IAM5[Resource::<${Stack.of(table).getLogicalId(element)}.Arn>/index/*]`;
}

const DEVICEBOUND_REASON =
  'C2D messages are published to devices/{deviceId}/messages/devicebound/{properties}: device ids are ' +
  'not known at deploy time, and the property bag is per message';
const LEDGER_INDEX_REASON =
  "A ledger data grant covers the table's indexes; its only index is the due index gsi1, which the " +
  'ledger engine queries for due messages';

/**
 * Cloud-to-device messaging around the delivery ledger: the delivery function (started every
 * minute by a schedule, sweeping inside each run, and on device connect and subscribe events), the
 * settlement function behind the rule that takes devices' complete / reject / abandon publishes,
 * and the feedback stream (Kinesis, keyed by device id) that back ends read. It also lets the
 * service API use the ledger and deliver right after a send.
 */
export class C2dMessaging extends Construct {
  /** Feedback records (delivered-and-completed, expired, dead-lettered, rejected), keyed by device id. */
  readonly feedbackStream: kinesis.Stream;
  /** Delivers queued messages and sweeps the ledger (lapsed locks, expiry, feedback repair). */
  readonly delivery: HubFunction;
  /** Applies device settlements to the ledger and answers the device. */
  readonly settlement: HubFunction;
  /** Starts the delivery function every minute. */
  readonly schedule: events.Rule;
  /** Device connected events → delivery. */
  readonly connectedRule: HubTopicRule;
  /** Device subscribed events → delivery. */
  readonly subscribedRule: HubTopicRule;
  /** Device settlement publishes → settlement. */
  readonly settleRule: HubTopicRule;

  constructor(scope: Construct, id: string, props: C2dMessagingProps) {
    super(scope, id);
    const settings = JSON.stringify(props.config.c2d);
    const ledgerIndexFinding = tableIndexFinding(props.ledger);

    this.feedbackStream = new kinesis.Stream(this, 'FeedbackStream', {
      encryption: kinesis.StreamEncryption.MANAGED,
      retentionPeriod: Duration.days(1),
      streamMode: kinesis.StreamMode.ON_DEMAND,
    });

    // Delivery: a one-minute schedule starts it; it sweeps every sweepIntervalMs until the next
    // start, so its timeout outlasts the minute and consecutive runs overlap a little.
    this.delivery = new HubFunction(this, 'Delivery', {
      entry: 'functions/c2d-delivery.ts',
      description: 'C2D delivery: publishes queued messages to devices and sweeps the ledger',
      timeout: Duration.seconds(75),
      environment: { [C2D_ENV.settings]: settings },
    })
      .bindTableReadWrite(C2D_ENV.ledgerTable, props.ledger)
      .bindTableRead(C2D_ENV.registryTable, props.registry)
      .bindStreamWrite(C2D_ENV.feedbackStream, this.feedbackStream)
      .grantPublish(DEVICEBOUND_TOPIC_PATTERN);
    Validations.of(this.delivery).acknowledge(
      { id: topicWildcardFinding(DEVICEBOUND_TOPIC_PATTERN), reason: DEVICEBOUND_REASON },
      { id: ledgerIndexFinding, reason: LEDGER_INDEX_REASON },
      {
        id: 'Serverless-LambdaDLQ',
        reason:
          'Its events (schedule ticks, connect and subscribe events) carry no message: every C2D message ' +
          'is durable in the ledger, and the next scheduled run picks up what a failed run left',
      },
    );

    this.schedule = new events.Rule(this, 'DeliverySchedule', {
      description: 'Starts the C2D delivery sweep every minute',
      schedule: events.Schedule.rate(Duration.minutes(1)),
      // A tick older than a minute is superseded by the next one.
      targets: [
        new targets.LambdaFunction(this.delivery.function, {
          retryAttempts: 2,
          maxEventAge: Duration.minutes(1),
        }),
      ],
    });
    Validations.of(this.schedule).acknowledge({
      id: 'Serverless-EventBusDLQ',
      reason: 'A schedule tick carries no data; a tick that cannot be delivered is replaced by the next one',
    });

    this.connectedRule = new HubTopicRule(this, 'ConnectedRule', {
      description: 'Device connected events start a C2D delivery to that device',
      sql: CONNECTED_EVENTS_SQL,
      actions: [new LambdaInvokeAction(this.delivery.function)],
      errorAction: lifecycleErrorAction(props.deadLetters),
    });
    this.subscribedRule = new HubTopicRule(this, 'SubscribedRule', {
      description: 'Device subscribe events start a C2D delivery to that device',
      sql: SUBSCRIBED_EVENTS_SQL,
      actions: [new LambdaInvokeAction(this.delivery.function)],
      errorAction: lifecycleErrorAction(props.deadLetters),
    });

    // Settlement: moves the message in the ledger, answers the device, delivers the next message.
    this.settlement = new HubFunction(this, 'Settlement', {
      entry: 'functions/c2d-settlement.ts',
      description: 'C2D settlement: complete / reject / abandon from devices into the ledger',
      environment: { [C2D_ENV.settings]: settings },
    })
      .bindTableReadWrite(C2D_ENV.ledgerTable, props.ledger)
      .bindStreamWrite(C2D_ENV.feedbackStream, this.feedbackStream)
      .grantPublish(DEVICEBOUND_TOPIC_PATTERN, SETTLE_RESPONSE_TOPIC_PATTERN);
    Validations.of(this.settlement).acknowledge(
      { id: topicWildcardFinding(DEVICEBOUND_TOPIC_PATTERN), reason: DEVICEBOUND_REASON },
      {
        id: topicWildcardFinding(SETTLE_RESPONSE_TOPIC_PATTERN),
        reason:
          'Settlement answers go to devices/{deviceId}/messages/settle/res/{status}/{lockToken}: device ids ' +
          'and lock tokens are not known at deploy time',
      },
      { id: ledgerIndexFinding, reason: LEDGER_INDEX_REASON },
      {
        id: 'Serverless-LambdaDLQ',
        reason:
          'Invoked by the settlement rule; a settlement lost to a failed run leaves the message locked ' +
          'until its lock lapses, then it is delivered again (at least once)',
      },
    );
    this.settleRule = new HubTopicRule(this, 'SettleRule', {
      description: 'Device C2D settlements (complete / reject / abandon) into the ledger',
      sql: SETTLE_RULE_SQL,
      actions: [new LambdaInvokeAction(this.settlement.function)],
      errorAction: new DynamoPutAction(props.deadLetters, {
        hashKeyValue: 'dl#${clientid()}',
        rangeKeyValue: 'rule-error#${newuuid()}',
        payloadField: 'ruleError',
      }),
    });

    // The service API enqueues, purges and reads feedback, and delivers right after a send.
    const api = props.serviceApi;
    api.function.addEnvironment(C2D_ENV.settings, settings);
    api
      .bindTableReadWrite(C2D_ENV.ledgerTable, props.ledger)
      .bindStreamWrite(C2D_ENV.feedbackStream, this.feedbackStream)
      .grantPublish(DEVICEBOUND_TOPIC_PATTERN);
    Validations.of(api).acknowledge(
      { id: topicWildcardFinding(DEVICEBOUND_TOPIC_PATTERN), reason: DEVICEBOUND_REASON },
      { id: ledgerIndexFinding, reason: LEDGER_INDEX_REASON },
    );
  }
}

/**
 * Error action of the lifecycle rules: the event into the dead-letter table under the device's
 * key. Their topics are `$aws/events/{presence|subscriptions}/{connected|subscribed}/{clientId}`.
 */
function lifecycleErrorAction(deadLetters: dynamodb.ITable): DynamoPutAction {
  return new DynamoPutAction(deadLetters, {
    hashKeyValue: 'dl#${topic(5)}',
    rangeKeyValue: 'rule-error#${newuuid()}',
    payloadField: 'ruleError',
  });
}
