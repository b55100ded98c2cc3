import { Match, type Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { devicePolicyDocument } from '../../functions/core/identity/policy.ts';
import { BASIC_INGEST_RULE_ENV, IOT_RULE_NAME } from '../../functions/core/identity/topics.ts';
import { parseHubConfig } from '../../lib/config.ts';
import { INGEST_PARTITION_KEY, ingestSql } from '../../lib/d2c-pipeline.ts';
import type { HubStack } from '../../lib/hub-stack.ts';
import { synthHubTemplate } from '../../local/synth.ts';
import { readTemplate } from '../../local/template.ts';
import { configError, logicalId, synthHub, synthWithNag } from './hub-template.ts';

const TARGET = { partition: 'aws', region: 'eu-west-1', account: '123456789012' } as const;

interface Synthed {
  stack: HubStack;
  template: Template;
  rule: string;
  authorizer: string;
}

function synth(basicIngest: boolean): Synthed {
  const { stack, template } = synthHub({ basicIngest });
  return {
    stack,
    template,
    rule: logicalId(stack.d2c.rule.rule),
    authorizer: logicalId(stack.identity.authorizerFunction.function),
  };
}

function authorizerEnvironment(s: Synthed): Record<string, unknown> {
  const fn = s.template.findResources('AWS::Lambda::Function')[s.authorizer];
  return (fn?.Properties?.Environment?.Variables ?? {}) as Record<string, unknown>;
}

let off: Synthed;
let on: Synthed;

beforeAll(() => {
  off = synth(false);
  on = synth(true);
});

describe('hub.basicIngest', () => {
  it('is off by default and must be a boolean', () => {
    expect(parseHubConfig({}).basicIngest).toBe(false);
    expect(configError({ basicIngest: 'yes' }).message).toContain('hub.basicIngest');
  });

  it('off: the authorizer gets no rule name, so its policies grant no Basic Ingest topic, and there is no output', () => {
    expect(authorizerEnvironment(off)).not.toHaveProperty(BASIC_INGEST_RULE_ENV);
    expect(off.template.findOutputs('BasicIngestTopicPrefix')).toEqual({});
    const policy = devicePolicyDocument({ deviceId: 'd1', ...TARGET });
    expect(JSON.stringify(policy)).not.toContain('$aws/rules');
  });

  it("on: the authorizer's BASIC_INGEST_RULE_NAME is the ingest rule's name (its Ref), so the permission names that rule", () => {
    expect(authorizerEnvironment(on)[BASIC_INGEST_RULE_ENV]).toEqual({ Ref: on.rule });
    // No other function is told about the rule, and no IAM policy of the stack grants on $aws/rules.
    for (const [id, fn] of Object.entries(on.template.findResources('AWS::Lambda::Function'))) {
      if (id === on.authorizer) continue;
      expect(JSON.stringify(fn.Properties?.Environment ?? {})).not.toContain(BASIC_INGEST_RULE_ENV);
    }
    expect(JSON.stringify(on.template.findResources('AWS::IAM::Policy'))).not.toContain('$aws/rules');
  });

  it('on: outputs BasicIngestTopicPrefix, $aws/rules/{ingest rule name}/', () => {
    on.template.hasOutput('BasicIngestTopicPrefix', {
      Value: { 'Fn::Join': ['', ['$aws/rules/', { Ref: on.rule }, '/']] },
    });
  });

  it('does not change the ingest rule itself: same SQL, same topic filter', () => {
    const sqlOf = (s: Synthed): unknown => {
      const payload = s.template.findResources('AWS::IoT::TopicRule')[s.rule]?.Properties?.TopicRulePayload as
        | { Sql?: string }
        | undefined;
      return payload?.Sql;
    };
    expect(sqlOf(on)).toBe(sqlOf(off));
    expect(sqlOf(on)).toBe(ingestSql('devices/+/messages/events/#'));
  });

  it('passes cdk-nag (AwsSolutions and Serverless) with nothing left unacknowledged', () => {
    const { error, findings } = synthWithNag({ basicIngest: true });
    expect(findings).toEqual([]);
    expect(error).toBeUndefined();
  });

  it('runs locally with the same wiring: the authorizer variable, the rule name and the output agree', () => {
    const model = readTemplate(synthHubTemplate(parseHubConfig({ basicIngest: true })), 'hub');
    const ingest = model.rules.find((r) => r.sql === ingestSql('devices/+/messages/events/#'));
    expect(ingest?.name).toMatch(IOT_RULE_NAME);
    const authorizer = model.functions.find((f) => f.entry === 'functions/authorizer.ts');
    expect(authorizer?.environment[BASIC_INGEST_RULE_ENV]).toBe(ingest?.name);
    expect(model.outputs.BasicIngestTopicPrefix).toBe(`$aws/rules/${ingest?.name}/`);
  });
});

describe('D2C front door for HTTPS and MQTT 5', () => {
  it('keys the ingest stream by the device id in the topic, which is the same for MQTT, HTTPS and Basic Ingest', () => {
    expect(INGEST_PARTITION_KEY).toBe('${topic(2)}');
    off.template.hasResourceProperties('AWS::IoT::TopicRule', {
      TopicRulePayload: Match.objectLike({
        Actions: [{ Kinesis: Match.objectLike({ PartitionKey: INGEST_PARTITION_KEY }) }],
      }),
    });
  });

  it('selects the MQTT 5 content type, correlation data and user properties in the ingest SQL', () => {
    const sql = ingestSql('devices/+/messages/events/#');
    expect(sql).toContain("get_mqtt_property('content_type') AS contentType");
    expect(sql).toContain("get_mqtt_property('correlation_data') AS correlationData");
    expect(sql).toContain('get_user_properties() AS userProperties');
  });

  it('authorizes HTTPS publishes per request: the custom authorizer does not cache HTTP decisions', () => {
    off.template.hasResourceProperties('AWS::IoT::Authorizer', {
      AuthorizerFunctionArn: { 'Fn::GetAtt': [off.authorizer, 'Arn'] },
      EnableCachingForHttp: false,
      SigningDisabled: true,
      Status: 'ACTIVE',
    });
  });
});
