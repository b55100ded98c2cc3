import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../functions/core/errors.ts';
import { devicePolicyDocuments, escapePolicyValue } from '../../functions/core/identity/policy.ts';
import {
  clientArn,
  compilePolicies,
  type PolicyContext,
  resourceArnFor,
  topicArn,
  topicFilterArn,
} from '../../local/iot-policy.ts';

const target = { partition: 'aws', region: 'eu-west-1', account: '123456789012' };
const ARN = 'arn:aws:iot:eu-west-1:123456789012';

type Statement = Record<string, unknown>;
const doc = (...Statement: Statement[]) => ({ Version: '2012-10-17', Statement });
const allow = (Action: unknown, Resource: unknown, extra: Statement = {}): Statement => ({
  Effect: 'Allow',
  Action,
  Resource,
  ...extra,
});
const publish = (statements: Statement[], topic: string, context: PolicyContext = {}) =>
  compilePolicies([doc(...statements)]).authorize('iot:Publish', topicArn(target, topic), context);

describe('ARN helpers', () => {
  it('name the resource kind IoT Core checks for each action', () => {
    expect(clientArn(target, 'd1')).toBe(`${ARN}:client/d1`);
    expect(topicArn(target, 'a/b')).toBe(`${ARN}:topic/a/b`);
    expect(topicFilterArn(target, 'a/#')).toBe(`${ARN}:topicfilter/a/#`);
    expect(resourceArnFor('iot:Connect', target, 'd1')).toBe(`${ARN}:client/d1`);
    expect(resourceArnFor('iot:Publish', target, 'a')).toBe(`${ARN}:topic/a`);
    expect(resourceArnFor('iot:Receive', target, 'a')).toBe(`${ARN}:topic/a`);
    expect(resourceArnFor('iot:Subscribe', target, 'a/+')).toBe(`${ARN}:topicfilter/a/+`);
  });
});

describe('resource wildcards', () => {
  it('`*` matches any run of characters, `/` and the empty run included', () => {
    const s = [allow('iot:Publish', `${ARN}:topic/devices/d1/*`)];
    expect(publish(s, 'devices/d1/messages/events/a/b').allowed).toBe(true);
    expect(publish(s, 'devices/d1/').allowed).toBe(true);
    expect(publish(s, 'devices/d1').allowed).toBe(false);
    expect(publish(s, 'devices/d2/x').allowed).toBe(false);
  });

  it('`?` matches exactly one character', () => {
    const s = [allow('iot:Publish', `${ARN}:topic/t?`)];
    expect(publish(s, 'tx').allowed).toBe(true);
    expect(publish(s, 't').allowed).toBe(false);
    expect(publish(s, 'txy').allowed).toBe(false);
  });

  it('is case-sensitive and treats regular-expression characters as text', () => {
    const s = [allow('iot:Publish', `${ARN}:topic/a.b(c)`)];
    expect(publish(s, 'a.b(c)').allowed).toBe(true);
    expect(publish(s, 'axb(c)').allowed).toBe(false);
    expect(publish(s, 'A.b(c)').allowed).toBe(false);
  });

  it('treats MQTT `+` and `#` as plain characters: `*` covers a filter, `+` in a policy matches only `+`', () => {
    const policy = compilePolicies([
      doc(allow('iot:Subscribe', [`${ARN}:topicfilter/devices/d1/*`, `${ARN}:topicfilter/x/+`])),
    ]);
    const sub = (filter: string) =>
      policy.authorize('iot:Subscribe', topicFilterArn(target, filter), {}).allowed;
    expect(sub('devices/d1/#')).toBe(true);
    expect(sub('devices/+/messages/devicebound/#')).toBe(false);
    expect(sub('x/+')).toBe(true);
    expect(sub('x/y')).toBe(false);
  });

  it('takes a single Resource string or a list', () => {
    const s = [allow('iot:Publish', [`${ARN}:topic/a`, `${ARN}:topic/b`])];
    expect(publish(s, 'b').allowed).toBe(true);
    expect(publish(s, 'c').allowed).toBe(false);
  });
});

describe('actions', () => {
  it('match by name, case-insensitively, with `iot:*` and `*` wildcards', () => {
    const resource = `${ARN}:topic/t`;
    expect(publish([allow('iot:*', resource)], 't').allowed).toBe(true);
    expect(publish([allow('*', resource)], 't').allowed).toBe(true);
    expect(publish([allow('IOT:publish', resource)], 't').allowed).toBe(true);
    expect(publish([allow(['iot:Subscribe', 'iot:Receive'], resource)], 't').allowed).toBe(false);
    expect(publish([allow('iot:Pub*', resource)], 't').allowed).toBe(true);
  });

  it('NotAction applies to every action it does not name', () => {
    const s = [{ Effect: 'Allow', NotAction: 'iot:Subscribe', Resource: '*' }];
    const policy = compilePolicies([doc(...s)]);
    expect(policy.authorize('iot:Publish', topicArn(target, 't'), {}).allowed).toBe(true);
    expect(policy.authorize('iot:Subscribe', topicFilterArn(target, 't'), {}).allowed).toBe(false);
  });

  it('NotResource applies to every resource it does not name', () => {
    const s = [{ Effect: 'Allow', Action: 'iot:Publish', NotResource: `${ARN}:topic/secret/*` }];
    expect(publish(s, 'open/x').allowed).toBe(true);
    expect(publish(s, 'secret/x').allowed).toBe(false);
  });
});

describe('deny and allow', () => {
  it('denies by default, naming the action and resource', () => {
    const decision = publish([], 'any');
    expect(decision).toEqual({
      allowed: false,
      reason: `no statement allows iot:Publish on '${ARN}:topic/any'`,
    });
  });

  it('an explicit Deny wins over an Allow, in any order and any document, and the reason names it', () => {
    const denyStatement = {
      Sid: 'NoSecrets',
      Effect: 'Deny',
      Action: 'iot:*',
      Resource: `${ARN}:topic/secret/*`,
    };
    const policy = compilePolicies([doc(allow('iot:Publish', `${ARN}:topic/*`)), doc(denyStatement)]);
    const denied = policy.authorize('iot:Publish', topicArn(target, 'secret/x'), {});
    expect(denied.allowed).toBe(false);
    expect(denied.reason).toContain("denied by document 2, statement 1 (Sid 'NoSecrets')");
    const allowed = policy.authorize('iot:Publish', topicArn(target, 'open/x'), {});
    expect(allowed).toEqual({
      allowed: true,
      reason: `iot:Publish on '${ARN}:topic/open/x' allowed by document 1, statement 1`,
    });
  });
});

describe('policy variables', () => {
  const own = [allow('iot:Publish', `${ARN}:topic/devices/\${iot:ClientId}/*`)];

  it('substitutes the context: `${iot:ClientId}`', () => {
    expect(publish(own, 'devices/d1/x', { clientId: 'd1' }).allowed).toBe(true);
    expect(publish(own, 'devices/d2/x', { clientId: 'd1' }).allowed).toBe(false);
  });

  it('substitutes a value as text: a client id with `*` or `?` is no wildcard', () => {
    expect(publish(own, 'devices/a*/x', { clientId: 'a*' }).allowed).toBe(true);
    expect(publish(own, 'devices/abc/x', { clientId: 'a*' }).allowed).toBe(false);
    expect(publish(own, 'devices/axb/x', { clientId: 'a?b' }).allowed).toBe(false);
  });

  it('substitutes the thing variables, and variable names case-insensitively', () => {
    const s = [
      allow(
        'iot:Publish',
        `${ARN}:topic/\${iot:Connection.Thing.ThingTypeName}/\${IOT:CONNECTION.THING.THINGNAME}/\${iot:Connection.Thing.IsAttached}`,
      ),
    ];
    const context = { thingName: 't1', thingTypeName: 'sensor', isAttached: true };
    expect(publish(s, 'sensor/t1/true', context).allowed).toBe(true);
    expect(publish(s, 'sensor/t2/true', context).allowed).toBe(false);
  });

  it('takes extra keys by their full name', () => {
    const s = [allow('iot:Publish', `${ARN}:topic/\${iot:Certificate.Subject.CommonName}`)];
    expect(publish(s, 'cn1', { extra: { 'iot:Certificate.Subject.CommonName': 'cn1' } }).allowed).toBe(true);
  });

  it('a variable without a value makes the statement not apply, for Allow and Deny alike, and never throws', () => {
    expect(publish(own, 'devices//x', {}).allowed).toBe(false);
    const unknown = [allow('iot:Publish', `${ARN}:topic/\${iot:NoSuchKey}`)];
    expect(publish(unknown, '', { clientId: 'd1' }).allowed).toBe(false);
    const deny = { Effect: 'Deny', Action: 'iot:Publish', Resource: `${ARN}:topic/\${iot:ClientId}` };
    expect(publish([allow('iot:Publish', '*'), deny], 'x', {}).allowed).toBe(true);
    expect(publish([allow('iot:Publish', '*'), deny], 'x', { clientId: 'x' }).allowed).toBe(false);
  });

  it('the escapes `${*}`, `${?}`, `${$}` are the literal characters', () => {
    const s = [allow('iot:Publish', `${ARN}:topic/a\${*}b\${?}c\${$}d`)];
    expect(publish(s, 'a*b?c$d').allowed).toBe(true);
    expect(publish(s, 'aXXb?c$d').allowed).toBe(false);
    expect(publish(s, 'a*bxc$d').allowed).toBe(false);
  });

  it('version 2008-10-17 (or none) leaves `${...}` as text, as IAM does', () => {
    const old = { Version: '2008-10-17', Statement: own };
    const policy = compilePolicies([old]);
    expect(
      policy.authorize('iot:Publish', topicArn(target, 'devices/d1/x'), { clientId: 'd1' }).allowed,
    ).toBe(false);
    expect(
      policy.authorize('iot:Publish', topicArn(target, 'devices/${iot:ClientId}/x'), { clientId: 'd1' })
        .allowed,
    ).toBe(true);
  });

  it('binds a context once: the same context object gives the same answers through the cache', () => {
    const policy = compilePolicies([doc(...own)]);
    const context = { clientId: 'd1' };
    const bound = policy.forContext(context);
    for (const topic of ['devices/d1/x', 'devices/d2/x']) {
      expect(policy.authorize('iot:Publish', topicArn(target, topic), context)).toEqual(
        bound.authorize('iot:Publish', topicArn(target, topic)),
      );
    }
  });
});

describe('conditions', () => {
  const attached = { Bool: { 'iot:Connection.Thing.IsAttached': 'true' } };
  const s = [allow('iot:Publish', `${ARN}:topic/*`, { Condition: attached })];

  it('Bool on IsAttached: true applies, false or missing does not', () => {
    expect(publish(s, 't', { isAttached: true }).allowed).toBe(true);
    expect(publish(s, 't', { isAttached: false }).allowed).toBe(false);
    expect(publish(s, 't', {}).allowed).toBe(false);
  });

  it('StringEquals compares exactly (a `*` is a character), StringLike with wildcards, both with variables', () => {
    const equals = [
      allow('iot:Publish', '*', { Condition: { StringEquals: { 'iot:ClientId': ['a*', 'b'] } } }),
    ];
    expect(publish(equals, 't', { clientId: 'a*' }).allowed).toBe(true);
    expect(publish(equals, 't', { clientId: 'b' }).allowed).toBe(true);
    expect(publish(equals, 't', { clientId: 'ab' }).allowed).toBe(false);
    const like = [allow('iot:Publish', '*', { Condition: { StringLike: { 'iot:ClientId': 'dev-*' } } })];
    expect(publish(like, 't', { clientId: 'dev-1' }).allowed).toBe(true);
    expect(publish(like, 't', { clientId: 'x-1' }).allowed).toBe(false);
    const variable = [
      allow('iot:Publish', '*', {
        Condition: { StringEquals: { 'iot:ClientId': '${iot:Connection.Thing.ThingName}' } },
      }),
    ];
    expect(publish(variable, 't', { clientId: 't1', thingName: 't1' }).allowed).toBe(true);
    expect(publish(variable, 't', { clientId: 't1', thingName: 't2' }).allowed).toBe(false);
  });

  it('a missing key fails a positive operator and passes a negated one; IfExists and Null test presence', () => {
    const not = [allow('iot:Publish', '*', { Condition: { StringNotEquals: { 'iot:ClientId': 'bad' } } })];
    expect(publish(not, 't', {}).allowed).toBe(true);
    expect(publish(not, 't', { clientId: 'bad' }).allowed).toBe(false);
    const ifExists = [
      allow('iot:Publish', '*', { Condition: { StringEqualsIfExists: { 'iot:ClientId': 'ok' } } }),
    ];
    expect(publish(ifExists, 't', {}).allowed).toBe(true);
    expect(publish(ifExists, 't', { clientId: 'no' }).allowed).toBe(false);
    const absent = [
      allow('iot:Publish', '*', { Condition: { Null: { 'iot:Connection.Thing.ThingName': 'true' } } }),
    ];
    expect(publish(absent, 't', {}).allowed).toBe(true);
    expect(publish(absent, 't', { thingName: 't1' }).allowed).toBe(false);
  });

  it('every operator and key must hold', () => {
    const both = [
      allow('iot:Publish', '*', {
        Condition: { ...attached, StringEquals: { 'iot:ClientId': 'd1' } },
      }),
    ];
    expect(publish(both, 't', { clientId: 'd1', isAttached: true }).allowed).toBe(true);
    expect(publish(both, 't', { clientId: 'd2', isAttached: true }).allowed).toBe(false);
  });

  it('an unsupported operator makes the statement never apply, and the compile step reports it', () => {
    const policy = compilePolicies([
      doc(allow('iot:Publish', '*', { Condition: { DateGreaterThan: { 'aws:CurrentTime': '2020-01-01' } } })),
    ]);
    expect(policy.authorize('iot:Publish', topicArn(target, 't'), {}).allowed).toBe(false);
    expect(policy.warnings).toEqual([
      "document 1, statement 1: condition operator 'DateGreaterThan' is not supported; the statement never applies",
    ]);
  });
});

describe('malformed documents', () => {
  it.each([
    ['{not json', 'document 1: not JSON'],
    ['[]', 'document 1: a policy document must be a JSON object'],
    [{ Version: '2012-10-17' }, "document 1: no 'Statement'"],
    [{ Version: '2099-01-01', Statement: [] }, "document 1: 'Version' must be"],
    [{ Version: '2012-10-17', Statement: [], Extra: 1 }, "document 1: unknown element 'Extra'"],
    [
      doc({ Effect: 'Allow', Action: 'iot:Publish' }),
      "document 1, statement 1: needs exactly one of 'Resource' and 'NotResource'",
    ],
    [
      doc({ Sid: 'S', Effect: 'Permit', Action: 'iot:Publish', Resource: '*' }),
      "document 1, statement 1 (Sid 'S'): 'Effect' must be 'Allow' or 'Deny', got \"Permit\"",
    ],
    [doc(allow('iot:Publish', '*'), allow([], '*')), "document 1, statement 2: 'Action' must not be empty"],
    [doc(allow('iot:Publish', [''])), "document 1, statement 1: 'Resource' must be a non-empty string"],
    [
      doc(allow('publish everything', '*')),
      "document 1, statement 1: 'Action' entry 'publish everything' is not an action",
    ],
    [
      doc({ ...allow('iot:Publish', '*'), NotAction: 'iot:Connect' }),
      "needs exactly one of 'Action' and 'NotAction'",
    ],
    [
      doc({ ...allow('iot:Publish', '*'), Principal: '*' }),
      "document 1, statement 1: unknown element 'Principal'",
    ],
    [
      doc(allow('iot:Publish', '*', { Condition: { Bool: 'true' } })),
      "condition operator 'Bool' must map condition keys to values",
    ],
    [
      doc(allow('iot:Publish', '*', { Condition: { Bool: { k: [] } } })),
      "condition 'Bool' key 'k' must have",
    ],
  ] as const)('%j is refused: %s', (document, message) => {
    const compile = () => compilePolicies([document as string | object]);
    expect(compile).toThrow(ValidationError);
    expect(compile).toThrow(message);
  });

  it('names the document by its place in the set', () => {
    expect(() => compilePolicies([doc(allow('iot:Publish', '*')), '{'])).toThrow('document 2: not JSON');
  });
});

describe('injection through a device id (escapePolicyValue)', () => {
  it.each([
    ['a*', ['ab', 'a', 'a*b']],
    ['a?b', ['axb', 'ab']],
    ['a$b', ['ab', 'a${*}b']],
    ['*', ['d1', 'x']],
  ])('device %s reaches its own topics and none of %j', (id, others) => {
    const policy = compilePolicies(devicePolicyDocuments({ deviceId: id, ...target })).forContext({
      clientId: id,
    });
    const can = (action: 'iot:Publish' | 'iot:Subscribe' | 'iot:Receive' | 'iot:Connect', name: string) =>
      policy.authorize(action, resourceArnFor(action, target, name)).allowed;
    expect(can('iot:Connect', id)).toBe(true);
    expect(can('iot:Publish', `devices/${id}/messages/events`)).toBe(true);
    expect(can('iot:Subscribe', `devices/${id}/messages/devicebound/#`)).toBe(true);
    for (const other of others) {
      expect(can('iot:Connect', other)).toBe(false);
      expect(can('iot:Publish', `devices/${other}/messages/events`)).toBe(false);
      expect(can('iot:Subscribe', `devices/${other}/messages/devicebound/#`)).toBe(false);
      expect(can('iot:Receive', `devices/${other}/messages/devicebound/x`)).toBe(false);
    }
  });

  it('without escaping, the same id would be a wildcard over other devices (so the test above can fail)', () => {
    const unescaped = compilePolicies([doc(allow('iot:Publish', `${ARN}:topic/devices/a*/*`))]);
    expect(unescaped.authorize('iot:Publish', topicArn(target, 'devices/ab/x'), {}).allowed).toBe(true);
    expect(escapePolicyValue('a*?$')).toBe('a${*}${?}${$}');
  });

  it('a `${...}` in a client id is text, not a variable, when substituted', () => {
    const s = [allow('iot:Publish', `${ARN}:topic/devices/\${iot:ClientId}/*`)];
    const context = { clientId: '${iot:Connection.Thing.ThingName}', thingName: 'victim' };
    expect(publish(s, 'devices/victim/x', context).allowed).toBe(false);
    expect(publish(s, 'devices/${iot:Connection.Thing.ThingName}/x', context).allowed).toBe(true);
  });
});
