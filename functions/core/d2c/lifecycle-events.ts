import { randomUUID } from 'node:crypto';
import type { Device } from '../identity/device.ts';
import type { Log, StreamEntry, StreamSink } from '../ports.ts';
import { deviceIdentityBody, LIFECYCLE_KIND, type LifecycleOpType, type LifecycleRecord } from './events.ts';
import { writeOrdered } from './ordered-writer.ts';

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

/** What {@link IngestLifecycleEvents} needs. */
export interface IngestLifecycleEventsDeps {
  /** The ingest stream. */
  readonly sink: StreamSink;
  readonly log: Log;
  /** Calls in a row that write nothing before giving up. @default 5 */
  readonly maxAttempts?: number;
  /** First backoff delay, doubled per attempt. @default 50 */
  readonly baseDelayMs?: number;
  readonly sleep?: (ms: number) => Promise<void>;
  readonly now?: () => Date;
  readonly newId?: () => string;
}

/**
 * Writes device lifecycle records ({@link LifecycleRecord}, `kind: deviceLifecycle`) on the ingest
 * stream, where the router routes them under the `DeviceLifecycleEvents` source. Partition key = device
 * id, as for telemetry and connection state events, so one device's events stay in order on the
 * stream; PutRecords carries at most one record per device per call (a device's next record is sent
 * only after the one before it is written), and failed records are retried with exponential backoff.
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
  constructor(private readonly deps: IngestLifecycleEventsDeps) {}

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
    // device → its records in order of the changes
    const queues = new Map<string, { record: LifecycleRecord; entry: StreamEntry }[]>();
    for (const record of records) {
      const queue = queues.get(record.deviceId) ?? [];
      queue.push({
        record,
        entry: {
          partitionKey: record.deviceId,
          data: Buffer.from(JSON.stringify(record)),
          id: record.ingestId,
        },
      });
      queues.set(record.deviceId, queue);
    }
    const lost = await this.writeInOrder(queues);
    if (lost.length > 0) {
      this.deps.log.error('lifecycle event lost', {
        reason: 'the ingest stream did not take these records through every retry; put them on it unchanged',
        records: lost,
      });
    }
  }

  /** Writes the device queues in order; returns the records it gave up on or the stream refused. */
  private async writeInOrder(
    queues: Map<string, { record: LifecycleRecord; entry: StreamEntry }[]>,
  ): Promise<LifecycleRecord[]> {
    const refused: LifecycleRecord[] = [];
    await writeOrdered(
      this.deps.sink,
      queues,
      {
        label: 'lifecycle event',
        log: this.deps.log,
        maxAttempts: this.deps.maxAttempts ?? 5,
        baseDelayMs: this.deps.baseDelayMs ?? 50,
        sleep: this.deps.sleep,
      },
      (item) => refused.push(item.record),
    );
    return [...refused, ...[...queues.values()].flatMap((q) => q.map((p) => p.record))];
  }
}
