import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  type S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { BlobError } from '../core/identity/jobs/errors.ts';
import type { BlobRef, UploadedPart } from '../core/identity/jobs/job.ts';
import type { BlobRead, BlobStore } from '../core/identity/jobs/ports.ts';

const NOT_FOUND = new Set(['NoSuchKey', 'NoSuchBucket', 'NotFound']);
const DENIED = new Set(['AccessDenied', 'Forbidden', 'AllAccessDisabled', 'InvalidObjectState']);

function errorName(error: unknown): string {
  if (!(error instanceof Error)) return '';
  const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  if (error.name === 'Unknown' || error.name === 'UnknownError') {
    if (status === 404) return 'NotFound';
    if (status === 403) return 'Forbidden';
  }
  return error.name;
}

/** S3's answer as a `BlobError` when retrying cannot change it, else the error as it is. */
function translate(error: unknown, ref: BlobRef): unknown {
  const name = errorName(error);
  const where = `s3://${ref.bucket}/${ref.key}`;
  if (NOT_FOUND.has(name)) {
    const what = name === 'NoSuchBucket' ? `bucket '${ref.bucket}'` : where;
    return new BlobError(
      'BlobNotFound',
      `${what} does not exist`,
      { bucket: ref.bucket, key: ref.key },
      { cause: error },
    );
  }
  if (DENIED.has(name)) {
    return new BlobError(
      'BlobAccessDenied',
      `the hub may not use ${where} (${name})`,
      { bucket: ref.bucket, key: ref.key },
      {
        cause: error,
      },
    );
  }
  if (name === 'NoSuchUpload') {
    return new BlobError(
      'UploadNotFound',
      `the multipart upload of ${where} no longer exists`,
      { bucket: ref.bucket, key: ref.key },
      { cause: error },
    );
  }
  return error;
}

async function call<T>(ref: BlobRef, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    throw translate(error, ref);
  }
}

/**
 * The jobs' object storage on S3 (fauxqs locally), through the client from `aws-clients.ts` (path-style
 * when an endpoint URL is set). Reads are ranged GETs, so a resumed import reads from its saved offset;
 * `put` streams through `@aws-sdk/lib-storage`'s `Upload` (one PutObject, or a multipart upload for large
 * bodies); exports larger than one part use the multipart calls directly, one part per saved step.
 *
 * Needs `s3:GetObject` (reads and HeadObject), `s3:PutObject` (PutObject and the multipart calls) and
 * `s3:AbortMultipartUpload` on the objects.
 */
export class S3BlobStore implements BlobStore {
  constructor(private readonly client: S3Client) {}

  /** {@inheritDoc BlobStore.read} */
  async read(ref: BlobRef, offset: number): Promise<BlobRead> {
    return call(ref, async () => {
      if (offset > 0) {
        // A ranged GET from the end of the object is refused (416); ask for the size instead.
        const head = await this.client.send(new HeadObjectCommand({ Bucket: ref.bucket, Key: ref.key }));
        const size = head.ContentLength ?? 0;
        if (offset >= size) return { size, body: (async function* () {})(), close: () => undefined };
      }
      const out = await this.client.send(
        new GetObjectCommand({
          Bucket: ref.bucket,
          Key: ref.key,
          ...(offset > 0 ? { Range: `bytes=${offset}-` } : {}),
        }),
      );
      const body = out.Body as (Readable & AsyncIterable<Uint8Array>) | undefined;
      const total = /\/(\d+)$/.exec(out.ContentRange ?? '')?.[1];
      const size = total !== undefined ? Number(total) : offset + (out.ContentLength ?? 0);
      if (body === undefined) return { size, body: (async function* () {})(), close: () => undefined };
      return { size, body, close: () => body.destroy() };
    });
  }

  /** {@inheritDoc BlobStore.put} */
  async put(ref: BlobRef, body: AsyncIterable<Uint8Array> | Uint8Array, contentType: string): Promise<void> {
    await call(ref, async () => {
      const upload = new Upload({
        client: this.client,
        params: {
          Bucket: ref.bucket,
          Key: ref.key,
          Body: body instanceof Uint8Array ? body : Readable.from(body),
          ContentType: contentType,
        },
      });
      await upload.done();
    });
  }

  /** {@inheritDoc BlobStore.startUpload} */
  async startUpload(ref: BlobRef, contentType: string): Promise<string> {
    return call(ref, async () => {
      const out = await this.client.send(
        new CreateMultipartUploadCommand({ Bucket: ref.bucket, Key: ref.key, ContentType: contentType }),
      );
      if (out.UploadId === undefined)
        throw new Error(`S3 gave no upload id for s3://${ref.bucket}/${ref.key}`);
      return out.UploadId;
    });
  }

  /** {@inheritDoc BlobStore.putPart} */
  async putPart(ref: BlobRef, uploadId: string, partNumber: number, body: Uint8Array): Promise<string> {
    return call(ref, async () => {
      const out = await this.client.send(
        new UploadPartCommand({
          Bucket: ref.bucket,
          Key: ref.key,
          UploadId: uploadId,
          PartNumber: partNumber,
          Body: body,
        }),
      );
      if (out.ETag === undefined)
        throw new Error(`S3 gave no etag for part ${partNumber} of s3://${ref.bucket}/${ref.key}`);
      return out.ETag;
    });
  }

  /** {@inheritDoc BlobStore.completeUpload} */
  async completeUpload(ref: BlobRef, uploadId: string, parts: readonly UploadedPart[]): Promise<void> {
    await call(ref, () =>
      this.client.send(
        new CompleteMultipartUploadCommand({
          Bucket: ref.bucket,
          Key: ref.key,
          UploadId: uploadId,
          MultipartUpload: { Parts: parts.map((p) => ({ PartNumber: p.partNumber, ETag: p.etag })) },
        }),
      ),
    );
  }

  /** {@inheritDoc BlobStore.abortUpload} */
  async abortUpload(ref: BlobRef, uploadId: string): Promise<void> {
    try {
      await call(ref, () =>
        this.client.send(
          new AbortMultipartUploadCommand({ Bucket: ref.bucket, Key: ref.key, UploadId: uploadId }),
        ),
      );
    } catch (error) {
      if (!(error instanceof BlobError && error.code === 'UploadNotFound')) throw error;
    }
  }
}
