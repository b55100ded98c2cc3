import { KINESIS_LIMITS, type Log, type StreamEntry, type StreamSink } from '../ports.ts';

/** How {@link writeOrdered} retries. */
export interface OrderedWriteOptions {
  /** Names what is written, in log lines: `{label} write failed`. */
  readonly label: string;
  readonly log: Log;
  /** Calls in a row that write nothing before giving up. */
  readonly maxAttempts: number;
  /** First backoff delay, doubled per attempt. */
  readonly baseDelayMs: number;
  /** @default a timer */
  readonly sleep?: ((ms: number) => Promise<void>) | undefined;
}

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Something queued for a sink. */
export interface Queued {
  readonly entry: StreamEntry;
}

/**
 * Writes per-device queues of entries to a sink call by call, within the sink's limits, keeping
 * each device's order: a call takes the head of each device's queue (all of a device's run that
 * fits, for an atomic sink), so a device's next entry is sent only after the one before it is
 * written. Written entries leave their queue; so do entries the sink rejects for good, which are
 * handed to `onRejected` (the caller dead-letters them) and never retried. Gives up after
 * `maxAttempts` calls in a row that write nothing, leaving what is unwritten queued; returns how
 * many entries were written.
 */
export async function writeOrdered<T extends Queued>(
  sink: StreamSink,
  queues: ReadonlyMap<string, T[]>,
  options: OrderedWriteOptions,
  onRejected: (item: T, reason: string) => void = () => {},
): Promise<number> {
  const limits = sink.limits ?? KINESIS_LIMITS;
  let written = 0;
  let attempt = 0;
  for (;;) {
    const layer: T[] = [];
    let bytes = 0;
    fill: for (const queue of queues.values()) {
      for (const item of limits.atomic ? queue : queue.slice(0, 1)) {
        if (layer.length === limits.maxEntries || bytes + item.entry.data.length > limits.maxBytes)
          break fill;
        layer.push(item);
        bytes += item.entry.data.length;
      }
    }
    if (layer.length === 0) return written;
    let results: readonly unknown[];
    try {
      results = await sink.put(layer.map((item) => item.entry));
    } catch (error) {
      options.log.warn(`${options.label} write failed`, { error: String(error), attempt: attempt + 1 });
      results = [];
    }
    let failed = 0;
    layer.forEach((item, i) => {
      const outcome = results[i];
      if (outcome === true) {
        queues.get(item.entry.partitionKey)?.shift();
        written += 1;
      } else if (typeof outcome === 'object' && outcome !== null && 'rejected' in outcome) {
        queues.get(item.entry.partitionKey)?.shift();
        onRejected(item, String(outcome.rejected));
      } else {
        failed += 1;
      }
    });
    if (failed === 0) {
      attempt = 0;
      continue;
    }
    // The budget counts calls in a row that wrote nothing: steady partial throttling still progresses.
    attempt = failed < layer.length ? 1 : attempt + 1;
    if (attempt >= options.maxAttempts) return written;
    await (options.sleep ?? defaultSleep)(options.baseDelayMs * 2 ** (attempt - 1));
  }
}
