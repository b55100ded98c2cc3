import { ValidationError } from '../errors.ts';

/** The parts of a device-to-cloud topic. */
export interface D2CTopic {
  /** Device id as it appears in the topic (URL-decoding is not applied: ids are MQTT-safe). */
  readonly deviceId: string;
  /** The raw (still URL-encoded) property bag after `messages/events/`, or '' when absent. */
  readonly propertyBag: string;
  /** The Basic Ingest rule name when the device published to `$aws/rules/{rule}/...`. */
  readonly basicIngestRule?: string;
}

/** Thrown when a topic is not a D2C topic of this hub. `code` is `InvalidD2CTopic`. */
export class InvalidTopicError extends ValidationError {
  constructor(topic: string, reason: string) {
    super('InvalidD2CTopic', `topic '${topic}' is not a device-to-cloud topic: ${reason}`, { topic, reason });
  }
}

const BASIC_INGEST = /^\$aws\/rules\/([^/]+)\/(.*)$/;

/**
 * Parses `devices/{deviceId}/messages/events/{property_bag}` (IoT Hub's D2C topic), optionally
 * behind AWS IoT Basic Ingest's `$aws/rules/{rule}/` prefix.
 *
 * @example parseD2CTopic('devices/d1/messages/events/$.ct=application%2Fjson')
 *   // { deviceId: 'd1', propertyBag: '$.ct=application%2Fjson' }
 */
export function parseD2CTopic(topic: string): D2CTopic {
  let rest = topic;
  let basicIngestRule: string | undefined;
  const ingest = BASIC_INGEST.exec(topic);
  if (ingest) {
    basicIngestRule = ingest[1];
    rest = ingest[2] ?? '';
  }
  const parts = rest.split('/');
  if (parts[0] !== 'devices') throw new InvalidTopicError(topic, "it must start with 'devices/'");
  const deviceId = parts[1] ?? '';
  if (deviceId === '') throw new InvalidTopicError(topic, 'the device id segment is empty');
  if (parts[2] !== 'messages' || parts[3] !== 'events') {
    throw new InvalidTopicError(topic, "expected 'devices/{deviceId}/messages/events/'");
  }
  // The property bag may itself contain encoded '/' (%2F) but never a raw one; IoT Hub treats
  // everything after events/ as the bag, so join what is left.
  const propertyBag = parts.slice(4).join('/');
  return basicIngestRule === undefined
    ? { deviceId, propertyBag }
    : { deviceId, propertyBag, basicIngestRule };
}
