import { randomUUID } from 'node:crypto';
import type { TagsChange } from '../twins/service.ts';
import { TWIN_CHANGE_KIND, type TwinChangeRecord } from './events.ts';
import { IngestRecordWriter, type IngestRecordWriterDeps } from './ingest-writer.ts';

/**
 * One twin tags change that IoT Hub reports as a twin change event. Desired and reported property
 * changes are not reported here: every shadow update (the service API's desired writes included)
 * reaches the router from the shadow service's `update/documents` topic, so reporting them here too
 * would emit them twice.
 */
export type TwinChange = TagsChange;

/** Where the twin service reports tags changes. */
export interface TwinChangeEvents {
  /**
   * Puts one twin change record per change on the ingest stream. Resolves once every record is written
   * or, after the retries, reported as lost (see {@link IngestTwinChangeEvents}); never rejects: the
   * tags write it follows has already happened.
   */
  emit(changes: readonly TwinChange[]): Promise<void>;
}

/** What {@link IngestTwinChangeEvents} needs (the ingest stream and its retries, see {@link IngestRecordWriter}). */
export interface IngestTwinChangeEventsDeps extends IngestRecordWriterDeps {
  readonly now?: () => Date;
  readonly newId?: () => string;
}

/**
 * Writes twin change records ({@link TwinChangeRecord}, `kind: twinChange`) on the ingest stream, where
 * the router routes them under the `TwinChangeEvents` source; partition key = device id, so a device's
 * tags changes stay in order with its telemetry and its other events. An `updateTwin` whose tags patch
 * is empty changed nothing and emits nothing.
 *
 * The crash window is the one of lifecycle events (see `IngestLifecycleEvents` and `docs/routing.md`):
 * the tags store is the truth and the record follows the tags write, before the API answers, with one
 * ingest id from the start so a retry never makes a second event. A function that dies between the two
 * leaves the change without its event (`GET /twins/{id}` shows the truth); a record the stream refuses
 * through every retry is logged as `twin change event lost`, in full, for an operator to replay.
 *
 * @example
 * const events = new IngestTwinChangeEvents({ sink: new KinesisStreamSink(kinesis, ingestStream), log });
 * await events.emit([{ deviceId: 'dev-1', opType: 'updateTwin', at: new Date(), version: 4, tags: { floor: 2 } }]);
 */
export class IngestTwinChangeEvents implements TwinChangeEvents {
  private readonly writer: IngestRecordWriter;

  constructor(private readonly deps: IngestTwinChangeEventsDeps) {
    this.writer = new IngestRecordWriter(deps, {
      label: 'twin change event',
      lost: 'twin change event lost',
    });
  }

  async emit(changes: readonly TwinChange[]): Promise<void> {
    const changed = changes.filter((c) => c.opType === 'replaceTwin' || Object.keys(c.tags).length > 0);
    if (changed.length === 0) return;
    const now = this.deps.now ?? (() => new Date());
    const newId = this.deps.newId ?? randomUUID;
    const enqueuedTime = now().getTime();
    const records: TwinChangeRecord[] = changed.map((change) => ({
      kind: TWIN_CHANGE_KIND,
      opType: change.opType,
      deviceId: change.deviceId,
      operationTime: change.at.getTime(),
      version: change.version,
      tags: change.tags,
      enqueuedTime,
      ingestId: newId(),
    }));
    await this.writer.write(records);
  }
}
