import { Arn, CfnOutput, Stack, Validations } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as iot from 'aws-cdk-lib/aws-iot';
import { Construct } from 'constructs';
import { DEVICE_POLICY_ENV, thingPolicyDocument } from '../functions/core/identity/x509-provisioning.ts';
import { HubFunction } from './hub-function.ts';
import { DynamoPutAction, HubTopicRule, LambdaInvokeAction } from './topic-rule.ts';

/** Props of {@link X509Provisioning}. */
export interface X509ProvisioningProps {
  /** The identity registry table (devices and CA certificates). */
  readonly registry: dynamodb.ITable;
  /** The service API, which provisions devices and CAs in IoT Core as the registry changes. */
  readonly serviceApi: HubFunction;
  /** Where registration events that cannot be delivered to the registration function go. */
  readonly deadLetters: dynamodb.ITable;
  /**
   * The ingest rule's name when Basic Ingest is on: the device policy then lets a device publish its
   * telemetry behind that rule's Basic Ingest prefix too.
   * @default no Basic Ingest permission
   */
  readonly basicIngestRuleName?: string;
}

/**
 * X.509 devices in IoT Core:
 *
 * - ONE device policy (`DevicePolicy`) for every device certificate, written with
 *   `${iot:Connection.Thing.ThingName}` and `iot:Connection.Thing.IsAttached` (see `thingPolicyDocument`),
 *   so a certificate opens only its own thing's client id and topics;
 * - the service API provisions per device: a thing named by the device id, the certificate registered
 *   without a CA (`selfSigned` devices given with their PEM), attached to the thing, with the policy; it
 *   deactivates certificates of disabled devices, removes them with the device, and registers verified CAs
 *   (`SNI_ONLY`, auto-registration on). Its grants name `thing/*`, `cert/*`, `cacert/*` and the policy, and only
 *   the actions it calls; registering a certificate or CA has no resource type in IAM, so those two are on `*`;
 * - CA-signed devices register just in time: IoT Core registers a certificate issued by a registered CA on its
 *   first connect and publishes `$aws/events/certificates/registered/{caId}`; a rule hands that to the
 *   registration function, which attaches and activates the certificate when the registry has a
 *   `certificateAuthority` device named by its CN (chosen over JITP, whose template would provision any CN
 *   without looking at the registry).
 */
const wildcard = (resource: string) =>
  `Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:${resource}/*`;

export class X509Provisioning extends Construct {
  /** The shared device policy. */
  readonly devicePolicy: iot.CfnPolicy;
  /** The just-in-time registration function. */
  readonly registration: HubFunction;

  constructor(scope: Construct, id: string, props: X509ProvisioningProps) {
    super(scope, id);
    const stack = Stack.of(this);
    this.devicePolicy = new iot.CfnPolicy(this, 'DevicePolicy', {
      policyDocument: thingPolicyDocument({
        partition: stack.partition,
        region: stack.region,
        account: stack.account,
        ...(props.basicIngestRuleName === undefined ? {} : { basicIngestRule: props.basicIngestRuleName }),
      }),
    });
    const policyArn = Arn.format(
      { service: 'iot', resource: 'policy', resourceName: this.devicePolicy.ref },
      stack,
    );
    const arn = (resource: string) => Arn.format({ service: 'iot', resource, resourceName: '*' }, stack);
    const things = arn('thing');
    const certs = arn('cert');
    const cas = arn('cacert');

    this.grantDeviceProvisioning(props.serviceApi);
    // The service API also mirrors verified CAs into IoT Core.
    const api = props.serviceApi.function;
    api.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'X509CaCertificates',
        actions: ['iot:UpdateCACertificate', 'iot:DeleteCACertificate'],
        resources: [cas],
      }),
    );
    api.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'X509RegisterCa',
        actions: ['iot:RegisterCACertificate', 'iot:ListCertificatesByCA'],
        resources: ['*'],
      }),
    );
    Validations.of(props.serviceApi).acknowledge({
      id: `AwsSolutions-IAM5[${wildcard('cacert')}]`,
      reason: 'CA certificate ids are the hashes of CAs verified at run time',
    });

    this.registration = new HubFunction(this, 'Registration', {
      entry: 'functions/certificate-registration.ts',
      description:
        'Just-in-time registration of CA-signed device certificates (checked against the registry)',
      environment: { [DEVICE_POLICY_ENV]: this.devicePolicy.ref },
    }).bindTableRead('REGISTRY_TABLE_NAME', props.registry);
    const fn = this.registration.function;
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'JitrThings',
        actions: ['iot:CreateThing', 'iot:AttachThingPrincipal'],
        resources: [things],
      }),
    );
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'JitrCertificates',
        actions: ['iot:DescribeCertificate', 'iot:UpdateCertificate', 'iot:DeleteCertificate'],
        resources: [certs],
      }),
    );
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'JitrPolicy',
        actions: ['iot:AttachPolicy'],
        resources: [certs, policyArn],
      }),
    );
    new HubTopicRule(this, 'RegisteredRule', {
      description: 'Certificates IoT Core registered just in time, to the registration function',
      sql: "SELECT * FROM '$aws/events/certificates/registered/+'",
      actions: [new LambdaInvokeAction(fn)],
      errorAction: new DynamoPutAction(props.deadLetters, {
        hashKeyValue: 'dl#certificate-registration',
        rangeKeyValue: 'rule-error#${newuuid()}',
        payloadField: 'ruleError',
      }),
    });

    Validations.of(this.registration).acknowledge(
      {
        id: `AwsSolutions-IAM5[${wildcard('thing')}]`,
        reason: 'Things are named by the CN of certificates that register at run time',
      },
      {
        id: `AwsSolutions-IAM5[${wildcard('cert')}]`,
        reason: 'Certificate ids are the hashes of device certificates registered at run time',
      },
      {
        id: 'Serverless-LambdaDLQ',
        reason:
          'Invoked asynchronously by an IoT rule that has an error action; a certificate left pending re-registers',
      },
    );
    new CfnOutput(stack, 'DevicePolicyName', { value: this.devicePolicy.ref });
  }

  /**
   * Lets a function provision X.509 devices in IoT Core (what `x509FromEnv` does when it finds the policy
   * name): the device policy's name in its environment, and things, certificates and the policy's
   * attachments, scoped to `thing/*`, `cert/*` and the one policy. The service API has it; so does any
   * other writer of the registry (registry import jobs), or the devices it writes could not connect.
   */
  grantDeviceProvisioning(target: HubFunction): void {
    const stack = Stack.of(this);
    const arn = (resource: string) => Arn.format({ service: 'iot', resource, resourceName: '*' }, stack);
    const policyArn = Arn.format(
      { service: 'iot', resource: 'policy', resourceName: this.devicePolicy.ref },
      stack,
    );
    const fn = target.function;
    fn.addEnvironment(DEVICE_POLICY_ENV, this.devicePolicy.ref);
    for (const statement of [
      new iam.PolicyStatement({
        sid: 'X509Things',
        actions: [
          'iot:CreateThing',
          'iot:DeleteThing',
          'iot:ListThingPrincipals',
          'iot:AttachThingPrincipal',
          'iot:DetachThingPrincipal',
        ],
        resources: [arn('thing')],
      }),
      new iam.PolicyStatement({
        sid: 'X509Certificates',
        actions: ['iot:DescribeCertificate', 'iot:UpdateCertificate', 'iot:DeleteCertificate'],
        resources: [arn('cert')],
      }),
      new iam.PolicyStatement({
        sid: 'X509DevicePolicy',
        actions: ['iot:AttachPolicy', 'iot:DetachPolicy'],
        resources: [arn('cert'), policyArn],
      }),
      new iam.PolicyStatement({
        sid: 'X509Register',
        actions: ['iot:RegisterCertificateWithoutCA'],
        resources: ['*'],
      }),
    ]) {
      fn.addToRolePolicy(statement);
    }
    Validations.of(target).acknowledge(
      {
        id: `AwsSolutions-IAM5[${wildcard('thing')}]`,
        reason: 'Things are named by device ids, which are created at run time; any device of this hub',
      },
      {
        id: `AwsSolutions-IAM5[${wildcard('cert')}]`,
        reason: 'Certificate ids are the hashes of device certificates registered at run time',
      },
      {
        id: 'AwsSolutions-IAM5[Resource::*]',
        reason:
          'RegisterCertificateWithoutCA, RegisterCACertificate and ListCertificatesByCA have no IAM resource type; X-Ray also needs *',
      },
    );
  }
}
