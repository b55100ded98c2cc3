/**
 * Fakes shared by the unit tests: a recording publisher that can be made to fail, a recording log,
 * a controllable clock, a decoder for devicebound topics and a recording stream sink.
 */
import type { DevicePublisher } from '../../functions/core/c2d/delivery.ts';
import { decodeEnvelope } from '../../functions/core/d2c/envelope.ts';
import type {
  DeadLetter,
  DeadLetterStore,
  Log,
  PutOutcome,
  StreamEntry,
  StreamSink,
} from '../../functions/core/ports.ts';

/** A stream sink that records every call and lets a test decide, per entry, whether it is written. */
export class FakeSink implements StreamSink {
  readonly calls: StreamEntry[][] = [];
  readonly written: StreamEntry[] = [];

  constructor(private readonly accept: (entry: StreamEntry, call: number) => PutOutcome = () => true) {}

  async put(entries: readonly StreamEntry[]): Promise<readonly PutOutcome[]> {
    const call = this.calls.length;
    this.calls.push([...entries]);
    return entries.map((entry) => {
      const outcome = this.accept(entry, call);
      if (outcome === true) this.written.push(entry);
      return outcome;
    });
  }

  /** The written entries as envelopes. */
  get envelopes() {
    return this.written.map((e) => decodeEnvelope(e.data));
  }

  /** Message ids written for one device, in write order. */
  idsOf(deviceId: string): string[] {
    return this.written
      .filter((e) => e.partitionKey === deviceId)
      .map((e) => decodeEnvelope(e.data).messageId);
  }

  /** Message ids written, in write order. */
  get writtenIds(): string[] {
    return this.written.map((e) => decodeEnvelope(e.data).messageId);
  }
}

/** One publish the hub made. */
export interface Published {
  readonly topic: string;
  readonly payload: Uint8Array;
}

/**
 * Records every publish. `failWhen` makes matching publishes throw (after recording the attempt in
 * `attempts`, not in `published`).
 */
export class RecordingPublisher implements DevicePublisher {
  readonly published: Published[] = [];
  readonly attempts: Published[] = [];
  failWhen: ((topic: string, attempt: number) => boolean) | undefined;

  async publish(topic: string, payload: Uint8Array): Promise<void> {
    const entry = { topic, payload: new Uint8Array(payload) };
    this.attempts.push(entry);
    if (this.failWhen?.(topic, this.attempts.length)) throw new Error(`publish to ${topic} failed`);
    this.published.push(entry);
  }

  /** Publishes on devicebound topics, decoded. */
  deliveries(deviceId?: string): DecodedDelivery[] {
    return this.published
      .filter((p) => p.topic.includes('/messages/devicebound/'))
      .map((p) => decodeDelivery(p))
      .filter((d) => deviceId === undefined || d.deviceId === deviceId);
  }

  /** Publishes on settlement response topics. */
  answers(): { topic: string; status: number; lockToken: string; body: Record<string, unknown> }[] {
    const out = [];
    for (const p of this.published) {
      const match = /^devices\/([^/]+)\/messages\/settle\/res\/(\d+)\/(.+)$/.exec(p.topic);
      if (match === null) continue;
      out.push({
        topic: p.topic,
        status: Number(match[2]),
        lockToken: match[3] ?? '',
        body: JSON.parse(new TextDecoder().decode(p.payload)) as Record<string, unknown>,
      });
    }
    return out;
  }
}

/** A devicebound publish taken apart. */
export interface DecodedDelivery {
  readonly topic: string;
  readonly deviceId: string;
  /** The property bag, decoded, in order. */
  readonly pairs: [string, string][];
  readonly props: Record<string, string>;
  readonly body: string;
}

/** Splits a devicebound topic and URL-decodes its property bag. */
export function decodeDelivery(p: Published): DecodedDelivery {
  const match = /^devices\/([^/]+)\/messages\/devicebound\/([^/]*)$/.exec(p.topic);
  if (match === null) throw new Error(`not a devicebound topic: ${p.topic}`);
  const pairs = (match[2] ?? '')
    .split('&')
    .filter((s) => s !== '')
    .map((pair): [string, string] => {
      const at = pair.indexOf('=');
      return at < 0
        ? [decodeURIComponent(pair), '']
        : [decodeURIComponent(pair.slice(0, at)), decodeURIComponent(pair.slice(at + 1))];
    });
  return {
    topic: p.topic,
    deviceId: match[1] ?? '',
    pairs,
    props: Object.fromEntries(pairs),
    body: new TextDecoder().decode(p.payload),
  };
}

interface LogEntry {
  readonly level: 'info' | 'warn' | 'error';
  readonly message: string;
  readonly context: Record<string, unknown> | undefined;
}

/** A log that keeps its lines. */
export class MemoryLog implements Log {
  readonly entries: LogEntry[] = [];
  info(message: string, context?: Record<string, unknown>): void {
    this.entries.push({ level: 'info', message, context });
  }
  warn(message: string, context?: Record<string, unknown>): void {
    this.entries.push({ level: 'warn', message, context });
  }
  error(message: string, context?: Record<string, unknown>): void {
    this.entries.push({ level: 'error', message, context });
  }
  at(level: LogEntry['level']): LogEntry[] {
    return this.entries.filter((e) => e.level === level);
  }
}

/** A clock that moves only when told. */
export class FakeClock {
  constructor(public ms: number) {}
  readonly now = (): number => this.ms;
  advance(ms: number): number {
    this.ms += ms;
    return this.ms;
  }
}

/** A dead-letter store that keeps what it is given, or (`fail`) refuses every write as an outage would. */
export class MemoryDeadLetters implements DeadLetterStore {
  readonly letters: DeadLetter[] = [];
  constructor(private readonly fail = false) {}
  async put(letters: readonly DeadLetter[]): Promise<void> {
    if (this.fail) throw new Error('dead-letter table unavailable');
    this.letters.push(...letters);
  }
}
