import type { BlobRef, ImportExportJob, UploadedPart } from './job.ts';

/** The job the hub is running, as the active-job marker names it. */
export interface ActiveJob {
  readonly jobId: string;
  /** When the marker was written (epoch ms). */
  readonly since: number;
}

/**
 * Where import/export jobs are kept. Implemented by `adapters/registry-jobs-dynamodb.ts`. Every write is a
 * single conditional write; the rules (one active job, leases, cancel) live in the core, which this port
 * only gives the conditions to.
 */
export interface JobStore {
  /**
   * Writes the active-job marker naming `jobId` if there is none, or if it names `replacing`. Returns
   * whether it was written.
   */
  claimActive(jobId: string, since: number, replacing?: string): Promise<boolean>;
  /** The active-job marker, if any. */
  active(): Promise<ActiveJob | undefined>;
  /** Removes the active-job marker if it names `jobId` (otherwise does nothing). */
  releaseActive(jobId: string): Promise<void>;
  /** Stores a new job; throws if one with its id exists. */
  put(job: ImportExportJob): Promise<void>;
  /** The job, or `undefined`. */
  get(jobId: string): Promise<ImportExportJob | undefined>;
  /** Every job kept (finished jobs for 30 days), in no particular order. */
  list(): Promise<ImportExportJob[]>;
  /**
   * Replaces the job if its stored `version` is still `job.version - 1`; throws `JobChangedError` when
   * another write came first. Callers pass the next version.
   */
  update(job: ImportExportJob): Promise<void>;
  /**
   * Stores the error lines of the import chunk that starts at line `firstLine` (idempotent: the same
   * chunk written again replaces them).
   */
  putErrors(jobId: string, firstLine: number, lines: readonly string[]): Promise<void>;
  /** The stored error lines of a job, chunk by chunk in line order. */
  errors(jobId: string): AsyncIterable<readonly string[]>;
}

/** The bytes of an object from some offset on. */
export interface BlobRead {
  /** Size of the whole object in bytes. */
  readonly size: number;
  /** The bytes from the requested offset to the end. */
  readonly body: AsyncIterable<Uint8Array>;
  /** Stops reading early (closes the connection). */
  close(): void;
}

/**
 * Object storage (S3) as the jobs use it. Implemented by `adapters/s3-blob-store.ts`. A missing
 * object, bucket or upload, or a refused access, is a `BlobError` (the job fails with its message);
 * anything else is thrown as it is (retried by the next run).
 */
export interface BlobStore {
  /** Reads `ref` from byte `offset` (an offset at or past the end gives an empty body). */
  read(ref: BlobRef, offset: number): Promise<BlobRead>;
  /** Writes `ref` whole, streaming `body`. */
  put(ref: BlobRef, body: AsyncIterable<Uint8Array> | Uint8Array, contentType: string): Promise<void>;
  /** Starts a multipart upload of `ref`; returns its upload id. */
  startUpload(ref: BlobRef, contentType: string): Promise<string>;
  /** Uploads part `partNumber` (writing the same number again replaces it); returns its etag. */
  putPart(ref: BlobRef, uploadId: string, partNumber: number, body: Uint8Array): Promise<string>;
  /** Completes the upload from `parts`. */
  completeUpload(ref: BlobRef, uploadId: string, parts: readonly UploadedPart[]): Promise<void>;
  /** Aborts the upload (an upload that is gone already is a success). */
  abortUpload(ref: BlobRef, uploadId: string): Promise<void>;
}
