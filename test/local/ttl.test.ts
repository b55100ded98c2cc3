import { CreateTableCommand, GetItemCommand, PutItemCommand, ScanCommand } from '@aws-sdk/client-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DynamoDbDeliveryLedger,
  LEDGER_TTL_ATTRIBUTE,
  ledgerTableDefinition,
} from '../../functions/adapters/ledger-dynamodb.ts';
import { createMessage, parseSendRequest } from '../../functions/core/c2d/message.ts';
import type { LocalTable } from '../../local/template.ts';
import { startTtlSweeper, sweepExpired, ttlTables } from '../../local/ttl.ts';
import { startTestDynamo, type TestDynamo } from '../support/emulators.ts';

let dynamo: TestDynamo;

const KEYS = {
  AttributeDefinitions: [
    { AttributeName: 'pk', AttributeType: 'S' },
    { AttributeName: 'sk', AttributeType: 'S' },
  ] as { AttributeName: string; AttributeType: 'S' }[],
  KeySchema: [
    { AttributeName: 'pk', KeyType: 'HASH' },
    { AttributeName: 'sk', KeyType: 'RANGE' },
  ] as { AttributeName: string; KeyType: 'HASH' | 'RANGE' }[],
};

/** A table as the local model has it, created in dynalite. */
async function table(name: string, ttl: Record<string, unknown> | undefined): Promise<LocalTable> {
  await dynamo.client.send(
    new CreateTableCommand({ TableName: name, BillingMode: 'PAY_PER_REQUEST', ...KEYS }),
  );
  return {
    logicalId: name,
    name,
    properties: { ...KEYS, ...(ttl === undefined ? {} : { TimeToLiveSpecification: ttl }) },
  };
}

async function put(tableName: string, sk: string, extra: Record<string, { N: string } | { S: string }>) {
  await dynamo.client.send(
    new PutItemCommand({ TableName: tableName, Item: { pk: { S: 'p' }, sk: { S: sk }, ...extra } }),
  );
}

async function keys(tableName: string): Promise<string[]> {
  const out = await dynamo.client.send(new ScanCommand({ TableName: tableName }));
  return (out.Items ?? []).map((i) => i.sk?.S ?? '').sort();
}

beforeAll(async () => {
  dynamo = await startTestDynamo();
});
afterAll(() => dynamo.close());

describe('local TTL sweeper', () => {
  const NOW = Date.parse('2030-01-01T00:00:00.000Z');
  const s = (ms: number) => String(Math.floor(ms / 1000));

  it('deletes exactly the items whose TTL attribute (epoch seconds) is past, in TTL tables only', async () => {
    const swept = await table('ttl-a', { AttributeName: 'until', Enabled: true });
    const off = await table('ttl-b', { AttributeName: 'until', Enabled: false });
    const none = await table('ttl-c', undefined);
    for (const t of [swept, off, none]) {
      await put(t.name, 'past', { until: { N: s(NOW - 60_000) } });
      await put(t.name, 'now', { until: { N: s(NOW) } });
      await put(t.name, 'future', { until: { N: s(NOW + 60_000) } });
      await put(t.name, 'missing', {});
      await put(t.name, 'text', { until: { S: '1' } });
    }
    expect(await sweepExpired(dynamo.client, [swept, off, none], NOW)).toBe(2);
    expect(await keys(swept.name)).toEqual(['future', 'missing', 'text']);
    expect(await keys(off.name)).toHaveLength(5);
    expect(await keys(none.name)).toHaveLength(5);
  });

  it('pages through a table larger than one scan page', async () => {
    const big = await table('ttl-big', { AttributeName: 'until', Enabled: true });
    const pad = 'x'.repeat(4_000);
    for (let i = 0; i < 300; i++) {
      await put(big.name, `k${String(i).padStart(3, '0')}`, {
        until: { N: s(i % 2 === 0 ? NOW - 1_000 : NOW + 1_000) },
        pad: { S: pad },
      });
    }
    expect(await sweepExpired(dynamo.client, [big], NOW)).toBe(150);
    expect(await keys(big.name)).toHaveLength(150);
  });

  it('reads the TTL attribute and keys from the template properties, and refuses a TTL table without keys', () => {
    expect(
      ttlTables([
        {
          logicalId: 'L',
          name: 'hub-L',
          properties: { ...KEYS, TimeToLiveSpecification: { AttributeName: 'retainUntil', Enabled: true } },
        },
      ]),
    ).toEqual([{ name: 'hub-L', attribute: 'retainUntil', keys: ['pk', 'sk'] }]);
    expect(() =>
      ttlTables([
        {
          logicalId: 'L',
          name: 'x',
          properties: { TimeToLiveSpecification: { AttributeName: 'a', Enabled: true } },
        },
      ]),
    ).toThrow(/L: TimeToLiveSpecification without a KeySchema/);
  });

  it('sweeps once at start and then periodically, and stop() waits for it', async () => {
    const t = await table('ttl-timer', { AttributeName: 'until', Enabled: true });
    await put(t.name, 'old', { until: { N: s(NOW - 1) } });
    let clock = NOW;
    const lines: string[] = [];
    const sweeper = startTtlSweeper({
      client: dynamo.client,
      tables: [t],
      log: (line) => lines.push(line),
      everyMs: 20,
      now: () => clock,
    });
    try {
      await expect.poll(() => keys(t.name)).toEqual([]);
      await put(t.name, 'later', { until: { N: s(NOW + 5_000) } });
      // Not expired yet: a few passes keep it.
      await expect.poll(() => lines.length).toBeGreaterThan(0);
      expect(await keys(t.name)).toEqual(['later']);
      clock = NOW + 5_000;
      await expect.poll(() => keys(t.name)).toEqual([]);
    } finally {
      await sweeper.stop();
    }
    expect(lines.every((l) => l.startsWith('ttl: deleted'))).toBe(true);
  });

  it('retires the C2D ledger: a completed message and its id pointer go at retainUntil, and the id is free again', async () => {
    const definition = ledgerTableDefinition('ttl-ledger');
    await dynamo.client.send(new CreateTableCommand(definition));
    const ledgerTable: LocalTable = {
      logicalId: 'Ledger',
      name: 'ttl-ledger',
      properties: {
        ...definition,
        TimeToLiveSpecification: { AttributeName: LEDGER_TTL_ATTRIBUTE, Enabled: true },
      },
    };
    const ledger = new DynamoDbDeliveryLedger({
      client: dynamo.doc,
      tableName: ledgerTable.name,
      finalRetentionMs: 60_000,
    });
    const make = (now: number) =>
      createMessage('dev', parseSendRequest({ body: 'x', messageId: 'm1' }), {
        now,
        config: { defaultTtlMs: 60_000, maxDeliveryCount: 3 },
      });
    const sent = await ledger.enqueue('dev', make(NOW), {
      maxQueueDepth: 5,
      deliver: { lockTimeoutMs: 10_000, maxInFlight: 5 },
    });
    const done = await ledger.settle('dev', sent.lockToken ?? '', 'complete', NOW + 1);
    const until = (done.message.retainUntil ?? 0) * 1000;
    expect(await sweepExpired(dynamo.client, [ledgerTable], until - 1_000)).toBe(0);
    expect((await ledger.get('dev', 'm1', until - 1_000))?.state).toBe('Completed');
    // The message goes at its retention's end; the pointer a day after the message's expiry at the latest.
    expect(await sweepExpired(dynamo.client, [ledgerTable], until)).toBe(1);
    const pointer = await dynamo.client.send(
      new GetItemCommand({ TableName: ledgerTable.name, Key: { pk: { S: 'dev#dev' }, sk: { S: 'mid#m1' } } }),
    );
    const pointerUntil = Number(pointer.Item?.[LEDGER_TTL_ATTRIBUTE]?.N) * 1000;
    expect(pointerUntil).toBeGreaterThanOrEqual(until);
    expect(await ledger.get('dev', 'm1', until)).toBeUndefined();
    const again = await ledger.enqueue('dev', make(until), { maxQueueDepth: 5 });
    expect((await ledger.get('dev', 'm1', until))?.queueKey).toBe(again.queueKey);
    expect(await sweepExpired(dynamo.client, [ledgerTable], pointerUntil)).toBe(0);
  });
});
