import { Arn, CfnOutput, Duration, Stack, Validations } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as iot from 'aws-cdk-lib/aws-iot';
import type * as kinesis from 'aws-cdk-lib/aws-kinesis';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { Construct } from 'constructs';
import type { HubConfig } from './config.ts';
import { grantLifecycleWrite } from './event-sources.ts';
import { HubFunction } from './hub-function.ts';
import { DynamoPutAction, HubTopicRule, LambdaInvokeAction } from './topic-rule.ts';

/** Props of {@link Identity}. */
export interface IdentityProps {
  readonly config: HubConfig;
  /** The identity registry table. */
  readonly registry: dynamodb.ITable;
  /** Where presence events that cannot be delivered go. */
  readonly deadLetters: dynamodb.ITable;
  /** The D2C ingest stream, where the service API puts device lifecycle events (write only). */
  readonly ingestStream: kinesis.IStream;
}

/**
 * Device identities and the service API: the registry behind an IAM-authenticated Function URL,
 * the IoT Core custom authorizer that checks SAS tokens against the registry and returns a
 * per-device policy, and the presence rule that keeps connection state in the registry.
 */
export class Identity extends Construct {
  readonly serviceApi: HubFunction;
  readonly serviceApiUrl: lambda.FunctionUrl;
  readonly authorizerFunction: HubFunction;
  readonly authorizer: iot.CfnAuthorizer;
  readonly connectionState: HubFunction;

  constructor(scope: Construct, id: string, props: IdentityProps) {
    super(scope, id);
    const { config } = props;
    const stack = Stack.of(this);

    this.serviceApi = new HubFunction(this, 'ServiceApi', {
      entry: 'functions/service-api.ts',
      description: 'Service API: registry, twins and C2D send / purge / feedback (IoT Hub REST resources)',
      environment: { HUB_HOSTNAME: config.hostName },
    }).bindTableReadWrite('REGISTRY_TABLE_NAME', props.registry);
    grantLifecycleWrite(this.serviceApi, props.ingestStream);
    // Disabling or deleting a device closes its live connection.
    const anyClient = Arn.format({ service: 'iot', resource: 'client', resourceName: '*' }, stack);
    this.serviceApi.function.addToRolePolicy(
      new iam.PolicyStatement({ actions: ['iot:DeleteConnection'], resources: [anyClient] }),
    );
    Validations.of(this.serviceApi).acknowledge(
      {
        id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:client/*]`,
        reason:
          'The service API may disconnect any device of this hub (DeleteConnection on client/{deviceId})',
      },
      {
        id: 'Serverless-LambdaDLQ',
        reason: 'Invoked synchronously through its Function URL; errors go to the caller',
      },
    );
    // Deleting a device clears the retained messages on its topics: IoT Core lists retained messages only
    // account-wide (ListRetainedMessages has no resource-level permission), and an empty retained publish
    // on the device's own topics deletes each one.
    this.serviceApi.function.addToRolePolicy(
      new iam.PolicyStatement({ actions: ['iot:ListRetainedMessages'], resources: ['*'] }),
    );
    this.serviceApi.grantPublish('devices/*');
    this.serviceApi.function.addToRolePolicy(
      new iam.PolicyStatement({
        actions: ['iot:RetainPublish'],
        resources: [Arn.format({ service: 'iot', resource: 'topic', resourceName: 'devices/*' }, stack)],
      }),
    );
    Validations.of(this.serviceApi).acknowledge(
      {
        id: 'AwsSolutions-IAM5[Resource::*]',
        reason:
          'iot:ListRetainedMessages supports no resource-level permission (and X-Ray tracing adds PutTraceSegments on *)',
      },
      {
        id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:topic/devices/*]',
        reason:
          'A deleted device of any id has its retained messages cleared: publish on topic/devices/{deviceId}/...',
      },
    );
    // Twins: desired properties are written to, and deleted devices' shadows removed from, the classic
    // shadow of thing {deviceId}; any device of this hub, so thing/* (shadow actions take thing ARNs).
    const anyThing = Arn.format({ service: 'iot', resource: 'thing', resourceName: '*' }, stack);
    this.serviceApi.function.addToRolePolicy(
      new iam.PolicyStatement({
        actions: ['iot:GetThingShadow', 'iot:UpdateThingShadow', 'iot:DeleteThingShadow'],
        resources: [anyThing],
      }),
    );
    Validations.of(this.serviceApi).acknowledge({
      id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:thing/*]`,
      reason:
        'The service API reads and writes the twin (classic shadow) of any device of this hub: thing/{deviceId}',
    });
    this.serviceApiUrl = this.serviceApi.function.addFunctionUrl({
      authType: lambda.FunctionUrlAuthType.AWS_IAM,
    });

    this.authorizerFunction = new HubFunction(this, 'Authorizer', {
      entry: 'functions/authorizer.ts',
      description: 'IoT Core custom authorizer: SAS tokens checked against the registry',
      timeout: Duration.seconds(5),
      environment: { HUB_HOSTNAME: config.hostName },
    });
    this.authorizerFunction.function.addEnvironment('REGISTRY_TABLE_NAME', props.registry.tableName);
    props.registry.grantReadData(this.authorizerFunction.function);
    Validations.of(this.authorizerFunction).acknowledge({
      id: 'Serverless-LambdaDLQ',
      reason: 'Invoked synchronously by IoT Core at connect; a failure refuses the connection',
    });
    this.authorizer = new iot.CfnAuthorizer(this, 'DeviceAuthorizer', {
      authorizerFunctionArn: this.authorizerFunction.function.functionArn,
      // Devices send IoT Hub-style username/password, not a signed token header.
      signingDisabled: true,
      status: 'ACTIVE',
      enableCachingForHttp: false,
    });
    this.authorizerFunction.function.addPermission('InvokedByIotAuthorizer', {
      principal: new iam.ServicePrincipal('iot.amazonaws.com'),
      sourceArn: this.authorizer.attrArn,
    });

    this.connectionState = new HubFunction(this, 'ConnectionState', {
      entry: 'functions/connection-state.ts',
      description: 'Keeps device connection state in the registry from presence events',
    }).bindTableReadWrite('REGISTRY_TABLE_NAME', props.registry);
    Validations.of(this.connectionState.function).acknowledge({
      id: 'Serverless-LambdaDLQ',
      reason: 'A lost presence event is corrected by the next one; failures are logged',
    });
    new HubTopicRule(this, 'PresenceRule', {
      description: 'Device connect/disconnect events into the registry',
      sql: "SELECT * FROM '$aws/events/presence/+/+'",
      actions: [new LambdaInvokeAction(this.connectionState.function)],
      errorAction: new DynamoPutAction(props.deadLetters, {
        hashKeyValue: 'dl#presence',
        rangeKeyValue: 'rule-error#${newuuid()}',
        payloadField: 'ruleError',
      }),
    });

    new CfnOutput(stack, 'ServiceApiUrl', { value: this.serviceApiUrl.url });
    new CfnOutput(stack, 'DeviceAuthorizerName', { value: this.authorizer.ref });
  }
}
