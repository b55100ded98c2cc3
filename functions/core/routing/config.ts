import { z } from 'zod';
import { HubError } from '../errors.ts';
import { parseEnrichmentValue } from './enrichment.ts';
import { compileRouteCondition } from './query.ts';

/** Name of the built-in endpoint in routes, as in IoT Hub. */
export const BUILT_IN_ENDPOINT = 'events';
/**
 * File, in the function's code directory (`LAMBDA_TASK_ROOT`), carrying {@link RouterRouting} as
 * JSON into the router. A file, not an environment variable: 100 routes with long conditions do not
 * fit in Lambda's 4 KB of environment.
 */
export const ROUTING_FILE = 'routing.json';
/**
 * Environment variable carrying the routed custom endpoints' targets, known only at deploy time
 * (JSON `{ name: { type, target } }`, see {@link EndpointTarget}).
 */
export const ENDPOINTS_ENV = 'ENDPOINTS';

/** IoT Hub's limits. */
export const MAX_ROUTES = 100;
export const MAX_ENRICHMENTS = 10;
export const MAX_CUSTOM_ENDPOINTS = 10;

const NAME = /^[A-Za-z0-9_-]{1,64}$/;
const name = z.string().regex(NAME, '1-64 letters, digits, hyphens or underscores');
// Enrichment keys become application property names.
const PROPERTY_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,128}$/;

const endpointName = name.refine(
  (n) => n.toLowerCase() !== BUILT_IN_ENDPOINT,
  `'${BUILT_IN_ENDPOINT}' is the built-in endpoint`,
);

/**
 * Smallest and largest S3 object the S3 endpoint writes (IoT Hub: 10-500 MB; a router batch is at
 * most Lambda's 6 MB payload). The smallest still holds the largest envelope (a 256 KB body in base64).
 */
export const S3_MIN_CHUNK_BYTES = 512 * 1024;
export const S3_MAX_CHUNK_BYTES = 5 * 1024 * 1024;

/**
 * A custom endpoint. The hub creates the resource behind it (no physical names) and the router
 * writes each routed message to it as an envelope (`docs/envelope.md`):
 *
 * - `kinesis`: a data stream, partition key = device id (ordered per device, like the built-in endpoint);
 * - `sqs`: a queue; `fifo: true` makes it a FIFO queue with the device id as message group (ordered per device);
 * - `sns`: a topic; `fifo: true` makes it a FIFO topic with the device id as message group;
 * - `s3`: a bucket; each router batch becomes objects of JSON lines or Avro (`format`), cut at
 *   `maxChunkSizeInBytes`, under `{hubName}/{endpoint}/{YYYY}/{MM}/{DD}/{HH}/{mm}/…`;
 * - `eventbridge`: a custom event bus; each message is an event with detail-type `Device Message`.
 */
const endpointSchema = z.discriminatedUnion('type', [
  z.strictObject({
    name: endpointName,
    type: z.literal('kinesis'),
    /** Days the stream keeps records, 1-365. */
    retentionDays: z.number().int().min(1).max(365).default(1),
  }),
  z.strictObject({ name: endpointName, type: z.literal('sqs'), fifo: z.boolean().default(false) }),
  z.strictObject({ name: endpointName, type: z.literal('sns'), fifo: z.boolean().default(false) }),
  z.strictObject({
    name: endpointName,
    type: z.literal('s3'),
    /** `json`: one envelope per line (JSON lines); `avro`: an Avro object container file (`docs/routing.md`). */
    format: z.enum(['json', 'avro']).default('json'),
    maxChunkSizeInBytes: z
      .number()
      .int()
      .min(S3_MIN_CHUNK_BYTES)
      .max(S3_MAX_CHUNK_BYTES)
      .default(S3_MAX_CHUNK_BYTES),
  }),
  z.strictObject({ name: endpointName, type: z.literal('eventbridge') }),
]);

/** A custom endpoint's configuration. */
export type EndpointConfig = z.output<typeof endpointSchema>;
/** The custom endpoint types. */
export type EndpointType = EndpointConfig['type'];

/** Route sources, as IoT Hub names them. */
export const ROUTE_SOURCES = [
  'DeviceMessages',
  'DeviceLifecycleEvents',
  'DeviceConnectionStateEvents',
  'TwinChangeEvents',
] as const;
export type RouteSource = (typeof ROUTE_SOURCES)[number];

/** A route. */
const routeSchema = z.strictObject({
  name,
  source: z
    .string()
    .default('DeviceMessages')
    .pipe(z.enum(ROUTE_SOURCES, { error: () => `expected one of ${ROUTE_SOURCES.join(', ')}` })),
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

/**
 * An enrichment: a static value, `$iothubname` or a `$twin` path (see `enrichment.ts`), added as an
 * application property on the named endpoints.
 */
const enrichmentSchema = z.strictObject({
  key: z.string().regex(PROPERTY_NAME, "1-128 characters of A-Z a-z 0-9 ! # $ % & ' * + - . ^ _ ` | ~"),
  value: z
    .string()
    .min(1)
    .max(4096)
    .superRefine((value, ctx) => {
      try {
        parseEnrichmentValue(value);
      } catch (error) {
        ctx.addIssue({ code: 'custom', message: error instanceof Error ? error.message : String(error) });
      }
    }),
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

/**
 * Whether the router reads device twins: an enabled route's condition or an enrichment reads `$twin`.
 * The stack gives the router twin reads (registry and shadow) only then.
 */
export function routingUsesTwin(config: RoutingConfig): boolean {
  return (
    config.routes.some((r) => r.isEnabled && compileRouteCondition(r.condition).usesTwin) ||
    config.enrichments.some((e) => parseEnrichmentValue(e.value).kind === 'twin')
  );
}

/**
 * Whether an enabled route takes twin change events. The stack puts shadow updates on the ingest
 * stream (the shadow documents rule) only then.
 */
export function routesTwinChangeEvents(config: RoutingConfig): boolean {
  return config.routes.some((r) => r.isEnabled && r.source === 'TwinChangeEvents');
}

/** No routes, fallback on: every message to the built-in endpoint. */
export const DEFAULT_ROUTING: RoutingConfig = routingConfigSchema.parse({});

/** What the router gets in {@link ROUTING_FILE}: the routing config and the hub name (for `$iothubname`). */
export interface RouterRouting {
  readonly hubName: string;
  readonly routing: RoutingConfig;
}

/**
 * Parses the router's {@link ROUTING_FILE} content. Absent (`undefined`) means {@link DEFAULT_ROUTING}.
 * @throws HubError `InvalidConfiguration` naming the bad field.
 */
export function parseRouterRouting(raw: string | undefined): RouterRouting {
  if (raw === undefined) return { hubName: 'serverless-iot-hub', routing: DEFAULT_ROUTING };
  let json: { hubName?: unknown; routing?: unknown };
  try {
    json = JSON.parse(raw) as { hubName?: unknown; routing?: unknown };
  } catch {
    throw new HubError('InvalidConfiguration', `${ROUTING_FILE} is not JSON`, { file: ROUTING_FILE });
  }
  const parsed = routingConfigSchema.safeParse(json.routing);
  if (!parsed.success || typeof json.hubName !== 'string') {
    const issue = parsed.success ? undefined : parsed.error.issues[0];
    throw new HubError(
      'InvalidConfiguration',
      `${ROUTING_FILE}: ${issue ? `routing.${issue.path.join('.')}: ${issue.message}` : 'hubName missing'}`,
      { file: ROUTING_FILE },
    );
  }
  return { hubName: json.hubName, routing: parsed.data };
}

/**
 * Where the router writes one custom endpoint: the stream name (`kinesis`), queue URL (`sqs`),
 * topic ARN (`sns`), bucket name (`s3`) or event bus name (`eventbridge`).
 */
export interface EndpointTarget {
  readonly type: EndpointType;
  readonly target: string;
}

const endpointTargetsSchema = z.record(
  z.string(),
  z.strictObject({
    type: z.enum(['kinesis', 'sqs', 'sns', 's3', 'eventbridge']),
    target: z.string().min(1),
  }),
);

/** Reads {@link ENDPOINTS_ENV}: custom endpoint name → {@link EndpointTarget}. Absent means none. */
export function endpointTargetsFromEnv(env: NodeJS.ProcessEnv): Record<string, EndpointTarget> {
  const raw = env[ENDPOINTS_ENV];
  if (raw === undefined || raw === '') return {};
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    json = undefined;
  }
  const parsed = endpointTargetsSchema.safeParse(json);
  if (!parsed.success) {
    throw new HubError(
      'InvalidEnvironment',
      `environment variable ${ENDPOINTS_ENV} must map endpoint names to { type, target }`,
      { key: ENDPOINTS_ENV },
    );
  }
  return parsed.data;
}
