import { Match, type Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { REGISTRY_JOBS_ENV } from '../../functions/core/identity/jobs/config.ts';
import type { HubStack } from '../../lib/hub-stack.ts';
import { JOB_OBJECT_ACTIONS } from '../../lib/registry-jobs.ts';
import { type CfnTemplate, readTemplate } from '../../local/template.ts';
import {
  arnOf,
  configError,
  iamStatements,
  logicalId,
  referencedIds,
  roleLogicalId,
  synthHub,
  synthWithNag,
} from './hub-template.ts';

let stack: HubStack;
let template: Template;
let ids: {
  jobs: string;
  bucket: string;
  accessLogs: string;
  worker: string;
  workerRole: string;
  schedule: string;
  registry: string;
  ingest: string;
  serviceApi: string;
  serviceApiRole: string;
};

beforeAll(() => {
  ({ stack, template } = synthHub());
  const jobs = stack.registryJobs;
  ids = {
    jobs: logicalId(jobs.jobs.table),
    bucket: logicalId(jobs.bucket),
    accessLogs: logicalId(jobs.accessLogs),
    worker: logicalId(jobs.worker.function),
    workerRole: roleLogicalId(jobs.worker),
    schedule: logicalId(jobs.schedule),
    registry: logicalId(stack.registry.table),
    ingest: logicalId(stack.d2c.ingestStream),
    serviceApi: logicalId(stack.identity.serviceApi.function),
    serviceApiRole: roleLogicalId(stack.identity.serviceApi),
  };
});

function props(id: string, from: Template = template): Record<string, unknown> {
  const resource = from.toJSON().Resources?.[id];
  if (resource === undefined) throw new Error(`no resource ${id}`);
  return (resource.Properties ?? {}) as Record<string, unknown>;
}

function environment(id: string, from: Template = template): Record<string, unknown> {
  return (props(id, from).Environment as { Variables: Record<string, unknown> }).Variables;
}

const statementsOf = (roleId: string, from: Template = template) =>
  iamStatements(from).filter((s) => s.effect === 'Allow' && s.roles.includes(roleId));

describe('jobs table', () => {
  it('is a hub table of its own (pk/sk, on demand, TTL on expiresAt, kept on deletion)', () => {
    expect(ids.jobs).not.toBe(ids.registry);
    expect(props(ids.jobs)).toMatchObject({
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      BillingMode: 'PAY_PER_REQUEST',
      TimeToLiveSpecification: { AttributeName: 'expiresAt', Enabled: true },
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
    });
    expect(template.toJSON().Resources?.[ids.jobs]?.DeletionPolicy).toBe('Retain');
  });
});

describe('import/export bucket', () => {
  it('is versioned, S3-encrypted, private, logged, and drops dead multipart uploads after a day', () => {
    expect(props(ids.bucket)).toMatchObject({
      VersioningConfiguration: { Status: 'Enabled' },
      BucketEncryption: {
        ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }],
      },
      PublicAccessBlockConfiguration: {
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      },
      LoggingConfiguration: { DestinationBucketName: { Ref: ids.accessLogs } },
      LifecycleConfiguration: {
        Rules: expect.arrayContaining([
          expect.objectContaining({ AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 } }),
          expect.objectContaining({ NoncurrentVersionExpiration: { NoncurrentDays: 30 } }),
        ]),
      },
    });
    expect(template.toJSON().Resources?.[ids.bucket]?.DeletionPolicy).toBe('Retain');
  });

  it('refuses requests that are not TLS', () => {
    template.hasResourceProperties('AWS::S3::BucketPolicy', {
      Bucket: { Ref: ids.bucket },
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Effect: 'Deny',
            Action: 's3:*',
            Condition: { Bool: { 'aws:SecureTransport': 'false' } },
          }),
        ]),
      },
    });
  });

  it('is exported as RegistryJobsBucketName', () => {
    template.hasOutput('RegistryJobsBucketName', { Value: { Ref: ids.bucket } });
  });
});

describe('worker', () => {
  it('runs functions/registry-jobs.ts for 90 s with the registry, jobs table and ingest stream names', () => {
    const resource = template.toJSON().Resources?.[ids.worker];
    expect(resource?.Metadata?.['serverless-iot-hub:entry']).toBe('functions/registry-jobs.ts');
    expect(props(ids.worker).Timeout).toBe(90);
    expect(environment(ids.worker)).toMatchObject({
      REGISTRY_TABLE_NAME: { Ref: ids.registry },
      [REGISTRY_JOBS_ENV.jobsTable]: { Ref: ids.jobs },
      INGEST_STREAM_NAME: { Ref: ids.ingest },
      [REGISTRY_JOBS_ENV.idlePollMs]: '2000',
    });
  });

  it('looks for new jobs as often as hub.registryJobs.idlePollMs says (0: not at all between starts)', () => {
    const other = synthHub({ registryJobs: { idlePollMs: 0 } });
    const worker = logicalId(other.stack.registryJobs.worker.function);
    expect(environment(worker, other.template)[REGISTRY_JOBS_ENV.idlePollMs]).toBe('0');
    expect(configError({ registryJobs: { idlePollMs: 30_001 } }).message).toMatch(
      /hub\.registryJobs\.idlePollMs/,
    );
  });

  it('is started every minute by its own schedule', () => {
    expect(props(ids.schedule)).toMatchObject({
      ScheduleExpression: 'rate(1 minute)',
      State: 'ENABLED',
      Targets: [expect.objectContaining({ Arn: arnOf(ids.worker) })],
    });
    const model = readTemplate(template.toJSON() as CfnTemplate, 'hub');
    expect(model.schedules).toContainEqual({
      logicalId: ids.schedule,
      everyMs: 60_000,
      functionLogicalIds: [ids.worker],
    });
  });

  it('may get, put and abort uploads of objects in the hub bucket only: no other S3 action, no wildcard action', () => {
    const statements = statementsOf(ids.workerRole);
    const s3 = statements.filter((s) => s.actions.some((a) => a.startsWith('s3:')));
    expect(s3).toHaveLength(1);
    expect([...s3[0]!.actions].sort()).toEqual([...JOB_OBJECT_ACTIONS].sort());
    expect(s3[0]!.resources).toEqual([{ 'Fn::Join': ['', [arnOf(ids.bucket), '/*']] }]);
    for (const s of statements) for (const action of s.actions) expect(action).not.toMatch(/\*$/);
  });

  it('reads and writes the registry and the jobs table, writes (not reads) the ingest stream', () => {
    const on = (resourceId: string) =>
      statementsOf(ids.workerRole)
        .filter((s) => referencedIds(s.resources).includes(resourceId))
        .flatMap((s) => s.actions);
    for (const table of [ids.registry, ids.jobs]) {
      expect(on(table)).toEqual(
        expect.arrayContaining(['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:Query']),
      );
    }
    expect(on(ids.ingest)).toEqual(['kinesis:PutRecord', 'kinesis:PutRecords']);
  });
});

describe('worker IoT access', () => {
  it('may delete any thing shadow (no other shadow action: it never reads or writes one) and cut any client connection', () => {
    const iot = statementsOf(ids.workerRole).filter((s) => s.actions.some((a) => a.startsWith('iot:')));
    const byAction = Object.fromEntries(
      iot.flatMap((s) => s.actions.filter((a) => a.startsWith('iot:')).map((a) => [a, s.resources])),
    );
    const iotArn = (resource: string) => ({
      'Fn::Join': [
        '',
        [
          'arn:',
          { Ref: 'AWS::Partition' },
          ':iot:',
          { Ref: 'AWS::Region' },
          ':',
          { Ref: 'AWS::AccountId' },
          `:${resource}`,
        ],
      ],
    });
    expect(byAction['iot:DeleteThingShadow']).toEqual([iotArn('thing/*')]);
    expect(byAction['iot:DeleteConnection']).toEqual([iotArn('client/*')]);
    const shadowActions = iot.flatMap((s) => s.actions).filter((a) => /Shadow/.test(a));
    expect(shadowActions).toEqual(['iot:DeleteThingShadow']);
  });
});

describe('service API', () => {
  it('records jobs in the jobs table and is told the buckets it may accept', () => {
    const env = environment(ids.serviceApi);
    expect(env[REGISTRY_JOBS_ENV.jobsTable]).toEqual({ Ref: ids.jobs });
    expect(env[REGISTRY_JOBS_ENV.buckets]).toEqual({ Ref: ids.bucket });
    const onJobs = statementsOf(ids.serviceApiRole)
      .filter((s) => referencedIds(s.resources).includes(ids.jobs))
      .flatMap((s) => s.actions);
    expect(onJobs).toEqual(
      expect.arrayContaining(['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:DeleteItem']),
    );
  });

  it('gets no S3 access: the worker alone reads and writes the files', () => {
    const s3 = statementsOf(ids.serviceApiRole).filter((s) => s.actions.some((a) => a.startsWith('s3:')));
    expect(s3).toEqual([]);
  });
});

describe('hub.registryJobs.buckets', () => {
  it('adds each listed bucket to the worker grant and to the buckets the service API accepts', () => {
    const other = synthHub({ registryJobs: { buckets: ['partner-devices', 'archive.example'] } });
    const jobs = other.stack.registryJobs;
    const bucket = logicalId(jobs.bucket);
    const s3 = statementsOf(roleLogicalId(jobs.worker), other.template).filter((s) =>
      s.actions.includes('s3:GetObject'),
    );
    expect(s3).toHaveLength(1);
    expect(s3[0]!.resources).toEqual([
      { 'Fn::Join': ['', [arnOf(bucket), '/*']] },
      { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':s3:::partner-devices/*']] },
      { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':s3:::archive.example/*']] },
    ]);
    const env = environment(logicalId(other.stack.identity.serviceApi.function), other.template);
    expect(env[REGISTRY_JOBS_ENV.buckets]).toEqual({
      // CDK folds the literal names into one string: the same comma-separated list.
      'Fn::Join': [',', [{ Ref: bucket }, 'partner-devices,archive.example']],
    });
  });

  it('refuses a bucket name that S3 would refuse, naming the entry', () => {
    expect(configError({ registryJobs: { buckets: ['Not_A_Bucket'] } }).message).toMatch(
      /hub\.registryJobs\.buckets\.0: an S3 bucket name/,
    );
    expect(configError({ registryJobs: { bucket: [] } }).message).toMatch(
      /hub\.registryJobs\.bucket: unknown key/,
    );
  });
});

describe('local hub', () => {
  it('creates the bucket and knows the output and both environments', () => {
    const model = readTemplate(template.toJSON() as CfnTemplate, 'hub');
    const bucketName = `hub-${ids.bucket}`.toLowerCase();
    expect(model.buckets.map((b) => b.name)).toContain(bucketName);
    expect(model.outputs.RegistryJobsBucketName).toBe(bucketName);
    const api = model.functions.find((f) => f.logicalId === ids.serviceApi);
    expect(api?.environment[REGISTRY_JOBS_ENV.buckets]).toBe(bucketName);
    const worker = model.functions.find((f) => f.logicalId === ids.worker);
    expect(worker?.entry).toBe('functions/registry-jobs.ts');
    expect(worker?.environment[REGISTRY_JOBS_ENV.jobsTable]).toBe(`hub-${ids.jobs}`);
  });
});

describe('cdk-nag', () => {
  it('has no unacknowledged finding, with extra buckets configured too', () => {
    const { error, findings } = synthWithNag({ registryJobs: { buckets: ['partner-devices'] } });
    expect(findings).toEqual([]);
    expect(error).toBeUndefined();
  });
});
