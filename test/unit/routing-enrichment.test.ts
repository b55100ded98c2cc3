import { describe, expect, it } from 'vitest';
import { HubError, ValidationError } from '../../functions/core/errors.ts';
import {
  parseRouterRouting,
  routesTwinChangeEvents,
  routingConfigSchema,
  routingUsesTwin,
} from '../../functions/core/routing/config.ts';
import { parseEnrichmentValue, resolveEnrichment } from '../../functions/core/routing/enrichment.ts';
import { compileRouting } from '../../functions/core/routing/table.ts';

/** `$twin` enrichment values, the TwinChangeEvents source and what the stack derives from them. */

function issues(config: unknown): string[] {
  const result = routingConfigSchema.safeParse(config);
  return result.success ? [] : result.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
}

const enrich = (value: string) => ({ enrichments: [{ key: 'k', value, endpointNames: ['events'] }] });

describe('twin routing configuration', () => {
  it('accepts routes of source TwinChangeEvents', () => {
    const parsed = routingConfigSchema.parse({
      routes: [
        {
          name: 't',
          source: 'TwinChangeEvents',
          condition: "opType = 'replaceTwin'",
          endpointNames: ['events'],
        },
      ],
    });
    expect(parsed.routes[0]?.source).toBe('TwinChangeEvents');
  });

  it.each([
    '$twin.tags.building',
    '$twin.tags.location.building',
    "$twin.tags['odd key'].x",
    '$twin.properties.desired.mode',
    '$twin.properties.reported.sensors[0]',
    '$TWIN.Tags.building',
    '$twin.properties.Reported.temp',
    '$iothubname',
    '$IoTHubName',
    '$twinkle',
    'twin.tags.x',
    'plain text with spaces',
  ])('accepts the enrichment value %s', (value) => {
    expect(issues(enrich(value))).toEqual([]);
  });

  it.each([
    ['$twin', /reads no supported part of the twin/],
    ['$twin.tags', /names a whole twin section/],
    ['$twin.properties.desired', /names a whole twin section/],
    ['$twin.properties', /reads no supported part of the twin/],
    ['$twin.properties.delta.x', /reads no supported part of the twin/],
    ['$twin.deviceId', /reads no supported part of the twin/],
    ['$twin.tags.', /is not a twin path: expected a property name at position 12/],
    ["$twin.tags['x'", /is not a twin path/],
    ['$twin.tags.a = 1', /is not a twin path but an expression/],
  ])('refuses the enrichment value %s, naming the enrichment and the value', (value, reason) => {
    const found = issues(enrich(value));
    expect(found).toHaveLength(1);
    expect(found[0]).toMatch(/^enrichments\.0\.value: /);
    expect(found[0]).toContain(`'${value}'`);
    expect(found[0]).toMatch(reason);
  });

  it('names the enrichment in the router file error', () => {
    const raw = JSON.stringify({
      hubName: 'h',
      routing: {
        ...enrich('x'),
        enrichments: [
          enrich('x').enrichments[0],
          { key: 'b', value: '$twin.tags', endpointNames: ['events'] },
        ],
      },
    });
    expect(() => parseRouterRouting(raw)).toThrow(HubError);
    expect(() => parseRouterRouting(raw)).toThrow(
      /routing\.enrichments\.1\.value: '\$twin\.tags' names a whole twin section/,
    );
  });

  it('tells whether the router reads twins: enabled twin conditions or any twin enrichment', () => {
    const parse = (c: unknown) => routingConfigSchema.parse(c);
    expect(routingUsesTwin(parse({}))).toBe(false);
    expect(
      routingUsesTwin(
        parse({ routes: [{ name: 'r', condition: '$body.x = 1', endpointNames: ['events'] }] }),
      ),
    ).toBe(false);
    expect(
      routingUsesTwin(
        parse({ routes: [{ name: 'r', condition: '$twin.tags.x = 1', endpointNames: ['events'] }] }),
      ),
    ).toBe(true);
    expect(
      routingUsesTwin(
        parse({
          routes: [{ name: 'r', condition: '$twin.tags.x = 1', endpointNames: ['events'], isEnabled: false }],
        }),
      ),
    ).toBe(false);
    expect(routingUsesTwin(parse(enrich('$twin.properties.reported.x')))).toBe(true);
    expect(routingUsesTwin(parse(enrich('$iothubname')))).toBe(false);
  });

  it('tells whether a route takes twin change events (enabled ones only)', () => {
    const route = (isEnabled: boolean) => ({
      routes: [{ name: 't', source: 'TwinChangeEvents', endpointNames: ['events'], isEnabled }],
    });
    expect(routesTwinChangeEvents(routingConfigSchema.parse(route(true)))).toBe(true);
    expect(routesTwinChangeEvents(routingConfigSchema.parse(route(false)))).toBe(false);
    expect(routesTwinChangeEvents(routingConfigSchema.parse({}))).toBe(false);
  });

  it('keeps the fallback route to device messages: an unrouted twin change event goes nowhere', () => {
    const routing = compileRouting(routingConfigSchema.parse({}), 'h');
    const message = { systemProperties: {}, properties: {}, body: new Uint8Array() };
    expect(routing.endpointsFor(message, 'DeviceMessages')).toEqual(['events']);
    expect(routing.endpointsFor(message, 'TwinChangeEvents')).toEqual([]);
  });
});

describe('enrichment values', () => {
  const twin = {
    tags: { location: { building: 43, 'odd key': 'x' }, name: 'pump', ok: false, gone: null },
    properties: { desired: { mode: 'eco' }, reported: { temp: 21.5, sensors: ['s1'] } },
  };
  const stamp = (value: string) => resolveEnrichment(parseEnrichmentValue(value), 'my-hub', twin);

  it('stamps strings, numbers and booleans from the twin', () => {
    expect(stamp('$twin.tags.name')).toBe('pump');
    expect(stamp('$twin.tags.location.building')).toBe('43');
    expect(stamp("$twin.tags.location['odd key']")).toBe('x');
    expect(stamp('$twin.tags.ok')).toBe('false');
    expect(stamp('$twin.properties.desired.mode')).toBe('eco');
    expect(stamp('$twin.properties.reported.temp')).toBe('21.5');
    expect(stamp('$twin.properties.reported.sensors[0]')).toBe('s1');
    // Names match ignoring case when there is no exact match, as in route conditions.
    expect(stamp('$twin.TAGS.Name')).toBe('pump');
  });

  it('stamps the path itself for objects, arrays, null, missing values and no twin, as IoT Hub does', () => {
    for (const path of [
      '$twin.tags.location',
      '$twin.properties.reported.sensors',
      '$twin.tags.gone',
      '$twin.tags.nope',
      '$twin.properties.reported.sensors[3]',
    ]) {
      expect(stamp(path)).toBe(path);
    }
    expect(resolveEnrichment(parseEnrichmentValue('$twin.tags.name'), 'my-hub', undefined)).toBe(
      '$twin.tags.name',
    );
  });

  it('stamps the hub name and static values', () => {
    expect(stamp('$iothubname')).toBe('my-hub');
    expect(stamp('$twinkle')).toBe('$twinkle');
    expect(stamp('static')).toBe('static');
  });

  it('throws a ValidationError with code InvalidEnrichment for a bad twin path', () => {
    expect(() => parseEnrichmentValue('$twin.tags')).toThrow(ValidationError);
    try {
      parseEnrichmentValue('$twin.tags.');
    } catch (error) {
      expect((error as ValidationError).code).toBe('InvalidEnrichment');
      expect((error as ValidationError).context).toEqual({ value: '$twin.tags.' });
    }
  });
});
