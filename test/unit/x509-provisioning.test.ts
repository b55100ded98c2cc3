import { IoTClient, RegisterCertificateWithoutCACommand } from '@aws-sdk/client-iot';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { MemoryCaCertificateStore } from '../../functions/adapters/ca-store-memory.ts';
import { IotIdentity } from '../../functions/adapters/iot-identity.ts';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import { TransientError } from '../../functions/core/errors.ts';
import { CaCertificates } from '../../functions/core/identity/ca-certificates.ts';
import type { DeviceInput } from '../../functions/core/identity/device.ts';
import { parseDeviceBody } from '../../functions/core/identity/device.ts';
import {
  caProvisioningHooks,
  type IotIdentityPort,
  iotCertificateId,
  ProvisionedDeviceRegistry,
  THING_NAME_VARIABLE,
  thingPolicyDocument,
  X509Provisioner,
} from '../../functions/core/identity/x509-provisioning.ts';
import { LOCAL_CREDENTIALS, LOCAL_REGION } from '../../local/emulators.ts';
import { type RunningIotControlPlane, startIotControlPlane } from '../../local/iot-control-plane.ts';
import { tempDataDir } from '../support/hub-process.ts';
import { makeCa, makeLeaf, type TestCertificate, thumbprintOf } from '../support/x509.ts';
import { MemoryLog } from './fakes.ts';

// The registration function builds its default handler at import time; give it what its stack would.
vi.hoisted(() => {
  process.env.REGISTRY_TABLE_NAME ??= 'unit-test-registry';
  process.env.DEVICE_POLICY_NAME ??= 'unit-test-policy';
});
const { makeHandler: makeRegistrationHandler } = await import('../../functions/certificate-registration.ts');

const POLICY = 'hub-DevicePolicy';
let plane: RunningIotControlPlane;
let client: IoTClient;

beforeAll(async () => {
  plane = await startIotControlPlane({
    host: '127.0.0.1',
    port: 0,
    dataDir: tempDataDir('iot-plane-'),
    region: LOCAL_REGION,
    account: '000000000000',
    policies: [POLICY],
    log: () => {},
  });
  client = new IoTClient({ endpoint: plane.url, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
});
afterAll(async () => {
  client?.destroy();
  await plane?.close();
});

/**
 * The real adapter against the stand-in, with calls counted and one method made to fail on demand: the
 * failure paths (IoT Core refusing or unavailable half-way) cannot be produced against a healthy service.
 */
class FlakyPort {
  readonly calls: string[] = [];
  failing: { method: keyof IotIdentityPort; times: number } | undefined;
  readonly port: IotIdentityPort;

  constructor(inner: IotIdentityPort) {
    this.port = new Proxy(inner, {
      get: (target, key: keyof IotIdentityPort) => {
        const original = target[key] as (...args: unknown[]) => Promise<unknown>;
        return async (...args: unknown[]) => {
          this.calls.push(key);
          if (this.failing?.method === key && this.failing.times > 0) {
            this.failing.times--;
            throw new TransientError('IotUnavailable', `injected failure of ${key}`);
          }
          return original.apply(target, args);
        };
      },
    });
  }
}

let flaky: FlakyPort;
let inner: MemoryDeviceRegistry;
let registry: ProvisionedDeviceRegistry;
let provisioner: X509Provisioner;
let log: MemoryLog;
let ids = 0;

beforeEach(() => {
  flaky = new FlakyPort(new IotIdentity(client, { retryDelayMs: 10 }));
  log = new MemoryLog();
  provisioner = new X509Provisioner(flaky.port, { policyName: POLICY, log });
  inner = new MemoryDeviceRegistry();
  registry = new ProvisionedDeviceRegistry(inner, provisioner, log);
});

const nextId = () => `x509-unit-${++ids}`;

/** What the stand-in holds for a thing: its certificates with status and attached policies. */
function iotView(thingName: string) {
  const state = plane.state();
  const thing = state.things[thingName];
  if (!thing) return undefined;
  return thing.principals.map((arn) => {
    const certificate = Object.values(state.certificates).find((c) => c.certificateArn === arn);
    return { id: certificate?.certificateId, status: certificate?.status, policies: certificate?.policies };
  });
}

async function selfSigned(deviceId: string, cert: TestCertificate, extra: Partial<DeviceInput> = {}) {
  return parseDeviceBody({
    deviceId,
    authentication: { type: 'selfSigned', x509Thumbprint: { primaryCertificate: cert.cert } },
    ...extra,
  });
}

describe('device certificates in the device body', () => {
  it('fills the thumbprint from the certificate, and never stores the PEM', async () => {
    const cert = await makeLeaf('dev');
    const input = await selfSigned('dev', cert);
    expect(input.authentication?.x509Thumbprint?.primaryThumbprint).toBe(
      cert.x509.fingerprint256.replaceAll(':', ''),
    );
    const stored = await new MemoryDeviceRegistry().create(input);
    expect(JSON.stringify(stored)).not.toContain('BEGIN CERTIFICATE');
  });

  it.each([
    [
      'a thumbprint of another certificate',
      async (c: TestCertificate) => ({
        primaryThumbprint: thumbprintOf(await makeLeaf('other')),
        primaryCertificate: c.cert,
      }),
      /authentication.x509Thumbprint.primaryCertificate: does not match the thumbprint/,
    ],
    [
      'text that is no certificate',
      async () => ({ primaryCertificate: 'hello' }),
      /authentication.x509Thumbprint.primaryCertificate: expected a PEM/,
    ],
    [
      'an expired certificate',
      async () => ({
        primaryCertificate: (
          await makeLeaf('old', {
            notBefore: new Date(Date.now() - 9e8),
            notAfter: new Date(Date.now() - 9e7),
          })
        ).cert,
      }),
      /authentication.x509Thumbprint.primaryCertificate: expired on/,
    ],
  ])('refuses %s, naming the field', async (_what, x509, message) => {
    const cert = await makeLeaf('dev');
    const body = {
      deviceId: 'dev',
      authentication: { type: 'selfSigned', x509Thumbprint: await x509(cert) },
    };
    expect(() => parseDeviceBody(body)).toThrow(message);
  });

  it('refuses a certificate with a non-X.509 authentication type', async () => {
    const cert = await makeLeaf('dev');
    expect(() =>
      parseDeviceBody({
        deviceId: 'dev',
        authentication: { type: 'certificateAuthority', x509Thumbprint: { primaryCertificate: cert.cert } },
      }),
    ).toThrow(/authentication.x509Thumbprint.primaryCertificate: not allowed/);
  });
});

describe('X.509 provisioning in IoT Core (the stand-in, through @aws-sdk/client-iot)', () => {
  it('creates a thing with the certificate registered ACTIVE, attached, with the one device policy', async () => {
    const id = nextId();
    const cert = await makeLeaf(id);
    await registry.create(await selfSigned(id, cert));
    expect(iotView(id)).toEqual([{ id: iotCertificateId(cert.cert), status: 'ACTIVE', policies: [POLICY] }]);
    expect(plane.state().certificates[iotCertificateId(cert.cert)]?.certificatePem).toBe(cert.cert);
  });

  it('deactivates on disable, reactivates on enable, and removes everything on delete', async () => {
    const id = nextId();
    const cert = await makeLeaf(id);
    await registry.create(await selfSigned(id, cert));
    await registry.replace({ deviceId: id, status: 'disabled' });
    expect(iotView(id)?.[0]?.status).toBe('INACTIVE');
    await registry.replace({ deviceId: id, status: 'enabled' });
    expect(iotView(id)?.[0]?.status).toBe('ACTIVE');
    await registry.delete(id);
    expect(iotView(id)).toBeUndefined();
    expect(plane.state().certificates[iotCertificateId(cert.cert)]).toBeUndefined();
  });

  it('swaps certificates on rotation: the new one is added, the one no longer listed removed', async () => {
    const id = nextId();
    const first = await makeLeaf(id);
    const second = await makeLeaf(id);
    await registry.create(await selfSigned(id, first));
    await registry.replace(await selfSigned(id, second));
    expect(iotView(id)).toEqual([
      { id: iotCertificateId(second.cert), status: 'ACTIVE', policies: [POLICY] },
    ]);
    expect(plane.state().certificates[iotCertificateId(first.cert)]).toBeUndefined();
  });

  it('costs SAS devices no IoT Core call', async () => {
    const id = nextId();
    await registry.create({ deviceId: id });
    await registry.replace({ deviceId: id, status: 'disabled' });
    await registry.delete(id);
    expect(flaky.calls).toEqual([]);
  });

  it('refuses a certificate for an id that is no thing name, before writing anything', async () => {
    const cert = await makeLeaf('a.b');
    await expect(registry.create(await selfSigned('a.b', cert))).rejects.toThrow(/^deviceId: .*thing/);
    expect(await inner.find('a.b')).toBeUndefined();
  });

  it('provisions through bulk operations too', async () => {
    const id = nextId();
    const cert = await makeLeaf(id);
    const result = await registry.bulk([{ importMode: 'create', device: await selfSigned(id, cert) }]);
    expect(result.isSuccessful).toBe(true);
    expect(iotView(id)?.[0]?.status).toBe('ACTIVE');
  });
});

describe('consistency when IoT Core fails half-way', () => {
  it('create: the new device is deleted again and IoT Core left empty (503 ProvisioningFailed)', async () => {
    const id = nextId();
    const cert = await makeLeaf(id);
    flaky.failing = { method: 'attachPolicy', times: 1 };
    await expect(registry.create(await selfSigned(id, cert))).rejects.toMatchObject({
      code: 'ProvisioningFailed',
    });
    expect(await inner.find(id)).toBeUndefined();
    expect(iotView(id)).toBeUndefined();
    expect(plane.state().certificates[iotCertificateId(cert.cert)]).toBeUndefined();
    // And a retry goes through.
    await registry.create(await selfSigned(id, cert));
    expect(iotView(id)?.[0]?.status).toBe('ACTIVE');
  });

  it('disable: the registry is put back to enabled while the certificate stays ACTIVE', async () => {
    const id = nextId();
    const cert = await makeLeaf(id);
    await registry.create(await selfSigned(id, cert));
    flaky.failing = { method: 'updateCertificateStatus', times: 1 };
    await expect(registry.replace({ deviceId: id, status: 'disabled' })).rejects.toThrow(TransientError);
    expect((await inner.get(id)).status).toBe('enabled');
    expect(iotView(id)?.[0]?.status).toBe('ACTIVE');
  });

  it('delete: when IoT Core cannot deactivate, the device stays, untouched', async () => {
    const id = nextId();
    const cert = await makeLeaf(id);
    await registry.create(await selfSigned(id, cert));
    flaky.failing = { method: 'updateCertificateStatus', times: 1 };
    await expect(registry.delete(id)).rejects.toMatchObject({ code: 'ProvisioningFailed' });
    expect(await inner.find(id)).toBeDefined();
    expect(iotView(id)?.[0]?.status).toBe('ACTIVE');
  });

  it('delete: when the registry delete fails, the certificates are active again', async () => {
    const id = nextId();
    const cert = await makeLeaf(id);
    await registry.create(await selfSigned(id, cert));
    const original = inner.delete.bind(inner);
    inner.delete = async () => {
      throw new TransientError('RegistryUnavailable', 'injected');
    };
    await expect(registry.delete(id)).rejects.toThrow(/injected/);
    inner.delete = original;
    expect(iotView(id)?.[0]?.status).toBe('ACTIVE');
  });

  it('delete: a precondition failure changes nothing in IoT Core', async () => {
    const id = nextId();
    await registry.create(await selfSigned(id, await makeLeaf(id)));
    flaky.calls.length = 0;
    await expect(registry.delete(id, { ifMatch: '"stale"' })).rejects.toMatchObject({
      code: 'PreconditionFailed',
    });
    expect(flaky.calls).toEqual([]);
  });
});

describe('CA certificates and just-in-time registration', () => {
  let root: TestCertificate;
  let cas: CaCertificates;
  beforeAll(async () => {
    root = await makeCa('JITR Root');
  });
  beforeEach(() => {
    cas = new CaCertificates(new MemoryCaCertificateStore(), caProvisioningHooks(provisioner));
  });

  async function verify(name: string, ca: TestCertificate) {
    await cas.create(name, ca.cert);
    const { verificationCode } = await cas.generateVerificationCode(name, undefined);
    return { proof: await makeLeaf(verificationCode!, { issuer: ca }) };
  }

  it('registers a verified CA in IoT Core (SNI_ONLY, active, auto-registration) and removes it with the CA', async () => {
    const { proof } = await verify('root', root);
    const unverified = await cas.get('root');
    expect(plane.state().caCertificates[unverified.thumbprintSha256.toLowerCase()]).toBeUndefined();
    await cas.verify('root', proof.cert, undefined);
    expect(plane.state().caCertificates[iotCertificateId(root.cert)]).toMatchObject({
      status: 'ACTIVE',
      autoRegistrationStatus: 'ENABLE',
      certificateMode: 'SNI_ONLY',
    });
    await cas.delete('root', undefined);
    expect(plane.state().caCertificates[iotCertificateId(root.cert)]).toBeUndefined();
  });

  it('removes the CA from IoT Core when its content is replaced (the new content is unverified)', async () => {
    const { proof } = await verify('swap', root);
    await cas.verify('swap', proof.cert, undefined);
    expect(plane.state().caCertificates[iotCertificateId(root.cert)]?.status).toBe('ACTIVE');
    await cas.replace('swap', (await makeCa('Swapped Root')).cert, '*');
    expect(plane.state().caCertificates[iotCertificateId(root.cert)]).toBeUndefined();
    await cas.delete('swap', undefined);
  });

  it('leaves the CA unverified with its code outstanding when IoT Core fails, so the proof can be posted again', async () => {
    const other = await makeCa('Flaky Root');
    const { proof } = await verify('flaky', other);
    flaky.failing = { method: 'registerCaCertificate', times: 1 };
    await expect(cas.verify('flaky', proof.cert, undefined)).rejects.toMatchObject({
      code: 'ProvisioningFailed',
    });
    expect(await cas.get('flaky')).toMatchObject({ isVerified: false });
    expect((await cas.verify('flaky', proof.cert, undefined)).isVerified).toBe(true);
    await cas.delete('flaky', undefined);
  });

  /** A certificate as IoT Core registers it on a first connect: PENDING_ACTIVATION. */
  async function pending(cert: TestCertificate): Promise<string> {
    const out = await client.send(
      new RegisterCertificateWithoutCACommand({ certificatePem: cert.cert, status: 'PENDING_ACTIVATION' }),
    );
    return out.certificateId ?? '';
  }

  it('attaches and activates a certificate whose CN names a certificateAuthority device', async () => {
    const { proof } = await verify('root', root);
    await cas.verify('root', proof.cert, undefined);
    const id = nextId();
    await inner.create({ deviceId: id, authentication: { type: 'certificateAuthority' } });
    const leaf = await makeLeaf(id, { issuer: root });
    const outcome = await provisioner.registerJustInTime(
      { certificateId: await pending(leaf), caCertificateId: iotCertificateId(root.cert) },
      { find: (d) => inner.find(d), cas: () => cas.list() },
    );
    expect(outcome).toEqual({ outcome: 'provisioned', deviceId: id, status: 'ACTIVE' });
    expect(iotView(id)).toEqual([{ id: iotCertificateId(leaf.cert), status: 'ACTIVE', policies: [POLICY] }]);
    // The registry governs it from then on: disabling the device deactivates it.
    await registry.replace({ deviceId: id, status: 'disabled' });
    expect(iotView(id)?.[0]?.status).toBe('INACTIVE');
    await registry.delete(id);
    expect(iotView(id)).toBeUndefined();
    await cas.delete('root', undefined);
  });

  it.each([
    ['no device has the CN', false, 'nobody'],
    ['the CA is not verified with the hub', true, undefined],
  ])('refuses (and deletes) the certificate when %s', async (_what, unverifiedCa, cn) => {
    const ca = await makeCa('Pending Root');
    await cas.create('pending', ca.cert);
    if (!unverifiedCa) {
      const { verificationCode } = await cas.generateVerificationCode('pending', undefined);
      await cas.verify('pending', (await makeLeaf(verificationCode!, { issuer: ca })).cert, undefined);
    }
    const id = nextId();
    await inner.create({ deviceId: id, authentication: { type: 'certificateAuthority' } });
    const leaf = await makeLeaf(cn ?? id, { issuer: ca });
    const certificateId = await pending(leaf);
    const outcome = await provisioner.registerJustInTime(
      { certificateId, caCertificateId: iotCertificateId(ca.cert) },
      { find: (d) => inner.find(d), cas: () => cas.list() },
    );
    expect(outcome.outcome).toBe('refused');
    expect(plane.state().certificates[certificateId]).toBeUndefined();
    expect(iotView(id)).toBeUndefined();
  });
});

describe('the registration function', () => {
  it('ignores what is not a registration event, and hands one to the provisioner', async () => {
    const ca = await makeCa('Handler Root');
    const cas = new CaCertificates(new MemoryCaCertificateStore(), caProvisioningHooks(provisioner));
    await cas.create('handler', ca.cert);
    const { verificationCode } = await cas.generateVerificationCode('handler', undefined);
    await cas.verify('handler', (await makeLeaf(verificationCode!, { issuer: ca })).cert, undefined);
    const id = nextId();
    await inner.create({ deviceId: id, authentication: { type: 'certificateAuthority' } });
    const leaf = await makeLeaf(id, { issuer: ca });
    const out = await client.send(
      new RegisterCertificateWithoutCACommand({ certificatePem: leaf.cert, status: 'PENDING_ACTIVATION' }),
    );
    const handle = makeRegistrationHandler({
      provisioner,
      find: (d) => inner.find(d),
      cas: () => cas.list(),
      log,
    });
    expect(await handle({ certificateId: 'nope' })).toBeUndefined();
    expect(log.at('warn')[0]?.message).toMatch(/not a certificate registration event/);
    const event = {
      certificateId: out.certificateId,
      caCertificateId: iotCertificateId(ca.cert),
      timestamp: Date.now(),
      certificateStatus: 'PENDING_ACTIVATION',
      awsAccountId: '000000000000',
    };
    expect(await handle(event)).toEqual({ outcome: 'provisioned', deviceId: id, status: 'ACTIVE' });
    await cas.delete('handler', undefined);
  });
});

describe('thingPolicyDocument', () => {
  it('grants only the thing’s own client id and topics, and only to certificates attached to it', () => {
    const doc = thingPolicyDocument({ partition: 'aws', region: 'eu-west-1', account: '123456789012' });
    const arn = 'arn:aws:iot:eu-west-1:123456789012';
    expect(doc.Statement).toEqual([
      expect.objectContaining({
        Action: ['iot:Connect'],
        Resource: [`${arn}:client/${THING_NAME_VARIABLE}`],
      }),
      expect.objectContaining({
        Action: ['iot:Receive'],
        Resource: [
          `${arn}:topic/devices/${THING_NAME_VARIABLE}/*`,
          `${arn}:topic/$aws/things/${THING_NAME_VARIABLE}/shadow/*`,
        ],
      }),
      expect.objectContaining({
        // Of its shadow, only the requests: the answers are the shadow service's.
        Action: ['iot:Publish'],
        Resource: [
          `${arn}:topic/devices/${THING_NAME_VARIABLE}/*`,
          ...['get', 'update', 'delete'].flatMap((op) => [
            `${arn}:topic/$aws/things/${THING_NAME_VARIABLE}/shadow/${op}`,
            `${arn}:topic/$aws/things/${THING_NAME_VARIABLE}/shadow/name/*/${op}`,
          ]),
        ],
      }),
      expect.objectContaining({
        Action: ['iot:Subscribe'],
        Resource: [
          `${arn}:topicfilter/devices/${THING_NAME_VARIABLE}/*`,
          `${arn}:topicfilter/$aws/things/${THING_NAME_VARIABLE}/shadow/*`,
        ],
      }),
      expect.objectContaining({
        Action: ['iot:RetainPublish'],
        Resource: [`${arn}:topic/devices/${THING_NAME_VARIABLE}/*`],
      }),
    ]);
    for (const statement of doc.Statement) {
      expect(statement.Condition).toEqual({ Bool: { 'iot:Connection.Thing.IsAttached': 'true' } });
      for (const action of statement.Action) expect(action).not.toContain('*');
    }
  });

  it('adds the Basic Ingest topic of the ingest rule when given', () => {
    const doc = thingPolicyDocument({
      partition: 'aws',
      region: 'eu-west-1',
      account: '1',
      basicIngestRule: 'ingest',
    });
    expect(doc.Statement[2]?.Resource).toContain(
      `arn:aws:iot:eu-west-1:1:topic/$aws/rules/ingest/devices/${THING_NAME_VARIABLE}/messages/events`,
    );
  });
});
