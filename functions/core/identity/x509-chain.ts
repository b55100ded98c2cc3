import { X509Certificate } from 'node:crypto';
import { ValidationError } from '../errors.ts';

/** Most certificates between a device certificate and its CA the hub follows (intermediates included). */
export const MAX_CHAIN_DEPTH = 5;

/** A CA certificate devices may chain to (a registered and verified one). */
export interface TrustAnchor {
  /** Registered name, for logs. */
  readonly name: string;
  /** The CA certificate. */
  readonly certificate: X509Certificate;
}

/** Outcome of {@link checkChain}. */
export type ChainCheck =
  | {
      readonly ok: true;
      /** Name of the anchor the chain ends at. */
      readonly ca: string;
      /** Intermediates used between the leaf and the anchor. */
      readonly intermediates: number;
    }
  | {
      readonly ok: false;
      /** Why the chain does not reach an anchor: one log-friendly sentence. */
      readonly reason: string;
    };

/** `notBefore` of a certificate (node 20's `X509Certificate` has only the string form). */
export function validFrom(certificate: X509Certificate): Date {
  return new Date(certificate.validFrom);
}

/** `notAfter` of a certificate. */
export function validTo(certificate: X509Certificate): Date {
  return new Date(certificate.validTo);
}

/** Whether `now` lies within the certificate's validity period. */
export function isValidAt(certificate: X509Certificate, now: Date): boolean {
  const t = now.getTime();
  return validFrom(certificate).getTime() <= t && t <= validTo(certificate).getTime();
}

/**
 * The subject's common name, or `undefined` when it has none. Node prints the subject one `KEY=value` per
 * line; with several CNs the last (most specific) wins, as TLS libraries do.
 */
export function commonNameOf(certificate: X509Certificate): string | undefined {
  let cn: string | undefined;
  for (const line of certificate.subject.split('\n')) {
    if (line.startsWith('CN=')) cn = line.slice(3);
  }
  return cn;
}

/** Whether `issuer` issued and signed `subject` (names match and the signature verifies with its key). */
export function isSignedBy(subject: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return subject.checkIssued(issuer) && subject.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

/**
 * Parses the DER certificates a TLS peer sent (leaf first, then whatever intermediates it sent); entries
 * that do not parse are dropped, so a peer cannot break the check with garbage after a good leaf. An empty
 * result means the leaf itself did not parse.
 */
export function parseChain(der: readonly Uint8Array[]): X509Certificate[] {
  const out: X509Certificate[] = [];
  for (const [index, bytes] of der.entries()) {
    try {
      out.push(new X509Certificate(bytes));
    } catch {
      if (index === 0) return [];
    }
  }
  return out;
}

/**
 * Decides whether a presented certificate chain ends at one of `anchors` (the registered, verified CAs), the
 * check IoT Hub makes for `certificateAuthority` devices:
 *
 * - the leaf (`chain[0]`) must be valid at `now` and must not be an anchor itself (holding a CA's key is not
 *   a device identity);
 * - walking up, each certificate must be issued (`checkIssued`) and signed (`verify`) by the next: an anchor
 *   ends the walk, otherwise an intermediate from `chain[1..]` that is a CA and valid at `now`;
 * - the anchor must be valid at `now`;
 * - at most {@link MAX_CHAIN_DEPTH} intermediates, each used once (a loop cannot spin).
 *
 * Intermediates may come in any order. Pure: no I/O; the caller chooses the anchors (only verified CAs) and
 * checks that the leaf's CN is the device id (see `authenticateDevice`).
 *
 * @example
 * const result = checkChain(parseChain(peerDer), [{ name: 'root', certificate: rootX509 }], new Date());
 * if (!result.ok) log(result.reason);
 */
export function checkChain(
  chain: readonly X509Certificate[],
  anchors: readonly TrustAnchor[],
  now: Date,
): ChainCheck {
  const leaf = chain[0];
  if (leaf === undefined) return { ok: false, reason: 'no client certificate' };
  if (!isValidAt(leaf, now)) {
    return {
      ok: false,
      reason: `the client certificate is not valid now (${leaf.validFrom} to ${leaf.validTo})`,
    };
  }
  if (anchors.some((a) => a.certificate.fingerprint256 === leaf.fingerprint256)) {
    return {
      ok: false,
      reason: 'the client certificate is a registered CA certificate, not a device certificate',
    };
  }
  if (anchors.length === 0) return { ok: false, reason: 'no verified CA certificate is registered' };
  const unused = chain.slice(1);
  let current = leaf;
  for (let depth = 0; depth <= MAX_CHAIN_DEPTH; depth++) {
    const anchor = anchors.find((a) => isSignedBy(current, a.certificate));
    if (anchor !== undefined) {
      if (!isValidAt(anchor.certificate, now)) {
        return { ok: false, reason: `CA certificate '${anchor.name}' is not valid now` };
      }
      return { ok: true, ca: anchor.name, intermediates: depth };
    }
    if (depth === MAX_CHAIN_DEPTH) break;
    const index = unused.findIndex((c) => c.ca && isValidAt(c, now) && isSignedBy(current, c));
    if (index < 0) {
      return {
        ok: false,
        reason: `no verified CA certificate issued '${current.issuer.replaceAll('\n', ', ')}'`,
      };
    }
    current = unused[index]!;
    unused.splice(index, 1);
  }
  return { ok: false, reason: `the chain is longer than ${MAX_CHAIN_DEPTH} intermediates` };
}

const PEM_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;
const BARE_BASE64 = /^[A-Za-z0-9+/=\s]+$/;

/**
 * Parses one X.509 certificate given as PEM (IoT Hub's `.pem`) or bare base64 DER (its `.cer`); throws a
 * {@link ValidationError} naming `field` when the text holds no certificate, several, or one that does not
 * parse.
 */
export function parseCertificateText(text: string, field: string): X509Certificate {
  const blocks = text.match(PEM_BLOCK) ?? [];
  if (blocks.length > 1) {
    throw new ValidationError(
      'InvalidCertificate',
      `${field}: expected one certificate, got ${blocks.length} PEM blocks`,
      { field },
    );
  }
  const expected = `${field}: expected a PEM certificate ('-----BEGIN CERTIFICATE-----' ...) or base64 DER of one`;
  if (blocks.length === 0) {
    if (text.trim() === '' || !BARE_BASE64.test(text)) {
      throw new ValidationError('InvalidCertificate', expected, { field });
    }
    try {
      return new X509Certificate(Buffer.from(text.replace(/\s/g, ''), 'base64'));
    } catch {
      throw new ValidationError('InvalidCertificate', expected, { field });
    }
  }
  try {
    return new X509Certificate(blocks[0]!);
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    throw new ValidationError('InvalidCertificate', `${field}: not a valid X.509 certificate (${detail})`, {
      field,
    });
  }
}

/** A certificate's SHA-1 and SHA-256 thumbprints as the registry stores them: uppercase hex, no colons. */
export function thumbprintsOf(certificate: X509Certificate): { sha1: string; sha256: string } {
  return {
    sha1: certificate.fingerprint.replaceAll(':', '').toUpperCase(),
    sha256: certificate.fingerprint256.replaceAll(':', '').toUpperCase(),
  };
}

/**
 * Checks a device certificate given with a `selfSigned` device (the PEM the cloud needs to register it with
 * IoT Core): one parsable certificate, not expired, and when `thumbprint` is given, the certificate's SHA-1 or
 * SHA-256 thumbprint. Returns its thumbprints, or the problem (without a field name).
 */
export function checkDeviceCertificate(
  pem: string,
  thumbprint: string | null,
  now: Date,
): { ok: true; sha1: string; sha256: string } | { ok: false; message: string } {
  let certificate: X509Certificate;
  try {
    certificate = parseCertificateText(pem, '');
  } catch (error) {
    return { ok: false, message: (error as Error).message.replace(/^: /, '') };
  }
  if (validTo(certificate).getTime() < now.getTime()) {
    return { ok: false, message: `expired on ${validTo(certificate).toISOString()}` };
  }
  const prints = thumbprintsOf(certificate);
  if (thumbprint !== null && thumbprint !== prints.sha1 && thumbprint !== prints.sha256) {
    return { ok: false, message: `does not match the thumbprint given with it (SHA-1 ${prints.sha1})` };
  }
  return { ok: true, ...prints };
}
