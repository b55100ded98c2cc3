import { type DynamoDBDocumentClient, QueryCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoDeadLetterStore } from '../../functions/adapters/dead-letter-dynamodb.ts';
import type { DeadLetter } from '../../functions/core/ports.ts';
import { startTestDynamo, type TestDynamo } from '../support/emulators.ts';

let dynamo: TestDynamo;
let doc: DynamoDBDocumentClient;
const table = 'dead-letters';

beforeAll(async () => {
  dynamo = await startTestDynamo();
  doc = dynamo.doc;
  await dynamo.createPkSkTable(table);
});
afterAll(() => dynamo?.close());

const letter = (deviceId: string, id: string, record = '{}'): DeadLetter => ({
  deviceId,
  id,
  source: 'router',
  code: 'InvalidPropertyBag',
  reason: 'invalid property bag: unknown system property',
  at: '2026-11-23T00:00:00.000Z',
  record,
  recordEncoding: 'utf8',
});

const lettersOf = async (deviceId: string) =>
  (
    await doc.send(
      new QueryCommand({
        TableName: table,
        KeyConditionExpression: 'pk = :pk',
        ExpressionAttributeValues: { ':pk': `dl#${deviceId}` },
      }),
    )
  ).Items ?? [];

describe('DynamoDeadLetterStore against dynalite', () => {
  it('writes two copies of one record in one call as one letter (BatchWriteItem refuses duplicate keys)', async () => {
    const store = new DynamoDeadLetterStore(doc, table);
    await store.put([letter('dup', 'a'), letter('dup', 'a'), letter('dup', 'b')]);
    expect((await lettersOf('dup')).map((i) => i.sk).sort()).toEqual(['a', 'b']);
  });

  it('keeps the record of a 256 KB message under the 400 KB item limit', async () => {
    const store = new DynamoDeadLetterStore(doc, table);
    const body = Buffer.alloc(256 * 1024, 7).toString('base64');
    const record = JSON.stringify({ body, topic: 'devices/big/messages/events/$.x=1', clientId: 'big' });
    await store.put([letter('big', 'x', record)]);
    const [item] = await lettersOf('big');
    expect(item?.record).toBe(record);
  });

  it('writes more than 25 letters across several batches', async () => {
    const store = new DynamoDeadLetterStore(doc, table);
    await store.put(Array.from({ length: 60 }, (_, i) => letter('many', `m${i}`)));
    expect(await lettersOf('many')).toHaveLength(60);
  });
});
