import type { AckMode, C2dState, FeedbackStatus } from './message.ts';

/** IoT Hub's `FeedbackStatusCode` names and numeric values, for each feedback status. */
export const FEEDBACK_STATUS_CODES: Readonly<
  Record<
    FeedbackStatus,
    { readonly name: FeedbackStatusCode; readonly value: number; readonly description: string }
  >
> = {
  success: { name: 'Success', value: 0, description: 'Success' },
  expired: { name: 'Expired', value: 1, description: 'Message expired' },
  deliveryCountExceeded: {
    name: 'DeliveryCountExceeded',
    value: 2,
    description: 'Message delivery count exceeded',
  },
  rejected: { name: 'Rejected', value: 3, description: 'Message rejected' },
  purged: { name: 'Purged', value: 4, description: 'Message purged' },
};

/** IoT Hub's feedback status code names. */
export type FeedbackStatusCode = 'Success' | 'Expired' | 'DeliveryCountExceeded' | 'Rejected' | 'Purged';

/**
 * One feedback record: the outcome of a message whose sender asked for it. Shaped after IoT Hub's
 * feedback records (times are ISO 8601 UTC strings because the record leaves the hub as is).
 */
export interface FeedbackRecord {
  /** Opaque id; pass it to `acknowledgeFeedback` once the record is handled. */
  readonly id: string;
  readonly originalMessageId: string;
  readonly deviceId: string;
  readonly correlationId?: string;
  readonly enqueuedTimeUtc: string;
  /** When the message reached the final state this record reports. */
  readonly statusTimeUtc: string;
  readonly status: FeedbackStatus;
  readonly statusCode: FeedbackStatusCode;
  readonly description: string;
}

const POSITIVE: Partial<Record<C2dState, FeedbackStatus>> = { Completed: 'success' };
const NEGATIVE: Partial<Record<C2dState, FeedbackStatus>> = {
  Expired: 'expired',
  DeadLettered: 'deliveryCountExceeded',
  Rejected: 'rejected',
  Purged: 'purged',
};

/**
 * The feedback owed when a message with this ack mode reaches `state`, or `undefined`.
 * `positive` reports completion only, `negative` every other final outcome, `full` both.
 */
export function feedbackFor(ack: AckMode, state: C2dState): FeedbackStatus | undefined {
  if (ack === 'none') return undefined;
  const positive = ack === 'positive' || ack === 'full' ? POSITIVE[state] : undefined;
  const negative = ack === 'negative' || ack === 'full' ? NEGATIVE[state] : undefined;
  return positive ?? negative;
}
