import { describe, expect, it } from 'vitest';
import {
  InvalidPropertyBagError,
  PROPERTY_LIMITS,
  parsePropertyBag,
  SYSTEM_PROPERTY_KEYS,
} from '../../functions/core/d2c/property-bag.ts';
import { HubError, LimitExceededError, ValidationError } from '../../functions/core/errors.ts';

/** The HubError that parsing `bag` throws. */
function bagError(bag: string): HubError {
  try {
    parsePropertyBag(bag);
  } catch (error) {
    if (error instanceof HubError) return error;
    throw error;
  }
  throw new Error(`bag was accepted: ${bag}`);
}

const props = (n: number, prefix = 'p') =>
  Array.from({ length: n }, (_, i) => `${prefix}${i}=${i}`).join('&');

describe('parsePropertyBag', () => {
  it('returns empty system and application properties for an empty bag', () => {
    expect(parsePropertyBag('')).toEqual({ system: {}, application: {} });
  });

  it('splits system and application properties', () => {
    expect(parsePropertyBag('$.ct=application%2Fjson&alert=high')).toEqual({
      system: { 'content-type': 'application/json' },
      application: { alert: 'high' },
    });
  });

  it('maps every $. key to its IoT Hub system property name', () => {
    const bag = Object.keys(SYSTEM_PROPERTY_KEYS)
      .map((key, i) => `${key}=v${i}`)
      .join('&');
    const expected = Object.fromEntries(
      Object.values(SYSTEM_PROPERTY_KEYS).map((name, i) => [name, `v${i}`]),
    );
    expect(parsePropertyBag(bag)).toEqual({ system: expected, application: {} });
  });

  it('knows the documented system keys', () => {
    expect(SYSTEM_PROPERTY_KEYS).toEqual({
      '$.mid': 'message-id',
      '$.cid': 'correlation-id',
      '$.uid': 'user-id',
      '$.to': 'to',
      '$.ct': 'content-type',
      '$.ce': 'content-encoding',
      '$.exp': 'absolute-expiry-time',
      '$.ctime': 'iothub-creation-time-utc',
      '$.ifid': 'iothub-interface-id',
    });
  });

  it('URL-decodes names and values', () => {
    expect(parsePropertyBag('na%2Fme=hello%20world%26more%3D1&city=M%C3%BCnchen')).toEqual({
      system: {},
      application: { 'na/me': 'hello world&more=1', city: 'München' },
    });
  });

  it('URL-decodes a percent-encoded $. key into a system property', () => {
    expect(parsePropertyBag('%24.mid=m-1').system).toEqual({ 'message-id': 'm-1' });
  });

  it("keeps '+' literal (spaces are %20 in IoT Hub bags)", () => {
    expect(parsePropertyBag('expr=a+b&c%2Bd=1').application).toEqual({ expr: 'a+b', 'c+d': '1' });
  });

  it('gives an empty value to `k=` and to a key without =', () => {
    expect(parsePropertyBag('a=&b&$.cid=')).toEqual({
      system: { 'correlation-id': '' },
      application: { a: '', b: '' },
    });
  });

  it('keeps everything after the first = as the value', () => {
    expect(parsePropertyBag('q=a=b').application).toEqual({ q: 'a=b' });
  });

  it('skips empty pairs between separators', () => {
    expect(parsePropertyBag('&a=1&&b=2&').application).toEqual({ a: '1', b: '2' });
  });

  it('refuses an unknown $. key, naming it', () => {
    const error = bagError('$.x=1');
    expect(error).toBeInstanceOf(InvalidPropertyBagError);
    expect(error.code).toBe('InvalidPropertyBag');
    expect(error.message).toBe("invalid property bag: unknown system property '$.x'");
    expect(error.context).toEqual({ name: '$.x' });
  });

  it('refuses a misspelt system key rather than treating it as an application property', () => {
    expect(bagError('$.CT=text%2Fplain').message).toContain("unknown system property '$.CT'");
  });

  it.each([
    ['value', 'k=%zz', '%zz'],
    ['value', 'k=100%', '100%'],
    ['name', '%E0%A4%A=1', '%E0%A4%A'],
    ['value', 'k=%C3', '%C3'],
  ])('refuses bad percent-encoding in a %s (%s)', (what, bag, part) => {
    const error = bagError(bag);
    expect(error.code).toBe('InvalidPropertyBag');
    expect(error.message).toBe(`invalid property bag: ${what} '${part}' is not valid percent-encoding`);
    expect(error.context.part).toBe(part);
  });

  it('refuses an empty name', () => {
    for (const bag of ['=v', 'a=1&=2', '=']) {
      const error = bagError(bag);
      expect(error.code).toBe('InvalidPropertyBag');
      expect(error.message).toBe(`invalid property bag: a property has an empty name in '${bag}'`);
    }
  });

  it('refuses names outside printable ASCII', () => {
    expect(bagError('caf%C3%A9=1').message).toContain(
      "property name 'café' has characters outside printable ASCII",
    );
    expect(bagError('a%20b=1').message).toContain('outside printable ASCII');
  });

  it(`accepts a name of ${PROPERTY_LIMITS.maxNameLength} characters and refuses one more`, () => {
    const ok = 'n'.repeat(PROPERTY_LIMITS.maxNameLength);
    expect(parsePropertyBag(`${ok}=1`).application).toEqual({ [ok]: '1' });
    const error = bagError(`${ok}x=1`);
    expect(error.code).toBe('InvalidPropertyBag');
    expect(error.message).toBe(
      `invalid property bag: property name '${'n'.repeat(32)}...' is longer than 128 characters`,
    );
  });

  it(`accepts a value of ${PROPERTY_LIMITS.maxValueLength} characters and refuses one more`, () => {
    const ok = 'v'.repeat(PROPERTY_LIMITS.maxValueLength);
    expect(parsePropertyBag(`k=${ok}`).application.k).toHaveLength(8192);
    const error = bagError(`k=${ok}v`);
    expect(error.code).toBe('InvalidPropertyBag');
    expect(error.message).toBe("invalid property bag: value of property 'k' is longer than 8192 characters");
  });

  it('measures the value length after decoding', () => {
    const encoded = '%41'.repeat(PROPERTY_LIMITS.maxValueLength);
    expect(parsePropertyBag(`k=${encoded}`).application.k).toBe('A'.repeat(8192));
  });

  it('accepts 64 application properties, plus system properties that do not count', () => {
    const bag = parsePropertyBag(`${props(64)}&$.mid=m&$.ct=text%2Fplain`);
    expect(Object.keys(bag.application)).toHaveLength(64);
    expect(Object.keys(bag.system)).toHaveLength(2);
  });

  it('refuses a 65th application property with LimitExceededError', () => {
    const error = bagError(props(65));
    expect(error).toBeInstanceOf(LimitExceededError);
    expect(error).not.toBeInstanceOf(ValidationError);
    expect(error.code).toBe('TooManyProperties');
    expect(error.message).toBe('a message may carry at most 64 application properties');
    expect(error.context).toEqual({ limit: 64 });
  });

  it('is an InvalidPropertyBagError, a ValidationError', () => {
    const error = bagError('$.nope=1');
    expect(error).toBeInstanceOf(ValidationError);
    expect(error.name).toBe('InvalidPropertyBagError');
  });
});
