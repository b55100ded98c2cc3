import { ValidationError } from '../errors.ts';
import { parseCreateJobBody, toJobProperties } from '../identity/jobs/job.ts';
import type { JobStore } from '../identity/jobs/ports.ts';
import { cancelJob, createJob, getJob, listJobs } from '../identity/jobs/service.ts';
import { jsonResponse, parseJsonBody, type RouteEntry } from './http.ts';

/** What {@link registryJobsRoutes} needs. */
export interface RegistryJobsRouteDeps {
  /** Where jobs are kept. */
  readonly store: JobStore;
  /** Buckets the import/export worker may read and write: the hub's own and `hub.registryJobs.buckets`. */
  readonly allowedBuckets: ReadonlySet<string>;
  /** @default () => new Date() */
  readonly now?: () => Date;
  /** @default randomUUID */
  readonly newId?: () => string;
}

const JOB_ID = /^[A-Za-z0-9._-]{1,128}$/;

function jobIdOf(raw: string | undefined): string {
  if (raw === undefined || !JOB_ID.test(raw)) {
    throw new ValidationError('InvalidJobId', 'jobId: expected 1-128 letters, digits, ., _ or -', {
      field: 'jobId',
    });
  }
  return raw;
}

/**
 * IoT Hub's import/export job routes (service REST API "Jobs - ... Import Export Job"), with S3 instead of
 * blob storage (`docs/registry-jobs.md`):
 *
 * - `POST /jobs/create`: IoT Hub's JobProperties with `type` `import` or `export` and `s3://bucket/prefix`
 *   container URIs (validated: a 400 names the field); answers 200 with the job, `enqueued`. Another job
 *   enqueued or running: 403 `JobQuotaExceeded`, as IoT Hub answers.
 * - `GET /jobs/{jobId}`: the job (404 `JobNotFound`).
 * - `GET /jobs`: every job kept (30 days after it finished), newest first.
 * - `DELETE /jobs/{jobId}`: cancels an enqueued or running job; 200 with the job, `cancelled`
 *   (409 `JobAlreadyFinished` when it completed or failed).
 *
 * The routes only record jobs; the worker function (`functions/registry-jobs.ts`) runs them.
 */
export function registryJobsRoutes(deps: RegistryJobsRouteDeps): RouteEntry[] {
  const service = {
    store: deps.store,
    ...(deps.now ? { now: deps.now } : {}),
    ...(deps.newId ? { newId: deps.newId } : {}),
  };
  return [
    {
      method: 'POST',
      pattern: '/jobs/create',
      handle: async (request) => {
        const spec = parseCreateJobBody(parseJsonBody(request), deps.allowedBuckets);
        return jsonResponse(200, toJobProperties(await createJob(service, spec)));
      },
    },
    {
      method: 'GET',
      pattern: '/jobs',
      handle: async () => jsonResponse(200, (await listJobs(deps.store)).map(toJobProperties)),
    },
    {
      method: 'GET',
      pattern: '/jobs/{jobId}',
      handle: async (_request, params) =>
        jsonResponse(200, toJobProperties(await getJob(deps.store, jobIdOf(params.jobId)))),
    },
    {
      method: 'DELETE',
      pattern: '/jobs/{jobId}',
      handle: async (_request, params) =>
        jsonResponse(200, toJobProperties(await cancelJob(service, jobIdOf(params.jobId)))),
    },
  ];
}
