import { z } from 'zod';
import { dynamoDocumentClient, iotClient } from './adapters/aws-clients.ts';
import { DynamoDbCaCertificateStore } from './adapters/ca-store-dynamodb.ts';
import { IotIdentity } from './adapters/iot-identity.ts';
import { powertoolsLog } from './adapters/log.ts';
import { DynamoDbDeviceRegistry } from './adapters/registry-dynamodb.ts';
import { requireEnv } from './core/env.ts';
import type { CaCertificate } from './core/identity/ca-certificates.ts';
import type { Device } from './core/identity/device.ts';
import { DEVICE_POLICY_ENV, type JitrOutcome, X509Provisioner } from './core/identity/x509-provisioning.ts';
import type { Log } from './core/ports.ts';

/** IoT Core's just-in-time registration event, published on `$aws/events/certificates/registered/{caCertificateId}`. */
export const CertificateRegisteredEventSchema = z.object({
  certificateId: z.string().regex(/^[0-9a-fA-F]{64}$/),
  caCertificateId: z.string().regex(/^[0-9a-fA-F]{64}$/),
  certificateStatus: z.string().optional(),
});

/** What the registration function needs. */
export interface CertificateRegistrationDeps {
  readonly provisioner: X509Provisioner;
  readonly find: (deviceId: string) => Promise<Device | undefined>;
  readonly cas: () => Promise<CaCertificate[]>;
  readonly log: Log;
}

/**
 * Just-in-time registration of CA-signed device certificates: a device whose certificate a CA registered
 * with IoT Core (mirrored there when the hub verified it) issued connects once, IoT Core registers the
 * certificate as `PENDING_ACTIVATION` and publishes the event an IoT rule hands to this function, which
 * attaches it to the device's thing with the device policy and activates it, if the registry has a
 * `certificateAuthority` device named by the certificate's CN (see `X509Provisioner.registerJustInTime`).
 * The device's next connect succeeds. A failure is thrown, so the rule's asynchronous invoke retries.
 */
export function makeHandler(deps: CertificateRegistrationDeps) {
  return async (event: unknown): Promise<JitrOutcome | undefined> => {
    const parsed = CertificateRegisteredEventSchema.safeParse(event);
    if (!parsed.success) {
      deps.log.warn('event ignored: not a certificate registration event', {
        issues: parsed.error.issues.length,
      });
      return undefined;
    }
    const outcome = await deps.provisioner.registerJustInTime(parsed.data, {
      find: deps.find,
      cas: deps.cas,
    });
    deps.log.info('just-in-time registration', { certificateId: parsed.data.certificateId, ...outcome });
    return outcome;
  };
}

function defaultDeps(env: NodeJS.ProcessEnv): CertificateRegistrationDeps {
  const log = powertoolsLog('certificate-registration');
  const tableName = requireEnv(env, 'REGISTRY_TABLE_NAME');
  const registry = new DynamoDbDeviceRegistry({ client: dynamoDocumentClient(), tableName });
  const cas = new DynamoDbCaCertificateStore({ client: dynamoDocumentClient(), tableName });
  return {
    provisioner: new X509Provisioner(new IotIdentity(iotClient()), {
      policyName: requireEnv(env, DEVICE_POLICY_ENV),
      log,
    }),
    find: (deviceId) => registry.find(deviceId),
    cas: () => cas.list(),
    log,
  };
}

/** The Lambda entry point (environment: `REGISTRY_TABLE_NAME`, `DEVICE_POLICY_NAME`). */
export const handler = makeHandler(defaultDeps(process.env));
