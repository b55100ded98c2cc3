import { z } from 'zod';
import { LimitExceededError, ValidationError } from '../errors.ts';
import { principalIdFor } from '../identity/principal-id.ts';
import {
  InvalidPropertyBagError,
  PROPERTY_LIMITS,
  type PropertyBag,
  parsePropertyBag,
} from './property-bag.ts';
import { parseD2CTopic } from './topic.ts';

/**
 * What the ingest IoT rule writes to the ingest stream for each D2C publish. The SQL that
 * produces it lives in `lib/d2c-pipeline.ts`; the two must agree, and the infra tests check they do.
 */
export const IngestRecordSchema = z.object({
  /** Raw payload, base64 (`encode(*, 'base64')`), so binary bodies survive. May be absent for empty payloads. */
  body: z.string().optional(),
  /** `topic()` */
  topic: z.string(),
  /** `clientid()`: the authenticated connection's client id, which the hub binds to the device id. */
  clientId: z.string(),
  /** `principal()` */
  principal: z.string().optional(),
  /** `timestamp()`: epoch millis at which the front door took the message. */
  enqueuedTime: z.number(),
  /** `newuuid()`: stamped once per publish so every copy of a redelivered record keeps one id. */
  ingestId: z.string().min(1),
  /** `get_mqtt_property('content_type')`: the MQTT 5 content type; absent for MQTT 3.1.1 publishes. */
  contentType: z.string().nullish(),
  /** `get_mqtt_property('correlation_data')`: the MQTT 5 correlation data, base64; absent when not set. */
  correlationData: z.string().nullish(),
  /**
   * `get_user_properties()`: the MQTT 5 user properties in order, one `{ name: value }` object each
   * (MQTT 5 allows a name more than once); absent or empty when there are none.
   */
  userProperties: z.array(z.record(z.string(), z.string())).nullish(),
});
/** A decoded ingest-stream record. */
export type IngestRecord = z.infer<typeof IngestRecordSchema>;

/** Version of {@link D2CEnvelope}; bumped only with a documented migration. */
export const ENVELOPE_VERSION = 1;

/**
 * One D2C message on the built-in endpoint (and every custom endpoint). Documented in
 * `docs/envelope.md`. `body` is JSON when the content type is JSON and the encoding UTF-8 and it
 * parses; otherwise the raw bytes in base64 (`bodyEncoding` says which).
 */
export interface D2CEnvelope {
  readonly version: typeof ENVELOPE_VERSION;
  readonly messageId: string;
  readonly deviceId: string;
  readonly enqueuedTime: string;
  readonly systemProperties: Readonly<Record<string, string>>;
  readonly properties: Readonly<Record<string, string>>;
  readonly bodyEncoding: 'json' | 'base64';
  readonly body: unknown;
}

/** Limits that apply while building an envelope. */
export interface EnvelopeLimits {
  /** Largest body in bytes (IoT Hub: 256 KB). */
  readonly maxMessageBytes: number;
}

/**
 * What IoT Core's `clientid()` returns for a message that was not sent over MQTT (an HTTPS publish). Such
 * a record is bound to its device by the principal instead (see {@link buildEnvelope}).
 */
export const NO_MQTT_CLIENT_ID = 'n/a';

/** A record whose device id (from the connection) and topic disagree: a spoofing attempt. */
export class DeviceIdMismatchError extends ValidationError {
  constructor(clientId: string, topicDeviceId: string) {
    super(
      'DeviceIdMismatch',
      clientId === NO_MQTT_CLIENT_ID
        ? `a publish without an MQTT client id (HTTPS) on the topic of device '${topicDeviceId}' was not authenticated as that device (its principal is not the device's); a device may publish only under its own id`
        : `client '${clientId}' published on the topic of device '${topicDeviceId}'; a device may publish only under its own id`,
      { clientId, topicDeviceId },
    );
  }
}

const JSON_CONTENT_TYPE = /^application\/json\s*(;|$)/i;

function isUtf8(encoding: string | undefined): boolean {
  return encoding === undefined || /^utf-?8$/i.test(encoding);
}

function authMethod(principal: string | undefined, deviceId: string): string {
  // Locally the principal is `{type}:{id}` as the front door's authenticate step sets it (local/broker.ts,
  // local/https-publish.ts); in the cloud a SAS device's principal is the custom authorizer's
  // principalId for it. IoT Hub reports the method as a small JSON document.
  const type = principal === principalIdFor(deviceId) ? 'sas' : principal?.split(':', 1)[0] || 'none';
  return JSON.stringify({ scope: 'device', type, issuer: 'iothub', acceptingIpFilterRule: null });
}

/** Correlation data as text when it is UTF-8, else its base64 (a correlation id is a string). */
function correlationText(base64: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(base64, 'base64'));
  } catch {
    return base64;
  }
}

/**
 * The MQTT 5 properties of a record as a property bag: user properties follow the property bag's
 * rules (names of printable ASCII, the same limits, `$.` names are system properties and unknown ones
 * are refused), a name may appear only once, and the content type and correlation data become
 * `content-type` and `correlation-id`, ahead of `$.ct` / `$.cid` user properties.
 *
 * @throws InvalidPropertyBagError, LimitExceededError
 */
function mqtt5Bag(record: IngestRecord): PropertyBag {
  const pairs: string[] = [];
  const seen = new Set<string>();
  for (const property of record.userProperties ?? []) {
    for (const [name, value] of Object.entries(property)) {
      if (seen.has(name)) {
        throw new InvalidPropertyBagError(
          `MQTT 5 user property '${name.slice(0, 128)}' appears more than once`,
          {
            name,
          },
        );
      }
      seen.add(name);
      pairs.push(`${encodeURIComponent(name)}=${encodeURIComponent(value)}`);
    }
  }
  const bag = parsePropertyBag(pairs.join('&'));
  if (record.contentType) bag.system['content-type'] = record.contentType;
  if (record.correlationData) bag.system['correlation-id'] = correlationText(record.correlationData);
  return bag;
}

/**
 * Turns one ingest record into the versioned envelope. The device id comes from the connection
 * (`clientId`), and must equal the id in the topic; a record without an MQTT client id (IoT Core's
 * HTTPS publish, `clientid()` = {@link NO_MQTT_CLIENT_ID}) is accepted for the topic's device only when
 * its principal is the custom authorizer's principal id for that device (the authorizer's policy let it
 * publish only there). The message id is the device's `$.mid`, or the ingest id stamped by the rule.
 *
 * Properties come from the topic's property bag and, for MQTT 5 publishers, from the content type,
 * correlation data and user properties (see `docs/envelope.md`); on a clash the property bag wins.
 *
 * @throws InvalidTopicError, InvalidPropertyBagError, DeviceIdMismatchError, LimitExceededError
 */
export function buildEnvelope(record: IngestRecord, limits: EnvelopeLimits): D2CEnvelope {
  const topic = parseD2CTopic(record.topic);
  const viaHttps =
    record.clientId === NO_MQTT_CLIENT_ID && record.principal === principalIdFor(topic.deviceId);
  if (topic.deviceId !== record.clientId && !viaHttps) {
    throw new DeviceIdMismatchError(record.clientId, topic.deviceId);
  }
  const topicBag = parsePropertyBag(topic.propertyBag);
  const mqtt5 = mqtt5Bag(record);
  // The topic's property bag wins over MQTT 5 properties of the same name.
  const bag: PropertyBag = {
    system: { ...mqtt5.system, ...topicBag.system },
    application: { ...mqtt5.application, ...topicBag.application },
  };
  if (Object.keys(bag.application).length > PROPERTY_LIMITS.maxProperties) {
    throw new LimitExceededError(
      'TooManyProperties',
      `a message may carry at most ${PROPERTY_LIMITS.maxProperties} application properties (property bag and MQTT 5 user properties together)`,
      { limit: PROPERTY_LIMITS.maxProperties },
    );
  }
  const bytes = Buffer.from(record.body ?? '', 'base64');
  if (bytes.length > limits.maxMessageBytes) {
    throw new LimitExceededError(
      'MessageTooLarge',
      `message body is ${bytes.length} bytes; the limit is ${limits.maxMessageBytes}`,
      { size: bytes.length, limit: limits.maxMessageBytes },
    );
  }
  const enqueuedTime = new Date(record.enqueuedTime).toISOString();
  const messageId = bag.system['message-id'] || record.ingestId;
  const systemProperties: Record<string, string> = {
    ...bag.system,
    'message-id': messageId,
    'iothub-connection-device-id': topic.deviceId,
    'iothub-connection-auth-method': authMethod(record.principal, topic.deviceId),
    'iothub-enqueuedtime': enqueuedTime,
    'iothub-message-source': 'Telemetry',
  };
  let bodyEncoding: 'json' | 'base64' = 'base64';
  let body: unknown = bytes.toString('base64');
  const contentType = bag.system['content-type'];
  if (
    contentType !== undefined &&
    JSON_CONTENT_TYPE.test(contentType) &&
    isUtf8(bag.system['content-encoding'])
  ) {
    try {
      body = JSON.parse(bytes.toString('utf8'));
      bodyEncoding = 'json';
    } catch {
      // A body that claims JSON but is not stays base64: nothing is lost, and routing sees no $body.
    }
  }
  return {
    version: ENVELOPE_VERSION,
    messageId,
    deviceId: topic.deviceId,
    enqueuedTime,
    systemProperties,
    properties: bag.application,
    bodyEncoding,
    body,
  };
}

/** Decodes an envelope read from an endpoint, checking its version. For consumers and tests. */
export function decodeEnvelope(data: Uint8Array | string): D2CEnvelope {
  const text = typeof data === 'string' ? data : Buffer.from(data).toString('utf8');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new ValidationError('InvalidEnvelope', 'envelope is not JSON', {}, { cause });
  }
  const parsed = EnvelopeSchema.safeParse(value);
  if (!parsed.success) {
    throw new ValidationError(
      'InvalidEnvelope',
      `not a version ${ENVELOPE_VERSION} envelope: ${parsed.error.message}`,
    );
  }
  return parsed.data as D2CEnvelope;
}

const EnvelopeSchema = z.object({
  version: z.literal(ENVELOPE_VERSION),
  messageId: z.string(),
  deviceId: z.string(),
  enqueuedTime: z.string(),
  systemProperties: z.record(z.string(), z.string()),
  properties: z.record(z.string(), z.string()),
  bodyEncoding: z.enum(['json', 'base64']),
  body: z.unknown(),
});
