import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { parseHubConfig } from '../lib/config.ts';
import { PROJECT_ROOT } from '../lib/function-metadata.ts';
import { loadHubAssembly } from './assembly.ts';
import { DEFAULT_PORTS, type LocalHubPorts, startLocalHub } from './hub.ts';

// `npm start`: the local hub's entry point. Like bin/app.ts it is an edge, so it is where
// arguments, environment variables and cdk.json are read.

const HELP = `Usage: npm start -- [options]

Starts the local hub: MQTT front door, DynamoDB and Kinesis emulators, rules, functions.

  --data-dir DIR        where state is kept (default .hub-data, env HUB_DATA_DIR)
  --host HOST           address the device and service endpoints listen on (default 127.0.0.1):
                        MQTT, MQTT over TLS and WebSocket, D2C over HTTP, the service API. The AWS
                        stand-ins (DynamoDB, Kinesis, IoT data plane, SQS/SNS/S3, EventBridge) hold every
                        device key and check no credentials: they listen on 127.0.0.1 whatever --host says
  --mqtt-port N         MQTT over TCP (default ${DEFAULT_PORTS.mqtt}; 0 = any free port)
  --mqtts-port N        MQTT over TLS (default ${DEFAULT_PORTS.mqtts})
  --ws-port N           MQTT over WebSocket, path /mqtt (default ${DEFAULT_PORTS.ws})
  --dynamodb-port N     DynamoDB-compatible endpoint (default ${DEFAULT_PORTS.dynamodb})
  --kinesis-port N      Kinesis-compatible endpoint (default ${DEFAULT_PORTS.kinesis})
  --data-plane-port N   IoT data-plane endpoint (default ${DEFAULT_PORTS.dataPlane})
  --service-api-port N  service API (default ${DEFAULT_PORTS.serviceApi})
  --aws-services-port N SQS, SNS and S3 of the custom endpoints (default ${DEFAULT_PORTS.awsServices})
  --eventbridge-port N  EventBridge of the custom endpoints (default ${DEFAULT_PORTS.eventBridge})
  --http-publish-port N D2C over HTTP, POST /topics/{topic} (default ${DEFAULT_PORTS.httpPublish})
  --aws-services-url U  use this running SQS/SNS/S3 emulator (e.g. npx fauxqs) instead of the
                        hub's own, whose contents are in memory (env HUB_AWS_SERVICES_URL)
  --template FILE       run this synthesized template (with its bundles when it is in a
                        cloud assembly such as cdk.out) instead of the cached assembly
  --json                print one JSON line {"event":"ready",...} instead of the banner
  -h, --help            this text
`;

// The hub runs on the machine's Node; Lambda gets Node 24. The SDK's notice about Node 20 is noise here.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const { values } = parseArgs({
  options: {
    'data-dir': { type: 'string' },
    host: { type: 'string' },
    'mqtt-port': { type: 'string' },
    'mqtts-port': { type: 'string' },
    'ws-port': { type: 'string' },
    'dynamodb-port': { type: 'string' },
    'kinesis-port': { type: 'string' },
    'data-plane-port': { type: 'string' },
    'service-api-port': { type: 'string' },
    'aws-services-port': { type: 'string' },
    'eventbridge-port': { type: 'string' },
    'http-publish-port': { type: 'string' },
    'aws-services-url': { type: 'string' },
    template: { type: 'string' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

function port(name: keyof LocalHubPorts, flag: string | undefined): number {
  const raw = flag ?? process.env[`HUB_${name.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}_PORT`];
  if (raw === undefined) return DEFAULT_PORTS[name];
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    process.stderr.write(`invalid port for ${name}: '${raw}'\n`);
    process.exit(2);
  }
  return n;
}

const cdkJson = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'cdk.json'), 'utf8')) as {
  context?: Record<string, unknown>;
};
const config = parseHubConfig(cdkJson.context?.hub);
const started = Date.now();
// The synthesized stack with its function bundles: from the cache unless bin/, lib/, functions/,
// the configuration or package-lock.json changed since it was made.
const assembly = await loadHubAssembly({
  config,
  context: cdkJson.context ?? {},
  ...(values.template ? { templateFile: values.template } : {}),
  onProgress: (line) => process.stderr.write(`${line}\n`),
});
const dataDir = values['data-dir'] ?? process.env.HUB_DATA_DIR ?? '.hub-data';
const awsServicesUrl = values['aws-services-url'] ?? process.env.HUB_AWS_SERVICES_URL;

const hub = await startLocalHub({
  template: assembly.template,
  assetDirOf: assembly.assetDirOf,
  dataDir,
  maxMessageBytes: config.maxMessageBytes,
  ...(values.host ? { host: values.host } : {}),
  ports: {
    mqtt: port('mqtt', values['mqtt-port']),
    mqtts: port('mqtts', values['mqtts-port']),
    ws: port('ws', values['ws-port']),
    dynamodb: port('dynamodb', values['dynamodb-port']),
    kinesis: port('kinesis', values['kinesis-port']),
    dataPlane: port('dataPlane', values['data-plane-port']),
    serviceApi: port('serviceApi', values['service-api-port']),
    awsServices: port('awsServices', values['aws-services-port']),
    eventBridge: port('eventBridge', values['eventbridge-port']),
    httpPublish: port('httpPublish', values['http-publish-port']),
  },
  hostName: config.hostName,
  ...(awsServicesUrl ? { awsServicesUrl } : {}),
  // How often the broker looks for wills a killed hub left (every 4 heartbeats); tests shorten it.
  ...(process.env.HUB_BROKER_HEARTBEAT_MS
    ? { brokerHeartbeatMs: Number(process.env.HUB_BROKER_HEARTBEAT_MS) }
    : {}),
});
const e = hub.endpoints;
const mqttPort = new URL(e.mqtt).port;
if (values.json) {
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

let stopping = false;
const stop = (signal: string) => {
  if (stopping) return;
  stopping = true;
  process.stdout.write(`\n${signal}: stopping the local hub...\n`);
  hub.close().then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`shutdown failed: ${String(error)}\n`);
      process.exit(1);
    },
  );
};
process.on('SIGINT', () => stop('SIGINT'));
process.on('SIGTERM', () => stop('SIGTERM'));
