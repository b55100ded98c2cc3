import { type DynamoDBDocumentClient, GetCommand, PutCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DynamoDbDeviceRegistry, deviceKey } from '../../functions/adapters/registry-dynamodb.ts';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import {
  ConflictError,
  LimitExceededError,
  NotFoundError,
  ValidationError,
} from '../../functions/core/errors.ts';
import { type BulkOperation, NEVER } from '../../functions/core/identity/device.ts';
import {
  DeviceAlreadyExistsError,
  DeviceNotFoundError,
  PreconditionFailedError,
} from '../../functions/core/identity/errors.ts';
import type { DeviceRegistry } from '../../functions/core/identity/registry.ts';
import { startTestDynamo, type TestDynamo } from '../support/emulators.ts';

let dynamo: TestDynamo;
let doc: DynamoDBDocumentClient;
let tableCount = 0;

beforeAll(async () => {
  dynamo = await startTestDynamo();
  doc = dynamo.doc;
});

afterAll(() => dynamo?.close());

/** A fresh table with the registry's contract layout. */
const createTable = () => dynamo.createPkSkTable(`registry-${++tableCount}`);

/** A clock the test moves by hand. */
function manualClock(start = Date.parse('2030-01-01T00:00:00Z')) {
  let now = start;
  return { clock: () => new Date(now), advance: (ms: number) => (now += ms) };
}

type Clock = () => Date;
const implementations: { name: string; make: (clock: Clock) => Promise<DeviceRegistry> }[] = [
  { name: 'memory', make: async (clock) => new MemoryDeviceRegistry({ clock }) },
  {
    name: 'dynamodb (dynalite)',
    make: async (clock) => new DynamoDbDeviceRegistry({ client: doc, tableName: await createTable(), clock }),
  },
];

const key1 = Buffer.alloc(32, 1).toString('base64');
const key2 = Buffer.alloc(32, 2).toString('base64');

describe.each(implementations)('DeviceRegistry contract: $name', ({ make }) => {
  let registry: DeviceRegistry;
  let time: ReturnType<typeof manualClock>;

  beforeEach(async () => {
    time = manualClock();
    registry = await make(time.clock);
  });

  describe('create / get', () => {
    it('creates a device with IoT Hub defaults and generated SAS keys', async () => {
      const device = await registry.create({ deviceId: 'dev-1' });
      expect(device).toMatchObject({
        deviceId: 'dev-1',
        status: 'enabled',
        statusReason: null,
        statusUpdatedTime: '2030-01-01T00:00:00.000Z',
        connectionState: 'Disconnected',
        connectionStateUpdatedTime: NEVER,
        lastActivityTime: NEVER,
        cloudToDeviceMessageCount: 0,
        authentication: {
          type: 'sas',
          x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null },
        },
      });
      expect(device.etag).not.toBe('');
      expect(device.generationId).not.toBe('');
      expect(device.authentication.symmetricKey.primaryKey).toMatch(/^[A-Za-z0-9+/]{43}=$/);
      expect(await registry.get('dev-1')).toEqual(device);
      expect(await registry.find('dev-1')).toEqual(device);
    });

    it('stores given status, keys, thumbprints and capabilities', async () => {
      const sas = await registry.create({
        deviceId: 'k',
        status: 'disabled',
        statusReason: 'not yet installed',
        authentication: { type: 'sas', symmetricKey: { primaryKey: key1, secondaryKey: key2 } },
        capabilities: { iotEdge: true },
      });
      expect(sas).toMatchObject({
        status: 'disabled',
        statusReason: 'not yet installed',
        authentication: { symmetricKey: { primaryKey: key1, secondaryKey: key2 } },
        capabilities: { iotEdge: true },
      });
      const x509 = await registry.create({
        deviceId: 'x',
        authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: 'ab'.repeat(20) } },
      });
      expect(x509.authentication).toEqual({
        type: 'selfSigned',
        symmetricKey: { primaryKey: null, secondaryKey: null },
        x509Thumbprint: { primaryThumbprint: 'AB'.repeat(20), secondaryThumbprint: null },
      });
      expect(await registry.get('x')).toEqual(x509);
    });

    it('keeps ids case-sensitive', async () => {
      await registry.create({ deviceId: 'Dev' });
      await registry.create({ deviceId: 'dev' });
      expect((await registry.get('Dev')).generationId).not.toBe((await registry.get('dev')).generationId);
    });

    it('fails a duplicate create with DeviceAlreadyExists (409) and leaves the device alone', async () => {
      const first = await registry.create({ deviceId: 'dup' });
      const error = await registry.create({ deviceId: 'dup', status: 'disabled' }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(DeviceAlreadyExistsError);
      expect(error).toBeInstanceOf(ConflictError);
      expect((error as DeviceAlreadyExistsError).code).toBe('DeviceAlreadyExists');
      expect(await registry.get('dup')).toEqual(first);
    });

    it('refuses invalid and MQTT-unsafe ids', async () => {
      await expect(registry.create({ deviceId: 'a+b' })).rejects.toThrow(ValidationError);
      await expect(registry.create({ deviceId: 'a/b' })).rejects.toThrow(/deviceId:/);
    });

    it('fails get of an unknown device with DeviceNotFound (404); find returns undefined', async () => {
      const error = await registry.get('ghost').catch((e: unknown) => e);
      expect(error).toBeInstanceOf(DeviceNotFoundError);
      expect(error).toBeInstanceOf(NotFoundError);
      expect((error as DeviceNotFoundError).code).toBe('DeviceNotFound');
      expect(await registry.find('ghost')).toBeUndefined();
    });
  });

  describe('replace', () => {
    it('replaces with a matching etag: new etag, same generation, status time moves', async () => {
      const created = await registry.create({ deviceId: 'r' });
      time.advance(60_000);
      const replaced = await registry.replace(
        { deviceId: 'r', status: 'disabled', statusReason: 'maintenance' },
        { ifMatch: created.etag },
      );
      expect(replaced.etag).not.toBe(created.etag);
      expect(replaced.generationId).toBe(created.generationId);
      expect(replaced).toMatchObject({
        status: 'disabled',
        statusReason: 'maintenance',
        statusUpdatedTime: '2030-01-01T00:01:00.000Z',
      });
      expect(await registry.get('r')).toEqual(replaced);
    });

    it('accepts a quoted If-Match, as HTTP sends it', async () => {
      const created = await registry.create({ deviceId: 'q' });
      await expect(
        registry.replace({ deviceId: 'q' }, { ifMatch: `"${created.etag}"` }),
      ).resolves.toMatchObject({
        deviceId: 'q',
      });
    });

    it('keeps statusUpdatedTime when status does not change', async () => {
      const created = await registry.create({ deviceId: 's' });
      time.advance(1000);
      const replaced = await registry.replace({
        deviceId: 's',
        status: 'enabled',
        statusReason: 'still fine',
      });
      expect(replaced.statusUpdatedTime).toBe(created.statusUpdatedTime);
    });

    it('fails with PreconditionFailed (412, distinct from 409) on a stale etag and changes nothing', async () => {
      const created = await registry.create({ deviceId: 'p' });
      const current = await registry.replace(
        { deviceId: 'p', statusReason: 'one' },
        { ifMatch: created.etag },
      );
      const error = await registry
        .replace({ deviceId: 'p', statusReason: 'two' }, { ifMatch: created.etag })
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(PreconditionFailedError);
      expect(error).toBeInstanceOf(ConflictError);
      expect((error as PreconditionFailedError).code).toBe('PreconditionFailed');
      expect(await registry.get('p')).toEqual(current);
    });

    it('never matches a weak etag', async () => {
      const created = await registry.create({ deviceId: 'w' });
      await expect(
        registry.replace({ deviceId: 'w' }, { ifMatch: `W/"${created.etag}"` }),
      ).rejects.toBeInstanceOf(PreconditionFailedError);
    });

    it("replaces whatever the etag with If-Match '*' or without If-Match", async () => {
      await registry.create({ deviceId: 'star' });
      await registry.replace({ deviceId: 'star', statusReason: 'a' });
      const star = await registry.replace({ deviceId: 'star', statusReason: 'b' }, { ifMatch: '*' });
      expect(star.statusReason).toBe('b');
      const none = await registry.replace({ deviceId: 'star', statusReason: null });
      expect(none.statusReason).toBeNull();
    });

    it("fails with DeviceNotFound for an unknown device, also with If-Match '*'", async () => {
      await expect(registry.replace({ deviceId: 'ghost' })).rejects.toBeInstanceOf(DeviceNotFoundError);
      await expect(registry.replace({ deviceId: 'ghost' }, { ifMatch: '*' })).rejects.toBeInstanceOf(
        DeviceNotFoundError,
      );
      await expect(registry.replace({ deviceId: 'ghost' }, { ifMatch: 'abc' })).rejects.toBeInstanceOf(
        DeviceNotFoundError,
      );
    });

    it('keeps credentials when authentication is omitted and rotates keys on a bare sas type', async () => {
      const created = await registry.create({ deviceId: 'keys' });
      const kept = await registry.replace({ deviceId: 'keys', statusReason: 'x' });
      expect(kept.authentication).toEqual(created.authentication);
      const rotated = await registry.replace({ deviceId: 'keys', authentication: { type: 'sas' } });
      expect(rotated.authentication.symmetricKey.primaryKey).not.toBe(
        created.authentication.symmetricKey.primaryKey,
      );
      const x509 = await registry.replace({
        deviceId: 'keys',
        authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: 'c'.repeat(64) } },
      });
      expect(x509.authentication.symmetricKey).toEqual({ primaryKey: null, secondaryKey: null });
      expect((await registry.get('keys')).authentication.x509Thumbprint.primaryThumbprint).toBe(
        'C'.repeat(64),
      );
    });

    it('lets exactly one of many concurrent replaces with the same etag win', async () => {
      const created = await registry.create({ deviceId: 'race' });
      const outcomes = await Promise.allSettled(
        Array.from({ length: 8 }, (_, i) =>
          registry.replace({ deviceId: 'race', statusReason: `writer ${i}` }, { ifMatch: created.etag }),
        ),
      );
      const winners = outcomes.filter((o) => o.status === 'fulfilled');
      const losers = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
      expect(winners).toHaveLength(1);
      expect(losers).toHaveLength(7);
      for (const loser of losers) expect(loser.reason).toBeInstanceOf(PreconditionFailedError);
      const stored = await registry.get('race');
      expect(stored).toEqual((winners[0] as PromiseFulfilledResult<unknown>).value);
    });

    it('lets concurrent unconditional replaces all land', async () => {
      await registry.create({ deviceId: 'many' });
      const outcomes = await Promise.allSettled(
        Array.from({ length: 3 }, (_, i) => registry.replace({ deviceId: 'many', statusReason: `w${i}` })),
      );
      expect(outcomes.every((o) => o.status === 'fulfilled')).toBe(true);
    });
  });

  describe('delete', () => {
    it('deletes with a matching etag, then the device is gone', async () => {
      const created = await registry.create({ deviceId: 'd' });
      await registry.delete('d', { ifMatch: created.etag });
      await expect(registry.get('d')).rejects.toBeInstanceOf(DeviceNotFoundError);
    });

    it('returns the device as it was (the body of its deleteDeviceIdentity event)', async () => {
      await registry.create({ deviceId: 'd' });
      const replaced = await registry.replace({ deviceId: 'd', statusReason: 'last words' });
      expect(await registry.delete('d')).toEqual(replaced);
    });

    it('refuses a stale etag with PreconditionFailed and keeps the device', async () => {
      const created = await registry.create({ deviceId: 'd' });
      await registry.replace({ deviceId: 'd', statusReason: 'changed' });
      await expect(registry.delete('d', { ifMatch: created.etag })).rejects.toBeInstanceOf(
        PreconditionFailedError,
      );
      await expect(registry.get('d')).resolves.toMatchObject({ statusReason: 'changed' });
    });

    it("deletes whatever the etag with '*' or without If-Match", async () => {
      await registry.create({ deviceId: 'a' });
      await registry.create({ deviceId: 'b' });
      await registry.delete('a', { ifMatch: '*' });
      await registry.delete('b');
      expect(await registry.find('a')).toBeUndefined();
      expect(await registry.find('b')).toBeUndefined();
    });

    it('fails with DeviceNotFound for an unknown device', async () => {
      await expect(registry.delete('ghost')).rejects.toBeInstanceOf(DeviceNotFoundError);
      await expect(registry.delete('ghost', { ifMatch: '*' })).rejects.toBeInstanceOf(DeviceNotFoundError);
      await expect(registry.delete('ghost', { ifMatch: 'e' })).rejects.toBeInstanceOf(DeviceNotFoundError);
    });

    it('gives a re-created device a new generation id', async () => {
      const first = await registry.create({ deviceId: 'again' });
      await registry.delete('again');
      const second = await registry.create({ deviceId: 'again' });
      expect(second.generationId).not.toBe(first.generationId);
    });
  });

  describe('list', () => {
    it('pages through 250 devices 100 at a time, each exactly once', async () => {
      const ids = Array.from({ length: 250 }, (_, i) => `dev-${String(i).padStart(3, '0')}`);
      for (let i = 0; i < ids.length; i += 100) {
        const result = await registry.bulk(
          ids.slice(i, i + 100).map((id) => ({ importMode: 'create', device: { deviceId: id } })),
        );
        expect(result.isSuccessful).toBe(true);
      }
      const seen: string[] = [];
      const sizes: number[] = [];
      let cursor: string | undefined;
      do {
        const page = await registry.list({ limit: 100, ...(cursor ? { cursor } : {}) });
        sizes.push(page.devices.length);
        seen.push(...page.devices.map((d) => d.deviceId));
        cursor = page.nextCursor;
      } while (cursor !== undefined);
      expect(sizes.slice(0, 2)).toEqual([100, 100]);
      expect(sizes.every((s) => s <= 100)).toBe(true);
      expect(seen).toHaveLength(250);
      expect(new Set(seen)).toEqual(new Set(ids));
    });

    it('returns one page without a cursor when everything fits; an empty registry lists nothing', async () => {
      expect(await registry.list()).toEqual({ devices: [] });
      await registry.create({ deviceId: 'only' });
      const page = await registry.list({ limit: 10 });
      expect(page.devices.map((d) => d.deviceId)).toEqual(['only']);
      expect(page.nextCursor).toBeUndefined();
    });

    it('rejects a bad limit or a forged cursor naming the field', async () => {
      await expect(registry.list({ limit: 0 })).rejects.toThrow(/^limit: /);
      await expect(registry.list({ limit: 1001 })).rejects.toThrow(ValidationError);
      await expect(registry.list({ limit: 1.5 })).rejects.toThrow(ValidationError);
      await expect(registry.list({ cursor: 'not-a-cursor' })).rejects.toThrow(/^cursor: /);
      const forged = Buffer.from(JSON.stringify({ pk: 'ledger#1', sk: 'x' })).toString('base64url');
      await expect(registry.list({ cursor: forged })).rejects.toThrow(ValidationError);
    });
  });

  describe('bulk', () => {
    it('applies each operation alone and reports mixed success and failure in order', async () => {
      const keep = await registry.create({ deviceId: 'keep' });
      const gone = await registry.create({ deviceId: 'gone' });
      await registry.create({ deviceId: 'taken' });
      const ops: BulkOperation[] = [
        { importMode: 'create', device: { deviceId: 'new-1', status: 'disabled' } },
        { importMode: 'create', device: { deviceId: 'taken' } },
        { importMode: 'update', device: { deviceId: 'missing' } },
        { importMode: 'updateIfMatchETag', device: { deviceId: 'keep', statusReason: 'x' }, eTag: 'stale' },
        { importMode: 'deleteIfMatchETag', device: { deviceId: 'gone' }, eTag: gone.etag },
        { importMode: 'createOrUpdate', device: { deviceId: 'keep', statusReason: 'upserted' } },
        { importMode: 'createOrUpdate', device: { deviceId: 'new-2' } },
        { importMode: 'delete', device: { deviceId: 'missing' } },
        { importMode: 'createOrUpdateIfMatchETag', device: { deviceId: 'taken' }, eTag: 'stale' },
      ];
      const result = await registry.bulk(ops);
      expect(result.isSuccessful).toBe(false);
      expect(result.results.map((r) => (r.ok ? 'ok' : r.error.code))).toEqual([
        'ok',
        'DeviceAlreadyExists',
        'DeviceNotFound',
        'PreconditionFailed',
        'ok',
        'ok',
        'ok',
        'DeviceNotFound',
        'PreconditionFailed',
      ]);
      expect(result.results.map((r) => r.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
      // What each successful operation did, so the service API knows which lifecycle events to emit.
      expect(result.results.map((r) => (r.ok ? r.outcome : '-'))).toEqual([
        'created',
        '-',
        '-',
        '-',
        'deleted',
        'updated',
        'created',
        '-',
        '-',
      ]);
      expect(result.results[4]).toMatchObject({ ok: true, device: { deviceId: 'gone', etag: gone.etag } });
      expect(result.errors).toHaveLength(5);
      expect(result.errors[0]).toMatchObject({ deviceId: 'taken', errorCode: 'DeviceAlreadyExists' });
      expect(await registry.get('new-1')).toMatchObject({ status: 'disabled' });
      expect(await registry.find('gone')).toBeUndefined();
      expect(await registry.get('keep')).toMatchObject({
        statusReason: 'upserted',
        generationId: keep.generationId,
      });
      expect(await registry.find('missing')).toBeUndefined();
    });

    it('runs operations on one id in request order', async () => {
      const result = await registry.bulk([
        { importMode: 'create', device: { deviceId: 'seq' } },
        { importMode: 'update', device: { deviceId: 'seq', status: 'disabled' } },
        { importMode: 'delete', device: { deviceId: 'seq' } },
        { importMode: 'create', device: { deviceId: 'seq', statusReason: 'reborn' } },
      ]);
      expect(result.isSuccessful).toBe(true);
      expect(await registry.get('seq')).toMatchObject({ status: 'enabled', statusReason: 'reborn' });
    });

    it('refuses more than 100 operations before applying any', async () => {
      const ops: BulkOperation[] = Array.from({ length: 101 }, (_, i) => ({
        importMode: 'create',
        device: { deviceId: `over-${i}` },
      }));
      await expect(registry.bulk(ops)).rejects.toBeInstanceOf(LimitExceededError);
      expect(await registry.find('over-0')).toBeUndefined();
    });
  });

  describe('connection state and activity', () => {
    it('records connect and disconnect without changing the etag', async () => {
      const created = await registry.create({ deviceId: 'c' });
      const connected = await registry.setConnectionState('c', 'Connected', new Date('2030-01-01T00:00:05Z'));
      expect(connected).toMatchObject({
        connectionState: 'Connected',
        connectionStateUpdatedTime: '2030-01-01T00:00:05.000Z',
        etag: created.etag,
      });
      const disconnected = await registry.setConnectionState(
        'c',
        'Disconnected',
        new Date('2030-01-01T00:00:09Z'),
      );
      expect(disconnected.connectionState).toBe('Disconnected');
      expect(await registry.get('c')).toEqual(disconnected);
    });

    it('ignores a lifecycle event older than the one applied', async () => {
      await registry.create({ deviceId: 'c' });
      await registry.setConnectionState('c', 'Connected', new Date('2030-01-01T00:00:10Z'));
      const stale = await registry.setConnectionState('c', 'Disconnected', new Date('2030-01-01T00:00:05Z'));
      expect(stale).toMatchObject({
        connectionState: 'Connected',
        connectionStateUpdatedTime: '2030-01-01T00:00:10.000Z',
      });
    });

    it('survives an identity replace that races it', async () => {
      const created = await registry.create({ deviceId: 'c' });
      await registry.setConnectionState('c', 'Connected', new Date('2030-01-01T00:00:10Z'));
      const replaced = await registry.replace(
        { deviceId: 'c', status: 'disabled' },
        { ifMatch: created.etag },
      );
      expect(replaced.connectionState).toBe('Connected');
    });

    it('moves lastActivityTime forward only', async () => {
      await registry.create({ deviceId: 't' });
      await registry.touchActivity('t', new Date('2030-01-01T00:01:00Z'));
      const older = await registry.touchActivity('t', new Date('2030-01-01T00:00:30Z'));
      expect(older.lastActivityTime).toBe('2030-01-01T00:01:00.000Z');
      const newer = await registry.touchActivity('t', new Date('2030-01-01T00:02:00Z'));
      expect(newer.lastActivityTime).toBe('2030-01-01T00:02:00.000Z');
    });

    it('with touchActivity, moves state and lastActivityTime together, without changing the etag', async () => {
      const created = await registry.create({ deviceId: 'ta' });
      const connected = await registry.setConnectionState(
        'ta',
        'Connected',
        new Date('2030-01-01T00:00:05Z'),
        {
          touchActivity: true,
        },
      );
      expect(connected).toMatchObject({
        connectionState: 'Connected',
        connectionStateUpdatedTime: '2030-01-01T00:00:05.000Z',
        lastActivityTime: '2030-01-01T00:00:05.000Z',
        etag: created.etag,
      });
      expect(await registry.get('ta')).toEqual(connected);
      const plain = await registry.setConnectionState('ta', 'Disconnected', new Date('2030-01-01T00:00:09Z'));
      expect(plain).toMatchObject({
        connectionState: 'Disconnected',
        lastActivityTime: '2030-01-01T00:00:05.000Z',
      });
    });

    it('with touchActivity, never moves either time back', async () => {
      await registry.create({ deviceId: 'ta' });
      await registry.touchActivity('ta', new Date('2030-01-01T00:01:00Z'));
      // State moves, activity is already newer and stays.
      const connected = await registry.setConnectionState(
        'ta',
        'Connected',
        new Date('2030-01-01T00:00:30Z'),
        {
          touchActivity: true,
        },
      );
      expect(connected).toMatchObject({
        connectionState: 'Connected',
        connectionStateUpdatedTime: '2030-01-01T00:00:30.000Z',
        lastActivityTime: '2030-01-01T00:01:00.000Z',
      });
      await registry.setConnectionState('ta', 'Disconnected', new Date('2030-01-01T00:02:00Z'));
      // A stale connect leaves the state alone but still records its activity.
      const stale = await registry.setConnectionState('ta', 'Connected', new Date('2030-01-01T00:01:30Z'), {
        touchActivity: true,
      });
      expect(stale).toMatchObject({
        connectionState: 'Disconnected',
        connectionStateUpdatedTime: '2030-01-01T00:02:00.000Z',
        lastActivityTime: '2030-01-01T00:01:30.000Z',
      });
      // Older than both: nothing changes.
      const older = await registry.setConnectionState('ta', 'Connected', new Date('2030-01-01T00:00:10Z'), {
        touchActivity: true,
      });
      expect(older).toEqual(stale);
      expect(await registry.get('ta')).toEqual(stale);
    });

    it('fails for an unknown device', async () => {
      await expect(registry.setConnectionState('ghost', 'Connected', new Date())).rejects.toBeInstanceOf(
        DeviceNotFoundError,
      );
      await expect(
        registry.setConnectionState('ghost', 'Connected', new Date(), { touchActivity: true }),
      ).rejects.toBeInstanceOf(DeviceNotFoundError);
      await expect(registry.touchActivity('ghost', new Date())).rejects.toBeInstanceOf(DeviceNotFoundError);
    });
  });
});

describe('DynamoDbDeviceRegistry table layout', () => {
  let tableName: string;
  let registry: DynamoDbDeviceRegistry;

  beforeEach(async () => {
    tableName = await createTable();
    registry = new DynamoDbDeviceRegistry({ client: doc, tableName });
  });

  it('stores a device at pk=device#{id}, sk=device with IoT Hub attribute names', async () => {
    const device = await registry.create({ deviceId: 'Layout.1' });
    expect(deviceKey('Layout.1')).toEqual({ pk: 'device#Layout.1', sk: 'device' });
    const out = await doc.send(
      new GetCommand({ TableName: tableName, Key: { pk: 'device#Layout.1', sk: 'device' } }),
    );
    expect(out.Item).toEqual({ pk: 'device#Layout.1', sk: 'device', ...device });
  });

  it('keeps attributes other modules put on the item across a replace', async () => {
    await registry.create({ deviceId: 'shared' });
    const key = deviceKey('shared');
    const item = (await doc.send(new GetCommand({ TableName: tableName, Key: key }))).Item ?? {};
    await doc.send(new PutCommand({ TableName: tableName, Item: { ...item, tags: { site: 'north' } } }));
    await registry.replace({ deviceId: 'shared', status: 'disabled' });
    const after = (await doc.send(new GetCommand({ TableName: tableName, Key: key }))).Item;
    expect(after).toMatchObject({ status: 'disabled', tags: { site: 'north' } });
  });

  it('lists only device items when other items share the table', async () => {
    await registry.create({ deviceId: 'real' });
    await doc.send(new PutCommand({ TableName: tableName, Item: { pk: 'device#real', sk: 'twin', x: 1 } }));
    await doc.send(new PutCommand({ TableName: tableName, Item: { pk: 'c2d#real', sk: 'msg#1' } }));
    const seen: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await registry.list({ limit: 1, ...(cursor ? { cursor } : {}) });
      seen.push(...page.devices.map((d) => d.deviceId));
      cursor = page.nextCursor;
    } while (cursor !== undefined);
    expect(seen).toEqual(['real']);
  });
});
