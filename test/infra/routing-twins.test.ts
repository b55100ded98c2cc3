import { App, Stack } from 'aws-cdk-lib';
import type { Template } from 'aws-cdk-lib/assertions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as kinesis from 'aws-cdk-lib/aws-kinesis';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseIngestRecord } from '../../functions/core/d2c/events.ts';
import type { HubConfigInput } from '../../lib/config.ts';
import { parseHubConfig } from '../../lib/config.ts';
import { D2CPipeline } from '../../lib/d2c-pipeline.ts';
import {
  SHADOW_DOCUMENTS_PARTITION_KEY,
  SHADOW_DOCUMENTS_TOPIC_FILTER,
  shadowDocumentsSql,
} from '../../lib/event-sources.ts';
import type { HubStack } from '../../lib/hub-stack.ts';
import { compileIotSql, evaluateSubstitutionTemplate } from '../../local/iot-sql.ts';
import { readTemplate } from '../../local/template.ts';
import {
  arnOf,
  iamStatements,
  logicalId,
  NO_BUNDLING,
  referencedIds,
  roleLogicalId,
  synthHub,
  synthWithNag,
} from './hub-template.ts';

/**
 * Twin reads for `$twin` routing (router environment and IAM, only when the routing reads `$twin`) and
 * the shadow documents rule behind the TwinChangeEvents source (only when a route takes them).
 */

const TWIN_CONDITION: HubConfigInput = {
  routing: { routes: [{ name: 'floor2', condition: '$twin.tags.floor = 2', endpointNames: ['events'] }] },
};
const TWIN_ENRICHMENT: HubConfigInput = {
  routing: { enrichments: [{ key: 'floor', value: '$twin.tags.floor', endpointNames: ['events'] }] },
};
const DISABLED_TWIN_ROUTE: HubConfigInput = {
  routing: {
    routes: [
      { name: 'floor2', condition: '$twin.tags.floor = 2', endpointNames: ['events'], isEnabled: false },
    ],
  },
};
const TWIN_EVENTS: HubConfigInput = {
  routing: { routes: [{ name: 'twins', source: 'TwinChangeEvents', endpointNames: ['events'] }] },
};

interface Synthed {
  readonly stack: HubStack;
  readonly template: Template;
  readonly router: string;
  readonly routerRole: string;
  readonly registry: string;
}

function synth(config: HubConfigInput): Synthed {
  const { stack, template } = synthHub(config);
  return {
    stack,
    template,
    router: logicalId(stack.d2c.router.function),
    routerRole: roleLogicalId(stack.d2c.router),
    registry: logicalId(stack.registry.table),
  };
}

/** The router role's statements as `actions → resources` lines, sorted. */
function routerGrants(s: Synthed): string[] {
  return iamStatements(s.template)
    .filter((st) => st.roles.includes(s.routerRole))
    .map((st) => `${[...st.actions].sort().join(',')} → ${JSON.stringify(st.resources)}`)
    .sort();
}

const routerEnv = (s: Synthed) =>
  s.template.toJSON().Resources[s.router].Properties.Environment.Variables as Record<string, unknown>;

const THING_ARN = {
  'Fn::Join': [
    '',
    [
      'arn:',
      { Ref: 'AWS::Partition' },
      ':iot:',
      { Ref: 'AWS::Region' },
      ':',
      { Ref: 'AWS::AccountId' },
      ':thing/*',
    ],
  ],
};

let base: Synthed;
let twinCondition: Synthed;
beforeAll(() => {
  base = synth({});
  twinCondition = synth(TWIN_CONDITION);
});

describe('router twin reads', () => {
  it('are not granted when no route or enrichment reads $twin', () => {
    expect(routerEnv(base).REGISTRY_TABLE_NAME).toBeUndefined();
    const onRegistry = iamStatements(base.template).filter(
      (st) => st.roles.includes(base.routerRole) && referencedIds(st.resources).includes(base.registry),
    );
    expect(onRegistry).toEqual([]);
    expect(routerGrants(base).some((g) => g.includes('iot:'))).toBe(false);
    expect(routerGrants(synth(DISABLED_TWIN_ROUTE))).toEqual(routerGrants(base));
  });

  it('name the registry table and grant GetItem on it and GetThingShadow on things, nothing more', () => {
    expect(routerEnv(twinCondition).REGISTRY_TABLE_NAME).toEqual({ Ref: twinCondition.registry });
    const added = routerGrants(twinCondition).filter((g) => !routerGrants(base).includes(g));
    expect(added).toEqual(
      [
        `dynamodb:GetItem → ${JSON.stringify([arnOf(twinCondition.registry)])}`,
        `iot:GetThingShadow → ${JSON.stringify([THING_ARN])}`,
      ].sort(),
    );
    // Nothing the base router had was widened.
    expect(routerGrants(base).filter((g) => !routerGrants(twinCondition).includes(g))).toEqual([]);
  });

  it('are granted for a $twin enrichment alone too', () => {
    const enriched = synth(TWIN_ENRICHMENT);
    expect(routerEnv(enriched).REGISTRY_TABLE_NAME).toEqual({ Ref: enriched.registry });
    expect(routerGrants(enriched).filter((g) => !routerGrants(base).includes(g))).toHaveLength(2);
  });

  it('fail the synth of a D2C pipeline that reads $twin without the registry table', () => {
    const stack = new Stack(new App({ context: { ...NO_BUNDLING } }), 'S');
    const config = parseHubConfig(TWIN_CONDITION);
    expect(
      () =>
        new D2CPipeline(stack, 'D2C', {
          config,
          builtInEndpoint: new kinesis.Stream(stack, 'BuiltIn'),
          deadLetters: new dynamodb.Table(stack, 'Dl', {
            partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
          }),
        }),
    ).toThrow(/reads \$twin: the D2C pipeline needs the registry table/);
  });
});

describe('shadow documents rule (TwinChangeEvents)', () => {
  let events: Synthed;
  let rule: string;
  let ruleRole: string;
  let ingest: string;
  beforeAll(() => {
    events = synth(TWIN_EVENTS);
    const shadowRule = events.stack.eventSources.shadowDocumentsRule;
    if (shadowRule === undefined) throw new Error('no shadow documents rule');
    rule = logicalId(shadowRule.rule);
    ruleRole = logicalId(shadowRule.role);
    ingest = logicalId(events.stack.d2c.ingestStream);
  });

  it('exists only when an enabled route takes twin change events', () => {
    expect(base.stack.eventSources.shadowDocumentsRule).toBeUndefined();
    expect(twinCondition.stack.eventSources.shadowDocumentsRule).toBeUndefined();
    const disabled = synth({
      routing: {
        routes: [{ name: 't', source: 'TwinChangeEvents', endpointNames: ['events'], isEnabled: false }],
      },
    });
    expect(disabled.stack.eventSources.shadowDocumentsRule).toBeUndefined();
    const sqls = Object.values(base.template.findResources('AWS::IoT::TopicRule')).map(
      (r) => r.Properties.TopicRulePayload.Sql as string,
    );
    expect(sqls.some((sql) => sql.includes('/shadow/'))).toBe(false);
  });

  it('selects classic shadow update documents into the ingest stream, keyed by the thing name', () => {
    const sql = shadowDocumentsSql();
    expect(sql).toBe(
      "SELECT *, 'shadowDocuments' AS kind, topic(3) AS deviceId, timestamp() AS enqueuedTime, " +
        "newuuid() AS ingestId FROM '$aws/things/+/shadow/update/documents'",
    );
    const payload = events.template.toJSON().Resources[rule].Properties.TopicRulePayload;
    expect(payload).toMatchObject({ Sql: sql, AwsIotSqlVersion: '2016-03-23', RuleDisabled: false });
    expect(payload.Actions).toEqual([
      { Kinesis: { StreamName: { Ref: ingest }, PartitionKey: '${topic(3)}', RoleArn: arnOf(ruleRole) } },
    ]);
    expect(payload.ErrorAction.DynamoDB).toMatchObject({
      TableName: { Ref: logicalId(events.stack.deadLetters.table) },
      HashKeyValue: 'dl#${topic(3)}',
      RangeKeyValue: 'rule-error#${newuuid()}',
      PayloadField: 'ruleError',
    });
  });

  it('matches the classic shadow only, not named shadows or other shadow topics', () => {
    const compiled = compileIotSql(shadowDocumentsSql());
    expect(compiled.topicFilter).toBe(SHADOW_DOCUMENTS_TOPIC_FILTER);
    expect(compiled.matchesTopic('$aws/things/dev-1/shadow/update/documents')).toBe(true);
    expect(compiled.matchesTopic('$aws/things/dev-1/shadow/name/config/update/documents')).toBe(false);
    expect(compiled.matchesTopic('$aws/things/dev-1/shadow/update/accepted')).toBe(false);
  });

  it("gives the rule's role PutRecord on the ingest stream and PutItem on the dead letters, nothing else", () => {
    const statements = iamStatements(events.template).filter((s) => s.roles.includes(ruleRole));
    expect(
      statements.map((s) => [s.actions.join(','), referencedIds(s.resources).sort().join(',')]).sort(),
    ).toEqual([
      ['dynamodb:PutItem', logicalId(events.stack.deadLetters.table)],
      ['kinesis:PutRecord', ingest],
    ]);
  });

  it('is read by the local hub, whose rules engine makes records the router reads, keyed like telemetry', () => {
    const model = readTemplate(events.template.toJSON() as Parameters<typeof readTemplate>[0], 'hub');
    const local = model.rules.find((r) => r.sql === shadowDocumentsSql());
    expect(local?.actions).toEqual([
      {
        kind: 'kinesis',
        streamName: model.streams.find((s) => s.logicalId === ingest)?.name,
        partitionKey: '${topic(3)}',
      },
    ]);
    const documents = {
      previous: {
        state: { reported: { temp: 20 } },
        metadata: { reported: { temp: { timestamp: 1 } } },
        version: 1,
      },
      current: {
        state: { reported: { temp: 21 } },
        metadata: { reported: { temp: { timestamp: 2 } } },
        version: 2,
      },
      timestamp: 2,
    };
    const ctx = {
      topic: '$aws/things/dev-1/shadow/update/documents',
      payload: Buffer.from(JSON.stringify(documents)),
      clientId: '',
      principal: 'iot',
      timestamp: 1_893_456_000_000,
      newuuid: () => 'uuid-1',
    };
    const output = compileIotSql(local?.sql ?? '').evaluatePayload(ctx);
    const parsed = parseIngestRecord(JSON.parse(String(output)));
    expect(parsed).toMatchObject({
      kind: 'shadowDocuments',
      record: {
        deviceId: 'dev-1',
        enqueuedTime: 1_893_456_000_000,
        ingestId: 'uuid-1',
        current: { version: 2 },
      },
    });
    expect(evaluateSubstitutionTemplate(SHADOW_DOCUMENTS_PARTITION_KEY, ctx)).toBe('dev-1');
    const telemetryKey = evaluateSubstitutionTemplate(
      events.template.toJSON().Resources[logicalId(events.stack.d2c.rule.rule)].Properties.TopicRulePayload
        .Actions[0].Kinesis.PartitionKey,
      { ...ctx, topic: 'devices/dev-1/messages/events/', clientId: 'dev-1' },
    );
    expect(telemetryKey).toBe('dev-1');
  });
});

describe('cdk-nag', () => {
  it('finds nothing in a hub that routes on twins and twin change events', () => {
    const { error, findings } = synthWithNag({
      routing: {
        routes: [
          { name: 'floor2', condition: '$twin.tags.floor = 2', endpointNames: ['events'] },
          { name: 'twins', source: 'TwinChangeEvents', endpointNames: ['events'] },
        ],
        enrichments: [{ key: 'mode', value: '$twin.properties.desired.mode', endpointNames: ['events'] }],
      },
    });
    expect(findings).toEqual([]);
    expect(error).toBeUndefined();
  });
});
