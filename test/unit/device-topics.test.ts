import { describe, expect, it } from 'vitest';
import {
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
    '$aws/rules/ingest/devices/d1/messages/events',
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
    '$aws/rules/ingest/devices/d2/messages/events',
    // A rule name cannot hide another device's topic: the inner topic must itself be d1's.
    '$aws/rules/r/devices/d2/x/devices/d1/y',
    '$aws/events/presence/connected/d1',
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
