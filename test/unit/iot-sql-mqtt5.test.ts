import { describe, expect, it } from 'vitest';
import { ingestSql } from '../../lib/d2c-pipeline.ts';
import { compileIotSql, type IotSqlContext } from '../../local/iot-sql.ts';

function ctx(overrides: Partial<IotSqlContext> = {}): IotSqlContext {
  return {
    topic: 'devices/d1/messages/events/a=1',
    payload: Buffer.from('{"t":1}'),
    clientId: 'd1',
    principal: 'sas:d1',
    timestamp: 1_700_000_000_000,
    newuuid: () => '00000000-0000-4000-8000-000000000001',
    ...overrides,
  };
}

const MQTT5 = {
  contentType: 'application/json',
  correlationData: Buffer.from('req-1'),
  payloadFormatIndicator: 1 as const,
  responseTopic: 'devices/d1/replies',
  userProperties: [
    ['k', 'v1'],
    ['o', 'ov'],
    ['k', 'v2'],
  ] as [string, string][],
};

describe('IoT SQL MQTT 5 functions', () => {
  const sql = compileIotSql(
    "SELECT get_mqtt_property('content_type') AS c, get_mqtt_property('correlation_data') AS d, " +
      "get_mqtt_property('format_indicator') AS f, get_mqtt_property('response_topic') AS r, " +
      "get_mqtt_property('bogus') AS b, get_user_properties() AS all, get_user_properties('k') AS k, " +
      "get_user_properties('none') AS n FROM 'devices/+/messages/events/#'",
  );

  it('read the MQTT 5 properties of a publish as AWS IoT SQL does', () => {
    expect(sql.evaluate(ctx({ mqtt5: MQTT5 }))).toEqual({
      c: 'application/json',
      d: Buffer.from('req-1').toString('base64'),
      f: 'UTF8_DATA',
      r: 'devices/d1/replies',
      all: [{ k: 'v1' }, { o: 'ov' }, { k: 'v2' }],
      k: ['v1', 'v2'],
    });
  });

  it('are Undefined, so left out of the output, for an MQTT 3.1.1 publish (the local broker)', () => {
    expect(sql.evaluate(ctx())).toEqual({});
    expect(sql.evaluate(ctx({ mqtt5: {} }))).toEqual({ f: 'UNSPECIFIED_BYTES' });
  });

  it('check their argument counts at compile time', () => {
    expect(() => compileIotSql("SELECT get_mqtt_property() AS x FROM 'a'")).toThrow();
    expect(() => compileIotSql("SELECT get_user_properties('a', 'b') AS x FROM 'a'")).toThrow();
  });

  it('let the ingest SQL run locally: MQTT 3.1.1 records carry no MQTT 5 fields', () => {
    const ingest = compileIotSql(ingestSql('devices/+/messages/events/#'));
    const plain = JSON.parse(ingest.evaluatePayload(ctx())?.toString() ?? '{}') as Record<string, unknown>;
    expect(Object.keys(plain).sort()).toEqual([
      'body',
      'clientId',
      'enqueuedTime',
      'ingestId',
      'principal',
      'topic',
    ]);
    const withMqtt5 = JSON.parse(ingest.evaluatePayload(ctx({ mqtt5: MQTT5 }))?.toString() ?? '{}') as Record<
      string,
      unknown
    >;
    expect(withMqtt5).toMatchObject({
      contentType: 'application/json',
      correlationData: Buffer.from('req-1').toString('base64'),
      userProperties: [{ k: 'v1' }, { o: 'ov' }, { k: 'v2' }],
    });
  });
});
