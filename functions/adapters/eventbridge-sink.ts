import { type EventBridgeClient, PutEventsCommand } from '@aws-sdk/client-eventbridge';
import type { PutOutcome, SinkLimits, StreamEntry, StreamSink } from '../core/ports.ts';

/**
 * PutEvents' limit on one call, counted as AWS counts entry sizes: the UTF-8 bytes of `Source`,
 * `DetailType`, `Detail` and `Resources`, plus 14 for `Time`, summed over the entries. AWS raised it
 * to 1 MB in 2026; 256 KB holds on every account and every local stand-in.
 */
export const PUT_EVENTS_REQUEST_BYTES = 256 * 1024;

/** `iothub-message-source` → the event's `detail-type`. */
const DETAIL_TYPES: Readonly<Record<string, string>> = {
  Telemetry: 'Device Message',
  deviceLifecycleEvents: 'Device Lifecycle Event',
  deviceConnectionStateEvents: 'Device Connection State Event',
};
const DEFAULT_DETAIL_TYPE = 'Device Message';

/** The `detail-type` of an event for a message from `messageSource` (`Device Message` by default). */
export function detailTypeOf(messageSource: string | undefined): string {
  return (messageSource !== undefined ? DETAIL_TYPES[messageSource] : undefined) ?? DEFAULT_DETAIL_TYPE;
}

/** The event `source` of a hub's events: `iothub.{hubName}`. */
export function eventSourceOf(hubName: string): string {
  return `iothub.${hubName}`;
}

/**
 * Limits that keep every PutEvents call within `requestBytes` whatever the mix of entries: each of
 * the 10 entries may add its `Source` and the longest `DetailType` to its data, so that overhead is
 * taken off ten times. The largest entry equals the call budget, because the router sends an entry
 * alone when it must and would otherwise never fit one between the two.
 */
export function eventBridgeLimits(source: string, requestBytes = PUT_EVENTS_REQUEST_BYTES): SinkLimits {
  const longestDetailType = Math.max(
    ...[...Object.values(DETAIL_TYPES), DEFAULT_DETAIL_TYPE].map((t) => Buffer.byteLength(t, 'utf8')),
  );
  const perEntry = Buffer.byteLength(source, 'utf8') + longestDetailType;
  const maxBytes = requestBytes - 10 * perEntry;
  return { maxEntries: 10, maxBytes, maxEntryBytes: maxBytes };
}

const utf8 = new TextDecoder();

/** PutEvents entry errors that name the entry itself as at fault: retrying cannot help. */
const PERMANENT_ERRORS = new Set(['MalformedDetail', 'InvalidArgument']);

/**
 * A {@link StreamSink} over EventBridge PutEvents to one bus: each entry becomes an event with
 * `source` `iothub.{hubName}`, a `detail-type` from its message source (see {@link detailTypeOf}) and
 * its data (the JSON envelope) as `detail`. An entry is written only when its result has an EventId
 * and no ErrorCode; failed ones (throttled, internal, malformed) come back as `false`. A call that
 * EventBridge rejects whole (validation, access) throws.
 *
 * EventBridge accepts events for a bus that does not exist and drops them, answering with EventIds:
 * a deleted bus shows up here as success, not as failed entries.
 */
export class EventBridgeSink implements StreamSink {
  readonly limits: SinkLimits;
  private readonly source: string;

  constructor(
    private readonly client: EventBridgeClient,
    private readonly eventBusName: string,
    hubName: string,
    requestBytes = PUT_EVENTS_REQUEST_BYTES,
  ) {
    this.source = eventSourceOf(hubName);
    this.limits = eventBridgeLimits(this.source, requestBytes);
  }

  async put(entries: readonly StreamEntry[]): Promise<readonly PutOutcome[]> {
    if (entries.length === 0) return [];
    const out = await this.client.send(
      new PutEventsCommand({
        Entries: entries.map((e) => ({
          EventBusName: this.eventBusName,
          Source: this.source,
          DetailType: detailTypeOf(e.messageSource),
          Detail: utf8.decode(e.data),
          Resources: [],
        })),
      }),
    );
    const results = out.Entries ?? [];
    return entries.map((_, i): PutOutcome => {
      const r = results[i];
      if (r?.ErrorCode !== undefined && PERMANENT_ERRORS.has(r.ErrorCode)) {
        return { rejected: `${r.ErrorCode}: ${r.ErrorMessage}` };
      }
      return r !== undefined && r.EventId !== undefined && r.ErrorCode === undefined;
    });
  }
}
