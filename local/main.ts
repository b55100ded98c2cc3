import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { HubConfig } from '../lib/config.ts';
import { PROJECT_ROOT } from '../lib/function-metadata.ts';
import type { HubAssembly } from './assembly.ts';
import type { LocalHub, LocalHubPorts } from './hub.ts';

// `npm start`: the local hub's entry point. Like bin/app.ts it is an edge, so it is where
// arguments, environment variables and cdk.json are read.
//
// Only node: modules are imported statically: the arguments are read (and `--help` answered)
// before the CDK, the SDK and the emulators are loaded, which takes seconds.

/** What each port flag is for; the defaults are `DEFAULT_PORTS` of hub.ts (test/integration/start-stop checks). */
const PORTS: readonly {
  key: keyof LocalHubPorts;
  flag: string;
  service: string;
  port: number;
  help: string;
}[] = [
  { key: 'mqtt', flag: 'mqtt-port', service: 'MQTT', port: 1883, help: 'MQTT over TCP' },
  { key: 'mqtts', flag: 'mqtts-port', service: 'MQTT over TLS', port: 8883, help: 'MQTT over TLS' },
  {
    key: 'ws',
    flag: 'ws-port',
    service: 'MQTT over WebSocket',
    port: 8083,
    help: 'MQTT over WebSocket, path /mqtt',
  },
  {
    key: 'dynamodb',
    flag: 'dynamodb-port',
    service: 'DynamoDB',
    port: 8000,
    help: 'DynamoDB-compatible endpoint',
  },
  {
    key: 'kinesis',
    flag: 'kinesis-port',
    service: 'Kinesis',
    port: 4567,
    help: 'Kinesis-compatible endpoint',
  },
  {
    key: 'dataPlane',
    flag: 'data-plane-port',
    service: 'IoT data plane',
    port: 8090,
    help: 'IoT data-plane endpoint',
  },
  { key: 'serviceApi', flag: 'service-api-port', service: 'service API', port: 8088, help: 'service API' },
  {
    key: 'awsServices',
    flag: 'aws-services-port',
    service: 'SQS, SNS and S3',
    port: 4566,
    help: 'SQS, SNS and S3 of the custom endpoints',
  },
  {
    key: 'eventBridge',
    flag: 'eventbridge-port',
    service: 'EventBridge',
    port: 4580,
    help: 'EventBridge of the custom endpoints',
  },
  {
    key: 'httpPublish',
    flag: 'http-publish-port',
    service: 'D2C over HTTP',
    port: 8087,
    help: 'D2C over HTTP, POST /topics/{topic}',
  },
];

const HELP = `Usage: npm start -- [options]

Starts the local hub: MQTT front door, DynamoDB and Kinesis emulators, rules, functions.

  --data-dir DIR        where state is kept (default .hub-data, env HUB_DATA_DIR)
  --host HOST           address the device and service endpoints listen on (default 127.0.0.1):
                        MQTT, MQTT over TLS and WebSocket, D2C over HTTP, the service API. The AWS
                        stand-ins (DynamoDB, Kinesis, IoT data plane, SQS/SNS/S3, EventBridge) hold every
                        device key and check no credentials: they listen on 127.0.0.1 whatever --host says
${PORTS.map((p) => `  --${`${p.flag} N`.padEnd(20)}${p.help} (default ${p.port}; 0 = any free port)`).join('\n')}
  --aws-services-url U  use this running SQS/SNS/S3 emulator (e.g. npx fauxqs) instead of the
                        hub's own, whose contents are in memory (env HUB_AWS_SERVICES_URL)
  --template FILE       run this synthesized template (with its bundles when it is in a
                        cloud assembly such as cdk.out) instead of the cached assembly
  --json                print one JSON line {"event":"ready",...} on stdout instead of the banner;
                        progress goes to stderr as JSON lines {"event":"progress",...}
  -h, --help            this text

Each port can also be set in the environment: HUB_MQTT_PORT, HUB_DATA_PLANE_PORT, ...
Functions run in worker threads (about 60 MB each): an idle one ends after 60 s, and beyond 8 in all
the least recently used idle one makes room; HUB_LAMBDA_IDLE_MS and HUB_LAMBDA_MAX_ENVIRONMENTS
change that (memory against cold starts).
`;

/** Exit code of a start refused before anything ran (bad arguments, a port in use). */
const USAGE_EXIT = 2;

function fail(message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(USAGE_EXIT);
}

function readArgs() {
  try {
    return parseArgs({
      options: {
        'data-dir': { type: 'string' },
        host: { type: 'string' },
        ...Object.fromEntries(PORTS.map((p) => [p.flag, { type: 'string' as const }])),
        'aws-services-url': { type: 'string' },
        template: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values as Record<string, string | boolean | undefined>;
  } catch (error) {
    fail(
      `${error instanceof Error ? error.message : String(error)}\n(npm start -- --help lists the options)`,
    );
  }
}

const values = readArgs();
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
const str = (name: string): string | undefined => {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
};
const json = values.json === true;
const started = Date.now();

function portOf(p: (typeof PORTS)[number]): number {
  const envName = `HUB_${p.key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}_PORT`;
  const raw = str(p.flag) ?? process.env[envName];
  if (raw === undefined) return p.port;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isInteger(n) || n < 0 || n > 65535)
    fail(`invalid port for --${p.flag} (${envName}): '${raw}' (an integer 0..65535; 0 = any free port)`);
  return n;
}
const ports = Object.fromEntries(PORTS.map((p) => [p.key, portOf(p)])) as unknown as LocalHubPorts;
const host = str('host') ?? '127.0.0.1';

/** The one-line refusal for a port another process holds: which service, and the flag that moves it. */
function portInUse(port: number): string {
  const users = PORTS.filter((p) => ports[p.key] === port);
  const what = users.map((p) => p.service).join(', ') || 'a hub service';
  const flags = users.map((p) => `--${p.flag} N`).join(' / ') || 'its --...-port flag';
  return `port ${port} (${what}) is in use: stop what holds it or pass ${flags} (0 = any free port)`;
}

/**
 * Tries every fixed port before anything slow runs, so that a port in use is reported at once
 * (and by name) rather than after the synth, as a stack trace from deep inside an emulator.
 */
async function checkPorts(): Promise<void> {
  const seen = new Map<number, string>();
  for (const p of PORTS) {
    const port = ports[p.key];
    if (port === 0) continue;
    const other = seen.get(port);
    if (other)
      fail(`port ${port} is given to both --${other} and --${p.flag}: give each service its own port`);
    seen.set(port, p.flag);
    await new Promise<void>((resolve) => {
      const server = createServer();
      server.once('error', (error: NodeJS.ErrnoException) => {
        if (error.code === 'EADDRINUSE') fail(portInUse(port));
        if (error.code === 'EACCES') fail(`port ${port} (${p.service}) needs privileges: pass --${p.flag} N`);
        if (error.code === 'EADDRNOTAVAIL') fail(`--host ${host} is not an address of this machine`);
        fail(`port ${port} (${p.service}): ${error.message}`);
      });
      server.listen({ port, host, exclusive: true }, () => server.close(() => resolve()));
    });
  }
}

/** Progress while the hub starts: short lines for people, JSON lines on stderr with `--json`. */
function progress(step: string): void {
  if (json) {
    process.stderr.write(`${JSON.stringify({ event: 'progress', step, ms: Date.now() - started })}\n`);
  } else {
    process.stdout.write(`  ${step}…\n`);
  }
}

// Stopping: SIGINT (Ctrl-C, or `kill -INT`), SIGTERM and SIGHUP close the hub and exit 0. The
// handlers are installed explicitly and first: a shell starts background jobs (`npm start &`)
// with SIGINT ignored, and only an installed handler makes Node take it again. A signal sent to
// the process group often arrives twice (directly, and forwarded by npm), so a repeat within a
// second is one signal; a later one (a second Ctrl-C) exits without waiting for the close.
let hub: LocalHub | undefined;
let stoppingSince: number | undefined;
const stop = (signal: NodeJS.Signals) => {
  if (stoppingSince !== undefined) {
    if (Date.now() - stoppingSince < 1000) return;
    process.stderr.write(`${signal} again: exiting without waiting for the hub to close\n`);
    process.exit(1);
  }
  stoppingSince = Date.now();
  if (!hub) {
    // Still starting: nothing to flush yet; the open sockets and files close with the process.
    if (!json) process.stdout.write(`\n${signal}: start cancelled\n`);
    process.exit(0);
  }
  if (!json) process.stdout.write(`\n${signal}: stopping the local hub...\n`);
  hub.close().then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`shutdown failed: ${String(error)}\n`);
      process.exit(1);
    },
  );
};
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => stop(signal));

// The hub runs on the machine's Node; Lambda gets Node 24. The SDK's notice about Node 20 is noise here.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/**
 * The synthesized stack with its function bundles, in one place: from the assembly cache unless bin/,
 * lib/, functions/, the configuration or package-lock.json changed since it was made
 * (`local/assembly.ts`), or the given --template.
 */
async function hubAssembly(config: HubConfig, context: Record<string, unknown>): Promise<HubAssembly> {
  const file = str('template');
  const { loadHubAssembly } = await import('./assembly.ts');
  if (file) progress(`reading the template ${file}`);
  try {
    return await loadHubAssembly({
      config,
      context,
      ...(file ? { templateFile: file } : {}),
      onProgress: progress,
    });
  } catch (error) {
    if (file) fail(`--template ${file}: ${error instanceof Error ? error.message : String(error)}`);
    throw error;
  }
}

if (!json) process.stdout.write('serverless-iot-hub local hub: starting\n');
await checkPorts();
progress('loading the hub');
const [{ parseHubConfig }, { startLocalHub }] = await Promise.all([
  import('../lib/config.ts'),
  import('./hub.ts'),
]);
const cdkJson = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'cdk.json'), 'utf8')) as {
  context?: Record<string, unknown>;
};
const config = parseHubConfig(cdkJson.context?.hub);
const assembly = await hubAssembly(config, cdkJson.context ?? {});
const dataDir = str('data-dir') ?? process.env.HUB_DATA_DIR ?? '.hub-data';
const awsServicesUrl = str('aws-services-url') ?? process.env.HUB_AWS_SERVICES_URL;

try {
  hub = await startLocalHub({
    template: assembly.template,
    assetDirOf: assembly.assetDirOf,
    dataDir,
    maxMessageBytes: config.maxMessageBytes,
    host,
    ports,
    hostName: config.hostName,
    ...(awsServicesUrl ? { awsServicesUrl } : {}),
    onProgress: progress,
    // How often the broker looks for wills a killed hub left (every 4 heartbeats); tests shorten it.
    ...(process.env.HUB_BROKER_HEARTBEAT_MS
      ? { brokerHeartbeatMs: Number(process.env.HUB_BROKER_HEARTBEAT_MS) }
      : {}),
  });
} catch (error) {
  // The ports were free a moment ago; something took one since.
  const e = error as NodeJS.ErrnoException & { port?: number };
  if (e.code === 'EADDRINUSE' && typeof e.port === 'number') fail(portInUse(e.port));
  throw error;
}
const e = hub.endpoints;
const mqttPort = new URL(e.mqtt).port;
if (json) {
  process.stdout.write(`${JSON.stringify({ event: 'ready', startupMs: Date.now() - started, ...e })}\n`);
} else {
  process.stdout.write(`
serverless-iot-hub local hub is up (${((Date.now() - started) / 1000).toFixed(1)} s)

  MQTT            ${e.mqtt}
  MQTT over TLS   ${e.mqtts}   (CA: ${e.caCertificate})
  MQTT over WS    ${e.ws}
  DynamoDB        ${e.dynamodb}
  Kinesis         ${e.kinesis}
  IoT data plane  ${e.dataPlane}
  service API     ${e.serviceApi}   (Authorization: $(cat ${e.serviceTokenPath}))
  SQS, SNS, S3    ${e.awsServices}   (custom endpoints; contents in memory unless --aws-services-url)
  EventBridge     ${e.eventBridge}
  D2C over HTTP   ${e.httpPublish}/topics/{topic}   (Authorization: the device's SAS token)
  data directory  ${e.dataDir}
  built-in endpoint stream  ${e.builtInStream}${e.basicIngestTopicPrefix ? `\n  Basic Ingest    ${e.basicIngestTopicPrefix}devices/{id}/messages/events/...` : ''}
  rules           ${hub.model.rules.map((r) => r.sql.replace(/^.* FROM /, 'FROM ')).join('\n                  ')}

Create device d1 and get its connection string and MQTT credentials:
  npm run device -- d1
Send a message as d1 (username/password as printed by the command above):
  mosquitto_pub -h 127.0.0.1 -p ${mqttPort} -i d1 -u "$USERNAME" -P "$PASSWORD" -q 1 \\
    -t 'devices/d1/messages/events/$.ct=application%2Fjson&$.ce=utf-8' -m '{"temp":21.5}'
or over HTTP, the SAS token (the MQTT password) in Authorization:
  curl -X POST -H "Authorization: $PASSWORD" -d '{"temp":21.5}' \\
    '${e.httpPublish}/topics/devices/d1/messages/events/$.ct=application%252Fjson&$.ce=utf-8?qos=1'
Read the built-in endpoint:
  npm run tail                  (or with the AWS CLI against ${e.kinesis}, region ${e.region})

Ctrl-C stops the hub; the next start reuses ${e.dataDir}.
`);
}
