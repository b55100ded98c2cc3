import { Match, type Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { DEVICE_POLICY_ENV } from '../../functions/core/identity/x509-provisioning.ts';
import type { HubStack } from '../../lib/hub-stack.ts';
import { logicalId, synthHub } from './hub-template.ts';

let stack: HubStack;
let template: Template;
let policyId: string;

beforeAll(() => {
  ({ stack, template } = synthHub());
  policyId = logicalId(stack.x509.devicePolicy);
});

/** Every statement of the IAM policies attached to a function's role. */
function statementsOf(
  functionLogicalId: string,
): { Action: string | string[]; Resource: unknown; Sid?: string }[] {
  const fn = template.findResources('AWS::Lambda::Function')[functionLogicalId];
  const role = (fn?.Properties?.Role as { 'Fn::GetAtt'?: [string, string] } | undefined)?.['Fn::GetAtt']?.[0];
  if (role === undefined) throw new Error(`function ${functionLogicalId} has no role`);
  return Object.values(template.findResources('AWS::IAM::Policy'))
    .filter((p) => JSON.stringify(p.Properties.Roles).includes(role))
    .flatMap((p) => p.Properties.PolicyDocument.Statement);
}

const iotActions = (statements: ReturnType<typeof statementsOf>) =>
  statements.flatMap((s) => [s.Action].flat()).filter((a) => a.startsWith('iot:'));

describe('the registry import worker', () => {
  it('provisions imported X.509 devices: the policy name and the device (not CA) provisioning actions', () => {
    const worker = logicalId(stack.registryJobs.worker.function);
    const variables =
      template.findResources('AWS::Lambda::Function')[worker]?.Properties?.Environment?.Variables;
    expect(variables?.[DEVICE_POLICY_ENV]).toEqual({ Ref: policyId });
    const actions = iotActions(statementsOf(worker));
    expect(actions).toEqual(
      expect.arrayContaining(['iot:CreateThing', 'iot:RegisterCertificateWithoutCA', 'iot:AttachPolicy']),
    );
    expect(actions).not.toContain('iot:RegisterCACertificate');
    expect(actions).not.toContain('iot:DeleteCACertificate');
  });
});

describe('the shared device policy', () => {
  it('is one IoT policy, written with the thing-name variable and IsAttached on every statement', () => {
    const policies = template.findResources('AWS::IoT::Policy');
    expect(Object.keys(policies)).toEqual([policyId]);
    const text = JSON.stringify(policies[policyId]?.Properties.PolicyDocument);
    expect(text).toContain('${iot:Connection.Thing.ThingName}');
    const statements = policies[policyId]?.Properties.PolicyDocument.Statement as { Condition: unknown }[];
    for (const statement of statements) {
      expect(statement.Condition).toEqual({ Bool: { 'iot:Connection.Thing.IsAttached': 'true' } });
    }
    expect(text).not.toMatch(/"iot:\*"/);
    expect(text).not.toContain('$aws/rules');
  });

  it('names the ingest rule when Basic Ingest is on', () => {
    const on = synthHub({ basicIngest: true });
    const doc = JSON.stringify(
      on.template.findResources('AWS::IoT::Policy')[logicalId(on.stack.x509.devicePolicy)]?.Properties,
    );
    expect(doc).toContain('$aws/rules/');
    expect(doc).toContain(logicalId(on.stack.d2c.rule.rule));
  });

  it('reaches the service API and the registration function by name (its Ref)', () => {
    const functions = template.findResources('AWS::Lambda::Function');
    for (const fn of [stack.identity.serviceApi.function, stack.x509.registration.function]) {
      const variables = functions[logicalId(fn)]?.Properties?.Environment?.Variables;
      expect(variables?.[DEVICE_POLICY_ENV]).toEqual({ Ref: policyId });
    }
    template.hasOutput('DevicePolicyName', { Value: { Ref: policyId } });
  });
});

describe('IAM of X.509 provisioning', () => {
  it('gives the service API only the IoT actions it calls, none of them a wildcard', () => {
    const actions = iotActions(statementsOf(logicalId(stack.identity.serviceApi.function)));
    for (const action of [
      'iot:CreateThing',
      'iot:DeleteThing',
      'iot:ListThingPrincipals',
      'iot:AttachThingPrincipal',
      'iot:DetachThingPrincipal',
      'iot:DescribeCertificate',
      'iot:UpdateCertificate',
      'iot:DeleteCertificate',
      'iot:AttachPolicy',
      'iot:DetachPolicy',
      'iot:RegisterCertificateWithoutCA',
      'iot:RegisterCACertificate',
      'iot:UpdateCACertificate',
      'iot:DeleteCACertificate',
      'iot:ListCertificatesByCA',
    ]) {
      expect(actions).toContain(action);
    }
    expect(actions.filter((a) => a.includes('*'))).toEqual([]);
  });

  it('scopes each statement to thing/*, cert/*, cacert/* or the one policy; * only where IAM has no resource type', () => {
    const statements = statementsOf(logicalId(stack.identity.serviceApi.function)).filter((s) =>
      s.Sid?.startsWith('X509'),
    );
    const bySid = Object.fromEntries(statements.map((s) => [s.Sid, JSON.stringify(s.Resource)]));
    expect(bySid.X509Things).toContain(':thing/*');
    expect(bySid.X509Certificates).toContain(':cert/*');
    expect(bySid.X509CaCertificates).toContain(':cacert/*');
    expect(bySid.X509DevicePolicy).toContain(':policy/');
    expect(bySid.X509DevicePolicy).toContain(policyId);
    expect(JSON.parse(bySid.X509Register ?? '""')).toBe('*');
    for (const sid of ['X509Things', 'X509Certificates', 'X509CaCertificates', 'X509DevicePolicy']) {
      expect(bySid[sid]).not.toBe('"*"');
    }
  });

  it('gives the registration function only what just-in-time registration needs', () => {
    const statements = statementsOf(logicalId(stack.x509.registration.function));
    expect(iotActions(statements).sort()).toEqual(
      [
        'iot:AttachPolicy',
        'iot:AttachThingPrincipal',
        'iot:CreateThing',
        'iot:DeleteCertificate',
        'iot:DescribeCertificate',
        'iot:UpdateCertificate',
      ].sort(),
    );
    const resources = JSON.stringify(
      statements.filter((s) => s.Sid?.startsWith('Jitr')).map((s) => s.Resource),
    );
    expect(resources).not.toContain('"*"');
  });

  it('hands certificates IoT Core registered just in time to the registration function', () => {
    const registration = logicalId(stack.x509.registration.function);
    template.hasResourceProperties('AWS::IoT::TopicRule', {
      TopicRulePayload: Match.objectLike({
        Sql: "SELECT * FROM '$aws/events/certificates/registered/+'",
        Actions: [{ Lambda: { FunctionArn: { 'Fn::GetAtt': [registration, 'Arn'] } } }],
        ErrorAction: Match.objectLike({ DynamoDB: Match.anyValue() }),
      }),
    });
  });
});
