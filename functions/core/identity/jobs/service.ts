import { randomUUID } from 'node:crypto';
import { TransientError } from '../../errors.ts';
import {
  JobAlreadyFinishedError,
  JobChangedError,
  JobNotFoundError,
  JobQuotaExceededError,
} from './errors.ts';
import {
  type ImportExportJob,
  isFinished,
  JOB_RETENTION_SECONDS,
  type JobSpec,
  type JobStatus,
  newJob,
} from './job.ts';
import type { JobStore } from './ports.ts';

/**
 * How long an active-job marker may name a job that does not exist before another create may take it over:
 * the marker is written first and the job right after, so a marker without its job is a create that died
 * between the two writes (or is still between them).
 */
export const STALE_MARKER_MS = 60_000;

/** What the job operations of the service API need. */
export interface JobServiceDeps {
  readonly store: JobStore;
  /** @default () => new Date() */
  readonly now?: () => Date;
  /** @default randomUUID */
  readonly newId?: () => string;
}

/** `job` finished with `status` at `now`: end time, retention, no lease. */
export function finishedJob(
  job: ImportExportJob,
  status: Extract<JobStatus, 'completed' | 'failed' | 'cancelled'>,
  now: Date,
  failureReason?: string,
): ImportExportJob {
  const { lease: _lease, ...rest } = job;
  return {
    ...rest,
    status,
    endTimeUtc: now.toISOString(),
    expiresAt: Math.floor(now.getTime() / 1000) + JOB_RETENTION_SECONDS,
    ...(status === 'completed' ? { progress: 100 } : {}),
    ...(failureReason !== undefined ? { failureReason } : {}),
  };
}

/**
 * Creates an import/export job, enqueued, if no other one is enqueued or running (IoT Hub runs one at a
 * time on every tier): first the active-job marker (a conditional write, so two creates cannot both win),
 * then the job. A marker that names a finished job, or for a minute a job that never got written, is taken
 * over. Throws `JobQuotaExceededError` naming the active job.
 */
export async function createJob(deps: JobServiceDeps, spec: JobSpec): Promise<ImportExportJob> {
  const now = (deps.now ?? (() => new Date()))();
  const job = newJob((deps.newId ?? randomUUID)(), spec, now);
  const { store } = deps;
  let claimed = await store.claimActive(job.jobId, now.getTime());
  for (let attempt = 0; !claimed && attempt < 3; attempt++) {
    const active = await store.active();
    if (active === undefined) {
      claimed = await store.claimActive(job.jobId, now.getTime());
      continue;
    }
    const other = await store.get(active.jobId);
    const abandoned =
      other === undefined ? now.getTime() - active.since > STALE_MARKER_MS : isFinished(other.status);
    if (!abandoned) throw new JobQuotaExceededError(active.jobId);
    claimed = await store.claimActive(job.jobId, now.getTime(), active.jobId);
  }
  if (!claimed) {
    throw new TransientError('JobContention', 'import/export jobs are being created concurrently; retry', {});
  }
  await store.put(job);
  return job;
}

/** The job, or `JobNotFoundError`. */
export async function getJob(store: JobStore, jobId: string): Promise<ImportExportJob> {
  const job = await store.get(jobId);
  if (job === undefined) throw new JobNotFoundError(jobId);
  return job;
}

/** Every kept job, newest first. */
export async function listJobs(store: JobStore): Promise<ImportExportJob[]> {
  const jobs = await store.list();
  return jobs.sort((a, b) => b.startTimeUtc.localeCompare(a.startTimeUtc) || a.jobId.localeCompare(b.jobId));
}

/**
 * Cancels a job that is enqueued or running: it becomes `cancelled` at once and stops being the active job,
 * so another may be created. A worker in the middle of a chunk finishes that chunk's writes, finds the job
 * changed when it saves, and stops (aborting an export's multipart upload). Cancelling a cancelled job
 * answers it again; a completed or failed one is `JobAlreadyFinishedError`.
 */
export async function cancelJob(deps: JobServiceDeps, jobId: string): Promise<ImportExportJob> {
  const { store } = deps;
  for (let attempt = 0; attempt < 5; attempt++) {
    const job = await getJob(store, jobId);
    if (job.status === 'cancelled') {
      await store.releaseActive(jobId);
      return job;
    }
    if (isFinished(job.status)) throw new JobAlreadyFinishedError(jobId, job.status);
    const cancelled = {
      ...finishedJob(job, 'cancelled', (deps.now ?? (() => new Date()))()),
      version: job.version + 1,
    };
    try {
      await store.update(cancelled);
    } catch (error) {
      if (error instanceof JobChangedError) continue;
      throw error;
    }
    await store.releaseActive(jobId);
    return cancelled;
  }
  throw new TransientError('JobContention', `import/export job '${jobId}' kept changing; retry the cancel`, {
    jobId,
  });
}
