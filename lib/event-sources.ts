import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import type * as kinesis from 'aws-cdk-lib/aws-kinesis';
import { Construct } from 'constructs';
import { CONNECTION_STATE_KIND, SHADOW_DOCUMENTS_KIND } from '../functions/core/d2c/events.ts';
import type { HubFunction } from './hub-function.ts';
import { DynamoPutAction, HubTopicRule, KinesisPutAction } from './topic-rule.ts';

/** AWS IoT's connect/disconnect lifecycle events: `$aws/events/presence/{connected|disconnected}/{clientId}`. */
export const PRESENCE_TOPIC_FILTER = '$aws/events/presence/+/+';

/**
 * The connection state rule's SQL. Its output is `ConnectionStateRecordSchema` in
 * `functions/core/d2c/events.ts`: AWS IoT's presence event as it is (`clientId`, `timestamp`,
 * `eventType`, `versionNumber`, `sessionIdentifier`, `disconnectReason`, ...; the router reads what
 * it needs and ignores the rest) with the record's `kind`, the time the rule took it and an ingest id
 * stamped once, which every retry keeps.
 */
export function connectionStateSql(): string {
  return (
    `SELECT *, '${CONNECTION_STATE_KIND}' AS kind, timestamp() AS enqueuedTime, newuuid() AS ingestId ` +
    `FROM '${PRESENCE_TOPIC_FILTER}'`
  );
}

/**
 * The partition key of connection state records: the client id, the fifth level of the presence
 * topic, which the hub binds to the device id. The ingest rule keys telemetry by the device id and the
 * service API lifecycle records too, so a device's telemetry, connection and lifecycle events share a
 * shard and keep their order.
 */
export const CONNECTION_STATE_PARTITION_KEY = '${topic(5)}';

/**
 * The classic shadow's `update/documents` topic of every thing (the state before and after each accepted
 * update). Named shadows publish under `$aws/things/{thing}/shadow/name/{name}/...`, which this filter
 * does not match: twins are classic shadows.
 */
export const SHADOW_DOCUMENTS_TOPIC_FILTER = '$aws/things/+/shadow/update/documents';

/**
 * The shadow documents rule's SQL. Its output is `ShadowDocumentsRecordSchema` in
 * `functions/core/d2c/events.ts`: the documents message as it is (`previous`, `current`, `timestamp`,
 * ...) with the record's `kind`, the device id (the thing name, the topic's third level), the time the
 * rule took it and an ingest id stamped once, which every retry keeps.
 */
export function shadowDocumentsSql(): string {
  return (
    `SELECT *, '${SHADOW_DOCUMENTS_KIND}' AS kind, topic(3) AS deviceId, timestamp() AS enqueuedTime, ` +
    `newuuid() AS ingestId FROM '${SHADOW_DOCUMENTS_TOPIC_FILTER}'`
  );
}

/**
 * The partition key of shadow documents records: the thing name, which is the device id, so a device's
 * twin changes share a shard with its telemetry and other events and keep their order.
 */
export const SHADOW_DOCUMENTS_PARTITION_KEY = '${topic(3)}';

/** Props of {@link EventSources}. */
export interface EventSourcesProps {
  /** The D2C ingest stream, which the router reads. */
  readonly ingestStream: kinesis.IStream;
  /** Where presence events the rule cannot put on the stream go. */
  readonly deadLetters: dynamodb.ITable;
  /**
   * Whether a route takes twin change events: then a rule puts every classic shadow update on the ingest
   * stream. Off, no shadow update costs a rule action, a stream record or a router invocation.
   * @default false
   */
  readonly twinChangeEvents?: boolean;
}

/**
 * IoT Hub's non-telemetry route sources, fed into the D2C ingest stream next to telemetry:
 *
 * - `DeviceConnectionStateEvents`: an IoT rule on AWS IoT's presence events puts each one on the
 *   ingest stream as a connection state record (this construct);
 * - `DeviceLifecycleEvents`: the service API puts a lifecycle record there after each registry create
 *   or delete ({@link grantLifecycleWrite} gives it exactly that; `Identity` calls it);
 * - `TwinChangeEvents`: an IoT rule on the classic shadows' `update/documents` topic puts each shadow
 *   update there (desired and reported changes; this construct, when a route takes them), and the
 *   service API a twin change record after each tags write (the same grant as lifecycle records).
 *
 * The router builds IoT Hub's event envelopes from them and routes them by source
 * (`docs/routing.md`, "Route sources").
 */
export class EventSources extends Construct {
  readonly connectionStateRule: HubTopicRule;
  /** The shadow documents rule (`TwinChangeEvents`), when {@link EventSourcesProps.twinChangeEvents} is on. */
  readonly shadowDocumentsRule?: HubTopicRule;

  constructor(scope: Construct, id: string, props: EventSourcesProps) {
    super(scope, id);
    this.connectionStateRule = new HubTopicRule(this, 'ConnectionStateRule', {
      description: 'Device connect/disconnect events into the ingest stream (DeviceConnectionStateEvents)',
      sql: connectionStateSql(),
      actions: [new KinesisPutAction(props.ingestStream, { partitionKey: CONNECTION_STATE_PARTITION_KEY })],
      errorAction: new DynamoPutAction(props.deadLetters, {
        hashKeyValue: `dl#${CONNECTION_STATE_PARTITION_KEY}`,
        rangeKeyValue: 'rule-error#${newuuid()}',
        payloadField: 'ruleError',
      }),
    });
    if (props.twinChangeEvents === true) {
      this.shadowDocumentsRule = new HubTopicRule(this, 'ShadowDocumentsRule', {
        description: 'Classic shadow updates into the ingest stream (TwinChangeEvents)',
        sql: shadowDocumentsSql(),
        actions: [new KinesisPutAction(props.ingestStream, { partitionKey: SHADOW_DOCUMENTS_PARTITION_KEY })],
        errorAction: new DynamoPutAction(props.deadLetters, {
          hashKeyValue: `dl#${SHADOW_DOCUMENTS_PARTITION_KEY}`,
          rangeKeyValue: 'rule-error#${newuuid()}',
          payloadField: 'ruleError',
        }),
      });
    }
  }
}

/**
 * Lets `fn` (the service API) put lifecycle records on the ingest stream: `INGEST_STREAM_NAME` in its
 * environment and `kinesis:PutRecord`/`PutRecords` on that stream, nothing else (no reads, no
 * ListShards). A stream encrypted with the AWS-managed key needs no key grant; a customer key would get
 * encrypt only.
 */
export function grantLifecycleWrite(fn: HubFunction, ingestStream: kinesis.IStream): void {
  fn.function.addEnvironment('INGEST_STREAM_NAME', ingestStream.streamName);
  ingestStream.grant(fn.function, 'kinesis:PutRecord', 'kinesis:PutRecords');
  ingestStream.encryptionKey?.grantEncrypt(fn.function);
}
