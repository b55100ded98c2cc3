import { Duration } from 'aws-cdk-lib';
import * as kinesis from 'aws-cdk-lib/aws-kinesis';
import { Construct } from 'constructs';
import type { HubConfig } from './config.ts';

/** Props of {@link BuiltInEndpoint}. */
export interface BuiltInEndpointProps {
  /** Retention and capacity, from the hub configuration. */
  readonly config: HubConfig['builtInEndpoint'];
}

/**
 * The built-in endpoint: the Kinesis stream that plays IoT Hub's Event Hubs-compatible endpoint.
 * Records are D2C envelopes keyed by device id, so each device's messages stay in order on one
 * shard. Encrypted with the AWS-managed Kinesis key.
 */
export class BuiltInEndpoint extends Construct {
  readonly stream: kinesis.Stream;

  constructor(scope: Construct, id: string, props: BuiltInEndpointProps) {
    super(scope, id);
    const { retentionDays, mode, shardCount } = props.config;
    if (retentionDays < 1 || retentionDays > 365) {
      throw new Error(`built-in endpoint retention must be 1-365 days, got ${retentionDays}`);
    }
    this.stream = new kinesis.Stream(this, 'Stream', {
      encryption: kinesis.StreamEncryption.MANAGED,
      retentionPeriod: Duration.days(retentionDays),
      ...(mode === 'on-demand'
        ? { streamMode: kinesis.StreamMode.ON_DEMAND }
        : { streamMode: kinesis.StreamMode.PROVISIONED, shardCount: shardCount ?? 1 }),
    });
  }
}
