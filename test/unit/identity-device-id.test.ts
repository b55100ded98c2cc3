import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../functions/core/errors.ts';
import {
  assertCreatableDeviceId,
  DEVICE_ID_SPECIAL_CHARACTERS,
  isMqttSafeDeviceId,
  isValidDeviceId,
  validateDeviceId,
} from '../../functions/core/identity/device-id.ts';

describe('device ids', () => {
  it('accepts letters, digits and every IoT Hub special character', () => {
    expect(isValidDeviceId('Thermostat-01')).toBe(true);
    expect(isValidDeviceId(`a${DEVICE_ID_SPECIAL_CHARACTERS}z`)).toBe(true);
    for (const ch of DEVICE_ID_SPECIAL_CHARACTERS) expect(isValidDeviceId(`d${ch}1`)).toBe(true);
  });

  it('accepts exactly 128 characters and rejects 129', () => {
    expect(isValidDeviceId('a'.repeat(128))).toBe(true);
    expect(isValidDeviceId('a'.repeat(129))).toBe(false);
    expect(() => validateDeviceId('a'.repeat(129))).toThrow(
      /deviceId: must be at most 128 characters, got 129/,
    );
  });

  it('rejects an empty id and non-strings', () => {
    expect(isValidDeviceId('')).toBe(false);
    expect(isValidDeviceId(42)).toBe(false);
    expect(() => validateDeviceId('')).toThrow(/deviceId: must not be empty/);
    expect(() => validateDeviceId(undefined)).toThrow(/deviceId: expected a string/);
  });

  it.each(['a/b', 'a b', 'a;b', 'a&b', 'a\\b', 'é', 'a\u0000', 'a"b', 'a<b', 'a~b', 'a[b'])(
    'rejects %j with the character and position',
    (id) => {
      expect(isValidDeviceId(id)).toBe(false);
      expect(() => validateDeviceId(id)).toThrow(ValidationError);
      expect(() => validateDeviceId(id)).toThrow(/deviceId: character .* at position \d+ is not allowed/);
    },
  );

  it('is case-sensitive and does not normalise', () => {
    expect(validateDeviceId('Dev')).toBe('Dev');
    expect(validateDeviceId('dev')).toBe('dev');
  });

  it('calls + and # not MQTT-safe and refuses them at creation with a clear message', () => {
    expect(isValidDeviceId('a+b')).toBe(true);
    expect(isMqttSafeDeviceId('a+b')).toBe(false);
    expect(isMqttSafeDeviceId('a#b')).toBe(false);
    expect(isMqttSafeDeviceId('a.b@c')).toBe(true);
    expect(isMqttSafeDeviceId('a/b')).toBe(false);
    expect(() => assertCreatableDeviceId('a+b')).toThrow(
      /deviceId: character '\+' at position 1 is an MQTT topic wildcard/,
    );
    expect(() => assertCreatableDeviceId('#')).toThrow(/MQTT topic wildcard/);
    expect(assertCreatableDeviceId('ok-1')).toBe('ok-1');
  });

  it('names the field it was given', () => {
    try {
      validateDeviceId('a b', 'DeviceId');
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).code).toBe('InvalidDeviceId');
      expect((error as ValidationError).message).toMatch(/^DeviceId: /);
      expect((error as ValidationError).context.field).toBe('DeviceId');
    }
  });
});
