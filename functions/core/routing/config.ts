import { z } from 'zod';
import { HubError } from '../errors.ts';
import { compileRouteCondition } from './query.ts';

/** Name of the built-in endpoint in routes, as in IoT Hub. */
export const BUILT_IN_ENDPOINT = 'events';
/** Environment variable carrying {@link RoutingConfig} (JSON) into the router. */
export const ROUTING_ENV = 'ROUTING';
/** Environment variable carrying the custom Kinesis endpoints' stream names (JSON `{ name: streamName }`). */
export const ENDPOINT_STREAMS_ENV = 'ENDPOINT_STREAMS';

/** IoT Hub's limits. */
export const MAX_ROUTES = 100;
export const MAX_ENRICHMENTS = 10;
export const MAX_CUSTOM_ENDPOINTS = 10;

const NAME = /^[A-Za-z0-9_-]{1,64}$/;
const name = z.string().regex(NAME, '1-64 letters, digits, hyphens or underscores');
// Enrichment keys become application property names.
const PROPERTY_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,128}$/;

/**
 * A custom endpoint. Only Kinesis data streams so far (the hub creates the stream; records are
 * envelopes keyed by device id, like the built-in endpoint); the `type` field leaves room for SQS,
 * SNS, S3 and EventBridge.
 */
const endpointSchema = z.strictObject({
  name: name.refine(
    (n) => n.toLowerCase() !== BUILT_IN_ENDPOINT,
    `'${BUILT_IN_ENDPOINT}' is the built-in endpoint`,
  ),
  type: z.literal('kinesis'),
  /** Days the stream keeps records, 1-365. */
  retentionDays: z.number().int().min(1).max(365).default(1),
});

/**
 * A route. Sources other than device telemetry (lifecycle, connection state, twin change events)
 * are not routed yet and are refused here rather than silently ignored.
 */
const routeSchema = z.strictObject({
  name,
  source: z.literal('DeviceMessages').default('DeviceMessages'),
  /** IoT Hub routing query; empty or `true` matches everything. Compiled at synth time. */
  condition: z
    .string()
    .max(1024)
    .default('true')
    .superRefine((condition, ctx) => {
      try {
        compileRouteCondition(condition);
      } catch (error) {
        ctx.addIssue({ code: 'custom', message: error instanceof Error ? error.message : String(error) });
      }
    }),
  /** Endpoints the route sends to: custom endpoint names or `events` (the built-in endpoint). */
  endpointNames: z.array(name).min(1).max(1),
  isEnabled: z.boolean().default(true),
});

/** An enrichment: a static value or `$iothubname`, added as an application property on the named endpoints. */
const enrichmentSchema = z.strictObject({
  key: z.string().regex(PROPERTY_NAME, "1-128 characters of A-Z a-z 0-9 ! # $ % & ' * + - . ^ _ ` | ~"),
  value: z
    .string()
    .min(1)
    .max(4096)
    .refine(
      (v) => !v.toLowerCase().startsWith('$twin'),
      '$twin values need device twins, which the hub does not have yet',
    ),
  endpointNames: z.array(name).min(1),
});

/** The hub's message routing (`hub.routing` in `cdk.json`), IoT Hub's model. */
export const routingConfigSchema = z
  .strictObject({
    endpoints: z.array(endpointSchema).max(MAX_CUSTOM_ENDPOINTS).default([]),
    routes: z.array(routeSchema).max(MAX_ROUTES).default([]),
    /** Messages that match no route go to the built-in endpoint; when off they are dropped (counted and logged), as in IoT Hub. */
    fallbackRoute: z.strictObject({ isEnabled: z.boolean().default(true) }).default({ isEnabled: true }),
    enrichments: z.array(enrichmentSchema).max(MAX_ENRICHMENTS).default([]),
  })
  .superRefine((config, ctx) => {
    const known = new Set([BUILT_IN_ENDPOINT, ...config.endpoints.map((e) => e.name)]);
    const unique = (items: readonly { name: string }[], what: 'endpoints' | 'routes') => {
      const seen = new Set<string>();
      items.forEach((item, i) => {
        const key = item.name.toLowerCase();
        if (seen.has(key))
          ctx.addIssue({ code: 'custom', path: [what, i, 'name'], message: `duplicate name '${item.name}'` });
        seen.add(key);
      });
    };
    unique(config.endpoints, 'endpoints');
    unique(config.routes, 'routes');
    const checkRefs = (names: readonly string[], path: (string | number)[]) => {
      names.forEach((n, j) => {
        if (!known.has(n)) {
          ctx.addIssue({
            code: 'custom',
            path: [...path, j],
            message: `unknown endpoint '${n}' (known: ${[...known].join(', ')})`,
          });
        }
      });
    };
    for (const [i, r] of config.routes.entries()) checkRefs(r.endpointNames, ['routes', i, 'endpointNames']);
    for (const [i, e] of config.enrichments.entries()) {
      checkRefs(e.endpointNames, ['enrichments', i, 'endpointNames']);
    }
  });

/** Validated routing configuration. */
export type RoutingConfig = z.output<typeof routingConfigSchema>;

/** No routes, fallback on: every message to the built-in endpoint. */
export const DEFAULT_ROUTING: RoutingConfig = routingConfigSchema.parse({});

/** What the router gets in {@link ROUTING_ENV}: the routing config and the hub name (for `$iothubname`). */
export interface RouterRouting {
  readonly hubName: string;
  readonly routing: RoutingConfig;
}

/** Reads {@link ROUTING_ENV} at cold start; absent means {@link DEFAULT_ROUTING}. */
export function routingFromEnv(env: NodeJS.ProcessEnv): RouterRouting {
  const raw = env[ROUTING_ENV];
  if (raw === undefined || raw === '') return { hubName: 'serverless-iot-hub', routing: DEFAULT_ROUTING };
  let json: { hubName?: unknown; routing?: unknown };
  try {
    json = JSON.parse(raw) as { hubName?: unknown; routing?: unknown };
  } catch {
    throw new HubError('InvalidEnvironment', `environment variable ${ROUTING_ENV} is not JSON`, {
      key: ROUTING_ENV,
    });
  }
  const parsed = routingConfigSchema.safeParse(json.routing);
  if (!parsed.success || typeof json.hubName !== 'string') {
    const issue = parsed.success ? undefined : parsed.error.issues[0];
    throw new HubError(
      'InvalidEnvironment',
      `environment variable ${ROUTING_ENV}: ${issue ? `${issue.path.join('.')}: ${issue.message}` : 'hubName missing'}`,
      { key: ROUTING_ENV },
    );
  }
  return { hubName: json.hubName, routing: parsed.data };
}

/** Reads {@link ENDPOINT_STREAMS_ENV}: custom endpoint name → Kinesis stream name. */
export function endpointStreamsFromEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const raw = env[ENDPOINT_STREAMS_ENV];
  if (raw === undefined || raw === '') return {};
  const parsed = z.record(z.string(), z.string().min(1)).safeParse(JSON.parse(raw));
  if (!parsed.success) {
    throw new HubError(
      'InvalidEnvironment',
      `environment variable ${ENDPOINT_STREAMS_ENV} must map names to stream names`,
      {
        key: ENDPOINT_STREAMS_ENV,
      },
    );
  }
  return parsed.data;
}
