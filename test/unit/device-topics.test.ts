import { describe, expect, it } from 'vitest';
import {
  basicIngestEventsTopic,
  deviceTopicPrefixes,
  publishRefusal,
  subscribeRefusal,
} from '../../functions/core/identity/topics.ts';

describe('a device’s own topics', () => {
  it.each([
    'devices/d1/messages/events',
    'devices/d1/messages/events/$.mid=1&a=b',
    'devices/d1/messages/devicebound/settle',
    '$aws/things/d1/shadow/update',
    '$aws/things/d1/shadow/get',
    '$aws/things/d1/shadow/delete',
    '$aws/things/d1/shadow/name/config/update',
  ])('lets d1 publish to %s', (topic) => {
    expect(publishRefusal('d1', topic)).toBeUndefined();
  });

  it.each([
    'foo/bar',
    'devices//messages/events',
    'devices/d2/messages/events',
    'devices/d1x/messages/events',
    'devices/d1',
    '$aws/things/d2/shadow/update',
    '$aws/things/d1/jobs/notify',
    // Basic Ingest is off unless the hub names its ingest rule.
    '$aws/rules/ingest/devices/d1/messages/events',
    '$aws/rules/ingest/devices/d2/messages/events',
    '$aws/rules/r/devices/d2/x/devices/d1/y',
    '$aws/events/presence/connected/d1',
    // The shadow service's answers: a device that could publish them could fake its twin change events.
    '$aws/things/d1/shadow/update/documents',
    '$aws/things/d1/shadow/update/accepted',
    '$aws/things/d1/shadow/update/delta',
    '$aws/things/d1/shadow/get/accepted',
    '$aws/things/d1/shadow/name/config/update/documents',
    '$aws/things/d1/shadow/name/a/b/update',
  ])('refuses d1 publishing to %s, naming the device and the topic', (topic) => {
    const refusal = publishRefusal('d1', topic);
    expect(refusal).toContain("device 'd1'");
    expect(refusal).toContain(`'${topic}'`);
  });

  it.each(['devices/d1/messages/devicebound/#', 'devices/d1/#', '$aws/things/d1/shadow/update/delta'])(
    'lets d1 subscribe to %s',
    (filter) => {
      expect(subscribeRefusal('d1', filter)).toBeUndefined();
    },
  );

  it.each([
    '#',
    'devices/#',
    'devices/+/messages/devicebound/#',
    'devices/d2/#',
    '$aws/things/+/shadow/#',
    'devices/d1',
  ])('refuses d1 subscribing to %s', (filter) => {
    expect(subscribeRefusal('d1', filter)).toContain("device 'd1'");
  });

  it('gives the prefixes the cloud policy is built from', () => {
    expect(deviceTopicPrefixes('d1')).toEqual(['devices/d1/', '$aws/things/d1/shadow/']);
  });
});

describe('Basic Ingest topics', () => {
  const on = { basicIngestRule: 'Ingest_1' };

  it('names the ingest rule and the device', () => {
    expect(basicIngestEventsTopic('Ingest_1', 'd1')).toBe('$aws/rules/Ingest_1/devices/d1/messages/events');
  });

  it.each(['', 'has-hyphen', 'a/b', 'x'.repeat(129)])('refuses the rule name %j', (rule) => {
    expect(() => basicIngestEventsTopic(rule, 'd1')).toThrow(/not an IoT rule name/);
  });

  it.each([
    '$aws/rules/Ingest_1/devices/d1/messages/events',
    '$aws/rules/Ingest_1/devices/d1/messages/events/',
    '$aws/rules/Ingest_1/devices/d1/messages/events/$.ct=application%2Fjson&a=1',
  ])('lets d1 publish to %s when on', (topic) => {
    expect(publishRefusal('d1', topic, on)).toBeUndefined();
  });

  it.each([
    // another device, another rule, another topic family, a prefix-sharing id, a hidden inner topic
    '$aws/rules/Ingest_1/devices/d2/messages/events',
    '$aws/rules/Other/devices/d1/messages/events',
    '$aws/rules/Ingest_1/devices/d1/messages/devicebound/x',
    '$aws/rules/Ingest_1/devices/d1x/messages/events',
    '$aws/rules/Ingest_1/devices/d1/messages/eventsx',
    '$aws/rules/r/Ingest_1/devices/d1/messages/events',
    '$aws/rules/Ingest_1',
  ])('refuses d1 publishing to %s even when on, naming the allowed topic', (topic) => {
    const refusal = publishRefusal('d1', topic, on);
    expect(refusal).toContain("device 'd1'");
    expect(refusal).toContain("'$aws/rules/Ingest_1/devices/d1/messages/events'");
    expect(refusal).toContain(`'${topic}'`);
  });

  it('does not change what else a device may publish', () => {
    expect(publishRefusal('d1', 'devices/d1/messages/events/a=1', on)).toBeUndefined();
    expect(publishRefusal('d1', 'devices/d2/messages/events/a=1', on)).toContain("device 'd1'");
  });
});
