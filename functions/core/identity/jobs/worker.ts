import { randomUUID } from 'node:crypto';
import { BlobError, JobChangedError } from './errors.ts';
import { ExportRun } from './export.ts';
import { type ImportDeps, ImportRun } from './import.ts';
import { type ImportExportJob, isFinished } from './job.ts';
import { finishedJob, STALE_MARKER_MS } from './service.ts';

/** How long a worker's hold on a job lasts without a save; every chunk's save renews it. */
export const DEFAULT_LEASE_MS = 30_000;
/** How often an idle worker looks for a job. */
export const DEFAULT_POLL_INTERVAL_MS = 2_000;
/** Runs in a row that may end in an unexpected error (an outage, a bug) before the job fails. */
export const DEFAULT_MAX_ATTEMPTS = 5;

/** What the worker needs. */
export interface WorkerDeps extends ImportDeps {
  /** Bytes per uploaded export part. @default DEFAULT_PART_BYTES (8 MiB) */
  readonly partBytes?: number;
  /** @default DEFAULT_LEASE_MS */
  readonly leaseMs?: number;
  /** How often an idle worker looks for a job; 0: return at once when there is none. @default DEFAULT_POLL_INTERVAL_MS */
  readonly pollIntervalMs?: number;
  /** @default DEFAULT_MAX_ATTEMPTS */
  readonly maxAttempts?: number;
  /** @default a timer */
  readonly sleep?: (ms: number) => Promise<void>;
  /** Id of this worker's leases. @default a random UUID per run */
  readonly newOwner?: () => string;
}

/** What one {@link JobWorker.run} did. */
export interface WorkerReport {
  /** Chunks (import) or parts (export) saved. */
  readonly steps: number;
  /** Jobs that reached a final status in this run. */
  readonly finished: readonly string[];
}

interface Stepper {
  step(
    job: ImportExportJob,
    save: (next: ImportExportJob) => Promise<ImportExportJob>,
  ): Promise<{ job: ImportExportJob; finished: boolean }>;
  close?(): Promise<void>;
}

/**
 * Runs import/export jobs, one at a time, in chunks, until a deadline: the worker function's body.
 *
 * It finds the active job through the active-job marker (no scan), takes a lease on it (a conditional
 * write: two overlapping runs never work one job together), and works it chunk by chunk, saving the job
 * (cursor, counts, progress, renewed lease) after every chunk with a write conditional on the version it
 * read. A save that loses (the job was cancelled) stops the work. At the deadline it saves and lets go
 * of the lease, so the next run continues at once; a run that died keeps its lease until it lapses
 * (`leaseMs`), then the next run takes over and resumes from the last save.
 *
 * A missing input, bucket or upload, or refused access, fails the job with that reason. Any other error
 * (throttling, an outage) ends the run and is retried by the next; after `maxAttempts` runs in a row
 * without progress the job fails with the last error.
 */
export class JobWorker {
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly now: () => Date;

  constructor(private readonly deps: WorkerDeps) {
    this.sleep = deps.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
    this.now = deps.now ?? (() => new Date());
  }

  /** Works jobs until `deadline` (epoch ms); returns early when idle and `pollIntervalMs` is 0. */
  async run(deadline: number): Promise<WorkerReport> {
    const { store, log } = this.deps;
    const owner = (this.deps.newOwner ?? randomUUID)();
    const poll = this.deps.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS;
    const report = { steps: 0, finished: [] as string[] };
    const idle = async (): Promise<boolean> => {
      if (poll <= 0 || this.now().getTime() + poll >= deadline) return false;
      await this.sleep(poll);
      return true;
    };
    while (this.now().getTime() < deadline) {
      const active = await store.active();
      if (active === undefined) {
        if (await idle()) continue;
        break;
      }
      const job = await store.get(active.jobId);
      if (job === undefined) {
        if (this.now().getTime() - active.since > STALE_MARKER_MS) await store.releaseActive(active.jobId);
        else if (!(await idle())) break;
        continue;
      }
      if (isFinished(job.status)) {
        await store.releaseActive(job.jobId);
        continue;
      }
      const now = this.now().getTime();
      if (job.lease !== undefined && job.lease.owner !== owner && job.lease.until > now) {
        if (await idle()) continue;
        break;
      }
      const leased: ImportExportJob = {
        ...job,
        status: 'running',
        version: job.version + 1,
        lease: { owner, until: now + (this.deps.leaseMs ?? DEFAULT_LEASE_MS) },
      };
      try {
        await store.update(leased);
      } catch (error) {
        if (error instanceof JobChangedError) continue;
        throw error;
      }
      if (job.status === 'enqueued')
        log.info('import/export job started', { jobId: job.jobId, type: job.type });
      const outcome = await this.work(leased, owner, deadline, report);
      if (outcome === 'deadline' || outcome === 'retry') break;
    }
    return report;
  }

  /** Works `job` (leased by `owner`) until it finishes, stops or the deadline comes. */
  private async work(
    leased: ImportExportJob,
    owner: string,
    deadline: number,
    report: { steps: number; finished: string[] },
  ): Promise<'finished' | 'stopped' | 'retry' | 'deadline'> {
    const { store, log } = this.deps;
    const leaseMs = this.deps.leaseMs ?? DEFAULT_LEASE_MS;
    const exporter = new ExportRun(this.deps);
    const stepper: Stepper = leased.type === 'import' ? new ImportRun(this.deps) : exporter;
    let current = leased;
    const save = async (next: ImportExportJob, keepLease = true): Promise<ImportExportJob> => {
      const { lease: _lease, ...rest } = next;
      const stored: ImportExportJob = {
        ...rest,
        version: current.version + 1,
        ...(keepLease ? { lease: { owner, until: this.now().getTime() + leaseMs } } : {}),
      };
      await store.update(stored);
      current = stored;
      return stored;
    };
    const finish = async (job: ImportExportJob, status: 'completed' | 'failed', reason?: string) => {
      await save(finishedJob(job, status, this.now(), reason), false);
      await store.releaseActive(job.jobId);
      report.finished.push(job.jobId);
      log.info('import/export job finished', {
        jobId: job.jobId,
        type: job.type,
        status,
        ...(reason !== undefined ? { failureReason: reason } : {}),
        ...(job.import ? { import: { ...job.import, pending: undefined } } : {}),
        ...(job.export ? { exported: job.export.exported } : {}),
      });
    };
    try {
      for (;;) {
        if (this.now().getTime() >= deadline) {
          await save(current, false);
          return 'deadline';
        }
        const { job: next, finished } = await stepper.step(current, save);
        report.steps++;
        if (finished) {
          await finish(next, 'completed');
          return 'finished';
        }
        await save({ ...next, attempts: 0 });
      }
    } catch (error) {
      return this.failed(error, current, exporter, finish);
    } finally {
      await stepper.close?.();
    }
  }

  /** Decides what an error during a job means: cancelled, failed for good, or retry in the next run. */
  private async failed(
    error: unknown,
    job: ImportExportJob,
    exporter: ExportRun,
    finish: (job: ImportExportJob, status: 'completed' | 'failed', reason?: string) => Promise<void>,
  ): Promise<'stopped' | 'retry'> {
    const { store, log } = this.deps;
    try {
      if (error instanceof JobChangedError) {
        const now = await store.get(job.jobId);
        if (now?.status === 'cancelled') {
          log.info('import/export job cancelled', { jobId: job.jobId });
          if (now.type === 'export') await exporter.abandon(now);
        }
        return 'stopped';
      }
      const message = error instanceof Error ? error.message : String(error);
      const attempts = job.attempts + 1;
      if (error instanceof BlobError || attempts >= (this.deps.maxAttempts ?? DEFAULT_MAX_ATTEMPTS)) {
        if (job.type === 'export') await exporter.abandon(job).catch(() => undefined);
        await finish(job, 'failed', message);
        return 'stopped';
      }
      log.error('import/export job run failed; the next run retries', {
        jobId: job.jobId,
        attempts,
        error: message,
      });
      const { lease: _lease, ...rest } = job;
      await store.update({ ...rest, attempts, version: job.version + 1 });
      return 'retry';
    } catch (inner) {
      // Lost to a cancel, or the store is down too: the lease lapses and the next run decides again.
      log.error('import/export job: could not record a failed run', {
        jobId: job.jobId,
        error: inner instanceof Error ? inner.message : String(inner),
      });
      return 'retry';
    }
  }
}
