import { X509Certificate } from 'node:crypto';
import { generate } from 'selfsigned';

/** A certificate and its private key, PEM. */
export interface TestCertificate {
  readonly cert: string;
  readonly key: string;
  /** The certificate parsed. */
  readonly x509: X509Certificate;
}

/** Options of the certificate makers. */
export interface CertificateOptions {
  /** The issuer; omitted: self-signed. */
  readonly issuer?: TestCertificate;
  /** @default now - 1 minute */
  readonly notBefore?: Date;
  /** @default notBefore + 1 year */
  readonly notAfter?: Date;
}

async function make(commonName: string, ca: boolean, options: CertificateOptions): Promise<TestCertificate> {
  const notBeforeDate = options.notBefore ?? new Date(Date.now() - 60_000);
  const pems = await generate([{ name: 'commonName', value: commonName }], {
    // EC keys: a few ms each, where RSA 2048 takes a fraction of a second.
    keyType: 'ec',
    algorithm: 'sha256',
    notBeforeDate,
    notAfterDate: options.notAfter ?? new Date(notBeforeDate.getTime() + 365 * 24 * 3600_000),
    ...(options.issuer ? { ca: { key: options.issuer.key, cert: options.issuer.cert } } : {}),
    extensions: ca
      ? [
          { name: 'basicConstraints', cA: true, critical: true },
          { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
        ]
      : [
          { name: 'basicConstraints', cA: false },
          { name: 'keyUsage', digitalSignature: true, critical: true },
          { name: 'extKeyUsage', clientAuth: true },
        ],
  });
  return { cert: pems.cert, key: pems.private, x509: new X509Certificate(pems.cert) };
}

/** A CA certificate (basicConstraints CA:TRUE): a root when `issuer` is omitted, else an intermediate. */
export function makeCa(commonName: string, options: CertificateOptions = {}): Promise<TestCertificate> {
  return make(commonName, true, options);
}

/** An end-entity (device) certificate: issued by `options.issuer`, or self-signed. */
export function makeLeaf(commonName: string, options: CertificateOptions = {}): Promise<TestCertificate> {
  return make(commonName, false, options);
}

/** SHA-1 thumbprint as the registry stores it: uppercase hex without colons. */
export function thumbprintOf(certificate: TestCertificate): string {
  return certificate.x509.fingerprint.replaceAll(':', '');
}
