import { createHash } from 'node:crypto';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import {
  type AuthorizerResponse,
  disconnectAfterSeconds,
  makeHandler,
  principalIdFor,
  targetFromFunctionArn,
} from '../../functions/authorizer.ts';
import type { IotPolicyDocument } from '../../functions/core/identity/policy.ts';
import { createSasToken, deviceResourceUri } from '../../functions/core/identity/sas.ts';
import type { Log } from '../../functions/core/ports.ts';

// The module builds its default handler at import (cold start) and fails without its environment.
vi.hoisted(() => {
  process.env.REGISTRY_TABLE_NAME ??= 'registry-test';
  process.env.HUB_HOSTNAME ??= 'hub.example.com';
  process.env.AWS_REGION ??= 'eu-west-1';
});

const HOST = 'abc123-ats.iot.eu-west-1.amazonaws.com';
const NOW = new Date('2030-01-01T00:00:00Z');
const KEY = Buffer.alloc(32, 5).toString('base64');
const SECONDARY = Buffer.alloc(32, 6).toString('base64');
const WRONG = Buffer.alloc(32, 7).toString('base64');
const CONTEXT = { invokedFunctionArn: 'arn:aws:lambda:eu-west-1:123456789012:function:hub-authorizer' };
const ARN = 'arn:aws:iot:eu-west-1:123456789012';

let registry: MemoryDeviceRegistry;
let lines: { level: string; message: string; context?: Record<string, unknown> }[];
let log: Log;
let secrets: string[];

function token(deviceId = 'dev-1', key = KEY, seconds = 3600): string {
  const value = createSasToken({
    resourceUri: deviceResourceUri(HOST, deviceId),
    key,
    expiresAt: new Date(NOW.getTime() + seconds * 1000),
  });
  secrets.push(value, Buffer.from(value).toString('base64'));
  return value;
}

function event(mqtt: { username?: string; password?: string; clientId?: string }) {
  return {
    signatureVerified: false,
    protocols: ['tls', 'mqtt'],
    protocolData: { tls: { serverName: HOST }, mqtt },
    connectionMetadata: { id: 'b0c3c1e4-0000-4000-8000-000000000001' },
  };
}

function mqttFor(deviceId: string, password: string) {
  return {
    clientId: deviceId,
    username: `${HOST}/${deviceId}/?api-version=2021-04-12&x-amz-customauthorizer-name=hub`,
    password: Buffer.from(password).toString('base64'),
  };
}

function handler(overrides: Partial<Parameters<typeof makeHandler>[0]> = {}) {
  return makeHandler({ registry, hostName: HOST, now: () => NOW, log, ...overrides });
}

function expectAllowed(response: AuthorizerResponse) {
  expect(response.isAuthenticated).toBe(true);
  if (!response.isAuthenticated) throw new Error('unreachable');
  return response;
}

function policies(response: AuthorizerResponse): IotPolicyDocument[] {
  return expectAllowed(response).policyDocuments.map((d) => JSON.parse(d) as IotPolicyDocument);
}

beforeEach(async () => {
  secrets = [KEY, SECONDARY, WRONG];
  lines = [];
  const push = (level: string) => (message: string, context?: Record<string, unknown>) => {
    lines.push(context === undefined ? { level, message } : { level, message, context });
  };
  log = { info: push('info'), warn: push('warn'), error: push('error') };
  registry = new MemoryDeviceRegistry({ clock: () => NOW });
  await registry.create({
    deviceId: 'dev-1',
    authentication: { type: 'sas', symmetricKey: { primaryKey: KEY, secondaryKey: SECONDARY } },
  });
  await registry.create({
    deviceId: 'off',
    status: 'disabled',
    statusReason: 'decommissioned',
    authentication: { type: 'sas', symmetricKey: { primaryKey: KEY, secondaryKey: SECONDARY } },
  });
  await registry.create({
    deviceId: 'dev*',
    authentication: { type: 'sas', symmetricKey: { primaryKey: KEY, secondaryKey: SECONDARY } },
  });
});

/** No log line may carry a key or a token, in any encoding. */
function expectNoSecretsLogged(): void {
  const text = JSON.stringify(lines);
  for (const secret of secrets) expect(text).not.toContain(secret);
}

describe('authorizer handler: allowed', () => {
  it('answers IoT Core with a per-device policy, a valid principal id and bounded lifetimes', async () => {
    const response = expectAllowed(await handler()(event(mqttFor('dev-1', token())), CONTEXT));
    expect(Object.keys(response).sort()).toEqual([
      'disconnectAfterInSeconds',
      'isAuthenticated',
      'policyDocuments',
      'principalId',
      'refreshAfterInSeconds',
    ]);
    expect(response.principalId).toMatch(/^[a-zA-Z0-9]{1,128}$/);
    expect(response.principalId).toBe(createHash('sha256').update('dev-1').digest('hex'));
    expect(response.refreshAfterInSeconds).toBe(300);
    expect(response.disconnectAfterInSeconds).toBe(3600);
    for (const doc of response.policyDocuments) expect(typeof doc).toBe('string');
    const [policy] = policies(response);
    expect(policy?.Version).toBe('2012-10-17');
    const resources = policy!.Statement.flatMap((s) => s.Resource);
    expect(resources).toContain(`${ARN}:client/dev-1`);
    expect(resources).toContain(`${ARN}:topic/devices/dev-1/*`);
    expect(resources).toContain(`${ARN}:topicfilter/devices/dev-1/*`);
    for (const resource of resources) expect(resource).toContain('dev-1');
    for (const action of policy!.Statement.flatMap((s) => s.Action)) expect(action).not.toContain('*');
    expect(lines).toContainEqual(expect.objectContaining({ level: 'info', message: 'device authenticated' }));
    expectNoSecretsLogged();
  });

  it('accepts the secondary key and an absent user name', async () => {
    const mqtt = { clientId: 'dev-1', password: Buffer.from(token('dev-1', SECONDARY)).toString('base64') };
    expectAllowed(await handler()(event(mqtt), CONTEXT));
  });

  it.each([
    [10, 300],
    [299, 300],
    [301, 301],
    [7200, 7200],
    [86_400 * 10, 86_400],
  ])('a token valid for %i s disconnects after %i s', async (seconds, expected) => {
    const response = expectAllowed(
      await handler()(event(mqttFor('dev-1', token('dev-1', KEY, seconds))), CONTEXT),
    );
    expect(response.disconnectAfterInSeconds).toBe(expected);
  });

  it('takes the region from deps and partition/account from the function ARN, or a full target', async () => {
    const cn = { invokedFunctionArn: 'arn:aws-cn:lambda:cn-north-1:210987654321:function:auth:live' };
    const fromArn = policies(await handler()(event(mqttFor('dev-1', token())), cn));
    expect(fromArn[0]?.Statement[0]?.Resource).toEqual([
      'arn:aws-cn:iot:cn-north-1:210987654321:client/dev-1',
    ]);
    const withRegion = policies(
      await handler({ region: 'cn-northwest-1' })(event(mqttFor('dev-1', token())), cn),
    );
    expect(withRegion[0]?.Statement[0]?.Resource).toEqual([
      'arn:aws-cn:iot:cn-northwest-1:210987654321:client/dev-1',
    ]);
    const target = { partition: 'aws', region: 'us-east-1', account: '111122223333' };
    const fixed = policies(await handler({ target })(event(mqttFor('dev-1', token())), undefined));
    expect(fixed[0]?.Statement[0]?.Resource).toEqual(['arn:aws:iot:us-east-1:111122223333:client/dev-1']);
  });

  it('escapes a device id with a policy wildcard so the policy covers only that device', async () => {
    const response = await handler()(event(mqttFor('dev*', token('dev*'))), CONTEXT);
    const resources = policies(response).flatMap((p) => p.Statement.flatMap((s) => s.Resource));
    expect(resources).toContain(`${ARN}:client/dev\${*}`);
    for (const resource of resources) expect(resource).toContain('dev${*}');
    expect(JSON.stringify(resources)).not.toContain('devices/dev*/');
  });
});

describe('authorizer handler: refused', () => {
  it.each([
    ['a wrong key', () => mqttFor('dev-1', token('dev-1', WRONG)), 'bad-credentials'],
    ['an expired token', () => mqttFor('dev-1', token('dev-1', KEY, -60)), 'expired'],
    ['an unknown device', () => mqttFor('ghost', token('ghost')), 'unknown-device'],
    ['a disabled device', () => mqttFor('off', token('off')), 'disabled'],
    ["another device's token", () => mqttFor('dev-1', token('off')), 'bad-credentials'],
    [
      'a user name naming another device',
      () => ({ ...mqttFor('dev-1', token()), username: `${HOST}/off/?api-version=2021-04-12` }),
      'client-id-mismatch',
    ],
  ])('%s must get isAuthenticated false and a logged reason', async (_name, mqtt, reason) => {
    const response = await handler()(event(mqtt()), CONTEXT);
    expect(response).toEqual({ isAuthenticated: false });
    expect(lines).toContainEqual(
      expect.objectContaining({
        level: 'warn',
        message: 'connection refused',
        context: expect.objectContaining({ reason, connectionId: 'b0c3c1e4-0000-4000-8000-000000000001' }),
      }),
    );
    expectNoSecretsLogged();
  });

  it('decodes the base64 password: a raw (not base64) token must be refused as malformed', async () => {
    const raw = { clientId: 'dev-1', password: token() };
    expect(await handler()(event(raw), CONTEXT)).toEqual({ isAuthenticated: false });
    expect(lines.at(-1)?.context).toMatchObject({
      reason: 'malformed',
      message: 'MQTT password is not base64',
    });
    const garbage = { clientId: 'dev-1', password: Buffer.from('not a token').toString('base64') };
    expect(await handler()(event(garbage), CONTEXT)).toEqual({ isAuthenticated: false });
    expect(lines.at(-1)?.context).toMatchObject({ reason: 'malformed' });
    expectNoSecretsLogged();
  });

  it('a policy-variable injection attempt in the client id must be refused', async () => {
    const deviceId = 'x${iot:ClientId}';
    const response = await handler()(
      event({
        clientId: deviceId,
        username: `${HOST}/${deviceId}`,
        password: Buffer.from('x').toString('base64'),
      }),
      CONTEXT,
    );
    expect(response).toEqual({ isAuthenticated: false });
    expect(lines.at(-1)?.context).toMatchObject({ reason: 'malformed' });
  });

  it.each([
    ['no MQTT data', { protocols: ['http'], protocolData: {}, connectionMetadata: { id: 'c' } }],
    ['no client id', event({ password: Buffer.from('x').toString('base64') })],
    ['not an object', null],
    ['wrong field types', { protocolData: { mqtt: { clientId: 7 } } }],
  ])('an event with %s must be refused', async (_name, bad) => {
    expect(await handler()(bad, CONTEXT)).toEqual({ isAuthenticated: false });
    expect(lines.at(-1)?.level).toBe('warn');
  });

  it('without a function ARN or target it must refuse and log a configuration error', async () => {
    expect(await handler()(event(mqttFor('dev-1', token())), undefined)).toEqual({ isAuthenticated: false });
    expect(await handler()(event(mqttFor('dev-1', token())), { invokedFunctionArn: 'nope' })).toEqual({
      isAuthenticated: false,
    });
    expect(lines.at(-1)).toMatchObject({ level: 'error', message: 'authorizer misconfigured' });
  });

  it('a registry failure must refuse and log an error', async () => {
    const failing = {
      find: async (): Promise<never> => {
        throw new Error('DynamoDB unreachable');
      },
    };
    const response = await handler({ registry: failing })(event(mqttFor('dev-1', token())), CONTEXT);
    expect(response).toEqual({ isAuthenticated: false });
    expect(lines.at(-1)).toMatchObject({
      level: 'error',
      message: 'connection refused: registry unavailable',
    });
  });
});

/** An HTTPS publish as IoT Core hands it to the authorizer: request headers, no MQTT data. */
function httpEvent(headers: Record<string, string>, extra: Record<string, unknown> = {}) {
  return {
    signatureVerified: false,
    protocols: ['tls', 'http'],
    protocolData: { tls: { serverName: HOST }, http: { headers, queryString: '?qos=1' } },
    connectionMetadata: { id: 'b0c3c1e4-0000-4000-8000-000000000002' },
    ...extra,
  };
}

describe('authorizer handler: HTTPS publish', () => {
  it('allows a device by its SAS token in Authorization, with the same policy as over MQTT', async () => {
    const sas = token();
    const response = expectAllowed(
      await handler()(httpEvent({ Authorization: sas, 'x-amz-customauthorizer-name': 'hub' }), CONTEXT),
    );
    const overMqtt = expectAllowed(await handler()(event(mqttFor('dev-1', sas)), CONTEXT));
    expect(response.principalId).toBe(principalIdFor('dev-1'));
    expect(response.policyDocuments).toEqual(overMqtt.policyDocuments);
    expect(response.disconnectAfterInSeconds).toBe(3600);
    expect(lines).toContainEqual(
      expect.objectContaining({
        level: 'info',
        message: 'device authenticated',
        context: expect.objectContaining({ deviceId: 'dev-1', protocol: 'http' }),
      }),
    );
    expectNoSecretsLogged();
  });

  it('finds the header whatever its case, and falls back to the token key IoT Core passes as token', async () => {
    expectAllowed(await handler()(httpEvent({ authorization: token() }), CONTEXT));
    expectAllowed(await handler()(httpEvent({ AUTHORIZATION: token() }), CONTEXT));
    expectAllowed(await handler()(httpEvent({}, { token: token() }), CONTEXT));
  });

  it.each([
    ['no Authorization', () => ({}), 'bad-credentials'],
    ['a non-SAS Authorization', () => ({ authorization: 'Bearer abc' }), 'malformed'],
    ['a malformed SAS token', () => ({ authorization: 'SharedAccessSignature sr=x' }), 'malformed'],
    ['a wrong key', () => ({ authorization: token('dev-1', WRONG) }), 'bad-credentials'],
    ['an expired token', () => ({ authorization: token('dev-1', KEY, -60) }), 'expired'],
    ['an unknown device', () => ({ authorization: token('ghost') }), 'unknown-device'],
    ['a disabled device', () => ({ authorization: token('off') }), 'disabled'],
  ])('%s must get isAuthenticated false and a logged reason', async (_name, headers, reason) => {
    expect(await handler()(httpEvent(headers()), CONTEXT)).toEqual({ isAuthenticated: false });
    expect(lines.at(-1)).toMatchObject({
      level: 'warn',
      message: 'connection refused',
      context: expect.objectContaining({ reason, protocol: 'http' }),
    });
    expectNoSecretsLogged();
  });

  it('a token for another hub host must be refused', async () => {
    const foreign = createSasToken({
      resourceUri: deviceResourceUri('other.example.com', 'dev-1'),
      key: KEY,
      expiresAt: new Date(NOW.getTime() + 3600_000),
    });
    secrets.push(foreign);
    expect(await handler()(httpEvent({ authorization: foreign }), CONTEXT)).toEqual({
      isAuthenticated: false,
    });
    expect(lines.at(-1)?.context).toMatchObject({ reason: 'bad-credentials' });
  });
});

describe('authorizer handler: Basic Ingest', () => {
  const RULE = 'D2CIngestRule12AB34CD_xyz';

  it('without a rule name the policy grants no Basic Ingest topic', async () => {
    const response = await handler()(event(mqttFor('dev-1', token())), CONTEXT);
    expect(JSON.stringify(policies(response))).not.toContain('$aws/rules');
  });

  it("with BASIC_INGEST_RULE_NAME's rule the policy grants that rule's topic for this device only", async () => {
    for (const ev of [event(mqttFor('dev-1', token())), httpEvent({ authorization: token() })]) {
      const resources = policies(await handler({ basicIngestRule: RULE })(ev, CONTEXT)).flatMap((p) =>
        p.Statement.filter((s) => s.Action.includes('iot:Publish')).flatMap((s) => s.Resource),
      );
      expect(resources).toContain(`${ARN}:topic/$aws/rules/${RULE}/devices/dev-1/messages/events`);
      expect(resources).toContain(`${ARN}:topic/$aws/rules/${RULE}/devices/dev-1/messages/events/*`);
      expect(resources.filter((r) => r.includes('$aws/rules/'))).toHaveLength(2);
    }
  });

  it('a bad rule name must refuse the device and log the configuration error', async () => {
    const response = await handler({ basicIngestRule: 'bad-name' })(
      event(mqttFor('dev-1', token())),
      CONTEXT,
    );
    expect(response).toEqual({ isAuthenticated: false });
    expect(lines.at(-1)).toMatchObject({
      level: 'error',
      message: 'connection refused: no policy for device',
    });
  });
});

describe('authorizer helpers', () => {
  it('principalIdFor is alphanumeric, 64 characters and stable for any device id', () => {
    for (const id of ['dev-1', "a$b*c?d(e)f!g'h", 'x'.repeat(128)]) {
      expect(principalIdFor(id)).toMatch(/^[a-f0-9]{64}$/);
      expect(principalIdFor(id)).toBe(principalIdFor(id));
    }
    expect(principalIdFor('a')).not.toBe(principalIdFor('b'));
  });

  it('disconnectAfterSeconds bounds to 300..86400 and uses the maximum without an expiry', () => {
    expect(disconnectAfterSeconds(undefined, NOW)).toBe(86_400);
    expect(disconnectAfterSeconds(new Date(NOW.getTime() - 1000), NOW)).toBe(300);
    expect(disconnectAfterSeconds(new Date(NOW.getTime() + 1000_500), NOW)).toBe(1000);
  });

  it('targetFromFunctionArn reads partition, region and account', () => {
    expect(targetFromFunctionArn(CONTEXT.invokedFunctionArn)).toEqual({
      partition: 'aws',
      region: 'eu-west-1',
      account: '123456789012',
    });
    expect(targetFromFunctionArn('arn:aws:s3:::bucket')).toBeUndefined();
  });
});
