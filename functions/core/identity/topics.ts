/**
 * The topics that belong to a device. One definition shared by the local broker's hooks and the
 * cloud's per-device IoT policy, so the two front doors cannot disagree on what a device may touch.
 */

/** Prefixes of a device's own topics: the only places it may publish, subscribe or receive. */
export function deviceTopicPrefixes(deviceId: string): readonly string[] {
  return [`devices/${deviceId}/`, `$aws/things/${deviceId}/shadow/`];
}

/**
 * What a device may publish under its shadow prefix: the requests `get`, `update` and `delete`, of its
 * classic shadow or a named one (`name/{shadowName}/...`). The answers (`accepted`, `rejected`, `delta`,
 * `documents`) are the shadow service's alone, as in IoT Core; a device that could publish them could
 * fake its own twin change events.
 */
const SHADOW_REQUEST = /^(?:name\/[a-zA-Z0-9:_-]{1,64}\/)?(?:get|update|delete)$/;

/**
 * Whether a device id is also an AWS IoT thing name (`[a-zA-Z0-9:_-]`, 1-128): only such devices can have a
 * shadow. IoT Hub ids may also hold `. + % # * ? ! ( ) , = @ $ '`; devices with those have no shadow.
 */
export function isThingName(deviceId: string): boolean {
  return /^[a-zA-Z0-9:_-]{1,128}$/.test(deviceId);
}

/**
 * The shadow request topics of a thing, as IoT policy resources (after `topic/`; `*` is one named
 * shadow). `thing` is a thing name or a policy variable; callers check that a device id is a thing name
 * (an id that is not has no shadow, so no shadow topics).
 */
export function shadowRequestTopics(thing: string): readonly string[] {
  const shadow = `$aws/things/${thing}/shadow/`;
  return ['get', 'update', 'delete'].flatMap((op) => [`${shadow}${op}`, `${shadow}name/*/${op}`]);
}

/**
 * The environment variable that gives the custom authorizer the ingest rule's name when Basic Ingest is
 * on (`hub.basicIngest`); the local hub reads the same variable from the template.
 */
export const BASIC_INGEST_RULE_ENV = 'BASIC_INGEST_RULE_NAME';

/** What IoT Core allows as a rule name (and so as the middle level of a Basic Ingest topic). */
export const IOT_RULE_NAME = /^[a-zA-Z0-9_]{1,128}$/;

/**
 * The D2C topic of a device behind AWS IoT Basic Ingest's prefix for the ingest rule:
 * `$aws/rules/{rule}/devices/{deviceId}/messages/events`. A device publishes to this, or to it
 * followed by `/` and a property bag, and the rule sees the topic without the `$aws/rules/{rule}/`
 * part (IoT Core strips it before `topic()`).
 *
 * @throws Error when `ruleName` is not an IoT rule name (letters, digits and `_`, 1-128).
 */
export function basicIngestEventsTopic(ruleName: string, deviceId: string): string {
  if (!IOT_RULE_NAME.test(ruleName)) {
    throw new Error(`Basic Ingest rule name '${ruleName}' is not an IoT rule name ([a-zA-Z0-9_]{1,128})`);
  }
  return `$aws/rules/${ruleName}/devices/${deviceId}/messages/events`;
}

/** Options of {@link publishRefusal}. */
export interface PublishOptions {
  /**
   * The ingest rule's name when Basic Ingest is on (`hub.basicIngest`): the device may then also
   * publish its telemetry to {@link basicIngestEventsTopic}. @default Basic Ingest topics are refused
   */
  readonly basicIngestRule?: string | undefined;
}

const isOwn = (deviceId: string, topic: string) =>
  deviceTopicPrefixes(deviceId).some((prefix) => topic.startsWith(prefix));

/**
 * Why a device may not publish to `topic`, or undefined when it may: its own topics (of its shadow only
 * the requests, and only when its id is a thing name), and, when Basic Ingest is on, its own telemetry
 * topic behind the ingest rule's Basic Ingest prefix.
 */
export function publishRefusal(
  deviceId: string,
  topic: string,
  options: PublishOptions = {},
): string | undefined {
  const shadow = `$aws/things/${deviceId}/shadow/`;
  if (topic.startsWith(shadow)) {
    // As the cloud's policy (`devicePolicyDocument`): an id that is no thing name has no shadow to ask.
    if (!isThingName(deviceId)) {
      return `device '${deviceId}' has no shadow (its id is not a thing name), so it may not publish to '${topic}'`;
    }
    if (SHADOW_REQUEST.test(topic.slice(shadow.length))) return undefined;
    return `device '${deviceId}' may publish to its shadow only requests (get, update, delete), not '${topic}'`;
  }
  if (isOwn(deviceId, topic)) return undefined;
  const rule = options.basicIngestRule;
  if (rule !== undefined && topic.startsWith('$aws/rules/')) {
    const events = basicIngestEventsTopic(rule, deviceId);
    if (topic === events || topic.startsWith(`${events}/`)) return undefined;
    return `device '${deviceId}' may publish through Basic Ingest only to '${events}' or below it, not '${topic}'`;
  }
  return `device '${deviceId}' may publish only under 'devices/${deviceId}/' or its own shadow topics, not '${topic}'`;
}

/** Why a device may not subscribe to `filter`, or undefined when it may: only filters within its own topics. */
export function subscribeRefusal(deviceId: string, filter: string): string | undefined {
  if (isOwn(deviceId, filter)) return undefined;
  return `device '${deviceId}' may subscribe only under 'devices/${deviceId}/' or its own shadow topics, not '${filter}'`;
}
