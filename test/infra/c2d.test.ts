import { Match, type Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { LEDGER_TTL_ATTRIBUTE, ledgerTableDefinition } from '../../functions/adapters/ledger-dynamodb.ts';
import {
  C2D_SETTINGS_ENV,
  type C2dSettings,
  c2dSettingsFromEnv,
  DEFAULT_C2D_SETTINGS,
} from '../../functions/core/c2d/config.ts';
import {
  CONNECTED_EVENTS_SQL,
  DEVICEBOUND_TOPIC_PATTERN,
  SETTLE_RESPONSE_TOPIC_PATTERN,
  SETTLE_RULE_SQL,
  SUBSCRIBED_EVENTS_SQL,
} from '../../functions/core/c2d/topics.ts';
import { parseHubConfig } from '../../lib/config.ts';
import type { HubStack } from '../../lib/hub-stack.ts';
import type { HubTopicRule } from '../../lib/topic-rule.ts';
import { type CfnTemplate, readTemplate } from '../../local/template.ts';
import {
  arnOf,
  configError,
  type FlatStatement,
  iamStatements,
  logicalId,
  referencedIds,
  roleLogicalId,
  synthHub,
} from './hub-template.ts';

let stack: HubStack;
let template: Template;
/** Logical ids of the resources the assertions refer to. */
let ids: {
  ledger: string;
  registry: string;
  deadLetters: string;
  feedback: string;
  delivery: string;
  deliveryRole: string;
  settlement: string;
  settlementRole: string;
  serviceApi: string;
  serviceApiRole: string;
  schedule: string;
};

beforeAll(() => {
  ({ stack, template } = synthHub());
  ids = {
    ledger: logicalId(stack.ledger.table),
    registry: logicalId(stack.registry.table),
    deadLetters: logicalId(stack.deadLetters.table),
    feedback: logicalId(stack.c2d.feedbackStream),
    delivery: logicalId(stack.c2d.delivery.function),
    deliveryRole: roleLogicalId(stack.c2d.delivery),
    settlement: logicalId(stack.c2d.settlement.function),
    settlementRole: roleLogicalId(stack.c2d.settlement),
    serviceApi: logicalId(stack.identity.serviceApi.function),
    serviceApiRole: roleLogicalId(stack.identity.serviceApi),
    schedule: logicalId(stack.c2d.schedule),
  };
});

/** A resource's properties by logical id. */
function props(id: string): Record<string, unknown> {
  const resource = template.toJSON().Resources?.[id];
  if (resource === undefined) throw new Error(`no resource ${id}`);
  return (resource.Properties ?? {}) as Record<string, unknown>;
}

/** A function's environment variables, as written in the template. */
function environment(id: string): Record<string, unknown> {
  const env = (props(id).Environment as { Variables?: Record<string, unknown> } | undefined)?.Variables;
  if (env === undefined) throw new Error(`function ${id} has no environment`);
  return env;
}

/** An ARN written as `Fn::Join` of strings and pseudo-parameter `Ref`s, as text with `${AWS::...}`. */
function renderArn(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    if (typeof obj.Ref === 'string') return `\${${obj.Ref}}`;
    const join = obj['Fn::Join'];
    if (Array.isArray(join)) {
      const [sep, parts] = join as [string, unknown[]];
      return parts.map(renderArn).join(sep);
    }
  }
  throw new Error(`cannot render ${JSON.stringify(value)}`);
}

const topicArn = (pattern: string) =>
  `arn:\${AWS::Partition}:iot:\${AWS::Region}:\${AWS::AccountId}:topic/${pattern}`;

const statementsOfRole = (roleId: string): FlatStatement[] =>
  iamStatements(template).filter((s) => s.roles.includes(roleId));

/** Actions a role is allowed on the resource with logical id `resourceId`. */
const actionsOn = (roleId: string, resourceId: string): string[] =>
  statementsOfRole(roleId)
    .filter((s) => s.effect === 'Allow' && referencedIds(s.resources).includes(resourceId))
    .flatMap((s) => s.actions);

/** Every `iot:Publish` resource of a role, rendered. */
const publishResources = (roleId: string): string[] =>
  statementsOfRole(roleId)
    .filter((s) => s.actions.includes('iot:Publish'))
    .flatMap((s) => s.resources.map(renderArn));

const DYNAMO_WRITES = [
  'dynamodb:PutItem',
  'dynamodb:UpdateItem',
  'dynamodb:DeleteItem',
  'dynamodb:BatchWriteItem',
] as const;

describe('ledger table', () => {
  it('has the due index the ledger adapter declares: gsi1 on gsi1pk/gsi1sk, keys only', () => {
    const contract = ledgerTableDefinition('x');
    const ledger = props(ids.ledger);
    expect(ledger.GlobalSecondaryIndexes).toEqual(contract.GlobalSecondaryIndexes);
    expect(ledger.GlobalSecondaryIndexes).toEqual([
      {
        IndexName: 'gsi1',
        KeySchema: [
          { AttributeName: 'gsi1pk', KeyType: 'HASH' },
          { AttributeName: 'gsi1sk', KeyType: 'RANGE' },
        ],
        Projection: { ProjectionType: 'KEYS_ONLY' },
      },
    ]);
    expect(ledger.KeySchema).toEqual(contract.KeySchema);
    expect([...(ledger.AttributeDefinitions as unknown[])]).toEqual(
      expect.arrayContaining(contract.AttributeDefinitions ?? []),
    );
    expect(ledger.BillingMode).toBe(contract.BillingMode);
  });

  it('has point-in-time recovery and is kept on stack deletion', () => {
    expect(props(ids.ledger).PointInTimeRecoverySpecification).toEqual({ PointInTimeRecoveryEnabled: true });
    const resource = template.toJSON().Resources?.[ids.ledger];
    expect(resource?.DeletionPolicy).toBe('Retain');
  });

  it('expires final messages and pointers by TTL on the attribute the ledger writes (not expiresAt)', () => {
    expect(props(ids.ledger).TimeToLiveSpecification).toEqual({
      AttributeName: LEDGER_TTL_ATTRIBUTE,
      Enabled: true,
    });
    expect(LEDGER_TTL_ATTRIBUTE).not.toBe('expiresAt');
  });

  it('is exported as LedgerTableName', () => {
    template.hasOutput('LedgerTableName', { Value: { Ref: ids.ledger } });
  });
});

describe('feedback stream', () => {
  it('is KMS-encrypted with the AWS-managed key, on-demand, kept one day', () => {
    expect(props(ids.feedback)).toEqual({
      StreamEncryption: { EncryptionType: 'KMS', KeyId: 'alias/aws/kinesis' },
      StreamModeDetails: { StreamMode: 'ON_DEMAND' },
      RetentionPeriodHours: 24,
    });
  });

  it('is exported as FeedbackStreamName', () => {
    template.hasOutput('FeedbackStreamName', { Value: { Ref: ids.feedback } });
  });

  it('is written (not read) by the delivery, settlement and service API functions', () => {
    for (const role of [ids.deliveryRole, ids.settlementRole, ids.serviceApiRole]) {
      const actions = actionsOn(role, ids.feedback);
      expect(actions).toEqual(expect.arrayContaining(['kinesis:PutRecord', 'kinesis:PutRecords']));
      expect(actions).not.toContain('kinesis:GetRecords');
    }
  });
});

describe('delivery schedule', () => {
  it('starts the delivery function every minute (rate(1 minute))', () => {
    // One rule starts the delivery function (the import/export worker has a schedule of its own).
    const rules = template.findResources('AWS::Events::Rule', {
      Properties: { Targets: Match.arrayWith([Match.objectLike({ Arn: arnOf(ids.delivery) })]) },
    });
    expect(Object.keys(rules)).toEqual([ids.schedule]);
    expect(props(ids.schedule)).toMatchObject({
      ScheduleExpression: 'rate(1 minute)',
      State: 'ENABLED',
      Targets: [expect.objectContaining({ Arn: arnOf(ids.delivery) })],
    });
  });

  it('lets EventBridge invoke the delivery function for this rule only', () => {
    template.hasResourceProperties('AWS::Lambda::Permission', {
      Action: 'lambda:InvokeFunction',
      FunctionName: arnOf(ids.delivery),
      Principal: 'events.amazonaws.com',
      SourceArn: arnOf(ids.schedule),
    });
  });

  it('is read by the local hub as a 60 s schedule of the delivery function', () => {
    const model = readTemplate(template.toJSON() as CfnTemplate, 'hub');
    expect(model.schedules.filter((s) => s.functionLogicalIds.includes(ids.delivery))).toEqual([
      { logicalId: ids.schedule, everyMs: 60_000, functionLogicalIds: [ids.delivery] },
    ]);
    expect(model.outputs.FeedbackStreamName).toBe(`hub-${ids.feedback}`);
    expect(model.outputs.LedgerTableName).toBe(`hub-${ids.ledger}`);
  });
});

describe('C2D topic rules', () => {
  const rules = (): [string, HubTopicRule, string, string][] => [
    ['connected', stack.c2d.connectedRule, CONNECTED_EVENTS_SQL, ids.delivery],
    ['subscribed', stack.c2d.subscribedRule, SUBSCRIBED_EVENTS_SQL, ids.delivery],
    ['settle', stack.c2d.settleRule, SETTLE_RULE_SQL, ids.settlement],
  ];

  it.each([0, 1, 2])('rule %i has its SQL, invokes its function, and dead-letters failures', (i) => {
    const [name, rule, sql, target] = rules()[i] ?? [];
    if (rule === undefined || target === undefined) throw new Error(`no rule ${i}`);
    const payload = props(logicalId(rule.rule)).TopicRulePayload as Record<string, unknown>;
    expect(payload, name).toMatchObject({
      Sql: sql,
      AwsIotSqlVersion: '2016-03-23',
      RuleDisabled: false,
      Actions: [{ Lambda: { FunctionArn: arnOf(target) } }],
      ErrorAction: {
        DynamoDB: expect.objectContaining({
          TableName: { Ref: ids.deadLetters },
          RoleArn: arnOf(logicalId(rule.role)),
          HashKeyField: 'pk',
          RangeKeyField: 'sk',
          HashKeyValue: expect.stringMatching(/^dl#\$\{(clientid\(\)|topic\(5\))\}$/),
          RangeKeyValue: expect.stringContaining('${newuuid()}'),
          PayloadField: 'ruleError',
        }),
      },
    });
  });

  it('lets each rule role only PutItem on the dead-letter table', () => {
    for (const [name, rule] of rules()) {
      const grants = statementsOfRole(logicalId(rule.role)).flatMap((s) =>
        s.actions.flatMap((a) => referencedIds(s.resources).map((r) => `${a} on ${r}`)),
      );
      expect(grants, name).toEqual([`dynamodb:PutItem on ${ids.deadLetters}`]);
    }
  });

  it('lets IoT rules invoke the delivery and settlement functions, with one permission each', () => {
    const iotPermissions = (fnId: string) =>
      Object.values(template.findResources('AWS::Lambda::Permission')).filter(
        (p) =>
          p.Properties?.Principal === 'iot.amazonaws.com' &&
          referencedIds(p.Properties?.FunctionName).includes(fnId),
      );
    expect(iotPermissions(ids.delivery)).toHaveLength(1);
    expect(iotPermissions(ids.settlement)).toHaveLength(1);
  });
});

describe('C2D functions', () => {
  const settingsJson = JSON.stringify(DEFAULT_C2D_SETTINGS);

  it('gives the delivery function the ledger, registry, feedback stream and settings, and 75 s', () => {
    expect(environment(ids.delivery)).toEqual({
      NODE_OPTIONS: '--enable-source-maps',
      LEDGER_TABLE_NAME: { Ref: ids.ledger },
      REGISTRY_TABLE_NAME: { Ref: ids.registry },
      FEEDBACK_STREAM_NAME: { Ref: ids.feedback },
      [C2D_SETTINGS_ENV]: settingsJson,
    });
    expect(props(ids.delivery).Timeout).toBe(75);
  });

  it('gives the settlement function the ledger, feedback stream and settings (no registry)', () => {
    expect(environment(ids.settlement)).toEqual({
      NODE_OPTIONS: '--enable-source-maps',
      LEDGER_TABLE_NAME: { Ref: ids.ledger },
      FEEDBACK_STREAM_NAME: { Ref: ids.feedback },
      [C2D_SETTINGS_ENV]: settingsJson,
    });
  });

  it('gives the service API the ledger, feedback stream and settings next to the registry', () => {
    expect(environment(ids.serviceApi)).toMatchObject({
      REGISTRY_TABLE_NAME: { Ref: ids.registry },
      LEDGER_TABLE_NAME: { Ref: ids.ledger },
      FEEDBACK_STREAM_NAME: { Ref: ids.feedback },
      [C2D_SETTINGS_ENV]: settingsJson,
    });
    expect(String(props(ids.serviceApi).Description)).toMatch(/C2D/);
  });

  it('records the handler entries for the local hub', () => {
    const entry = (id: string) => template.toJSON().Resources?.[id]?.Metadata?.['serverless-iot-hub:entry'];
    expect(entry(ids.delivery)).toBe('functions/c2d-delivery.ts');
    expect(entry(ids.settlement)).toBe('functions/c2d-settlement.ts');
  });

  it('passes settings the functions read back as the defaults', () => {
    for (const id of [ids.delivery, ids.settlement, ids.serviceApi]) {
      const raw = environment(id)[C2D_SETTINGS_ENV];
      expect(typeof raw).toBe('string');
      expect(c2dSettingsFromEnv({ [C2D_SETTINGS_ENV]: raw as string })).toEqual(DEFAULT_C2D_SETTINGS);
    }
  });
});

describe('C2D least privilege', () => {
  it('lets the delivery, settlement and service API functions read and write the ledger', () => {
    for (const role of [ids.deliveryRole, ids.settlementRole, ids.serviceApiRole]) {
      expect(actionsOn(role, ids.ledger)).toEqual(
        expect.arrayContaining(['dynamodb:GetItem', 'dynamodb:Query', ...DYNAMO_WRITES]),
      );
    }
  });

  it('lets the delivery function read the registry but not write it', () => {
    const actions = actionsOn(ids.deliveryRole, ids.registry);
    expect(actions).toEqual(expect.arrayContaining(['dynamodb:GetItem']));
    for (const write of DYNAMO_WRITES) expect(actions).not.toContain(write);
  });

  it('gives the settlement function no access to the registry or the dead-letter table', () => {
    const touched = statementsOfRole(ids.settlementRole).flatMap((s) => referencedIds(s.resources));
    expect(touched).not.toContain(ids.registry);
    expect(touched).not.toContain(ids.deadLetters);
    expect(touched).toContain(ids.ledger);
  });

  it('grants iot:Publish only on the devicebound topics (delivery, service API), settle responses (settlement) and devices/* for retained clean-up (service API)', () => {
    expect(publishResources(ids.deliveryRole)).toEqual([topicArn(DEVICEBOUND_TOPIC_PATTERN)]);
    // The service API also clears a deleted device's retained messages (identity.ts): devices/*.
    expect(publishResources(ids.serviceApiRole).sort()).toEqual(
      [topicArn(DEVICEBOUND_TOPIC_PATTERN), topicArn('devices/*')].sort(),
    );
    expect(publishResources(ids.settlementRole).sort()).toEqual(
      [topicArn(DEVICEBOUND_TOPIC_PATTERN), topicArn(SETTLE_RESPONSE_TOPIC_PATTERN)].sort(),
    );
    expect(topicArn(DEVICEBOUND_TOPIC_PATTERN)).toMatch(/:topic\/devices\/\*\/messages\/devicebound\/\*$/);
  });

  it('puts iot:Publish in statements of its own, and on no other role', () => {
    const publishing = iamStatements(template).filter((s) =>
      s.actions.some((a) => a.startsWith('iot:Publish')),
    );
    for (const s of publishing) expect(s.actions).toEqual(['iot:Publish']);
    const roles = new Set(publishing.flatMap((s) => s.roles));
    expect([...roles].sort()).toEqual([ids.deliveryRole, ids.serviceApiRole, ids.settlementRole].sort());
  });

  it("has no IAM statement anywhere with a wildcard action ('*', 'service:*' or a prefix*)", () => {
    const statements = iamStatements(template);
    expect(statements.length).toBeGreaterThan(0);
    const wildcards = statements.flatMap((s) =>
      s.actions.filter((a) => a.includes('*')).map((a) => `${s.source}: ${a}`),
    );
    expect(wildcards).toEqual([]);
  });

  it('names no new stream, function or rule physically', () => {
    expect(props(ids.feedback).Name).toBeUndefined();
    for (const id of [ids.delivery, ids.settlement]) expect(props(id).FunctionName).toBeUndefined();
    for (const rule of [stack.c2d.connectedRule, stack.c2d.subscribedRule, stack.c2d.settleRule]) {
      expect(props(logicalId(rule.rule)).RuleName).toBeUndefined();
    }
    expect(props(ids.schedule).Name).toBeUndefined();
  });
});

describe('C2D configuration (hub.c2d)', () => {
  it('defaults to the C2D defaults', () => {
    expect(parseHubConfig({}).c2d).toEqual(DEFAULT_C2D_SETTINGS);
    expect(DEFAULT_C2D_SETTINGS).toEqual({
      defaultTtlMs: 3_600_000,
      maxDeliveryCount: 10,
      lockTimeoutMs: 60_000,
      maxQueueDepth: 50,
      maxInFlight: 5,
      sweepIntervalMs: 10_000,
    });
  });

  it.each([
    ['defaultTtlMs', 0],
    ['maxDeliveryCount', 0],
    ['maxDeliveryCount', 101],
    ['lockTimeoutMs', 999],
    ['lockTimeoutMs', 300_001],
    ['maxQueueDepth', 5_001],
    ['maxInFlight', 0],
    ['sweepIntervalMs', 60_001],
    ['sweepIntervalMs', 1.5],
    ['lockTimeoutMs', '60000'],
  ])('refuses %s = %j, naming hub.c2d.%s', (field, value) => {
    const error = configError({ c2d: { [field]: value } });
    expect(error.message).toContain(`hub.c2d.${field}: `);
    // One problem, one line after the heading.
    expect(error.message.split('\n')).toHaveLength(2);
  });

  it('refuses an unknown key inside c2d, naming hub.c2d.<key>', () => {
    expect(configError({ c2d: { foo: 1 } }).message).toContain('hub.c2d.foo: unknown key');
  });

  it('refuses a c2d that is not an object, naming hub.c2d', () => {
    expect(configError({ c2d: 'fast' }).message).toMatch(/hub\.c2d: /);
  });

  it('lists every bad c2d field', () => {
    const message = configError({ c2d: { lockTimeoutMs: 1, maxInFlight: 0, typo: true } }).message;
    expect(message).toContain('hub.c2d.lockTimeoutMs');
    expect(message).toContain('hub.c2d.maxInFlight');
    expect(message).toContain('hub.c2d.typo: unknown key');
  });

  it('passes custom settings to C2D_SETTINGS of every C2D function, with defaults filled in', () => {
    const custom = { lockTimeoutMs: 30_000, maxDeliveryCount: 3, maxInFlight: 1, sweepIntervalMs: 5_000 };
    const expected: C2dSettings = { ...DEFAULT_C2D_SETTINGS, ...custom };
    const hub = synthHub({ c2d: custom });
    const functions = hub.template.findResources('AWS::Lambda::Function');
    for (const fn of [hub.stack.c2d.delivery, hub.stack.c2d.settlement, hub.stack.identity.serviceApi]) {
      const raw: unknown =
        functions[logicalId(fn.function)]?.Properties?.Environment?.Variables?.[C2D_SETTINGS_ENV];
      expect(typeof raw, fn.node.path).toBe('string');
      expect(JSON.parse(raw as string)).toEqual(expected);
      expect(c2dSettingsFromEnv({ [C2D_SETTINGS_ENV]: raw as string })).toEqual(expected);
    }
  });

  it('does not change the C2D wiring with the settings (same rules and schedule)', () => {
    const hub = synthHub({ c2d: { sweepIntervalMs: 1_000 } });
    const delivery = logicalId(hub.stack.c2d.delivery.function);
    const rules = hub.template.findResources('AWS::Events::Rule', {
      Properties: { Targets: Match.arrayWith([Match.objectLike({ Arn: arnOf(delivery) })]) },
    });
    expect(Object.values(rules).map((r) => r.Properties?.ScheduleExpression)).toEqual(['rate(1 minute)']);
    hub.template.hasResourceProperties('AWS::IoT::TopicRule', {
      TopicRulePayload: Match.objectLike({ Sql: SETTLE_RULE_SQL }),
    });
  });
});
