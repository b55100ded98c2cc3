/**
 * The topics that belong to a device. One definition shared by the local broker's hooks and the
 * cloud's per-device IoT policy, so the two front doors cannot disagree on what a device may touch.
 */

/** Prefixes of a device's own topics: the only places it may publish, subscribe or receive. */
export function deviceTopicPrefixes(deviceId: string): readonly string[] {
  return [`devices/${deviceId}/`, `$aws/things/${deviceId}/shadow/`];
}

// Basic Ingest: `$aws/rules/{rule}/{topic}`; rule names have no '/'.
const BASIC_INGEST = /^\$aws\/rules\/[^/]+\/(.*)$/;

const isOwn = (deviceId: string, topic: string) =>
  deviceTopicPrefixes(deviceId).some((prefix) => topic.startsWith(prefix));

/**
 * Why a device may not publish to `topic`, or undefined when it may: its own topics, and Basic
 * Ingest topics whose inner topic is its own.
 */
export function publishRefusal(deviceId: string, topic: string): string | undefined {
  if (isOwn(deviceId, topic)) return undefined;
  const inner = BASIC_INGEST.exec(topic)?.[1];
  if (inner?.startsWith(`devices/${deviceId}/`)) return undefined;
  return `device '${deviceId}' may publish only under 'devices/${deviceId}/' or its own shadow topics, not '${topic}'`;
}

/** Why a device may not subscribe to `filter`, or undefined when it may: only filters within its own topics. */
export function subscribeRefusal(deviceId: string, filter: string): string | undefined {
  if (isOwn(deviceId, filter)) return undefined;
  return `device '${deviceId}' may subscribe only under 'devices/${deviceId}/' or its own shadow topics, not '${filter}'`;
}
