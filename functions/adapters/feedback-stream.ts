import type { FeedbackRecord } from '../core/c2d/feedback.ts';
import { TransientError } from '../core/errors.ts';
import type { StreamSink } from '../core/ports.ts';

/**
 * The C2D feedback endpoint: each feedback record as one JSON record on a stream, keyed by device id.
 * Throws when the record was not written, so the ledger keeps owing it and the sweep writes it again.
 */
export function feedbackToStream(sink: StreamSink): (record: FeedbackRecord) => Promise<void> {
  const encoder = new TextEncoder();
  return async (record) => {
    const [ok] = await sink.put([
      { partitionKey: record.deviceId, data: encoder.encode(JSON.stringify(record)) },
    ]);
    if (ok !== true) {
      throw new TransientError('FeedbackNotWritten', 'the feedback stream did not take the record', {
        deviceId: record.deviceId,
        originalMessageId: record.originalMessageId,
      });
    }
  };
}
