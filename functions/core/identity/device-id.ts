import { ValidationError } from '../errors.ts';

/** Longest device id IoT Hub accepts. */
export const DEVICE_ID_MAX_LENGTH = 128;

/**
 * The special characters IoT Hub allows in a device id besides ASCII letters and digits:
 * `- . + % _ # * ? ! ( ) , : = @ $ '` (IoT Hub identity registry, "Device identity properties").
 *
 * Some IoT Hub pages (the Event Grid event schemas) also list `;`. It is left out on purpose: the
 * identity registry page does not list it, and a `;` would split the `DeviceId=` field of a
 * connection string.
 */
export const DEVICE_ID_SPECIAL_CHARACTERS = "-.+%_#*?!(),:=@$'";

/** Characters that have a meaning in MQTT topic filters and so cannot appear in a topic level we scope on. */
export const MQTT_UNSAFE_DEVICE_ID_CHARACTERS = '+#';

const DEVICE_ID_PATTERN = /^[A-Za-z0-9\-.+%_#*?!(),:=@$']{1,128}$/;
const ALLOWED = new Set(
  `ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789${DEVICE_ID_SPECIAL_CHARACTERS}`,
);

/**
 * Whether `id` is a device id IoT Hub would accept: 1–128 characters of ASCII letters, digits and
 * {@link DEVICE_ID_SPECIAL_CHARACTERS}. Ids are case-sensitive; no normalisation happens.
 */
export function isValidDeviceId(id: unknown): id is string {
  return typeof id === 'string' && DEVICE_ID_PATTERN.test(id);
}

/**
 * Whether `id` is valid and can stand as one level of an MQTT topic *filter*: `+` and `#` are
 * wildcards there (and `/` a level separator, which the charset already excludes). A device whose id
 * contains them could not subscribe to `devices/{id}/messages/devicebound/#` without the filter
 * matching other devices' topics, and an IoT Core policy could not scope it to its own topics.
 */
export function isMqttSafeDeviceId(id: unknown): id is string {
  return isValidDeviceId(id) && !/[+#]/.test(id);
}

/**
 * Why `id` is not a valid device id, as a sentence without the field name, or `undefined` when it is
 * valid. `requireMqttSafe` (default true) also refuses `+` and `#`; see {@link assertCreatableDeviceId}.
 */
export function describeDeviceIdProblem(id: unknown, requireMqttSafe = true): string | undefined {
  if (typeof id !== 'string') return 'expected a string';
  if (id.length === 0) return 'must not be empty';
  if (id.length > DEVICE_ID_MAX_LENGTH) {
    return `must be at most ${DEVICE_ID_MAX_LENGTH} characters, got ${id.length}`;
  }
  for (let i = 0; i < id.length; i++) {
    const ch = id.charAt(i);
    if (!ALLOWED.has(ch)) {
      return `character ${JSON.stringify(ch)} at position ${i} is not allowed (use ASCII letters, digits and ${DEVICE_ID_SPECIAL_CHARACTERS})`;
    }
    if (requireMqttSafe && MQTT_UNSAFE_DEVICE_ID_CHARACTERS.includes(ch)) {
      return `character '${ch}' at position ${i} is an MQTT topic wildcard; this hub refuses it because a per-device topic policy could not scope the device`;
    }
  }
  return undefined;
}

/**
 * Throws a {@link ValidationError} (`InvalidDeviceId`) naming `field` unless `id` is a valid IoT Hub
 * device id; returns it typed as a string. Does not refuse `+`/`#` (use this to validate ids in paths
 * and tokens, where an unsafe id simply matches nothing).
 */
export function validateDeviceId(id: unknown, field = 'deviceId'): string {
  const problem = describeDeviceIdProblem(id, false);
  if (problem !== undefined) {
    throw new ValidationError('InvalidDeviceId', `${field}: ${problem}`, { field, deviceId: id });
  }
  return id as string;
}

/**
 * Throws a {@link ValidationError} (`InvalidDeviceId`) unless `id` can be registered here.
 *
 * Decision: the hub refuses ids with `+` or `#` at creation, although IoT Hub accepts them. The MQTT
 * topics a device uses embed its id (`devices/{id}/...`), and in a topic filter `+`/`#` are wildcards:
 * the IoT Core policy `devices/${iot:ClientId}/*` and the local broker's subscribe check could not
 * confine such a device to its own topics. Refusing at creation, with this message, beats a device
 * that registers fine and then can never connect.
 */
export function assertCreatableDeviceId(id: unknown, field = 'deviceId'): string {
  const problem = describeDeviceIdProblem(id, true);
  if (problem !== undefined) {
    throw new ValidationError('InvalidDeviceId', `${field}: ${problem}`, { field, deviceId: id });
  }
  return id as string;
}
