/**
 * Route evaluation throughput of the routing core (functions/core/routing), on one core: 10 routes
 * with property and `$body` conditions against a 1 KB JSON body, next to a bare `JSON.parse` of the
 * same body in the same run. Each measured message is a fresh byte array, so the body is decoded
 * and parsed once per message (the routing core caches the parse per body, so the routes share
 * it), as the router does for each record it reads.
 */
import { compileRouteCondition, type RoutingMessage } from '../functions/core/routing/query.ts';
import { type Bench, compareRates, fmt } from './harness.ts';

/** Ten routes as a hub with a few consumers might configure them. */
export const ROUTES = [
  "processingPath = 'hot'",
  '$body.weather.temperature > 40',
  "$contentType = 'application/json' AND $body.status = 'alert'",
  "level = 'critical' OR $body.battery.percent < 10",
  "$body.location.city = 'Redmond' AND region = 'west'",
  'IS_DEFINED($body.errors[0].code)',
  "$connectionDeviceId = 'sensor-0042' AND $body.readings[3].value >= 20.5",
  'NOT ($body.flags.maintenance = true)',
  "STARTS_WITH($body.firmware, '2.') AND priority != 'low'",
  '$body.metrics.cpu * 100 > 50 OR LENGTH($body.notes) > 2000',
];

const TARGET_BYTES = 1024;

/** A telemetry body of exactly {@link TARGET_BYTES} bytes of UTF-8 JSON. */
export function telemetryBody(): string {
  const body = {
    deviceId: 'sensor-0042',
    sentAt: '2026-01-15T10:21:33.512Z',
    sequence: 184467,
    status: 'ok',
    firmware: '2.4.1',
    weather: { temperature: 38.25, humidity: 61.5, pressure: 1013.2, windSpeed: 4.2, windDirection: 'NNW' },
    location: { city: 'Redmond', state: 'WA', lat: 47.674, lon: -122.1215, floor: 3, room: '3-114' },
    battery: { percent: 76, voltage: 3.71, charging: false },
    flags: { maintenance: false, calibrated: true, tamper: false },
    metrics: { cpu: 0.42, memory: 0.63, uptimeSeconds: 1209600, restarts: 2 },
    readings: Array.from({ length: 6 }, (_, i) => ({ channel: `ch${i}`, value: 18.5 + i, unit: 'C' })),
    errors: [] as { code: string }[],
    tags: ['building-43', 'lab', 'north-wing', 'hvac'],
    notes: '',
  };
  const bare = JSON.stringify(body);
  body.notes = 'x'.repeat(Math.max(0, TARGET_BYTES - Buffer.byteLength(bare)));
  return JSON.stringify(body);
}

const SYSTEM_PROPERTIES = {
  'content-type': 'application/json',
  'content-encoding': 'utf-8',
  'iothub-connection-device-id': 'sensor-0042',
  'iothub-connection-auth-method': '{"scope":"device","type":"sas","issuer":"iothub"}',
  'message-id': 'b3c1f0de-8f7e-4a36-9b55-1f9d1b1f2a11',
  'iothub-enqueuedtime': '2026-01-15T10:21:33.640Z',
  'iothub-message-source': 'Telemetry',
};
const PROPERTIES = { processingPath: 'cold', level: 'info', region: 'west', priority: 'high' };

export const routing: Bench = {
  name: 'routing',
  description: 'route evaluation (10 routes, property and $body conditions, 1 KB JSON body) vs JSON.parse',
  flags: {
    ms: { description: 'measured time per case, in ms (cases interleaved)', default: 1000 },
    batch: { description: 'messages per timed round', default: 2000 },
  },
  run: async (ctx) => {
    const ms = ctx.flag('ms');
    const batchSize = ctx.flag('batch');
    const text = telemetryBody();
    const bytes = new TextEncoder().encode(text);
    const routes = ROUTES.map((r) => compileRouteCondition(r).evaluate);
    const message = (body: Uint8Array): RoutingMessage => ({
      systemProperties: SYSTEM_PROPERTIES,
      properties: PROPERTIES,
      body,
    });
    const matched = routes.filter((r) => r(message(bytes.slice()))).length;
    ctx.log(`body ${bytes.length} bytes, ${routes.length} routes, ${matched} of them match the message`);

    // Fresh copies per round, made outside the timing: a body is parsed once per message.
    const copies = () => Array.from({ length: batchSize }, () => bytes.slice());
    const strings = () => Array.from({ length: batchSize }, () => text);
    let sink = 0;

    const parsedOnce = message(bytes.slice());
    const cases = {
      parse: 'JSON.parse (string)',
      decode: 'UTF-8 decode + JSON.parse (bytes)',
      full: '10 routes: decode + parse + evaluate',
      evaluate: '10 routes: evaluate only (body parsed)',
    };
    const rates = compareRates(
      [
        {
          name: cases.parse,
          prepare: strings,
          batch: (input: string[]) => {
            for (const s of input) sink += (JSON.parse(s) as { sequence: number }).sequence;
            return input.length;
          },
        },
        {
          name: cases.decode,
          prepare: copies,
          batch: (input: Uint8Array[]) => {
            // A decoder per message, as the routing core makes one per body.
            for (const b of input) {
              const text = new TextDecoder('utf-8', { fatal: true }).decode(b);
              sink += (JSON.parse(text) as { sequence: number }).sequence;
            }
            return input.length;
          },
        },
        {
          name: cases.full,
          prepare: copies,
          batch: (input: Uint8Array[]) => {
            for (const b of input) {
              const m = message(b);
              for (const route of routes) if (route(m)) sink++;
            }
            return input.length;
          },
        },
        {
          name: cases.evaluate,
          prepare: () => parsedOnce,
          batch: (m: RoutingMessage) => {
            for (let i = 0; i < batchSize; i++) for (const route of routes) if (route(m)) sink++;
            return batchSize;
          },
        },
      ],
      { ms },
    );
    if (sink === -1) ctx.log('unreachable'); // keeps the loops' results alive

    const rate = (name: string) => rates.get(name)?.opsPerSecond ?? Number.NaN;
    const base = rate(cases.parse);
    const row = (name: string, rate: number) => ({
      case: name,
      'msgs/s (1 core)': fmt(rate),
      'µs/msg': fmt(1e6 / rate),
      'cost vs JSON.parse': `${fmt(base / rate, 2)}×`,
    });
    ctx.table('routing: one core, 1 KB JSON body', [
      row(cases.parse, base),
      row(cases.decode, rate(cases.decode)),
      row(cases.full, rate(cases.full)),
      row(cases.evaluate, rate(cases.evaluate)),
    ]);
  },
};
