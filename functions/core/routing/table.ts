import { BUILT_IN_ENDPOINT, type RouteSource, type RoutingConfig } from './config.ts';
import type { RoutingMessage } from './message.ts';
import { type CompiledRouteCondition, compileRouteCondition } from './query.ts';

/** The routing configuration compiled once (at cold start): which endpoints a message goes to, and how it is enriched there. */
export interface CompiledRouting {
  /**
   * The endpoints `message` from `source` goes to, each once, in route order: every enabled route
   * of that source whose condition holds; when none does, a device message goes to the built-in
   * endpoint (`events`) if the fallback route is on, else nowhere (dropped, as IoT Hub drops it).
   * The fallback route takes device messages only, as in IoT Hub: an unrouted lifecycle or
   * connection-state event goes nowhere.
   */
  endpointsFor(message: RoutingMessage, source?: RouteSource): string[];
  /** Application properties of the message on `endpoint`: its own, with the endpoint's enrichments set over them. */
  enrich(endpoint: string, properties: Readonly<Record<string, string>>): Readonly<Record<string, string>>;
  /** Whether any enabled route reads `$body` (the router can skip decoding bodies otherwise). */
  readonly usesBody: boolean;
}

interface CompiledRoute {
  readonly name: string;
  readonly source: RouteSource;
  readonly endpoint: string;
  readonly condition: CompiledRouteCondition;
}

/**
 * Compiles routes and enrichments. Conditions were validated when the configuration was parsed, so
 * this does not fail for a parsed config.
 *
 * @example
 * const routing = compileRouting(routingConfigSchema.parse(cfg), 'my-hub');
 * for (const endpoint of routing.endpointsFor(message)) write(endpoint, routing.enrich(endpoint, message.properties));
 */
export function compileRouting(config: RoutingConfig, hubName: string): CompiledRouting {
  const routes: CompiledRoute[] = config.routes
    .filter((r) => r.isEnabled)
    .map((r) => ({
      name: r.name,
      source: r.source,
      endpoint: r.endpointNames[0] ?? BUILT_IN_ENDPOINT,
      condition: compileRouteCondition(r.condition),
    }));
  const enrichments = new Map<string, [string, string][]>();
  for (const e of config.enrichments) {
    // `$iothubname` is IoT Hub's only value placeholder besides `$twin` paths; anything else is static.
    const value = e.value.toLowerCase() === '$iothubname' ? hubName : e.value;
    for (const endpoint of e.endpointNames) {
      const list = enrichments.get(endpoint) ?? [];
      list.push([e.key, value]);
      enrichments.set(endpoint, list);
    }
  }
  const fallback = config.fallbackRoute.isEnabled;
  return {
    usesBody: routes.some((r) => r.condition.usesBody),
    endpointsFor(message, source = 'DeviceMessages') {
      const out: string[] = [];
      for (const route of routes) {
        if (route.source !== source || out.includes(route.endpoint)) continue;
        if (route.condition.evaluate(message)) out.push(route.endpoint);
      }
      if (out.length === 0 && fallback && source === 'DeviceMessages') out.push(BUILT_IN_ENDPOINT);
      return out;
    },
    enrich(endpoint, properties) {
      const extra = enrichments.get(endpoint);
      if (extra === undefined) return properties;
      return { ...properties, ...Object.fromEntries(extra) };
    },
  };
}
