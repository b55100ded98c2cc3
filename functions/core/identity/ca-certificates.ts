import { randomBytes, X509Certificate } from 'node:crypto';
import { z } from 'zod';
import {
  ConflictError,
  LimitExceededError,
  NotFoundError,
  TransientError,
  ValidationError,
} from '../errors.ts';
import { newEtag, parseWith } from './device.ts';
import { type Clock, etagMatches, isSpecificIfMatch } from './registry.ts';
import {
  checkChain,
  commonNameOf,
  isSignedBy,
  isValidAt,
  parseCertificateText,
  parseChain,
  validTo,
} from './x509-chain.ts';

export { parseCertificateText };

/** Most CA certificates one hub keeps (IoT Hub's limit). */
export const CA_CERTIFICATE_LIMIT = 25;

/** Certificate names: 1-64 letters, digits, `-`, `_` and `.` (IoT Hub's rule for certificate names). */
export const CERTIFICATE_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/** `type` of a certificate resource, as IoT Hub prints it. */
export const CERTIFICATE_RESOURCE_TYPE = 'Microsoft.Devices/IotHubs/Certificates';

/** A registered CA certificate as stored. Times are ISO-8601 strings. */
export interface CaCertificate {
  /** Registered name (the path segment of `/certificates/{name}`). */
  readonly name: string;
  /** Strong entity tag, unquoted; new on every write. */
  readonly etag: string;
  /** The certificate, PEM. */
  readonly certificate: string;
  /** Subject, `CN=...` parts joined by `, `. */
  readonly subject: string;
  /** SHA-1 thumbprint, uppercase hex without separators (what IoT Hub prints). */
  readonly thumbprint: string;
  /** SHA-256 thumbprint, same form. */
  readonly thumbprintSha256: string;
  /** `notAfter`. */
  readonly expiry: string;
  /** Whether proof of possession succeeded; only verified CAs let devices in. */
  readonly isVerified: boolean;
  /** The outstanding verification code (the CN the proof certificate must carry), or `null`. */
  readonly verificationCode: string | null;
  /** When the name was first registered. */
  readonly created: string;
  /** Last write. */
  readonly updated: string;
}

/** A stored record, as adapters read it back (not strict: the table may carry key attributes). */
export const caCertificateRecordSchema: z.ZodType<CaCertificate> = z.object({
  name: z.string(),
  etag: z.string(),
  certificate: z.string(),
  subject: z.string(),
  thumbprint: z.string(),
  thumbprintSha256: z.string(),
  expiry: z.string(),
  isVerified: z.boolean(),
  verificationCode: z.string().nullable(),
  created: z.string(),
  updated: z.string(),
});

/**
 * Storage port of the CA registry: one record per name with conditional writes. Implementations:
 * `adapters/ca-store-memory.ts` and `adapters/ca-store-dynamodb.ts` (the registry table); one contract
 * suite covers both. The logic (validation, etags, proof of possession) lives in {@link CaCertificates}.
 */
export interface CaCertificateStore {
  /** The record, or `undefined`. Strongly consistent. */
  find(name: string): Promise<CaCertificate | undefined>;
  /** Every record (at most {@link CA_CERTIFICATE_LIMIT} or so), in name order. Strongly consistent. */
  list(): Promise<CaCertificate[]>;
  /**
   * Writes `record` if the stored one is absent (`expect: 'absent'`) or has `expect.etag`; false when that
   * condition failed (nothing written).
   */
  put(record: CaCertificate, expect: 'absent' | { readonly etag: string }): Promise<boolean>;
  /** Deletes the record if it has `etag`; false when it is absent or has another etag. */
  delete(name: string, etag: string): Promise<boolean>;
}

/** No CA certificate has this name. Code `CertificateNotFound`; maps to 404. */
export class CertificateNotFoundError extends NotFoundError {
  constructor(name: string, options?: ErrorOptions) {
    super('CertificateNotFound', `certificate '${name}' is not registered`, { name }, options);
  }
}

/** A create met a certificate with the same name. Code `CertificateAlreadyExists`; maps to 409. */
export class CertificateAlreadyExistsError extends ConflictError {
  constructor(name: string, options?: ErrorOptions) {
    super(
      'CertificateAlreadyExists',
      `certificate '${name}' already exists; replace it with If-Match`,
      { name },
      options,
    );
  }
}

/** An `If-Match` etag did not match (or a concurrent write won). Code `PreconditionFailed`; maps to 412. */
export class CertificatePreconditionFailedError extends ConflictError {
  constructor(name: string, ifMatch: string, options?: ErrorOptions) {
    super(
      'PreconditionFailed',
      `certificate '${name}' has changed: If-Match '${ifMatch}' does not match its current etag`,
      { name },
      options,
    );
  }
}

/**
 * Checks that `certificate` can serve as a registered CA at `now`: basicConstraints `CA:TRUE` and not
 * expired. Throws a {@link ValidationError} naming `field`.
 */
export function assertUsableCa(certificate: X509Certificate, field: string, now: Date): void {
  if (!certificate.ca) {
    throw new ValidationError(
      'CertificateNotCa',
      `${field}: not a CA certificate (basicConstraints CA:TRUE is required)`,
      { field },
    );
  }
  if (validTo(certificate).getTime() < now.getTime()) {
    throw new ValidationError(
      'CertificateExpired',
      `${field}: expired on ${validTo(certificate).toISOString()}`,
      {
        field,
      },
    );
  }
}

function hexThumbprint(fingerprint: string): string {
  return fingerprint.replaceAll(':', '').toUpperCase();
}

/** The stored record for a CA certificate (new name or replaced content), before the etag is set. */
function describe(
  name: string,
  certificate: X509Certificate,
  at: string,
  previous: CaCertificate | undefined,
): CaCertificate {
  const thumbprint = hexThumbprint(certificate.fingerprint);
  // Replacing a certificate with the same one keeps its proof of possession; new content needs a new proof.
  const same = previous !== undefined && previous.thumbprint === thumbprint;
  return {
    name,
    etag: newEtag(),
    certificate: certificate.toString(),
    subject: certificate.subject.replaceAll('\n', ', '),
    thumbprint,
    thumbprintSha256: hexThumbprint(certificate.fingerprint256),
    expiry: validTo(certificate).toISOString(),
    isVerified: same ? previous.isVerified : false,
    verificationCode: same ? previous.verificationCode : null,
    created: previous?.created ?? at,
    updated: at,
  };
}

/** Throws a 400 naming `name` unless it is a valid certificate name. */
export function validateCertificateName(name: string | undefined): string {
  if (name === undefined || !CERTIFICATE_NAME.test(name)) {
    throw new ValidationError(
      'InvalidCertificateName',
      `name: expected 1-64 letters, digits, '-', '_' or '.', got ${JSON.stringify(name ?? '')}`,
      { field: 'name' },
    );
  }
  return name;
}

const readOnly = z.unknown().optional();

/**
 * Body of `PUT /certificates/{name}`: IoT Hub's CertificateDescription, `{ properties: { certificate } }`.
 * The read-only members a `GET` returns (`id`, `name`, `etag`, `type`, and `subject`, `expiry`,
 * `thumbprint`, `isVerified`, `created`, `updated` under `properties`) are accepted and ignored so a
 * GET-modify-PUT round trip works; `isVerified` in particular cannot be set (proof of possession is the only
 * way to verify a CA). Other members are rejected.
 */
export const certificateBodySchema = z.strictObject({
  id: readOnly,
  name: readOnly,
  etag: readOnly,
  type: readOnly,
  properties: z.strictObject(
    {
      certificate: z.string({ error: 'required, the CA certificate as PEM' }).min(1, 'must not be empty'),
      isVerified: z.boolean({ error: 'expected a boolean' }).optional(),
      subject: readOnly,
      expiry: readOnly,
      thumbprint: readOnly,
      created: readOnly,
      updated: readOnly,
      verificationCode: readOnly,
    },
    { error: 'required, an object with the certificate' },
  ),
});

/** Body of `POST /certificates/{name}/verify`: `{ certificate }`, the proof certificate (PEM). */
export const verificationBodySchema = z.strictObject({
  certificate: z
    .string({ error: 'required, the PEM of a certificate whose CN is the verification code' })
    .min(1, 'must not be empty'),
});

/** Options of {@link CaCertificates}. */
export interface CaCertificatesOptions {
  /** Source of "now" (validity checks, times). @default () => new Date() */
  readonly clock?: Clock;
  /** How often an update without a specific `If-Match` re-reads after losing a race. @default 5 */
  readonly maxAttempts?: number;
  /**
   * Called with a CA about to become verified, after proof of possession succeeded and before the write
   * (the cloud registers it with IoT Core here). A rejection leaves it unverified with its code outstanding,
   * so the same proof can be posted again. Must be idempotent. @default none
   */
  readonly onVerifying?: (record: CaCertificate) => Promise<void>;
  /**
   * Called with a verified CA about to be deleted, or replaced by other content, before the write (the cloud
   * removes it from IoT Core here). A rejection leaves it registered. If the delete then loses a race, `onVerifying` runs again for
   * the CA as it now is. @default none
   */
  readonly onDeleting?: (record: CaCertificate) => Promise<void>;
}

/**
 * The CA registry: IoT Hub's certificates resource over a {@link CaCertificateStore}.
 *
 * Proof of possession works as in IoT Hub: register the CA (unverified), ask for a verification code, sign a
 * certificate whose subject CN is that code with the CA's key, and post it to `verify`. The code is used
 * once. Only verified CAs are trust anchors for `certificateAuthority` devices ({@link chainTrust}).
 * Replacing a CA's certificate with different content makes it unverified again.
 *
 * Writes are conditional on the etag read just before; a specific `If-Match` that loses a race gets
 * `PreconditionFailed`, `*` or none retries a few times.
 */
export class CaCertificates {
  private readonly clock: Clock;
  private readonly maxAttempts: number;

  constructor(
    private readonly store: CaCertificateStore,
    private readonly options: CaCertificatesOptions = {},
  ) {
    this.clock = options.clock ?? (() => new Date());
    this.maxAttempts = options.maxAttempts ?? 5;
  }

  /** The certificate, or `CertificateNotFoundError`. */
  async get(name: string): Promise<CaCertificate> {
    const found = await this.store.find(validateCertificateName(name));
    if (found === undefined) throw new CertificateNotFoundError(name);
    return found;
  }

  /** Every registered certificate, in name order. */
  list(): Promise<CaCertificate[]> {
    return this.store.list();
  }

  /**
   * Registers a new CA under `name` (unverified). Throws `ValidationError` for a bad name or certificate,
   * `CertificateAlreadyExistsError`, or `LimitExceededError` past {@link CA_CERTIFICATE_LIMIT}.
   */
  async create(name: string, pem: string): Promise<CaCertificate> {
    validateCertificateName(name);
    const now = this.clock();
    const certificate = parseCertificateText(pem, 'properties.certificate');
    assertUsableCa(certificate, 'properties.certificate', now);
    // Not atomic with the write: two racing creates may pass one over the limit. The limit guards against
    // misuse, not against a precise count.
    const count = (await this.store.list()).length;
    if (count >= CA_CERTIFICATE_LIMIT) {
      throw new LimitExceededError(
        'TooManyCertificates',
        `a hub keeps at most ${CA_CERTIFICATE_LIMIT} CA certificates; delete one first`,
        { limit: CA_CERTIFICATE_LIMIT, count },
      );
    }
    const record = describe(name, certificate, now.toISOString(), undefined);
    if (!(await this.store.put(record, 'absent'))) throw new CertificateAlreadyExistsError(name);
    return record;
  }

  /** Replaces the certificate of an existing name (`If-Match` required by the route); see the class doc. */
  async replace(name: string, pem: string, ifMatch: string): Promise<CaCertificate> {
    validateCertificateName(name);
    const now = this.clock();
    const certificate = parseCertificateText(pem, 'properties.certificate');
    assertUsableCa(certificate, 'properties.certificate', now);
    return this.update(
      name,
      ifMatch,
      (existing) => describe(name, certificate, now.toISOString(), existing),
      // New content is unverified: the old CA must stop counting wherever the hooks mirror it.
      async (next, existing) => {
        if (existing.isVerified && !next.isVerified) await this.options.onDeleting?.(existing);
      },
    );
  }

  /** Issues a new verification code (replacing any outstanding one) and returns the record with it. */
  async generateVerificationCode(name: string, ifMatch: string | undefined): Promise<CaCertificate> {
    return this.update(name, ifMatch, (existing) => ({
      ...existing,
      etag: newEtag(),
      // 20 random bytes as 40 hex digits, the form IoT Hub uses; fits a CN (64 characters).
      verificationCode: randomBytes(20).toString('hex').toUpperCase(),
      updated: this.clock().toISOString(),
    }));
  }

  /**
   * Completes proof of possession: `pem` must be a certificate valid now, whose subject CN is the outstanding
   * verification code, issued and signed by this CA. Marks the CA verified and spends the code. Throws
   * `ValidationError` naming `certificate` otherwise.
   */
  async verify(name: string, pem: string, ifMatch: string | undefined): Promise<CaCertificate> {
    const proof = parseCertificateText(pem, 'certificate');
    return this.update(
      name,
      ifMatch,
      (existing) => {
        const fail = (code: string, message: string): never => {
          throw new ValidationError(code, `certificate: ${message}`, { field: 'certificate' });
        };
        if (existing.verificationCode === null) {
          fail(
            'VerificationCodeNotGenerated',
            `no outstanding verification code for '${name}': POST /certificates/${name}/generateVerificationCode first`,
          );
        }
        if (commonNameOf(proof) !== existing.verificationCode) {
          fail('CertificateVerificationFailed', 'its subject CN is not the outstanding verification code');
        }
        if (!isSignedBy(proof, new X509Certificate(existing.certificate))) {
          fail(
            'CertificateVerificationFailed',
            `it is not issued and signed by the CA certificate '${name}'`,
          );
        }
        if (!isValidAt(proof, this.clock())) {
          fail(
            'CertificateVerificationFailed',
            `it is not valid now (${proof.validFrom} to ${proof.validTo})`,
          );
        }
        return {
          ...existing,
          etag: newEtag(),
          isVerified: true,
          verificationCode: null,
          updated: this.clock().toISOString(),
        };
      },
      this.options.onVerifying,
    );
  }

  /** Deletes a certificate and returns it as it was. Throws `CertificateNotFoundError` or `PreconditionFailed`. */
  async delete(name: string, ifMatch: string | undefined): Promise<CaCertificate> {
    for (let attempt = 1; ; attempt++) {
      const existing = await this.get(name);
      if (!etagMatches(existing.etag, ifMatch))
        throw new CertificatePreconditionFailedError(name, ifMatch ?? '');
      if (existing.isVerified) await this.options.onDeleting?.(existing);
      if (await this.store.delete(name, existing.etag)) return existing;
      // Lost a race: the hooks' side must follow the CA as it now is.
      const current = await this.store.find(name);
      if (current?.isVerified) await this.options.onVerifying?.(current);
      this.lostRace(name, ifMatch, attempt);
    }
  }

  /**
   * Whether a presented chain (DER, leaf first, then the intermediates the client sent) ends at a verified
   * registered CA at this moment: what the local broker passes to `authenticateDevice` as
   * `issuerMatchesRegisteredCa`. Unverified CAs never count.
   */
  async chainTrust(chainDer: readonly Uint8Array[]): Promise<ReturnType<typeof checkChain>> {
    const chain = parseChain(chainDer);
    if (chain.length === 0) return { ok: false, reason: 'the client certificate does not parse' };
    const anchors = (await this.store.list())
      .filter((ca) => ca.isVerified)
      .map((ca) => ({ name: ca.name, certificate: new X509Certificate(ca.certificate) }));
    return checkChain(chain, anchors, this.clock());
  }

  private async update(
    name: string,
    ifMatch: string | undefined,
    change: (existing: CaCertificate) => CaCertificate,
    beforeWrite?: (next: CaCertificate, existing: CaCertificate) => Promise<void>,
  ): Promise<CaCertificate> {
    for (let attempt = 1; ; attempt++) {
      const existing = await this.get(name);
      if (!etagMatches(existing.etag, ifMatch))
        throw new CertificatePreconditionFailedError(name, ifMatch ?? '');
      const next = change(existing);
      await beforeWrite?.(next, existing);
      if (await this.store.put(next, { etag: existing.etag })) return next;
      this.lostRace(name, ifMatch, attempt);
    }
  }

  /** After a failed conditional write: a specific If-Match is now stale; otherwise retry a few times. */
  private lostRace(name: string, ifMatch: string | undefined, attempt: number): void {
    if (isSpecificIfMatch(ifMatch)) throw new CertificatePreconditionFailedError(name, ifMatch);
    if (attempt >= this.maxAttempts) {
      throw new TransientError('RegistryContention', `certificate '${name}' kept changing; retry`, { name });
    }
  }
}

/** IoT Hub's CertificateDescription JSON for a record; `withCode` adds the outstanding verification code. */
export function toCertificateJson(record: CaCertificate, withCode = false) {
  return {
    properties: {
      subject: record.subject,
      expiry: record.expiry,
      thumbprint: record.thumbprint,
      isVerified: record.isVerified,
      created: record.created,
      updated: record.updated,
      certificate: record.certificate,
      ...(withCode ? { verificationCode: record.verificationCode } : {}),
    },
    id: `/certificates/${record.name}`,
    name: record.name,
    etag: record.etag,
    type: CERTIFICATE_RESOURCE_TYPE,
  };
}

/** Parses a `PUT /certificates/{name}` body; throws a field-naming ValidationError. */
export function parseCertificateBody(body: unknown): { certificate: string } {
  return { certificate: parseWith(certificateBodySchema, body).properties.certificate };
}

/** Parses a `POST /certificates/{name}/verify` body; throws a field-naming ValidationError. */
export function parseVerificationBody(body: unknown): { certificate: string } {
  return parseWith(verificationBodySchema, body);
}
