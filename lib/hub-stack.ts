import { CfnOutput, Stack, type StackProps } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import type { Construct } from 'constructs';
import { BuiltInEndpoint } from './built-in-endpoint.ts';
import { C2dMessaging } from './c2d.ts';
import type { HubConfig } from './config.ts';
import { D2CPipeline } from './d2c-pipeline.ts';
import { CustomEndpoints } from './endpoints.ts';
import { Identity } from './identity.ts';
import { HubTable } from './tables.ts';

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
  readonly identity: Identity;
  readonly c2d: C2dMessaging;

  constructor(scope: Construct, id: string, props: HubStackProps) {
    super(scope, id, props);
    const { config } = props;
    this.builtInEndpoint = new BuiltInEndpoint(this, 'BuiltInEndpoint', { config: config.builtInEndpoint });
    // Stateful: each stream's construct id is its endpoint's name (renaming an endpoint replaces its stream).
    this.customEndpoints = new CustomEndpoints(this, 'CustomEndpoints', {
      endpoints: config.routing.endpoints,
    });
    // Stateful: these construct ids are a contract (renaming replaces the table).
    this.registry = new HubTable(this, 'Registry');
    // The ledger's due index (see ledgerTableDefinition in functions/adapters/ledger-dynamodb.ts)
    // is read for keys only.
    this.ledger = new HubTable(this, 'Ledger', {
      indexes: ['gsi1'],
      indexProjection: dynamodb.ProjectionType.KEYS_ONLY,
    });
    this.deadLetters = new HubTable(this, 'DeadLetters');
    this.d2c = new D2CPipeline(this, 'D2C', {
      config,
      builtInEndpoint: this.builtInEndpoint.stream,
      customEndpoints: this.customEndpoints.streams,
      deadLetters: this.deadLetters.table,
    });

    this.identity = new Identity(this, 'Identity', {
      config,
      registry: this.registry.table,
      deadLetters: this.deadLetters.table,
    });

    this.c2d = new C2dMessaging(this, 'C2D', {
      config,
      ledger: this.ledger.table,
      registry: this.registry.table,
      deadLetters: this.deadLetters.table,
      serviceApi: this.identity.serviceApi,
    });

    new CfnOutput(this, 'RegistryTableName', { value: this.registry.table.tableName });
    new CfnOutput(this, 'BuiltInEndpointStreamName', { value: this.builtInEndpoint.stream.streamName });
    // Every custom endpoint's stream, routed or not, as JSON `{ "<endpoint name>": "<stream name>" }`.
    new CfnOutput(this, 'CustomEndpointStreams', {
      value: this.toJsonString(
        Object.fromEntries(
          [...this.customEndpoints.streams].map(([name, stream]) => [name, stream.streamName]),
        ),
      ),
    });
    new CfnOutput(this, 'DeadLetterTableName', { value: this.deadLetters.table.tableName });
    new CfnOutput(this, 'LedgerTableName', { value: this.ledger.table.tableName });
    new CfnOutput(this, 'FeedbackStreamName', { value: this.c2d.feedbackStream.streamName });
  }
}
