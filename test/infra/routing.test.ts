import type { Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  ENDPOINT_STREAMS_ENV,
  endpointStreamsFromEnv,
  ROUTING_ENV,
  routingFromEnv,
} from '../../functions/core/routing/config.ts';
import { type HubConfigInput, parseHubConfig } from '../../lib/config.ts';
import { LAMBDA_ENVIRONMENT_BYTES, routingEnvironment } from '../../lib/d2c-pipeline.ts';
import { routedEndpointNames } from '../../lib/endpoints.ts';
import type { HubStack } from '../../lib/hub-stack.ts';
import {
  configError as configErrorOf,
  iamStatements,
  logicalId,
  referencedIds,
  synthHub,
  synthWithNag,
} from './hub-template.ts';

/**
 * Three custom endpoints: `hot-path` (a route sends to it, 3 days), `cold_store` (only a disabled
 * route and an enrichment name it) and `unused` (nothing names it); plus a route to `events`.
 */
const ROUTED: HubConfigInput = {
  hubName: 'routing-hub',
  routing: {
    endpoints: [
      { name: 'hot-path', type: 'kinesis', retentionDays: 3 },
      { name: 'cold_store', type: 'kinesis' },
      { name: 'unused', type: 'kinesis', retentionDays: 7 },
    ],
    routes: [
      {
        name: 'hot',
        condition: "$body.temperature > 30 AND level = 'critical'",
        endpointNames: ['hot-path'],
      },
      { name: 'all-events', endpointNames: ['events'] },
      { name: 'archive', endpointNames: ['cold_store'], isEnabled: false },
    ],
    fallbackRoute: { isEnabled: false },
    enrichments: [{ key: 'hub', value: '$iothubname', endpointNames: ['hot-path', 'cold_store'] }],
  },
};

const PUT_ACTIONS = ['kinesis:PutRecord', 'kinesis:PutRecords'];

const EnvironmentSchema = z.object({ Variables: z.record(z.string(), z.unknown()) });

let stack: HubStack;
let template: Template;
let ids: {
  hot: string;
  cold: string;
  unused: string;
  builtIn: string;
  ingest: string;
  feedback: string;
  router: string;
  routerRole: string;
};

beforeAll(() => {
  ({ stack, template } = synthHub(ROUTED));
  const role = stack.d2c.router.function.role;
  if (role === undefined) throw new Error('the router function has no role');
  ids = {
    hot: logicalId(stack.customEndpoints.stream('hot-path')),
    cold: logicalId(stack.customEndpoints.stream('cold_store')),
    unused: logicalId(stack.customEndpoints.stream('unused')),
    builtIn: logicalId(stack.builtInEndpoint.stream),
    ingest: logicalId(stack.d2c.ingestStream),
    feedback: logicalId(stack.c2d.feedbackStream),
    router: logicalId(stack.d2c.router.function),
    routerRole: logicalId(role),
  };
});

/** The router's environment variables as written in the template. */
function routerEnvironment(): Record<string, unknown> {
  const router = template.findResources('AWS::Lambda::Function')[ids.router];
  return EnvironmentSchema.parse(router?.Properties?.Environment).Variables;
}

/** A `Fn::Join` of literal strings and `Ref`s, with each Ref replaced by `<logicalId>`. */
function joinWithRefs(value: unknown): string {
  const join = z.object({ 'Fn::Join': z.tuple([z.literal(''), z.array(z.unknown())]) }).parse(value);
  return join['Fn::Join'][1]
    .map((part) => (typeof part === 'string' ? part : `<${z.object({ Ref: z.string() }).parse(part).Ref}>`))
    .join('');
}

/** `actions on logicalId` for each Allow statement of the router role that names a Kinesis stream. */
function routerStreamGrants(): string[] {
  const streams = new Set(Object.keys(template.findResources('AWS::Kinesis::Stream')));
  return iamStatements(template)
    .filter((s) => s.roles.includes(ids.routerRole) && s.effect === 'Allow')
    .flatMap((s) =>
      referencedIds(s.resources)
        .filter((id) => streams.has(id))
        .flatMap((id) => s.actions.map((a) => `${a} on ${id}`)),
    );
}

describe('custom endpoint streams', () => {
  it('creates one stream per custom endpoint, besides the ingest, built-in and feedback streams', () => {
    const streams = Object.keys(template.findResources('AWS::Kinesis::Stream')).sort();
    expect(streams).toEqual([ids.hot, ids.cold, ids.unused, ids.builtIn, ids.ingest, ids.feedback].sort());
    expect(new Set(streams).size).toBe(6);
  });

  it('derives each construct id from the endpoint name (renaming an endpoint replaces its stream)', () => {
    expect(stack.customEndpoints.stream('hot-path').node.path).toBe(
      'ServerlessIotHub/CustomEndpoints/hot-path/Stream',
    );
    expect(ids.hot).toMatch(/^CustomEndpointshotpathStream[0-9A-F]{8}$/);
    expect(ids.cold).toMatch(/^CustomEndpointscoldstoreStream[0-9A-F]{8}$/);
    expect(() => stack.customEndpoints.stream('events')).toThrow(/no custom endpoint 'events'/);
  });

  it.each([
    ['hot-path', 3],
    ['cold_store', 1],
    ['unused', 7],
  ])('makes %s on-demand, KMS-encrypted with the AWS-managed key, keeping %i day(s)', (name, days) => {
    const stream =
      template.findResources('AWS::Kinesis::Stream')[logicalId(stack.customEndpoints.stream(name))];
    expect(stream?.Properties).toEqual({
      RetentionPeriodHours: days * 24,
      StreamEncryption: { EncryptionType: 'KMS', KeyId: 'alias/aws/kinesis' },
      StreamModeDetails: { StreamMode: 'ON_DEMAND' },
    });
  });

  it('gives the streams no physical name', () => {
    for (const id of [ids.hot, ids.cold, ids.unused]) {
      expect(template.findResources('AWS::Kinesis::Stream')[id]?.Properties?.Name).toBeUndefined();
    }
  });

  it('exports every endpoint stream, routed or not, in the CustomEndpointStreams output', () => {
    const output = template.findOutputs('CustomEndpointStreams').CustomEndpointStreams;
    expect(JSON.parse(joinWithRefs(output?.Value))).toEqual({
      'hot-path': `<${ids.hot}>`,
      cold_store: `<${ids.cold}>`,
      unused: `<${ids.unused}>`,
    });
  });

  it('exports an empty mapping and creates no stream when there are no custom endpoints', () => {
    const plain = synthHub({}).template;
    expect(plain.findOutputs('CustomEndpointStreams').CustomEndpointStreams?.Value).toBe('{}');
    expect(Object.keys(plain.findResources('AWS::Kinesis::Stream'))).toHaveLength(3);
  });
});

describe('router environment', () => {
  it('carries the hub name and the validated routing configuration in ROUTING', () => {
    const env = routerEnvironment();
    const raw = env[ROUTING_ENV];
    expect(typeof raw).toBe('string');
    expect(JSON.parse(String(raw))).toEqual({
      hubName: 'routing-hub',
      routing: parseHubConfig(ROUTED).routing,
    });
    // What the router itself reads back.
    expect(routingFromEnv({ [ROUTING_ENV]: String(raw) })).toEqual({
      hubName: 'routing-hub',
      routing: parseHubConfig(ROUTED).routing,
    });
  });

  it('maps only the routed endpoint to its stream in ENDPOINT_STREAMS', () => {
    const mapping = JSON.parse(joinWithRefs(routerEnvironment()[ENDPOINT_STREAMS_ENV]));
    expect(mapping).toEqual({ 'hot-path': `<${ids.hot}>` });
    expect(endpointStreamsFromEnv({ [ENDPOINT_STREAMS_ENV]: JSON.stringify(mapping) })).toEqual(mapping);
  });

  it('keeps the built-in stream name for fallback and events routes', () => {
    expect(routerEnvironment().BUILTIN_STREAM_NAME).toEqual({ Ref: ids.builtIn });
  });

  it('passes the default routing and an empty ENDPOINT_STREAMS when hub.routing is absent', () => {
    const plain = synthHub({});
    const router =
      plain.template.findResources('AWS::Lambda::Function')[logicalId(plain.stack.d2c.router.function)];
    const env = EnvironmentSchema.parse(router?.Properties?.Environment).Variables;
    expect(JSON.parse(String(env[ROUTING_ENV]))).toEqual({
      hubName: 'serverless-iot-hub',
      routing: { endpoints: [], routes: [], fallbackRoute: { isEnabled: true }, enrichments: [] },
    });
    expect(env[ENDPOINT_STREAMS_ENV]).toBe('{}');
  });
});

describe('router grants', () => {
  it('lists the routed endpoints: enabled routes only, not events', () => {
    expect(routedEndpointNames(parseHubConfig(ROUTED).routing)).toEqual(['hot-path']);
  });

  it('lets the router put records on exactly the routed endpoint and the built-in endpoint', () => {
    const puts = routerStreamGrants().filter((g) => PUT_ACTIONS.some((a) => g.startsWith(`${a} on `)));
    expect(puts.sort()).toEqual(
      PUT_ACTIONS.flatMap((a) => [`${a} on ${ids.hot}`, `${a} on ${ids.builtIn}`]).sort(),
    );
  });

  it('gives the router nothing on an unrouted endpoint (disabled route, enrichment only, or unused)', () => {
    const touched = routerStreamGrants().map((g) => g.split(' on ')[1]);
    expect(touched).not.toContain(ids.cold);
    expect(touched).not.toContain(ids.unused);
  });

  it("grants no wildcard action ('*' or 'service:*') anywhere", () => {
    const wildcards = iamStatements(template).flatMap((s) =>
      s.actions.filter((a) => a === '*' || a.endsWith(':*')).map((a) => `${s.source}: ${a}`),
    );
    expect(wildcards).toEqual([]);
  });

  it('needs no custom endpoint for a route to events', () => {
    const { stack: eventsOnly, template: t } = synthHub({
      routing: { routes: [{ name: 'to-events', condition: "level = 'info'", endpointNames: ['events'] }] },
    });
    expect(Object.keys(t.findResources('AWS::Kinesis::Stream'))).toHaveLength(3);
    expect(eventsOnly.customEndpoints.streams.size).toBe(0);
    const router = t.findResources('AWS::Lambda::Function')[logicalId(eventsOnly.d2c.router.function)];
    expect(EnvironmentSchema.parse(router?.Properties?.Environment).Variables[ENDPOINT_STREAMS_ENV]).toBe(
      '{}',
    );
  });
});

describe('cdk-nag with routes configured', () => {
  it('synthesizes with no unacknowledged AwsSolutions or Serverless finding', () => {
    const { error, report, findings } = synthWithNag(ROUTED);
    expect(error).toBeUndefined();
    expect(findings).toEqual([]);
    // A clean synth reports no plugin at all (nag.test.ts shows a finding does fail it).
    expect(report.pluginReports.every((p) => p.conclusion === 'success')).toBe(true);
  });
});

describe('hub.routing configuration errors', () => {
  const configError = (raw: unknown): string => configErrorOf(raw).message;

  const route = (name: string, endpointNames: string[], condition?: string) => ({
    name,
    endpointNames,
    ...(condition === undefined ? {} : { condition }),
  });

  it('fills the default routing when hub.routing is absent', () => {
    expect(parseHubConfig({}).routing).toEqual({
      endpoints: [],
      routes: [],
      fallbackRoute: { isEnabled: true },
      enrichments: [],
    });
  });

  it('names the route whose condition does not compile, with the position', () => {
    const message = configError({
      routing: {
        routes: [
          route('a', ['events']),
          route('b', ['events'], 'true'),
          route('c', ['events'], '$body.temp >'),
        ],
      },
    });
    expect(message).toMatch(
      /hub\.routing\.routes\.2\.condition: route condition: expected .* at position 13/,
    );
    expect(message).not.toContain('routes.0');
    expect(message).not.toContain('routes.1');
  });

  it('names an unknown endpoint by its route and index', () => {
    const message = configError({ routing: { routes: [route('a', ['x'])] } });
    expect(message).toContain("hub.routing.routes.0.endpointNames.0: unknown endpoint 'x'");
  });

  it('names an unknown endpoint of an enrichment', () => {
    const message = configError({
      routing: { enrichments: [{ key: 'k', value: 'v', endpointNames: ['events', 'nope'] }] },
    });
    expect(message).toContain("hub.routing.enrichments.0.endpointNames.1: unknown endpoint 'nope'");
  });

  it('lists every routing problem, one per line', () => {
    const message = configError({
      routing: {
        endpoints: [
          { name: 'a', type: 'kinesis' },
          { name: 'A', type: 'kinesis' },
        ],
        routes: [route('r', ['missing']), route('s', ['a'], "name = 'x")],
      },
    });
    expect(message).toContain("hub.routing.endpoints.1.name: duplicate name 'A'");
    expect(message).toContain("hub.routing.routes.0.endpointNames.0: unknown endpoint 'missing'");
    expect(message).toContain('hub.routing.routes.1.condition: route condition:');
    expect(message.split('\n')).toHaveLength(4);
  });

  it('refuses a custom endpoint named events, an unknown type and an unknown key', () => {
    expect(configError({ routing: { endpoints: [{ name: 'Events', type: 'kinesis' }] } })).toContain(
      'hub.routing.endpoints.0.name:',
    );
    expect(configError({ routing: { endpoints: [{ name: 'q', type: 'sqs' }] } })).toContain(
      'hub.routing.endpoints.0.type:',
    );
    expect(configError({ routing: { route: [] } })).toContain('hub.routing.route: unknown key');
  });

  it('refuses a stream retention outside 1-365 days', () => {
    expect(
      configError({ routing: { endpoints: [{ name: 'e', type: 'kinesis', retentionDays: 366 }] } }),
    ).toContain('hub.routing.endpoints.0.retentionDays');
  });

  it("refuses a routing configuration that does not fit the router's environment", () => {
    const config = parseHubConfig({
      routing: {
        routes: Array.from({ length: 40 }, (_, i) =>
          route(
            `route-${i}`,
            ['events'],
            `$body.temperature > ${i} AND level = 'critical-${'x'.repeat(40)}'`,
          ),
        ),
      },
    });
    expect(() => routingEnvironment(config)).toThrow(
      new RegExp(
        `^hub\\.routing: the routing configuration is \\d+ bytes as JSON.*allows ${LAMBDA_ENVIRONMENT_BYTES}`,
      ),
    );
    expect(() => synthHub({ routing: config.routing })).toThrow(/^hub\.routing: /);
    expect(routingEnvironment(parseHubConfig(ROUTED), ['hot-path'])).toBe(
      JSON.stringify({ hubName: 'routing-hub', routing: parseHubConfig(ROUTED).routing }),
    );
  });
});
