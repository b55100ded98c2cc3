import { Stack } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as iot from 'aws-cdk-lib/aws-iot';
import type * as kinesis from 'aws-cdk-lib/aws-kinesis';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import { Construct } from 'constructs';

/** An IoT rule action that grants its own permissions on the rule's role when bound. */
export interface ITopicRuleAction {
  bind(role: iam.IRole): iot.CfnTopicRule.ActionProperty;
}

/** Props of {@link KinesisPutAction}. */
export interface KinesisPutActionProps {
  /** Substitution template for the partition key, e.g. `${clientid()}`. */
  readonly partitionKey: string;
}

/** Puts the rule's output on a Kinesis stream (PutRecord). */
export class KinesisPutAction implements ITopicRuleAction {
  constructor(
    private readonly stream: kinesis.IStream,
    private readonly props: KinesisPutActionProps,
  ) {}

  bind(role: iam.IRole): iot.CfnTopicRule.ActionProperty {
    this.stream.grant(role, 'kinesis:PutRecord');
    this.stream.encryptionKey?.grantEncrypt(role);
    return {
      kinesis: {
        streamName: this.stream.streamName,
        partitionKey: this.props.partitionKey,
        roleArn: role.roleArn,
      },
    };
  }
}

/** Props of {@link DynamoPutAction}. */
export interface DynamoPutActionProps {
  /** Template for the partition key value (attribute `pk`). */
  readonly hashKeyValue: string;
  /** Template for the sort key value (attribute `sk`). */
  readonly rangeKeyValue: string;
  /** Attribute that receives the whole rule output. */
  readonly payloadField: string;
}

/** Writes the rule output as one item of a `pk`/`sk` table (the IoT `dynamoDB` action). */
export class DynamoPutAction implements ITopicRuleAction {
  constructor(
    private readonly table: dynamodb.ITable,
    private readonly props: DynamoPutActionProps,
  ) {}

  bind(role: iam.IRole): iot.CfnTopicRule.ActionProperty {
    this.table.grant(role, 'dynamodb:PutItem');
    return {
      dynamoDb: {
        tableName: this.table.tableName,
        roleArn: role.roleArn,
        hashKeyField: 'pk',
        hashKeyType: 'STRING',
        hashKeyValue: this.props.hashKeyValue,
        rangeKeyField: 'sk',
        rangeKeyType: 'STRING',
        rangeKeyValue: this.props.rangeKeyValue,
        payloadField: this.props.payloadField,
      },
    };
  }
}

/**
 * Invokes a function asynchronously with the rule's output (the IoT `lambda` action). The
 * function's resource policy lets IoT rules of this account invoke it.
 */
export class LambdaInvokeAction implements ITopicRuleAction {
  private static readonly PERMISSION_ID = 'InvokedByIotRules';

  constructor(private readonly fn: lambda.IFunction) {}

  bind(_role: iam.IRole): iot.CfnTopicRule.ActionProperty {
    // One permission covers every rule of the account, so a function behind several rules has one.
    if (this.fn.node.tryFindChild(LambdaInvokeAction.PERMISSION_ID) === undefined) {
      this.fn.addPermission(LambdaInvokeAction.PERMISSION_ID, {
        principal: new iam.ServicePrincipal('iot.amazonaws.com'),
        sourceAccount: Stack.of(this.fn).account,
      });
    }
    return { lambda: { functionArn: this.fn.functionArn } };
  }
}

/** Props of {@link HubTopicRule}. */
export interface HubTopicRuleProps {
  /** The rule's IoT SQL (version 2016-03-23). */
  readonly sql: string;
  /** What the rule is for. */
  readonly description: string;
  /** At least one action. */
  readonly actions: readonly ITopicRuleAction[];
  /** Where a failed action's message goes instead of being dropped. */
  readonly errorAction: ITopicRuleAction;
}

/** An AWS IoT topic rule with one role that holds exactly what its actions need. */
export class HubTopicRule extends Construct {
  readonly rule: iot.CfnTopicRule;
  readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: HubTopicRuleProps) {
    super(scope, id);
    if (props.actions.length === 0) throw new Error(`topic rule ${id} needs at least one action`);
    if (!/^\s*select\s.+\sfrom\s+'[^']+'/is.test(props.sql)) {
      throw new Error(`topic rule ${id}: sql must be SELECT ... FROM '<topic filter>', got '${props.sql}'`);
    }
    this.role = new iam.Role(this, 'Role', {
      assumedBy: new iam.ServicePrincipal('iot.amazonaws.com'),
      description: `Actions of IoT rule ${id}`,
    });
    this.rule = new iot.CfnTopicRule(this, 'Rule', {
      topicRulePayload: {
        sql: props.sql,
        awsIotSqlVersion: '2016-03-23',
        description: props.description,
        ruleDisabled: false,
        actions: props.actions.map((a) => a.bind(this.role)),
        errorAction: props.errorAction.bind(this.role),
      },
    });
  }
}
