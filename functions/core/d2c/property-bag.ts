import { LimitExceededError, ValidationError } from '../errors.ts';

/** IoT Hub's MQTT property-bag keys for system properties, mapped to their message property names. */
export const SYSTEM_PROPERTY_KEYS: Readonly<Record<string, string>> = {
  '$.mid': 'message-id',
  '$.cid': 'correlation-id',
  '$.uid': 'user-id',
  '$.to': 'to',
  '$.ct': 'content-type',
  '$.ce': 'content-encoding',
  '$.exp': 'absolute-expiry-time',
  '$.ctime': 'iothub-creation-time-utc',
  '$.ifid': 'iothub-interface-id',
};

/** Limits on the property bag, as IoT Hub documents them for D2C messages. */
export const PROPERTY_LIMITS = {
  /** Longest property name. */
  maxNameLength: 128,
  /** Longest property value. */
  maxValueLength: 8192,
  /** Most application properties on one message. */
  maxProperties: 64,
} as const;

/** A property bag split into system and application properties. */
export interface PropertyBag {
  readonly system: Record<string, string>;
  readonly application: Record<string, string>;
}

/** Thrown when a property bag cannot be decoded or breaks a limit; `code` is `InvalidPropertyBag`. */
export class InvalidPropertyBagError extends ValidationError {
  constructor(reason: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super('InvalidPropertyBag', `invalid property bag: ${reason}`, context, options);
  }
}

// Printable ASCII except the separators the bag itself uses; IoT Hub allows the RFC 2047 token set.
const NAME = /^[\x21-\x7e]+$/;

function decode(part: string, what: string): string {
  try {
    // '+' stays '+': the bag is URL-encoded with %20 for spaces, as the Azure SDKs produce it.
    return decodeURIComponent(part);
  } catch (cause) {
    throw new InvalidPropertyBagError(`${what} '${part}' is not valid percent-encoding`, { part }, { cause });
  }
}

/**
 * Decodes IoT Hub's URL-encoded `key=value&key2=value2` property bag. Keys starting `$.` are
 * system properties ({@link SYSTEM_PROPERTY_KEYS}); unknown `$.` keys are refused, because a
 * typo there would silently lose a system property. A key without `=` gets the value ''.
 *
 * @example parsePropertyBag('$.ct=application%2Fjson&alert=high')
 *   // { system: { 'content-type': 'application/json' }, application: { alert: 'high' } }
 */
export function parsePropertyBag(bag: string): PropertyBag {
  const system: Record<string, string> = {};
  const application: Record<string, string> = {};
  if (bag === '') return { system, application };
  let count = 0;
  for (const pair of bag.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const name = decode(eq < 0 ? pair : pair.slice(0, eq), 'name');
    const value = eq < 0 ? '' : decode(pair.slice(eq + 1), 'value');
    if (name === '') throw new InvalidPropertyBagError(`a property has an empty name in '${bag}'`, { bag });
    if (name.length > PROPERTY_LIMITS.maxNameLength) {
      throw new InvalidPropertyBagError(
        `property name '${name.slice(0, 32)}...' is longer than ${PROPERTY_LIMITS.maxNameLength} characters`,
        { name },
      );
    }
    if (!NAME.test(name)) {
      throw new InvalidPropertyBagError(`property name '${name}' has characters outside printable ASCII`, {
        name,
      });
    }
    if (value.length > PROPERTY_LIMITS.maxValueLength) {
      throw new InvalidPropertyBagError(
        `value of property '${name}' is longer than ${PROPERTY_LIMITS.maxValueLength} characters`,
        { name },
      );
    }
    if (name.startsWith('$.')) {
      const systemName = SYSTEM_PROPERTY_KEYS[name];
      if (systemName === undefined) {
        throw new InvalidPropertyBagError(`unknown system property '${name}'`, { name });
      }
      system[systemName] = value;
      continue;
    }
    count += 1;
    if (count > PROPERTY_LIMITS.maxProperties) {
      throw new LimitExceededError(
        'TooManyProperties',
        `a message may carry at most ${PROPERTY_LIMITS.maxProperties} application properties`,
        { limit: PROPERTY_LIMITS.maxProperties },
      );
    }
    application[name] = value;
  }
  return { system, application };
}
