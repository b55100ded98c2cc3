import { Match, type Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { IngestRecordSchema } from '../../functions/core/d2c/envelope.ts';
import { ingestSql } from '../../lib/d2c-pipeline.ts';
import { ENTRY_METADATA_KEY } from '../../lib/hub-function.ts';
import type { HubStack } from '../../lib/hub-stack.ts';
import {
  arnOf,
  type FlatStatement,
  iamStatements,
  logicalId,
  referencedIds,
  synthHub,
} from './hub-template.ts';

const D2C_TOPIC_FILTER = 'devices/+/messages/events/#';
const XRAY_ACTIONS = ['xray:PutTraceSegments', 'xray:PutTelemetryRecords'];
/** IoT actions without an IAM resource type (X.509 provisioning, `lib/x509-provisioning.ts`). */
const NO_RESOURCE_TYPE_ACTIONS = [
  'iot:RegisterCertificateWithoutCA',
  'iot:RegisterCACertificate',
  'iot:ListCertificatesByCA',
  'iot:ListRetainedMessages',
];

let stack: HubStack;
let template: Template;
/** Logical ids of the resources the assertions refer to. */
let ids: {
  builtInStream: string;
  ingestStream: string;
  registry: string;
  ledger: string;
  deadLetters: string;
  rule: string;
  ruleRole: string;
  router: string;
  routerRole: string;
  failures: string;
};

beforeAll(() => {
  ({ stack, template } = synthHub());
  const routerRole = stack.d2c.router.function.role;
  if (routerRole === undefined) throw new Error('the router function has no role');
  ids = {
    builtInStream: logicalId(stack.builtInEndpoint.stream),
    ingestStream: logicalId(stack.d2c.ingestStream),
    registry: logicalId(stack.registry.table),
    ledger: logicalId(stack.ledger.table),
    deadLetters: logicalId(stack.deadLetters.table),
    rule: logicalId(stack.d2c.rule.rule),
    ruleRole: logicalId(stack.d2c.rule.role),
    router: logicalId(stack.d2c.router.function),
    routerRole: logicalId(routerRole),
    failures: logicalId(stack.d2c.routerFailures),
  };
});

/** The `AS name` outputs of a `SELECT ... FROM` statement, in order. */
function selectOutputNames(sql: string): string[] {
  const select = /^\s*SELECT\s+(.+?)\s+FROM\s+'[^']*'/is.exec(sql)?.[1];
  if (select === undefined) throw new Error(`not a SELECT ... FROM statement: ${sql}`);
  return [...select.matchAll(/\bAS\s+([A-Za-z_][A-Za-z0-9_]*)/gi)].map((m) => m[1] ?? '');
}

function statementsOfRole(roleId: string): FlatStatement[] {
  return iamStatements(template).filter((s) => s.roles.includes(roleId));
}

describe('ingest IoT rule', () => {
  it('selects the D2C topics with the ingest SQL, version 2016-03-23, enabled', () => {
    // The ingest rule, the presence rule, the connection state events rule (test/infra/event-sources.test.ts)
    // the three C2D rules (connected, subscribed, settle) and the X.509 just-in-time registration rule.
    template.resourceCountIs('AWS::IoT::TopicRule', 7);
    template.hasResourceProperties('AWS::IoT::TopicRule', {
      TopicRulePayload: Match.objectLike({
        Sql: ingestSql(D2C_TOPIC_FILTER),
        AwsIotSqlVersion: '2016-03-23',
        RuleDisabled: false,
      }),
    });
  });

  it('puts each message on the ingest stream keyed by the device id in the topic', () => {
    template.hasResourceProperties('AWS::IoT::TopicRule', {
      TopicRulePayload: Match.objectLike({
        Actions: [
          {
            Kinesis: {
              PartitionKey: '${topic(2)}',
              StreamName: { Ref: ids.ingestStream },
              RoleArn: arnOf(ids.ruleRole),
            },
          },
        ],
      }),
    });
  });

  it('has an error action that puts the failed message in the dead-letter table', () => {
    template.hasResourceProperties('AWS::IoT::TopicRule', {
      TopicRulePayload: Match.objectLike({
        ErrorAction: {
          DynamoDB: Match.objectLike({
            TableName: { Ref: ids.deadLetters },
            RoleArn: arnOf(ids.ruleRole),
            HashKeyField: 'pk',
            HashKeyType: 'STRING',
            RangeKeyField: 'sk',
            RangeKeyType: 'STRING',
            HashKeyValue: Match.stringLikeRegexp('\\$\\{clientid\\(\\)\\}'),
            RangeKeyValue: Match.stringLikeRegexp('\\$\\{newuuid\\(\\)\\}'),
          }),
        },
      }),
    });
  });

  it("outputs exactly the fields of IngestRecordSchema, so the SQL and the router's schema cannot drift", () => {
    const names = selectOutputNames(ingestSql(D2C_TOPIC_FILTER));
    expect(new Set(names).size).toBe(names.length);
    expect([...names].sort()).toEqual(Object.keys(IngestRecordSchema.shape).sort());
  });

  it('parses the output names of a SELECT (self-check of the helper)', () => {
    expect(selectOutputNames("SELECT a AS x, encode(*, 'base64') AS y FROM 't/#'")).toEqual(['x', 'y']);
    expect(() => selectOutputNames('DELETE FROM t')).toThrow(/not a SELECT/);
  });
});

describe('router function', () => {
  it('runs on nodejs24.x, arm64, with active tracing and JSON logs', () => {
    template.hasResourceProperties('AWS::Lambda::Function', {
      Runtime: 'nodejs24.x',
      Architectures: ['arm64'],
      TracingConfig: { Mode: 'Active' },
      LoggingConfig: Match.objectLike({ LogFormat: 'JSON' }),
      Role: arnOf(ids.routerRole),
    });
  });

  it('gets the built-in stream, the dead-letter table and the size limit from its environment', () => {
    template.hasResourceProperties('AWS::Lambda::Function', {
      Role: arnOf(ids.routerRole),
      Environment: {
        Variables: Match.objectLike({
          BUILTIN_STREAM_NAME: { Ref: ids.builtInStream },
          DEADLETTER_TABLE_NAME: { Ref: ids.deadLetters },
          MAX_MESSAGE_BYTES: String(256 * 1024),
        }),
      },
    });
  });

  it("records its handler source as 'serverless-iot-hub:entry' metadata for the local hub", () => {
    expect(ENTRY_METADATA_KEY).toBe('serverless-iot-hub:entry');
    const router = template.findResources('AWS::Lambda::Function')[ids.router];
    expect(router?.Metadata?.['serverless-iot-hub:entry']).toBe('functions/router.ts');
  });
});

describe('router event source mapping', () => {
  it('reads the ingest stream with bisect, partial batch failures, one batch per shard, from the trim horizon', () => {
    template.resourceCountIs('AWS::Lambda::EventSourceMapping', 1);
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
      EventSourceArn: arnOf(ids.ingestStream),
      FunctionName: { Ref: ids.router },
      BisectBatchOnFunctionError: true,
      FunctionResponseTypes: ['ReportBatchItemFailures'],
      ParallelizationFactor: 1,
      StartingPosition: 'TRIM_HORIZON',
      DestinationConfig: { OnFailure: { Destination: arnOf(ids.failures) } },
    });
  });

  it('retries a bounded number of times (not -1, which is forever)', () => {
    const mappings = Object.values(template.findResources('AWS::Lambda::EventSourceMapping'));
    const retries: unknown = mappings[0]?.Properties?.MaximumRetryAttempts;
    expect(typeof retries).toBe('number');
    expect(Number.isInteger(retries)).toBe(true);
    expect(retries as number).toBeGreaterThanOrEqual(0);
    expect(retries as number).toBeLessThanOrEqual(10_000);
  });

  it('sends failure records to an encrypted queue that only accepts TLS', () => {
    template.hasResourceProperties('AWS::SQS::Queue', { SqsManagedSseEnabled: true });
    template.hasResourceProperties('AWS::SQS::QueuePolicy', {
      Queues: [{ Ref: ids.failures }],
      PolicyDocument: Match.objectLike({
        Statement: Match.arrayWith([
          Match.objectLike({
            Effect: 'Deny',
            Condition: { Bool: { 'aws:SecureTransport': 'false' } },
          }),
        ]),
      }),
    });
  });
});

describe('least privilege', () => {
  it('finds the policies it checks (self-check)', () => {
    const sources = new Set(iamStatements(template).map((s) => s.source));
    expect(sources.size).toBeGreaterThanOrEqual(2);
    expect(statementsOfRole(ids.routerRole).length).toBeGreaterThan(0);
    expect(statementsOfRole(ids.ruleRole).length).toBeGreaterThan(0);
  });

  it("grants no wildcard action ('*' or 'service:*') in any IAM policy", () => {
    const wildcards = iamStatements(template).flatMap((s) =>
      s.actions.filter((a) => a === '*' || a.endsWith(':*')).map((a) => `${s.source}: ${a}`),
    );
    expect(wildcards).toEqual([]);
  });

  it('uses Resource * only for the X-Ray (and X.509 registration) actions that have no resource-level permissions', () => {
    const onStar = iamStatements(template).filter((s) => s.resources.includes('*'));
    // Active tracing puts the X-Ray statement on *, so the loop below has something to check.
    expect(onStar.length).toBeGreaterThan(0);
    for (const s of onStar) {
      expect(s.effect).toBe('Allow');
      expect([...XRAY_ACTIONS, ...NO_RESOURCE_TYPE_ACTIONS]).toEqual(expect.arrayContaining([...s.actions]));
    }
  });

  it('lets the router write the built-in endpoint and the dead-letter table', () => {
    const statements = statementsOfRole(ids.routerRole);
    const on = (id: string) => statements.filter((s) => referencedIds(s.resources).includes(id));
    expect(on(ids.builtInStream).flatMap((s) => s.actions)).toEqual(
      expect.arrayContaining(['kinesis:PutRecord', 'kinesis:PutRecords']),
    );
    expect(on(ids.deadLetters).flatMap((s) => s.actions)).toEqual(
      expect.arrayContaining(['dynamodb:PutItem', 'dynamodb:BatchWriteItem']),
    );
  });

  it('gives the router no access to the registry or the ledger table', () => {
    const touched = statementsOfRole(ids.routerRole).flatMap((s) => referencedIds(s.resources));
    expect(touched).not.toContain(ids.registry);
    expect(touched).not.toContain(ids.ledger);
  });

  it('gives the router no write on the ingest stream it reads', () => {
    const onIngest = statementsOfRole(ids.routerRole)
      .filter((s) => referencedIds(s.resources).includes(ids.ingestStream))
      .flatMap((s) => s.actions);
    expect(onIngest).toContain('kinesis:GetRecords');
    expect(onIngest).not.toContain('kinesis:PutRecord');
    expect(onIngest).not.toContain('kinesis:PutRecords');
  });

  it('lets the IoT rule role only PutRecord on the ingest stream and PutItem on the dead-letter table', () => {
    const grants = statementsOfRole(ids.ruleRole).flatMap((s) => {
      expect(s.effect).toBe('Allow');
      const targets = s.resources.map((r) => {
        const refs = referencedIds(r);
        expect(refs).toHaveLength(1);
        return refs[0];
      });
      return s.actions.flatMap((a) => targets.map((t) => `${a} on ${t}`));
    });
    expect(grants.sort()).toEqual(
      [`dynamodb:PutItem on ${ids.deadLetters}`, `kinesis:PutRecord on ${ids.ingestStream}`].sort(),
    );
  });

  it('lets only the IoT service assume the rule role, and only Lambda the router role', () => {
    const trust = (id: string) =>
      template.findResources('AWS::IAM::Role')[id]?.Properties?.AssumeRolePolicyDocument;
    expect(trust(ids.ruleRole)).toEqual({
      Version: '2012-10-17',
      Statement: [{ Action: 'sts:AssumeRole', Effect: 'Allow', Principal: { Service: 'iot.amazonaws.com' } }],
    });
    expect(trust(ids.routerRole)).toEqual({
      Version: '2012-10-17',
      Statement: [
        { Action: 'sts:AssumeRole', Effect: 'Allow', Principal: { Service: 'lambda.amazonaws.com' } },
      ],
    });
  });

  it('attaches no managed policies to any role', () => {
    template.allResourcesProperties('AWS::IAM::Role', { ManagedPolicyArns: Match.absent() });
  });
});

describe('no physical names', () => {
  it('names no stream, table, function or queue', () => {
    template.allResourcesProperties('AWS::Kinesis::Stream', { Name: Match.absent() });
    template.allResourcesProperties('AWS::DynamoDB::Table', { TableName: Match.absent() });
    template.allResourcesProperties('AWS::Lambda::Function', { FunctionName: Match.absent() });
    template.allResourcesProperties('AWS::SQS::Queue', { QueueName: Match.absent() });
    template.allResourcesProperties('AWS::IoT::TopicRule', { RuleName: Match.absent() });
  });

  it('checks something: each of those resource types is present', () => {
    for (const type of [
      'AWS::Kinesis::Stream',
      'AWS::DynamoDB::Table',
      'AWS::Lambda::Function',
      'AWS::SQS::Queue',
    ]) {
      expect(Object.keys(template.findResources(type)).length, type).toBeGreaterThan(0);
    }
  });
});

describe('tables', () => {
  it('has the registry, ledger, dead-letter and import/export jobs tables', () => {
    template.resourceCountIs('AWS::DynamoDB::Table', 4);
    const tables = template.findResources('AWS::DynamoDB::Table');
    const jobs = logicalId(stack.registryJobs.jobs.table);
    for (const id of [ids.registry, ids.ledger, ids.deadLetters, jobs]) expect(tables[id]).toBeDefined();
  });

  it('gives every table string keys pk/sk, on-demand billing, PITR, SSE, and keeps it on stack deletion', () => {
    template.allResources('AWS::DynamoDB::Table', {
      DeletionPolicy: 'Retain',
      UpdateReplacePolicy: 'Retain',
      Properties: Match.objectLike({
        KeySchema: [
          { AttributeName: 'pk', KeyType: 'HASH' },
          { AttributeName: 'sk', KeyType: 'RANGE' },
        ],
        AttributeDefinitions: Match.arrayWith([
          { AttributeName: 'pk', AttributeType: 'S' },
          { AttributeName: 'sk', AttributeType: 'S' },
        ]),
        BillingMode: 'PAY_PER_REQUEST',
        PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
        SSESpecification: { SSEEnabled: true },
      }),
    });
  });

  it('gives the ledger a gsi1 index keyed by gsi1pk/gsi1sk', () => {
    const ledger = template.findResources('AWS::DynamoDB::Table')[ids.ledger];
    expect(ledger?.Properties?.GlobalSecondaryIndexes).toEqual([
      expect.objectContaining({
        IndexName: 'gsi1',
        KeySchema: [
          { AttributeName: 'gsi1pk', KeyType: 'HASH' },
          { AttributeName: 'gsi1sk', KeyType: 'RANGE' },
        ],
      }),
    ]);
    expect(ledger?.Properties?.AttributeDefinitions).toEqual(
      expect.arrayContaining([
        { AttributeName: 'gsi1pk', AttributeType: 'S' },
        { AttributeName: 'gsi1sk', AttributeType: 'S' },
      ]),
    );
  });

  it('gives the registry and dead-letter tables no secondary index', () => {
    const tables = template.findResources('AWS::DynamoDB::Table');
    expect(tables[ids.registry]?.Properties?.GlobalSecondaryIndexes).toBeUndefined();
    expect(tables[ids.deadLetters]?.Properties?.GlobalSecondaryIndexes).toBeUndefined();
  });
});

describe('outputs', () => {
  it('exports the built-in stream and dead-letter table names for back ends', () => {
    template.hasOutput('BuiltInEndpointStreamName', { Value: { Ref: ids.builtInStream } });
    template.hasOutput('DeadLetterTableName', { Value: { Ref: ids.deadLetters } });
  });
});
