import { CaCertificates } from '../core/identity/ca-certificates.ts';
import type { DeviceRegistry } from '../core/identity/registry.ts';
import {
  caProvisioningHooks,
  DEVICE_POLICY_ENV,
  ProvisionedDeviceRegistry,
  X509Provisioner,
} from '../core/identity/x509-provisioning.ts';
import type { Log } from '../core/ports.ts';
import { dynamoDocumentClient, iotClient } from './aws-clients.ts';
import { DynamoDbCaCertificateStore } from './ca-store-dynamodb.ts';
import { IotIdentity } from './iot-identity.ts';

/** What {@link x509FromEnv} builds. */
export interface X509Wiring {
  /** The registry, provisioning X.509 devices in IoT Core when the environment names the device policy. */
  readonly registry: DeviceRegistry;
  /** The CA registry, mirroring verified CAs into IoT Core likewise. */
  readonly certificates: CaCertificates;
  /** The provisioner, when provisioning is on. */
  readonly provisioner?: X509Provisioner;
}

/**
 * X.509 wiring of a handler: the CA registry in the registry table, and, when `DEVICE_POLICY_NAME` is set
 * (the stack sets it on the service API and the registration function), IoT Core provisioning of devices
 * and CAs through `@aws-sdk/client-iot` (`AWS_ENDPOINT_URL_IOT` points it at the local stand-in).
 */
export function x509FromEnv(
  env: NodeJS.ProcessEnv,
  registry: DeviceRegistry,
  registryTable: string,
  log: Log,
): X509Wiring {
  const store = new DynamoDbCaCertificateStore({ client: dynamoDocumentClient(), tableName: registryTable });
  const policyName = env[DEVICE_POLICY_ENV];
  if (!policyName) return { registry, certificates: new CaCertificates(store) };
  const provisioner = new X509Provisioner(new IotIdentity(iotClient()), { policyName, log });
  return {
    registry: new ProvisionedDeviceRegistry(registry, provisioner, log),
    certificates: new CaCertificates(store, caProvisioningHooks(provisioner)),
    provisioner,
  };
}
