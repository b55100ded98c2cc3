import { describe, expect, it } from 'vitest';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import { MemoryShadowStore, MemoryTagsStore } from '../../functions/adapters/twin-memory.ts';
import { TransientError } from '../../functions/core/errors.ts';
import { TagsConflictError } from '../../functions/core/twins/errors.ts';
import { diffPatch, mergePatch, parseTwinBody } from '../../functions/core/twins/patch.ts';
import { type TagsChange, TwinService } from '../../functions/core/twins/service.ts';
import { metadataTree, parseTwinEtag, twinEtag } from '../../functions/core/twins/twin.ts';

async function setup() {
  const registry = new MemoryDeviceRegistry();
  await registry.create({ deviceId: 'd1' });
  const tags = new MemoryTagsStore();
  let clock = 1_700_000_000;
  const shadows = new MemoryShadowStore(() => clock++);
  const changes: TagsChange[] = [];
  const twins = new TwinService({
    registry,
    tags,
    shadows,
    onTagsChanged: async (c) => {
      changes.push(c);
    },
  });
  return { registry, tags, shadows, twins, changes };
}

describe('TwinService', () => {
  it('returns an empty twin for a new device, with IoT Hub fields', async () => {
    const { twins } = await setup();
    const twin = await twins.get('d1');
    expect(twin).toMatchObject({
      deviceId: 'd1',
      version: 0,
      status: 'enabled',
      authenticationType: 'sas',
      tags: {},
      properties: { desired: { $version: 0 }, reported: { $version: 0 } },
    });
    expect(twin.properties.desired.$metadata).toHaveProperty('$lastUpdated');
    expect(parseTwinEtag(twin.etag)).toEqual({ tags: 0, shadow: 0 });
  });

  it('404s for an unknown device', async () => {
    const { twins } = await setup();
    await expect(twins.get('nope')).rejects.toMatchObject({ code: 'DeviceNotFound' });
    await expect(twins.update('nope', { tags: { a: 1 } })).rejects.toMatchObject({ code: 'DeviceNotFound' });
  });

  it('merges tags and desired properties; null removes a key', async () => {
    const { twins, shadows } = await setup();
    await twins.update('d1', {
      tags: { loc: { floor: 1, room: 'a' } },
      properties: { desired: { rate: 5, mode: 'x' } },
    });
    const twin = await twins.update('d1', {
      tags: { loc: { room: null } },
      properties: { desired: { mode: null } },
    });
    expect(twin.tags).toEqual({ loc: { floor: 1 } });
    expect(twin.properties.desired).toMatchObject({ rate: 5 });
    expect(twin.properties.desired).not.toHaveProperty('mode');
    expect((await shadows.get('d1'))?.state.desired).toEqual({ rate: 5 });
    expect(twin.version).toBe(4); // two tags writes + two shadow writes
  });

  it('shows reported properties written to the shadow by the device', async () => {
    const { twins, shadows } = await setup();
    await shadows.update('d1', { reported: { temp: 21.5, fw: { v: '1.2' } } });
    const twin = await twins.get('d1');
    expect(twin.properties.reported).toMatchObject({ temp: 21.5, fw: { v: '1.2' }, $version: 1 });
    expect(twin.properties.reported.$metadata).toMatchObject({
      $lastUpdated: '2023-11-14T22:13:20.000Z',
      temp: { $lastUpdated: '2023-11-14T22:13:20.000Z' },
      fw: { $lastUpdated: '2023-11-14T22:13:20.000Z', v: { $lastUpdated: '2023-11-14T22:13:20.000Z' } },
    });
  });

  it('replaces tags and desired properties with PUT, removing nested keys', async () => {
    const { twins, shadows } = await setup();
    await twins.update('d1', {
      tags: { a: 1, b: { c: 2 } },
      properties: { desired: { x: { y: 1, z: 2 }, w: 3 } },
    });
    const twin = await twins.replace('d1', {
      tags: { b: { d: 4 } },
      properties: { desired: { x: { y: 1 } } },
    });
    expect(twin.tags).toEqual({ b: { d: 4 } });
    expect((await shadows.get('d1'))?.state.desired).toEqual({ x: { y: 1 } });
  });

  it('applies an update under a matching If-Match and refuses a stale one with 412', async () => {
    const { twins } = await setup();
    const first = await twins.update('d1', { tags: { a: 1 } });
    const second = await twins.update('d1', { tags: { a: 2 } }, `"${first.etag}"`);
    expect(second.tags).toEqual({ a: 2 });
    await expect(twins.update('d1', { tags: { a: 3 } }, `"${first.etag}"`)).rejects.toMatchObject({
      code: 'PreconditionFailed',
    });
    await expect(
      twins.update('d1', { properties: { desired: { a: 3 } } }, '"garbage"'),
    ).rejects.toMatchObject({
      code: 'PreconditionFailed',
    });
    expect((await twins.get('d1')).tags).toEqual({ a: 2 });
    // '*' matches anything
    expect((await twins.update('d1', { tags: { a: 4 } }, '*')).tags).toEqual({ a: 4 });
  });

  it('a desired change by someone else between read and write is a 412 under If-Match', async () => {
    const { twins, shadows } = await setup();
    const twin = await twins.get('d1');
    await shadows.update('d1', { reported: { t: 1 } }); // the device reports: the twin changed
    await expect(twins.update('d1', { properties: { desired: { a: 1 } } }, twin.etag)).rejects.toMatchObject({
      code: 'PreconditionFailed',
    });
  });

  it('retries an unconditional tags write that loses a race, merging into the winner', async () => {
    const { twins, tags } = await setup();
    const realPut = tags.put.bind(tags);
    let raced = false;
    tags.put = async (id, next, expected) => {
      if (!raced) {
        raced = true;
        // Another writer gets in first.
        const current = await tags.get(id);
        tags.items.set(id, {
          tags: { other: true },
          version: (current?.version ?? 0) + 1,
          generationId: next.generationId,
          updatedTime: next.updatedTime,
        });
      }
      return realPut(id, next, expected);
    };
    const twin = await twins.update('d1', { tags: { mine: true } });
    expect(twin.tags).toEqual({ other: true, mine: true });
  });

  it('gives up with 412 when every tags write loses', async () => {
    const { twins, tags } = await setup();
    tags.put = async (id) => {
      throw new TagsConflictError(id);
    };
    await expect(twins.update('d1', { tags: { a: 1 } })).rejects.toMatchObject({
      code: 'PreconditionFailed',
    });
  });

  it('ignores tags left by an earlier device with the same id', async () => {
    const { twins, registry } = await setup();
    await twins.update('d1', { tags: { old: true } });
    await registry.delete('d1');
    await registry.create({ deviceId: 'd1' });
    expect((await twins.get('d1')).tags).toEqual({});
    expect((await twins.update('d1', { tags: { fresh: 1 } })).tags).toEqual({ fresh: 1 });
  });

  it('reports tags changes (patch for update, whole tags for replace), and nothing when tags did not change', async () => {
    const { twins, changes } = await setup();
    await twins.update('d1', { tags: { a: 1, b: 2 } });
    await twins.update('d1', { tags: { a: 1 } }); // no change
    await twins.update('d1', { tags: { b: null } });
    await twins.replace('d1', { tags: { c: 3 } });
    await twins.update('d1', { properties: { desired: { x: 1 } } });
    expect(changes.map((c) => [c.opType, c.tags, c.version])).toEqual([
      ['updateTwin', { a: 1, b: 2 }, 1],
      ['updateTwin', { b: null }, 2],
      ['replaceTwin', { c: 3 }, 3],
    ]);
  });

  it('a desired write that fails after the tags write: the tags stand, their event is out, a repeat converges', async () => {
    const { twins, shadows, changes } = await setup();
    const realUpdate = shadows.updateDesired.bind(shadows);
    shadows.updateDesired = async () => {
      throw new TransientError('ShadowUnavailable', 'the shadow service did not answer');
    };
    const patch = { tags: { a: 1 }, properties: { desired: { b: 2 } } };
    await expect(twins.update('d1', patch)).rejects.toMatchObject({ code: 'ShadowUnavailable' });
    expect((await twins.get('d1')).tags).toEqual({ a: 1 });
    expect(changes.map((c) => c.tags)).toEqual([{ a: 1 }]);
    shadows.updateDesired = realUpdate;
    const twin = await twins.update('d1', patch);
    expect(twin.tags).toEqual({ a: 1 });
    expect(twin.properties.desired).toMatchObject({ b: 2 });
    expect(changes).toHaveLength(1); // the repeat changed no tags
  });

  it('refuses desired properties for an id with no shadow before writing the tags', async () => {
    const { twins, registry, tags } = await setup();
    await registry.create({ deviceId: 'a.b' });
    await expect(
      twins.update('a.b', { tags: { t: 1 }, properties: { desired: { x: 1 } } }),
    ).rejects.toMatchObject({ code: 'InvalidTwinPatch' });
    expect(await tags.get('a.b')).toBeUndefined();
  });

  it('forgets the twin of a deleted device', async () => {
    const { twins, tags, shadows } = await setup();
    await twins.update('d1', { tags: { a: 1 }, properties: { desired: { b: 2 } } });
    await twins.forget('d1');
    expect(tags.items.size).toBe(0);
    expect(await shadows.get('d1')).toBeUndefined();
  });

  it('a device whose id is no AWS thing name has tags but no desired properties', async () => {
    const { twins, registry, shadows } = await setup();
    await registry.create({ deviceId: 'a.b' });
    shadows.get = async () => {
      throw new Error('the shadow must not be read for an id that is no thing name');
    };
    expect((await twins.update('a.b', { tags: { ok: true } })).tags).toEqual({ ok: true });
    await expect(twins.update('a.b', { properties: { desired: { x: 1 } } })).rejects.toMatchObject({
      code: 'InvalidTwinPatch',
      context: { field: 'properties.desired' },
    });
  });

  it('refuses tags over 8 KB, naming tags', async () => {
    const { twins } = await setup();
    await expect(
      twins.update('d1', { tags: { big: 'x'.repeat(4000), big2: 'y'.repeat(4000), b3: 'z'.repeat(400) } }),
    ).rejects.toMatchObject({
      code: 'TwinTooLarge',
      context: { field: 'tags' },
    });
  });
});

/** `{ k: { k: ... 1 } }`, `levels` objects deep. */
function nested(levels: number): unknown {
  let value: unknown = 1;
  for (let i = 0; i < levels; i++) value = { k: value };
  return value;
}

describe('twin bodies', () => {
  const bad: [string, unknown, string][] = [
    ['not an object', [1], 'body'],
    ['reported', { properties: { reported: { a: 1 } } }, 'properties.reported'],
    ['unknown section', { properties: { wanted: {} } }, 'properties.wanted'],
    ['unknown field', { tgs: {} }, 'tgs'],
    ['other device', { deviceId: 'd2', tags: {} }, 'deviceId'],
    ['tags not object', { tags: 'x' }, 'tags'],
    ['dot in key', { tags: { 'a.b': 1 } }, 'tags.a.b'],
    ['dollar in key', { properties: { desired: { $x: 1 } } }, 'properties.desired.$x'],
    ['space in key', { tags: { 'a b': 1 } }, 'tags.a b'],
    ['control char in key', { tags: { 'a\u0001': 1 } }, 'tags.a\u0001'],
    ['empty key', { tags: { '': 1 } }, 'tags'],
    ['long key', { tags: { ['k'.repeat(1025)]: 1 } }, 'tags'],
    ['long string', { tags: { a: 'x'.repeat(4097) } }, 'tags.a'],
    ['nested too deep', { tags: nested(11) }, 'tags.k.k.k.k.k.k.k.k.k.k'],
  ];
  for (const [name, body, field] of bad)
    it(`refuses ${name} with a 400 naming ${field}`, () => {
      expect(() => parseTwinBody(body, 'd1', true)).toThrow(
        expect.objectContaining({ code: 'InvalidTwinPatch', context: { field } }),
      );
    });

  it('accepts 10 levels of objects', () => {
    expect(parseTwinBody({ tags: nested(10) }, 'd1', true)).toEqual({ tags: nested(10) });
  });

  it('refuses null in a replacement but allows it in a patch', () => {
    expect(parseTwinBody({ tags: { a: null } }, 'd1', true)).toEqual({ tags: { a: null } });
    expect(() => parseTwinBody({ tags: { a: null } }, 'd1', false)).toThrow(
      /tags\.a: null is only allowed in a patch/,
    );
  });

  it('accepts a twin read back: read-only fields and $metadata/$version are ignored', () => {
    const body = {
      deviceId: 'd1',
      etag: 'x',
      version: 3,
      status: 'enabled',
      tags: { a: [1, 'two', { three: 3 }] },
      properties: { desired: { a: 1, $metadata: {}, $version: 2 } },
    };
    expect(parseTwinBody(body, 'd1', true)).toEqual({
      tags: { a: [1, 'two', { three: 3 }] },
      desired: { a: 1 },
    });
  });
});

describe('merge and diff', () => {
  it('merge patch follows RFC 7396', () => {
    expect(mergePatch({ a: 1, b: { c: 2, d: 3 } }, { a: null, b: { c: null, e: 4 }, f: [1] })).toEqual({
      b: { d: 3, e: 4 },
      f: [1],
    });
    expect(mergePatch({ a: { b: 1 } }, { a: 5 })).toEqual({ a: 5 });
  });

  it('diff produces the patch that merges one document into the other', () => {
    const from = { a: 1, b: { c: 2, d: 3 }, e: [1, 2], g: { h: 1 } };
    const to = { b: { c: 2, d: 4 }, e: [1, 2, 3], f: { x: 1 }, g: 7 };
    const patch = diffPatch(from, to);
    expect(patch).toEqual({ a: null, b: { d: 4 }, e: [1, 2, 3], f: { x: 1 }, g: 7 });
    expect(mergePatch(from, patch)).toEqual(to);
    expect(diffPatch(to, to)).toEqual({});
  });
});

describe('etag and metadata', () => {
  it('round-trips versions through the etag, quoted or not', () => {
    const etag = twinEtag({ tags: 3, shadow: 12 });
    expect(parseTwinEtag(etag)).toEqual({ tags: 3, shadow: 12 });
    expect(parseTwinEtag(`"${etag}"`)).toEqual({ tags: 3, shadow: 12 });
    expect(parseTwinEtag('AAAA')).toBeUndefined();
  });

  it("an object's $lastUpdated is its latest child's; arrays are leaves", () => {
    const tree = metadataTree(
      { a: 1, b: { c: 2 }, l: [1, 2] },
      { a: { timestamp: 10 }, b: { c: { timestamp: 30 } }, l: [{ timestamp: 20 }, { timestamp: 25 }] },
      'never',
    );
    expect(tree).toEqual({
      $lastUpdated: new Date(30_000).toISOString(),
      a: { $lastUpdated: new Date(10_000).toISOString() },
      b: {
        $lastUpdated: new Date(30_000).toISOString(),
        c: { $lastUpdated: new Date(30_000).toISOString() },
      },
      l: { $lastUpdated: new Date(25_000).toISOString() },
    });
  });
});
