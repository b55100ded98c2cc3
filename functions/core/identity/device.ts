import { randomBytes, randomUUID } from 'node:crypto';
import { z } from 'zod';
import { ValidationError } from '../errors.ts';
import { describeDeviceIdProblem } from './device-id.ts';
import { generateSymmetricKey, isValidBase64Key, isValidThumbprint, normalizeThumbprint } from './keys.ts';
import { checkDeviceCertificate } from './x509-chain.ts';

/** Whether a device may connect. */
export type DeviceStatus = 'enabled' | 'disabled';
/** Connection state as IoT Hub reports it (capitalised, as in IoT Hub's JSON). */
export type ConnectionState = 'Connected' | 'Disconnected';
/**
 * How a device authenticates: `sas` symmetric keys, `selfSigned` X.509 with registered thumbprints,
 * `certificateAuthority` X.509 chained to a registered CA, `none` (cannot connect).
 */
export type AuthenticationType = 'sas' | 'selfSigned' | 'certificateAuthority' | 'none';

/**
 * The timestamp IoT Hub prints for "never" (e.g. `lastActivityTime` of a device that never connected).
 * It sorts before every real ISO-8601 timestamp, which the stale-event checks rely on.
 */
export const NEVER = '0001-01-01T00:00:00Z';

/** Longest `statusReason` accepted (IoT Hub's limit). */
export const STATUS_REASON_MAX_LENGTH = 128;

/** A device's credentials as stored and returned; unused members are `null`, as in IoT Hub's JSON. */
export interface DeviceAuthentication {
  /** Authentication mechanism. */
  readonly type: AuthenticationType;
  /** Symmetric keys (base64), set when `type` is `sas`. */
  readonly symmetricKey: { readonly primaryKey: string | null; readonly secondaryKey: string | null };
  /** X.509 thumbprints (uppercase hex, no colons), set when `type` is `selfSigned`. */
  readonly x509Thumbprint: {
    readonly primaryThumbprint: string | null;
    readonly secondaryThumbprint: string | null;
  };
}

/** Device capabilities (IoT Hub's `capabilities`). */
export interface DeviceCapabilities {
  /** Whether the device is an IoT Edge device. Stored only; the hub has no Edge features. */
  readonly iotEdge: boolean;
}

/** A registry entry, shaped like IoT Hub's Device JSON. Times are ISO-8601 strings. */
export interface Device {
  /** Case-sensitive id (see `device-id.ts`). */
  readonly deviceId: string;
  /** Distinguishes devices that reuse an id after a delete; new on every create. */
  readonly generationId: string;
  /** Strong entity tag, unquoted; new on every identity write (not on connection-state/activity updates). */
  readonly etag: string;
  /** Whether the device may connect. */
  readonly status: DeviceStatus;
  /** Free text explaining `status`, up to 128 characters. */
  readonly statusReason: string | null;
  /** When `status` last changed (creation counts). */
  readonly statusUpdatedTime: string;
  /** Whether the device has an open connection, as the lifecycle events reported it. */
  readonly connectionState: ConnectionState;
  /** Time of the lifecycle event that set `connectionState`; {@link NEVER} before the first. */
  readonly connectionStateUpdatedTime: string;
  /** Last connect or message; {@link NEVER} before the first. */
  readonly lastActivityTime: string;
  /** Messages waiting in the device's C2D queue (kept by the C2D ledger). */
  readonly cloudToDeviceMessageCount: number;
  /** Credentials. */
  readonly authentication: DeviceAuthentication;
  /** Capabilities, when set. */
  readonly capabilities?: DeviceCapabilities;
}

/** Authentication as a caller supplies it: everything optional, `type` defaults to `sas`. */
export interface AuthenticationInput {
  /** Mechanism; `sas` when omitted. */
  readonly type: AuthenticationType;
  /** Both keys or neither; with `sas` and neither, the registry generates both. */
  readonly symmetricKey?: { readonly primaryKey?: string | null; readonly secondaryKey?: string | null };
  /** Thumbprints, normalised; `primaryThumbprint` (or `primaryCertificate`) is required for `selfSigned`. */
  readonly x509Thumbprint?: {
    readonly primaryThumbprint?: string | null;
    readonly secondaryThumbprint?: string | null;
    /**
     * Extension (not in IoT Hub): the certificate itself, PEM, for `selfSigned` devices, so the hub can
     * register it with IoT Core (`x509-provisioning.ts`). Its thumbprint must match `primaryThumbprint`, which
     * is filled in (SHA-256) when omitted. Never stored in the registry.
     */
    readonly primaryCertificate?: string | null;
    /** Extension: the secondary certificate, PEM; see `primaryCertificate`. */
    readonly secondaryCertificate?: string | null;
  };
}

/** The writable part of a device: what create, replace and bulk take. */
export interface DeviceInput {
  /** Id of the device to create or replace. */
  readonly deviceId: string;
  /** `enabled` when omitted on create; unchanged when omitted on replace. */
  readonly status?: DeviceStatus;
  /** Reason for the status; `null` clears it. */
  readonly statusReason?: string | null;
  /** Credentials; `sas` with generated keys on create, unchanged on replace, when omitted. */
  readonly authentication?: AuthenticationInput;
  /** Capabilities; unchanged on replace when omitted. */
  readonly capabilities?: DeviceCapabilities;
}

/** Bulk import modes, IoT Hub's `importMode` values (camelCase, as in its JSON). */
export const IMPORT_MODES = [
  'create',
  'createOrUpdate',
  'createOrUpdateIfMatchETag',
  'update',
  'updateIfMatchETag',
  'delete',
  'deleteIfMatchETag',
] as const;

/** One bulk import mode; see {@link IMPORT_MODES} and `registry.ts` for the semantics of each. */
export type ImportMode = (typeof IMPORT_MODES)[number];

/** One item of a bulk registry request. */
export interface BulkOperation {
  /** What to do. */
  readonly importMode: ImportMode;
  /** The device (only `deviceId` matters for deletes). */
  readonly device: DeviceInput;
  /** Etag for the `...IfMatchETag` modes. */
  readonly eTag?: string;
}

const KEY_MESSAGE = 'expected a base64 key of 16-64 bytes';
const THUMBPRINT_MESSAGE = 'expected a SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint';

const deviceIdSchema = z.string({ error: 'expected a string' }).superRefine((id, ctx) => {
  const problem = describeDeviceIdProblem(id, true);
  if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
});

const keySchema = z
  .string({ error: KEY_MESSAGE })
  .refine((key) => isValidBase64Key(key), KEY_MESSAGE)
  .nullable()
  .optional();

const thumbprintSchema = z
  .string({ error: THUMBPRINT_MESSAGE })
  .transform(normalizeThumbprint)
  .refine(isValidThumbprint, THUMBPRINT_MESSAGE)
  .nullable()
  .optional();

const certificatePemSchema = z.string({ error: 'expected a PEM certificate' }).nullable().optional();

const authenticationSchema = z
  .strictObject({
    type: z.enum(['sas', 'selfSigned', 'certificateAuthority', 'none']).default('sas'),
    symmetricKey: z.strictObject({ primaryKey: keySchema, secondaryKey: keySchema }).nullable().optional(),
    x509Thumbprint: z
      .strictObject({
        primaryThumbprint: thumbprintSchema,
        secondaryThumbprint: thumbprintSchema,
        primaryCertificate: certificatePemSchema,
        secondaryCertificate: certificatePemSchema,
      })
      .nullable()
      .optional(),
  })
  .superRefine((auth, ctx) => {
    const primaryKey = auth.symmetricKey?.primaryKey ?? null;
    const secondaryKey = auth.symmetricKey?.secondaryKey ?? null;
    const primaryThumbprint = auth.x509Thumbprint?.primaryThumbprint ?? null;
    const secondaryThumbprint = auth.x509Thumbprint?.secondaryThumbprint ?? null;
    const notAllowed = (path: string[]): void =>
      ctx.addIssue({
        code: 'custom',
        path,
        message: `not allowed when authentication.type is '${auth.type}'`,
      });
    if (auth.type !== 'sas') {
      if (primaryKey !== null) notAllowed(['symmetricKey', 'primaryKey']);
      if (secondaryKey !== null) notAllowed(['symmetricKey', 'secondaryKey']);
    } else if ((primaryKey === null) !== (secondaryKey === null)) {
      const missing = primaryKey === null ? 'primaryKey' : 'secondaryKey';
      ctx.addIssue({
        code: 'custom',
        path: ['symmetricKey', missing],
        message: 'give both keys or neither (the registry generates both when neither is given)',
      });
    }
    const primaryCertificate = auth.x509Thumbprint?.primaryCertificate ?? null;
    const secondaryCertificate = auth.x509Thumbprint?.secondaryCertificate ?? null;
    if (auth.type !== 'selfSigned') {
      if (primaryCertificate !== null) notAllowed(['x509Thumbprint', 'primaryCertificate']);
      if (secondaryCertificate !== null) notAllowed(['x509Thumbprint', 'secondaryCertificate']);
    } else {
      const slots = [
        ['primaryCertificate', primaryCertificate, primaryThumbprint],
        ['secondaryCertificate', secondaryCertificate, secondaryThumbprint],
      ] as const;
      for (const [field, pem, thumbprint] of slots) {
        if (pem === null) continue;
        const checked = checkDeviceCertificate(pem, thumbprint, new Date());
        if (!checked.ok)
          ctx.addIssue({ code: 'custom', path: ['x509Thumbprint', field], message: checked.message });
      }
    }
    if (auth.type !== 'selfSigned') {
      if (primaryThumbprint !== null) notAllowed(['x509Thumbprint', 'primaryThumbprint']);
      if (secondaryThumbprint !== null) notAllowed(['x509Thumbprint', 'secondaryThumbprint']);
    } else if (primaryThumbprint === null && primaryCertificate === null) {
      ctx.addIssue({
        code: 'custom',
        path: ['x509Thumbprint', 'primaryThumbprint'],
        message: "required when authentication.type is 'selfSigned'",
      });
    }
  })
  .transform(
    (auth): AuthenticationInput => ({
      type: auth.type,
      ...(auth.symmetricKey ? { symmetricKey: auth.symmetricKey } : {}),
      ...(auth.x509Thumbprint ? { x509Thumbprint: withCertificateThumbprints(auth.x509Thumbprint) } : {}),
    }),
  );

/** Fills a missing thumbprint from the certificate given beside it (already checked: it parses). */
function withCertificateThumbprints(
  x509: NonNullable<AuthenticationInput['x509Thumbprint']>,
): NonNullable<AuthenticationInput['x509Thumbprint']> {
  const fill = (thumbprint: string | null | undefined, pem: string | null | undefined) => {
    if ((thumbprint ?? null) !== null || pem == null) return thumbprint;
    const checked = checkDeviceCertificate(pem, null, new Date(0));
    return checked.ok ? checked.sha256 : thumbprint;
  };
  return {
    ...x509,
    primaryThumbprint: fill(x509.primaryThumbprint, x509.primaryCertificate),
    secondaryThumbprint: fill(x509.secondaryThumbprint, x509.secondaryCertificate),
  };
}

const statusSchema = z.enum(['enabled', 'disabled'], { error: "expected 'enabled' or 'disabled'" });
const statusReasonSchema = z
  .string({ error: 'expected a string' })
  .max(STATUS_REASON_MAX_LENGTH, `must be at most ${STATUS_REASON_MAX_LENGTH} characters`)
  .nullable()
  .optional();
const capabilitiesSchema = z.strictObject({ iotEdge: z.boolean({ error: 'expected a boolean' }) });

function toInput(body: {
  deviceId: string;
  status?: DeviceStatus | undefined;
  statusReason?: string | null | undefined;
  authentication?: AuthenticationInput | undefined;
  capabilities?: DeviceCapabilities | undefined;
}): DeviceInput {
  return {
    deviceId: body.deviceId,
    ...(body.status !== undefined ? { status: body.status } : {}),
    ...(body.statusReason !== undefined ? { statusReason: body.statusReason } : {}),
    ...(body.authentication !== undefined ? { authentication: body.authentication } : {}),
    ...(body.capabilities !== undefined ? { capabilities: body.capabilities } : {}),
  };
}

/**
 * Body of `PUT /devices/{id}`: IoT Hub's Device JSON. Unknown fields are rejected. The read-only fields
 * a client gets from `GET` (`generationId`, `etag`, `connectionState`, times, `cloudToDeviceMessageCount`)
 * are accepted, type-checked and ignored, so a GET-modify-PUT round trip works; concurrency comes from the
 * `If-Match` header, never from the body's `etag` (as in IoT Hub).
 */
export const deviceBodySchema = z
  .strictObject({
    deviceId: deviceIdSchema,
    generationId: z.string().optional(),
    etag: z.string().optional(),
    status: statusSchema.optional(),
    statusReason: statusReasonSchema,
    statusUpdatedTime: z.string().optional(),
    connectionState: z.enum(['Connected', 'Disconnected']).optional(),
    connectionStateUpdatedTime: z.string().optional(),
    lastActivityTime: z.string().optional(),
    cloudToDeviceMessageCount: z.number().int().nonnegative().optional(),
    authentication: authenticationSchema.optional(),
    capabilities: capabilitiesSchema.optional(),
  })
  .transform(toInput);

/**
 * One item of `POST /devices` (bulk), IoT Hub's ExportImportDevice: `id`, `importMode`, `eTag` (for the
 * `...IfMatchETag` modes) and the writable device fields. Twin fields (`tags`, `properties`, `twinETag`)
 * are not supported and rejected as unknown.
 */
export const bulkItemSchema = z
  .strictObject({
    id: deviceIdSchema,
    importMode: z.enum(IMPORT_MODES, { error: `expected one of ${IMPORT_MODES.join(', ')}` }),
    eTag: z.string().min(1).optional(),
    status: statusSchema.optional(),
    statusReason: statusReasonSchema,
    authentication: authenticationSchema.optional(),
    capabilities: capabilitiesSchema.optional(),
  })
  .superRefine((item, ctx) => {
    if (item.importMode.endsWith('IfMatchETag') && item.eTag === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['eTag'],
        message: `required when importMode is '${item.importMode}'`,
      });
    }
  })
  .transform(
    (item): BulkOperation => ({
      importMode: item.importMode,
      device: toInput({ ...item, deviceId: item.id }),
      ...(item.eTag !== undefined ? { eTag: item.eTag } : {}),
    }),
  );

/** Body of `POST /devices`: a non-empty array of {@link bulkItemSchema} (the 100-item cap is the registry's). */
export const bulkBodySchema = z
  .array(bulkItemSchema, { error: 'expected an array of devices' })
  .min(1, 'must not be empty');

/**
 * A stored device, as adapters read it back: not strict (other modules may add attributes to the item),
 * but every registry field must be present and well-typed.
 */
export const deviceRecordSchema: z.ZodType<Device> = z.object({
  deviceId: z.string(),
  generationId: z.string(),
  etag: z.string(),
  status: z.enum(['enabled', 'disabled']),
  statusReason: z.string().nullable(),
  statusUpdatedTime: z.string(),
  connectionState: z.enum(['Connected', 'Disconnected']),
  connectionStateUpdatedTime: z.string(),
  lastActivityTime: z.string(),
  cloudToDeviceMessageCount: z.number(),
  authentication: z.object({
    type: z.enum(['sas', 'selfSigned', 'certificateAuthority', 'none']),
    symmetricKey: z.object({ primaryKey: z.string().nullable(), secondaryKey: z.string().nullable() }),
    x509Thumbprint: z.object({
      primaryThumbprint: z.string().nullable(),
      secondaryThumbprint: z.string().nullable(),
    }),
  }),
  capabilities: z.object({ iotEdge: z.boolean() }).optional(),
});

/** Formats a zod path as people write it: `authentication.symmetricKey.primaryKey`, `[3].id`. */
export function formatFieldPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out.length === 0 ? String(part) : `.${String(part)}`;
  }
  return out.length === 0 ? '(body)' : out;
}

/**
 * Turns a zod error into a {@link ValidationError} whose message names each failing field path, e.g.
 * `authentication.symmetricKey.primaryKey: expected a base64 key of 16-64 bytes`. Unknown fields are
 * reported one by one as `{path}.{name}: unknown field`. `context.field` is the first path and
 * `context.issues` lists all of them.
 */
export function validationErrorFromZod(error: z.ZodError, code = 'InvalidRequestBody'): ValidationError {
  const issues: { field: string; message: string }[] = [];
  for (const issue of error.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys)
        issues.push({ field: formatFieldPath([...issue.path, key]), message: 'unknown field' });
    } else {
      issues.push({ field: formatFieldPath(issue.path), message: issue.message });
    }
  }
  const message = issues.map((i) => `${i.field}: ${i.message}`).join('; ');
  return new ValidationError(code, message, { field: issues[0]?.field, issues });
}

/** Parses `body` with `schema`, throwing {@link validationErrorFromZod} on failure. */
export function parseWith<S extends z.ZodType>(
  schema: S,
  body: unknown,
  code = 'InvalidRequestBody',
): z.output<S> {
  const result = schema.safeParse(body);
  if (!result.success) throw validationErrorFromZod(result.error, code);
  return result.data;
}

/** Parses a `PUT /devices/{id}` body into a {@link DeviceInput}; throws a field-naming ValidationError. */
export function parseDeviceBody(body: unknown): DeviceInput {
  return parseWith(deviceBodySchema, body);
}

/** Parses a `POST /devices` body into bulk operations; throws a field-naming ValidationError. */
export function parseBulkBody(body: unknown): BulkOperation[] {
  return parseWith(bulkBodySchema, body);
}

/** A new strong etag: 16 random bytes, base64url (safe inside a quoted HTTP header value). */
export function newEtag(): string {
  return randomBytes(16).toString('base64url');
}

/** A new generation id. */
export function newGenerationId(): string {
  return randomUUID();
}

/**
 * The stored credentials for `input`: `sas` with two generated keys when nothing is given, otherwise the
 * given keys/thumbprints with the unused members `null`. Assumes `input` passed the schema's checks.
 */
export function resolveAuthentication(input: AuthenticationInput | undefined): DeviceAuthentication {
  const type = input?.type ?? 'sas';
  let primaryKey = input?.symmetricKey?.primaryKey ?? null;
  let secondaryKey = input?.symmetricKey?.secondaryKey ?? null;
  if (type === 'sas' && primaryKey === null && secondaryKey === null) {
    primaryKey = generateSymmetricKey();
    secondaryKey = generateSymmetricKey();
  }
  const thumb = (t: string | null | undefined): string | null => (t == null ? null : normalizeThumbprint(t));
  return {
    type,
    symmetricKey: type === 'sas' ? { primaryKey, secondaryKey } : { primaryKey: null, secondaryKey: null },
    x509Thumbprint:
      type === 'selfSigned'
        ? {
            primaryThumbprint: thumb(input?.x509Thumbprint?.primaryThumbprint),
            secondaryThumbprint: thumb(input?.x509Thumbprint?.secondaryThumbprint),
          }
        : { primaryThumbprint: null, secondaryThumbprint: null },
  };
}

/** IoT Hub's Device JSON, as the registry routes return it. */
export interface DeviceJson {
  /** Device id. */
  readonly deviceId: string;
  /** Generation id. */
  readonly generationId: string;
  /** Etag, unquoted (the `etag` header carries it quoted). */
  readonly etag: string;
  /** `Connected` or `Disconnected`. */
  readonly connectionState: Device['connectionState'];
  /** `enabled` or `disabled`. */
  readonly status: Device['status'];
  /** Reason for the status. */
  readonly statusReason: string | null;
  /** Time of the last connection-state event. */
  readonly connectionStateUpdatedTime: string;
  /** Time of the last status change. */
  readonly statusUpdatedTime: string;
  /** Last activity. */
  readonly lastActivityTime: string;
  /** Messages waiting in the C2D queue. */
  readonly cloudToDeviceMessageCount: number;
  /** Credentials, keys included (IoT Hub returns them to service callers). */
  readonly authentication: DeviceAuthentication;
  /** Capabilities; `{ iotEdge: false }` when never set, as IoT Hub prints it. */
  readonly capabilities: DeviceCapabilities;
}

/**
 * A device as IoT Hub's service API prints it: only the registry's fields, in IoT Hub's order, so attributes
 * other modules keep on the stored item never leak.
 */
export function toDeviceJson(device: Device): DeviceJson {
  return {
    deviceId: device.deviceId,
    generationId: device.generationId,
    etag: device.etag,
    connectionState: device.connectionState,
    status: device.status,
    statusReason: device.statusReason,
    connectionStateUpdatedTime: device.connectionStateUpdatedTime,
    statusUpdatedTime: device.statusUpdatedTime,
    lastActivityTime: device.lastActivityTime,
    cloudToDeviceMessageCount: device.cloudToDeviceMessageCount,
    authentication: device.authentication,
    capabilities: device.capabilities ?? { iotEdge: false },
  };
}
