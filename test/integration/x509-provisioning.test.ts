import { readFileSync } from 'node:fs';
import {
  DescribeCACertificateCommand,
  DescribeCertificateCommand,
  IoTClient,
  ListAttachedPoliciesCommand,
  ListThingPrincipalsCommand,
  ListThingsCommand,
} from '@aws-sdk/client-iot';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { iotCertificateId } from '../../functions/core/identity/x509-provisioning.ts';
import { LOCAL_CREDENTIALS, localS3Client } from '../../local/emulators.ts';
import { service } from '../support/devices.ts';
import { type HubProcess, startHubProcess } from '../support/hub-process.ts';
import { makeCa, makeLeaf, type TestCertificate } from '../support/x509.ts';

let hub: HubProcess;
let iot: IoTClient;

beforeAll(async () => {
  hub = await startHubProcess();
  iot = new IoTClient({
    endpoint: hub.endpoints.iotControlPlane,
    region: hub.endpoints.region,
    credentials: LOCAL_CREDENTIALS,
  });
});
afterAll(async () => {
  iot?.destroy();
  await hub?.stop();
});

/** What IoT Core (the stand-in) holds for a thing: its certificates, their status, PEM and policies. */
async function thingView(thingName: string) {
  const things = (await iot.send(new ListThingsCommand({}))).things ?? [];
  if (!things.some((t) => t.thingName === thingName)) return undefined;
  const principals = (await iot.send(new ListThingPrincipalsCommand({ thingName }))).principals ?? [];
  return Promise.all(
    principals.map(async (arn) => {
      const certificateId = arn.split('/').pop() ?? '';
      const { certificateDescription: d } = await iot.send(new DescribeCertificateCommand({ certificateId }));
      const policies = (await iot.send(new ListAttachedPoliciesCommand({ target: arn }))).policies ?? [];
      return {
        certificateId,
        status: d?.status,
        pem: d?.certificatePem,
        policies: policies.map((p) => p.policyName),
      };
    }),
  );
}

async function connack(deviceId: string, cert: TestCertificate): Promise<number> {
  try {
    const client = await mqtt.connectAsync(hub.endpoints.mqtts, {
      ca: readFileSync(hub.endpoints.caCertificate),
      servername: 'localhost',
      reconnectPeriod: 0,
      clientId: deviceId,
      key: cert.key,
      cert: cert.cert,
    });
    await client.endAsync();
    return 0;
  } catch (error) {
    return (error as { code?: number }).code ?? -1;
  }
}

describe('one service API call provisions an X.509 device in IoT Core', () => {
  it('create with the PEM → thing, ACTIVE certificate with that PEM, principal and the device policy attached', async () => {
    const cert = await makeLeaf('prov-1');
    const created = await service(hub.endpoints, 'PUT', '/devices/prov-1', {
      deviceId: 'prov-1',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryCertificate: cert.cert } },
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    // The registry keeps the thumbprint (filled in from the PEM), never the PEM.
    expect(created.body).toMatchObject({
      authentication: {
        x509Thumbprint: { primaryThumbprint: cert.x509.fingerprint256.replaceAll(':', '') },
      },
    });
    expect(JSON.stringify(created.body)).not.toContain('BEGIN CERTIFICATE');
    const view = await thingView('prov-1');
    expect(view).toEqual([
      {
        certificateId: iotCertificateId(cert.cert),
        status: 'ACTIVE',
        pem: cert.cert,
        policies: [expect.stringMatching(/DevicePolicy/)],
      },
    ]);
    // The same device connects to the local broker with that certificate.
    expect(await connack('prov-1', cert)).toBe(0);
  });

  it('disable → INACTIVE (and refused locally), enable → ACTIVE, delete → thing and certificate gone', async () => {
    const cert = await makeLeaf('prov-2');
    await service(hub.endpoints, 'PUT', '/devices/prov-2', {
      deviceId: 'prov-2',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryCertificate: cert.cert } },
    });
    const disable = await service(
      hub.endpoints,
      'PUT',
      '/devices/prov-2',
      { deviceId: 'prov-2', status: 'disabled' },
      { 'if-match': '*' },
    );
    expect(disable.status).toBe(200);
    expect((await thingView('prov-2'))?.[0]?.status).toBe('INACTIVE');
    expect(await connack('prov-2', cert)).toBe(5);
    await service(
      hub.endpoints,
      'PUT',
      '/devices/prov-2',
      { deviceId: 'prov-2', status: 'enabled' },
      {
        'if-match': '*',
      },
    );
    expect((await thingView('prov-2'))?.[0]?.status).toBe('ACTIVE');
    expect((await service(hub.endpoints, 'DELETE', '/devices/prov-2')).status).toBe(204);
    expect(await thingView('prov-2')).toBeUndefined();
    await expect(
      iot.send(new DescribeCertificateCommand({ certificateId: iotCertificateId(cert.cert) })),
    ).rejects.toMatchObject({ name: 'ResourceNotFoundException' });
  });

  it('answers 400 naming the field for a certificate that does not match its thumbprint or an id that is no thing name', async () => {
    const cert = await makeLeaf('prov-bad');
    const other = await makeLeaf('prov-bad');
    const mismatch = await service(hub.endpoints, 'PUT', '/devices/prov-bad', {
      deviceId: 'prov-bad',
      authentication: {
        type: 'selfSigned',
        x509Thumbprint: {
          primaryThumbprint: other.x509.fingerprint.replaceAll(':', ''),
          primaryCertificate: cert.cert,
        },
      },
    });
    expect(mismatch.status).toBe(400);
    expect((mismatch.body as { message: string }).message).toMatch(
      /authentication\.x509Thumbprint\.primaryCertificate: does not match/,
    );
    const dotted = await service(hub.endpoints, 'PUT', '/devices/prov.dotted', {
      deviceId: 'prov.dotted',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryCertificate: cert.cert } },
    });
    expect(dotted.status).toBe(400);
    expect((dotted.body as { message: string }).message).toMatch(/^deviceId: .*thing/);
    expect((await service(hub.endpoints, 'GET', '/devices/prov.dotted')).status).toBe(404);
    expect(await thingView('prov-bad')).toBeUndefined();
  });

  it('registers a CA in IoT Core when the hub verifies it, and removes it when the CA is deleted', async () => {
    const ca = await makeCa('Provisioning Root');
    const caId = iotCertificateId(ca.cert);
    await service(hub.endpoints, 'PUT', '/certificates/prov-root', { properties: { certificate: ca.cert } });
    const code = await service(hub.endpoints, 'POST', '/certificates/prov-root/generateVerificationCode');
    const { verificationCode } = (code.body as { properties: { verificationCode: string } }).properties;
    await expect(iot.send(new DescribeCACertificateCommand({ certificateId: caId }))).rejects.toMatchObject({
      name: 'ResourceNotFoundException',
    });
    const proof = await makeLeaf(verificationCode, { issuer: ca });
    const verified = await service(hub.endpoints, 'POST', '/certificates/prov-root/verify', {
      certificate: proof.cert,
    });
    expect(verified.status, JSON.stringify(verified.body)).toBe(200);
    const described = await iot.send(new DescribeCACertificateCommand({ certificateId: caId }));
    expect(described.certificateDescription).toMatchObject({
      status: 'ACTIVE',
      autoRegistrationStatus: 'ENABLE',
      certificateMode: 'SNI_ONLY',
    });
    expect((await service(hub.endpoints, 'DELETE', '/certificates/prov-root')).status).toBe(204);
    await expect(iot.send(new DescribeCACertificateCommand({ certificateId: caId }))).rejects.toMatchObject({
      name: 'ResourceNotFoundException',
    });
  });

  it('an import job provisions the X.509 devices it creates, as the API does', async () => {
    const cert = await makeLeaf('prov-import');
    const s3 = localS3Client(hub.endpoints.awsServices);
    const bucket = hub.endpoints.registryJobsBucket;
    const line = {
      id: 'prov-import',
      importMode: 'create',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryCertificate: cert.cert } },
    };
    await s3.send(
      new PutObjectCommand({ Bucket: bucket, Key: 'x509/devices.txt', Body: `${JSON.stringify(line)}\n` }),
    );
    s3.destroy();
    const created = await service(hub.endpoints, 'POST', '/jobs/create', {
      type: 'import',
      inputBlobContainerUri: `s3://${bucket}/x509`,
      outputBlobContainerUri: `s3://${bucket}/x509/out`,
    });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const jobId = (created.body as { jobId: string }).jobId;
    const deadline = Date.now() + 60_000;
    let status = '';
    while (!['completed', 'failed', 'cancelled'].includes(status) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      status = ((await service(hub.endpoints, 'GET', `/jobs/${jobId}`)).body as { status: string }).status;
    }
    expect(status).toBe('completed');
    expect(await thingView('prov-import')).toEqual([
      expect.objectContaining({ status: 'ACTIVE', pem: cert.cert, policies: [expect.any(String)] }),
    ]);
  });

  it('keeps things and certificates across a hub restart (state under the data directory)', async () => {
    const cert = await makeLeaf('prov-restart');
    await service(hub.endpoints, 'PUT', '/devices/prov-restart', {
      deviceId: 'prov-restart',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryCertificate: cert.cert } },
    });
    await hub.stop();
    hub = await startHubProcess({ dataDir: hub.dataDir });
    iot.destroy();
    iot = new IoTClient({
      endpoint: hub.endpoints.iotControlPlane,
      region: hub.endpoints.region,
      credentials: LOCAL_CREDENTIALS,
    });
    expect((await thingView('prov-restart'))?.[0]).toMatchObject({ status: 'ACTIVE', pem: cert.cert });
  });
});
