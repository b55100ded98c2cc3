import type { Device } from '../device.ts';
import { type DeviceRegistry, LIST_MAX_LIMIT } from '../registry.ts';
import { BlobError } from './errors.ts';
import { blobIn, DEVICES_BLOB_NAME, type ExportState, type ImportExportJob } from './job.ts';
import type { BlobStore } from './ports.ts';

/** S3's smallest part of a multipart upload (all but the last). */
export const MIN_PART_BYTES = 5 * 1024 * 1024;
/** Bytes of device lines an export gathers before it uploads them as one part. */
export const DEFAULT_PART_BYTES = 8 * 1024 * 1024;

const CONTENT_TYPE = 'application/x-ndjson; charset=utf-8';

/** What an export needs. */
export interface ExportDeps {
  readonly registry: DeviceRegistry;
  readonly blobs: BlobStore;
  /** Bytes per uploaded part, at least 5 MiB. @default DEFAULT_PART_BYTES */
  readonly partBytes?: number;
}

/** One line of an export: IoT Hub's ExportImportDevice JSON, which an import takes back as it is. */
export interface ExportedDevice {
  readonly id: string;
  readonly eTag: string;
  readonly status: Device['status'];
  readonly statusReason: string | null;
  readonly authentication: Device['authentication'];
  readonly capabilities: { readonly iotEdge: boolean };
}

/** A device as an export line; keys `null` when `excludeKeys` (IoT Hub's `excludeKeysInExport`). */
export function exportedDevice(device: Device, excludeKeys: boolean): ExportedDevice {
  const auth = device.authentication;
  return {
    id: device.deviceId,
    eTag: device.etag,
    status: device.status,
    statusReason: device.statusReason,
    authentication: excludeKeys ? { ...auth, symmetricKey: { primaryKey: null, secondaryKey: null } } : auth,
    capabilities: device.capabilities ?? { iotEdge: false },
  };
}

/**
 * Runs an export job: pages through the registry (1,000 devices a page) and writes every device as a JSON
 * line to `devices.txt` (or `outputBlobName`) in the output container.
 *
 * An export that fits one part is written with one PutObject at the end. A larger one becomes an S3
 * multipart upload: each step gathers pages until a part is full (8 MiB), uploads it under the next part
 * number and saves, in the job, the registry cursor after those pages with the part's etag. A crash
 * between the upload and the save makes the next worker list the same pages again and upload the same
 * part number, which replaces the part: no device is lost or written twice. The last step completes the
 * upload. The file is not a point-in-time snapshot (IoT Hub's is not either): a device changed during the
 * export appears as the page that held it read it.
 */
export class ExportRun {
  private readonly partBytes: number;

  constructor(private readonly deps: ExportDeps) {
    this.partBytes = Math.max(deps.partBytes ?? DEFAULT_PART_BYTES, MIN_PART_BYTES);
  }

  /**
   * Works one step: one part (or the whole file when it fits in one). `save` stores the job
   * (conditionally) and returns it as stored; the returned job is not saved yet.
   */
  async step(
    job: ImportExportJob,
    save: (next: ImportExportJob) => Promise<ImportExportJob>,
  ): Promise<{ job: ImportExportJob; finished: boolean }> {
    let state: ExportState = job.export ?? { exported: 0, parts: [], completing: false };
    const output = blobIn(job.outputBlobContainerUri, job.outputBlobName ?? DEVICES_BLOB_NAME);
    if (state.completing && state.uploadId !== undefined) {
      try {
        await this.deps.blobs.completeUpload(output, state.uploadId, state.parts);
      } catch (error) {
        // The worker before this one completed the upload and stopped before it could say so.
        if (!(error instanceof BlobError && error.code === 'UploadNotFound')) throw error;
      }
      return { job: { ...job, export: state, progress: 100 }, finished: true };
    }

    const lines: Buffer[] = [];
    let bytes = 0;
    let count = 0;
    let cursor = state.cursor;
    let end = false;
    while (bytes < this.partBytes) {
      const page = await this.deps.registry.list({
        limit: LIST_MAX_LIMIT,
        ...(cursor === undefined ? {} : { cursor }),
      });
      for (const device of page.devices) {
        const line = Buffer.from(`${JSON.stringify(exportedDevice(device, job.excludeKeysInExport))}\n`);
        lines.push(line);
        bytes += line.length;
        count++;
      }
      cursor = page.nextCursor;
      if (cursor === undefined) {
        end = true;
        break;
      }
    }
    const body = Buffer.concat(lines, bytes);

    if (end && state.uploadId === undefined) {
      await this.deps.blobs.put(output, body, CONTENT_TYPE);
      return {
        job: { ...job, export: { ...state, exported: state.exported + count }, progress: 100 },
        finished: true,
      };
    }
    if (state.uploadId === undefined) {
      // Saved before any part: a cancel or a failure can then abort the upload instead of leaving it behind.
      const uploadId = await this.deps.blobs.startUpload(output, CONTENT_TYPE);
      state = { ...state, uploadId };
      job = await save({ ...job, export: state });
    }
    const uploadId = state.uploadId ?? '';
    let parts = state.parts;
    if (body.length > 0) {
      const partNumber = parts.length + 1;
      const etag = await this.deps.blobs.putPart(output, uploadId, partNumber, body);
      parts = [...parts, { partNumber, etag }];
    }
    const next: ExportState = {
      ...(cursor === undefined ? {} : { cursor }),
      exported: state.exported + count,
      uploadId,
      parts,
      completing: end,
    };
    if (!end) return { job: { ...job, export: next }, finished: false };
    job = await save({ ...job, export: next });
    await this.deps.blobs.completeUpload(output, uploadId, parts);
    return { job: { ...job, progress: 100 }, finished: true };
  }

  /** Aborts the multipart upload of a cancelled or failed export, if it started one. */
  async abandon(job: ImportExportJob): Promise<void> {
    const uploadId = job.export?.uploadId;
    if (uploadId === undefined) return;
    const output = blobIn(job.outputBlobContainerUri, job.outputBlobName ?? DEVICES_BLOB_NAME);
    await this.deps.blobs.abortUpload(output, uploadId);
  }
}
