import { Arn, Stack, Validations } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import type { HubFunction } from './hub-function.ts';

/**
 * Lets the router read device twins for `$twin` route conditions and enrichments
 * (`twinReaderFromEnv` in `functions/router.ts`): `REGISTRY_TABLE_NAME` in its environment,
 * `dynamodb:GetItem` on the registry table (the device item and its twin tags item) and
 * `iot:GetThingShadow` on the things of this account and region (the classic shadow of thing
 * `{deviceId}`), nothing else: no writes, no queries, no scans. The registry's AWS-managed encryption
 * needs no key grant.
 */
export function grantTwinReads(router: HubFunction, registry: dynamodb.ITable): void {
  router.function.addEnvironment('REGISTRY_TABLE_NAME', registry.tableName);
  registry.grant(router.function, 'dynamodb:GetItem');
  const anyThing = Arn.format({ service: 'iot', resource: 'thing', resourceName: '*' }, Stack.of(router));
  router.function.addToRolePolicy(
    new iam.PolicyStatement({ actions: ['iot:GetThingShadow'], resources: [anyThing] }),
  );
  Validations.of(router).acknowledge({
    id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:thing/*]`,
    reason:
      'The router reads the twin (classic shadow of thing {deviceId}) of whichever device sent the message; devices are registered at run time',
  });
}
