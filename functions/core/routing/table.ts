import { BUILT_IN_ENDPOINT, type RouteSource, type RoutingConfig } from './config.ts';
import { type EnrichmentValue, parseEnrichmentValue, resolveEnrichment } from './enrichment.ts';
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
  /**
   * Application properties of the message on `endpoint`: its own, with the endpoint's enrichments set
   * over them. `twin` is the sending device's twin for `$twin` enrichments (`undefined`: it has none).
   * Returns `properties` itself when the endpoint has no enrichments.
   */
  enrich(
    endpoint: string,
    properties: Readonly<Record<string, string>>,
    twin?: RoutingMessage['twin'],
  ): Readonly<Record<string, string>>;
  /** Whether any enabled route reads `$body` (the router can skip decoding bodies otherwise). */
  readonly usesBody: boolean;
  /** Whether any enabled route or enrichment reads `$twin`. */
  readonly usesTwin: boolean;
  /** Whether an enabled route of `source` reads `$twin`: messages from it need their device's twin before evaluation. */
  routesUseTwin(source: RouteSource): boolean;
  /** Whether an enrichment of `endpoint` reads `$twin`: messages to it need their device's twin. */
  enrichmentsUseTwin(endpoint: string): boolean;
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
  const enrichments = new Map<string, [string, EnrichmentValue][]>();
  for (const e of config.enrichments) {
    // `$iothubname` and `$twin` paths are IoT Hub's only value placeholders; anything else is static.
    const value = parseEnrichmentValue(e.value);
    for (const endpoint of e.endpointNames) {
      const list = enrichments.get(endpoint) ?? [];
      list.push([e.key, value]);
      enrichments.set(endpoint, list);
    }
  }
  const twinEnriched = new Set(
    [...enrichments]
      .filter(([, list]) => list.some(([, v]) => v.kind === 'twin'))
      .map(([endpoint]) => endpoint),
  );
  const twinSources = new Set(routes.filter((r) => r.condition.usesTwin).map((r) => r.source));
  const fallback = config.fallbackRoute.isEnabled;
  return {
    usesBody: routes.some((r) => r.condition.usesBody),
    usesTwin: twinSources.size > 0 || twinEnriched.size > 0,
    routesUseTwin: (source) => twinSources.has(source),
    enrichmentsUseTwin: (endpoint) => twinEnriched.has(endpoint),
    endpointsFor(message, source = 'DeviceMessages') {
      const out: string[] = [];
      for (const route of routes) {
        if (route.source !== source || out.includes(route.endpoint)) continue;
        if (route.condition.evaluate(message)) out.push(route.endpoint);
      }
      if (out.length === 0 && fallback && source === 'DeviceMessages') out.push(BUILT_IN_ENDPOINT);
      return out;
    },
    enrich(endpoint, properties, twin) {
      const extra = enrichments.get(endpoint);
      if (extra === undefined) return properties;
      const stamped = extra.map(([key, value]) => [key, resolveEnrichment(value, hubName, twin)]);
      return { ...properties, ...Object.fromEntries(stamped) };
    },
  };
}
