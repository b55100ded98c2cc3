import { CfnOutput, Stack, type StackProps } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import type { Construct } from 'constructs';
import { LEDGER_ACTIVE_INDEX, LEDGER_ACTIVE_KEY, LEDGER_TTL_ATTRIBUTE } from '../functions/core/c2d/keys.ts';
import { BASIC_INGEST_RULE_ENV } from '../functions/core/identity/topics.ts';
import { routesTwinChangeEvents } from '../functions/core/routing/config.ts';
import { BuiltInEndpoint } from './built-in-endpoint.ts';
import { C2dMessaging } from './c2d.ts';
import type { HubConfig } from './config.ts';
import { D2CPipeline } from './d2c-pipeline.ts';
import { CustomEndpoints } from './endpoints.ts';
import { EventSources } from './event-sources.ts';
import { Identity } from './identity.ts';
import { RegistryJobs } from './registry-jobs.ts';
import { HubTable } from './tables.ts';
import { X509Provisioning } from './x509-provisioning.ts';

/** Props of {@link HubStack}. */
export interface HubStackProps extends StackProps {
  /** Validated configuration (see `parseHubConfig`). */
  readonly config: HubConfig;
}

/** The whole hub in one stack. */
export class HubStack extends Stack {
  readonly builtInEndpoint: BuiltInEndpoint;
  readonly customEndpoints: CustomEndpoints;
  readonly registry: HubTable;
  readonly ledger: HubTable;
  readonly deadLetters: HubTable;
  readonly d2c: D2CPipeline;
  readonly eventSources: EventSources;
  readonly identity: Identity;
  readonly x509: X509Provisioning;
  readonly c2d: C2dMessaging;
  readonly registryJobs: RegistryJobs;

  constructor(scope: Construct, id: string, props: HubStackProps) {
    super(scope, id, props);
    const { config } = props;
    this.builtInEndpoint = new BuiltInEndpoint(this, 'BuiltInEndpoint', { config: config.builtInEndpoint });
    // Stateful: each endpoint's construct id is its name (renaming an endpoint replaces its resources).
    this.customEndpoints = new CustomEndpoints(this, 'CustomEndpoints', {
      endpoints: config.routing.endpoints,
    });
    // Stateful: these construct ids are a contract (renaming replaces the table).
    this.registry = new HubTable(this, 'Registry');
    // The ledger's due index (see ledgerTableDefinition in functions/adapters/ledger-dynamodb.ts)
    // is read for keys only. Final messages and message-id pointers expire by TTL on `retainUntil`
    // (LEDGER_TTL_ATTRIBUTE there; `expiresAt` is a message's expiry in milliseconds).
    this.ledger = new HubTable(this, 'Ledger', {
      indexes: ['gsi1'],
      indexProjection: dynamodb.ProjectionType.KEYS_ONLY,
      timeToLiveAttribute: LEDGER_TTL_ATTRIBUTE,
    });
    // Queue reads read only active messages: a sparse LSI (strongly consistent reads, unlike a GSI).
    this.ledger.table.addLocalSecondaryIndex({
      indexName: LEDGER_ACTIVE_INDEX,
      sortKey: { name: LEDGER_ACTIVE_KEY, type: dynamodb.AttributeType.STRING },
      projectionType: dynamodb.ProjectionType.ALL,
    });
    this.deadLetters = new HubTable(this, 'DeadLetters');
    this.d2c = new D2CPipeline(this, 'D2C', {
      config,
      builtInEndpoint: this.builtInEndpoint.stream,
      customEndpoints: this.customEndpoints.endpoints,
      deadLetters: this.deadLetters.table,
      // Read only when the routing reads `$twin`.
      registry: this.registry.table,
    });
    // Connection state, lifecycle and twin change events onto the ingest stream (route sources besides telemetry).
    this.eventSources = new EventSources(this, 'EventSources', {
      ingestStream: this.d2c.ingestStream,
      deadLetters: this.deadLetters.table,
      twinChangeEvents: routesTwinChangeEvents(config.routing),
    });

    this.identity = new Identity(this, 'Identity', {
      config,
      registry: this.registry.table,
      deadLetters: this.deadLetters.table,
      ingestStream: this.d2c.ingestStream,
    });
    if (config.basicIngest) {
      // Basic Ingest: the authorizer's policies name the ingest rule (its name is generated at deploy).
      this.identity.authorizerFunction.function.addEnvironment(BASIC_INGEST_RULE_ENV, this.d2c.rule.rule.ref);
    }
    // X.509 devices in IoT Core: the shared device policy, per-device provisioning, just-in-time registration.
    this.x509 = new X509Provisioning(this, 'X509', {
      registry: this.registry.table,
      serviceApi: this.identity.serviceApi,
      deadLetters: this.deadLetters.table,
      ...(config.basicIngest ? { basicIngestRuleName: this.d2c.rule.rule.ref } : {}),
    });

    this.c2d = new C2dMessaging(this, 'C2D', {
      config,
      ledger: this.ledger.table,
      registry: this.registry.table,
      deadLetters: this.deadLetters.table,
      serviceApi: this.identity.serviceApi,
    });
    // Registry import/export jobs through files in S3 (stateful: construct id `RegistryJobs`).
    this.registryJobs = new RegistryJobs(this, 'RegistryJobs', {
      config: config.registryJobs,
      registry: this.registry.table,
      serviceApi: this.identity.serviceApi,
      ingestStream: this.d2c.ingestStream,
    });
    // Imported X.509 devices are provisioned in IoT Core as devices created through the API are.
    this.x509.grantDeviceProvisioning(this.registryJobs.worker);

    new CfnOutput(this, 'RegistryTableName', { value: this.registry.table.tableName });
    new CfnOutput(this, 'BuiltInEndpointStreamName', { value: this.builtInEndpoint.stream.streamName });
    // Every custom endpoint, routed or not, as JSON `{ "<name>": { "type", "target", "arn" } }`. The
    // construct id `CustomEndpoints` is taken by the endpoints themselves; the output keeps the name.
    new CfnOutput(this, 'CustomEndpointsOutput', {
      value: this.customEndpoints.describe(),
    }).overrideLogicalId('CustomEndpoints');
    new CfnOutput(this, 'DeadLetterTableName', { value: this.deadLetters.table.tableName });
    new CfnOutput(this, 'LedgerTableName', { value: this.ledger.table.tableName });
    new CfnOutput(this, 'FeedbackStreamName', { value: this.c2d.feedbackStream.streamName });
  }
}
