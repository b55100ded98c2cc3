import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { startFauxqs } from 'fauxqs';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { DynamoDbDeviceRegistry } from '../../functions/adapters/registry-dynamodb.ts';
import { DynamoDbJobStore } from '../../functions/adapters/registry-jobs-dynamodb.ts';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import { S3BlobStore } from '../../functions/adapters/s3-blob-store.ts';
import { MemoryShadowStore, MemoryTagsStore } from '../../functions/adapters/twin-memory.ts';
import type { LifecycleChange } from '../../functions/core/d2c/lifecycle-events.ts';
import { JobQuotaExceededError } from '../../functions/core/identity/jobs/errors.ts';
import { MIN_PART_BYTES } from '../../functions/core/identity/jobs/export.ts';
import { expectedOutcomes, type ImportErrorLine } from '../../functions/core/identity/jobs/import.ts';
import { type ImportExportJob, parseCreateJobBody } from '../../functions/core/identity/jobs/job.ts';
import { LineReader } from '../../functions/core/identity/jobs/lines.ts';
import type { BlobStore, JobStore } from '../../functions/core/identity/jobs/ports.ts';
import { cancelJob, createJob, getJob } from '../../functions/core/identity/jobs/service.ts';
import { JobWorker, type WorkerDeps } from '../../functions/core/identity/jobs/worker.ts';
import type { DeviceRegistry } from '../../functions/core/identity/registry.ts';
import { dispatch, RouteTable } from '../../functions/core/service-api/http.ts';
import { registryJobsRoutes } from '../../functions/core/service-api/registry-jobs-routes.ts';
import { TwinService } from '../../functions/core/twins/service.ts';
import { localS3Client } from '../../local/emulators.ts';
import { startTestDynamo, type TestDynamo } from '../support/emulators.ts';
import { MemoryLog } from './fakes.ts';

// The worker module builds its default handler at import time; give it the variables its stack would.
vi.hoisted(() => {
  process.env.REGISTRY_TABLE_NAME ??= 'unit-test-registry';
  process.env.REGISTRY_JOBS_TABLE_NAME ??= 'unit-test-registry-jobs';
  process.env.INGEST_STREAM_NAME ??= 'unit-test-ingest';
  process.env.REGISTRY_JOBS_IDLE_POLL_MS ??= '2000';
});

const { makeHandler, RUN_MS } = await import('../../functions/registry-jobs.ts');

const BUCKET = 'jobs-unit';
const CONTAINER = `s3://${BUCKET}/in`;
const OUTPUT = `s3://${BUCKET}/out`;

let dynamo: TestDynamo;
let fauxqs: Awaited<ReturnType<typeof startFauxqs>>;
let s3: S3Client;
let blobs: S3BlobStore;
let tables = 0;

beforeAll(async () => {
  dynamo = await startTestDynamo();
  fauxqs = await startFauxqs({ host: '127.0.0.1', port: 0, logger: false });
  s3 = localS3Client(fauxqs.address);
  await s3.send(new CreateBucketCommand({ Bucket: BUCKET }));
  blobs = new S3BlobStore(s3);
});

afterAll(async () => {
  s3?.destroy();
  await fauxqs?.stop();
  await dynamo?.close();
});

/** A fresh jobs table and registry table. */
async function freshStores(): Promise<{ store: DynamoDbJobStore; registry: DynamoDbDeviceRegistry }> {
  const n = ++tables;
  return {
    store: new DynamoDbJobStore({ client: dynamo.doc, tableName: await dynamo.createPkSkTable(`jobs-${n}`) }),
    registry: new DynamoDbDeviceRegistry({
      client: dynamo.doc,
      tableName: await dynamo.createPkSkTable(`registry-${n}`),
    }),
  };
}

async function upload(key: string, text: string): Promise<void> {
  await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: text }));
}

async function download(key: string): Promise<string> {
  const out = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return (await out.Body?.transformToString('utf8')) ?? '';
}

/** Every device id of a registry, sorted. */
async function ids(registry: DeviceRegistry): Promise<string[]> {
  const out: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await registry.list({ limit: 1000, ...(cursor ? { cursor } : {}) });
    out.push(...page.devices.map((d) => d.deviceId));
    cursor = page.nextCursor;
  } while (cursor);
  return out.sort();
}

/** Runs a worker until there is nothing left to do (no idle polling). `shiftMs` moves its clock on. */
async function runWorker(deps: Omit<WorkerDeps, 'log'> & { log?: MemoryLog }, shiftMs = 0) {
  const now = () => new Date(Date.now() + shiftMs);
  const worker = new JobWorker({ log: new MemoryLog(), pollIntervalMs: 0, now, ...deps });
  return worker.run(Date.now() + shiftMs + 60_000);
}

const key = (n: number) => Buffer.alloc(32, (n % 250) + 1).toString('base64');
const errorLines = (text: string): ImportErrorLine[] =>
  text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as ImportErrorLine);

/** Makes every call of the wrapped objects throw once `tripped`, as if the process had died. */
class Crash {
  tripped = false;
  check(): void {
    if (this.tripped) throw new Error('process killed');
  }
  /** `target` with every method checked first; `before(name, args)` may trip the crash. */
  wrap<T extends object>(target: T, before: (name: string, args: unknown[]) => void = () => {}): T {
    return new Proxy(target, {
      get: (obj, prop, receiver) => {
        const value = Reflect.get(obj, prop, receiver);
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          this.check();
          before(String(prop), args);
          this.check();
          return value.apply(obj, args);
        };
      },
    });
  }
}

describe('LineReader', () => {
  async function* bytes(text: Buffer, size: number): AsyncIterable<Uint8Array> {
    for (let i = 0; i < text.length; i += size) yield text.subarray(i, i + size);
  }
  const readAll = async (text: Buffer, size: number, start = { offset: 0, line: 0 }, max = 64) => {
    const reader = new LineReader(bytes(text, size), start, max);
    const out = [];
    for (let line = await reader.next(); line; line = await reader.next()) out.push(line);
    return out;
  };

  it.each([1, 3, 1000])('splits lines at any chunk size (%i) and knows where each ends', async (size) => {
    const text = Buffer.from('\uFEFFa\r\nbé\n\nlast');
    const lines = await readAll(text, size);
    expect(lines).toEqual([
      { number: 1, endOffset: 6, text: 'a' },
      { number: 2, endOffset: 10, text: 'bé' },
      { number: 3, endOffset: 11, text: '' },
      { number: 4, endOffset: 15, text: 'last' },
    ]);
  });

  it('resumes from a saved offset and line number', async () => {
    const text = Buffer.from('one\ntwo\nthree\n');
    const lines = await readAll(text.subarray(4), 2, { offset: 4, line: 1 });
    expect(lines.map((l) => [l.number, l.text, l.endOffset])).toEqual([
      [2, 'two', 8],
      [3, 'three', 14],
    ]);
  });

  it('reports a line that is too long or not UTF-8 and goes on with the next', async () => {
    const text = Buffer.concat([
      Buffer.from(`${'x'.repeat(200)}\n`),
      Buffer.from([0xff, 0xfe, 0x0a]),
      Buffer.from('ok\n'),
    ]);
    const lines = await readAll(text, 7);
    expect(lines).toEqual([
      { number: 1, endOffset: 201, problem: 'line is longer than 64 bytes' },
      { number: 2, endOffset: 204, problem: 'line is not valid UTF-8' },
      { number: 3, endOffset: 207, text: 'ok' },
    ]);
  });
});

describe('replay judgement', () => {
  it('works out what each operation of a chunk did from the registry before it, in line order', () => {
    const op = (importMode: string, id: string, eTag?: string) =>
      ({ importMode, device: { deviceId: id }, ...(eTag ? { eTag } : {}) }) as never;
    const expected = expectedOutcomes(
      [
        op('create', 'new'),
        op('create', 'new'),
        op('delete', 'old'),
        op('delete', 'old'),
        op('updateIfMatchETag', 'tagged', 'e1'),
        op('updateIfMatchETag', 'tagged', 'e1'),
        op('createOrUpdate', 'free'),
      ],
      {
        new: { exists: false, etag: null },
        old: { exists: true, etag: 'x' },
        tagged: { exists: true, etag: 'e1' },
      },
    );
    expect(expected).toEqual([
      { ok: true, outcome: 'created' },
      { ok: false },
      { ok: true, outcome: 'deleted' },
      { ok: false },
      { ok: true, outcome: 'updated' },
      // The first update gave it a new etag: the same If-Match cannot match again.
      { ok: false },
      undefined,
    ]);
  });
});

describe('POST /jobs/create validation', () => {
  const allowed = new Set([BUCKET]);
  it.each<[string, unknown, RegExp]>([
    ['no type', { outputBlobContainerUri: OUTPUT }, /^type: /],
    [
      'an unknown type',
      { type: 'backup', outputBlobContainerUri: OUTPUT },
      /^type: expected 'import' or 'export'/,
    ],
    [
      'an import without input',
      { type: 'import', outputBlobContainerUri: OUTPUT },
      /^inputBlobContainerUri: required/,
    ],
    [
      'a blob-storage SAS URI',
      { type: 'export', outputBlobContainerUri: 'https://acct.blob.core.windows.net/c?sv=1&sig=2' },
      /^outputBlobContainerUri: expected s3:\/\/bucket/,
    ],
    [
      'a bad bucket name',
      { type: 'export', outputBlobContainerUri: 's3://Bad_Bucket/x' },
      /^outputBlobContainerUri: .*not an S3 bucket name/,
    ],
    [
      'a query in the URI',
      { type: 'export', outputBlobContainerUri: `${OUTPUT}?x=1` },
      /^outputBlobContainerUri: .*query/,
    ],
    ['an unknown field', { type: 'export', outputBlobContainerUri: OUTPUT, foo: 1 }, /^foo: unknown field/],
    [
      'a wrong type',
      { type: 'export', outputBlobContainerUri: OUTPUT, excludeKeysInExport: 'yes' },
      /^excludeKeysInExport: expected a boolean/,
    ],
    [
      'an input for an export',
      { type: 'export', outputBlobContainerUri: OUTPUT, inputBlobName: 'x.txt' },
      /^inputBlobName: only for import jobs/,
    ],
    [
      'configurations',
      { type: 'export', outputBlobContainerUri: OUTPUT, includeConfigurations: true },
      /^includeConfigurations: configurations are not supported/,
    ],
    [
      'a bucket the worker may not use',
      { type: 'export', outputBlobContainerUri: 's3://someone-elses/x' },
      /^outputBlobContainerUri: the hub may not use bucket 'someone-elses'/,
    ],
  ])('refuses %s, naming the field', (_what, body, message) => {
    expect(() => parseCreateJobBody(body, allowed)).toThrow(message);
  });

  it('takes what IoT Hub SDKs send: nulls, read-only fields, keyBased', () => {
    const spec = parseCreateJobBody(
      {
        type: 'import',
        jobId: null,
        status: 'unknown',
        progress: 0,
        inputBlobContainerUri: CONTAINER,
        inputBlobName: null,
        outputBlobContainerUri: `${OUTPUT}/`,
        outputBlobName: null,
        excludeKeysInExport: false,
        storageAuthenticationType: 'keyBased',
        includeConfigurations: false,
      },
      allowed,
    );
    expect(spec).toEqual({
      type: 'import',
      inputBlobContainerUri: CONTAINER,
      inputBlobName: 'devices.txt',
      outputBlobContainerUri: `${OUTPUT}/`,
      excludeKeysInExport: false,
    });
  });
});

describe('job routes', () => {
  let store: JobStore;
  let table: RouteTable;
  const call = async (method: string, path: string, body?: unknown) => {
    const response = await dispatch(table, {
      method,
      path,
      query: {},
      headers: {},
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: response.body === '' ? undefined : JSON.parse(response.body) };
  };
  beforeEach(async () => {
    ({ store } = await freshStores());
    table = new RouteTable(registryJobsRoutes({ store, allowedBuckets: new Set([BUCKET]) }));
  });

  it('creates, gets, lists and cancels a job with IoT Hub JobProperties', async () => {
    const created = await call('POST', '/jobs/create', {
      type: 'import',
      inputBlobContainerUri: CONTAINER,
      outputBlobContainerUri: OUTPUT,
    });
    expect(created.status).toBe(200);
    expect(created.body).toEqual({
      jobId: expect.any(String),
      type: 'import',
      status: 'enqueued',
      progress: 0,
      startTimeUtc: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      inputBlobContainerUri: CONTAINER,
      inputBlobName: 'devices.txt',
      outputBlobContainerUri: OUTPUT,
      excludeKeysInExport: false,
      storageAuthenticationType: 'identityBased',
    });
    const id = created.body.jobId as string;
    expect((await call('GET', `/jobs/${id}`)).body).toEqual(created.body);

    const second = await call('POST', '/jobs/create', { type: 'export', outputBlobContainerUri: OUTPUT });
    expect(second.status).toBe(403);
    expect(second.body).toMatchObject({ code: 'JobQuotaExceeded', message: expect.stringContaining(id) });

    const cancelled = await call('DELETE', `/jobs/${id}`);
    expect(cancelled.status).toBe(200);
    expect(cancelled.body).toMatchObject({ jobId: id, status: 'cancelled', endTimeUtc: expect.any(String) });
    expect((await call('DELETE', `/jobs/${id}`)).body).toMatchObject({ status: 'cancelled' });

    const next = await call('POST', '/jobs/create', { type: 'export', outputBlobContainerUri: OUTPUT });
    expect(next.status).toBe(200);
    expect(next.body).toMatchObject({ type: 'export', outputBlobName: 'devices.txt' });
    const list = await call('GET', '/jobs');
    expect(list.body.map((j: ImportExportJob) => j.jobId)).toEqual([next.body.jobId, id]);
  });

  it('answers 404 JobNotFound, 400 for a bad job id and 400 naming the field of a bad body', async () => {
    expect(await call('GET', '/jobs/nope')).toMatchObject({ status: 404, body: { code: 'JobNotFound' } });
    expect(await call('DELETE', '/jobs/nope')).toMatchObject({ status: 404, body: { code: 'JobNotFound' } });
    expect(await call('GET', '/jobs/a%20b')).toMatchObject({
      status: 400,
      body: { context: { field: 'jobId' } },
    });
    const bad = await call('POST', '/jobs/create', { type: 'export', outputBlobContainerUri: 'http://x' });
    expect(bad).toMatchObject({ status: 400, body: { context: { field: 'outputBlobContainerUri' } } });
    expect(await call('POST', '/jobs/create', '{')).toMatchObject({ status: 400 });
  });
});

describe('one job at a time', () => {
  it('refuses a second job while one is active, and takes over a marker whose job never got written', async () => {
    const { store } = await freshStores();
    const spec = { type: 'export' as const, outputBlobContainerUri: OUTPUT, excludeKeysInExport: false };
    const first = await createJob({ store }, spec);
    await expect(createJob({ store }, spec)).rejects.toBeInstanceOf(JobQuotaExceededError);
    await cancelJob({ store }, first.jobId);

    // A create that died between the marker and the job: blocks for a minute, then is taken over.
    expect(await store.claimActive('ghost', Date.now())).toBe(true);
    await expect(createJob({ store }, spec)).rejects.toThrow(/'ghost' is still active/);
    const later = () => new Date(Date.now() + 61_000);
    const taken = await createJob({ store, now: later }, spec);
    expect((await store.active())?.jobId).toBe(taken.jobId);
  });
});

describe('import job', () => {
  let store: DynamoDbJobStore;
  let registry: DynamoDbDeviceRegistry;
  beforeEach(async () => {
    ({ store, registry } = await freshStores());
  });

  /**
   * 260 lines: 200 creates (every fifth without importMode: createOrUpdate), deletes and If-Match updates
   * of devices registered before, and bad lines of every kind. Returns the file and the expected errors.
   */
  async function mixedFile() {
    const pre = await Promise.all(
      ['pre-keep', 'pre-delete', 'pre-match', 'pre-stale'].map((id) => registry.create({ deviceId: id })),
    );
    const etagOf = (id: string) => pre.find((d) => d.deviceId === id)?.etag ?? '';
    const lines: string[] = [];
    const errors: { line: number; code: string; deviceId?: string }[] = [];
    const add = (text: string, error?: { code: string; deviceId?: string }) => {
      lines.push(text);
      if (error) errors.push({ line: lines.length, ...error });
    };
    for (let i = 1; i <= 200; i++) {
      const device = {
        id: `dev-${i}`,
        authentication: { type: 'sas', symmetricKey: { primaryKey: key(i), secondaryKey: key(i + 1) } },
      };
      add(JSON.stringify(i % 5 === 0 ? device : { ...device, importMode: 'create' }));
      if (i === 30) add('this is not json', { code: 'InvalidDeviceFormat' });
      if (i === 60)
        add(JSON.stringify({ id: 'bad id!', importMode: 'create' }), {
          code: 'InvalidDeviceFormat',
          deviceId: 'bad id!',
        });
      if (i === 90)
        add(JSON.stringify({ id: 'x', importMode: 'explode' }), {
          code: 'InvalidDeviceFormat',
          deviceId: 'x',
        });
      if (i === 110) add('   ');
      if (i === 120)
        add(JSON.stringify({ id: 'pre-keep', importMode: 'create' }), {
          code: 'DeviceAlreadyExists',
          deviceId: 'pre-keep',
        });
      if (i === 130)
        add(JSON.stringify({ id: 'ghost', importMode: 'delete' }), {
          code: 'DeviceNotFound',
          deviceId: 'ghost',
        });
      if (i === 140) add(JSON.stringify({ id: 'pre-delete', importMode: 'delete' }));
      if (i === 150)
        add(
          JSON.stringify({
            id: 'pre-match',
            importMode: 'updateIfMatchETag',
            eTag: etagOf('pre-match'),
            status: 'disabled',
          }),
        );
      if (i === 160)
        add(JSON.stringify({ id: 'pre-stale', importMode: 'updateIfMatchETag', eTag: 'stale' }), {
          code: 'PreconditionFailed',
          deviceId: 'pre-stale',
        });
      if (i === 170)
        add(JSON.stringify({ id: 'dev-170', importMode: 'create' }).slice(0, 20), {
          code: 'InvalidDeviceFormat',
        });
      if (i === 180) {
        const noise = Object.fromEntries(Array.from({ length: 2000 }, (_, n) => [`field${n}`, n]));
        add(JSON.stringify({ id: 'noisy', importMode: 'create', ...noise }), {
          code: 'InvalidDeviceFormat',
          deviceId: 'noisy',
        });
      }
    }
    const expectedIds = [
      ...Array.from({ length: 200 }, (_, i) => `dev-${i + 1}`),
      'pre-keep',
      'pre-match',
      'pre-stale',
    ].sort();
    return {
      text: `${lines.join('\n')}\n`,
      errors,
      expectedIds: expectedIds.sort(),
      lineCount: lines.length,
    };
  }

  it('applies every line in chunks with its import mode and writes importErrors.log naming the bad lines', async () => {
    const { text, errors, expectedIds, lineCount } = await mixedFile();
    await upload('in/devices.txt', text);
    const changes: LifecycleChange[] = [];
    const disconnected: string[] = [];
    const job = await createJob(
      { store },
      {
        type: 'import',
        inputBlobContainerUri: CONTAINER,
        inputBlobName: 'devices.txt',
        outputBlobContainerUri: OUTPUT,
        excludeKeysInExport: false,
      },
    );
    const report = await runWorker({
      registry,
      store,
      blobs,
      lifecycleEvents: { emit: async (c) => void changes.push(...c) },
      connections: { disconnect: async (id) => void disconnected.push(id) },
    });
    expect(report.finished).toEqual([job.jobId]);
    expect(report.steps).toBe(Math.ceil(lineCount / 100) + 1);

    const done = await getJob(store, job.jobId);
    expect(done).toMatchObject({ status: 'completed', progress: 100, endTimeUtc: expect.any(String) });
    expect(done.import).toMatchObject({
      line: lineCount,
      offset: Buffer.byteLength(text),
      created: 200,
      deleted: 1,
      updated: 1,
      failed: errors.length,
    });
    expect(done.lease).toBeUndefined();
    expect(await store.active()).toBeUndefined();

    expect(await ids(registry)).toEqual(expectedIds);
    const device = await registry.get('dev-7');
    expect(device.authentication.symmetricKey).toEqual({ primaryKey: key(7), secondaryKey: key(8) });
    expect((await registry.get('pre-match')).status).toBe('disabled');

    const log = errorLines(await download('out/importErrors.log'));
    expect(
      log.map((e) => ({ line: e.line, code: e.errorCode, ...(e.deviceId ? { deviceId: e.deviceId } : {}) })),
    ).toEqual(errors);
    for (const e of log) expect(e.errorStatus).toMatch(new RegExp(`^line ${e.line}: `));
    expect(Math.max(...log.map((e) => e.errorStatus.length))).toBeLessThan(1_100);

    expect(changes.filter((c) => c.opType === 'createDeviceIdentity')).toHaveLength(200);
    expect(changes.filter((c) => c.opType === 'deleteDeviceIdentity').map((c) => c.device.deviceId)).toEqual([
      'pre-delete',
    ]);
    expect(disconnected.sort()).toEqual(['pre-delete', 'pre-match']);
  });

  it('writes an empty importErrors.log when every line succeeds', async () => {
    await upload('in/ok.txt', `${JSON.stringify({ id: 'only', importMode: 'create' })}`);
    const job = await createJob(
      { store },
      {
        type: 'import',
        inputBlobContainerUri: CONTAINER,
        inputBlobName: 'ok.txt',
        outputBlobContainerUri: OUTPUT,
        excludeKeysInExport: false,
      },
    );
    await runWorker({ registry, store, blobs });
    expect((await getJob(store, job.jobId)).status).toBe('completed');
    expect(await download('out/importErrors.log')).toBe('');
    expect(await ids(registry)).toEqual(['only']);
  });

  describe('twins of deleted devices', () => {
    let tags: MemoryTagsStore;
    let shadows: MemoryShadowStore;
    let twins: TwinService;
    beforeEach(async () => {
      tags = new MemoryTagsStore();
      shadows = new MemoryShadowStore();
      twins = new TwinService({ registry, tags, shadows });
      for (const deviceId of ['twin-gone', 'twin-kept']) {
        await registry.create({ deviceId });
        await shadows.update(deviceId, { reported: { firmware: '1.0' }, desired: { interval: 5 } });
        await twins.update(deviceId, { tags: { site: 'north' } });
      }
    });

    async function importFile(name: string, lines: readonly object[]): Promise<string> {
      await upload(`in/${name}`, `${lines.map((l) => JSON.stringify(l)).join('\n')}\n`);
      const job = await createJob(
        { store },
        {
          type: 'import',
          inputBlobContainerUri: CONTAINER,
          inputBlobName: name,
          outputBlobContainerUri: OUTPUT,
          excludeKeysInExport: false,
        },
      );
      return job.jobId;
    }

    it('forgets the twin (shadow and tags) of a device it deletes, as DELETE /devices/{id} does', async () => {
      const jobId = await importFile('twins.txt', [
        { id: 'twin-gone', importMode: 'delete' },
        { id: 'twin-kept', importMode: 'createOrUpdate' },
      ]);
      const report = await runWorker({ registry, store, blobs, twins });
      expect(report.finished).toEqual([jobId]);
      expect((await getJob(store, jobId)).import).toMatchObject({ deleted: 1, updated: 1, failed: 0 });
      expect(shadows.shadows.has('twin-gone')).toBe(false);
      expect(tags.items.has('twin-gone')).toBe(false);
      // Only the deleted device's twin goes.
      expect(shadows.shadows.get('twin-kept')?.state.reported).toEqual({ firmware: '1.0' });
      // A later device with the same id starts with an empty twin.
      await registry.create({ deviceId: 'twin-gone' });
      const twin = await twins.get('twin-gone');
      expect(twin.tags).toEqual({});
      expect(Object.keys(twin.properties.reported).filter((k) => !k.startsWith('$'))).toEqual([]);
      expect(Object.keys(twin.properties.desired).filter((k) => !k.startsWith('$'))).toEqual([]);
    });

    it('logs a shadow that could not be deleted and still completes the job', async () => {
      const log = new MemoryLog();
      const failing = new TwinService({
        registry,
        tags,
        shadows: Object.assign(Object.create(shadows) as MemoryShadowStore, {
          delete: async () => {
            throw new Error('shadow service unavailable');
          },
        }),
      });
      const jobId = await importFile('twins-fail.txt', [{ id: 'twin-gone', importMode: 'delete' }]);
      await runWorker({ registry, store, blobs, twins: failing, log });
      expect((await getJob(store, jobId)).status).toBe('completed');
      expect(await registry.find('twin-gone')).toBeUndefined();
      expect(log.at('error')).toContainEqual(
        expect.objectContaining({
          message: 'could not delete the twin of a device the import deleted',
          context: { deviceId: 'twin-gone', error: 'shadow service unavailable' },
        }),
      );
    });
  });

  it.each([
    [
      'between a chunk and its saved cursor',
      (name: string, count: { updates: number; writes: number }) =>
        name === 'update' && ++count.updates === 5,
    ],
    [
      'in the middle of a chunk',
      (name: string, count: { updates: number; writes: number }) =>
        ['create', 'replace', 'delete'].includes(name) && ++count.writes === 150,
    ],
  ])('resumes after a crash %s without losing or doubling a line', async (_when, trip) => {
    const { text, errors, expectedIds, lineCount } = await mixedFile();
    await upload('in/devices.txt', text);
    const job = await createJob(
      { store },
      {
        type: 'import',
        inputBlobContainerUri: CONTAINER,
        inputBlobName: 'devices.txt',
        outputBlobContainerUri: OUTPUT,
        excludeKeysInExport: false,
      },
    );
    const crash = new Crash();
    const count = { updates: 0, writes: 0 };
    const tripIf = (name: string) => {
      if (trip(name, count)) crash.tripped = true;
    };
    await runWorker({
      registry: crash.wrap(registry, tripIf),
      store: crash.wrap(store, tripIf),
      blobs: crash.wrap(blobs),
    });
    expect(crash.tripped).toBe(true);
    const stopped = await getJob(store, job.jobId);
    expect(stopped.status).toBe('running');
    expect(stopped.import?.pending).toBeDefined();
    // Not finished: the dead worker's lease holds it until it lapses.
    expect((await runWorker({ registry, store, blobs })).steps).toBe(0);

    const report = await runWorker({ registry, store, blobs }, 3_600_000);
    expect(report.finished).toEqual([job.jobId]);
    const done = await getJob(store, job.jobId);
    expect(done.import).toMatchObject({
      line: lineCount,
      created: 200,
      deleted: 1,
      updated: 1,
      failed: errors.length,
    });
    expect(await ids(registry)).toEqual(expectedIds);
    const log = errorLines(await download('out/importErrors.log'));
    expect(log.map((e) => e.line)).toEqual(errors.map((e) => e.line));
    expect(log.map((e) => e.errorCode)).toEqual(errors.map((e) => e.code));
  });

  it('fails the job, naming the object, when the input file does not exist', async () => {
    const job = await createJob(
      { store },
      {
        type: 'import',
        inputBlobContainerUri: CONTAINER,
        inputBlobName: 'missing.txt',
        outputBlobContainerUri: OUTPUT,
        excludeKeysInExport: false,
      },
    );
    await runWorker({ registry, store, blobs });
    const failed = await getJob(store, job.jobId);
    expect(failed).toMatchObject({
      status: 'failed',
      failureReason: `s3://${BUCKET}/in/missing.txt does not exist`,
    });
    expect(await store.active()).toBeUndefined();
  });

  it('retries an outage in the next run and fails the job after five runs in a row', async () => {
    await upload('in/one.txt', JSON.stringify({ id: 'one', importMode: 'create' }));
    const job = await createJob(
      { store },
      {
        type: 'import',
        inputBlobContainerUri: CONTAINER,
        inputBlobName: 'one.txt',
        outputBlobContainerUri: OUTPUT,
        excludeKeysInExport: false,
      },
    );
    const down = new Proxy(registry, {
      get: (obj, prop, receiver) =>
        prop === 'create' || prop === 'find'
          ? async () => {
              throw new Error('registry unavailable');
            }
          : Reflect.get(obj, prop, receiver),
    });
    for (let run = 1; run <= 4; run++) {
      await runWorker({ registry: down, store, blobs });
      expect(await getJob(store, job.jobId)).toMatchObject({ status: 'running', attempts: run });
    }
    await runWorker({ registry: down, store, blobs });
    expect(await getJob(store, job.jobId)).toMatchObject({
      status: 'failed',
      failureReason: 'registry unavailable',
    });
  });

  it('stops at a cancel: the chunk in hand finishes, nothing after it is applied', async () => {
    const lines = Array.from({ length: 300 }, (_, i) =>
      JSON.stringify({ id: `c-${i + 1}`, importMode: 'create' }),
    );
    await upload('in/cancel.txt', lines.join('\n'));
    const job = await createJob(
      { store },
      {
        type: 'import',
        inputBlobContainerUri: CONTAINER,
        inputBlobName: 'cancel.txt',
        outputBlobContainerUri: OUTPUT,
        excludeKeysInExport: false,
      },
    );
    let creates = 0;
    const cancelling = new Proxy(registry, {
      get: (obj, prop, receiver) => {
        const value = Reflect.get(obj, prop, receiver);
        if (prop !== 'create') return value;
        return async (...args: Parameters<DeviceRegistry['create']>) => {
          if (++creates === 101) await cancelJob({ store }, job.jobId);
          return registry.create(...args);
        };
      },
    });
    const log = new MemoryLog();
    const report = await runWorker({ registry: cancelling, store, blobs, log });
    expect(report.finished).toEqual([]);
    expect(log.at('info').map((e) => e.message)).toContain('import/export job cancelled');
    expect(await getJob(store, job.jobId)).toMatchObject({ status: 'cancelled' });
    expect(await ids(registry)).toHaveLength(200);
    expect(await store.active()).toBeUndefined();
    // Nothing more happens to a cancelled job.
    await runWorker({ registry, store, blobs }, 3_600_000);
    expect(await ids(registry)).toHaveLength(200);
  });
});

describe('export job', () => {
  it('writes every device as an ExportImportDevice line, with keys or without, and imports back as it is', async () => {
    const { store, registry } = await freshStores();
    for (let i = 1; i <= 30; i++) {
      await registry.create({
        deviceId: `e-${i}`,
        authentication: { type: 'sas', symmetricKey: { primaryKey: key(i), secondaryKey: key(i + 1) } },
        ...(i === 3 ? { status: 'disabled' as const, statusReason: 'lost' } : {}),
      });
    }
    await registry.create({
      deviceId: 'x509',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: 'A'.repeat(40) } },
    });
    const exportTo = async (name: string, excludeKeysInExport: boolean) => {
      const job = await createJob(
        { store },
        { type: 'export', outputBlobContainerUri: OUTPUT, outputBlobName: name, excludeKeysInExport },
      );
      await runWorker({ registry, store, blobs });
      expect(await getJob(store, job.jobId)).toMatchObject({
        status: 'completed',
        progress: 100,
        export: { exported: 31 },
      });
      return (await download(`out/${name}`))
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l));
    };

    const withKeys = await exportTo('devices.txt', false);
    expect(withKeys.map((d) => d.id).sort()).toEqual(await ids(registry));
    const e3 = withKeys.find((d) => d.id === 'e-3');
    const stored = await registry.get('e-3');
    expect(e3).toEqual({
      id: 'e-3',
      eTag: stored.etag,
      status: 'disabled',
      statusReason: 'lost',
      authentication: stored.authentication,
      capabilities: { iotEdge: false },
    });

    const withoutKeys = await exportTo('nokeys.txt', true);
    expect(withoutKeys.find((d) => d.id === 'e-3').authentication.symmetricKey).toEqual({
      primaryKey: null,
      secondaryKey: null,
    });
    expect(withoutKeys.find((d) => d.id === 'x509').authentication.x509Thumbprint.primaryThumbprint).toBe(
      'A'.repeat(40),
    );

    // The export file imports into another registry unchanged (no importMode: createOrUpdate).
    const target = await freshStores();
    const job = await createJob(
      { store: target.store },
      {
        type: 'import',
        inputBlobContainerUri: OUTPUT,
        inputBlobName: 'devices.txt',
        outputBlobContainerUri: OUTPUT,
        excludeKeysInExport: false,
      },
    );
    await runWorker({ registry: target.registry, store: target.store, blobs });
    expect(await getJob(target.store, job.jobId)).toMatchObject({
      status: 'completed',
      import: { created: 31, failed: 0 },
    });
    expect((await target.registry.get('e-3')).authentication).toEqual(stored.authentication);
    expect((await target.registry.get('e-3')).status).toBe('disabled');
  });

  it('uploads a large export in parts and survives a crash between a part and its save', async () => {
    const { store } = await freshStores();
    const registry = new MemoryDeviceRegistry();
    const count = 25_000;
    for (let i = 0; i < count; i++) await registry.create({ deviceId: `big-${String(i).padStart(5, '0')}` });
    const job = await createJob(
      { store },
      {
        type: 'export',
        outputBlobContainerUri: OUTPUT,
        outputBlobName: 'big.txt',
        excludeKeysInExport: false,
      },
    );

    // The process dies once the first part is uploaded, before the job says so.
    const crash = new Crash();
    let uploaded = false;
    const blobsThatDie = crash.wrap<BlobStore>(blobs, (name) => {
      if (name === 'putPart') uploaded = true;
    });
    const storeThatDies = crash.wrap<JobStore>(store, (name) => {
      if (name === 'update' && uploaded) crash.tripped = true;
    });
    await runWorker({ registry, store: storeThatDies, blobs: blobsThatDie, partBytes: MIN_PART_BYTES });
    expect(crash.tripped).toBe(true);
    const stopped = await getJob(store, job.jobId);
    expect(stopped.export).toMatchObject({ parts: [], exported: 0, uploadId: expect.any(String) });

    await runWorker({ registry, store, blobs, partBytes: MIN_PART_BYTES }, 3_600_000);
    const done = await getJob(store, job.jobId);
    expect(done).toMatchObject({ status: 'completed', export: { exported: count, completing: true } });
    expect(done.export?.parts.length).toBeGreaterThanOrEqual(2);
    const exported = (await download('out/big.txt')).split('\n').filter((l) => l !== '');
    expect(exported).toHaveLength(count);
    expect(new Set(exported.map((l) => JSON.parse(l).id)).size).toBe(count);
  });
});

describe('worker function', () => {
  it('runs on schedule ticks only, looking for work until 20 s before its timeout or the next tick', async () => {
    const { store, registry } = await freshStores();
    const log = new MemoryLog();
    let clock = Date.parse('2030-01-01T00:00:00Z');
    const sleeps: number[] = [];
    const handle = makeHandler({
      registry,
      store,
      blobs,
      log,
      pollIntervalMs: 1_000,
      now: () => new Date(clock),
      sleep: async (ms) => {
        sleeps.push(ms);
        clock += ms;
      },
    });
    expect(await handle({ clientId: 'd1', eventType: 'connected' })).toBeUndefined();
    expect(log.at('warn').map((e) => e.message)).toEqual(['event ignored: not a schedule tick']);

    const tick = { 'detail-type': 'Scheduled Event', source: 'aws.events' };
    // 50 s left: it stops 20 s before the timeout, 30 s in, after 29 looks a second apart.
    expect(await handle(tick, { getRemainingTimeInMillis: () => 50_000 })).toEqual({
      steps: 0,
      finished: [],
    });
    expect(sleeps).toEqual(Array.from({ length: 29 }, () => 1_000));
    // Plenty left: it stops before the next tick.
    sleeps.length = 0;
    await handle(tick, { getRemainingTimeInMillis: () => 90_000 });
    expect(sleeps.length).toBe(RUN_MS / 1_000 - 1);
  });
});
