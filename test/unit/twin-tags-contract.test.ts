import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryTagsStore } from '../../functions/adapters/twin-memory.ts';
import { DynamoDbTagsStore } from '../../functions/adapters/twin-tags-dynamodb.ts';
import { TagsConflictError } from '../../functions/core/twins/errors.ts';
import type { StoredTags, TagsStore } from '../../functions/core/twins/twin.ts';
import { startTestDynamo, type TestDynamo } from '../support/emulators.ts';

// One contract for the tags stores: the memory one the unit tests use and the DynamoDB one the hub
// uses (against dynalite), so a conditional write behaves the same in both.

let dynamo: TestDynamo;
let tables = 0;
beforeAll(async () => {
  dynamo = await startTestDynamo();
});
afterAll(() => dynamo?.close());

const stores: { name: string; make: () => Promise<TagsStore> }[] = [
  { name: 'memory', make: async () => new MemoryTagsStore() },
  {
    name: 'dynamodb (dynalite)',
    make: async () =>
      new DynamoDbTagsStore({
        client: dynamo.doc,
        tableName: await dynamo.createPkSkTable(`tags-${++tables}`),
      }),
  },
];

const tags = (
  version: number,
  generationId = 'g1',
  value: StoredTags['tags'] = { v: version },
): StoredTags => ({
  tags: value,
  version,
  generationId,
  updatedTime: '2026-11-23T00:00:00.000Z',
});

describe.each(stores)('$name tags store', ({ make }) => {
  it('reads nothing, writes the first version, reads it back', async () => {
    const store = await make();
    expect(await store.get('d1')).toBeUndefined();
    await store.put('d1', tags(1, 'g1', { a: { b: [1, 'x', null] } }), undefined);
    expect(await store.get('d1')).toEqual(tags(1, 'g1', { a: { b: [1, 'x', null] } }));
  });

  it('writes only at the version and generation read; a lost race is a TagsConflictError', async () => {
    const store = await make();
    await store.put('d1', tags(1), undefined);
    await expect(store.put('d1', tags(1), undefined)).rejects.toBeInstanceOf(TagsConflictError);
    await store.put('d1', tags(2), { version: 1, generationId: 'g1' });
    await expect(store.put('d1', tags(3), { version: 1, generationId: 'g1' })).rejects.toBeInstanceOf(
      TagsConflictError,
    );
    await expect(store.put('d1', tags(3), { version: 2, generationId: 'other' })).rejects.toBeInstanceOf(
      TagsConflictError,
    );
    expect((await store.get('d1'))?.version).toBe(2);
  });

  it("a new generation's first write replaces an earlier generation's tags", async () => {
    const store = await make();
    await store.put('d1', tags(5, 'old'), undefined);
    await store.put('d1', tags(1, 'new'), undefined);
    expect(await store.get('d1')).toEqual(tags(1, 'new'));
  });

  it('deletes, and deleting nothing succeeds', async () => {
    const store = await make();
    await store.put('d1', tags(1), undefined);
    await store.delete('d1');
    expect(await store.get('d1')).toBeUndefined();
    await store.delete('d1');
  });
});
