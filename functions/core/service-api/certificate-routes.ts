import { ValidationError } from '../errors.ts';
import {
  type CaCertificate,
  type CaCertificates,
  parseCertificateBody,
  parseVerificationBody,
  toCertificateJson,
  validateCertificateName,
} from '../identity/ca-certificates.ts';
import { type ApiRequest, jsonResponse, parseJsonBody, type RouteEntry } from './http.ts';
import { quoteEtag } from './registry-routes.ts';

/** What {@link certificateRoutes} needs. */
export interface CertificateRouteDeps {
  /** The CA registry (with its IoT Core hooks when the hub provisions X.509 devices there). */
  readonly certificates: CaCertificates;
}

/** The `If-Match` header: `undefined` when absent; a blank value is a 400 naming `if-match`. */
function ifMatchOf(request: ApiRequest): string | undefined {
  const value = request.headers['if-match'];
  if (value === undefined) return undefined;
  if (value.trim() === '') {
    throw new ValidationError('InvalidIfMatch', 'if-match: must be an etag or *', { field: 'if-match' });
  }
  return value;
}

function certificateResponse(status: number, record: CaCertificate, withCode = false) {
  return jsonResponse(status, toCertificateJson(record, withCode), { etag: quoteEtag(record.etag) });
}

/**
 * The CA certificate routes of the service API, mirroring IoT Hub's certificates resource (X.509 CA
 * certificates for `certificateAuthority` devices):
 *
 * - `PUT /certificates/{name}`: body `{ properties: { certificate: PEM } }`. Without `If-Match` it registers
 *   a new CA (201; 409 `CertificateAlreadyExists`); with `If-Match` it replaces the certificate (200; 412 on an
 *   etag mismatch; 404 if absent); different content is unverified again. The certificate must be a CA
 *   (basicConstraints CA:TRUE) and not expired. Answers CertificateDescription and a quoted `etag` header.
 * - `GET /certificates/{name}`, `GET /certificates` (`{ value: [...] }`).
 * - `DELETE /certificates/{name}`: optional `If-Match`; 204, 404 or 412. Devices chained to it are refused
 *   from their next connect.
 * - `POST /certificates/{name}/generateVerificationCode`: optional `If-Match`; 200 with
 *   `properties.verificationCode`.
 * - `POST /certificates/{name}/verify`: optional `If-Match`; body `{ certificate: PEM }` of a certificate whose
 *   subject CN is the verification code, issued and signed by the CA. 200 with `isVerified: true`, or 400
 *   naming `certificate`.
 *
 * IoT Hub requires `If-Match` on delete, verify and generateVerificationCode; here it is optional, as on
 * `DELETE /devices/{id}` (a given one is checked).
 */
export function certificateRoutes(deps: CertificateRouteDeps): RouteEntry[] {
  const { certificates } = deps;
  return [
    {
      method: 'PUT',
      pattern: '/certificates/{name}',
      handle: async (request, params) => {
        const name = validateCertificateName(params.name);
        const { certificate } = parseCertificateBody(parseJsonBody(request));
        const ifMatch = ifMatchOf(request);
        if (ifMatch === undefined)
          return certificateResponse(201, await certificates.create(name, certificate));
        return certificateResponse(200, await certificates.replace(name, certificate, ifMatch));
      },
    },
    {
      method: 'GET',
      pattern: '/certificates/{name}',
      handle: async (_request, params) => certificateResponse(200, await certificates.get(params.name ?? '')),
    },
    {
      method: 'GET',
      pattern: '/certificates',
      handle: async () =>
        jsonResponse(200, { value: (await certificates.list()).map((r) => toCertificateJson(r)) }),
    },
    {
      method: 'DELETE',
      pattern: '/certificates/{name}',
      handle: async (request, params) => {
        const name = validateCertificateName(params.name);
        await certificates.delete(name, ifMatchOf(request));
        return jsonResponse(204, undefined);
      },
    },
    {
      method: 'POST',
      pattern: '/certificates/{name}/generateVerificationCode',
      handle: async (request, params) => {
        const name = validateCertificateName(params.name);
        return certificateResponse(
          200,
          await certificates.generateVerificationCode(name, ifMatchOf(request)),
          true,
        );
      },
    },
    {
      method: 'POST',
      pattern: '/certificates/{name}/verify',
      handle: async (request, params) => {
        const name = validateCertificateName(params.name);
        const { certificate } = parseVerificationBody(parseJsonBody(request));
        return certificateResponse(200, await certificates.verify(name, certificate, ifMatchOf(request)));
      },
    },
  ];
}
