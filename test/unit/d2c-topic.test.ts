import { describe, expect, it } from 'vitest';
import { InvalidTopicError, parseD2CTopic } from '../../functions/core/d2c/topic.ts';
import { HubError, ValidationError } from '../../functions/core/errors.ts';

/** The InvalidTopicError that parsing `topic` throws. */
function topicError(topic: string): InvalidTopicError {
  try {
    parseD2CTopic(topic);
  } catch (error) {
    if (error instanceof InvalidTopicError) return error;
    throw error;
  }
  throw new Error(`topic was accepted: ${topic}`);
}

describe('parseD2CTopic', () => {
  it('parses a topic without a property bag', () => {
    expect(parseD2CTopic('devices/d1/messages/events/')).toEqual({ deviceId: 'd1', propertyBag: '' });
  });

  it('parses a topic without the trailing slash', () => {
    expect(parseD2CTopic('devices/d1/messages/events')).toEqual({ deviceId: 'd1', propertyBag: '' });
  });

  it('returns the property bag still URL-encoded', () => {
    expect(parseD2CTopic('devices/thermo-7/messages/events/$.ct=application%2Fjson&alert=high')).toEqual({
      deviceId: 'thermo-7',
      propertyBag: '$.ct=application%2Fjson&alert=high',
    });
  });

  it('keeps device ids with MQTT-safe punctuation as they are', () => {
    expect(parseD2CTopic('devices/a.b_c:d-e/messages/events/').deviceId).toBe('a.b_c:d-e');
  });

  it('keeps everything after events/ as the bag, even a raw slash', () => {
    expect(parseD2CTopic('devices/d1/messages/events/a=1/b=2').propertyBag).toBe('a=1/b=2');
  });

  it('parses a Basic Ingest topic and reports the rule name', () => {
    expect(parseD2CTopic('$aws/rules/HubIngest/devices/d1/messages/events/k=v')).toEqual({
      deviceId: 'd1',
      propertyBag: 'k=v',
      basicIngestRule: 'HubIngest',
    });
  });

  it('parses a Basic Ingest topic without a property bag', () => {
    expect(parseD2CTopic('$aws/rules/r1/devices/d1/messages/events/')).toEqual({
      deviceId: 'd1',
      propertyBag: '',
      basicIngestRule: 'r1',
    });
  });

  it('omits basicIngestRule for a plain topic', () => {
    expect('basicIngestRule' in parseD2CTopic('devices/d1/messages/events/')).toBe(false);
  });
});

describe('parseD2CTopic refuses what is not a D2C topic', () => {
  it('refuses an empty device id', () => {
    const error = topicError('devices//messages/events/');
    expect(error.code).toBe('InvalidD2CTopic');
    expect(error.message).toBe(
      "topic 'devices//messages/events/' is not a device-to-cloud topic: the device id segment is empty",
    );
    expect(error.context).toEqual({
      topic: 'devices//messages/events/',
      reason: 'the device id segment is empty',
    });
  });

  it('refuses a topic that ends after devices/', () => {
    expect(topicError('devices/').message).toContain('the device id segment is empty');
  });

  it.each([
    'device/d1/messages/events/',
    'Devices/d1/messages/events/',
    '/devices/d1/messages/events/',
    '$aws/things/d1/shadow/update',
    'telemetry',
    '',
  ])("refuses the wrong prefix in '%s'", (topic) => {
    const error = topicError(topic);
    expect(error.code).toBe('InvalidD2CTopic');
    expect(error.message).toBe(
      `topic '${topic}' is not a device-to-cloud topic: it must start with 'devices/'`,
    );
  });

  it('refuses a Basic Ingest topic whose inner topic is not a D2C topic, naming the whole topic', () => {
    const error = topicError('$aws/rules/r1/things/d1/messages/events/');
    expect(error.message).toContain("'$aws/rules/r1/things/d1/messages/events/'");
    expect(error.message).toContain("it must start with 'devices/'");
  });

  it.each([
    'devices/d1',
    'devices/d1/',
    'devices/d1/messages',
    'devices/d1/messages/devicebound/',
    'devices/d1/messages/event/',
    'devices/d1/events/messages/',
    'devices/d1/twin/events/',
  ])("refuses '%s', which lacks messages/events", (topic) => {
    const error = topicError(topic);
    expect(error.code).toBe('InvalidD2CTopic');
    expect(error.message).toBe(
      `topic '${topic}' is not a device-to-cloud topic: expected 'devices/{deviceId}/messages/events/'`,
    );
  });

  it('raises a ValidationError (a HubError) named InvalidTopicError', () => {
    const error = topicError('nope');
    expect(error).toBeInstanceOf(ValidationError);
    expect(error).toBeInstanceOf(HubError);
    expect(error.name).toBe('InvalidTopicError');
    expect(error.toJSON()).toEqual({
      code: 'InvalidD2CTopic',
      message: error.message,
      context: error.context,
    });
  });
});
