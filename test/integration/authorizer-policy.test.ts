/**
 * The local broker follows the stack's custom authorizer: a test stack whose authorizer function answers
 * one more policy document (a Deny of `devices/{clientId}/messages/events/blocked*`) makes the local hub
 * refuse that publish, while the stock stack's hub takes it. Real hub processes, real mqtt.js devices.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findCustomAuthorizer } from '../../local/front-door.ts';
import type { CfnTemplate } from '../../local/template.ts';
import { registerDevice } from '../support/devices.ts';
import { type HubProcess, startHubProcess, testTemplate } from '../support/hub-process.ts';
import { sharedHub } from '../support/shared-hub.ts';

const FIXTURE = path.resolve(import.meta.dirname, '../fixtures/authorizer-deny-blocked');

/**
 * The stack's template with its authorizer function's code replaced by the fixture bundle: the function
 * gets the `aws:asset:path` metadata the CDK CLI writes for a bundled asset, pointing at the fixture folder.
 */
function templateWithFixtureAuthorizer(): string {
  const file = testTemplate({});
  const template = JSON.parse(readFileSync(file, 'utf8')) as CfnTemplate;
  const authorizer = findCustomAuthorizer(template);
  if (!authorizer) throw new Error('the synthesized stack has no custom authorizer');
  const fn = template.Resources[authorizer.functionLogicalId];
  if (!fn) throw new Error(`no function ${authorizer.functionLogicalId}`);
  fn.Metadata = { ...fn.Metadata, 'aws:asset:path': path.relative(path.dirname(file), FIXTURE) };
  writeFileSync(file, JSON.stringify(template));
  return file;
}

/** Publishes with QoS 1: 'acked', or 'closed' when the hub disconnected the device without a PUBACK. */
function publishOutcome(device: MqttClient, topic: string): Promise<'acked' | 'closed'> {
  return new Promise((resolve) => {
    const onClose = () => resolve('closed');
    device.once('close', onClose);
    device.publish(topic, '{"n":1}', { qos: 1 }, (error) => {
      device.off('close', onClose);
      resolve(error ? 'closed' : 'acked');
    });
  });
}

const connect = (hub: HubProcess, creds: Awaited<ReturnType<typeof registerDevice>>) =>
  mqtt.connectAsync(hub.endpoints.mqtt, { ...creds, reconnectPeriod: 0 });

describe('the local broker enforces the policy the stack’s authorizer answers', () => {
  let stock: HubProcess;
  let changed: HubProcess | undefined;
  beforeAll(async () => {
    stock = await sharedHub();
    changed = await startHubProcess({ args: [`--template=${templateWithFixtureAuthorizer()}`] });
  });
  afterAll(async () => {
    await changed?.stop();
  });

  it('with the stock authorizer, a publish under messages/events/blocked is PUBACKed', async () => {
    const creds = await registerDevice(stock.endpoints, 'authz-stock');
    const device = await connect(stock, creds);
    expect(await publishOutcome(device, 'devices/authz-stock/messages/events/blocked-1')).toBe('acked');
    await device.endAsync();
  });

  it('with the test stack’s authorizer, the same publish disconnects and the log names its Deny', async () => {
    const hub = changed!;
    const creds = await registerDevice(hub.endpoints, 'authz-changed');
    const device = await connect(hub, creds);
    // What the stock policy allows still goes through: the documents are the stock ones plus the Deny.
    expect(await publishOutcome(device, 'devices/authz-changed/messages/events')).toBe('acked');
    expect(await publishOutcome(device, 'devices/authz-changed/messages/events/blocked-1')).toBe('closed');
    device.end(true);
    const line = await hub.waitForLog(/publish refused, disconnecting: device 'authz-changed'/);
    expect(line).toContain(
      "iot:Publish on 'arn:aws:iot:us-east-1:000000000000:topic/devices/authz-changed/messages/events/blocked-1' denied by document 2, statement 1 (Sid 'TestDenyBlocked')",
    );
  });
});
