import { Arn, CfnOutput, Duration, Fn, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as kinesis from 'aws-cdk-lib/aws-kinesis';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { S3_SERVER_ACCESS_LOGS_USE_BUCKET_POLICY } from 'aws-cdk-lib/cx-api';
import { Construct } from 'constructs';
import {
  DEFAULT_IDLE_POLL_MS,
  REGISTRY_JOBS_ENV,
  type RegistryJobsConfig,
} from '../functions/core/identity/jobs/config.ts';
import { grantLifecycleWrite } from './event-sources.ts';
import { HubFunction } from './hub-function.ts';
import { HubTable } from './tables.ts';

/** Props of {@link RegistryJobs}. */
export interface RegistryJobsProps {
  /**
   * `hub.registryJobs`: existing buckets, besides the one this construct makes, that jobs may read and
   * write, and how often an idle worker looks for a job.
   * @default no other bucket; look every 2 seconds
   */
  readonly config?: RegistryJobsConfig;
  /** The identity registry, which imports write and exports read. */
  readonly registry: dynamodb.ITable;
  /** The service API, which creates, lists and cancels jobs. */
  readonly serviceApi: HubFunction;
  /** The D2C ingest stream, where imports put device lifecycle events (write only). */
  readonly ingestStream: kinesis.IStream;
}

/** What the worker may do to the objects of a job bucket: read input, write output, drop a dead upload. */
export const JOB_OBJECT_ACTIONS = ['s3:GetObject', 's3:PutObject', 's3:AbortMultipartUpload'] as const;

/**
 * IoT Hub's registry import/export jobs with S3 instead of blob storage:
 *
 * - the jobs table (a hub table of its own, construct id `Jobs`: a contract, renaming replaces it);
 * - the import/export bucket (versioned, S3-managed encryption, public access blocked, TLS only, server
 *   access logs in a bucket of its own, incomplete multipart uploads aborted after a day), stack output
 *   `RegistryJobsBucketName`;
 * - the worker function, started every minute by a schedule, which runs jobs in chunks with its state in
 *   the jobs table (`functions/registry-jobs.ts`). It may read and write the registry and the jobs table,
 *   read, write and abort uploads of objects in the job buckets (nothing else in S3), put lifecycle events
 *   on the ingest stream, disconnect devices an import deleted or disabled, and delete the shadows of
 *   devices an import deleted (nothing else on shadows);
 * - for the service API: read/write on the jobs table and `REGISTRY_JOBS_BUCKETS`, the buckets it accepts
 *   in container URIs.
 */
export class RegistryJobs extends Construct {
  /** Jobs, the active-job marker and import error lines. */
  readonly jobs: HubTable;
  /** The hub's own import/export bucket. */
  readonly bucket: s3.Bucket;
  /** Server access logs of {@link bucket}. */
  readonly accessLogs: s3.Bucket;
  /** Runs the jobs. */
  readonly worker: HubFunction;
  /** Starts the worker every minute. */
  readonly schedule: events.Rule;

  constructor(scope: Construct, id: string, props: RegistryJobsProps) {
    super(scope, id);
    const stack = Stack.of(this);
    const extraBuckets = props.config?.buckets ?? [];
    // Log delivery through a bucket policy (aws:SourceArn-scoped), not the legacy ACL.
    this.node.setContext(S3_SERVER_ACCESS_LOGS_USE_BUCKET_POLICY, true);
    this.jobs = new HubTable(this, 'Jobs');

    this.accessLogs = new s3.Bucket(this, 'AccessLogs', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      // The only encryption S3 server access logging delivers to.
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      lifecycleRules: [{ expiration: Duration.days(365) }],
      removalPolicy: RemovalPolicy.RETAIN,
    });
    Validations.of(this.accessLogs).acknowledge({
      id: 'AwsSolutions-S1',
      reason:
        "This bucket holds the import/export bucket's server access logs; logging it would log the logs",
    });
    this.bucket = new s3.Bucket(this, 'Bucket', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      versioned: true,
      lifecycleRules: [
        // Overwritten device files and logs stay as noncurrent versions for a month, then go.
        { noncurrentVersionExpiration: Duration.days(30) },
        // An export that was cancelled or failed between two runs may leave its upload behind.
        { abortIncompleteMultipartUploadAfter: Duration.days(1) },
      ],
      serverAccessLogsBucket: this.accessLogs,
      removalPolicy: RemovalPolicy.RETAIN,
    });

    // The worker runs inside the minute between two starts (see RUN_MS in functions/registry-jobs.ts),
    // so its timeout outlasts the minute and consecutive runs overlap a little; a lease on the job keeps
    // them from working it together.
    this.worker = new HubFunction(this, 'Worker', {
      entry: 'functions/registry-jobs.ts',
      description: 'Registry import/export jobs: device files in S3 into and out of the registry',
      timeout: Duration.seconds(90),
      environment: {
        [REGISTRY_JOBS_ENV.idlePollMs]: String(props.config?.idlePollMs ?? DEFAULT_IDLE_POLL_MS),
      },
    })
      .bindTableReadWrite('REGISTRY_TABLE_NAME', props.registry)
      .bindTableReadWrite(REGISTRY_JOBS_ENV.jobsTable, this.jobs.table);
    grantLifecycleWrite(this.worker, props.ingestStream);
    const objectArns = [
      this.bucket.arnForObjects('*'),
      ...extraBuckets.map((name) => `arn:${stack.partition}:s3:::${name}/*`),
    ];
    iam.Grant.addToPrincipal({
      grantee: this.worker.function,
      actions: [...JOB_OBJECT_ACTIONS],
      resourceArns: objectArns,
    });
    const anyClient = Arn.format({ service: 'iot', resource: 'client', resourceName: '*' }, stack);
    this.worker.function.addToRolePolicy(
      new iam.PolicyStatement({ actions: ['iot:DeleteConnection'], resources: [anyClient] }),
    );
    // A device the import deletes loses its shadow (thing {deviceId}), as through DELETE /devices/{id}:
    // delete only, no read or write of shadows (shadow actions take thing ARNs).
    const anyThing = Arn.format({ service: 'iot', resource: 'thing', resourceName: '*' }, stack);
    this.worker.function.addToRolePolicy(
      new iam.PolicyStatement({ actions: ['iot:DeleteThingShadow'], resources: [anyThing] }),
    );
    const bucketLogicalId = stack.getLogicalId(this.bucket.node.defaultChild as s3.CfnBucket);
    Validations.of(this.worker).acknowledge(
      {
        id: `AwsSolutions-IAM5[Resource::<${bucketLogicalId}.Arn>/*]`,
        reason:
          'Jobs read and write objects the caller names (s3://bucket/prefix/devices.txt), so any key of the ' +
          "hub's import/export bucket, which holds nothing else",
      },
      ...extraBuckets.map((name) => ({
        id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::${name}/*]`,
        reason: `Jobs read and write objects the caller names in '${name}', listed in hub.registryJobs.buckets`,
      })),
      {
        id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:client/*]',
        reason: 'An import may delete or disable any device of this hub and then cuts its connection',
      },
      {
        id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:thing/*]',
        reason:
          'An import may delete any device of this hub and then deletes its shadow (thing/{deviceId}), so a ' +
          'later device with the same id does not inherit it',
      },
      {
        id: 'Serverless-LambdaDLQ',
        reason:
          'Its events are schedule ticks that carry no data: every job is durable in the jobs table and the ' +
          'next run resumes what a failed run left',
      },
    );

    this.schedule = new events.Rule(this, 'Schedule', {
      description: 'Starts the registry import/export worker every minute',
      schedule: events.Schedule.rate(Duration.minutes(1)),
      // A tick older than a minute is superseded by the next one.
      targets: [
        new targets.LambdaFunction(this.worker.function, {
          retryAttempts: 2,
          maxEventAge: Duration.minutes(1),
        }),
      ],
    });
    Validations.of(this.schedule).acknowledge({
      id: 'Serverless-EventBusDLQ',
      reason: 'A schedule tick carries no data; a tick that cannot be delivered is replaced by the next one',
    });

    // The service API records jobs and refuses containers in buckets the worker may not use.
    props.serviceApi.bindTableReadWrite(REGISTRY_JOBS_ENV.jobsTable, this.jobs.table);
    props.serviceApi.function.addEnvironment(
      REGISTRY_JOBS_ENV.buckets,
      Fn.join(',', [this.bucket.bucketName, ...extraBuckets]),
    );

    new CfnOutput(stack, 'RegistryJobsBucketName', { value: this.bucket.bucketName });
  }
}
