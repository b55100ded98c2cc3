import { z } from 'zod';
import { ValidationError } from '../../errors.ts';
import { parseWith } from '../device.ts';

/** IoT Hub's import/export job types (its `JobProperties.type` values for these jobs). */
export const JOB_TYPES = ['import', 'export'] as const;
/** An import/export job type. */
export type JobType = (typeof JOB_TYPES)[number];

/** The statuses an import/export job goes through, IoT Hub's `JobProperties.status` values. */
export const JOB_STATUSES = ['enqueued', 'running', 'completed', 'failed', 'cancelled'] as const;
/** An import/export job status. */
export type JobStatus = (typeof JOB_STATUSES)[number];

/** Statuses a job never leaves. */
export const FINISHED_STATUSES: ReadonlySet<JobStatus> = new Set(['completed', 'failed', 'cancelled']);

/** Whether a job in `status` is done (completed, failed or cancelled). */
export function isFinished(status: JobStatus): boolean {
  return FINISHED_STATUSES.has(status);
}

/** Name of the device file an import reads and an export writes, unless the request names another (IoT Hub's). */
export const DEVICES_BLOB_NAME = 'devices.txt';
/** Name of the file an import writes its per-line errors to, in the output container (IoT Hub's). */
export const IMPORT_ERRORS_BLOB_NAME = 'importErrors.log';
/** How long a finished job is kept (IoT Hub keeps job history 30 days). */
export const JOB_RETENTION_SECONDS = 30 * 24 * 3600;

/** An S3 object. */
export interface BlobRef {
  readonly bucket: string;
  readonly key: string;
}

/** Where a job reads or writes: a bucket and a key prefix (`''`, or ending in `/`). */
export interface BlobContainer {
  readonly bucket: string;
  readonly prefix: string;
}

/** How the registry stood, for one device, before a chunk of an import was applied. */
export interface DeviceBefore {
  readonly exists: boolean;
  /** Its etag, when it existed. */
  readonly etag: string | null;
}

/**
 * A chunk of an import that was being applied when the job's state was last saved. A worker that finds one
 * applies the same lines again, judging each failure against `before` (see `import.ts`).
 */
export interface PendingChunk {
  /** Byte offset just after the chunk's last line. */
  readonly endOffset: number;
  /** Number of the chunk's last line (1-based). */
  readonly endLine: number;
  /** The registry before the chunk, for every device the chunk touches. */
  readonly before: Readonly<Record<string, DeviceBefore>>;
}

/** Where an import stands. */
export interface ImportState {
  /** Bytes of the input file consumed (the next line starts here). */
  readonly offset: number;
  /** Lines consumed. */
  readonly line: number;
  /** Size of the input file in bytes, once it was read. */
  readonly size?: number;
  readonly created: number;
  readonly updated: number;
  readonly deleted: number;
  /** Lines that failed (bad lines and refused operations): the lines of `importErrors.log`. */
  readonly failed: number;
  /** The chunk in flight, if a worker stopped while applying it. */
  readonly pending?: PendingChunk;
}

/** One uploaded part of an export's multipart upload. */
export interface UploadedPart {
  readonly partNumber: number;
  readonly etag: string;
}

/** Where an export stands. */
export interface ExportState {
  /** Registry list cursor just after the last device written (absent: from the start). */
  readonly cursor?: string;
  /** Devices written so far (in uploaded parts). */
  readonly exported: number;
  /** The multipart upload of the output file, once the output outgrew one part. */
  readonly uploadId?: string;
  readonly parts: readonly UploadedPart[];
  /** Every part is uploaded; only CompleteMultipartUpload is left. */
  readonly completing: boolean;
}

/** Which worker holds a job, until when (epoch ms). */
export interface JobLease {
  readonly owner: string;
  readonly until: number;
}

/** An import/export job as the hub keeps it. */
export interface ImportExportJob {
  readonly jobId: string;
  readonly type: JobType;
  readonly status: JobStatus;
  /** When the job was created (IoT Hub's `startTimeUtc`). */
  readonly startTimeUtc: string;
  /** When it finished. */
  readonly endTimeUtc?: string;
  /** Percent done, 0–100. */
  readonly progress: number;
  readonly failureReason?: string;
  /** As given (`s3://bucket/prefix`); imports only. */
  readonly inputBlobContainerUri?: string;
  /** The input file's name in that container; imports only. */
  readonly inputBlobName?: string;
  /** As given. */
  readonly outputBlobContainerUri: string;
  /** The export's output file name (exports only; an import writes `importErrors.log`). */
  readonly outputBlobName?: string;
  readonly excludeKeysInExport: boolean;
  /** Bumped by every write: writes are conditional on it. */
  readonly version: number;
  readonly lease?: JobLease;
  /** Runs in a row that ended in an unexpected error; reset by progress. */
  readonly attempts: number;
  readonly import?: ImportState;
  readonly export?: ExportState;
  /** Epoch seconds after which the table may drop the item (set when the job finishes). */
  readonly expiresAt?: number;
}

const BUCKET_PATTERN = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
/** Whether `text` holds a control character (U+0000–U+001F, U+007F). */
function hasControlCharacter(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x20 || code === 0x7f) return true;
  }
  return false;
}
const KEY_MAX_BYTES = 1024;

/**
 * Why `uri` is not a container URI this hub takes (`s3://bucket` or `s3://bucket/key/prefix`), or
 * `undefined`. IoT Hub's container URIs are blob-storage SAS URIs; here they name an S3 bucket, and access
 * comes from the hub's IAM role, never from a token in the URI.
 */
export function describeContainerUriProblem(uri: string): string | undefined {
  if (!uri.startsWith('s3://')) {
    return `expected s3://bucket or s3://bucket/prefix, got ${JSON.stringify(uri.slice(0, 100))} (blob-storage SAS URIs are not supported: the hub reads and writes S3 with its own IAM role)`;
  }
  const rest = uri.slice('s3://'.length);
  const slash = rest.indexOf('/');
  const bucket = slash === -1 ? rest : rest.slice(0, slash);
  const prefix = slash === -1 ? '' : rest.slice(slash + 1);
  if (!BUCKET_PATTERN.test(bucket) || bucket.includes('..')) {
    return `${JSON.stringify(bucket)} is not an S3 bucket name (3-63 lower-case letters, digits, '.' and '-')`;
  }
  if (hasControlCharacter(prefix) || /[?#]/.test(prefix)) {
    return 'the key prefix must not contain control characters, ? or # (no query strings or SAS tokens)';
  }
  if (prefix.startsWith('/') || prefix.includes('//'))
    return "the key prefix must not contain empty segments ('//')";
  if (Buffer.byteLength(prefix) > 512) return 'the key prefix must be at most 512 bytes';
  return undefined;
}

/** The bucket and key prefix of a container URI that passed {@link describeContainerUriProblem}. */
export function parseContainerUri(uri: string): BlobContainer {
  const problem = describeContainerUriProblem(uri);
  if (problem !== undefined) {
    throw new ValidationError('InvalidContainerUri', `container URI: ${problem}`, { field: 'uri' });
  }
  const rest = uri.slice('s3://'.length);
  const slash = rest.indexOf('/');
  if (slash === -1) return { bucket: rest, prefix: '' };
  const prefix = rest.slice(slash + 1);
  return {
    bucket: rest.slice(0, slash),
    prefix: prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/`,
  };
}

/** The object `name` in the container `uri`. */
export function blobIn(uri: string, name: string): BlobRef {
  const { bucket, prefix } = parseContainerUri(uri);
  return { bucket, key: `${prefix}${name}` };
}

const containerUriSchema = z
  .string({ error: 'expected a string: s3://bucket or s3://bucket/prefix' })
  .superRefine((uri, ctx) => {
    const problem = describeContainerUriProblem(uri);
    if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
  });

const blobNameSchema = z
  .string({ error: 'expected a string' })
  .min(1, 'must not be empty')
  .refine((name) => !hasControlCharacter(name), 'must not contain control characters')
  .refine((name) => !name.startsWith('/'), "must not start with '/'")
  .refine((name) => Buffer.byteLength(name) <= KEY_MAX_BYTES - 512, 'must be at most 512 bytes');

/**
 * Body of `POST /jobs/create`: IoT Hub's JobProperties for an import or export job. Unknown fields are
 * rejected. The fields IoT Hub generates (`jobId`, `status`, `progress`, times, `failureReason`) and
 * `storageAuthenticationType` are accepted and ignored, so an SDK that posts a whole JobProperties works;
 * `null` stands for absent, as SDKs serialize it.
 */
export const createJobBodySchema = z
  .strictObject({
    type: z.enum(JOB_TYPES, { error: "expected 'import' or 'export'" }),
    inputBlobContainerUri: containerUriSchema.nullish(),
    inputBlobName: blobNameSchema.nullish(),
    outputBlobContainerUri: containerUriSchema,
    outputBlobName: blobNameSchema.nullish(),
    excludeKeysInExport: z.boolean({ error: 'expected a boolean' }).nullish(),
    jobId: z.string().nullish(),
    status: z.string().nullish(),
    progress: z.number().nullish(),
    startTimeUtc: z.string().nullish(),
    endTimeUtc: z.string().nullish(),
    failureReason: z.string().nullish(),
    storageAuthenticationType: z
      .enum(['keyBased', 'identityBased'], { error: "expected 'keyBased' or 'identityBased'" })
      .nullish(),
    includeConfigurations: z
      .literal(false, { error: 'configurations are not supported by this hub; omit it or send false' })
      .nullish(),
    configurationsBlobName: z.null({ error: 'configurations are not supported by this hub' }).optional(),
  })
  .superRefine((body, ctx) => {
    const only = (field: string, type: JobType) =>
      ctx.addIssue({ code: 'custom', path: [field], message: `only for ${type} jobs` });
    if (body.type === 'import') {
      if (body.inputBlobContainerUri == null) {
        ctx.addIssue({
          code: 'custom',
          path: ['inputBlobContainerUri'],
          message: 'required for import jobs',
        });
      }
      if (body.outputBlobName != null) only('outputBlobName', 'export');
      // excludeKeysInExport is ignored for imports, as IoT Hub does (SDKs send false).
    } else {
      if (body.inputBlobContainerUri != null) only('inputBlobContainerUri', 'import');
      if (body.inputBlobName != null) only('inputBlobName', 'import');
    }
  });

/** What `POST /jobs/create` asks for, validated. */
export interface JobSpec {
  readonly type: JobType;
  readonly inputBlobContainerUri?: string;
  readonly inputBlobName?: string;
  readonly outputBlobContainerUri: string;
  readonly outputBlobName?: string;
  readonly excludeKeysInExport: boolean;
}

/**
 * Parses a `POST /jobs/create` body; throws a field-naming `ValidationError`. `allowedBuckets` are the
 * buckets the hub's worker may use: a container in any other bucket is refused here, naming the field,
 * instead of failing later with access denied.
 */
export function parseCreateJobBody(body: unknown, allowedBuckets: ReadonlySet<string>): JobSpec {
  const valid = parseWith(createJobBodySchema, body);
  for (const field of ['inputBlobContainerUri', 'outputBlobContainerUri'] as const) {
    const uri = valid[field];
    if (uri == null) continue;
    const { bucket } = parseContainerUri(uri);
    if (!allowedBuckets.has(bucket)) {
      throw new ValidationError(
        'BucketNotAllowed',
        `${field}: the hub may not use bucket '${bucket}'; use its import/export bucket (stack output RegistryJobsBucketName) or list the bucket in hub.registryJobs.buckets`,
        { field },
      );
    }
  }
  if (valid.type === 'import') {
    return {
      type: 'import',
      inputBlobContainerUri: valid.inputBlobContainerUri ?? '',
      inputBlobName: valid.inputBlobName ?? DEVICES_BLOB_NAME,
      outputBlobContainerUri: valid.outputBlobContainerUri,
      excludeKeysInExport: false,
    };
  }
  return {
    type: 'export',
    outputBlobContainerUri: valid.outputBlobContainerUri,
    outputBlobName: valid.outputBlobName ?? DEVICES_BLOB_NAME,
    excludeKeysInExport: valid.excludeKeysInExport ?? false,
  };
}

/** A new job for `spec`, enqueued at `now`. */
export function newJob(jobId: string, spec: JobSpec, now: Date): ImportExportJob {
  return {
    jobId,
    type: spec.type,
    status: 'enqueued',
    startTimeUtc: now.toISOString(),
    progress: 0,
    ...(spec.inputBlobContainerUri !== undefined
      ? { inputBlobContainerUri: spec.inputBlobContainerUri }
      : {}),
    ...(spec.inputBlobName !== undefined ? { inputBlobName: spec.inputBlobName } : {}),
    outputBlobContainerUri: spec.outputBlobContainerUri,
    ...(spec.outputBlobName !== undefined ? { outputBlobName: spec.outputBlobName } : {}),
    excludeKeysInExport: spec.excludeKeysInExport,
    version: 1,
    attempts: 0,
  };
}

/** IoT Hub's JobProperties JSON for an import/export job, as the service API answers it. */
export interface JobPropertiesJson {
  readonly jobId: string;
  readonly type: JobType;
  readonly status: JobStatus;
  readonly progress: number;
  readonly startTimeUtc: string;
  readonly endTimeUtc?: string;
  readonly failureReason?: string;
  readonly inputBlobContainerUri?: string;
  readonly inputBlobName?: string;
  readonly outputBlobContainerUri: string;
  readonly outputBlobName?: string;
  readonly excludeKeysInExport: boolean;
  /** Always `identityBased`: the hub uses its own IAM role, never keys in the URI. */
  readonly storageAuthenticationType: 'identityBased';
}

/** A job as IoT Hub's JobProperties: only the public fields, in IoT Hub's names. */
export function toJobProperties(job: ImportExportJob): JobPropertiesJson {
  return {
    jobId: job.jobId,
    type: job.type,
    status: job.status,
    progress: job.progress,
    startTimeUtc: job.startTimeUtc,
    ...(job.endTimeUtc !== undefined ? { endTimeUtc: job.endTimeUtc } : {}),
    ...(job.failureReason !== undefined ? { failureReason: job.failureReason } : {}),
    ...(job.inputBlobContainerUri !== undefined ? { inputBlobContainerUri: job.inputBlobContainerUri } : {}),
    ...(job.inputBlobName !== undefined ? { inputBlobName: job.inputBlobName } : {}),
    outputBlobContainerUri: job.outputBlobContainerUri,
    ...(job.type === 'export' && job.outputBlobName !== undefined
      ? { outputBlobName: job.outputBlobName }
      : {}),
    excludeKeysInExport: job.excludeKeysInExport,
    storageAuthenticationType: 'identityBased',
  };
}

const countSchema = z.number().int().nonnegative();

/**
 * A stored job, as adapters read it back: not strict (the item carries its keys and TTL), but every job
 * field must be present and well-typed.
 */
export const jobRecordSchema: z.ZodType<ImportExportJob> = z.object({
  jobId: z.string(),
  type: z.enum(JOB_TYPES),
  status: z.enum(JOB_STATUSES),
  startTimeUtc: z.string(),
  endTimeUtc: z.string().optional(),
  progress: z.number(),
  failureReason: z.string().optional(),
  inputBlobContainerUri: z.string().optional(),
  inputBlobName: z.string().optional(),
  outputBlobContainerUri: z.string(),
  outputBlobName: z.string().optional(),
  excludeKeysInExport: z.boolean(),
  version: z.number().int(),
  lease: z.object({ owner: z.string(), until: z.number() }).optional(),
  attempts: countSchema,
  import: z
    .object({
      offset: countSchema,
      line: countSchema,
      size: countSchema.optional(),
      created: countSchema,
      updated: countSchema,
      deleted: countSchema,
      failed: countSchema,
      pending: z
        .object({
          endOffset: countSchema,
          endLine: countSchema,
          before: z.record(z.string(), z.object({ exists: z.boolean(), etag: z.string().nullable() })),
        })
        .optional(),
    })
    .optional(),
  export: z
    .object({
      cursor: z.string().optional(),
      exported: countSchema,
      uploadId: z.string().optional(),
      parts: z.array(z.object({ partNumber: z.number().int().positive(), etag: z.string() })),
      completing: z.boolean(),
    })
    .optional(),
  expiresAt: z.number().optional(),
});
