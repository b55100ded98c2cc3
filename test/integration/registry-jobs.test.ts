import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { startFauxqs } from 'fauxqs';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ImportErrorLine } from '../../functions/core/identity/jobs/import.ts';
import type { JobPropertiesJson } from '../../functions/core/identity/jobs/job.ts';
import { localS3Client } from '../../local/emulators.ts';
import type { LocalHubEndpoints } from '../../local/hub.ts';
import { sasCredentials, service } from '../support/devices.ts';
import { type HubProcess, startHubProcess, tempDataDir } from '../support/hub-process.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const key = (n: number) => Buffer.alloc(32, (n % 250) + 1).toString('base64');

/** Every device id in the registry, through `GET /devices` pages. */
async function registryIds(endpoints: LocalHubEndpoints): Promise<string[]> {
  const out: string[] = [];
  let continuation: string | null = null;
  do {
    const page = await service(
      endpoints,
      'GET',
      '/devices?top=1000',
      undefined,
      continuation ? { 'x-ms-continuation': continuation } : {},
    );
    expect(page.status).toBe(200);
    out.push(...(page.body as { deviceId: string }[]).map((d) => d.deviceId));
    continuation = page.headers.get('x-ms-continuation');
  } while (continuation);
  return out.sort();
}

async function job(endpoints: LocalHubEndpoints, id: string): Promise<JobPropertiesJson> {
  const got = await service(endpoints, 'GET', `/jobs/${id}`);
  expect(got.status).toBe(200);
  return got.body as JobPropertiesJson;
}

/** Polls the job until `done(job)` holds; throws with the last state after `timeoutMs`. */
async function waitForJob(
  endpoints: LocalHubEndpoints,
  id: string,
  done: (job: JobPropertiesJson) => boolean,
  timeoutMs = 120_000,
  everyMs = 250,
): Promise<JobPropertiesJson> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const current = await job(endpoints, id);
    if (done(current)) return current;
    if (Date.now() > deadline)
      throw new Error(`job ${id} did not get there in ${timeoutMs} ms: ${JSON.stringify(current)}`);
    await sleep(everyMs);
  }
}

const finished = (j: JobPropertiesJson) => ['completed', 'failed', 'cancelled'].includes(j.status);

async function upload(s3: S3Client, bucket: string, key: string, body: string): Promise<void> {
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
}

async function download(s3: S3Client, bucket: string, key: string): Promise<string> {
  const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return (await out.Body?.transformToString('utf8')) ?? '';
}

const jsonLines = <T>(text: string): T[] =>
  text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as T);

/**
 * A devices.txt of 2,000 lines: devices `{prefix}-0001`... in every create mode (some lines without
 * importMode, i.e. createOrUpdate), changes to devices registered before (`{prefix}-keep`,
 * `{prefix}-delete`, `{prefix}-disable`), and bad lines. Returns the text, the ids the registry must
 * then hold, and the line numbers and codes `importErrors.log` must name.
 */
function devicesFile(prefix: string) {
  const lines: string[] = [];
  const ids: string[] = [`${prefix}-keep`, `${prefix}-disable`];
  const errors: { line: number; code: string }[] = [];
  const special: Record<number, { text: string; code?: string; id?: string }> = {
    100: { text: 'not json at all', code: 'InvalidDeviceFormat' },
    500: { text: JSON.stringify({ id: 'has space', importMode: 'create' }), code: 'InvalidDeviceFormat' },
    700: { text: JSON.stringify({ id: `${prefix}-delete`, importMode: 'delete' }) },
    800: {
      text: JSON.stringify({ id: `${prefix}-keep`, importMode: 'create' }),
      code: 'DeviceAlreadyExists',
    },
    900: { text: JSON.stringify({ id: `${prefix}-disable`, importMode: 'update', status: 'disabled' }) },
    1000: {
      text: JSON.stringify({ id: `${prefix}-x`, importMode: 'teleport' }),
      code: 'InvalidDeviceFormat',
    },
    1200: { text: JSON.stringify({ id: `${prefix}-ghost`, importMode: 'delete' }), code: 'DeviceNotFound' },
    1500: {
      text: JSON.stringify({ id: `${prefix}-y`, importMode: 'updateIfMatchETag' }),
      code: 'InvalidDeviceFormat',
    },
    1999: { text: JSON.stringify({ id: `${prefix}-z`, twin: {} }), code: 'InvalidDeviceFormat' },
  };
  const modes = ['create', 'createOrUpdate', undefined, 'createOrUpdateIfMatchETag'] as const;
  for (let n = 1; n <= 2000; n++) {
    const s = special[n];
    if (s) {
      lines.push(s.text);
      if (s.code) errors.push({ line: n, code: s.code });
      continue;
    }
    const id = `${prefix}-${String(n).padStart(4, '0')}`;
    const mode = modes[n % modes.length];
    ids.push(id);
    lines.push(
      JSON.stringify({
        id,
        ...(mode ? { importMode: mode } : {}),
        ...(mode === 'createOrUpdateIfMatchETag' ? { eTag: 'anything' } : {}),
        authentication: { type: 'sas', symmetricKey: { primaryKey: key(n), secondaryKey: key(n + 7) } },
      }),
    );
  }
  return { text: `${lines.join('\n')}\n`, ids: ids.sort(), errors };
}

/** The reported properties of a device's twin, without `$version` and `$metadata`. */
async function reportedOf(endpoints: LocalHubEndpoints, deviceId: string): Promise<Record<string, unknown>> {
  const twin = await service(endpoints, 'GET', `/twins/${deviceId}`);
  expect(twin.status).toBe(200);
  const reported = (twin.body as { properties: { reported: Record<string, unknown> } }).properties.reported;
  return Object.fromEntries(Object.entries(reported).filter(([name]) => !name.startsWith('$')));
}

/** Connects the device over MQTT and reports `reported` to its shadow; resolves on `update/accepted`. */
async function reportOverMqtt(
  endpoints: LocalHubEndpoints,
  deviceId: string,
  reported: Record<string, unknown>,
): Promise<void> {
  const device = (await service(endpoints, 'GET', `/devices/${deviceId}`)).body as {
    authentication: { symmetricKey: { primaryKey: string } };
  };
  const creds = sasCredentials(endpoints, deviceId, device.authentication.symmetricKey.primaryKey);
  const client = await mqtt.connectAsync(endpoints.mqtt, { ...creds, reconnectPeriod: 0 });
  try {
    const accepted = `$aws/things/${deviceId}/shadow/update/accepted`;
    const got = new Promise<void>((resolve) =>
      client.on('message', (topic) => {
        if (topic === accepted) resolve();
      }),
    );
    await client.subscribeAsync(accepted, { qos: 1 });
    await client.publishAsync(
      `$aws/things/${deviceId}/shadow/update`,
      JSON.stringify({ state: { reported } }),
      {
        qos: 1,
      },
    );
    await got;
  } finally {
    await client.endAsync(true);
  }
}

async function registerPre(endpoints: LocalHubEndpoints, prefix: string): Promise<void> {
  for (const suffix of ['keep', 'delete', 'disable']) {
    const id = `${prefix}-${suffix}`;
    const put = await service(endpoints, 'PUT', `/devices/${id}`, { deviceId: id });
    expect(put.status).toBe(201);
  }
}

describe('registry import/export jobs on the local hub', () => {
  let hub: HubProcess;
  let s3: S3Client;
  let bucket: string;
  beforeAll(async () => {
    hub = await startHubProcess();
    s3 = localS3Client(hub.endpoints.awsServices);
    bucket = hub.endpoints.registryJobsBucket;
  });
  afterAll(async () => {
    s3?.destroy();
    await hub?.stop();
  });

  it('writes the import/export bucket to endpoints.json and creates it in the local S3', async () => {
    expect(bucket).toMatch(/^hub-registryjobsbucket/);
    await upload(s3, bucket, 'probe.txt', 'ok');
    expect(await download(s3, bucket, 'probe.txt')).toBe('ok');
  });

  it('imports 2,000 lines of devices.txt with their import modes and names the bad lines in importErrors.log', async () => {
    const e = hub.endpoints;
    await registerPre(e, 'imp');
    // The device the import deletes has a twin with a reported property.
    await reportOverMqtt(e, 'imp-delete', { firmware: '2.1' });
    expect(await reportedOf(e, 'imp-delete')).toEqual({ firmware: '2.1' });
    const file = devicesFile('imp');
    await upload(s3, bucket, 'batch-1/devices.txt', file.text);
    const created = await service(e, 'POST', '/jobs/create?api-version=2021-04-12', {
      type: 'import',
      inputBlobContainerUri: `s3://${bucket}/batch-1`,
      outputBlobContainerUri: `s3://${bucket}/batch-1/out`,
    });
    expect(created.status).toBe(200);
    const id = (created.body as JobPropertiesJson).jobId;
    expect(created.body).toMatchObject({ type: 'import', status: 'enqueued', inputBlobName: 'devices.txt' });

    // One import/export job at a time: IoT Hub's 403 JobQuotaExceeded.
    const second = await service(e, 'POST', '/jobs/create', {
      type: 'export',
      outputBlobContainerUri: `s3://${bucket}/elsewhere`,
    });
    expect(second.status).toBe(403);
    expect(second.body).toMatchObject({ code: 'JobQuotaExceeded', message: expect.stringContaining(id) });

    const done = await waitForJob(e, id, finished);
    expect(done).toMatchObject({ status: 'completed', progress: 100, endTimeUtc: expect.any(String) });
    expect(await registryIds(e)).toEqual(file.ids);
    const device = (await service(e, 'GET', '/devices/imp-0002')).body as {
      authentication: { symmetricKey: unknown };
    };
    expect(device.authentication.symmetricKey).toEqual({ primaryKey: key(2), secondaryKey: key(9) });
    expect(((await service(e, 'GET', '/devices/imp-disable')).body as { status: string }).status).toBe(
      'disabled',
    );

    const log = jsonLines<ImportErrorLine>(await download(s3, bucket, 'batch-1/out/importErrors.log'));
    expect(log.map((l) => ({ line: l.line, code: l.errorCode }))).toEqual(file.errors);
    for (const l of log) expect(l.errorStatus).toMatch(new RegExp(`^line ${l.line}: `));

    const list = await service(e, 'GET', '/jobs');
    expect((list.body as JobPropertiesJson[]).map((j) => j.jobId)).toContain(id);

    // The import deleted the device's shadow with it: a device registered again under that id starts
    // with no reported properties, as after DELETE /devices/{id}.
    const again = await service(e, 'PUT', '/devices/imp-delete', { deviceId: 'imp-delete' });
    expect(again.status).toBe(201);
    expect(await reportedOf(e, 'imp-delete')).toEqual({});
  });

  it('exports every device to devices.txt, with keys and without', async () => {
    const e = hub.endpoints;
    await service(e, 'PUT', '/devices/exp-1', {
      deviceId: 'exp-1',
      authentication: { type: 'sas', symmetricKey: { primaryKey: key(1), secondaryKey: key(2) } },
    });
    const all = await registryIds(e);
    const exportTo = async (prefix: string, excludeKeysInExport: boolean) => {
      const created = await service(e, 'POST', '/jobs/create', {
        type: 'export',
        outputBlobContainerUri: `s3://${bucket}/${prefix}`,
        excludeKeysInExport,
      });
      expect(created.status).toBe(200);
      const done = await waitForJob(e, (created.body as JobPropertiesJson).jobId, finished);
      expect(done).toMatchObject({ status: 'completed', progress: 100, outputBlobName: 'devices.txt' });
      return jsonLines<{ id: string; authentication: { symmetricKey: unknown } }>(
        await download(s3, bucket, `${prefix}/devices.txt`),
      );
    };
    const withKeys = await exportTo('export-keys', false);
    expect(withKeys.map((d) => d.id).sort()).toEqual(all);
    expect(withKeys.find((d) => d.id === 'exp-1')?.authentication.symmetricKey).toEqual({
      primaryKey: key(1),
      secondaryKey: key(2),
    });
    const withoutKeys = await exportTo('export-nokeys', true);
    expect(withoutKeys.map((d) => d.id).sort()).toEqual(all);
    for (const d of withoutKeys)
      expect(d.authentication.symmetricKey).toEqual({ primaryKey: null, secondaryKey: null });
  });

  it.each<[string, unknown, string]>([
    ['no type', { outputBlobContainerUri: 's3://some-bucket/y' }, 'type'],
    [
      'a SAS URI',
      { type: 'export', outputBlobContainerUri: 'https://a.blob.core.windows.net/c?sig=x' },
      'outputBlobContainerUri',
    ],
    [
      'an import without input',
      { type: 'import', outputBlobContainerUri: 's3://some-bucket/y' },
      'inputBlobContainerUri',
    ],
    [
      'an unknown field',
      { type: 'export', outputBlobContainerUri: 's3://some-bucket/y', colour: 'red' },
      'colour',
    ],
    [
      'a string for a boolean',
      { type: 'export', outputBlobContainerUri: 's3://some-bucket/y', excludeKeysInExport: 'no' },
      'excludeKeysInExport',
    ],
  ])('answers 400 naming the field for %s', async (_what, body, field) => {
    const e = hub.endpoints;
    const answer = await service(e, 'POST', '/jobs/create', body);
    expect(answer.status).toBe(400);
    expect(answer.body).toMatchObject({ context: { field }, message: expect.stringContaining(`${field}: `) });
  });

  it('answers 400 for a bucket the hub may not use, and 404 for an unknown job', async () => {
    const e = hub.endpoints;
    const other = await service(e, 'POST', '/jobs/create', {
      type: 'export',
      outputBlobContainerUri: 's3://not-ours/x',
    });
    expect(other).toMatchObject({
      status: 400,
      body: { code: 'BucketNotAllowed', context: { field: 'outputBlobContainerUri' } },
    });
    expect((await service(e, 'GET', '/jobs/no-such-job')).status).toBe(404);
    expect((await service(e, 'DELETE', '/jobs/no-such-job')).status).toBe(404);
  });

  it('cancels a job before it ran: nothing is imported, and the next job may start', async () => {
    const e = hub.endpoints;
    await upload(
      s3,
      bucket,
      'cancelled/devices.txt',
      `${JSON.stringify({ id: 'never-imported', importMode: 'create' })}\n`,
    );
    const created = await service(e, 'POST', '/jobs/create', {
      type: 'import',
      inputBlobContainerUri: `s3://${bucket}/cancelled`,
      outputBlobContainerUri: `s3://${bucket}/cancelled`,
    });
    const id = (created.body as JobPropertiesJson).jobId;
    const cancelled = await service(e, 'DELETE', `/jobs/${id}`);
    expect(cancelled.status).toBe(200);
    expect(cancelled.body).toMatchObject({ jobId: id, status: 'cancelled' });
    // The worker looks for work every two seconds: give it a few looks.
    await sleep(5_000);
    expect(await job(e, id)).toMatchObject({ status: 'cancelled' });
    expect((await service(e, 'GET', '/devices/never-imported')).status).toBe(404);

    const next = await service(e, 'POST', '/jobs/create', {
      type: 'export',
      outputBlobContainerUri: `s3://${bucket}/after-cancel`,
    });
    expect(next.status).toBe(200);
    const done = await waitForJob(e, (next.body as JobPropertiesJson).jobId, finished);
    expect(done.status).toBe('completed');
    expect((await service(e, 'DELETE', `/jobs/${done.jobId}`)).status).toBe(409);
  });
});

describe('an import across a SIGKILL of the hub', () => {
  it('completes after a restart with every device once and every bad line named once', async () => {
    // S3 lives outside the hub, as it would in AWS, so the files survive the crash.
    const services = await startFauxqs({ host: '127.0.0.1', port: 0, logger: false });
    const dataDir = tempDataDir('registry-jobs-crash-');
    const options = { dataDir, args: [`--aws-services-url=${services.address}`] };
    let hub = await startHubProcess(options);
    const s3 = localS3Client(services.address);
    try {
      const bucket = hub.endpoints.registryJobsBucket;
      await registerPre(hub.endpoints, 'crash');
      const file = devicesFile('crash');
      await upload(s3, bucket, 'crash/devices.txt', file.text);
      const created = await service(hub.endpoints, 'POST', '/jobs/create', {
        type: 'import',
        inputBlobContainerUri: `s3://${bucket}/crash`,
        outputBlobContainerUri: `s3://${bucket}/crash`,
      });
      const id = (created.body as JobPropertiesJson).jobId;
      // Kill it in the middle: some chunks saved, most not.
      const midway = await waitForJob(hub.endpoints, id, (j) => j.progress > 0 || finished(j), 60_000, 50);
      await hub.kill();
      expect(midway).toMatchObject({ status: 'running' });
      expect(midway.progress).toBeLessThan(60);

      hub = await startHubProcess(options);
      const done = await waitForJob(hub.endpoints, id, finished, 180_000);
      expect(done).toMatchObject({ status: 'completed', progress: 100 });
      expect(await registryIds(hub.endpoints)).toEqual(file.ids);
      const log = jsonLines<ImportErrorLine>(await download(s3, bucket, 'crash/importErrors.log'));
      expect(log.map((l) => ({ line: l.line, code: l.errorCode }))).toEqual(file.errors);
    } finally {
      s3.destroy();
      await hub.stop();
      await services.stop();
    }
    // Two hub starts, the dead worker's lease (30 s) and the rest of the import.
  }, 300_000);
});
