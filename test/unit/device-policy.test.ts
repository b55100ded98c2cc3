import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../functions/core/errors.ts';
import {
  devicePolicyDocument,
  devicePolicyDocuments,
  escapePolicyValue,
  type IotPolicyDocument,
  POLICY_DOCUMENT_MAX_CHARS,
} from '../../functions/core/identity/policy.ts';

const TARGET = { partition: 'aws', region: 'eu-west-1', account: '123456789012' } as const;
const ARN = 'arn:aws:iot:eu-west-1:123456789012';

/**
 * IAM-style resource matching as IoT Core documents it: `*` any characters (including `/`), `?` one
 * character, `${*}` `${?}` `${$}` the literal characters. Any other `${...}` would be a policy variable
 * that a device id smuggled in, so the matcher refuses to evaluate it.
 */
function resourceRegex(pattern: string): RegExp {
  let source = '';
  for (let i = 0; i < pattern.length; ) {
    const literal = /^\$\{([*?$])\}/.exec(pattern.slice(i));
    if (literal) {
      source += `\\${literal[1]}`;
      i += literal[0].length;
      continue;
    }
    if (pattern.startsWith('${', i)) throw new Error(`policy variable in resource: ${pattern}`);
    const c = pattern.charAt(i);
    source += c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[.+^${}()|[\]\\/]/g, '\\$&');
    i += 1;
  }
  return new RegExp(`^${source}$`);
}

function allowed(doc: IotPolicyDocument, action: string, resource: string): boolean {
  const matching = doc.Statement.filter(
    (s) => s.Action.includes(action) && s.Resource.some((r) => resourceRegex(r).test(resource)),
  );
  if (matching.some((s) => s.Effect === 'Deny')) return false;
  return matching.some((s) => s.Effect === 'Allow');
}

const publish = (doc: IotPolicyDocument, topic: string) =>
  allowed(doc, 'iot:Publish', `${ARN}:topic/${topic}`);
const receive = (doc: IotPolicyDocument, topic: string) =>
  allowed(doc, 'iot:Receive', `${ARN}:topic/${topic}`);
const subscribe = (doc: IotPolicyDocument, filter: string) =>
  allowed(doc, 'iot:Subscribe', `${ARN}:topicfilter/${filter}`);
const connect = (doc: IotPolicyDocument, clientId: string) =>
  allowed(doc, 'iot:Connect', `${ARN}:client/${clientId}`);

describe('devicePolicyDocument', () => {
  const doc = devicePolicyDocument({ deviceId: 'dev-1', ...TARGET });

  it('has no wildcard action and names the device in every resource', () => {
    const json = JSON.parse(JSON.stringify(doc)) as IotPolicyDocument;
    expect(json.Version).toBe('2012-10-17');
    for (const statement of json.Statement) {
      for (const action of statement.Action) {
        expect(action).not.toContain('*');
        expect(['iot:Connect', 'iot:Publish', 'iot:RetainPublish', 'iot:Subscribe', 'iot:Receive']).toContain(
          action,
        );
      }
      for (const resource of statement.Resource) {
        expect(resource).toContain('dev-1');
        expect(resource.startsWith(`${ARN}:`)).toBe(true);
      }
    }
  });

  it('grants exactly the documented resources', () => {
    expect(doc.Statement).toEqual([
      { Effect: 'Allow', Action: ['iot:Connect'], Resource: [`${ARN}:client/dev-1`] },
      {
        Effect: 'Allow',
        Action: ['iot:Publish', 'iot:RetainPublish'],
        Resource: [`${ARN}:topic/devices/dev-1/*`],
      },
      {
        Effect: 'Allow',
        Action: ['iot:Subscribe'],
        Resource: [`${ARN}:topicfilter/devices/dev-1/*`, `${ARN}:topicfilter/$aws/things/dev-1/shadow/*`],
      },
      {
        Effect: 'Allow',
        Action: ['iot:Receive'],
        Resource: [`${ARN}:topic/devices/dev-1/*`, `${ARN}:topic/$aws/things/dev-1/shadow/*`],
      },
      {
        Effect: 'Allow',
        Action: ['iot:Publish'],
        Resource: ['get', 'update', 'delete'].flatMap((op) => [
          `${ARN}:topic/$aws/things/dev-1/shadow/${op}`,
          `${ARN}:topic/$aws/things/dev-1/shadow/name/*/${op}`,
        ]),
      },
    ]);
  });

  it('lets the device use its own topics', () => {
    expect(connect(doc, 'dev-1')).toBe(true);
    expect(publish(doc, 'devices/dev-1/messages/events/')).toBe(true);
    expect(publish(doc, 'devices/dev-1/messages/events/%24.ct=application%2Fjson')).toBe(true);
    expect(publish(doc, '$aws/things/dev-1/shadow/update')).toBe(true);
    expect(publish(doc, '$aws/things/dev-1/shadow/name/config/update')).toBe(true);
    expect(subscribe(doc, 'devices/dev-1/messages/devicebound/#')).toBe(true);
    expect(subscribe(doc, '$aws/things/dev-1/shadow/update/delta')).toBe(true);
    expect(receive(doc, 'devices/dev-1/messages/devicebound/%24.mid=1')).toBe(true);
    expect(receive(doc, '$aws/things/dev-1/shadow/update/accepted')).toBe(true);
  });

  it("must not let the device publish its shadow's answers (it could fake its twin change events)", () => {
    for (const answer of [
      'update/accepted',
      'update/documents',
      'update/delta',
      'get/accepted',
      'delete/rejected',
    ]) {
      expect(publish(doc, `$aws/things/dev-1/shadow/${answer}`)).toBe(false);
      expect(publish(doc, `$aws/things/dev-1/shadow/name/config/${answer}`)).toBe(false);
    }
  });

  it('grants no shadow topics to an id that is no thing name (it has no shadow)', () => {
    const dotted = devicePolicyDocument({ deviceId: 'a.b', ...TARGET });
    expect(publish(dotted, '$aws/things/a.b/shadow/update')).toBe(false);
    expect(publish(dotted, 'devices/a.b/messages/events/')).toBe(true);
  });

  it("must not let the device touch another device's topics, including ids that share a prefix", () => {
    for (const other of ['dev-2', 'dev-10', 'dev', 'DEV-1']) {
      expect(connect(doc, other)).toBe(false);
      expect(publish(doc, `devices/${other}/messages/events/`)).toBe(false);
      expect(publish(doc, `$aws/things/${other}/shadow/update`)).toBe(false);
      expect(publish(doc, `$aws/rules/ingest/devices/${other}/messages/events/`)).toBe(false);
      expect(subscribe(doc, `devices/${other}/messages/devicebound/#`)).toBe(false);
      expect(receive(doc, `devices/${other}/messages/devicebound/x`)).toBe(false);
    }
    expect(subscribe(doc, 'devices/+/messages/devicebound/#')).toBe(false);
    expect(subscribe(doc, '#')).toBe(false);
    expect(publish(doc, 'devices/dev-1')).toBe(false);
  });

  it('grants no Basic Ingest topic when Basic Ingest is off', () => {
    expect(JSON.stringify(doc)).not.toContain('$aws/rules');
    expect(publish(doc, '$aws/rules/ingest/devices/dev-1/messages/events/')).toBe(false);
  });

  it('escapes * ? and $ in the device id so the policy matches only that id', () => {
    expect(escapePolicyValue('a*b?c$d')).toBe('a${*}b${?}c${$}d');
    const star = devicePolicyDocument({ deviceId: 'a*', ...TARGET });
    expect(star.Statement[0]?.Resource).toEqual([`${ARN}:client/a\${*}`]);
    expect(connect(star, 'a*')).toBe(true);
    expect(connect(star, 'abc')).toBe(false);
    expect(publish(star, 'devices/a*/messages/events/')).toBe(true);
    expect(publish(star, 'devices/abc/messages/events/')).toBe(false);
    expect(subscribe(star, 'devices/abc/messages/devicebound/#')).toBe(false);
    const question = devicePolicyDocument({ deviceId: 'a?', ...TARGET });
    expect(connect(question, 'a?')).toBe(true);
    expect(connect(question, 'ab')).toBe(false);
  });

  it('must not let a device id inject a policy variable: refused by the charset, escaped besides', () => {
    const deviceId = 'x${iot:ClientId}';
    expect(() => devicePolicyDocument({ deviceId, ...TARGET })).toThrow(ValidationError);
    // Defence in depth: were braces ever allowed, the escaped `$` leaves only literal text.
    const escaped = escapePolicyValue(deviceId);
    expect(escaped).toBe('x${$}{iot:ClientId}');
    expect(resourceRegex(`${ARN}:client/${escaped}`).test(`${ARN}:client/${deviceId}`)).toBe(true);
    expect(resourceRegex(`${ARN}:client/${escaped}`).test(`${ARN}:client/xdev-1`)).toBe(false);
    const dollar = devicePolicyDocument({ deviceId: "$x$'@", ...TARGET });
    const json = JSON.stringify(dollar);
    for (const match of json.matchAll(/\$\{([^}]*)\}/g)) expect(['*', '?', '$']).toContain(match[1]);
    for (const statement of dollar.Statement) {
      for (const resource of statement.Resource) expect(resource).toContain(escapePolicyValue("$x$'@"));
    }
    expect(connect(dollar, "$x$'@")).toBe(true);
    expect(publish(dollar, "devices/$x$'@/messages/events/")).toBe(true);
    expect(publish(dollar, 'devices/other/messages/events/')).toBe(false);
  });

  it.each(['', 'a+b', 'a#', 'a/b', 'x'.repeat(129), 'sp ace'])(
    'an id the hub cannot register (%j) must be refused',
    (deviceId) => {
      expect(() => devicePolicyDocument({ deviceId, ...TARGET })).toThrow(ValidationError);
    },
  );

  it.each([
    ['partition', { ...TARGET, partition: 'aws:x' }],
    ['region', { ...TARGET, region: '*' }],
    ['account', { ...TARGET, account: '12345' }],
  ])('a malformed %s must be refused', (field, target) => {
    expect(() => devicePolicyDocument({ deviceId: 'dev-1', ...target })).toThrow(new RegExp(`^${field}:`));
  });

  it('accepts other partitions', () => {
    const gov = devicePolicyDocument({
      deviceId: 'dev-1',
      partition: 'aws-us-gov',
      region: 'us-gov-west-1',
      account: '123456789012',
    });
    expect(gov.Statement[0]?.Resource[0]).toBe('arn:aws-us-gov:iot:us-gov-west-1:123456789012:client/dev-1');
  });
});

describe('devicePolicyDocument with Basic Ingest on', () => {
  const RULE = 'D2CIngestRuleA1B2C3D4_x7Yz';
  const doc = devicePolicyDocument({ deviceId: 'dev-1', ...TARGET, basicIngestRule: RULE });

  it('adds one publish statement that names the ingest rule and the device', () => {
    expect(doc.Statement.slice(0, 5)).toEqual(
      devicePolicyDocument({ deviceId: 'dev-1', ...TARGET }).Statement,
    );
    expect(doc.Statement[5]).toEqual({
      Effect: 'Allow',
      Action: ['iot:Publish'],
      Resource: [
        `${ARN}:topic/$aws/rules/${RULE}/devices/dev-1/messages/events`,
        `${ARN}:topic/$aws/rules/${RULE}/devices/dev-1/messages/events/*`,
      ],
    });
    expect(doc.Statement).toHaveLength(6);
  });

  it("lets the device publish its telemetry through the ingest rule's Basic Ingest topic", () => {
    expect(publish(doc, `$aws/rules/${RULE}/devices/dev-1/messages/events`)).toBe(true);
    expect(publish(doc, `$aws/rules/${RULE}/devices/dev-1/messages/events/`)).toBe(true);
    expect(publish(doc, `$aws/rules/${RULE}/devices/dev-1/messages/events/$.ct=a%2Fb&k=v`)).toBe(true);
  });

  it("must not let it use another device's, another rule's or another family's Basic Ingest topic", () => {
    for (const other of ['dev-2', 'dev-10', 'dev', 'DEV-1']) {
      expect(publish(doc, `$aws/rules/${RULE}/devices/${other}/messages/events/`)).toBe(false);
    }
    expect(publish(doc, `$aws/rules/OtherRule/devices/dev-1/messages/events/`)).toBe(false);
    expect(publish(doc, `$aws/rules/${RULE}/devices/dev-1/messages/devicebound/x`)).toBe(false);
    expect(publish(doc, `$aws/rules/${RULE}/devices/dev-1/messages/eventsX`)).toBe(false);
    // A prefix before the rule level cannot smuggle a topic: the rule level is literal.
    expect(publish(doc, `$aws/rules/x/${RULE}/devices/dev-1/messages/events/`)).toBe(false);
  });

  it('does not let a subscriber listen on Basic Ingest topics', () => {
    expect(subscribe(doc, `$aws/rules/${RULE}/devices/dev-1/messages/events/#`)).toBe(false);
    expect(receive(doc, `$aws/rules/${RULE}/devices/dev-1/messages/events/x`)).toBe(false);
  });

  it.each(['', 'has-hyphen', 'a/b', 'r*', 'x'.repeat(129)])('refuses the rule name %j', (rule) => {
    expect(() => devicePolicyDocument({ deviceId: 'dev-1', ...TARGET, basicIngestRule: rule })).toThrow(
      /^basicIngestRule:/,
    );
  });

  it('escapes the device id in the Basic Ingest resources too', () => {
    const star = devicePolicyDocument({ deviceId: 'a*', ...TARGET, basicIngestRule: RULE });
    expect(publish(star, `$aws/rules/${RULE}/devices/a*/messages/events/x`)).toBe(true);
    expect(publish(star, `$aws/rules/${RULE}/devices/abc/messages/events/x`)).toBe(false);
  });

  it('still fits IoT Core per document for the longest escaped id and rule name', () => {
    const input = {
      deviceId: '$'.repeat(128),
      partition: 'aws-us-gov',
      region: 'us-gov-west-1',
      account: '123456789012',
      basicIngestRule: 'R'.repeat(128),
    };
    const docs = devicePolicyDocuments(input);
    for (const d of docs) expect(d.replace(/\s/g, '').length).toBeLessThanOrEqual(POLICY_DOCUMENT_MAX_CHARS);
    const statements = docs.flatMap((d) => (JSON.parse(d) as IotPolicyDocument).Statement);
    expect(statements).toEqual(devicePolicyDocument(input).Statement);
  });
});

describe('devicePolicyDocuments', () => {
  it('returns one compact document for an ordinary id', () => {
    const docs = devicePolicyDocuments({ deviceId: 'dev-1', ...TARGET });
    expect(docs).toHaveLength(1);
    expect(JSON.parse(docs[0]!)).toEqual(devicePolicyDocument({ deviceId: 'dev-1', ...TARGET }));
    expect(docs[0]!.length).toBeLessThanOrEqual(POLICY_DOCUMENT_MAX_CHARS);
  });

  it('splits the longest escaped id into documents that each fit the limit', () => {
    const input = {
      deviceId: '$'.repeat(128),
      partition: 'aws-us-gov',
      region: 'us-gov-west-1',
      account: '123456789012',
    };
    const docs = devicePolicyDocuments(input);
    expect(docs.length).toBeGreaterThan(1);
    for (const doc of docs)
      expect(doc.replace(/\s/g, '').length).toBeLessThanOrEqual(POLICY_DOCUMENT_MAX_CHARS);
    const statements = docs.flatMap((d) => (JSON.parse(d) as IotPolicyDocument).Statement);
    expect(statements).toEqual(devicePolicyDocument(input).Statement);
  });
});
