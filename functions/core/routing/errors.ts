import { ValidationError } from '../errors.ts';

/**
 * A route condition that does not compile: bad syntax, an unknown function or a wrong number of
 * arguments. Raised when the route is saved (compiled), never while a message is evaluated, so a
 * bad route is refused up front the way IoT Hub refuses to save it.
 *
 * `context.position` is the 1-based character position of the offending token and
 * `context.condition` the whole condition text.
 *
 * @example
 * try {
 *   compileRouteCondition("a = 'x' AND (b = 1");
 * } catch (err) {
 *   if (err instanceof RouteQueryError) console.log(err.position); // 19
 * }
 */
export class RouteQueryError extends ValidationError {
  /** 1-based character position in the condition where the problem was found. */
  readonly position: number;

  constructor(message: string, position: number, condition: string) {
    super('InvalidRouteCondition', `route condition: ${message}`, { position, condition });
    this.position = position;
  }
}
