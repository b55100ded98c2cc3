import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import {
  ConflictException,
  DeleteThingShadowCommand,
  GetThingShadowCommand,
  InvalidRequestException,
  type IoTDataPlaneClient,
  ListNamedShadowsForThingCommand,
  RequestEntityTooLargeException,
  ResourceNotFoundException,
  UnsupportedDocumentEncodingException,
  UpdateThingShadowCommand,
} from '@aws-sdk/client-iot-data-plane';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDataPlane } from '../../local/data-plane.ts';
import { localIoTDataPlaneClient } from '../../local/emulators.ts';
import type { RunningServer } from '../../local/net.ts';
import {
  computeDelta,
  DELETED_VERSION_RETENTION_SECONDS,
  MAX_SHADOW_STATE_BYTES,
  parseShadowRequestTopic,
  type ShadowResult,
  ShadowService,
  type ShadowServiceOptions,
} from '../../local/shadow.ts';
import { tempDataDir } from '../support/hub-process.ts';

interface Published {
  topic: string;
  body: Record<string, unknown>;
}

/** A service on a fresh data dir, a settable clock (ms), and what it published. */
function makeService(options: Partial<ShadowServiceOptions> = {}) {
  const dataDir = options.dataDir ?? tempDataDir('shadow-');
  const clock = { ms: 1_700_000_000_000 };
  const published: Published[] = [];
  const logs: string[] = [];
  const service = new ShadowService({
    dataDir,
    now: () => clock.ms,
    log: (line) => logs.push(line),
    publish: async (topic, payload) => {
      published.push({ topic, body: JSON.parse(payload.toString()) as Record<string, unknown> });
    },
    ...options,
  });
  return { service, dataDir, clock, published, logs };
}

function ok<T>(result: ShadowResult<T>): T {
  if (!result.ok) throw new Error(`rejected: ${result.rejection.code} ${result.rejection.message}`);
  return result.document;
}

function rejected<T>(result: ShadowResult<T>) {
  if (result.ok) throw new Error(`accepted: ${JSON.stringify(result.document)}`);
  return result.rejection;
}

const body = (doc: unknown) => Buffer.from(JSON.stringify(doc));
const T0 = 1_700_000_000;

describe('shadow request topics', () => {
  it.each([
    ['$aws/things/dev-1/shadow/update', { thingName: 'dev-1', operation: 'update' }],
    ['$aws/things/dev-1/shadow/get', { thingName: 'dev-1', operation: 'get' }],
    ['$aws/things/dev-1/shadow/delete', { thingName: 'dev-1', operation: 'delete' }],
    [
      '$aws/things/dev-1/shadow/name/config/update',
      { thingName: 'dev-1', shadowName: 'config', operation: 'update' },
    ],
  ])('%s is a request', (topic, expected) => {
    expect(parseShadowRequestTopic(topic)).toEqual(expected);
  });

  it.each([
    '$aws/things/dev-1/shadow/update/accepted',
    '$aws/things/dev-1/shadow/get/rejected',
    '$aws/things/dev-1/shadow/name/update',
    '$aws/things/dev-1/shadow/updates',
    'devices/dev-1/messages/events',
    '$aws/things//shadow/update',
  ])('%s is not a request', (topic) => {
    expect(parseShadowRequestTopic(topic)).toBeUndefined();
  });
});

describe('update and get', () => {
  it('creates the shadow at version 1 and echoes the request with per-leaf metadata', async () => {
    const { service } = makeService();
    const accepted = ok(
      await service.update(
        'dev-1',
        body({ state: { reported: { temp: 21, fan: { speed: 2 } } }, clientToken: 'c1' }),
      ),
    );
    expect(accepted).toEqual({
      state: { reported: { temp: 21, fan: { speed: 2 } } },
      metadata: { reported: { temp: { timestamp: T0 }, fan: { speed: { timestamp: T0 } } } },
      version: 1,
      timestamp: T0,
      clientToken: 'c1',
    });
    const doc = ok(await service.get('dev-1'));
    expect(doc).toEqual({
      state: { reported: { temp: 21, fan: { speed: 2 } } },
      metadata: { reported: { temp: { timestamp: T0 }, fan: { speed: { timestamp: T0 } } } },
      version: 1,
      timestamp: T0,
    });
  });

  it('merges objects key by key, keeps the timestamps of untouched leaves, and counts versions', async () => {
    const { service, clock } = makeService();
    ok(await service.update('dev-1', body({ state: { desired: { a: 1, nested: { x: 1, y: 1 } } } })));
    clock.ms += 5000;
    ok(await service.update('dev-1', body({ state: { desired: { b: 2, nested: { y: 2 } } } })));
    const doc = ok(await service.get('dev-1'));
    expect(doc.state.desired).toEqual({ a: 1, b: 2, nested: { x: 1, y: 2 } });
    expect(doc.metadata.desired).toEqual({
      a: { timestamp: T0 },
      b: { timestamp: T0 + 5 },
      nested: { x: { timestamp: T0 }, y: { timestamp: T0 + 5 } },
    });
    expect(doc.version).toBe(2);
  });

  it('removes a key set to null (nested too), and a section set to null', async () => {
    const { service } = makeService();
    ok(
      await service.update(
        'dev-1',
        body({ state: { desired: { a: 1, b: 2, n: { x: 1, y: 2 } }, reported: { a: 1 } } }),
      ),
    );
    ok(
      await service.update('dev-1', body({ state: { desired: { a: null, n: { x: null }, missing: null } } })),
    );
    let doc = ok(await service.get('dev-1'));
    expect(doc.state.desired).toEqual({ b: 2, n: { y: 2 } });
    expect(doc.metadata.desired).toEqual({ b: { timestamp: T0 }, n: { y: { timestamp: T0 } } });

    const cleared = ok(await service.update('dev-1', body({ state: { desired: null } })));
    expect(cleared.state).toEqual({ desired: null });
    expect(cleared.metadata).toEqual({ desired: { timestamp: T0 } });
    doc = ok(await service.get('dev-1'));
    expect(doc.state).toEqual({ reported: { a: 1 } });
    expect(doc.metadata).toEqual({ reported: { a: { timestamp: T0 } } });
    expect(doc.version).toBe(3);
  });

  it('drops a section emptied by nulls, and keeps an empty shadow that still has a version', async () => {
    const { service } = makeService();
    ok(await service.update('dev-1', body({ state: { reported: { a: 1 } } })));
    ok(await service.update('dev-1', body({ state: { reported: { a: null } } })));
    const doc = ok(await service.get('dev-1'));
    expect(doc.state).toEqual({});
    expect(doc.metadata).toEqual({});
    expect(doc.version).toBe(2);
  });

  it('keeps a nested object emptied by nulls as {}, and adds nothing for a new object of only nulls', async () => {
    const { service } = makeService();
    ok(await service.update('dev-1', body({ state: { reported: { n: { x: 1 }, keep: 1 } } })));
    ok(await service.update('dev-1', body({ state: { reported: { n: { x: null }, fresh: { y: null } } } })));
    expect(ok(await service.get('dev-1')).state.reported).toEqual({ n: {}, keep: 1 });
  });

  it('replaces arrays whole, with per-element metadata, and lets a value change type', async () => {
    const { service, clock } = makeService();
    ok(
      await service.update(
        'dev-1',
        body({ state: { desired: { colors: ['RED', 'GREEN', 'BLUE'], mode: 'a' } } }),
      ),
    );
    clock.ms += 1000;
    ok(await service.update('dev-1', body({ state: { desired: { colors: ['RED'], mode: { level: 3 } } } })));
    const doc = ok(await service.get('dev-1'));
    expect(doc.state.desired).toEqual({ colors: ['RED'], mode: { level: 3 } });
    expect(doc.metadata.desired).toEqual({
      colors: [{ timestamp: T0 + 1 }],
      mode: { level: { timestamp: T0 + 1 } },
    });
    ok(await service.update('dev-1', body({ state: { desired: { mode: 'b' } } })));
    expect(ok(await service.get('dev-1')).state.desired?.mode).toBe('b');
  });

  it('ignores fields outside state, version and clientToken, and never lets __proto__ touch a prototype', async () => {
    const { service } = makeService();
    ok(
      await service.update(
        'dev-1',
        '{"state":{"reported":{"__proto__":{"polluted":true},"ok":1}},"extra":5}',
      ),
    );
    const doc = ok(await service.get('dev-1'));
    expect(Object.keys(doc.state.reported ?? {})).toEqual(['__proto__', 'ok']);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(JSON.stringify(doc)).not.toContain('extra');
  });

  it('takes a request document already parsed, as well as bytes and text', async () => {
    const { service } = makeService();
    ok(await service.update('dev-1', { state: { reported: { a: 1 } } }));
    ok(await service.update('dev-1', '{"state":{"reported":{"b":2}}}'));
    expect(ok(await service.get('dev-1')).state.reported).toEqual({ a: 1, b: 2 });
  });
});

describe('delta', () => {
  it('holds the desired values that differ from reported, recursing into objects, arrays whole', () => {
    expect(
      computeDelta(
        { color: 'RED', state: 'STOP', lights: { color: { r: 255, g: 255, b: 255 } }, list: [1, 2], same: 1 },
        { color: 'GREEN', engine: 'ON', lights: { color: { r: 255, g: 0, b: 255 } }, list: [1, 3], same: 1 },
      ),
    ).toEqual({ color: 'RED', state: 'STOP', lights: { color: { g: 255 } }, list: [1, 2] });
    expect(computeDelta({ a: 1 }, { a: 1, b: 2 })).toBeUndefined();
    expect(computeDelta(undefined, { a: 1 })).toBeUndefined();
    expect(computeDelta({ a: { x: 1 } }, { a: 5 })).toEqual({ a: { x: 1 } });
  });

  it('is in get once desired and reported differ, and gone when they agree', async () => {
    const { service } = makeService();
    ok(await service.update('dev-1', body({ state: { desired: { fan: 'on', level: 2 } } })));
    expect(ok(await service.get('dev-1')).state.delta).toEqual({ fan: 'on', level: 2 });
    ok(await service.update('dev-1', body({ state: { reported: { fan: 'on' } } })));
    expect(ok(await service.get('dev-1')).state.delta).toEqual({ level: 2 });
    ok(await service.update('dev-1', body({ state: { reported: { level: 2 } } })));
    expect(ok(await service.get('dev-1')).state.delta).toBeUndefined();
    // A key removed from reported but still desired is in the delta again.
    ok(await service.update('dev-1', body({ state: { reported: { level: null } } })));
    expect(ok(await service.get('dev-1')).state.delta).toEqual({ level: 2 });
  });
});

describe('what updates publish', () => {
  it('publishes accepted, delta and documents in that order for a desired update', async () => {
    const { service, published } = makeService();
    ok(await service.update('dev-1', body({ state: { reported: { fan: 'off', temp: 20 } } })));
    published.length = 0;
    ok(
      await service.update(
        'dev-1',
        body({ state: { desired: { fan: 'on', temp: 20 } }, clientToken: 'tok' }),
      ),
    );
    await service.idle();
    expect(published.map((p) => p.topic)).toEqual([
      '$aws/things/dev-1/shadow/update/accepted',
      '$aws/things/dev-1/shadow/update/delta',
      '$aws/things/dev-1/shadow/update/documents',
    ]);
    expect(published[1]?.body).toEqual({
      version: 2,
      timestamp: T0,
      state: { fan: 'on' },
      metadata: { fan: { timestamp: T0 } },
      clientToken: 'tok',
    });
    expect(published[2]?.body).toEqual({
      previous: {
        state: { reported: { fan: 'off', temp: 20 } },
        metadata: { reported: { fan: { timestamp: T0 }, temp: { timestamp: T0 } } },
        version: 1,
      },
      current: {
        state: { desired: { fan: 'on', temp: 20 }, reported: { fan: 'off', temp: 20 } },
        metadata: {
          desired: { fan: { timestamp: T0 }, temp: { timestamp: T0 } },
          reported: { fan: { timestamp: T0 }, temp: { timestamp: T0 } },
        },
        version: 2,
      },
      timestamp: T0,
      clientToken: 'tok',
    });
  });

  it('publishes no delta for a reported-only update, nor when desired matches reported', async () => {
    const { service, published } = makeService();
    ok(await service.update('dev-1', body({ state: { desired: { fan: 'on' } } })));
    ok(await service.update('dev-1', body({ state: { reported: { fan: 'off' } } })));
    ok(await service.update('dev-1', body({ state: { desired: { fan: 'off' } } })));
    await service.idle();
    const deltas = published.filter((p) => p.topic.endsWith('/update/delta'));
    expect(deltas.map((d) => d.body.version)).toEqual([1]);
  });

  it('has no previous on the first documents message of a shadow', async () => {
    const { service, published } = makeService();
    ok(await service.update('dev-1', body({ state: { reported: { a: 1 } } })));
    await service.idle();
    const documents = published.find((p) => p.topic.endsWith('/update/documents'));
    expect(documents?.body).not.toHaveProperty('previous');
    expect(documents?.body.current).toMatchObject({ version: 1 });
  });

  it('keeps a publisher failure from failing the update, and logs it', async () => {
    const { service, logs } = makeService({
      publish: async () => {
        throw new Error('broker down');
      },
    });
    ok(await service.update('dev-1', body({ state: { reported: { a: 1 } } })));
    await service.idle();
    expect(logs.some((l) => l.includes('broker down'))).toBe(true);
    expect(ok(await service.get('dev-1')).version).toBe(1);
  });
});

describe('versions', () => {
  it('applies an update only at the version it names, else 409 Version conflict with the client token', async () => {
    const { service } = makeService();
    ok(await service.update('dev-1', body({ state: { desired: { a: 1 } } })));
    ok(await service.update('dev-1', body({ state: { desired: { a: 2 } } })));
    const conflict = rejected(
      await service.update('dev-1', body({ state: { desired: { a: 3 } }, version: 1, clientToken: 'x' })),
    );
    expect(conflict).toEqual({
      code: 409,
      errorType: 'ConflictException',
      message: 'Version conflict',
      timestamp: T0,
      clientToken: 'x',
    });
    expect(ok(await service.get('dev-1')).state.desired).toEqual({ a: 2 });
    expect(
      ok(await service.update('dev-1', body({ state: { desired: { a: 3 } }, version: 2 }))).version,
    ).toBe(3);
  });

  it('takes version 0 as the version of a shadow that does not exist yet', async () => {
    const { service } = makeService();
    expect(
      rejected(await service.update('dev-1', body({ state: { reported: { a: 1 } }, version: 1 }))).code,
    ).toBe(409);
    expect(
      ok(await service.update('dev-1', body({ state: { reported: { a: 1 } }, version: 0 }))).version,
    ).toBe(1);
  });

  it('continues the version of a deleted shadow, but starts again at 1 after 48 hours', async () => {
    const { service, clock } = makeService();
    for (let i = 0; i < 3; i++) ok(await service.update('dev-1', body({ state: { reported: { i } } })));
    expect(ok(await service.delete('dev-1'))).toEqual({ version: 3, timestamp: T0 });
    expect(rejected(await service.get('dev-1')).code).toBe(404);
    expect(
      ok(await service.update('dev-1', body({ state: { reported: { i: 9 } }, version: 3 }))).version,
    ).toBe(4);
    expect(ok(await service.get('dev-1')).state).toEqual({ reported: { i: 9 } });

    ok(await service.delete('dev-1'));
    clock.ms += (DELETED_VERSION_RETENTION_SECONDS + 1) * 1000;
    expect(ok(await service.update('dev-1', body({ state: { reported: { i: 1 } } }))).version).toBe(1);
  });

  it('serializes concurrent updates of one thing: none is lost, versions are 1..n', async () => {
    const { service } = makeService();
    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        service.update('dev-1', body({ state: { reported: { [`k${i}`]: i } } })),
      ),
    );
    expect(results.map((r) => ok(r).version).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 40 }, (_, i) => i + 1),
    );
    const doc = ok(await service.get('dev-1'));
    expect(Object.keys(doc.state.reported ?? {})).toHaveLength(40);
    expect(doc.version).toBe(40);
  });

  it('lets exactly one of many racing updates at the same version win', async () => {
    const { service } = makeService();
    ok(await service.update('dev-1', body({ state: { desired: { n: 0 } } })));
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        service.update('dev-1', body({ state: { desired: { n: i } }, version: 1 })),
      ),
    );
    expect(results.filter((r) => r.ok)).toHaveLength(1);
    expect(results.filter((r) => !r.ok && r.rejection.code === 409)).toHaveLength(9);
    expect(ok(await service.get('dev-1')).version).toBe(2);
  });
});

describe('refused requests', () => {
  const deep = (levels: number): unknown => (levels === 0 ? 1 : { k: deep(levels - 1) });

  it.each([
    ['not JSON', Buffer.from('{"state":'), 400, 'Invalid JSON'],
    ['a JSON array', body([1]), 400, 'Invalid JSON'],
    ['no state', body({ desired: { a: 1 } }), 400, 'Missing required node: state'],
    ['a state that is not an object', body({ state: 5 }), 400, 'State node must be an object'],
    [
      'a desired that is not an object',
      body({ state: { desired: [1] } }),
      400,
      'Desired node must be an object',
    ],
    [
      'a reported that is not an object',
      body({ state: { reported: 'x' } }),
      400,
      'Reported node must be an object',
    ],
    ['a delta in the request', body({ state: { delta: { a: 1 } } }), 400, 'State contains an invalid node'],
    ['a version that is not an integer', body({ state: {}, version: 'one' }), 400, 'Invalid version'],
    ['a negative version', body({ state: {}, version: -1 }), 400, 'Invalid version'],
    [
      'a client token over 64 bytes',
      body({ state: {}, clientToken: 'x'.repeat(65) }),
      400,
      'Invalid clientToken',
    ],
    ['a client token that is not a string', body({ state: {}, clientToken: 7 }), 400, 'Invalid clientToken'],
    [
      'keys 7 levels deep (desired counting as 1)',
      body({ state: { desired: deep(6) } }),
      400,
      'JSON contains too many levels of nesting; maximum is 6',
    ],
    [
      'a null inside an array',
      body({ state: { desired: { colors: [null, 'RED'] } } }),
      400,
      "Invalid JSON: arrays can't contain null values (state.desired.colors[0])",
    ],
    [
      'bytes that are not UTF-8',
      Buffer.from([0x7b, 0xff, 0x7d]),
      415,
      'Unsupported documented encoding; supported encoding is UTF-8',
    ],
  ])('refuses %s', async (_what, request, code, message) => {
    const { service, published } = makeService();
    const rejection = rejected(await service.update('dev-1', request));
    expect(rejection.code).toBe(code);
    expect(rejection.message).toBe(message);
    await service.idle();
    expect(published).toEqual([]);
    expect(rejected(await service.get('dev-1')).code).toBe(404);
  });

  it('accepts keys exactly 6 levels deep (AWS: desired.one.two.three.four.five)', async () => {
    const { service } = makeService();
    const request = { state: { desired: { one: { two: { three: { four: { five: {} } } } } } } };
    expect(ok(await service.update('dev-1', body(request))).version).toBe(1);
    expect(rejected(await service.update('dev-1', body({ state: { desired: deep(6) } }))).code).toBe(400);
    expect(ok(await service.update('dev-1', body({ state: { desired: deep(5) } }))).version).toBe(2);
  });

  it('echoes the client token of a refused request when it had a valid one', async () => {
    const { service } = makeService();
    expect(rejected(await service.update('dev-1', body({ state: 1, clientToken: 'abc' }))).clientToken).toBe(
      'abc',
    );
  });

  it('refuses (413) an update that would take desired + reported over 8 KB, and keeps the shadow as it was', async () => {
    const { service } = makeService();
    const half = 'x'.repeat(MAX_SHADOW_STATE_BYTES / 2 - 20);
    ok(await service.update('dev-1', body({ state: { reported: { a: half } } })));
    const rejection = rejected(
      await service.update('dev-1', body({ state: { desired: { b: half, c: 'y'.repeat(40) } } })),
    );
    expect(rejection).toMatchObject({
      code: 413,
      errorType: 'RequestEntityTooLargeException',
      message: 'The payload exceeds the maximum size allowed',
    });
    const doc = ok(await service.get('dev-1'));
    expect(doc.version).toBe(1);
    expect(doc.state.desired).toBeUndefined();
    // Shrinking is always possible.
    ok(await service.update('dev-1', body({ state: { reported: { a: null } } })));
    ok(await service.update('dev-1', body({ state: { desired: { b: half, c: 'y'.repeat(40) } } })));
  });

  it('refuses thing and shadow names AWS would refuse, naming the field', async () => {
    const { service } = makeService();
    const thing = rejected(await service.update('dev.1', body({ state: { reported: { a: 1 } } })));
    expect(thing.code).toBe(400);
    expect(thing.message).toMatch(/^thingName 'dev\.1'/);
    const shadow = rejected(await service.get('dev-1', 'bad/name'));
    expect(shadow.message).toMatch(/^shadowName 'bad\/name'/);
  });

  it('answers 404 for get and delete of a shadow that does not exist', async () => {
    const { service } = makeService();
    expect(rejected(await service.get('ghost'))).toMatchObject({
      code: 404,
      errorType: 'ResourceNotFoundException',
      message: "No shadow exists with name: 'ghost'",
    });
    expect(rejected(await service.delete('ghost', 'cfg')).message).toBe("No shadow exists with name: 'cfg'");
  });

  it('answers 500 and changes nothing when the shadow cannot be written', async () => {
    const { service, dataDir, logs } = makeService();
    ok(await service.update('dev-1', body({ state: { reported: { a: 1 } } })));
    // Put a plain file where the shadows directory was: every write now fails for real.
    rmSync(path.join(dataDir, 'shadows'), { recursive: true });
    writeFileSync(path.join(dataDir, 'shadows'), 'not a directory');
    const rejection = rejected(await service.update('dev-1', body({ state: { reported: { a: 2 } } })));
    expect(rejection).toMatchObject({ code: 500, message: 'Internal service failure' });
    expect(ok(await service.get('dev-1'))).toMatchObject({ version: 1, state: { reported: { a: 1 } } });
    expect(logs.some((l) => l.includes('cannot write'))).toBe(true);
  });
});

describe('named shadows', () => {
  it('keeps named shadows apart from the classic one and from each other, and lists them', async () => {
    const { service, published } = makeService();
    ok(await service.update('dev-1', body({ state: { reported: { classic: true } } })));
    ok(await service.update('dev-1', body({ state: { reported: { cfg: 1 } } }), 'config'));
    ok(await service.update('dev-1', body({ state: { reported: { fw: '1.0' } } }), 'firmware'));
    expect(ok(await service.get('dev-1', 'config'))).toMatchObject({
      state: { reported: { cfg: 1 } },
      version: 1,
    });
    expect(ok(await service.get('dev-1')).state.reported).toEqual({ classic: true });
    expect(ok(await service.listNamedShadows('dev-1')).results).toEqual(['config', 'firmware']);
    const page = ok(await service.listNamedShadows('dev-1', { pageSize: 1 }));
    expect(page.results).toEqual(['config']);
    expect(
      ok(await service.listNamedShadows('dev-1', { pageSize: 1, nextToken: page.nextToken ?? '' })).results,
    ).toEqual(['firmware']);
    ok(await service.delete('dev-1', 'config'));
    expect(ok(await service.listNamedShadows('dev-1')).results).toEqual(['firmware']);
    await service.idle();
    expect(published.map((p) => p.topic)).toContain('$aws/things/dev-1/shadow/name/config/delete/accepted');
    expect(published.map((p) => p.topic)).toContain(
      '$aws/things/dev-1/shadow/name/firmware/update/documents',
    );
  });
});

describe('persistence', () => {
  it('finds classic, named and deleted shadows again in a new instance on the same data dir', async () => {
    const first = makeService();
    ok(
      await first.service.update(
        'dev:1',
        body({ state: { desired: { a: [1, 2] }, reported: { b: { c: 'x' } } } }),
      ),
    );
    ok(await first.service.update('dev:1', body({ state: { reported: { n: 1 } } }), 'named'));
    ok(await first.service.update('dev-2', body({ state: { reported: { gone: true } } })));
    ok(await first.service.update('dev-2', body({ state: { reported: { gone: false } } })));
    ok(await first.service.delete('dev-2'));
    const before = ok(await first.service.get('dev:1'));

    const second = makeService({ dataDir: first.dataDir });
    expect(ok(await second.service.get('dev:1'))).toEqual(before);
    expect(ok(await second.service.get('dev:1', 'named')).state.reported).toEqual({ n: 1 });
    expect(rejected(await second.service.get('dev-2')).code).toBe(404);
    expect(
      ok(await second.service.update('dev-2', body({ state: { reported: { back: true } } }))).version,
    ).toBe(3);
    // One file per thing, no temp files left behind, and ':' never reaches a file name.
    expect(readdirSync(path.join(first.dataDir, 'shadows')).sort()).toEqual(['dev%3A1.json', 'dev-2.json']);
  });

  it('refuses to start on a shadow file it cannot read, rather than lose shadows', () => {
    const dataDir = tempDataDir('shadow-bad-');
    mkdirSync(path.join(dataDir, 'shadows'));
    writeFileSync(path.join(dataDir, 'shadows', 'x.json'), '{"thingName":"x","named":[{"version":"no"}]}');
    expect(() => new ShadowService({ dataDir })).toThrow(/cannot read .*x\.json/);
  });
});

describe('MQTT requests', () => {
  it('answers update, get and delete on their accepted topics, with the client token', async () => {
    const { service, published } = makeService();
    expect(
      await service.handleMqtt('$aws/things/dev-1/shadow/update', body({ state: { reported: { a: 1 } } })),
    ).toBe(true);
    await service.handleMqtt('$aws/things/dev-1/shadow/get', body({ clientToken: 'g1' }));
    await service.handleMqtt('$aws/things/dev-1/shadow/delete', Buffer.alloc(0));
    await service.idle();
    expect(published.map((p) => p.topic)).toEqual([
      '$aws/things/dev-1/shadow/update/accepted',
      '$aws/things/dev-1/shadow/update/documents',
      '$aws/things/dev-1/shadow/get/accepted',
      '$aws/things/dev-1/shadow/delete/accepted',
    ]);
    expect(published[2]?.body).toEqual({
      state: { reported: { a: 1 } },
      metadata: { reported: { a: { timestamp: T0 } } },
      version: 1,
      timestamp: T0,
      clientToken: 'g1',
    });
    expect(published[3]?.body).toEqual({ version: 1, timestamp: T0 });
  });

  it('answers refusals on the rejected topics with the error response document', async () => {
    const { service, published, logs } = makeService();
    await service.handleMqtt('$aws/things/dev-1/shadow/name/cfg/update', Buffer.from('nope'));
    await service.handleMqtt('$aws/things/dev-1/shadow/get', body({ clientToken: 'g2' }));
    await service.handleMqtt('$aws/things/dev-1/shadow/delete', Buffer.alloc(0));
    await service.idle();
    expect(published).toEqual([
      {
        topic: '$aws/things/dev-1/shadow/name/cfg/update/rejected',
        body: { code: 400, message: 'Invalid JSON', timestamp: T0 },
      },
      {
        topic: '$aws/things/dev-1/shadow/get/rejected',
        body: { code: 404, message: "No shadow exists with name: 'dev-1'", timestamp: T0, clientToken: 'g2' },
      },
      {
        topic: '$aws/things/dev-1/shadow/delete/rejected',
        body: { code: 404, message: "No shadow exists with name: 'dev-1'", timestamp: T0 },
      },
    ]);
    expect(
      logs.some((l) => l.includes("shadow update of 'dev-1' (shadow 'cfg') rejected: 400 Invalid JSON")),
    ).toBe(true);
  });

  it('ignores topics that are not shadow requests', async () => {
    const { service, published } = makeService();
    expect(await service.handleMqtt('$aws/things/dev-1/shadow/update/accepted', body({}))).toBe(false);
    expect(await service.handleMqtt('devices/dev-1/messages/events', body({}))).toBe(false);
    await service.idle();
    expect(published).toEqual([]);
  });

  it('publishes in request order per thing', async () => {
    const { service, published } = makeService();
    await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        service.handleMqtt('$aws/things/dev-1/shadow/update', body({ state: { reported: { i } } })),
      ),
    );
    await service.idle();
    const versions = published.filter((p) => p.topic.endsWith('/update/accepted')).map((p) => p.body.version);
    expect(versions).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });
});

describe('the data plane with @aws-sdk/client-iot-data-plane', () => {
  let server: RunningServer;
  let client: IoTDataPlaneClient;
  let service: ShadowService;
  const published: string[] = [];

  beforeAll(async () => {
    service = new ShadowService({
      dataDir: tempDataDir('shadow-dp-'),
      log: () => {},
      publish: async (topic) => {
        published.push(topic);
      },
    });
    server = await startDataPlane('127.0.0.1', 0, {
      publish: async () => {},
      disconnect: () => false,
      retainedTopics: () => [],
      maxMessageBytes: 128 * 1024,
      log: () => {},
      shadows: service,
    });
    client = localIoTDataPlaneClient(server.url);
  });
  afterEach(() => {
    published.length = 0;
  });
  afterAll(async () => {
    client.destroy();
    await server.close();
  });

  const json = (payload: Uint8Array | undefined) => JSON.parse(Buffer.from(payload ?? []).toString());

  it('updates, gets and deletes a classic shadow, and publishes as an MQTT update would', async () => {
    const updated = await client.send(
      new UpdateThingShadowCommand({
        thingName: 'sdk-1',
        payload: body({ state: { desired: { fan: 'on' } }, clientToken: 'sdk' }),
      }),
    );
    expect(json(updated.payload)).toMatchObject({
      state: { desired: { fan: 'on' } },
      version: 1,
      clientToken: 'sdk',
    });
    const got = await client.send(new GetThingShadowCommand({ thingName: 'sdk-1' }));
    expect(json(got.payload)).toMatchObject({
      state: { desired: { fan: 'on' }, delta: { fan: 'on' } },
      version: 1,
    });
    const deleted = await client.send(new DeleteThingShadowCommand({ thingName: 'sdk-1' }));
    expect(json(deleted.payload)).toMatchObject({ version: 1 });
    await service.idle();
    expect(published).toEqual([
      '$aws/things/sdk-1/shadow/update/accepted',
      '$aws/things/sdk-1/shadow/update/delta',
      '$aws/things/sdk-1/shadow/update/documents',
      '$aws/things/sdk-1/shadow/delete/accepted',
    ]);
  });

  it('maps refusals to the SDK’s exceptions', async () => {
    await expect(client.send(new GetThingShadowCommand({ thingName: 'sdk-none' }))).rejects.toBeInstanceOf(
      ResourceNotFoundException,
    );
    await expect(client.send(new DeleteThingShadowCommand({ thingName: 'sdk-none' }))).rejects.toBeInstanceOf(
      ResourceNotFoundException,
    );
    await client.send(
      new UpdateThingShadowCommand({ thingName: 'sdk-2', payload: body({ state: { reported: { a: 1 } } }) }),
    );
    const conflict = client.send(
      new UpdateThingShadowCommand({
        thingName: 'sdk-2',
        payload: body({ state: { reported: { a: 2 } }, version: 7 }),
      }),
    );
    await expect(conflict).rejects.toBeInstanceOf(ConflictException);
    await expect(conflict).rejects.toMatchObject({
      message: 'Version conflict',
      $metadata: { httpStatusCode: 409 },
    });
    await expect(
      client.send(new UpdateThingShadowCommand({ thingName: 'sdk-2', payload: Buffer.from('{') })),
    ).rejects.toBeInstanceOf(InvalidRequestException);
    await expect(
      client.send(
        new UpdateThingShadowCommand({
          thingName: 'sdk-2',
          payload: body({ state: { reported: { big: 'x'.repeat(MAX_SHADOW_STATE_BYTES) } } }),
        }),
      ),
    ).rejects.toBeInstanceOf(RequestEntityTooLargeException);
    await expect(
      client.send(new UpdateThingShadowCommand({ thingName: 'sdk-2', payload: Buffer.from([0x7b, 0xfe]) })),
    ).rejects.toBeInstanceOf(UnsupportedDocumentEncodingException);
  });

  it('serves named shadows (?name=) and lists them', async () => {
    await client.send(
      new UpdateThingShadowCommand({
        thingName: 'sdk-3',
        shadowName: 'config',
        payload: body({ state: { desired: { rate: 5 } } }),
      }),
    );
    const got = await client.send(new GetThingShadowCommand({ thingName: 'sdk-3', shadowName: 'config' }));
    expect(json(got.payload)).toMatchObject({ state: { desired: { rate: 5 } } });
    await expect(client.send(new GetThingShadowCommand({ thingName: 'sdk-3' }))).rejects.toBeInstanceOf(
      ResourceNotFoundException,
    );
    const listed = await client.send(new ListNamedShadowsForThingCommand({ thingName: 'sdk-3' }));
    expect(listed.results).toEqual(['config']);
    await service.idle();
    expect(published).toContain('$aws/things/sdk-3/shadow/name/config/update/delta');
  });
});
