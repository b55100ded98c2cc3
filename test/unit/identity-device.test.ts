import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../functions/core/errors.ts';
import {
  NEVER,
  parseBulkBody,
  parseDeviceBody,
  resolveAuthentication,
} from '../../functions/core/identity/device.ts';
import { isValidBase64Key } from '../../functions/core/identity/keys.ts';

const key = Buffer.alloc(32, 5).toString('base64');
const sha1 = 'ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01';
const sha256 = 'a'.repeat(64);

function errorOf(fn: () => unknown): ValidationError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ValidationError);
    return error as ValidationError;
  }
  throw new Error('expected a ValidationError');
}

describe('device body schema', () => {
  it('accepts a minimal body', () => {
    expect(parseDeviceBody({ deviceId: 'dev-1' })).toEqual({ deviceId: 'dev-1' });
  });

  it('accepts a full IoT Hub Device JSON and drops the read-only fields', () => {
    const body = {
      deviceId: 'dev-1',
      generationId: 'g',
      etag: 'e',
      status: 'disabled',
      statusReason: 'stolen',
      statusUpdatedTime: NEVER,
      connectionState: 'Connected',
      connectionStateUpdatedTime: NEVER,
      lastActivityTime: NEVER,
      cloudToDeviceMessageCount: 3,
      authentication: {
        type: 'sas',
        symmetricKey: { primaryKey: key, secondaryKey: key },
        x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null },
      },
      capabilities: { iotEdge: false },
    };
    expect(parseDeviceBody(body)).toEqual({
      deviceId: 'dev-1',
      status: 'disabled',
      statusReason: 'stolen',
      authentication: {
        type: 'sas',
        symmetricKey: { primaryKey: key, secondaryKey: key },
        x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null },
      },
      capabilities: { iotEdge: false },
    });
  });

  it('normalises thumbprints to uppercase hex without colons', () => {
    const input = parseDeviceBody({
      deviceId: 'x',
      authentication: {
        type: 'selfSigned',
        x509Thumbprint: { primaryThumbprint: sha1, secondaryThumbprint: sha256 },
      },
    });
    expect(input.authentication?.x509Thumbprint).toEqual({
      primaryThumbprint: 'ABCDEF0123456789ABCDEF0123456789ABCDEF01',
      secondaryThumbprint: 'A'.repeat(64),
    });
  });

  it.each([
    [{}, 'deviceId: expected a string'],
    [{ deviceId: 7 }, 'deviceId: expected a string'],
    [{ deviceId: '' }, 'deviceId: must not be empty'],
    [{ deviceId: 'a'.repeat(129) }, 'deviceId: must be at most 128 characters'],
    [{ deviceId: 'a/b' }, 'deviceId: character "/" at position 1 is not allowed'],
    [{ deviceId: 'a+b' }, "deviceId: character '+' at position 1 is an MQTT topic wildcard"],
    [{ deviceId: 'd', color: 'red' }, 'color: unknown field'],
    [{ deviceId: 'd', status: 'on' }, "status: expected 'enabled' or 'disabled'"],
    [{ deviceId: 'd', statusReason: 'x'.repeat(129) }, 'statusReason: must be at most 128 characters'],
    [{ deviceId: 'd', capabilities: { iotEdge: 'yes' } }, 'capabilities.iotEdge: expected a boolean'],
    [{ deviceId: 'd', cloudToDeviceMessageCount: -1 }, 'cloudToDeviceMessageCount:'],
    [{ deviceId: 'd', authentication: { type: 'password' } }, 'authentication.type:'],
    [{ deviceId: 'd', authentication: { extra: 1 } }, 'authentication.extra: unknown field'],
    [
      { deviceId: 'd', authentication: { symmetricKey: { primaryKey: 'nope', secondaryKey: key } } },
      'authentication.symmetricKey.primaryKey: expected a base64 key of 16-64 bytes',
    ],
    [
      { deviceId: 'd', authentication: { symmetricKey: { primaryKey: key, secondaryKey: 12 } } },
      'authentication.symmetricKey.secondaryKey: expected a base64 key of 16-64 bytes',
    ],
    [
      {
        deviceId: 'd',
        authentication: {
          symmetricKey: { primaryKey: Buffer.alloc(15).toString('base64'), secondaryKey: key },
        },
      },
      'authentication.symmetricKey.primaryKey: expected a base64 key of 16-64 bytes',
    ],
    [
      {
        deviceId: 'd',
        authentication: {
          symmetricKey: { primaryKey: Buffer.alloc(65).toString('base64'), secondaryKey: key },
        },
      },
      'authentication.symmetricKey.primaryKey: expected a base64 key of 16-64 bytes',
    ],
    [
      { deviceId: 'd', authentication: { symmetricKey: { primaryKey: key } } },
      'authentication.symmetricKey.secondaryKey: give both keys or neither',
    ],
    [
      { deviceId: 'd', authentication: { type: 'selfSigned' } },
      "authentication.x509Thumbprint.primaryThumbprint: required when authentication.type is 'selfSigned'",
    ],
    [
      { deviceId: 'd', authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: 'abc' } } },
      'authentication.x509Thumbprint.primaryThumbprint: expected a SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint',
    ],
    [
      {
        deviceId: 'd',
        authentication: {
          type: 'selfSigned',
          symmetricKey: { primaryKey: key, secondaryKey: key },
          x509Thumbprint: { primaryThumbprint: sha1 },
        },
      },
      "authentication.symmetricKey.primaryKey: not allowed when authentication.type is 'selfSigned'",
    ],
    [
      { deviceId: 'd', authentication: { type: 'sas', x509Thumbprint: { primaryThumbprint: sha1 } } },
      "authentication.x509Thumbprint.primaryThumbprint: not allowed when authentication.type is 'sas'",
    ],
    ['not an object', '(body):'],
  ])('rejects %j naming the field', (body, message) => {
    const error = errorOf(() => parseDeviceBody(body));
    expect(error.code).toBe('InvalidRequestBody');
    expect(error.message).toContain(message);
  });

  it('lists every bad field and puts the first in context.field', () => {
    const error = errorOf(() => parseDeviceBody({ deviceId: 'a b', status: 1, x: 1 }));
    expect(error.message).toMatch(/deviceId: .*; status: .*; x: unknown field/);
    expect(error.context.field).toBe('deviceId');
    expect(error.context.issues).toHaveLength(3);
  });
});

describe('resolveAuthentication', () => {
  it('generates two distinct 32-byte keys for sas without keys', () => {
    const auth = resolveAuthentication(undefined);
    expect(auth.type).toBe('sas');
    const { primaryKey, secondaryKey } = auth.symmetricKey;
    expect(isValidBase64Key(primaryKey)).toBe(true);
    expect(Buffer.from(primaryKey ?? '', 'base64')).toHaveLength(32);
    expect(primaryKey).not.toBe(secondaryKey);
    expect(auth.x509Thumbprint).toEqual({ primaryThumbprint: null, secondaryThumbprint: null });
  });

  it('keeps given keys and nulls unused members', () => {
    expect(
      resolveAuthentication({ type: 'sas', symmetricKey: { primaryKey: key, secondaryKey: key } })
        .symmetricKey,
    ).toEqual({
      primaryKey: key,
      secondaryKey: key,
    });
    expect(resolveAuthentication({ type: 'certificateAuthority' })).toEqual({
      type: 'certificateAuthority',
      symmetricKey: { primaryKey: null, secondaryKey: null },
      x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null },
    });
  });
});

describe('bulk body schema', () => {
  it('maps ExportImportDevice items to operations', () => {
    expect(
      parseBulkBody([
        { id: 'a', importMode: 'create', status: 'disabled' },
        { id: 'b', importMode: 'deleteIfMatchETag', eTag: 'e1' },
      ]),
    ).toEqual([
      { importMode: 'create', device: { deviceId: 'a', status: 'disabled' } },
      { importMode: 'deleteIfMatchETag', device: { deviceId: 'b' }, eTag: 'e1' },
    ]);
  });

  it.each([
    [[], '(body): must not be empty'],
    [{ id: 'a' }, '(body): expected an array of devices'],
    [[{ id: 'a', importMode: 'upsert' }], '[0].importMode: expected one of create,'],
    [
      [
        { id: 'a', importMode: 'create' },
        { id: 'b c', importMode: 'create' },
      ],
      '[1].id: character " "',
    ],
    [
      [{ id: 'a', importMode: 'updateIfMatchETag' }],
      "[0].eTag: required when importMode is 'updateIfMatchETag'",
    ],
    [[{ id: 'a', importMode: 'create', tags: {} }], '[0].tags: unknown field'],
  ])('rejects %j naming the item and field', (body, message) => {
    expect(errorOf(() => parseBulkBody(body)).message).toContain(message);
  });
});
