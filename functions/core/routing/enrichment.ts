import { ValidationError } from '../errors.ts';
import { RouteQueryError } from './errors.ts';
import { walk } from './evaluate.ts';
import type { RoutingMessage } from './message.ts';
import { type PathSegment, parseCondition } from './parser.ts';
import { toQueryValue } from './values.ts';

/**
 * IoT Hub's message enrichment values ("Message enrichments for device-to-cloud IoT Hub messages"):
 *
 * - `$iothubname`: the hub's name;
 * - `$twin.tags.<path>`, `$twin.properties.desired.<path>`, `$twin.properties.reported.<path>`: a
 *   value of the sending device's twin, as read at routing time. Strings are stamped as they are,
 *   numbers and booleans as their JSON text (`42`, `true`). Where IoT Hub documents that it stamps
 *   the path itself (the string `$twin.tags.location`), so does this hub: when the device has no twin
 *   (not registered), the path does not exist, or it names an object or array rather than a primitive;
 * - anything else: a static string.
 *
 * Path steps are written as in route conditions: `.name`, `['odd name']`, `[0]`; names match exactly
 * first, then ignoring case.
 */
export type EnrichmentValue =
  | { readonly kind: 'static'; readonly value: string }
  | { readonly kind: 'hubName' }
  | { readonly kind: 'twin'; readonly text: string; readonly path: readonly PathSegment[] };

/** A value that starts a twin path: `$twin` then `.`, `[` or nothing (matched ignoring case). */
const TWIN_PREFIX = /^\$twin(?:$|[.[])/i;

function invalid(value: string, reason: string): ValidationError {
  return new ValidationError('InvalidEnrichment', `'${value}' ${reason}`, { value });
}

const EXAMPLES = '$twin.tags.<name>, $twin.properties.desired.<name> or $twin.properties.reported.<name>';

function keyIs(segment: PathSegment | undefined, name: string): boolean {
  return segment?.kind === 'key' && segment.key.toLowerCase() === name;
}

/**
 * Reads an enrichment value. `$iothubname` (any case) is the hub name, a value starting with `$twin`
 * must be a twin path under tags, desired or reported properties naming something below the section
 * (a section itself is an object, which IoT Hub never stamps), anything else is static.
 *
 * @throws ValidationError `InvalidEnrichment` naming what is wrong with a `$twin` value.
 * @example
 * parseEnrichmentValue('$twin.tags.location.building'); // { kind: 'twin', path: [tags, location, building] }
 */
export function parseEnrichmentValue(value: string): EnrichmentValue {
  if (value.toLowerCase() === '$iothubname') return { kind: 'hubName' };
  if (!TWIN_PREFIX.test(value)) return { kind: 'static', value };
  let expr: ReturnType<typeof parseCondition>;
  try {
    expr = parseCondition(value);
  } catch (error) {
    if (error instanceof RouteQueryError) {
      throw invalid(value, `is not a twin path: ${error.message.replace(/^route condition: /, '')}`);
    }
    throw error;
  }
  if (expr.type !== 'ref' || expr.root.kind !== 'twin') {
    throw invalid(
      value,
      `is not a twin path but an expression; an enrichment takes a path such as ${EXAMPLES}`,
    );
  }
  const [first, second] = expr.path;
  const depth = keyIs(first, 'tags')
    ? 1
    : keyIs(first, 'properties') && (keyIs(second, 'desired') || keyIs(second, 'reported'))
      ? 2
      : 0;
  if (depth === 0) {
    throw invalid(value, `reads no supported part of the twin: use ${EXAMPLES}`);
  }
  if (expr.path.length === depth) {
    throw invalid(
      value,
      `names a whole twin section, an object, which IoT Hub never stamps: name a value under it, e.g. ${value}.<name>`,
    );
  }
  return { kind: 'twin', text: value, path: expr.path };
}

/**
 * The application property value an enrichment stamps (see {@link EnrichmentValue} for the rules).
 * `twin` is the sending device's twin, `undefined` when it has none.
 */
export function resolveEnrichment(
  value: EnrichmentValue,
  hubName: string,
  twin: RoutingMessage['twin'] | undefined,
): string {
  switch (value.kind) {
    case 'static':
      return value.value;
    case 'hubName':
      return hubName;
    case 'twin': {
      const found = twin === undefined ? undefined : walk(toQueryValue(twin), value.path);
      if (typeof found === 'string') return found;
      if (typeof found === 'number' || typeof found === 'boolean') return JSON.stringify(found);
      return value.text;
    }
  }
}
