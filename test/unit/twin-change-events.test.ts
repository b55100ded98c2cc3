import { describe, expect, it } from 'vitest';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import { MemoryShadowStore, MemoryTagsStore } from '../../functions/adapters/twin-memory.ts';
import {
  buildShadowChangeEnvelope,
  buildTwinChangeEnvelope,
  parseIngestRecord,
  type ShadowDocumentsRecord,
  type TwinChangeRecord,
} from '../../functions/core/d2c/events.ts';
import { routeBatch } from '../../functions/core/d2c/router.ts';
import { IngestTwinChangeEvents, type TwinChange } from '../../functions/core/d2c/twin-change-events.ts';
import { HubError } from '../../functions/core/errors.ts';
import { routingConfigSchema } from '../../functions/core/routing/config.ts';
import { compileRouting } from '../../functions/core/routing/table.ts';
import { TwinService } from '../../functions/core/twins/service.ts';
import type { JsonObject } from '../../functions/core/twins/twin.ts';
import { FakeSink, MemoryDeadLetters, MemoryLog } from './fakes.ts';

/** Twin change events: the envelopes built from shadow updates and tags changes, and the tags change writer. */

const HUB = 'twin-hub';
const UPDATED = 1_893_456_000; // epoch seconds of the shadow update
const ENQUEUED = 1_893_456_000_250;

type Sections = { desired?: JsonObject | null; reported?: JsonObject | null };

function documents(
  previous: Sections | undefined,
  current: Sections,
  metadata: ShadowDocumentsRecord['current']['metadata'] = undefined,
): ShadowDocumentsRecord {
  return {
    kind: 'shadowDocuments',
    deviceId: 'dev-1',
    ...(previous === undefined ? {} : { previous: { state: previous, version: 6 } }),
    current: { state: current, version: 7, ...(metadata ? { metadata } : {}) },
    timestamp: UPDATED,
    enqueuedTime: ENQUEUED,
    ingestId: 'shadow-1',
  };
}

/** The event's changed sections without `$metadata`. */
function changes(record: ShadowDocumentsRecord) {
  const envelope = buildShadowChangeEnvelope(parseIngestRecord(record).record as ShadowDocumentsRecord, HUB);
  const body = envelope?.body as { properties: Record<string, JsonObject> } | undefined;
  if (body === undefined) return undefined;
  return Object.fromEntries(
    Object.entries(body.properties).map(([section, value]) => {
      const { $metadata: _m, ...rest } = value;
      return [section, rest];
    }),
  );
}

describe('twin change events from shadow updates', () => {
  it('reports what changed, with IoT Hub properties, source and schema', () => {
    const envelope = buildShadowChangeEnvelope(
      documents(
        { desired: { mode: 'eco', fan: 1 }, reported: { temp: 20 } },
        { desired: { mode: 'boost', fan: 1 }, reported: { temp: 20 } },
        { desired: { mode: { timestamp: UPDATED }, fan: { timestamp: UPDATED - 100 } } },
      ),
      HUB,
    );
    expect(envelope).toEqual({
      version: 1,
      messageId: 'shadow-1',
      deviceId: 'dev-1',
      enqueuedTime: new Date(ENQUEUED).toISOString(),
      systemProperties: {
        'message-id': 'shadow-1',
        'content-type': 'application/json',
        'content-encoding': 'utf-8',
        'iothub-connection-device-id': 'dev-1',
        'iothub-enqueuedtime': new Date(ENQUEUED).toISOString(),
        'iothub-message-source': 'twinChangeEvents',
      },
      properties: {
        hubName: HUB,
        deviceId: 'dev-1',
        opType: 'updateTwin',
        operationTimestamp: new Date(UPDATED * 1000).toISOString(),
        'iothub-message-schema': 'twinChangeNotification',
      },
      bodyEncoding: 'json',
      body: {
        version: 7,
        properties: {
          desired: {
            mode: 'boost',
            $metadata: {
              $lastUpdated: new Date(UPDATED * 1000).toISOString(),
              mode: { $lastUpdated: new Date(UPDATED * 1000).toISOString() },
            },
            $version: 7,
          },
        },
      },
    });
  });

  it('reports nested changes down to the changed keys, null for removed keys, arrays whole', () => {
    expect(
      changes(
        documents(
          { reported: { net: { ip: '10.0.0.1', rssi: -70 }, gone: 1, list: [1, 2], same: 'x' } },
          {
            reported: { net: { ip: '10.0.0.1', rssi: -60 }, list: [1, 2, 3], same: 'x', added: { a: true } },
          },
        ),
      ),
    ).toEqual({
      reported: { net: { rssi: -60 }, gone: null, list: [1, 2, 3], added: { a: true }, $version: 7 },
    });
  });

  it('reports a nested object that became empty or a primitive, and a primitive that became an object', () => {
    expect(
      changes(
        documents(
          { desired: { a: { b: 1 }, c: { d: 1 }, e: 5 } },
          { desired: { a: {}, c: 'flat', e: { f: 6 } } },
        ),
      ),
    ).toEqual({ desired: { a: { b: null }, c: 'flat', e: { f: 6 }, $version: 7 } });
  });

  it('reports both sections when an update changed both', () => {
    expect(
      changes(
        documents({ desired: { x: 1 }, reported: { y: 1 } }, { desired: { x: 2 }, reported: { y: 2 } }),
      ),
    ).toEqual({ desired: { x: 2, $version: 7 }, reported: { y: 2, $version: 7 } });
  });

  it('reports every key of a shadow the update created, and every key of a section it removed', () => {
    expect(changes(documents(undefined, { reported: { temp: 21 } }))).toEqual({
      reported: { temp: 21, $version: 7 },
    });
    expect(changes({ ...documents(undefined, { desired: { a: 1 } }), previous: null })).toEqual({
      desired: { a: 1, $version: 7 },
    });
    // `"desired": null` in an update removes the section: every key of it is reported removed.
    expect(changes(documents({ desired: { a: 1, b: { c: 2 } } }, { desired: null }))).toEqual({
      desired: { a: null, b: null, $version: 7 },
    });
  });

  it('emits nothing for an update that changed neither section (a new version only)', () => {
    const same = { desired: { a: 1 }, reported: { b: [1, { c: 2 }] } };
    expect(buildShadowChangeEnvelope(documents(same, structuredClone(same)), HUB)).toBeUndefined();
    expect(buildShadowChangeEnvelope(documents({}, {}), HUB)).toBeUndefined();
  });

  it('dates removed keys, which have no metadata any more, at the update', () => {
    const envelope = buildShadowChangeEnvelope(documents({ reported: { gone: 1 } }, { reported: {} }), HUB);
    const body = envelope?.body as { properties: { reported: JsonObject } } | undefined;
    const reported = body?.properties.reported;
    expect(reported?.$metadata).toEqual({
      $lastUpdated: new Date(UPDATED * 1000).toISOString(),
      gone: { $lastUpdated: new Date(UPDATED * 1000).toISOString() },
    });
  });

  it('takes the rule time as the operation time when the document has no timestamp', () => {
    const { timestamp: _t, ...record } = documents({}, { reported: { a: 1 } });
    const envelope = buildShadowChangeEnvelope(record, HUB);
    expect(envelope?.properties.operationTimestamp).toBe(new Date(ENQUEUED).toISOString());
  });
});

describe('twin change events from tags changes', () => {
  const record = (overrides: Partial<TwinChangeRecord> = {}): TwinChangeRecord => ({
    kind: 'twinChange',
    opType: 'updateTwin',
    deviceId: 'dev-1',
    operationTime: UPDATED * 1000,
    version: 9,
    tags: { floor: 2, old: null },
    enqueuedTime: ENQUEUED,
    ingestId: 'tags-1',
    ...overrides,
  });

  it('carries the tags patch of an update, with null for removed tags', () => {
    const envelope = buildTwinChangeEnvelope(record(), HUB);
    expect(envelope.body).toEqual({ version: 9, tags: { floor: 2, old: null } });
    expect(envelope.properties).toEqual({
      hubName: HUB,
      deviceId: 'dev-1',
      opType: 'updateTwin',
      operationTimestamp: new Date(UPDATED * 1000).toISOString(),
      'iothub-message-schema': 'twinChangeNotification',
    });
    expect(envelope.systemProperties['iothub-message-source']).toBe('twinChangeEvents');
    expect(envelope.messageId).toBe('tags-1');
  });

  it('carries the device id and all the new tags of a replace', () => {
    const envelope = buildTwinChangeEnvelope(record({ opType: 'replaceTwin', tags: { floor: 3 } }), HUB);
    expect(envelope.properties.opType).toBe('replaceTwin');
    expect(envelope.body).toEqual({ deviceId: 'dev-1', version: 9, tags: { floor: 3 } });
  });
});

describe('twin change records on the ingest stream', () => {
  it('reads both kinds, ignoring fields the router does not use', () => {
    const shadow = { ...documents({}, { reported: { a: 1 } }), clientToken: 'ct-1', extra: true };
    expect(parseIngestRecord(shadow)).toMatchObject({
      kind: 'shadowDocuments',
      record: { deviceId: 'dev-1' },
    });
    expect(parseIngestRecord({ ...shadow, previous: null }).kind).toBe('shadowDocuments');
    const tags = {
      kind: 'twinChange',
      opType: 'replaceTwin',
      deviceId: 'dev-1',
      operationTime: 1,
      version: 1,
      tags: {},
      enqueuedTime: 2,
      ingestId: 'i',
    };
    expect(parseIngestRecord(tags).kind).toBe('twinChange');
  });

  it.each([
    [{ ...documents({}, {}), current: undefined }, 'InvalidShadowDocumentsRecord', /current/],
    [{ ...documents({}, {}), deviceId: '' }, 'InvalidShadowDocumentsRecord', /deviceId/],
    [
      { ...documents({}, { desired: { a: 1 } }), current: { state: { desired: 'x' }, version: 1 } },
      'InvalidShadowDocumentsRecord',
      /current\.state\.desired/,
    ],
    [
      {
        kind: 'twinChange',
        opType: 'patchTwin',
        deviceId: 'd',
        operationTime: 1,
        version: 1,
        tags: {},
        enqueuedTime: 1,
        ingestId: 'i',
      },
      'InvalidTwinChangeRecord',
      /opType/,
    ],
    [
      {
        kind: 'twinChange',
        opType: 'updateTwin',
        deviceId: 'd',
        operationTime: 1,
        version: 1,
        tags: [],
        enqueuedTime: 1,
        ingestId: 'i',
      },
      'InvalidTwinChangeRecord',
      /tags/,
    ],
  ])('refuses a bad record with a code naming the field (%#)', (record, code, field) => {
    let error: unknown;
    try {
      parseIngestRecord(record);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(HubError);
    expect((error as HubError).code).toBe(code);
    expect((error as HubError).message).toMatch(field);
  });
});

describe('IngestTwinChangeEvents', () => {
  const change = (
    deviceId: string,
    tags: JsonObject,
    opType: TwinChange['opType'] = 'updateTwin',
  ): TwinChange => ({
    deviceId,
    opType,
    at: new Date(UPDATED * 1000),
    version: 4,
    tags,
  });

  it('writes one record per change, keyed by device, one record per device per call, in order', async () => {
    const sink = new FakeSink();
    let n = 0;
    const events = new IngestTwinChangeEvents({
      sink,
      log: new MemoryLog(),
      newId: () => `id-${++n}`,
      now: () => new Date(ENQUEUED),
    });
    await events.emit([
      change('a', { floor: 1 }),
      change('b', { floor: 2 }),
      change('a', { floor: null }, 'replaceTwin'),
    ]);
    expect(sink.calls.map((c) => c.map((e) => e.partitionKey))).toEqual([['a', 'b'], ['a']]);
    const records = sink.written.map((e) => JSON.parse(Buffer.from(e.data).toString('utf8')));
    expect(records[0]).toEqual({
      kind: 'twinChange',
      opType: 'updateTwin',
      deviceId: 'a',
      operationTime: UPDATED * 1000,
      version: 4,
      tags: { floor: 1 },
      enqueuedTime: ENQUEUED,
      ingestId: 'id-1',
    });
    expect(sink.written.map((e) => e.id)).toEqual(['id-1', 'id-2', 'id-3']);
    // What the writer puts on the stream is what the router reads.
    expect(records.map((r) => parseIngestRecord(r).kind)).toEqual(Array(3).fill('twinChange'));
  });

  it('emits nothing for an update with an empty tags patch, but a replace that clears the tags', async () => {
    const sink = new FakeSink();
    const events = new IngestTwinChangeEvents({ sink, log: new MemoryLog() });
    await events.emit([change('a', {})]);
    expect(sink.calls).toHaveLength(0);
    await events.emit([change('a', {}, 'replaceTwin')]);
    expect(sink.written).toHaveLength(1);
  });

  it('gives up after its attempts without throwing and logs the full records for replay', async () => {
    const sink = new FakeSink(() => false);
    const log = new MemoryLog();
    const events = new IngestTwinChangeEvents({ sink, log, sleep: async () => {}, maxAttempts: 3 });
    await expect(events.emit([change('a', { floor: 1 })])).resolves.toBeUndefined();
    expect(sink.calls).toHaveLength(3);
    const lost = log.entries.find((l) => l.message === 'twin change event lost');
    expect(lost?.level).toBe('error');
    expect(lost?.context?.records).toEqual([expect.objectContaining({ deviceId: 'a', tags: { floor: 1 } })]);
  });
});

describe("the twin service's tags changes as twin change events", () => {
  it('reaches the router as one event per tags write, with the twin version right after that write', async () => {
    const registry = new MemoryDeviceRegistry();
    await registry.create({ deviceId: 'dev-1' });
    const ingest = new FakeSink();
    const events = new IngestTwinChangeEvents({ sink: ingest, log: new MemoryLog() });
    const twins = new TwinService({
      registry,
      tags: new MemoryTagsStore(),
      shadows: new MemoryShadowStore(),
      onTagsChanged: (change) => events.emit([change]),
    });
    const first = await twins.update('dev-1', { tags: { line: 'A', floor: 1 } });
    await twins.update('dev-1', { properties: { desired: { mode: 'eco' } } });
    const replaced = await twins.replace('dev-1', { tags: { line: 'B' } });

    const builtIn = new FakeSink();
    await routeBatch(
      ingest.written.map((e, i) => ({ sequenceNumber: String(i), data: e.data })),
      {
        builtIn,
        routing: compileRouting(
          routingConfigSchema.parse({
            routes: [{ name: 't', source: 'TwinChangeEvents', endpointNames: ['events'] }],
          }),
          HUB,
        ),
        hubName: HUB,
        deadLetters: new MemoryDeadLetters(),
        log: new MemoryLog(),
        limits: { maxMessageBytes: 256 * 1024 },
      },
    );
    // The desired write is the shadow's to report: two tags events, none for desired properties. A
    // tags event is emitted as soon as its write stands, before the call's desired write: the replace
    // also cleared `mode` (one more shadow version), so its event carries the version before that.
    expect(builtIn.envelopes.map((e) => [e.properties.opType, e.body])).toEqual([
      ['updateTwin', { version: first.version, tags: { line: 'A', floor: 1 } }],
      ['replaceTwin', { deviceId: 'dev-1', version: replaced.version - 1, tags: { line: 'B' } }],
    ]);
  });
});
