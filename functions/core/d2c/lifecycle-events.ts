import { randomUUID } from 'node:crypto';
import type { Device } from '../identity/device.ts';
import { deviceIdentityBody, LIFECYCLE_KIND, type LifecycleOpType, type LifecycleRecord } from './events.ts';
import { IngestRecordWriter, type IngestRecordWriterDeps } from './ingest-writer.ts';

/** One registry change that IoT Hub reports as a device lifecycle event. */
export interface LifecycleChange {
  readonly opType: LifecycleOpType;
  /** The created device, or the device as it was when deleted. */
  readonly device: Device;
  /** When the registry write happened. */
  readonly at: Date;
}

/** Where the service API reports registry creates and deletes. */
export interface LifecycleEvents {
  /**
   * Puts one lifecycle record per change on the ingest stream. Resolves once every record is written
   * or, after the retries, reported as lost (see {@link IngestLifecycleEvents}); never rejects: the
   * registry write it follows has already happened.
   */
  emit(changes: readonly LifecycleChange[]): Promise<void>;
}

/** What {@link IngestLifecycleEvents} needs (the ingest stream and its retries, see {@link IngestRecordWriter}). */
export interface IngestLifecycleEventsDeps extends IngestRecordWriterDeps {
  readonly now?: () => Date;
  readonly newId?: () => string;
}

/**
 * Writes device lifecycle records ({@link LifecycleRecord}, `kind: deviceLifecycle`) on the ingest
 * stream, where the router routes them under the `DeviceLifecycleEvents` source. Partition key = device
 * id, as for telemetry and connection state events, so one device's events stay in order on the
 * stream; {@link IngestRecordWriter} writes them (one record per device per call, in order, retried with
 * exponential backoff).
 *
 * The crash window, and why the record follows the registry write: the registry is the truth and the
 * event reports a change that happened. Writing the event first would announce creates and deletes that
 * then fail (409, 412, 404, an outage) and could not be taken back. So the service API writes the
 * registry, then this record, before it answers; each record has one ingest id from the start, so a
 * retry never makes a second event. What remains:
 *
 * - the function dies (crash, timeout) between the registry write and the PutRecords: the change stands
 *   and its event is never emitted. The window is one PutRecords call (milliseconds). IoT Hub itself
 *   documents lifecycle notifications as best effort; a back end that must not miss a device can list
 *   the registry (`GET /devices`) to reconcile.
 * - the stream refuses the record through every retry (under a second of backoff with the defaults): the change stands,
 *   and the full record is logged at error level (`lifecycle event lost`) so an operator can put it on
 *   the ingest stream again unchanged (same ingest id, so consumers drop a duplicate). The API call still
 *   succeeds: failing it would make the caller retry into 409/404 without getting the event back.
 *
 * Closing the window for good needs an outbox written with the registry change in one atomic write
 * (the registry item for creates; deletes would need a tombstone) and a sweep that publishes what is
 * left; `docs/routing.md` lists it as a known limit.
 */
export class IngestLifecycleEvents implements LifecycleEvents {
  private readonly writer: IngestRecordWriter;

  constructor(private readonly deps: IngestLifecycleEventsDeps) {
    this.writer = new IngestRecordWriter(deps, { label: 'lifecycle event', lost: 'lifecycle event lost' });
  }

  async emit(changes: readonly LifecycleChange[]): Promise<void> {
    if (changes.length === 0) return;
    const now = this.deps.now ?? (() => new Date());
    const newId = this.deps.newId ?? randomUUID;
    const enqueuedTime = now().getTime();
    const records: LifecycleRecord[] = changes.map((change) => ({
      kind: LIFECYCLE_KIND,
      opType: change.opType,
      deviceId: change.device.deviceId,
      operationTime: change.at.getTime(),
      device: deviceIdentityBody(change.device),
      enqueuedTime,
      ingestId: newId(),
    }));
    await this.writer.write(records);
  }
}
