import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../functions/core/errors.ts';
import {
  formatDeviceConnectionString,
  formatServiceConnectionString,
  parseDeviceConnectionString,
  parseServiceConnectionString,
} from '../../functions/core/identity/connection-string.ts';

const key = Buffer.alloc(32, 3).toString('base64');

describe('device connection strings', () => {
  it('parses a SAS key string, keeping = padding in the key', () => {
    expect(parseDeviceConnectionString(`HostName=localhost;DeviceId=dev-1;SharedAccessKey=${key}`)).toEqual({
      hostName: 'localhost',
      deviceId: 'dev-1',
      sharedAccessKey: key,
    });
  });

  it('parses x509=true (any case) and a SAS token string', () => {
    expect(parseDeviceConnectionString('HostName=h.example.com;DeviceId=d;X509=true')).toEqual({
      hostName: 'h.example.com',
      deviceId: 'd',
      x509: true,
    });
    const sas = 'SharedAccessSignature sr=h%2Fdevices%2Fd&sig=abc%3D&se=1';
    expect(parseDeviceConnectionString(`HostName=h;DeviceId=d;SharedAccessSignature=${sas}`)).toMatchObject({
      sharedAccessSignature: sas,
    });
  });

  it('round-trips through format, including a port and a trailing ;', () => {
    const value = { hostName: 'localhost:8883', deviceId: 'a.b@c', sharedAccessKey: key };
    const text = formatDeviceConnectionString(value);
    expect(text).toBe(`HostName=localhost:8883;DeviceId=a.b@c;SharedAccessKey=${key}`);
    expect(parseDeviceConnectionString(`${text};`)).toEqual(value);
    expect(formatDeviceConnectionString({ hostName: 'h', deviceId: 'd', x509: true })).toBe(
      'HostName=h;DeviceId=d;x509=true',
    );
  });

  it.each([
    ['', /connection string: is empty/],
    ['DeviceId=d;SharedAccessKey=KEY', /HostName is missing/],
    ['HostName=h;SharedAccessKey=KEY', /DeviceId is missing/],
    ['HostName=h;DeviceId=d', /one of SharedAccessKey, SharedAccessSignature or x509=true is missing/],
    ['HostName=h;DeviceId=d;SharedAccessKey=KEY;x509=true', /only one of/],
    ['HostName=h;DeviceId=d;SharedAccessKey=short', /SharedAccessKey is not a base64 key of 16-64 bytes/],
    ['HostName=h;DeviceId=d;x509=yes', /x509 must be 'true'/],
    ['HostName=h;DeviceId=a b;x509=true', /DeviceId: character " " at position 1/],
    ['HostName=h;HostName=h;DeviceId=d;x509=true', /HostName appears twice/],
    ['HostName=;DeviceId=d;x509=true', /HostName is empty/],
    ['HostName=h/x;DeviceId=d;x509=true', /HostName 'h\/x' is not a host name/],
    ['HostName=h;DeviceId=d;ModuleId=m;x509=true', /unknown key 'ModuleId'/],
    ['HostName=h;DeviceId=d;garbage', /'garbage' is not a Key=value pair/],
  ])('rejects %j naming the key', (text, message) => {
    const input = text.replace('KEY', key);
    expect(() => parseDeviceConnectionString(input)).toThrow(ValidationError);
    expect(() => parseDeviceConnectionString(input)).toThrow(message);
  });

  it('refuses to format an invalid value', () => {
    expect(() => formatDeviceConnectionString({ hostName: 'h', deviceId: 'd' })).toThrow(/is missing/);
  });
});

describe('service connection strings', () => {
  it('parses and formats', () => {
    const text = `HostName=localhost;SharedAccessKeyName=service;SharedAccessKey=${key}`;
    const parsed = parseServiceConnectionString(text);
    expect(parsed).toEqual({ hostName: 'localhost', sharedAccessKeyName: 'service', sharedAccessKey: key });
    expect(formatServiceConnectionString(parsed)).toBe(text);
  });

  it.each([
    [`HostName=h;SharedAccessKey=${key}`, /SharedAccessKeyName is missing/],
    ['HostName=h;SharedAccessKeyName=service', /SharedAccessKey is missing/],
    [`HostName=h;SharedAccessKeyName=a b;SharedAccessKey=${key}`, /SharedAccessKeyName must be/],
    [`HostName=h;DeviceId=d;SharedAccessKeyName=s;SharedAccessKey=${key}`, /unknown key 'DeviceId'/],
  ])('rejects %j', (text, message) => {
    expect(() => parseServiceConnectionString(text)).toThrow(message);
  });
});
