import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { KinesisClient, PutRecordsRequestEntry } from '@aws-sdk/client-kinesis';
import { describe, expect, it } from 'vitest';
import { parseIngestRecord } from '../../functions/core/d2c/events.ts';
import { RulesEngine } from '../../local/rules-engine.ts';
import { type CfnTemplate, readTemplate } from '../../local/template.ts';
import { logicalId, synthHub } from '../infra/hub-template.ts';

/**
 * The local rules engine runs the connection state rule exactly as synthesized: its SQL (`SELECT *`
 * with literals and functions) and its `${topic(5)}` partition key, on a presence event shaped like the
 * local broker's (and AWS IoT's).
 */
describe('connection state rule on the local rules engine', () => {
  const { stack, template } = synthHub();
  const model = readTemplate(template.toJSON() as CfnTemplate, 'hub');
  const ruleId = logicalId(stack.eventSources.connectionStateRule.rule);
  const rule = model.rules.find((r) => r.logicalId === ruleId);

  function engine() {
    const puts: PutRecordsRequestEntry[] = [];
    const kinesis = {
      send: async (command: { input: { Records?: PutRecordsRequestEntry[] } }) => {
        const records = command.input.Records ?? [];
        puts.push(...records);
        return { Records: records.map((_, i) => ({ SequenceNumber: String(i), ShardId: 'shardId-0' })) };
      },
    } as unknown as KinesisClient;
    const rules = new RulesEngine(rule ? [rule] : [], {
      kinesis,
      dynamo: {} as DynamoDBClient,
      invokeAsync: () => {},
      republish: async () => {},
      log: () => {},
    });
    return { rules, puts };
  }

  it('turns a presence event into a connection state record keyed by the client id', async () => {
    expect(rule).toBeDefined();
    const { rules, puts } = engine();
    const event = {
      clientId: 'dev-1',
      timestamp: 1_893_456_000_000,
      eventType: 'disconnected',
      sessionIdentifier: 'sas:dev-1',
      principalIdentifier: 'sas:dev-1',
      versionNumber: 4,
      clientInitiatedDisconnect: true,
      disconnectReason: 'CLIENT_INITIATED_DISCONNECT',
    };
    const matched = await rules.ingest({
      topic: '$aws/events/presence/disconnected/dev-1',
      payload: Buffer.from(JSON.stringify(event)),
      clientId: '',
      principal: 'iot',
    });
    expect(matched).toBe(1);
    expect(puts).toHaveLength(1);
    expect(puts[0]?.PartitionKey).toBe('dev-1');
    const record = JSON.parse(Buffer.from(puts[0]?.Data ?? new Uint8Array()).toString('utf8'));
    expect(record).toMatchObject({ ...event, kind: 'connectionState' });
    expect(record.ingestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(typeof record.enqueuedTime).toBe('number');
    expect(parseIngestRecord(record)).toMatchObject({
      kind: 'connectionState',
      record: { clientId: 'dev-1', eventType: 'disconnected', versionNumber: 4 },
    });
  });

  it('ignores other lifecycle topics (subscriptions) and telemetry', async () => {
    const { rules, puts } = engine();
    const base = { payload: Buffer.from('{"clientId":"dev-1"}'), clientId: '', principal: 'iot' };
    expect(await rules.ingest({ ...base, topic: '$aws/events/subscriptions/subscribed/dev-1' })).toBe(0);
    expect(await rules.ingest({ ...base, topic: 'devices/dev-1/messages/events/' })).toBe(0);
    expect(puts).toHaveLength(0);
  });
});
