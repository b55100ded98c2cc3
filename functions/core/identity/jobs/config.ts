import { z } from 'zod';
import { requireEnv } from '../../env.ts';
import { HubError } from '../../errors.ts';

/** Environment variables the stack gives the import/export worker and the service API. */
export const REGISTRY_JOBS_ENV = {
  /** The jobs table. */
  jobsTable: 'REGISTRY_JOBS_TABLE_NAME',
  /** Comma-separated buckets jobs may use: the hub's import/export bucket first, then `hub.registryJobs.buckets`. */
  buckets: 'REGISTRY_JOBS_BUCKETS',
  /** How often an idle worker looks for a new job, in ms (`hub.registryJobs.idlePollMs`). */
  idlePollMs: 'REGISTRY_JOBS_IDLE_POLL_MS',
} as const;

/** Default of `hub.registryJobs.idlePollMs`. */
export const DEFAULT_IDLE_POLL_MS = 2_000;

const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/**
 * `hub.registryJobs`: buckets besides the hub's own import/export bucket that import/export jobs may read
 * and write (the worker gets `s3:GetObject`, `s3:PutObject` and `s3:AbortMultipartUpload` on their objects,
 * nothing else). A bucket encrypted with a customer-managed KMS key also needs a key grant the stack does
 * not make.
 */
export const registryJobsConfigSchema = z
  .object({
    /** Names of existing buckets, up to 10. */
    buckets: z
      .array(z.string().regex(BUCKET_NAME, 'an S3 bucket name (3-63 lower-case letters, digits, . and -)'))
      .max(10)
      .default([]),
    /**
     * How often the worker, started every minute, looks for a new job while it has none, in ms: a job
     * starts within this long of its creation. 0: an idle worker returns at once, so a job waits for the
     * next start (up to a minute) and an idle hub runs the worker for milliseconds a minute, not the whole
     * minute.
     */
    idlePollMs: z.number().int().min(0).max(30_000).default(DEFAULT_IDLE_POLL_MS),
  })
  .strict();

/** Validated `hub.registryJobs`. */
export type RegistryJobsConfig = z.infer<typeof registryJobsConfigSchema>;

/** The buckets in `REGISTRY_JOBS_BUCKETS`, read once at cold start. */
export function allowedBucketsFromEnv(env: NodeJS.ProcessEnv): ReadonlySet<string> {
  const names = requireEnv(env, REGISTRY_JOBS_ENV.buckets)
    .split(',')
    .map((name) => name.trim())
    .filter((name) => name !== '');
  const bad = names.find((name) => !BUCKET_NAME.test(name));
  if (names.length === 0 || bad !== undefined) {
    throw new HubError(
      'InvalidEnvironment',
      `environment variable ${REGISTRY_JOBS_ENV.buckets} must list bucket names, got '${bad ?? ''}'`,
      { key: REGISTRY_JOBS_ENV.buckets },
    );
  }
  return new Set(names);
}

/** `REGISTRY_JOBS_IDLE_POLL_MS`, read once at cold start: a whole number of ms, 0–30000. */
export function idlePollFromEnv(env: NodeJS.ProcessEnv): number {
  const raw = requireEnv(env, REGISTRY_JOBS_ENV.idlePollMs);
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value > 30_000) {
    throw new HubError(
      'InvalidEnvironment',
      `environment variable ${REGISTRY_JOBS_ENV.idlePollMs}='${raw}' is not a whole number of ms from 0 to 30000`,
      { key: REGISTRY_JOBS_ENV.idlePollMs },
    );
  }
  return value;
}
