import type { APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { describe, expect, it } from 'vitest';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import {
  buildConnectionStateEnvelope,
  buildLifecycleEnvelope,
  type ConnectionStateRecord,
  connectionSequenceNumber,
  deviceIdentityBody,
  type LifecycleRecord,
  parseIngestRecord,
} from '../../functions/core/d2c/events.ts';
import { IngestLifecycleEvents, type LifecycleChange } from '../../functions/core/d2c/lifecycle-events.ts';
import { type RouterDeps, routeBatch, type SourceRecord } from '../../functions/core/d2c/router.ts';
import { HubError } from '../../functions/core/errors.ts';
import type { Device } from '../../functions/core/identity/device.ts';
import type { StreamSink } from '../../functions/core/ports.ts';
import { routingConfigSchema } from '../../functions/core/routing/config.ts';
import { compileRouting } from '../../functions/core/routing/table.ts';
import { urlEvent } from '../support/function-url-event.ts';
import { FakeSink, MemoryDeadLetters, MemoryLog } from './fakes.ts';

import '../support/service-api-env.ts';

const { makeHandler } = await import('../../functions/service-api.ts');

const KEY = Buffer.alloc(32, 7).toString('base64');

const device: Device = {
  deviceId: 'dev-1',
  generationId: 'gen-1',
  etag: 'etag-1',
  status: 'enabled',
  statusReason: null,
  statusUpdatedTime: '2030-01-01T00:00:00.000Z',
  connectionState: 'Disconnected',
  connectionStateUpdatedTime: '0001-01-01T00:00:00Z',
  lastActivityTime: '0001-01-01T00:00:00Z',
  cloudToDeviceMessageCount: 0,
  authentication: {
    type: 'sas',
    symmetricKey: { primaryKey: KEY, secondaryKey: KEY },
    x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null },
  },
};

function lifecycle(overrides: Partial<LifecycleRecord> = {}): LifecycleRecord {
  return {
    kind: 'deviceLifecycle',
    opType: 'createDeviceIdentity',
    deviceId: 'dev-1',
    operationTime: Date.parse('2030-01-01T00:00:00.000Z'),
    device: deviceIdentityBody(device),
    enqueuedTime: Date.parse('2030-01-01T00:00:00.250Z'),
    ingestId: 'life-1',
    ...overrides,
  };
}

function presence(overrides: Partial<ConnectionStateRecord> = {}): ConnectionStateRecord {
  return {
    kind: 'connectionState',
    clientId: 'dev-1',
    eventType: 'connected',
    timestamp: Date.parse('2030-01-01T00:00:01.000Z'),
    versionNumber: 3,
    sessionIdentifier: 'session-1',
    enqueuedTime: Date.parse('2030-01-01T00:00:01.020Z'),
    ingestId: 'conn-1',
    ...overrides,
  };
}

function telemetry(id: string, deviceId = 'dev-1') {
  return {
    body: Buffer.from('{"t":1}').toString('base64'),
    topic: `devices/${deviceId}/messages/events/%24.ct=application%2Fjson`,
    clientId: deviceId,
    principal: 'sas:dev-1',
    enqueuedTime: Date.parse('2030-01-01T00:00:02.000Z'),
    ingestId: id,
  };
}

describe('event builders', () => {
  it('builds a createDeviceIdentity envelope with IoT Hub properties and the device without keys', () => {
    const envelope = buildLifecycleEnvelope(lifecycle(), 'my-hub');
    expect(envelope).toEqual({
      version: 1,
      messageId: 'life-1',
      deviceId: 'dev-1',
      enqueuedTime: '2030-01-01T00:00:00.250Z',
      systemProperties: {
        'message-id': 'life-1',
        'content-type': 'application/json',
        'content-encoding': 'utf-8',
        'iothub-connection-device-id': 'dev-1',
        'iothub-enqueuedtime': '2030-01-01T00:00:00.250Z',
        'iothub-message-source': 'deviceLifecycleEvents',
      },
      properties: {
        hubName: 'my-hub',
        deviceId: 'dev-1',
        opType: 'createDeviceIdentity',
        operationTimestamp: '2030-01-01T00:00:00.000Z',
        'iothub-message-schema': 'deviceLifecycleNotification',
      },
      bodyEncoding: 'json',
      body: expect.objectContaining({
        deviceId: 'dev-1',
        generationId: 'gen-1',
        etag: 'etag-1',
        status: 'enabled',
        authentication: {
          type: 'sas',
          x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null },
        },
        capabilities: { iotEdge: false },
      }),
    });
    expect(JSON.stringify(envelope)).not.toContain(KEY);
  });

  it('drops symmetric keys a lifecycle record should never have carried', () => {
    const withKeys = lifecycle({ device: { ...device } as unknown as LifecycleRecord['device'] });
    const envelope = buildLifecycleEnvelope(withKeys, 'hub');
    expect(JSON.stringify(envelope)).not.toContain(KEY);
    expect(envelope.body).toMatchObject({ authentication: { type: 'sas' } });
  });

  it('refuses a lifecycle record whose device is another device', () => {
    const record = lifecycle({ device: { ...deviceIdentityBody(device), deviceId: 'dev-2' } });
    expect(() => buildLifecycleEnvelope(record, 'hub')).toThrow(
      expect.objectContaining({ code: 'DeviceIdMismatch' }),
    );
  });

  it('builds deviceConnected / deviceDisconnected envelopes with a sequence number', () => {
    const connected = buildConnectionStateEnvelope(presence(), 'my-hub');
    expect(connected.properties).toEqual({
      hubName: 'my-hub',
      deviceId: 'dev-1',
      opType: 'deviceConnected',
      operationTimestamp: '2030-01-01T00:00:01.000Z',
      'iothub-message-schema': 'deviceConnectionStateNotification',
    });
    expect(connected.systemProperties).toEqual({
      'message-id': 'conn-1',
      'content-type': 'application/json',
      'content-encoding': 'utf-8',
      'iothub-connection-device-id': 'dev-1',
      'iothub-enqueuedtime': '2030-01-01T00:00:01.020Z',
      'iothub-message-source': 'deviceConnectionStateEvents',
    });
    expect(connected.body).toEqual({ sequenceNumber: connectionSequenceNumber(presence()) });
    const disconnected = buildConnectionStateEnvelope(
      presence({
        eventType: 'disconnected',
        disconnectReason: 'CLIENT_INITIATED_DISCONNECT',
        ingestId: 'c2',
      }),
      'my-hub',
    );
    expect(disconnected.properties.opType).toBe('deviceDisconnected');
    expect(disconnected.messageId).toBe('c2');
  });

  it('makes sequence numbers 64 hex digits that grow per device as strings', () => {
    const t = Date.parse('2030-01-01T00:00:01.000Z');
    const sequence = [
      presence({ timestamp: t, versionNumber: 1, eventType: 'connected' }),
      presence({ timestamp: t, versionNumber: 1, eventType: 'disconnected' }),
      presence({ timestamp: t, versionNumber: 2, eventType: 'connected' }),
      presence({ timestamp: t + 1, versionNumber: 0, eventType: 'disconnected' }),
      presence({ timestamp: t + 1000, eventType: 'connected', versionNumber: undefined }),
    ].map(connectionSequenceNumber);
    for (const s of sequence) expect(s).toMatch(/^[0-9a-f]{64}$/);
    expect([...sequence].sort()).toEqual(sequence);
    expect(new Set(sequence).size).toBe(sequence.length);
  });
});

describe('parseIngestRecord', () => {
  it('tells telemetry (no kind), lifecycle and connection state records apart', () => {
    expect(parseIngestRecord(telemetry('t1')).kind).toBe('telemetry');
    expect(parseIngestRecord(lifecycle()).kind).toBe('deviceLifecycle');
    // Presence fields the hub does not use (ipAddress, thingName, ...) are ignored.
    expect(parseIngestRecord({ ...presence(), ipAddress: '10.0.0.1' })).toMatchObject({
      kind: 'connectionState',
      record: { clientId: 'dev-1' },
    });
  });

  it.each([
    [{ ...lifecycle(), opType: 'updateDeviceIdentity' }, 'InvalidLifecycleRecord', /opType/],
    [{ ...lifecycle(), device: undefined }, 'InvalidLifecycleRecord', /device/],
    [{ ...presence(), eventType: 'subscribed' }, 'InvalidConnectionStateRecord', /eventType/],
    [{ ...presence(), timestamp: 'noon' }, 'InvalidConnectionStateRecord', /timestamp/],
    [{ ...presence(), kind: 'moduleTwinChange' }, 'UnknownRecordKind', /"moduleTwinChange"/],
    [
      { ...telemetry('t'), topic: undefined },
      'InvalidIngestRecord',
      /^ingest record does not match the schema: topic/,
    ],
  ])('refuses a bad record with a clear code (%#)', (record, code, message) => {
    let error: unknown;
    try {
      parseIngestRecord(record);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(HubError);
    expect((error as HubError).code).toBe(code);
    expect((error as HubError).message).toMatch(message);
  });
});

function batch(...records: unknown[]): SourceRecord[] {
  return records.map((r, i) => ({ sequenceNumber: String(i + 1), data: Buffer.from(JSON.stringify(r)) }));
}

function router(routing: unknown, endpoints: Record<string, StreamSink> = {}) {
  const builtIn = new FakeSink();
  const deadLetters = new MemoryDeadLetters();
  const deps: RouterDeps = {
    builtIn,
    endpoints,
    routing: compileRouting(routingConfigSchema.parse(routing), 'my-hub'),
    hubName: 'my-hub',
    deadLetters,
    log: new MemoryLog(),
    limits: { maxMessageBytes: 256 * 1024 },
    sleep: async () => {},
  };
  return { builtIn, deadLetters, deps };
}

describe('routing by source', () => {
  const disconnected = presence({ eventType: 'disconnected', ingestId: 'conn-2', timestamp: Date.now() });

  it('sends events only where routes of their source take them; the fallback takes telemetry only', async () => {
    const { builtIn, deps } = router({});
    const result = await routeBatch(batch(lifecycle(), presence(), telemetry('t1')), deps);
    expect(builtIn.envelopes.map((e) => e.messageId)).toEqual(['t1']);
    expect(result).toEqual({ delivered: 1, deadLettered: 0, unrouted: 2 });
  });

  it('routes each source to its own routes, with conditions on event properties and $body', async () => {
    const connections = new FakeSink();
    const lifecycles = new FakeSink();
    const { builtIn, deps } = router(
      {
        endpoints: [
          { name: 'connections', type: 'kinesis' },
          { name: 'lifecycles', type: 'kinesis' },
        ],
        routes: [
          {
            name: 'connected-only',
            source: 'DeviceConnectionStateEvents',
            condition: "opType = 'deviceConnected'",
            endpointNames: ['connections'],
          },
          {
            name: 'created-enabled',
            source: 'DeviceLifecycleEvents',
            condition: "opType = 'createDeviceIdentity' AND $body.status = 'enabled' AND hubName = 'my-hub'",
            endpointNames: ['lifecycles'],
          },
          // A telemetry route with the same condition must not take events.
          { name: 'telemetry', condition: "opType = 'deviceConnected'", endpointNames: ['connections'] },
        ],
        enrichments: [{ key: 'region', value: 'eu', endpointNames: ['connections'] }],
      },
      { connections, lifecycles },
    );
    const deleted = lifecycle({ opType: 'deleteDeviceIdentity', ingestId: 'life-2' });
    const result = await routeBatch(
      batch(lifecycle(), presence(), disconnected, deleted, telemetry('t1')),
      deps,
    );
    expect(connections.envelopes.map((e) => [e.messageId, e.properties.opType, e.properties.region])).toEqual(
      [['conn-1', 'deviceConnected', 'eu']],
    );
    expect(lifecycles.envelopes.map((e) => e.messageId)).toEqual(['life-1']);
    // Telemetry matched no route: the fallback takes it. The disconnect and the delete: dropped.
    expect(builtIn.envelopes.map((e) => e.messageId)).toEqual(['t1']);
    expect(result).toEqual({ delivered: 3, deadLettered: 0, unrouted: 2 });
    expect(connections.written[0]).toMatchObject({
      partitionKey: 'dev-1',
      messageSource: 'deviceConnectionStateEvents',
    });
  });

  it('keeps per-device order across kinds on the built-in endpoint', async () => {
    const { builtIn, deps } = router({
      routes: [
        { name: 'life', source: 'DeviceLifecycleEvents', endpointNames: ['events'] },
        { name: 'conn', source: 'DeviceConnectionStateEvents', endpointNames: ['events'] },
        { name: 'all', endpointNames: ['events'] },
      ],
    });
    const records = [
      lifecycle(),
      presence(),
      telemetry('t1'),
      disconnected,
      lifecycle({ opType: 'deleteDeviceIdentity', ingestId: 'life-2' }),
    ];
    await routeBatch(batch(...records), deps);
    expect(builtIn.envelopes.map((e) => e.messageId)).toEqual(['life-1', 'conn-1', 't1', 'conn-2', 'life-2']);
    // One record per device per call: five calls.
    expect(builtIn.calls).toHaveLength(5);
  });

  it('dead-letters bad event records with their code, device and the record, and routes the rest', async () => {
    const { builtIn, deadLetters, deps } = router({
      routes: [{ name: 'conn', source: 'DeviceConnectionStateEvents', endpointNames: ['events'] }],
    });
    const bad = { ...presence(), eventType: 'exploded', ingestId: 'bad-1' };
    const mismatch = lifecycle({
      device: { ...deviceIdentityBody(device), deviceId: 'other' },
      ingestId: 'bad-2',
    });
    const result = await routeBatch(
      batch(bad, { kind: 'mystery', clientId: 'x' }, mismatch, presence()),
      deps,
    );
    expect(builtIn.envelopes.map((e) => e.messageId)).toEqual(['conn-1']);
    expect(deadLetters.letters.map((l) => [l.code, l.deviceId, l.id])).toEqual([
      ['InvalidConnectionStateRecord', 'unknown', '1'],
      ['UnknownRecordKind', 'unknown', '2'],
      ['DeviceIdMismatch', 'dev-1', 'bad-2'],
    ]);
    expect(deadLetters.letters[0]?.reason).toMatch(/eventType/);
    expect(JSON.parse(deadLetters.letters[0]?.record ?? '')).toMatchObject({ ingestId: 'bad-1' });
    expect(result).toEqual({ delivered: 1, deadLettered: 3 });
  });
});

describe('IngestLifecycleEvents', () => {
  const change = (opType: LifecycleChange['opType'], deviceId: string): LifecycleChange => ({
    opType,
    device: { ...device, deviceId },
    at: new Date('2030-01-01T00:00:00.000Z'),
  });

  it('writes one record per change, keyed by device, one record per device per call, in order', async () => {
    const sink = new FakeSink();
    let n = 0;
    const events = new IngestLifecycleEvents({
      sink,
      log: new MemoryLog(),
      newId: () => `id-${++n}`,
      now: () => new Date('2030-01-01T00:00:00.100Z'),
    });
    await events.emit([
      change('createDeviceIdentity', 'a'),
      change('createDeviceIdentity', 'b'),
      change('deleteDeviceIdentity', 'a'),
    ]);
    expect(sink.calls.map((c) => c.map((e) => e.partitionKey))).toEqual([['a', 'b'], ['a']]);
    const records = sink.written.map((e) => JSON.parse(Buffer.from(e.data).toString('utf8')));
    expect(records[0]).toEqual({
      kind: 'deviceLifecycle',
      opType: 'createDeviceIdentity',
      deviceId: 'a',
      operationTime: Date.parse('2030-01-01T00:00:00.000Z'),
      device: expect.objectContaining({ deviceId: 'a' }),
      enqueuedTime: Date.parse('2030-01-01T00:00:00.100Z'),
      ingestId: 'id-1',
    });
    expect(records.map((r) => parseIngestRecord(r).kind)).toEqual(Array(3).fill('deviceLifecycle'));
    expect(JSON.stringify(records)).not.toContain(KEY);
  });

  it('retries refused records with backoff, keeping their ingest id', async () => {
    const sink = new FakeSink((_entry, call) => call >= 2);
    const sleeps: number[] = [];
    const events = new IngestLifecycleEvents({
      sink,
      log: new MemoryLog(),
      sleep: async (ms) => void sleeps.push(ms),
      baseDelayMs: 10,
    });
    await events.emit([change('createDeviceIdentity', 'a')]);
    expect(sink.calls).toHaveLength(3);
    expect(new Set(sink.calls.map((c) => c[0]?.id)).size).toBe(1);
    expect(sleeps).toEqual([10, 20]);
  });

  it('gives up after its attempts without throwing and logs the full records for replay', async () => {
    const sink = new FakeSink(() => false);
    const log = new MemoryLog();
    const events = new IngestLifecycleEvents({ sink, log, sleep: async () => {}, maxAttempts: 3 });
    await expect(events.emit([change('deleteDeviceIdentity', 'a')])).resolves.toBeUndefined();
    expect(sink.calls).toHaveLength(3);
    const lost = log.entries.find((l) => l.message === 'lifecycle event lost');
    expect(lost?.level).toBe('error');
    expect(lost?.context?.records).toEqual([
      expect.objectContaining({ opType: 'deleteDeviceIdentity', deviceId: 'a' }),
    ]);
  });
});

describe('service API lifecycle events', () => {
  function api() {
    const emitted: LifecycleChange[] = [];
    const handle = makeHandler({
      registry: new MemoryDeviceRegistry(),
      connections: { disconnect: async () => {} },
      log: new MemoryLog(),
      lifecycleEvents: { emit: async (changes) => void emitted.push(...changes) },
    });
    const call = async (
      method: string,
      path: string,
      body?: unknown,
      headers: Record<string, string> = {},
    ) => {
      const result = (await handle(
        urlEvent(method, path, { headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) }),
      )) as APIGatewayProxyStructuredResultV2;
      return result.statusCode;
    };
    return { emitted, call };
  }
  const summary = (changes: LifecycleChange[]) => changes.map((c) => `${c.opType}:${c.device.deviceId}`);

  it('emits a create and a delete for PUT and DELETE, and nothing for updates or failures', async () => {
    const { emitted, call } = api();
    expect(await call('PUT', '/devices/d1', { deviceId: 'd1' })).toBe(201);
    expect(await call('PUT', '/devices/d1', { deviceId: 'd1' })).toBe(409);
    expect(
      await call('PUT', '/devices/d1', { deviceId: 'd1', status: 'disabled' }, { 'if-match': '*' }),
    ).toBe(200);
    expect(await call('DELETE', '/devices/ghost')).toBe(404);
    expect(await call('DELETE', '/devices/d1')).toBe(204);
    expect(summary(emitted)).toEqual(['createDeviceIdentity:d1', 'deleteDeviceIdentity:d1']);
    // The delete carries the device as it was when deleted.
    expect(emitted[1]?.device.status).toBe('disabled');
  });

  it('emits for bulk creates (createOrUpdate only when it created) and deletes, in request order', async () => {
    const { emitted, call } = api();
    await call('PUT', '/devices/old', { deviceId: 'old' });
    emitted.length = 0;
    const status = await call('POST', '/devices', [
      { id: 'n1', importMode: 'create' },
      { id: 'old', importMode: 'createOrUpdate', statusReason: 'x' },
      { id: 'n2', importMode: 'createOrUpdate' },
      { id: 'old', importMode: 'delete' },
      { id: 'ghost', importMode: 'delete' },
    ]);
    expect(status).toBe(400);
    expect(summary(emitted)).toEqual([
      'createDeviceIdentity:n1',
      'createDeviceIdentity:n2',
      'deleteDeviceIdentity:old',
    ]);
  });
});
