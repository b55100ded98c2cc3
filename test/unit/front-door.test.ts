/**
 * The front door's reading of the template and of an authorizer's answer: bad input is refused with an
 * error naming what was wrong (IoT Core refuses the connection on an invalid answer).
 */
import { describe, expect, it } from 'vitest';
import {
  findCustomAuthorizer,
  mqttAuthorizerEvent,
  parseAuthorizerAnswer,
  policyTargetOfFunction,
} from '../../local/front-door.ts';
import type { CfnTemplate } from '../../local/template.ts';

const allowed = {
  isAuthenticated: true,
  principalId: 'abc123',
  disconnectAfterInSeconds: 3600,
  refreshAfterInSeconds: 300,
  policyDocuments: ['{"Version":"2012-10-17","Statement":[]}'],
};

function template(authorizers: Record<string, unknown>): CfnTemplate {
  return {
    Resources: {
      Fn: { Type: 'AWS::Lambda::Function' },
      Table: { Type: 'AWS::DynamoDB::Table' },
      ...Object.fromEntries(
        Object.entries(authorizers).map(([id, props]) => [
          id,
          { Type: 'AWS::IoT::Authorizer', Properties: props as Record<string, unknown> },
        ]),
      ),
    },
  };
}

describe('findCustomAuthorizer', () => {
  it('finds the function the active AWS::IoT::Authorizer invokes, skipping inactive ones', () => {
    const found = findCustomAuthorizer(
      template({
        Auth: { AuthorizerFunctionArn: { 'Fn::GetAtt': ['Fn', 'Arn'] }, Status: 'ACTIVE' },
        Old: { AuthorizerFunctionArn: { 'Fn::GetAtt': ['Fn', 'Arn'] }, Status: 'INACTIVE' },
      }),
    );
    expect(found).toEqual({ authorizerLogicalId: 'Auth', functionLogicalId: 'Fn' });
    expect(findCustomAuthorizer(template({}))).toBeUndefined();
  });

  it('names what is wrong: an ARN that is no function of the template, two active authorizers', () => {
    expect(() =>
      findCustomAuthorizer(template({ Auth: { AuthorizerFunctionArn: { 'Fn::GetAtt': ['Table', 'Arn'] } } })),
    ).toThrow(/custom authorizer Auth: AuthorizerFunctionArn must be Fn::GetAtt \[<function>, Arn\]/);
    expect(() =>
      findCustomAuthorizer(template({ Auth: { AuthorizerFunctionArn: 'arn:aws:lambda:x' } })),
    ).toThrow(/custom authorizer Auth/);
    const arn = { 'Fn::GetAtt': ['Fn', 'Arn'] };
    expect(() =>
      findCustomAuthorizer(
        template({ A: { AuthorizerFunctionArn: arn }, B: { AuthorizerFunctionArn: arn } }),
      ),
    ).toThrow(/one custom authorizer; the template has 2 active: A, B/);
  });
});

describe('parseAuthorizerAnswer', () => {
  it('takes a refusal and a complete answer', () => {
    expect(parseAuthorizerAnswer({ isAuthenticated: false })).toEqual({ isAuthenticated: false });
    expect(parseAuthorizerAnswer(allowed)).toEqual(allowed);
  });

  it.each([
    [null, /not an object/],
    [{}, /no boolean isAuthenticated/],
    [{ ...allowed, principalId: 'has-dash' }, /principalId must be 1-128 letters and digits/],
    [{ ...allowed, disconnectAfterInSeconds: 10 }, /disconnectAfterInSeconds must be an integer from 300/],
    [{ ...allowed, refreshAfterInSeconds: '300' }, /refreshAfterInSeconds must be an integer/],
    [{ ...allowed, policyDocuments: [] }, /policyDocuments, a non-empty list of JSON strings/],
    [{ ...allowed, policyDocuments: [{}] }, /policyDocuments, a non-empty list of JSON strings/],
  ])('refuses %j, naming the field', (answer, message) => {
    expect(() => parseAuthorizerAnswer(answer)).toThrow(message);
  });
});

describe('the authorizer event and the policy target', () => {
  it('sends the password base64-encoded, as IoT Core does, and the user name and client id as sent', () => {
    expect(
      mqttAuthorizerEvent({
        clientId: 'd1',
        username: 'localhost/d1/?api-version=2021-04-12',
        password: Buffer.from('SharedAccessSignature sr=x'),
        connectionId: 'c-1',
      }),
    ).toEqual({
      signatureVerified: false,
      protocols: ['mqtt'],
      protocolData: {
        mqtt: {
          clientId: 'd1',
          username: 'localhost/d1/?api-version=2021-04-12',
          password: Buffer.from('SharedAccessSignature sr=x').toString('base64'),
        },
      },
      connectionMetadata: { id: 'c-1' },
    });
  });

  it('takes partition, region and account from a function ARN, and names one that is not', () => {
    expect(policyTargetOfFunction('arn:aws:lambda:us-east-1:000000000000:function:hub-Auth')).toEqual({
      partition: 'aws',
      region: 'us-east-1',
      account: '000000000000',
    });
    expect(() => policyTargetOfFunction('hub-Auth')).toThrow("'hub-Auth' is not a Lambda function ARN");
  });
});
