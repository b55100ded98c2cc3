import { ConflictError, HubError, LimitExceededError, NotFoundError } from '../../errors.ts';

/** No import/export job with this id. Code `JobNotFound`; maps to 404. */
export class JobNotFoundError extends NotFoundError {
  constructor(jobId: string, options?: ErrorOptions) {
    super('JobNotFound', `import/export job '${jobId}' does not exist`, { jobId }, options);
  }
}

/**
 * Another import/export job is enqueued or running: the hub runs one at a time, as IoT Hub does for every
 * tier. Code `JobQuotaExceeded`, IoT Hub's (its error 403003, answered with 403 Forbidden to
 * `POST /jobs/create`).
 */
export class JobQuotaExceededError extends LimitExceededError {
  constructor(activeJobId: string, options?: ErrorOptions) {
    super(
      'JobQuotaExceeded',
      `job quota exceeded: import/export job '${activeJobId}' is still active; one runs at a time (cancel it with DELETE /jobs/${activeJobId} or wait for it to finish)`,
      { activeJobId },
      options,
    );
  }
}

/** A cancel of a job that already completed or failed. Code `JobAlreadyFinished`; maps to 409. */
export class JobAlreadyFinishedError extends ConflictError {
  constructor(jobId: string, status: string, options?: ErrorOptions) {
    super(
      'JobAlreadyFinished',
      `import/export job '${jobId}' already ${status}; it cannot be cancelled`,
      { jobId, status },
      options,
    );
  }
}

/**
 * A job item changed since it was read (a cancel, or another worker): the conditional write lost. Code
 * `JobChanged`; the worker re-reads the job and decides again.
 */
export class JobChangedError extends ConflictError {
  constructor(jobId: string, expectedVersion: number, options?: ErrorOptions) {
    super(
      'JobChanged',
      `import/export job '${jobId}' changed since version ${expectedVersion}`,
      { jobId, expectedVersion },
      options,
    );
  }
}

/**
 * A blob (S3 object, bucket or multipart upload) that the job needs does not exist, or the hub may not use
 * it: retrying cannot help, so the job fails with this message as its `failureReason`. Codes
 * `BlobNotFound`, `BlobAccessDenied`, `UploadNotFound`.
 */
export class BlobError extends HubError {
  constructor(
    code: 'BlobNotFound' | 'BlobAccessDenied' | 'UploadNotFound',
    message: string,
    context: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(code, message, context, options);
  }
}
