import type { Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  CONNECTION_STATE_PARTITION_KEY,
  connectionStateSql,
  PRESENCE_TOPIC_FILTER,
} from '../../lib/event-sources.ts';
import type { HubStack } from '../../lib/hub-stack.ts';
import { compileIotSql, evaluateSubstitutionTemplate } from '../../local/iot-sql.ts';
import {
  arnOf,
  iamStatements,
  logicalId,
  referencedIds,
  roleLogicalId,
  synthHub,
  synthWithNag,
} from './hub-template.ts';

let stack: HubStack;
let template: Template;
let ids: { ingest: string; deadLetters: string; rule: string; ruleRole: string; serviceApiRole: string };

beforeAll(() => {
  ({ stack, template } = synthHub());
  ids = {
    ingest: logicalId(stack.d2c.ingestStream),
    deadLetters: logicalId(stack.deadLetters.table),
    rule: logicalId(stack.eventSources.connectionStateRule.rule),
    ruleRole: logicalId(stack.eventSources.connectionStateRule.role),
    serviceApiRole: roleLogicalId(stack.identity.serviceApi),
  };
});

describe('connection state rule', () => {
  it('selects presence events into connection state records', () => {
    const sql = connectionStateSql();
    expect(sql).toBe(
      "SELECT *, 'connectionState' AS kind, timestamp() AS enqueuedTime, newuuid() AS ingestId " +
        "FROM '$aws/events/presence/+/+'",
    );
    expect(compileIotSql(sql).topicFilter).toBe(PRESENCE_TOPIC_FILTER);
    const rule = template.toJSON().Resources[ids.rule];
    expect(rule.Properties.TopicRulePayload).toMatchObject({
      Sql: sql,
      AwsIotSqlVersion: '2016-03-23',
      RuleDisabled: false,
    });
  });

  it('puts them on the ingest stream keyed by the client id, and rule errors into the dead letters', () => {
    const payload = template.toJSON().Resources[ids.rule].Properties.TopicRulePayload;
    expect(CONNECTION_STATE_PARTITION_KEY).toBe('${topic(5)}');
    expect(payload.Actions).toEqual([
      {
        Kinesis: {
          StreamName: { Ref: ids.ingest },
          PartitionKey: '${topic(5)}',
          RoleArn: arnOf(ids.ruleRole),
        },
      },
    ]);
    expect(payload.ErrorAction).toEqual({
      DynamoDB: {
        TableName: { Ref: ids.deadLetters },
        RoleArn: arnOf(ids.ruleRole),
        HashKeyField: 'pk',
        HashKeyType: 'STRING',
        HashKeyValue: 'dl#${topic(5)}',
        RangeKeyField: 'sk',
        RangeKeyType: 'STRING',
        RangeKeyValue: 'rule-error#${newuuid()}',
        PayloadField: 'ruleError',
      },
    });
  });

  it("keys a device's connection state records like its telemetry", () => {
    const key = (id: string) =>
      template.toJSON().Resources[id].Properties.TopicRulePayload.Actions[0].Kinesis.PartitionKey as string;
    const base = { payload: Buffer.from('{}'), principal: 'p', timestamp: 0, newuuid: () => 'u' };
    const telemetry = evaluateSubstitutionTemplate(key(logicalId(stack.d2c.rule.rule)), {
      ...base,
      topic: 'devices/dev-1/messages/events/a=b',
      clientId: 'dev-1',
    });
    const presence = evaluateSubstitutionTemplate(key(ids.rule), {
      ...base,
      topic: '$aws/events/presence/connected/dev-1',
      clientId: '',
    });
    expect(telemetry).toBe('dev-1');
    expect(presence).toBe(telemetry);
  });

  it("gives the rule's role PutRecord on the ingest stream and PutItem on the dead letters, nothing else", () => {
    const statements = iamStatements(template).filter((s) => s.roles.includes(ids.ruleRole));
    expect(
      statements.map((s) => [s.actions.join(','), referencedIds(s.resources).sort().join(',')]).sort(),
    ).toEqual([
      ['dynamodb:PutItem', ids.deadLetters],
      ['kinesis:PutRecord', ids.ingest],
    ]);
  });
});

describe('service API lifecycle events', () => {
  it('names the ingest stream in its environment', () => {
    const fn = template.toJSON().Resources[logicalId(stack.identity.serviceApi.function)];
    expect(fn.Properties.Environment.Variables.INGEST_STREAM_NAME).toEqual({ Ref: ids.ingest });
  });

  it('may only PutRecord(s) on the ingest stream', () => {
    const onIngest = iamStatements(template).filter(
      (s) => s.roles.includes(ids.serviceApiRole) && referencedIds(s.resources).includes(ids.ingest),
    );
    expect(onIngest).toHaveLength(1);
    expect([...(onIngest[0]?.actions ?? [])].sort()).toEqual(['kinesis:PutRecord', 'kinesis:PutRecords']);
    expect(onIngest[0]?.resources).toEqual([arnOf(ids.ingest)]);
  });

  it('grants no wildcard actions anywhere', () => {
    const wild = iamStatements(template).filter((s) => s.actions.some((a) => a.includes('*')));
    expect(wild.map((s) => `${s.source}: ${s.actions.join(',')}`)).toEqual([]);
  });
});

describe('cdk-nag', () => {
  it('finds nothing in the event sources or the service API', () => {
    const { findings } = synthWithNag();
    const mine = findings.filter((f) => f.includes('/EventSources/') || f.includes('/Identity/ServiceApi/'));
    expect(mine).toEqual([]);
  });
});
