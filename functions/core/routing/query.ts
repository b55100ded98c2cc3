/**
 * IoT Hub's message routing query language, compiled once into a predicate that is evaluated per
 * message. Semantics follow the IoT Hub documentation ("IoT Hub message routing query syntax" and
 * the "Expressions and conditions" part of the IoT Hub query language):
 *
 * - `$name` reads a system property (`$contentType`, `$connectionDeviceId`, `$enqueuedTime`,
 *   `$iothub-connection-auth-method`, ...), falling back to an application property named `$name`;
 *   a bare `name` reads an application property. Names match ignoring case; values are strings.
 * - `$body.a.b[0]["odd key"]` reads the JSON body, only for content type `application/json` and
 *   encoding UTF-8, UTF-16 or UTF-32; `$twin.tags...` / `$twin.properties.desired|reported...`
 *   read the twin.
 * - Anything missing, or an operator applied to the wrong types, is `undefined`; a condition
 *   matches only when it evaluates to exactly `true`.
 *
 * Choices where the IoT Hub documentation is silent: body and twin keys match exactly first, then
 * ignoring case; UTF-16/32 bodies without a byte order mark are little-endian (.NET's default);
 * `=` compares arrays and objects deeply; only numbers and strings are ordered; string literals
 * also accept SQL's doubled quote (`'it''s'`); `$` names may contain hyphens (`$dt-subject`), bare
 * application property names may not (`a-b` is subtraction); nesting is limited to 64 levels.
 */
import { RouteQueryError } from './errors.ts';
import { collectUses, compileExpr } from './evaluate.ts';
import type { RoutingMessage } from './message.ts';
import { parseCondition } from './parser.ts';

export { RouteQueryError } from './errors.ts';
export type { RoutingMessage } from './message.ts';

/**
 * Decides whether a message takes a route. Pure and synchronous; safe to call concurrently.
 *
 * @example
 * const hot: RoutePredicate = compileRouteCondition("processingPath = 'hot'").evaluate;
 * messages.filter(hot);
 */
export type RoutePredicate = (message: RoutingMessage) => boolean;

/**
 * A route condition compiled once (at route configuration time) and evaluated many times.
 *
 * @example
 * const route = compileRouteCondition("$body.Weather.Temperature > 40 AND $twin.tags.floor = '1'");
 * const twin = route.usesTwin ? await loadTwin(deviceId) : undefined;
 * if (route.evaluate({ ...message, twin })) await endpoint.send(message);
 */
export interface CompiledRouteCondition {
  /** The condition text as given. */
  readonly condition: string;
  /** The condition reads `$body`: the router may skip bodies of messages it never inspects. */
  readonly usesBody: boolean;
  /** The condition reads `$twin`: the router must load the device (or module) twin first. */
  readonly usesTwin: boolean;
  /** The predicate; a free function (no `this`), so it can be passed around directly. */
  readonly evaluate: RoutePredicate;
}

const MATCH_ALL: RoutePredicate = () => true;

/**
 * Compiles an IoT Hub route condition. An empty (or blank) condition matches every message, as
 * does `true`. Throws {@link RouteQueryError} (a `ValidationError`) for syntax errors, unknown
 * functions and wrong argument counts, naming the 1-based position; evaluation itself never
 * throws.
 *
 * @example
 * const route = compileRouteCondition("$connectionDeviceId = 'dev-1' AND STARTS_WITH(level, 'crit')");
 * route.evaluate({
 *   systemProperties: { 'iothub-connection-device-id': 'dev-1' },
 *   properties: { level: 'critical' },
 *   body: new Uint8Array(),
 * }); // true
 */
export function compileRouteCondition(condition: string): CompiledRouteCondition {
  if (typeof condition !== 'string') {
    throw new RouteQueryError('expected the condition to be a string at position 1', 1, String(condition));
  }
  if (condition.trim() === '') {
    return Object.freeze({ condition, usesBody: false, usesTwin: false, evaluate: MATCH_ALL });
  }
  const expr = parseCondition(condition);
  const evaluator = compileExpr(expr);
  const { usesBody, usesTwin } = collectUses(expr);
  const evaluate: RoutePredicate = (message) => evaluator(message) === true;
  return Object.freeze({ condition, usesBody, usesTwin, evaluate });
}

/**
 * Whether a condition reads the twin (`$twin...`). Compiles the condition, so it also throws
 * {@link RouteQueryError} for an invalid one; prefer `compileRouteCondition(c).usesTwin` when the
 * compiled route is at hand.
 *
 * @example
 * referencesTwin("$twin.tags.building = '43'"); // true
 */
export function referencesTwin(condition: string): boolean {
  return compileRouteCondition(condition).usesTwin;
}

/**
 * Whether a condition reads the message body (`$body...`). Throws {@link RouteQueryError} for an
 * invalid condition.
 *
 * @example
 * referencesBody("$body.temperature > 30"); // true
 * referencesBody("processingPath = 'hot'"); // false
 */
export function referencesBody(condition: string): boolean {
  return compileRouteCondition(condition).usesBody;
}
