import { X509Certificate } from 'node:crypto';
import { HubError, TransientError, ValidationError } from '../errors.ts';
import type { Log } from '../ports.ts';
import type { CaCertificate } from './ca-certificates.ts';
import type { BulkOperation, ConnectionState, Device, DeviceInput } from './device.ts';
import { PreconditionFailedError } from './errors.ts';
import { normalizeThumbprint } from './keys.ts';
import {
  type BulkResult,
  type ConditionalOptions,
  type ConnectionStateOptions,
  type DevicePage,
  type DeviceRegistry,
  etagMatches,
  type ListOptions,
  runBulk,
} from './registry.ts';
import { deviceTopicPrefixes, shadowRequestTopics } from './topics.ts';
import { commonNameOf, thumbprintsOf } from './x509-chain.ts';

/**
 * What IoT Core accepts as a thing name. X.509 devices provisioned in IoT Core need ids of this form: the
 * thing is named by the device id, and the device policy matches the client id to the thing name.
 */
export const THING_NAME = /^[a-zA-Z0-9:_-]{1,128}$/;

/** The policy variable IoT Core fills with the name of the thing the connection's certificate is attached to. */
export const THING_NAME_VARIABLE = '${iot:Connection.Thing.ThingName}';

/** Status of a certificate in IoT Core. */
export type IotCertificateStatus =
  | 'ACTIVE'
  | 'INACTIVE'
  | 'REVOKED'
  | 'PENDING_TRANSFER'
  | 'REGISTER_INACTIVE'
  | 'PENDING_ACTIVATION';

/** A certificate registered with IoT Core. */
export interface IotCertificate {
  /** IoT Core's id: the SHA-256 of the DER, lowercase hex (see {@link iotCertificateId}). */
  readonly certificateId: string;
  /** `arn:{partition}:iot:{region}:{account}:cert/{certificateId}`. */
  readonly certificateArn: string;
  /** Current status. */
  readonly status: IotCertificateStatus;
  /** The certificate, PEM. */
  readonly certificatePem: string;
}

/**
 * The IoT Core control-plane calls X.509 provisioning makes. Adapter: `adapters/iot-identity.ts`
 * (`@aws-sdk/client-iot`, so the local stand-in `local/iot-control-plane.ts` serves it too). Every call is
 * idempotent as described, so a failed provisioning can simply be run again.
 */
export interface IotIdentityPort {
  /** Creates the thing; an existing one is left as it is. */
  createThing(thingName: string): Promise<void>;
  /** Deletes the thing; an absent one is a success. */
  deleteThing(thingName: string): Promise<void>;
  /** The certificates attached to the thing (none when the thing does not exist). */
  thingCertificates(thingName: string): Promise<IotCertificate[]>;
  /** The certificate, or `undefined`. */
  describeCertificate(certificateId: string): Promise<IotCertificate | undefined>;
  /**
   * Registers a certificate without a CA (`RegisterCertificateWithoutCA`) with `status`; one registered
   * before is returned as it is. Throws `ValidationError` when IoT Core refuses the certificate.
   */
  registerCertificate(pem: string, status: 'ACTIVE' | 'INACTIVE'): Promise<{ certificateArn: string }>;
  /** Attaches the certificate to the thing (no-op when attached). */
  attachThingPrincipal(thingName: string, certificateArn: string): Promise<void>;
  /** Detaches it (no-op when not attached). */
  detachThingPrincipal(thingName: string, certificateArn: string): Promise<void>;
  /** Attaches the policy to the certificate (no-op when attached). */
  attachPolicy(policyName: string, certificateArn: string): Promise<void>;
  /** Detaches it (no-op when not attached). */
  detachPolicy(policyName: string, certificateArn: string): Promise<void>;
  /** Sets the certificate's status. */
  updateCertificateStatus(certificateId: string, status: 'ACTIVE' | 'INACTIVE' | 'REVOKED'): Promise<void>;
  /** Deletes an inactive, detached certificate; an absent one is a success. */
  deleteCertificate(certificateId: string): Promise<void>;
  /**
   * Registers a CA (`RegisterCACertificate`, `SNI_ONLY` mode, active, auto-registration on); one registered
   * before is made active again.
   */
  registerCaCertificate(pem: string): Promise<void>;
  /**
   * Deactivates a CA and the device certificates registered under it, then deletes the CA where IoT Core
   * allows; an absent CA is a success.
   */
  removeCaCertificate(caCertificateId: string): Promise<void>;
}

/** IoT Core's id of a certificate: SHA-256 of its DER, lowercase hex. */
export function iotCertificateId(pem: string): string {
  return new X509Certificate(pem).fingerprint256.replaceAll(':', '').toLowerCase();
}

/** Provisioning in IoT Core failed; the registry was left (or put back) as before. Code `ProvisioningFailed`; 503. */
export class ProvisioningFailedError extends TransientError {
  constructor(deviceId: string, step: string, options?: ErrorOptions) {
    super(
      'ProvisioningFailed',
      `could not ${step} device '${deviceId}' in IoT Core; nothing was changed, retry`,
      { deviceId },
      options,
    );
  }
}

/** One IoT policy statement (same shape as `policy.ts`). */
export interface ThingPolicyStatement {
  readonly Effect: 'Allow';
  readonly Action: readonly string[];
  readonly Resource: readonly string[];
  readonly Condition?: Readonly<Record<string, Readonly<Record<string, string>>>>;
}

/** Input of {@link thingPolicyDocument}. Values may be CDK tokens: nothing is validated here. */
export interface ThingPolicyInput {
  /** ARN partition. */
  readonly partition: string;
  /** Region. */
  readonly region: string;
  /** Account id. */
  readonly account: string;
  /** The ingest rule's name when Basic Ingest is on. @default no Basic Ingest permission */
  readonly basicIngestRule?: string;
}

/**
 * The ONE IoT policy attached to every X.509 device certificate: the same topic families as the custom
 * authorizer's per-device policy (`devicePolicyDocument` in `policy.ts`), with the device id replaced by
 * `${iot:Connection.Thing.ThingName}`, and every statement conditioned on `iot:Connection.Thing.IsAttached`
 * (the certificate must be attached to the thing the client id names). So a certificate opens only the
 * topics of the thing it belongs to, and a device connects only with its own id as client id.
 *
 * Thing names (`[a-zA-Z0-9:_-]`) hold no policy wildcard, so the variable needs no escaping.
 */
export function thingPolicyDocument(input: ThingPolicyInput): {
  Version: '2012-10-17';
  Statement: ThingPolicyStatement[];
} {
  const arn = `arn:${input.partition}:iot:${input.region}:${input.account}`;
  const own = deviceTopicPrefixes(THING_NAME_VARIABLE).map((prefix) => `${prefix}*`);
  const attached = { Bool: { 'iot:Connection.Thing.IsAttached': 'true' } };
  const rule = input.basicIngestRule;
  const ingest =
    rule === undefined ? undefined : `$aws/rules/${rule}/devices/${THING_NAME_VARIABLE}/messages/events`;
  return {
    Version: '2012-10-17',
    Statement: [
      {
        Effect: 'Allow',
        Action: ['iot:Connect'],
        Resource: [`${arn}:client/${THING_NAME_VARIABLE}`],
        Condition: attached,
      },
      {
        Effect: 'Allow',
        Action: ['iot:Receive'],
        Resource: own.map((t) => `${arn}:topic/${t}`),
        Condition: attached,
      },
      {
        // Its own topics, and of its shadow only the requests (the answers are the shadow service's).
        Effect: 'Allow',
        Action: ['iot:Publish'],
        Resource: [
          `${arn}:topic/devices/${THING_NAME_VARIABLE}/*`,
          ...shadowRequestTopics(THING_NAME_VARIABLE).map((t) => `${arn}:topic/${t}`),
          ...(ingest === undefined ? [] : [`${arn}:topic/${ingest}`, `${arn}:topic/${ingest}/*`]),
        ],
        Condition: attached,
      },
      {
        Effect: 'Allow',
        Action: ['iot:Subscribe'],
        Resource: own.map((t) => `${arn}:topicfilter/${t}`),
        Condition: attached,
      },
      {
        // Retained messages on its own devices/ topics only, as SAS devices (devicePolicyDocument).
        Effect: 'Allow',
        Action: ['iot:RetainPublish'],
        Resource: [`${arn}:topic/devices/${THING_NAME_VARIABLE}/*`],
        Condition: attached,
      },
    ],
  };
}

/** Whether the device authenticates with X.509 (and so may have a thing and certificates in IoT Core). */
export function isX509Device(device: Device | undefined): boolean {
  const type = device?.authentication.type;
  return type === 'selfSigned' || type === 'certificateAuthority';
}

/** The certificates (PEM) a device input carries for IoT Core (`x509Thumbprint.primaryCertificate`, ...). */
export function certificatesOf(input: DeviceInput): string[] {
  const x509 = input.authentication?.x509Thumbprint;
  return [x509?.primaryCertificate, x509?.secondaryCertificate].filter(
    (pem): pem is string => typeof pem === 'string' && pem.length > 0,
  );
}

/** Options of {@link X509Provisioner}. */
export interface X509ProvisionerOptions {
  /** The shared device policy (see {@link thingPolicyDocument}). */
  readonly policyName: string;
  /** Where best-effort cleanup failures are logged. */
  readonly log: Log;
}

/** What {@link X509Provisioner.registerJustInTime} did with a certificate IoT Core registered on first connect. */
export type JitrOutcome =
  | { readonly outcome: 'provisioned'; readonly deviceId: string; readonly status: 'ACTIVE' | 'INACTIVE' }
  | { readonly outcome: 'refused'; readonly reason: string }
  | { readonly outcome: 'gone' };

/**
 * Keeps IoT Core's things, certificates and policy attachments in line with the registry, for X.509 devices:
 *
 * - a `selfSigned` device given with its certificate(s) gets a thing named by its id, each certificate
 *   registered without a CA, attached to the thing, with the shared device policy attached;
 * - certificates on the thing whose thumbprint the registry no longer lists are detached and deleted;
 * - `enabled` → certificates `ACTIVE`, `disabled` → `INACTIVE`;
 * - a deleted device, or one that is no longer X.509, loses its certificates and thing;
 * - `certificateAuthority` devices get their certificate by just-in-time registration (see
 *   {@link registerJustInTime}): IoT Core registers a certificate issued by a registered CA on its first
 *   connect, and this attaches it if the registry has a `certificateAuthority` device named by its CN.
 */
export class X509Provisioner {
  constructor(
    private readonly port: IotIdentityPort,
    private readonly options: X509ProvisionerOptions,
  ) {}

  /**
   * Brings IoT Core in line with `device` as the registry now holds it (`undefined`: deleted), adding the
   * certificates in `pems`. Adds before it removes, so a failure half-way leaves extra certificates, never
   * missing ones. Idempotent.
   */
  async sync(deviceId: string, device: Device | undefined, pems: readonly string[]): Promise<void> {
    const { port } = this;
    const current = await port.thingCertificates(deviceId);
    if (device === undefined || !isX509Device(device)) {
      for (const certificate of current) await this.remove(deviceId, certificate);
      await port.deleteThing(deviceId);
      return;
    }
    const status = device.status === 'enabled' ? 'ACTIVE' : 'INACTIVE';
    const listed = [
      device.authentication.x509Thumbprint.primaryThumbprint,
      device.authentication.x509Thumbprint.secondaryThumbprint,
    ]
      .filter((t): t is string => typeof t === 'string')
      .map(normalizeThumbprint);
    const wanted = (certificate: IotCertificate): boolean => {
      if (device.authentication.type === 'certificateAuthority') return true;
      const prints = thumbprintsOf(new X509Certificate(certificate.certificatePem));
      return listed.includes(prints.sha1) || listed.includes(prints.sha256);
    };
    if (pems.length > 0) await port.createThing(deviceId);
    for (const pem of pems) {
      if (current.some((c) => c.certificateId === iotCertificateId(pem))) continue;
      const { certificateArn } = await port.registerCertificate(pem, status);
      await port.attachThingPrincipal(deviceId, certificateArn);
      await port.attachPolicy(this.options.policyName, certificateArn);
    }
    for (const certificate of current.filter(wanted)) {
      // A certificate still waiting for just-in-time registration, or revoked, is not ours to flip.
      if (certificate.status !== 'ACTIVE' && certificate.status !== 'INACTIVE') continue;
      await port.attachPolicy(this.options.policyName, certificate.certificateArn);
      if (certificate.status !== status)
        await port.updateCertificateStatus(certificate.certificateId, status);
    }
    for (const certificate of current.filter((c) => !wanted(c))) await this.remove(deviceId, certificate);
  }

  /** Deactivates every certificate of the device's thing (the first step of a delete). */
  async deactivate(deviceId: string): Promise<void> {
    for (const certificate of await this.port.thingCertificates(deviceId)) {
      if (certificate.status === 'ACTIVE') {
        await this.port.updateCertificateStatus(certificate.certificateId, 'INACTIVE');
      }
    }
  }

  /** Registers a verified CA with IoT Core so that certificates it issued can register just in time. */
  registerCa(ca: CaCertificate): Promise<void> {
    return this.port.registerCaCertificate(ca.certificate);
  }

  /** Removes a CA from IoT Core, with the device certificates registered under it deactivated. */
  removeCa(ca: CaCertificate): Promise<void> {
    return this.port.removeCaCertificate(ca.thumbprintSha256.toLowerCase());
  }

  /**
   * Handles IoT Core's just-in-time registration event (`$aws/events/certificates/registered/{caId}`): the
   * certificate (status `PENDING_ACTIVATION`) is attached to the thing named by its subject CN, with the
   * device policy, and activated (inactive for a disabled device) when the registry has a
   * `certificateAuthority` device with that id and the issuing CA is registered and verified with the hub.
   * Otherwise the certificate is deleted, so that the device can register again once it exists (its next
   * connect triggers a new registration).
   */
  async registerJustInTime(
    event: { readonly certificateId: string; readonly caCertificateId: string },
    deps: {
      readonly find: (deviceId: string) => Promise<Device | undefined>;
      readonly cas: () => Promise<CaCertificate[]>;
    },
  ): Promise<JitrOutcome> {
    const { port } = this;
    const certificate = await port.describeCertificate(event.certificateId);
    if (certificate === undefined) return { outcome: 'gone' };
    const refuse = async (reason: string): Promise<JitrOutcome> => {
      this.options.log.warn('just-in-time registration refused', {
        certificateId: event.certificateId,
        reason,
      });
      if (certificate.status !== 'ACTIVE') await port.deleteCertificate(event.certificateId);
      return { outcome: 'refused', reason };
    };
    const ca = (await deps.cas()).find(
      (c) => c.isVerified && c.thumbprintSha256.toLowerCase() === event.caCertificateId.toLowerCase(),
    );
    if (ca === undefined) return refuse('the issuing CA is not registered and verified with the hub');
    const cn = commonNameOf(new X509Certificate(certificate.certificatePem));
    if (cn === undefined || !THING_NAME.test(cn))
      return refuse(`subject CN ${JSON.stringify(cn)} is no thing name`);
    const device = await deps.find(cn);
    if (device?.authentication.type !== 'certificateAuthority') {
      return refuse(`no certificateAuthority device '${cn}' in the registry`);
    }
    const status = device.status === 'enabled' ? 'ACTIVE' : 'INACTIVE';
    await port.createThing(cn);
    await port.attachThingPrincipal(cn, certificate.certificateArn);
    await port.attachPolicy(this.options.policyName, certificate.certificateArn);
    await port.updateCertificateStatus(certificate.certificateId, status);
    return { outcome: 'provisioned', deviceId: cn, status };
  }

  private async remove(thingName: string, certificate: IotCertificate): Promise<void> {
    const { port } = this;
    if (certificate.status === 'ACTIVE')
      await port.updateCertificateStatus(certificate.certificateId, 'INACTIVE');
    await port.detachPolicy(this.options.policyName, certificate.certificateArn);
    await port.detachThingPrincipal(thingName, certificate.certificateArn);
    await port.deleteCertificate(certificate.certificateId);
  }
}

function asInput(device: Device): DeviceInput {
  const { type, symmetricKey, x509Thumbprint } = device.authentication;
  return {
    deviceId: device.deviceId,
    status: device.status,
    statusReason: device.statusReason,
    authentication:
      type === 'sas'
        ? { type, symmetricKey: { ...symmetricKey } }
        : type === 'selfSigned'
          ? { type, x509Thumbprint: { ...x509Thumbprint } }
          : { type },
    ...(device.capabilities ? { capabilities: device.capabilities } : {}),
  };
}

function describe(error: unknown): Record<string, unknown> {
  return error instanceof Error ? { name: error.name, message: error.message } : { value: String(error) };
}

/**
 * The identity registry with X.509 provisioning in IoT Core: a {@link DeviceRegistry} decorator, so the
 * service API's single and bulk routes provision without knowing it. The registry and IoT Core never
 * disagree in the direction that matters — IoT Core never lets in a device the registry refuses:
 *
 * - create: the registry write comes first (it decides whether the id is free), then IoT Core; if IoT Core
 *   fails, the new device is deleted again and whatever was made in IoT Core removed, and the caller gets
 *   503 `ProvisioningFailed` (no lifecycle event is sent: the route sees the error).
 * - replace: registry, then IoT Core; if IoT Core fails the registry is put back as it was (conditional on the
 *   new etag) and IoT Core re-synced to it; 503.
 * - delete: the certificates are deactivated first (a failure changes nothing), then the registry item is
 *   deleted (a failure re-activates them), then the certificates and thing are removed (a failure is logged:
 *   inactive leftovers cannot connect, and a device created again with the id reconciles them).
 *
 * Devices that are not X.509 before or after a write, and carry no certificate, cost no IoT Core call.
 * Certificates given with a device need an id IoT Core accepts as a thing name ({@link THING_NAME}).
 */
export class ProvisionedDeviceRegistry implements DeviceRegistry {
  constructor(
    private readonly inner: DeviceRegistry,
    private readonly provisioner: X509Provisioner,
    private readonly log: Log,
  ) {}

  /** {@inheritDoc DeviceRegistry.create} */
  async create(input: DeviceInput): Promise<Device> {
    const pems = certificatesOf(input);
    checkThingName(input.deviceId, pems);
    const device = await this.inner.create(input);
    if (!isX509Device(device) && pems.length === 0) return device;
    try {
      await this.provisioner.sync(device.deviceId, device, pems);
    } catch (error) {
      await this.undo('delete the new device', device.deviceId, async () => {
        await this.inner.delete(device.deviceId, { ifMatch: device.etag });
        await this.provisioner.sync(device.deviceId, undefined, []);
      });
      throw failure(device.deviceId, 'provision', error);
    }
    return device;
  }

  /** {@inheritDoc DeviceRegistry.replace} */
  async replace(input: DeviceInput, options: ConditionalOptions = {}): Promise<Device> {
    const pems = certificatesOf(input);
    checkThingName(input.deviceId, pems);
    const before = await this.inner.find(input.deviceId);
    const after = await this.inner.replace(input, options);
    if (!isX509Device(before) && !isX509Device(after) && pems.length === 0) return after;
    try {
      await this.provisioner.sync(after.deviceId, after, pems);
    } catch (error) {
      if (before !== undefined) {
        await this.undo('put the device back', after.deviceId, async () => {
          const restored = await this.inner.replace(asInput(before), { ifMatch: after.etag });
          await this.provisioner.sync(after.deviceId, restored, []);
        });
      }
      throw failure(after.deviceId, 'update', error);
    }
    return after;
  }

  /** {@inheritDoc DeviceRegistry.delete} */
  async delete(deviceId: string, options: ConditionalOptions = {}): Promise<Device> {
    const existing = await this.inner.get(deviceId);
    if (!isX509Device(existing)) return this.inner.delete(deviceId, options);
    if (!etagMatches(existing.etag, options.ifMatch)) {
      throw new PreconditionFailedError(deviceId, options.ifMatch ?? '', existing.etag);
    }
    try {
      await this.provisioner.deactivate(deviceId);
    } catch (error) {
      throw failure(deviceId, 'deactivate', error);
    }
    let deleted: Device;
    try {
      deleted = await this.inner.delete(deviceId, options);
    } catch (error) {
      await this.undo('re-activate the device', deviceId, () =>
        this.provisioner.sync(deviceId, existing, []),
      );
      throw error;
    }
    try {
      await this.provisioner.sync(deviceId, undefined, []);
    } catch (error) {
      this.log.error('deleted device: inactive certificates or thing left in IoT Core', {
        deviceId,
        ...describe(error),
      });
    }
    return deleted;
  }

  /** {@inheritDoc DeviceRegistry.bulk} */
  bulk(operations: readonly BulkOperation[]): Promise<BulkResult> {
    return runBulk(this, operations);
  }

  /** {@inheritDoc DeviceRegistry.get} */
  get(deviceId: string): Promise<Device> {
    return this.inner.get(deviceId);
  }

  /** {@inheritDoc DeviceRegistry.find} */
  find(deviceId: string): Promise<Device | undefined> {
    return this.inner.find(deviceId);
  }

  /** {@inheritDoc DeviceRegistry.list} */
  list(options?: ListOptions): Promise<DevicePage> {
    return this.inner.list(options);
  }

  /** {@inheritDoc DeviceRegistry.setConnectionState} */
  setConnectionState(
    deviceId: string,
    state: ConnectionState,
    at: Date,
    options?: ConnectionStateOptions,
  ): Promise<Device> {
    return this.inner.setConnectionState(deviceId, state, at, options);
  }

  /** {@inheritDoc DeviceRegistry.touchActivity} */
  touchActivity(deviceId: string, at: Date): Promise<Device> {
    return this.inner.touchActivity(deviceId, at);
  }

  private async undo(what: string, deviceId: string, fn: () => Promise<unknown>): Promise<void> {
    try {
      await fn();
    } catch (error) {
      this.log.error(`provisioning failed and the hub could not ${what}`, { deviceId, ...describe(error) });
    }
  }
}

function checkThingName(deviceId: string, pems: readonly string[]): void {
  if (pems.length > 0 && !THING_NAME.test(deviceId)) {
    throw new ValidationError(
      'InvalidThingName',
      `deviceId: a device given with its certificate becomes an IoT Core thing, whose name allows only letters, digits, ':', '_' and '-'; got ${JSON.stringify(deviceId)}`,
      { field: 'deviceId' },
    );
  }
}

/** Hub errors (a refused certificate: 400) pass; anything else becomes {@link ProvisioningFailedError}. */
function failure(deviceId: string, step: string, error: unknown): HubError {
  if (error instanceof HubError && !(error instanceof TransientError)) return error;
  return new ProvisioningFailedError(deviceId, step, { cause: error });
}

/**
 * The environment variable naming the shared device policy. When a function has it, the hub provisions X.509
 * devices in IoT Core (the stack sets it; see `lib/x509-provisioning.ts`).
 */
export const DEVICE_POLICY_ENV = 'DEVICE_POLICY_NAME';

/**
 * The CA registry hooks that mirror verified CAs into IoT Core (see `CaCertificatesOptions`); IoT Core failures
 * become 503 `ProvisioningFailed`, with the CA left as it was.
 */
export function caProvisioningHooks(provisioner: X509Provisioner): {
  onVerifying: (record: CaCertificate) => Promise<void>;
  onDeleting: (record: CaCertificate) => Promise<void>;
} {
  const wrap = (step: string, fn: () => Promise<void>) =>
    fn().catch((error: unknown) => {
      if (error instanceof HubError && !(error instanceof TransientError)) throw error;
      throw new TransientError(
        'ProvisioningFailed',
        `could not ${step} in IoT Core; nothing was changed, retry`,
        {},
        { cause: error },
      );
    });
  return {
    onVerifying: (record) =>
      wrap(`register CA certificate '${record.name}'`, () => provisioner.registerCa(record)),
    onDeleting: (record) =>
      wrap(`remove CA certificate '${record.name}'`, () => provisioner.removeCa(record)),
  };
}
