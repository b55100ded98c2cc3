import { RemovalPolicy } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import { Construct } from 'constructs';

/** Props of {@link HubTable}. */
export interface HubTableProps {
  /** Secondary indexes, each with string keys `{name}pk` / `{name}sk`. @default none */
  readonly indexes?: readonly string[];
  /** What the secondary indexes hold besides their keys. @default all attributes */
  readonly indexProjection?: dynamodb.ProjectionType;
  /**
   * The TTL attribute (epoch seconds). Tables whose items use `expiresAt` for something else name
   * another one (the C2D ledger's `expiresAt` is a message's expiry in milliseconds). @default 'expiresAt'
   */
  readonly timeToLiveAttribute?: string;
}

/**
 * A hub DynamoDB table: generic string keys `pk`/`sk` so one table holds several item types,
 * on-demand, point-in-time recovery, TTL on `expiresAt` (or the given attribute), retained on stack deletion.
 * Construct ids of these tables are a contract: renaming one replaces the table.
 */
export class HubTable extends Construct {
  readonly table: dynamodb.Table;

  constructor(scope: Construct, id: string, props: HubTableProps = {}) {
    super(scope, id);
    this.table = new dynamodb.Table(this, 'Table', {
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      timeToLiveAttribute: props.timeToLiveAttribute ?? 'expiresAt',
      removalPolicy: RemovalPolicy.RETAIN,
    });
    for (const name of props.indexes ?? []) {
      this.table.addGlobalSecondaryIndex({
        indexName: name,
        partitionKey: { name: `${name}pk`, type: dynamodb.AttributeType.STRING },
        sortKey: { name: `${name}sk`, type: dynamodb.AttributeType.STRING },
        projectionType: props.indexProjection ?? dynamodb.ProjectionType.ALL,
      });
    }
  }
}
