import { describe, expect, it } from 'vitest';
import {
  buildEnvelope,
  type D2CEnvelope,
  DeviceIdMismatchError,
  decodeEnvelope,
  ENVELOPE_VERSION,
  type IngestRecord,
  IngestRecordSchema,
  NO_MQTT_CLIENT_ID,
} from '../../functions/core/d2c/envelope.ts';
import { InvalidPropertyBagError } from '../../functions/core/d2c/property-bag.ts';
import { InvalidTopicError } from '../../functions/core/d2c/topic.ts';
import { HubError, LimitExceededError, ValidationError } from '../../functions/core/errors.ts';
import { principalIdFor } from '../../functions/core/identity/principal-id.ts';

const LIMITS = { maxMessageBytes: 256 * 1024 };
const T = Date.parse('2030-05-06T07:08:09.123Z');

/** An ingest record as the rule writes it: `bag` goes after events/, `body` is base64-encoded here. */
function record(opts: {
  device?: string;
  clientId?: string;
  bag?: string;
  body?: Uint8Array | string;
  principal?: string;
  ingestId?: string;
}): IngestRecord {
  const device = opts.device ?? 'd1';
  const body = opts.body === undefined ? undefined : Buffer.from(opts.body).toString('base64');
  return {
    topic: `devices/${device}/messages/events/${opts.bag ?? ''}`,
    clientId: opts.clientId ?? device,
    enqueuedTime: T,
    ingestId: opts.ingestId ?? 'ingest-1',
    ...(body === undefined ? {} : { body }),
    ...(opts.principal === undefined ? {} : { principal: opts.principal }),
  };
}

/** The HubError that building an envelope throws. */
function buildError(input: IngestRecord, limits = LIMITS): HubError {
  try {
    buildEnvelope(input, limits);
  } catch (error) {
    if (error instanceof HubError) return error;
    throw error;
  }
  throw new Error('envelope was built');
}

const JSON_BODY = { temperature: 21.5, tags: ['a', 'b'], nested: { ok: true } };

describe('buildEnvelope: identity', () => {
  it('takes the device id from the connection and checks it against the topic', () => {
    const envelope = buildEnvelope(record({ device: 'd1' }), LIMITS);
    expect(envelope.deviceId).toBe('d1');
    expect(envelope.systemProperties['iothub-connection-device-id']).toBe('d1');
  });

  it('refuses a client publishing on another device topic (DeviceIdMismatch)', () => {
    const error = buildError(record({ device: 'victim', clientId: 'attacker' }));
    expect(error).toBeInstanceOf(DeviceIdMismatchError);
    expect(error).toBeInstanceOf(ValidationError);
    expect(error.code).toBe('DeviceIdMismatch');
    expect(error.message).toBe(
      "client 'attacker' published on the topic of device 'victim'; a device may publish only under its own id",
    );
    expect(error.context).toEqual({ clientId: 'attacker', topicDeviceId: 'victim' });
  });

  it('compares device ids exactly (case matters)', () => {
    expect(buildError(record({ device: 'D1', clientId: 'd1' })).code).toBe('DeviceIdMismatch');
  });

  it('accepts a Basic Ingest topic for the same device', () => {
    const input = { ...record({}), topic: '$aws/rules/Ingest/devices/d1/messages/events/a=1' };
    const envelope = buildEnvelope(input, LIMITS);
    expect(envelope.deviceId).toBe('d1');
    expect(envelope.properties).toEqual({ a: '1' });
  });

  it('lets topic and property-bag errors through with their codes', () => {
    const badTopic = buildError({ ...record({}), topic: 'devices/d1/twin/' });
    expect(badTopic).toBeInstanceOf(InvalidTopicError);
    expect(badTopic.code).toBe('InvalidD2CTopic');
    const badBag = buildError(record({ bag: '$.bogus=1' }));
    expect(badBag).toBeInstanceOf(InvalidPropertyBagError);
    expect(badBag.code).toBe('InvalidPropertyBag');
  });

  it('reports the auth method from the principal type, and none without a principal', () => {
    const sas = buildEnvelope(record({ principal: 'sas:d1' }), LIMITS);
    expect(JSON.parse(sas.systemProperties['iothub-connection-auth-method'] ?? '')).toEqual({
      scope: 'device',
      type: 'sas',
      issuer: 'iothub',
      acceptingIpFilterRule: null,
    });
    const none = buildEnvelope(record({}), LIMITS);
    expect(JSON.parse(none.systemProperties['iothub-connection-auth-method'] ?? '')).toMatchObject({
      type: 'none',
    });
  });
});

describe('buildEnvelope: message id and properties', () => {
  it("uses the device's $.mid as the message id", () => {
    const envelope = buildEnvelope(record({ bag: '$.mid=m-42', ingestId: 'ing-9' }), LIMITS);
    expect(envelope.messageId).toBe('m-42');
    expect(envelope.systemProperties['message-id']).toBe('m-42');
  });

  it('falls back to the ingest id without $.mid, and for an empty $.mid', () => {
    expect(buildEnvelope(record({ ingestId: 'ing-9' }), LIMITS).messageId).toBe('ing-9');
    const empty = buildEnvelope(record({ bag: '$.mid=', ingestId: 'ing-9' }), LIMITS);
    expect(empty.messageId).toBe('ing-9');
    expect(empty.systemProperties['message-id']).toBe('ing-9');
  });

  it('builds a version 1 envelope with system and application properties', () => {
    const envelope = buildEnvelope(
      record({ bag: '$.cid=c-1&$.ct=text%2Fplain&$.ce=utf-8&alert=high&unit=%C2%B0C', body: 'hi' }),
      LIMITS,
    );
    expect(envelope).toEqual({
      version: ENVELOPE_VERSION,
      messageId: 'ingest-1',
      deviceId: 'd1',
      enqueuedTime: '2030-05-06T07:08:09.123Z',
      systemProperties: {
        'correlation-id': 'c-1',
        'content-type': 'text/plain',
        'content-encoding': 'utf-8',
        'message-id': 'ingest-1',
        'iothub-connection-device-id': 'd1',
        'iothub-connection-auth-method': expect.any(String),
        'iothub-enqueuedtime': '2030-05-06T07:08:09.123Z',
        'iothub-message-source': 'Telemetry',
      },
      properties: { alert: 'high', unit: '°C' },
      bodyEncoding: 'base64',
      body: Buffer.from('hi').toString('base64'),
    });
    expect(ENVELOPE_VERSION).toBe(1);
  });

  it('does not let the device override hub-stamped system properties', () => {
    // None of the $. keys map to iothub-connection-*; the hub's values always win.
    const envelope = buildEnvelope(record({ bag: 'iothub-connection-device-id=evil' }), LIMITS);
    expect(envelope.systemProperties['iothub-connection-device-id']).toBe('d1');
    expect(envelope.properties).toEqual({ 'iothub-connection-device-id': 'evil' });
  });
});

describe('buildEnvelope: body', () => {
  const json = Buffer.from(JSON.stringify(JSON_BODY));

  it.each([
    ['application/json', undefined],
    ['application/json; charset=utf-8', undefined],
    ['application/json;charset=UTF-8', 'utf-8'],
    ['APPLICATION/JSON', 'UTF-8'],
    ['application/json', 'utf8'],
  ])('carries a JSON body as JSON for content type %s and encoding %s', (ct, ce) => {
    const bag = [`$.ct=${encodeURIComponent(ct)}`, ...(ce === undefined ? [] : [`$.ce=${ce}`])].join('&');
    const envelope = buildEnvelope(record({ bag, body: json }), LIMITS);
    expect(envelope.bodyEncoding).toBe('json');
    expect(envelope.body).toEqual(JSON_BODY);
  });

  it.each([
    ['no content type', ''],
    ['text/plain', '$.ct=text%2Fplain'],
    ['application/jsonx', '$.ct=application%2Fjsonx'],
    ['application/json-seq', '$.ct=application%2Fjson-seq'],
    ['a JSON content type with utf-16 encoding', '$.ct=application%2Fjson&$.ce=utf-16'],
    ['a JSON content type with gzip encoding', '$.ct=application%2Fjson&$.ce=gzip'],
  ])('keeps a JSON-looking body base64 with %s', (_, bag) => {
    const envelope = buildEnvelope(record({ bag, body: json }), LIMITS);
    expect(envelope.bodyEncoding).toBe('base64');
    expect(envelope.body).toBe(json.toString('base64'));
  });

  it('keeps a body that claims JSON but does not parse as base64, unchanged', () => {
    const bad = Buffer.from('{"temperature": 21.5,');
    const envelope = buildEnvelope(record({ bag: '$.ct=application%2Fjson', body: bad }), LIMITS);
    expect(envelope.bodyEncoding).toBe('base64');
    expect(Buffer.from(envelope.body as string, 'base64').equals(bad)).toBe(true);
  });

  it('carries JSON scalars as JSON', () => {
    const envelope = buildEnvelope(record({ bag: '$.ct=application%2Fjson', body: '42' }), LIMITS);
    expect(envelope).toMatchObject({ bodyEncoding: 'json', body: 42 });
  });

  it('round-trips a binary body through base64', () => {
    const bytes = Uint8Array.from({ length: 512 }, (_, i) => (i * 7 + 3) % 256);
    const envelope = buildEnvelope(record({ body: bytes }), LIMITS);
    expect(envelope.bodyEncoding).toBe('base64');
    expect(new Uint8Array(Buffer.from(envelope.body as string, 'base64'))).toEqual(bytes);
  });

  it('gives an empty base64 body for an empty payload (body absent from the record)', () => {
    const envelope = buildEnvelope(record({}), LIMITS);
    expect(envelope).toMatchObject({ bodyEncoding: 'base64', body: '' });
  });

  it('accepts a body of exactly the limit and refuses one byte more, with both sizes in the message', () => {
    const limits = { maxMessageBytes: 100 };
    expect(buildEnvelope(record({ body: new Uint8Array(100) }), limits).body).toBe(
      Buffer.alloc(100).toString('base64'),
    );
    const error = buildError(record({ body: new Uint8Array(101) }), limits);
    expect(error).toBeInstanceOf(LimitExceededError);
    expect(error.code).toBe('MessageTooLarge');
    expect(error.message).toBe('message body is 101 bytes; the limit is 100');
    expect(error.context).toEqual({ size: 101, limit: 100 });
  });

  it('measures the decoded bytes, not the base64 text', () => {
    // 192 bytes are 256 base64 characters: under a 200-byte limit.
    expect(() =>
      buildEnvelope(record({ body: new Uint8Array(192) }), { maxMessageBytes: 200 }),
    ).not.toThrow();
  });
});

describe('IngestRecordSchema', () => {
  it('accepts what the rule writes, with or without body and principal', () => {
    expect(IngestRecordSchema.safeParse(record({ body: 'x', principal: 'x509:abc' })).success).toBe(true);
    expect(IngestRecordSchema.safeParse(record({})).success).toBe(true);
  });

  it('refuses a record without clientId, a string timestamp or an empty ingestId', () => {
    const { clientId: _, ...noClient } = record({});
    expect(IngestRecordSchema.safeParse(noClient).success).toBe(false);
    expect(IngestRecordSchema.safeParse({ ...record({}), enqueuedTime: '2030-01-01' }).success).toBe(false);
    expect(IngestRecordSchema.safeParse({ ...record({}), ingestId: '' }).success).toBe(false);
  });
});

describe('decodeEnvelope', () => {
  const envelope: D2CEnvelope = buildEnvelope(
    record({
      bag: '$.ct=application%2Fjson&$.mid=m1&k=v',
      body: JSON.stringify(JSON_BODY),
      principal: 'sas:d1',
    }),
    LIMITS,
  );

  it('round-trips an envelope from a string', () => {
    expect(decodeEnvelope(JSON.stringify(envelope))).toEqual(envelope);
  });

  it('round-trips an envelope from bytes, as read from a stream', () => {
    expect(decodeEnvelope(new TextEncoder().encode(JSON.stringify(envelope)))).toEqual(envelope);
    expect(decodeEnvelope(Buffer.from(JSON.stringify(envelope)))).toEqual(envelope);
  });

  it('round-trips a base64 envelope', () => {
    const binary = buildEnvelope(record({ body: new Uint8Array([0, 255, 1]) }), LIMITS);
    expect(decodeEnvelope(JSON.stringify(binary))).toEqual(binary);
  });

  it.each([0, 2, '1'])('refuses version %s', (version) => {
    let caught: unknown;
    try {
      decodeEnvelope(JSON.stringify({ ...envelope, version }));
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ValidationError);
    expect((caught as HubError).code).toBe('InvalidEnvelope');
    expect((caught as HubError).message).toMatch(/^not a version 1 envelope: /);
  });

  it('refuses an envelope with a missing field or a bad bodyEncoding', () => {
    const { messageId: _, ...noId } = envelope;
    expect(() => decodeEnvelope(JSON.stringify(noId))).toThrow(/not a version 1 envelope/);
    expect(() => decodeEnvelope(JSON.stringify({ ...envelope, bodyEncoding: 'xml' }))).toThrow(
      /not a version 1 envelope/,
    );
    expect(() => decodeEnvelope(JSON.stringify({ ...envelope, properties: { n: 1 } }))).toThrow(
      /not a version 1 envelope/,
    );
  });

  it('refuses text that is not JSON', () => {
    expect(() => decodeEnvelope('not json')).toThrow();
  });
});

describe('buildEnvelope: MQTT 5 properties and HTTPS publishes', () => {
  const b64 = (text: string) => Buffer.from(text).toString('base64');

  it('takes content type, correlation data and user properties as content-type, correlation-id and application properties', () => {
    const envelope = buildEnvelope(
      {
        ...record({ body: '{"t":1}' }),
        contentType: 'application/json',
        correlationData: b64('req-42'),
        userProperties: [{ alert: 'high' }, { site: 'north' }],
      },
      LIMITS,
    );
    expect(envelope.systemProperties['content-type']).toBe('application/json');
    expect(envelope.systemProperties['correlation-id']).toBe('req-42');
    expect(envelope.properties).toEqual({ alert: 'high', site: 'north' });
    expect(envelope.bodyEncoding).toBe('json');
    expect(envelope.body).toEqual({ t: 1 });
  });

  it('lets the topic property bag win over MQTT 5 properties of the same name', () => {
    const envelope = buildEnvelope(
      {
        ...record({ bag: '$.ct=text%2Fplain&$.cid=from-topic&alert=topic', body: '{"t":1}' }),
        contentType: 'application/json',
        correlationData: b64('from-mqtt5'),
        userProperties: [{ alert: 'mqtt5' }, { extra: 'x' }],
      },
      LIMITS,
    );
    expect(envelope.systemProperties['content-type']).toBe('text/plain');
    expect(envelope.systemProperties['correlation-id']).toBe('from-topic');
    expect(envelope.properties).toEqual({ alert: 'topic', extra: 'x' });
    expect(envelope.bodyEncoding).toBe('base64');
  });

  it('reads $. user properties as system properties, behind the native MQTT 5 fields', () => {
    const envelope = buildEnvelope(
      {
        ...record({}),
        contentType: 'application/json',
        userProperties: [{ '$.mid': 'm-7' }, { '$.ct': 'text/plain' }, { '$.ce': 'utf-8' }],
      },
      LIMITS,
    );
    expect(envelope.messageId).toBe('m-7');
    expect(envelope.systemProperties['content-type']).toBe('application/json');
    expect(envelope.systemProperties['content-encoding']).toBe('utf-8');
  });

  it('keeps correlation data that is not UTF-8 as its base64', () => {
    const binary = Buffer.from([0xff, 0xfe, 0x00, 0x01]).toString('base64');
    const envelope = buildEnvelope({ ...record({}), correlationData: binary }, LIMITS);
    expect(envelope.systemProperties['correlation-id']).toBe(binary);
  });

  it('treats absent, null and empty MQTT 5 fields (an MQTT 3.1.1 publish) as no properties', () => {
    const plain = buildEnvelope(record({ bag: 'a=1' }), LIMITS);
    for (const extra of [
      { contentType: null, correlationData: null, userProperties: null },
      { userProperties: [] },
      { contentType: '', correlationData: '' },
    ]) {
      const envelope = buildEnvelope({ ...record({ bag: 'a=1' }), ...extra }, LIMITS);
      expect(envelope.systemProperties).toEqual(plain.systemProperties);
      expect(envelope.properties).toEqual({ a: '1' });
    }
  });

  it('refuses a user property name given twice (InvalidPropertyBag), naming it', () => {
    const error = buildError({ ...record({}), userProperties: [{ k: '1' }, { k: '2' }] });
    expect(error).toBeInstanceOf(InvalidPropertyBagError);
    expect(error.message).toBe("invalid property bag: MQTT 5 user property 'k' appears more than once");
  });

  it('applies the property bag rules to user properties', () => {
    expect(buildError({ ...record({}), userProperties: [{ '$.nope': 'x' }] }).message).toContain(
      "unknown system property '$.nope'",
    );
    expect(buildError({ ...record({}), userProperties: [{ 'bad name': 'x' }] }).code).toBe(
      'InvalidPropertyBag',
    );
    expect(buildError({ ...record({}), userProperties: [{ k: 'v'.repeat(8193) }] }).code).toBe(
      'InvalidPropertyBag',
    );
  });

  it('counts user properties and bag properties together against the 64-property limit', () => {
    const bag = Array.from({ length: 40 }, (_, i) => `t${i}=1`).join('&');
    const userProperties = Array.from({ length: 30 }, (_, i) => ({ [`u${i}`]: '1' }));
    const error = buildError({ ...record({ bag }), userProperties });
    expect(error).toBeInstanceOf(LimitExceededError);
    expect(error.code).toBe('TooManyProperties');
    // 40 + 24 = 64 is fine
    expect(() =>
      buildEnvelope({ ...record({ bag }), userProperties: userProperties.slice(0, 24) }, LIMITS),
    ).not.toThrow();
  });

  it("accepts an HTTPS publish (clientid() 'n/a') whose principal is the authorizer's for the topic's device", () => {
    const envelope = buildEnvelope(
      record({ device: 'd1', clientId: NO_MQTT_CLIENT_ID, principal: principalIdFor('d1'), bag: 'a=1' }),
      LIMITS,
    );
    expect(envelope.deviceId).toBe('d1');
    expect(envelope.properties).toEqual({ a: '1' });
    expect(JSON.parse(envelope.systemProperties['iothub-connection-auth-method'] ?? '')).toMatchObject({
      type: 'sas',
    });
  });

  it("refuses an HTTPS publish whose principal is another device's, or none (DeviceIdMismatch)", () => {
    for (const principal of [principalIdFor('d2'), undefined, 'sas:d1']) {
      const error = buildError(
        record({ device: 'd1', clientId: NO_MQTT_CLIENT_ID, ...(principal ? { principal } : {}) }),
      );
      expect(error).toBeInstanceOf(DeviceIdMismatchError);
      expect(error.message).toContain("the topic of device 'd1' was not authenticated as that device");
    }
  });

  it("reports the cloud authorizer's principal as SAS authentication for MQTT publishes too", () => {
    const envelope = buildEnvelope(record({ device: 'd1', principal: principalIdFor('d1') }), LIMITS);
    expect(JSON.parse(envelope.systemProperties['iothub-connection-auth-method'] ?? '')).toMatchObject({
      type: 'sas',
    });
  });

  it('accepts the MQTT 5 fields in IngestRecordSchema and refuses user properties of the wrong shape', () => {
    const full = {
      ...record({}),
      contentType: 'text/plain',
      correlationData: 'YQ==',
      userProperties: [{ a: '1' }, { a: '2' }],
    };
    expect(IngestRecordSchema.safeParse(full).success).toBe(true);
    expect(IngestRecordSchema.safeParse({ ...full, userProperties: { a: '1' } }).success).toBe(false);
    expect(IngestRecordSchema.safeParse({ ...full, userProperties: [{ a: 1 }] }).success).toBe(false);
  });
});
