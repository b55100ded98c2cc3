import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { KinesisClient } from '@aws-sdk/client-kinesis';
import { describe, expect, it } from 'vitest';
import { ingestSql } from '../../lib/d2c-pipeline.ts';
import { RuleNotFoundError, RulesEngine } from '../../local/rules-engine.ts';
import type { LocalRule } from '../../local/template.ts';

// Republish actions only: these rules reach no emulator, so the clients are never called.
const unused = {} as KinesisClient & DynamoDBClient;

function engine(rules: LocalRule[]) {
  const out: { topic: string; payload: Record<string, unknown> }[] = [];
  const e = new RulesEngine(rules, {
    kinesis: unused,
    dynamo: unused,
    log: () => {},
    invokeAsync: () => {},
    republish: async (topic, payload) => {
      out.push({ topic, payload: JSON.parse(payload.toString()) as Record<string, unknown> });
    },
  });
  return { e, out };
}

const ingestRule: LocalRule = {
  logicalId: 'D2CIngestRuleABC',
  name: 'hub_D2CIngestRuleABC',
  sql: ingestSql('devices/+/messages/events/#'),
  disabled: false,
  actions: [{ kind: 'republish', topic: 'out/${topic(2)}', qos: 0 }],
};
const otherRule: LocalRule = {
  logicalId: 'Other',
  name: 'hub_Other',
  sql: "SELECT topic() AS topic FROM 'devices/+/messages/events/#'",
  disabled: false,
  actions: [{ kind: 'republish', topic: 'other', qos: 0 }],
};

const publish = (topic: string) => ({
  topic,
  payload: Buffer.from('{}'),
  clientId: 'd1',
  principal: 'sas:d1',
});

describe('RulesEngine: Basic Ingest', () => {
  it('runs only the named rule, and presents the topic without the $aws/rules/{rule}/ prefix', async () => {
    const { e, out } = engine([ingestRule, otherRule]);
    expect(await e.ingest(publish('$aws/rules/hub_D2CIngestRuleABC/devices/d1/messages/events/a=1'))).toBe(1);
    expect(out).toHaveLength(1);
    expect(out[0]?.topic).toBe('out/d1');
    expect(out[0]?.payload.topic).toBe('devices/d1/messages/events/a=1');
  });

  it('runs every matching rule for the same message published on the plain topic', async () => {
    const { e, out } = engine([ingestRule, otherRule]);
    expect(await e.ingest(publish('devices/d1/messages/events/a=1'))).toBe(2);
    expect(out.map((o) => o.topic).sort()).toEqual(['other', 'out/d1']);
  });

  it('refuses a rule that does not exist or is disabled, naming it, with nothing run', async () => {
    const { e, out } = engine([ingestRule, { ...otherRule, disabled: true }]);
    for (const topic of [
      '$aws/rules/nope/devices/d1/messages/events',
      '$aws/rules/hub_Other/devices/d1/messages/events',
    ]) {
      const error = await e.ingest(publish(topic)).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(RuleNotFoundError);
      expect((error as Error).message).toContain(`'${topic}'`);
    }
    expect(out).toEqual([]);
  });
});
