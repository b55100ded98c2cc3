/**
 * The device-side MQTT topics of cloud-to-device messaging. One definition for the functions that
 * publish, the IoT rule that listens, the IAM policies and the tests.
 *
 * - Delivery: the hub publishes to `devices/{id}/messages/devicebound/{property_bag}`; the device
 *   subscribes to `devices/{id}/messages/devicebound/#`.
 * - Settlement: the device publishes (any payload) to `devices/{id}/messages/settle/{outcome}/{lockToken}`
 *   with `outcome` one of `complete`, `reject`, `abandon`. This is outside the devicebound subscription,
 *   so a device never receives its own settlements.
 * - Settlement response: the hub answers on `devices/{id}/messages/settle/res/{status}/{lockToken}`
 *   (`status` an HTTP-style code: 200, 400, 404, 409); the device subscribes to
 *   `devices/{id}/messages/settle/res/#`. The rule's filter has two levels after `settle/`, responses
 *   three, so the hub never hears its own answers.
 */

import type { SettleOutcome } from './state.ts';

/** Outcomes a device may send. */
export const SETTLE_OUTCOMES: readonly SettleOutcome[] = ['complete', 'reject', 'abandon'];

/** The filter a device subscribes to for its C2D messages. */
export function deviceboundFilter(deviceId: string): string {
  return `devices/${deviceId}/messages/devicebound/#`;
}

/** The topic one C2D message is published on; `propertyBag` is already URL-encoded. */
export function deviceboundTopic(deviceId: string, propertyBag: string): string {
  return `devices/${deviceId}/messages/devicebound/${propertyBag}`;
}

/** The topic a device publishes a settlement to. */
export function settleTopic(deviceId: string, outcome: SettleOutcome, lockToken: string): string {
  return `devices/${deviceId}/messages/settle/${outcome}/${lockToken}`;
}

/** The filter a device subscribes to for settlement responses. */
export function settleResponseFilter(deviceId: string): string {
  return `devices/${deviceId}/messages/settle/res/#`;
}

/** The topic the hub answers a settlement on. */
export function settleResponseTopic(deviceId: string, status: number, lockToken: string): string {
  return `devices/${deviceId}/messages/settle/res/${status}/${lockToken}`;
}

/** MQTT filter of the settlement rule (all devices). */
export const SETTLE_RULE_FILTER = 'devices/+/messages/settle/+/+';

/**
 * The settlement rule's SQL: the device id from the topic and from the connection (they must agree),
 * the outcome and the lock token. Topic levels: devices(1)/{id}(2)/messages(3)/settle(4)/{outcome}(5)/{lockToken}(6).
 */
export const SETTLE_RULE_SQL =
  'SELECT topic(2) AS deviceId, topic(5) AS outcome, topic(6) AS lockToken, clientid() AS clientId, ' +
  `timestamp() AS receivedAt FROM '${SETTLE_RULE_FILTER}'`;

/** Topic ARN resource patterns (after `topic/`) the hub's C2D functions publish to. */
export const DEVICEBOUND_TOPIC_PATTERN = 'devices/*/messages/devicebound/*';
export const SETTLE_RESPONSE_TOPIC_PATTERN = 'devices/*/messages/settle/res/*';

/** IoT lifecycle events that start a delivery: the device connected, or subscribed to something. */
export const CONNECTED_EVENTS_SQL = "SELECT * FROM '$aws/events/presence/connected/+'";
export const SUBSCRIBED_EVENTS_SQL = "SELECT * FROM '$aws/events/subscriptions/subscribed/+'";

/**
 * True when an MQTT subscription filter covers the device's devicebound topics (so a subscribe
 * event with it means the device can now receive C2D messages): `devices/{id}/messages/devicebound/#`,
 * or any filter whose `+` / `#` wildcards match `devices/{id}/messages/devicebound/{something}`.
 */
export function coversDevicebound(deviceId: string, filter: string): boolean {
  // The last level is the property bag, which differs per message: only `+` or `#` covers it.
  const topic: (string | undefined)[] = ['devices', deviceId, 'messages', 'devicebound', undefined];
  const levels = filter.split('/');
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i];
    if (level === '#') return true;
    if (i >= topic.length) return false;
    if (level !== '+' && level !== topic[i]) return false;
  }
  return levels.length === topic.length;
}
