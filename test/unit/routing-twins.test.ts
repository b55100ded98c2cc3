import { describe, expect, it } from 'vitest';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import { MemoryShadowStore, MemoryTagsStore } from '../../functions/adapters/twin-memory.ts';
import type { IngestRecord } from '../../functions/core/d2c/envelope.ts';
import type { ShadowDocumentsRecord, TwinChangeRecord } from '../../functions/core/d2c/events.ts';
import { type RouterDeps, routeBatch, type SourceRecord } from '../../functions/core/d2c/router.ts';
import { HubError, TransientError } from '../../functions/core/errors.ts';
import { type RoutingConfig, routingConfigSchema } from '../../functions/core/routing/config.ts';
import { compileRouting } from '../../functions/core/routing/table.ts';
import type { JsonObject, RoutingTwin, ShadowDocument } from '../../functions/core/twins/twin.ts';
import { RegistryTwinReader, type TwinReader } from '../../functions/core/twins/twin-reader.ts';
import { FakeSink, MemoryDeadLetters, MemoryLog } from './fakes.ts';

/**
 * The router with `$twin` route conditions and enrichments, over the real twin reader and in-memory
 * registry, tags and shadow stores; and twin change events (tags and shadow records) routed by source.
 */

const NOW = Date.parse('2030-01-02T03:04:05.000Z');
const HUB = 'twin-hub';

/** A hub's twin stores, with devices whose twins a test sets. */
class Twins {
  readonly registry = new MemoryDeviceRegistry();
  readonly tags = new MemoryTagsStore();
  readonly shadows = new MemoryShadowStore(() => NOW / 1000);

  async device(
    deviceId: string,
    twin: { tags?: JsonObject; desired?: JsonObject; reported?: JsonObject } = {},
  ): Promise<void> {
    const device = await this.registry.create({ deviceId });
    if (twin.tags) {
      await this.tags.put(
        deviceId,
        {
          tags: twin.tags,
          version: 1,
          generationId: device.generationId,
          updatedTime: new Date(NOW).toISOString(),
        },
        undefined,
      );
    }
    if (twin.desired || twin.reported) {
      await this.shadows.update(deviceId, {
        ...(twin.desired ? { desired: twin.desired } : {}),
        ...(twin.reported ? { reported: twin.reported } : {}),
      });
    }
  }

  reader(): RegistryTwinReader {
    return new RegistryTwinReader({ registry: this.registry, tags: this.tags, shadows: this.shadows });
  }
}

/** Records every read and how many ran at once; `delayMs` keeps reads in flight. */
class CountingReader implements TwinReader {
  readonly reads: string[] = [];
  inFlight = 0;
  maxInFlight = 0;
  constructor(
    private readonly inner: TwinReader,
    private readonly delayMs = 0,
  ) {}
  async read(deviceId: string): Promise<RoutingTwin | undefined> {
    this.reads.push(deviceId);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
      return await this.inner.read(deviceId);
    } finally {
      this.inFlight--;
    }
  }
}

/** A shadow store whose reads fail for some devices, as the data plane does when throttled. */
class FailingShadows extends MemoryShadowStore {
  constructor(readonly failing: Set<string>) {
    super(() => NOW / 1000);
  }
  override async get(thingName: string): Promise<ShadowDocument | undefined> {
    if (this.failing.has(thingName)) {
      throw new TransientError('ShadowUnavailable', `the shadow service did not answer for '${thingName}'`);
    }
    return super.get(thingName);
  }
}

let seq = 0;
const nextSeq = () => String(49_700_000_000_000_000_000 + seq++).padStart(24, '0');
const source = (json: unknown): SourceRecord => ({
  sequenceNumber: nextSeq(),
  data: Buffer.from(JSON.stringify(json)),
});

/** A telemetry record of `device` with message id `mid` and application properties `props`. */
function telemetry(device: string, mid: string, props: Record<string, string> = {}): SourceRecord {
  const bag = [`$.mid=${mid}`, '$.ct=application%2Fjson', '$.ce=utf-8']
    .concat(Object.entries(props).map(([k, v]) => `${k}=${encodeURIComponent(v)}`))
    .join('&');
  const record: IngestRecord = {
    topic: `devices/${device}/messages/events/${bag}`,
    clientId: device,
    principal: `sas:${device}`,
    enqueuedTime: NOW,
    ingestId: mid,
    body: Buffer.from(`{"n":"${mid}"}`).toString('base64'),
  };
  return source(record);
}

function presence(device: string, ingestId: string): SourceRecord {
  return source({
    kind: 'connectionState',
    clientId: device,
    eventType: 'connected',
    timestamp: NOW,
    versionNumber: 1,
    enqueuedTime: NOW,
    ingestId,
  });
}

function tagsChange(device: string, ingestId: string, tags: JsonObject): SourceRecord {
  const record: TwinChangeRecord = {
    kind: 'twinChange',
    opType: 'updateTwin',
    deviceId: device,
    operationTime: NOW,
    version: 2,
    tags,
    enqueuedTime: NOW,
    ingestId,
  };
  return source(record);
}

function shadowUpdate(
  device: string,
  ingestId: string,
  previous: { desired?: JsonObject; reported?: JsonObject },
  current: { desired?: JsonObject; reported?: JsonObject },
): SourceRecord {
  const record: ShadowDocumentsRecord = {
    kind: 'shadowDocuments',
    deviceId: device,
    previous: { state: previous, version: 4 },
    current: { state: current, version: 5 },
    timestamp: NOW / 1000,
    enqueuedTime: NOW,
    ingestId,
  };
  return source(record);
}

function router(config: unknown, twins?: TwinReader, endpointNames: readonly string[] = []) {
  const routing: RoutingConfig = routingConfigSchema.parse(config);
  const builtIn = new FakeSink();
  const endpoints = Object.fromEntries(endpointNames.map((name) => [name, new FakeSink()]));
  const deadLetters = new MemoryDeadLetters();
  const log = new MemoryLog();
  const deps: RouterDeps = {
    builtIn,
    endpoints,
    routing: compileRouting(routing, HUB),
    hubName: HUB,
    deadLetters,
    log,
    limits: { maxMessageBytes: 256 * 1024 },
    sleep: async () => {},
    now: () => new Date(NOW),
    ...(twins ? { twins } : {}),
  };
  const sink = (name: string): FakeSink => {
    const found = endpoints[name];
    if (!found) throw new Error(`no endpoint ${name}`);
    return found;
  };
  return { deps, builtIn, sink, deadLetters, log };
}

const kinesis = (name: string) => ({ name, type: 'kinesis' });

describe('routing on $twin conditions', () => {
  it('routes by tags, desired and reported properties to different endpoints', async () => {
    const twins = new Twins();
    await twins.device('a', { tags: { floor: 2 }, reported: { temp: 35 } });
    await twins.device('b', { tags: { floor: 1 }, desired: { mode: 'eco' } });
    await twins.device('c');
    const { deps, builtIn, sink } = router(
      {
        endpoints: [kinesis('floor2'), kinesis('eco'), kinesis('hot')],
        routes: [
          { name: 'floor2', condition: '$twin.tags.floor = 2', endpointNames: ['floor2'] },
          { name: 'eco', condition: "$twin.properties.desired.mode = 'eco'", endpointNames: ['eco'] },
          { name: 'hot', condition: '$twin.properties.reported.temp > 30', endpointNames: ['hot'] },
        ],
      },
      twins.reader(),
      ['floor2', 'eco', 'hot'],
    );
    const result = await routeBatch(
      [telemetry('a', 'a-0'), telemetry('b', 'b-0'), telemetry('c', 'c-0')],
      deps,
    );
    expect(result).toEqual({ delivered: 3, deadLettered: 0 });
    expect(sink('floor2').writtenIds).toEqual(['a-0']);
    expect(sink('hot').writtenIds).toEqual(['a-0']);
    expect(sink('eco').writtenIds).toEqual(['b-0']);
    // c's twin matches no route: the fallback route takes it.
    expect(builtIn.writtenIds).toEqual(['c-0']);
  });

  it("reads each device's twin once per batch, however many of its messages need it", async () => {
    const twins = new Twins();
    for (const d of ['a', 'b', 'c']) await twins.device(d, { tags: { floor: 2 } });
    const reader = new CountingReader(twins.reader());
    const { deps, builtIn } = router(
      { routes: [{ name: 'floor2', condition: '$twin.tags.floor = 2', endpointNames: ['events'] }] },
      reader,
    );
    const records = [0, 1, 2, 3, 4].flatMap((i) => ['a', 'b', 'c'].map((d) => telemetry(d, `${d}-${i}`)));
    const result = await routeBatch(records, deps);
    expect(result.delivered).toBe(15);
    expect([...reader.reads].sort()).toEqual(['a', 'b', 'c']);
    expect(builtIn.idsOf('b')).toEqual(['b-0', 'b-1', 'b-2', 'b-3', 'b-4']);
  });

  it('reads no twin for messages whose routes and endpoints do not read $twin', async () => {
    const twins = new Twins();
    await twins.device('a', { tags: { floor: 2 } });
    const reader = new CountingReader(twins.reader());
    const { deps, builtIn } = router(
      {
        endpoints: [kinesis('enriched')],
        routes: [
          // Twin conditions on another source, and a twin enrichment on an endpoint these messages skip.
          {
            name: 'twins',
            source: 'TwinChangeEvents',
            condition: '$twin.tags.floor = 2',
            endpointNames: ['events'],
          },
          { name: 'flagged', condition: "flag = 'on'", endpointNames: ['enriched'] },
        ],
        enrichments: [{ key: 'floor', value: '$twin.tags.floor', endpointNames: ['enriched'] }],
      },
      reader,
      ['enriched'],
    );
    await routeBatch([telemetry('a', 'a-0'), presence('a', 'conn-1'), telemetry('a', 'a-1')], deps);
    expect(reader.reads).toEqual([]);
    expect(builtIn.writtenIds).toEqual(['a-0', 'a-1']);
  });

  it('reads at most twinConcurrency twins at once', async () => {
    const twins = new Twins();
    const devices = Array.from({ length: 12 }, (_, i) => `d${i}`);
    for (const d of devices) await twins.device(d, { tags: { floor: 2 } });
    const reader = new CountingReader(twins.reader(), 5);
    const { deps } = router(
      { routes: [{ name: 'floor2', condition: '$twin.tags.floor = 2', endpointNames: ['events'] }] },
      reader,
    );
    const result = await routeBatch(
      devices.map((d) => telemetry(d, `${d}-0`)),
      { ...deps, twinConcurrency: 3 },
    );
    expect(result.delivered).toBe(12);
    expect(reader.reads).toHaveLength(12);
    expect(reader.maxInFlight).toBe(3);
  });

  it('gives a device that is not registered no twin: $twin references are undefined', async () => {
    const twins = new Twins();
    // A twin left in the stores without a registry entry counts for nothing.
    await twins.shadows.update('ghost', { reported: { temp: 99 } });
    const { deps, builtIn, sink } = router(
      {
        endpoints: [kinesis('hot'), kinesis('untwinned')],
        routes: [
          { name: 'hot', condition: '$twin.properties.reported.temp > 30', endpointNames: ['hot'] },
          { name: 'none', condition: 'NOT IS_DEFINED($twin.tags.floor)', endpointNames: ['untwinned'] },
        ],
      },
      twins.reader(),
      ['hot', 'untwinned'],
    );
    await routeBatch([telemetry('ghost', 'g-0')], deps);
    // A comparison with an undefined value is undefined, so false; IS_DEFINED tells it is missing.
    expect(sink('hot').writtenIds).toEqual([]);
    expect(sink('untwinned').writtenIds).toEqual(['g-0']);
    expect(builtIn.writtenIds).toEqual([]);
  });

  it('ignores tags left by an earlier device with the same id', async () => {
    const twins = new Twins();
    await twins.device('re');
    await twins.tags.put(
      're',
      {
        tags: { floor: 2 },
        version: 3,
        generationId: 'an-earlier-generation',
        updatedTime: '2029-01-01T00:00:00Z',
      },
      undefined,
    );
    const { deps, sink } = router(
      {
        endpoints: [kinesis('floor2')],
        routes: [{ name: 'floor2', condition: '$twin.tags.floor = 2', endpointNames: ['floor2'] }],
      },
      twins.reader(),
      ['floor2'],
    );
    await routeBatch([telemetry('re', 're-0')], deps);
    expect(sink('floor2').writtenIds).toEqual([]);
  });

  it('holds back a device whose twin cannot be read, from its first record that needs it, and retries it in order', async () => {
    const twins = new Twins();
    const failing = new FailingShadows(new Set(['b']));
    for (const d of ['a', 'b', 'c']) await twins.device(d, { tags: { floor: 2 } });
    const reader = new RegistryTwinReader({ registry: twins.registry, tags: twins.tags, shadows: failing });
    const { deps, builtIn, deadLetters, log } = router(
      {
        routes: [
          { name: 'conn', source: 'DeviceConnectionStateEvents', endpointNames: ['events'] },
          { name: 'floor2', condition: '$twin.tags.floor = 2', endpointNames: ['events'] },
        ],
      },
      reader,
    );
    const records = [
      presence('b', 'b-conn'),
      telemetry('a', 'a-0'),
      telemetry('b', 'b-0'),
      telemetry('a', 'a-1'),
      telemetry('b', 'b-1'),
      telemetry('c', 'c-0'),
    ];
    const result = await routeBatch(records, deps);
    expect(result.retryFrom).toBe(records[2]?.sequenceNumber);
    expect(result.twinFailures).toBe(1);
    expect(result.deadLettered).toBe(0);
    // b's connection event needs no twin and comes before: written. Its telemetry: nothing, not even dead-lettered.
    expect(builtIn.idsOf('b')).toEqual(['b-conn']);
    expect(builtIn.idsOf('a')).toEqual(['a-0', 'a-1']);
    expect(builtIn.idsOf('c')).toEqual(['c-0']);
    expect(deadLetters.letters).toEqual([]);
    const warning = log.at('warn').find((l) => /twin read failed/.test(l.message));
    expect(warning?.context).toMatchObject({ deviceId: 'b', code: 'ShadowUnavailable' });

    // The event source retries from b-0; with the shadow service back, b's messages follow in order.
    failing.failing.clear();
    const retry = await routeBatch(records.slice(2), deps);
    expect(retry.retryFrom).toBeUndefined();
    expect(builtIn.idsOf('b')).toEqual(['b-conn', 'b-0', 'b-1']);
  });

  it('holds back a device whose registry read fails too, never routing it as twinless', async () => {
    const twins = new Twins();
    await twins.device('a', { tags: { floor: 2 } });
    const registry = {
      find: async () => {
        throw new TransientError('RegistryUnavailable', 'registry table unavailable: ThrottlingException');
      },
    };
    const reader = new RegistryTwinReader({ registry, tags: twins.tags, shadows: twins.shadows });
    // A route that matches twinless devices would take the message if the failure were read as "no twin".
    const { deps, builtIn } = router(
      {
        routes: [{ name: 'none', condition: 'NOT IS_DEFINED($twin.tags.floor)', endpointNames: ['events'] }],
      },
      reader,
    );
    const records = [telemetry('a', 'a-0')];
    const result = await routeBatch(records, deps);
    expect(result).toMatchObject({ delivered: 0, deadLettered: 0, retryFrom: records[0]?.sequenceNumber });
    expect(builtIn.calls).toHaveLength(0);
  });

  it('refuses to route when the routing reads $twin and the router has no twin reader', async () => {
    const { deps } = router({
      routes: [{ name: 'floor2', condition: '$twin.tags.floor = 2', endpointNames: ['events'] }],
    });
    await expect(routeBatch([telemetry('a', 'a-0')], deps)).rejects.toMatchObject({
      code: 'InvalidConfiguration',
    });
    await expect(routeBatch([telemetry('a', 'a-0')], deps)).rejects.toBeInstanceOf(HubError);
  });
});

describe('$twin enrichments', () => {
  const config = {
    endpoints: [kinesis('enriched')],
    routes: [
      { name: 'flagged', condition: "flag = 'on'", endpointNames: ['enriched'] },
      { name: 'rest', condition: "flag = 'off'", endpointNames: ['events'] },
    ],
    enrichments: [
      { key: 'building', value: '$twin.tags.location.building', endpointNames: ['enriched'] },
      { key: 'mode', value: '$twin.properties.desired.mode', endpointNames: ['enriched'] },
      { key: 'online', value: '$twin.properties.reported.online', endpointNames: ['enriched'] },
      { key: 'location', value: '$twin.tags.location', endpointNames: ['enriched'] },
      { key: 'sensors', value: '$twin.properties.reported.sensors', endpointNames: ['enriched'] },
      { key: 'missing', value: '$twin.tags.nope', endpointNames: ['enriched'] },
      { key: 'first', value: "$twin.properties.reported.sensors[0]['id']", endpointNames: ['enriched'] },
      { key: 'hub', value: '$iothubname', endpointNames: ['enriched', 'events'] },
    ],
  };

  it('stamps twin values on the enriched endpoint: strings as they are, numbers and booleans as JSON text', async () => {
    const twins = new Twins();
    await twins.device('a', {
      tags: { location: { building: 43, room: 'B-503' } },
      desired: { mode: 'eco' },
      reported: { online: true, sensors: [{ id: 's1' }] },
    });
    const { deps, sink, builtIn } = router(config, twins.reader(), ['enriched']);
    await routeBatch([telemetry('a', 'a-0', { flag: 'on' }), telemetry('a', 'a-1', { flag: 'off' })], deps);
    const [enriched] = sink('enriched').envelopes;
    expect(enriched?.properties).toMatchObject({
      flag: 'on',
      building: '43',
      mode: 'eco',
      online: 'true',
      first: 's1',
      hub: HUB,
    });
    // Not on the endpoint without twin enrichments.
    expect(builtIn.envelopes[0]?.properties).toEqual({ flag: 'off', hub: HUB });
  });

  it('stamps the path itself for an object, an array, a missing value, and a device without a twin', async () => {
    const twins = new Twins();
    await twins.device('a', {
      tags: { location: { building: 43 } },
      reported: { sensors: [{ id: 's1' }] },
    });
    const { deps, sink } = router(config, twins.reader(), ['enriched']);
    await routeBatch(
      [telemetry('a', 'a-0', { flag: 'on' }), telemetry('ghost', 'g-0', { flag: 'on' })],
      deps,
    );
    const [a, ghost] = sink('enriched').envelopes;
    expect(a?.properties).toMatchObject({
      location: '$twin.tags.location',
      sensors: '$twin.properties.reported.sensors',
      missing: '$twin.tags.nope',
      mode: '$twin.properties.desired.mode',
    });
    expect(ghost?.properties).toMatchObject({
      building: '$twin.tags.location.building',
      online: '$twin.properties.reported.online',
      hub: HUB,
    });
  });

  it('reads the twin for an enriched endpoint only when a message goes there', async () => {
    const twins = new Twins();
    await twins.device('a');
    await twins.device('b');
    const reader = new CountingReader(twins.reader());
    const { deps } = router(config, reader, ['enriched']);
    await routeBatch(
      [
        telemetry('a', 'a-0', { flag: 'off' }),
        telemetry('b', 'b-0', { flag: 'on' }),
        telemetry('a', 'a-1', { flag: 'off' }),
      ],
      deps,
    );
    expect(reader.reads).toEqual(['b']);
  });
});

describe('twin change events in the router', () => {
  const twinRoutes = {
    endpoints: [kinesis('twins')],
    routes: [
      { name: 'all', endpointNames: ['events'] },
      { name: 'twin-events', source: 'TwinChangeEvents', endpointNames: ['events'] },
      {
        name: 'reported-only',
        source: 'TwinChangeEvents',
        condition: 'IS_DEFINED($body.properties.reported)',
        endpointNames: ['twins'],
      },
    ],
  };

  it("keeps a device's telemetry, tags changes and shadow changes in order", async () => {
    const { deps, builtIn, sink } = router(twinRoutes, undefined, ['twins']);
    const result = await routeBatch(
      [
        telemetry('a', 't-1'),
        tagsChange('a', 'tags-1', { floor: 3 }),
        shadowUpdate('a', 'shadow-1', { reported: { temp: 20 } }, { reported: { temp: 21 } }),
        telemetry('a', 't-2'),
      ],
      deps,
    );
    expect(result).toEqual({ delivered: 4, deadLettered: 0 });
    expect(builtIn.writtenIds).toEqual(['t-1', 'tags-1', 'shadow-1', 't-2']);
    expect(builtIn.written.map((e) => e.messageSource)).toEqual([
      'Telemetry',
      'twinChangeEvents',
      'twinChangeEvents',
      'Telemetry',
    ]);
    expect(sink('twins').writtenIds).toEqual(['shadow-1']);
    const [, tags, shadow] = builtIn.envelopes;
    expect(tags?.properties).toEqual({
      hubName: HUB,
      deviceId: 'a',
      opType: 'updateTwin',
      operationTimestamp: new Date(NOW).toISOString(),
      'iothub-message-schema': 'twinChangeNotification',
    });
    expect(tags?.body).toEqual({ version: 2, tags: { floor: 3 } });
    expect(shadow?.body).toMatchObject({ version: 5, properties: { reported: { temp: 21, $version: 5 } } });
  });

  it('emits nothing for a shadow update that changed neither desired nor reported properties', async () => {
    const { deps, builtIn } = router(twinRoutes, undefined, ['twins']);
    const same = { desired: { mode: 'eco' }, reported: { temp: 20 } };
    const result = await routeBatch([shadowUpdate('a', 'shadow-1', same, same), telemetry('a', 't-1')], deps);
    expect(result).toEqual({ delivered: 1, deadLettered: 0, unchanged: 1 });
    expect(builtIn.writtenIds).toEqual(['t-1']);
  });

  it('drops twin change events no route takes: the fallback route takes device messages only', async () => {
    const { deps, builtIn } = router({});
    const result = await routeBatch(
      [tagsChange('a', 'tags-1', { floor: 3 }), shadowUpdate('a', 's-1', {}, { desired: { x: 1 } })],
      deps,
    );
    expect(result).toEqual({ delivered: 0, deadLettered: 0, unrouted: 2 });
    expect(builtIn.calls).toHaveLength(0);
  });

  it('evaluates $twin conditions on twin change events with the twin as read at routing time', async () => {
    const twins = new Twins();
    await twins.device('a', { tags: { floor: 3 } });
    const { deps, builtIn } = router(
      {
        routes: [
          {
            name: 'floor3',
            source: 'TwinChangeEvents',
            condition: '$twin.tags.floor = 3',
            endpointNames: ['events'],
          },
        ],
      },
      twins.reader(),
    );
    // The event reports floor 3; the twin already says so, because it is read when routing.
    await routeBatch([tagsChange('a', 'tags-1', { floor: 3 })], deps);
    expect(builtIn.writtenIds).toEqual(['tags-1']);
  });
});
