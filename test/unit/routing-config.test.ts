import { describe, expect, it } from 'vitest';
import { HubError } from '../../functions/core/errors.ts';
import {
  DEFAULT_ROUTING,
  ENDPOINTS_ENV,
  endpointTargetsFromEnv,
  parseRouterRouting,
  ROUTING_FILE,
  routingConfigSchema,
  S3_MAX_CHUNK_BYTES,
  S3_MIN_CHUNK_BYTES,
} from '../../functions/core/routing/config.ts';

function issues(config: unknown): string[] {
  const result = routingConfigSchema.safeParse(config);
  if (result.success) return [];
  return result.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
}

const hot = { name: 'hot', type: 'kinesis' };

describe('routing configuration', () => {
  it('defaults to no routes with the fallback route on', () => {
    expect(DEFAULT_ROUTING).toEqual({
      endpoints: [],
      routes: [],
      fallbackRoute: { isEnabled: true },
      enrichments: [],
    });
  });

  it('fills route defaults: source DeviceMessages, condition true, enabled', () => {
    const parsed = routingConfigSchema.parse({ routes: [{ name: 'all', endpointNames: ['events'] }] });
    expect(parsed.routes[0]).toEqual({
      name: 'all',
      source: 'DeviceMessages',
      condition: 'true',
      endpointNames: ['events'],
      isEnabled: true,
    });
  });

  it.each([
    [
      { routes: [{ name: 'r', condition: "a = 'x' AND (", endpointNames: ['events'] }] },
      'routes.0.condition: route condition: expected an expression at position 14',
    ],
    [{ routes: [{ name: 'r', condition: 'NOPE(a)', endpointNames: ['events'] }] }, 'routes.0.condition'],
    [
      { routes: [{ name: 'r', endpointNames: ['missing'] }] },
      "routes.0.endpointNames.0: unknown endpoint 'missing'",
    ],
    [{ routes: [{ name: 'r', endpointNames: ['events', 'events'] }] }, 'routes.0.endpointNames'],
    [{ routes: [{ name: 'r', endpointNames: [] }] }, 'routes.0.endpointNames'],
    [{ routes: [{ name: 'r', source: 'twinChanges', endpointNames: ['events'] }] }, 'routes.0.source'],
    [{ routes: [{ name: 'r', endpointNames: ['events'], colour: 'red' }] }, 'routes.0'],
    [{ routes: [{ name: 'a b', endpointNames: ['events'] }] }, 'routes.0.name'],
    [
      {
        routes: [
          { name: 'r', endpointNames: ['events'] },
          { name: 'R', endpointNames: ['events'] },
        ],
      },
      "routes.1.name: duplicate name 'R'",
    ],
    [{ endpoints: [hot, hot] }, "endpoints.1.name: duplicate name 'hot'"],
    [{ endpoints: [{ name: 'events', type: 'kinesis' }] }, 'endpoints.0.name'],
    [{ endpoints: [{ name: 'q', type: 'kafka' }] }, 'endpoints.0.type'],
    [{ endpoints: [{ name: 'q' }] }, 'endpoints.0.type'],
    [{ endpoints: [{ name: 'q', type: 'sqs', fifo: 'yes' }] }, 'endpoints.0.fifo'],
    [{ endpoints: [{ name: 't', type: 'sns', fifo: 1 }] }, 'endpoints.0.fifo'],
    [{ endpoints: [{ name: 'q', type: 'sqs', retentionDays: 3 }] }, 'endpoints.0: Unrecognized key'],
    [{ endpoints: [{ name: 'k', type: 'kinesis', fifo: true }] }, 'endpoints.0: Unrecognized key'],
    [
      { endpoints: [{ name: 'b', type: 's3', maxChunkSizeInBytes: S3_MIN_CHUNK_BYTES - 1 }] },
      'endpoints.0.maxChunkSizeInBytes',
    ],
    [
      { endpoints: [{ name: 'b', type: 's3', maxChunkSizeInBytes: S3_MAX_CHUNK_BYTES + 1 }] },
      'endpoints.0.maxChunkSizeInBytes',
    ],
    [
      { endpoints: [{ name: 'b', type: 's3', maxChunkSizeInBytes: 100_000.5 }] },
      'endpoints.0.maxChunkSizeInBytes',
    ],
    [{ endpoints: [{ name: 'b', type: 's3', format: 'csv' }] }, 'endpoints.0.format'],
    [{ endpoints: [{ name: 'events', type: 'eventbridge' }] }, 'endpoints.0.name'],
    [
      { routes: [{ name: 'r', source: 'Telemetry', endpointNames: ['events'] }] },
      'routes.0.source: expected one of',
    ],
    [
      { enrichments: [{ key: 'k', value: '$twin.tags', endpointNames: ['events'] }] },
      "enrichments.0.value: '$twin.tags' names a whole twin section",
    ],
    [
      { enrichments: [{ key: 'k', value: 'v', endpointNames: ['nope'] }] },
      "enrichments.0.endpointNames.0: unknown endpoint 'nope'",
    ],
    [{ enrichments: [{ key: 'a b', value: 'v', endpointNames: ['events'] }] }, 'enrichments.0.key'],
    [
      { routes: Array.from({ length: 101 }, (_, i) => ({ name: `r${i}`, endpointNames: ['events'] })) },
      'routes',
    ],
    [
      {
        enrichments: Array.from({ length: 11 }, (_, i) => ({
          key: `k${i}`,
          value: 'v',
          endpointNames: ['events'],
        })),
      },
      'enrichments',
    ],
  ])('refuses %j, naming %s', (config, expected) => {
    expect(issues(config).some((i) => i.startsWith(expected))).toBe(true);
  });

  it('accepts 100 routes and 10 enrichments', () => {
    expect(
      issues({
        endpoints: [hot],
        routes: Array.from({ length: 100 }, (_, i) => ({
          name: `r${i}`,
          condition: `n = ${i}`,
          endpointNames: [i % 2 ? 'hot' : 'events'],
        })),
        enrichments: Array.from({ length: 10 }, (_, i) => ({
          key: `k${i}`,
          value: 'v',
          endpointNames: ['hot'],
        })),
      }),
    ).toEqual([]);
  });

  it('fills endpoint defaults per type', () => {
    const parsed = routingConfigSchema.parse({
      endpoints: [
        { name: 'k', type: 'kinesis' },
        { name: 'q', type: 'sqs' },
        { name: 't', type: 'sns' },
        { name: 'b', type: 's3' },
        { name: 'e', type: 'eventbridge' },
      ],
    });
    expect(parsed.endpoints).toEqual([
      { name: 'k', type: 'kinesis', retentionDays: 1 },
      { name: 'q', type: 'sqs', fifo: false },
      { name: 't', type: 'sns', fifo: false },
      { name: 'b', type: 's3', format: 'json', maxChunkSizeInBytes: S3_MAX_CHUNK_BYTES },
      { name: 'e', type: 'eventbridge' },
    ]);
  });

  it('accepts every endpoint type with its options, and the lifecycle and connection state sources', () => {
    const config = {
      endpoints: [
        { name: 'q', type: 'sqs', fifo: true },
        { name: 't', type: 'sns', fifo: true },
        { name: 'b', type: 's3', format: 'avro', maxChunkSizeInBytes: S3_MIN_CHUNK_BYTES },
        { name: 'e', type: 'eventbridge' },
      ],
      routes: [
        { name: 'life', source: 'DeviceLifecycleEvents', endpointNames: ['q'] },
        { name: 'conn', source: 'DeviceConnectionStateEvents', endpointNames: ['t'] },
        { name: 'msgs', source: 'DeviceMessages', endpointNames: ['b'] },
        { name: 'bus', endpointNames: ['e'] },
      ],
    };
    expect(issues(config)).toEqual([]);
    expect(routingConfigSchema.parse(config).routes.map((r) => r.source)).toEqual([
      'DeviceLifecycleEvents',
      'DeviceConnectionStateEvents',
      'DeviceMessages',
      'DeviceMessages',
    ]);
  });
});

/** The HubError that `run` throws; fails the test when it does not throw one. */
function hubError(run: () => unknown): HubError {
  try {
    run();
  } catch (error) {
    if (error instanceof HubError) return error;
    throw error;
  }
  throw new Error('did not throw');
}

describe('router routing file', () => {
  const routing = routingConfigSchema.parse({
    endpoints: [hot],
    routes: [{ name: 'r', endpointNames: ['hot'] }],
  });

  it('reads the hub name and the routing configuration, filling defaults', () => {
    expect(parseRouterRouting(JSON.stringify({ hubName: 'h', routing }))).toEqual({ hubName: 'h', routing });
    expect(
      parseRouterRouting(
        JSON.stringify({ hubName: 'h', routing: { routes: [{ name: 'r', endpointNames: ['events'] }] } }),
      ).routing.routes[0],
    ).toEqual({
      name: 'r',
      source: 'DeviceMessages',
      condition: 'true',
      endpointNames: ['events'],
      isEnabled: true,
    });
  });

  it('means the default routing when absent', () => {
    expect(parseRouterRouting(undefined)).toEqual({
      hubName: 'serverless-iot-hub',
      routing: DEFAULT_ROUTING,
    });
  });

  it('refuses content that is not JSON', () => {
    const error = hubError(() => parseRouterRouting('{'));
    expect(error.code).toBe('InvalidConfiguration');
    expect(error.message).toBe(`${ROUTING_FILE} is not JSON`);
    expect(error.context).toEqual({ file: ROUTING_FILE });
  });

  it('names the bad field by its path under routing', () => {
    const error = hubError(() =>
      parseRouterRouting(
        JSON.stringify({
          hubName: 'h',
          routing: { routes: [{ name: 'r', endpointNames: ['events'], isEnabled: 'no' }] },
        }),
      ),
    );
    expect(error.code).toBe('InvalidConfiguration');
    expect(error.message).toMatch(
      new RegExp(`^${ROUTING_FILE.replace('.', '\\.')}: routing\\.routes\\.0\\.isEnabled: `),
    );
    expect(
      hubError(() => parseRouterRouting(JSON.stringify({ hubName: 'h', routing: { routes: 3 } }))).message,
    ).toMatch(/: routing\.routes: /);
  });

  it('refuses a missing or non-string hubName', () => {
    expect(hubError(() => parseRouterRouting(JSON.stringify({ routing }))).message).toBe(
      `${ROUTING_FILE}: hubName missing`,
    );
    expect(hubError(() => parseRouterRouting(JSON.stringify({ hubName: 3, routing }))).message).toBe(
      `${ROUTING_FILE}: hubName missing`,
    );
  });
});

describe('router endpoint targets', () => {
  it('reads { name: { type, target } } for every endpoint type', () => {
    const targets = {
      k: { type: 'kinesis', target: 'stream-1' },
      q: { type: 'sqs', target: 'https://sqs.eu-west-1.amazonaws.com/123456789012/q' },
      t: { type: 'sns', target: 'arn:aws:sns:eu-west-1:123456789012:t' },
      b: { type: 's3', target: 'bucket-1' },
      e: { type: 'eventbridge', target: 'bus-1' },
    };
    expect(endpointTargetsFromEnv({ [ENDPOINTS_ENV]: JSON.stringify(targets) })).toEqual(targets);
  });

  it('means no endpoints when absent or empty', () => {
    expect(endpointTargetsFromEnv({})).toEqual({});
    expect(endpointTargetsFromEnv({ [ENDPOINTS_ENV]: '' })).toEqual({});
    expect(endpointTargetsFromEnv({ [ENDPOINTS_ENV]: '{}' })).toEqual({});
  });

  it.each([
    ['not JSON', '{'],
    ['a bare stream name (the old format)', '{"hot":"stream-1"}'],
    ['an unknown type', '{"hot":{"type":"kafka","target":"x"}}'],
    ['an empty target', '{"hot":{"type":"sqs","target":""}}'],
    ['an extra key', '{"hot":{"type":"sqs","target":"u","fifo":true}}'],
    ['an array', '[]'],
  ])('refuses %s, naming the variable', (_what, raw) => {
    const error = hubError(() => endpointTargetsFromEnv({ [ENDPOINTS_ENV]: raw }));
    expect(error.code).toBe('InvalidEnvironment');
    expect(error.message).toContain(ENDPOINTS_ENV);
    expect(error.context).toEqual({ key: ENDPOINTS_ENV });
  });
});
