import { createHash } from 'node:crypto';

/**
 * The `principalId` the IoT Core custom authorizer answers for a device: hex SHA-256 of the device id
 * (64 characters). IoT Core allows only `[a-zA-Z0-9]{1,128}` there, and device ids may hold `-`, `.`, `$`,
 * `:` and more, so the id itself cannot be used. A hash keeps it stable per device (the same id always
 * gives the same principal, so logs and `principal()` in rules correlate) and fixed-length, and lets the
 * router check that a record without an MQTT client id (an HTTPS publish, whose `clientid()` is `n/a`)
 * came from the device its topic names.
 */
export function principalIdFor(deviceId: string): string {
  return createHash('sha256').update(deviceId, 'utf8').digest('hex');
}
