import {
  AttachPolicyCommand,
  AttachThingPrincipalCommand,
  CreateThingCommand,
  DeleteCACertificateCommand,
  DeleteCertificateCommand,
  DeleteThingCommand,
  DescribeCertificateCommand,
  DetachPolicyCommand,
  DetachThingPrincipalCommand,
  type IoTClient,
  ListCertificatesByCACommand,
  ListThingPrincipalsCommand,
  RegisterCACertificateCommand,
  RegisterCertificateWithoutCACommand,
  UpdateCACertificateCommand,
  UpdateCertificateCommand,
} from '@aws-sdk/client-iot';
import { TransientError, ValidationError } from '../core/errors.ts';
import type {
  IotCertificate,
  IotCertificateStatus,
  IotIdentityPort,
} from '../core/identity/x509-provisioning.ts';

const name = (error: unknown): string => (error instanceof Error ? error.name : '');
const isNotFound = (error: unknown) => name(error) === 'ResourceNotFoundException';
const TRANSIENT = new Set([
  'ThrottlingException',
  'ServiceUnavailableException',
  'InternalFailureException',
  'InternalException',
  'LimitExceededException',
]);

/** Options of {@link IotIdentity}. */
export interface IotIdentityOptions {
  /** Pause between attempts of a delete that IoT Core refuses while a detach propagates. @default 1000 ms */
  readonly retryDelayMs?: number;
  /** Attempts of such a delete. @default 8 */
  readonly deleteAttempts?: number;
}

/**
 * IoT Core's control plane (`@aws-sdk/client-iot`) behind {@link IotIdentityPort}. Endpoint and credentials
 * come from the SDK configuration (`AWS_ENDPOINT_URL_IOT` points it at the local stand-in).
 *
 * Throttling and server faults become `TransientError` (503 at the edge); IoT Core refusing a certificate
 * (`CertificateValidationException`) a `ValidationError` naming the certificate field. Detaching a principal
 * propagates asynchronously in IoT Core, so a delete refused with `DeleteConflictException` right after one
 * is retried a few times.
 *
 * Needs: `iot:CreateThing`, `iot:DeleteThing`, `iot:ListThingPrincipals`, `iot:AttachThingPrincipal`,
 * `iot:DetachThingPrincipal` on `thing/*`; `iot:DescribeCertificate`, `iot:UpdateCertificate`,
 * `iot:DeleteCertificate`, `iot:AttachPolicy`, `iot:DetachPolicy` on `cert/*` (and the policy);
 * `iot:RegisterCertificateWithoutCA`, `iot:RegisterCACertificate`, `iot:ListCertificatesByCA` (no resource
 * types); `iot:UpdateCACertificate`, `iot:DeleteCACertificate` on `cacert/*`.
 */
export class IotIdentity implements IotIdentityPort {
  private readonly retryDelayMs: number;
  private readonly deleteAttempts: number;

  constructor(
    private readonly client: IoTClient,
    options: IotIdentityOptions = {},
  ) {
    this.retryDelayMs = options.retryDelayMs ?? 1000;
    this.deleteAttempts = options.deleteAttempts ?? 8;
  }

  /** {@inheritDoc IotIdentityPort.createThing} */
  async createThing(thingName: string): Promise<void> {
    try {
      await this.call(() => this.client.send(new CreateThingCommand({ thingName })));
    } catch (error) {
      // Same name, other attributes: it exists, which is all this needs.
      if (name(error) !== 'ResourceAlreadyExistsException') throw error;
    }
  }

  /** {@inheritDoc IotIdentityPort.deleteThing} */
  async deleteThing(thingName: string): Promise<void> {
    await this.ignoreNotFound(() =>
      this.withConflictRetry(() => this.client.send(new DeleteThingCommand({ thingName }))),
    );
  }

  /** {@inheritDoc IotIdentityPort.thingCertificates} */
  async thingCertificates(thingName: string): Promise<IotCertificate[]> {
    const arns: string[] = [];
    let nextToken: string | undefined;
    try {
      do {
        const out = await this.call(() =>
          this.client.send(
            new ListThingPrincipalsCommand({ thingName, ...(nextToken ? { nextToken } : {}) }),
          ),
        );
        arns.push(...(out.principals ?? []));
        nextToken = out.nextToken;
      } while (nextToken);
    } catch (error) {
      if (isNotFound(error)) return [];
      throw error;
    }
    const certificates: IotCertificate[] = [];
    for (const arn of arns) {
      const id = /:cert\/([0-9a-f]{64})$/i.exec(arn)?.[1];
      if (id === undefined) continue;
      const certificate = await this.describeCertificate(id);
      if (certificate) certificates.push(certificate);
    }
    return certificates;
  }

  /** {@inheritDoc IotIdentityPort.describeCertificate} */
  async describeCertificate(certificateId: string): Promise<IotCertificate | undefined> {
    try {
      const out = await this.call(() => this.client.send(new DescribeCertificateCommand({ certificateId })));
      const d = out.certificateDescription;
      if (!d?.certificateId || !d.certificateArn || !d.certificatePem) return undefined;
      return {
        certificateId: d.certificateId,
        certificateArn: d.certificateArn,
        status: (d.status ?? 'INACTIVE') as IotCertificateStatus,
        certificatePem: d.certificatePem,
      };
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  }

  /** {@inheritDoc IotIdentityPort.registerCertificate} */
  async registerCertificate(pem: string, status: 'ACTIVE' | 'INACTIVE'): Promise<{ certificateArn: string }> {
    try {
      const out = await this.call(() =>
        this.client.send(new RegisterCertificateWithoutCACommand({ certificatePem: pem, status })),
      );
      if (!out.certificateArn) throw new Error('RegisterCertificateWithoutCA returned no certificateArn');
      return { certificateArn: out.certificateArn };
    } catch (error) {
      if (name(error) === 'ResourceAlreadyExistsException') {
        const arn = (error as { resourceArn?: string }).resourceArn;
        if (arn) return { certificateArn: arn };
      }
      if (name(error) === 'CertificateValidationException') {
        throw new ValidationError(
          'CertificateRejectedByIot',
          `authentication.x509Thumbprint: IoT Core refused the certificate (${(error as Error).message})`,
          { field: 'authentication.x509Thumbprint' },
          { cause: error },
        );
      }
      throw error;
    }
  }

  /** {@inheritDoc IotIdentityPort.attachThingPrincipal} */
  async attachThingPrincipal(thingName: string, certificateArn: string): Promise<void> {
    await this.call(() =>
      this.client.send(new AttachThingPrincipalCommand({ thingName, principal: certificateArn })),
    );
  }

  /** {@inheritDoc IotIdentityPort.detachThingPrincipal} */
  async detachThingPrincipal(thingName: string, certificateArn: string): Promise<void> {
    await this.ignoreNotFound(() =>
      this.client.send(new DetachThingPrincipalCommand({ thingName, principal: certificateArn })),
    );
  }

  /** {@inheritDoc IotIdentityPort.attachPolicy} */
  async attachPolicy(policyName: string, certificateArn: string): Promise<void> {
    await this.call(() => this.client.send(new AttachPolicyCommand({ policyName, target: certificateArn })));
  }

  /** {@inheritDoc IotIdentityPort.detachPolicy} */
  async detachPolicy(policyName: string, certificateArn: string): Promise<void> {
    await this.ignoreNotFound(() =>
      this.client.send(new DetachPolicyCommand({ policyName, target: certificateArn })),
    );
  }

  /** {@inheritDoc IotIdentityPort.updateCertificateStatus} */
  async updateCertificateStatus(
    certificateId: string,
    status: 'ACTIVE' | 'INACTIVE' | 'REVOKED',
  ): Promise<void> {
    await this.call(() =>
      this.client.send(new UpdateCertificateCommand({ certificateId, newStatus: status })),
    );
  }

  /** {@inheritDoc IotIdentityPort.deleteCertificate} */
  async deleteCertificate(certificateId: string): Promise<void> {
    await this.ignoreNotFound(() =>
      this.withConflictRetry(() => this.client.send(new DeleteCertificateCommand({ certificateId }))),
    );
  }

  /** {@inheritDoc IotIdentityPort.registerCaCertificate} */
  async registerCaCertificate(pem: string): Promise<void> {
    try {
      await this.call(() =>
        this.client.send(
          new RegisterCACertificateCommand({
            caCertificate: pem,
            // The hub did the proof of possession itself (its own verification code), so IoT Core's
            // registration code is not involved: SNI_ONLY mode takes the CA without a verification certificate.
            certificateMode: 'SNI_ONLY',
            setAsActive: true,
            allowAutoRegistration: true,
          }),
        ),
      );
    } catch (error) {
      if (name(error) !== 'ResourceAlreadyExistsException') throw error;
      const id = (error as { resourceId?: string }).resourceId;
      if (id) {
        await this.call(() =>
          this.client.send(
            new UpdateCACertificateCommand({
              certificateId: id,
              newStatus: 'ACTIVE',
              newAutoRegistrationStatus: 'ENABLE',
            }),
          ),
        );
      }
    }
  }

  /** {@inheritDoc IotIdentityPort.removeCaCertificate} */
  async removeCaCertificate(caCertificateId: string): Promise<void> {
    try {
      await this.call(() =>
        this.client.send(
          new UpdateCACertificateCommand({
            certificateId: caCertificateId,
            newStatus: 'INACTIVE',
            newAutoRegistrationStatus: 'DISABLE',
          }),
        ),
      );
    } catch (error) {
      if (isNotFound(error)) return;
      throw error;
    }
    // Certificates registered under the CA stay usable after it is deactivated: deactivate them too.
    let marker: string | undefined;
    do {
      const out = await this.call(() =>
        this.client.send(new ListCertificatesByCACommand({ caCertificateId, ...(marker ? { marker } : {}) })),
      );
      for (const certificate of out.certificates ?? []) {
        if (certificate.certificateId && certificate.status === 'ACTIVE') {
          await this.updateCertificateStatus(certificate.certificateId, 'INACTIVE');
        }
      }
      marker = out.nextMarker;
    } while (marker);
    try {
      await this.call(() =>
        this.client.send(new DeleteCACertificateCommand({ certificateId: caCertificateId })),
      );
    } catch (error) {
      // IoT Core keeps a CA that still has certificates registered under it: it stays inactive.
      if (!isNotFound(error) && name(error) !== 'CertificateStateException') throw error;
    }
  }

  private async ignoreNotFound(fn: () => Promise<unknown>): Promise<void> {
    try {
      await this.call(fn);
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
  }

  private async withConflictRetry<T>(fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (error) {
        if (name(error) !== 'DeleteConflictException' || attempt >= this.deleteAttempts) throw error;
        await new Promise((resolve) => setTimeout(resolve, this.retryDelayMs));
      }
    }
  }

  /** Runs a call, turning throttling and server faults into {@link TransientError}. */
  private async call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (error) {
      const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (error instanceof Error && (TRANSIENT.has(error.name) || (status !== undefined && status >= 500))) {
        throw new TransientError(
          'IotUnavailable',
          `IoT Core unavailable: ${error.name}`,
          {},
          { cause: error },
        );
      }
      throw error;
    }
  }
}
