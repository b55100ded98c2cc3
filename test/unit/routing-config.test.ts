import { describe, expect, it } from 'vitest';
import {
  DEFAULT_ROUTING,
  ENDPOINT_STREAMS_ENV,
  endpointStreamsFromEnv,
  ROUTING_ENV,
  routingConfigSchema,
  routingFromEnv,
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
    [{ routes: [{ name: 'r', source: 'TwinChangeEvents', endpointNames: ['events'] }] }, 'routes.0.source'],
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
    [{ endpoints: [{ name: 'q', type: 'sqs' }] }, 'endpoints.0.type'],
    [
      { enrichments: [{ key: 'k', value: '$twin.tags.x', endpointNames: ['events'] }] },
      'enrichments.0.value: $twin values need device twins',
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

  it('reads the router environment, failing loudly on bad values', () => {
    expect(routingFromEnv({})).toEqual({ hubName: 'serverless-iot-hub', routing: DEFAULT_ROUTING });
    const routing = routingConfigSchema.parse({
      endpoints: [hot],
      routes: [{ name: 'r', endpointNames: ['hot'] }],
    });
    expect(routingFromEnv({ [ROUTING_ENV]: JSON.stringify({ hubName: 'h', routing }) })).toEqual({
      hubName: 'h',
      routing,
    });
    expect(() => routingFromEnv({ [ROUTING_ENV]: '{' })).toThrow(/not JSON/);
    expect(() =>
      routingFromEnv({ [ROUTING_ENV]: JSON.stringify({ hubName: 'h', routing: { routes: 3 } }) }),
    ).toThrow(/routes/);
    expect(endpointStreamsFromEnv({ [ENDPOINT_STREAMS_ENV]: '{"hot":"stream-1"}' })).toEqual({
      hot: 'stream-1',
    });
    expect(() => endpointStreamsFromEnv({ [ENDPOINT_STREAMS_ENV]: '{"hot":3}' })).toThrow(
      ENDPOINT_STREAMS_ENV,
    );
  });
});
