import { randomBytes } from 'node:crypto';

/** Shortest symmetric key the registry accepts, in bytes (IoT Hub's lower bound). */
export const SYMMETRIC_KEY_MIN_BYTES = 16;
/** Longest symmetric key the registry accepts, in bytes (IoT Hub's upper bound). */
export const SYMMETRIC_KEY_MAX_BYTES = 64;
/** Size of a key the registry generates, in bytes (what IoT Hub generates). */
export const GENERATED_KEY_BYTES = 32;

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Whether `key` is canonical standard base64 (with padding) of 16–64 bytes. The HMAC key is the
 * decoded bytes, so a sloppy encoding that still decodes would sign with bytes the owner did not mean.
 */
export function isValidBase64Key(key: unknown): key is string {
  if (typeof key !== 'string' || !BASE64.test(key)) return false;
  const bytes = Buffer.from(key, 'base64');
  return (
    bytes.length >= SYMMETRIC_KEY_MIN_BYTES &&
    bytes.length <= SYMMETRIC_KEY_MAX_BYTES &&
    bytes.toString('base64') === key
  );
}

/** A new random symmetric key: 32 bytes from the CSPRNG, base64. */
export function generateSymmetricKey(): string {
  return randomBytes(GENERATED_KEY_BYTES).toString('base64');
}

/**
 * The canonical form of an X.509 thumbprint: hex digits uppercased, with the `:` and space
 * separators tools print removed (`ab:cd:...` → `ABCD...`). Does not validate; see {@link isValidThumbprint}.
 */
export function normalizeThumbprint(thumbprint: string): string {
  return thumbprint.replace(/[:\s]/g, '').toUpperCase();
}

/** Whether `thumbprint` (already normalised) is a SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint. */
export function isValidThumbprint(thumbprint: string): boolean {
  return /^(?:[0-9A-F]{40}|[0-9A-F]{64})$/.test(thumbprint);
}
