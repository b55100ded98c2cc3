import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { DynamoDbCaCertificateStore } from '../functions/adapters/ca-store-dynamodb.ts';
import { DynamoDbDeviceRegistry } from '../functions/adapters/registry-dynamodb.ts';
import { authenticateDevice } from '../functions/core/identity/authenticate.ts';
import { CaCertificates } from '../functions/core/identity/ca-certificates.ts';
import type { DeviceRegistry } from '../functions/core/identity/registry.ts';
import { BASIC_INGEST_RULE_ENV, publishRefusal } from '../functions/core/identity/topics.ts';
import { DEVICE_POLICY_ENV, thingPolicyDocument } from '../functions/core/identity/x509-provisioning.ts';
import { PROJECT_ROOT } from '../lib/function-metadata.ts';
import { type RunningBroker, startBroker } from './broker.ts';
import { IotCoreBus } from './bus.ts';
import { CheckpointStore } from './checkpoints.ts';
import { startDataPlane } from './data-plane.ts';
import {
  ensureStreams,
  ensureTables,
  LOCAL_CREDENTIALS,
  LOCAL_REGION,
  localDynamoClient,
  localKinesisClient,
  startDynamo,
  startKinesis,
} from './emulators.ts';
import { startEndpointServices } from './endpoint-services.ts';
import { startEventBridge } from './eventbridge.ts';
import { findCustomAuthorizer, frontDoorAuthenticator, policyTargetOfFunction } from './front-door.ts';
import { startFunctionUrl } from './function-url.ts';
import { startHttpsPublish } from './https-publish.ts';
import { startIotControlPlane } from './iot-control-plane.ts';
import { compilePolicies } from './iot-policy.ts';
import { KinesisMapping } from './kinesis-mapping.ts';
import { environmentLimitsFromEnv, LambdaRunner } from './lambda-runner.ts';
import { RulesEngine } from './rules-engine.ts';
import { refuseServiceCaller, serviceCredentials } from './service-credentials.ts';
import { ShadowService } from './shadow.ts';
import {
  type CfnTemplate,
  type LocalModel,
  type LocalSchedule,
  readTemplate,
  substituteQueueUrls,
} from './template.ts';
import { serverCertificate } from './tls.ts';
import { startTtlSweeper } from './ttl.ts';

/** Where the AWS stand-ins listen: they check no credentials, so never beyond this machine. */
const LOOPBACK = '127.0.0.1';

/** Ports of the local hub; 0 picks a free one. */
export interface LocalHubPorts {
  readonly mqtt: number;
  readonly mqtts: number;
  readonly ws: number;
  readonly dynamodb: number;
  readonly kinesis: number;
  readonly dataPlane: number;
  readonly serviceApi: number;
  /** SQS, SNS and S3 (fauxqs), behind the custom endpoints. */
  readonly awsServices: number;
  /** EventBridge (the hub's stand-in), behind `eventbridge` custom endpoints. */
  readonly eventBridge: number;
  /** D2C over HTTP (`POST /topics/{topic}`), the stand-in for IoT Core's HTTPS publish. */
  readonly httpPublish: number;
}

/** The ports a new user gets, as IoT tooling expects them. */
export const DEFAULT_PORTS: LocalHubPorts = {
  mqtt: 1883,
  mqtts: 8883,
  ws: 8083,
  dynamodb: 8000,
  kinesis: 4567,
  dataPlane: 8090,
  serviceApi: 8088,
  awsServices: 4566,
  eventBridge: 4580,
  httpPublish: 8087,
};

/** Options of {@link startLocalHub}. */
export interface LocalHubOptions {
  /** The synthesized stack to run (see `loadHubAssembly` in `local/assembly.ts`). */
  readonly template: CfnTemplate;
  /**
   * A function's bundle folder from the cloud assembly (`HubAssembly.assetDirOf`).
   * @default none: every function runs from its source through tsx
   */
  readonly assetDirOf?: (logicalId: string) => string | undefined;
  /** Everything the hub keeps lives here; a restart on the same directory loses nothing. */
  readonly dataDir: string;
  /** @default '127.0.0.1' */
  readonly host?: string;
  /** @default DEFAULT_PORTS */
  readonly ports?: Partial<LocalHubPorts>;
  /** Largest D2C payload the front door takes. */
  readonly maxMessageBytes: number;
  /** Host name in SAS tokens and connection strings (the hub config's `hostName`). */
  readonly hostName: string;
  /**
   * An SQS/SNS/S3 emulator that is already running (e.g. `npx fauxqs`), used instead of the one the
   * hub starts in its own process, so that what the custom endpoints hold outlives the hub.
   * @default the hub's own fauxqs, whose contents live in memory
   */
  readonly awsServicesUrl?: string;
  /** @default console.log with a timestamp */
  readonly log?: (line: string) => void;
  /**
   * The broker's heartbeat (aedes publishes the wills of a dead broker's connections every four). Tests
   * shorten it to see a stale will published without waiting minutes. @default 60000
   */
  readonly brokerHeartbeatMs?: number;
  /** Told each step of a start (`'starting the MQTT broker'`), so a slow start shows where it is. */
  readonly onProgress?: (step: string) => void;
}

/** Where everything listens, as written to `dataDir/endpoints.json`. */
export interface LocalHubEndpoints {
  readonly mqtt: string;
  readonly mqtts: string;
  readonly ws: string;
  readonly dynamodb: string;
  readonly kinesis: string;
  readonly dataPlane: string;
  /** The service API (the stack's Function URL), authenticated with the service token. */
  readonly serviceApi: string;
  /** File holding a one-year service SAS token: `Authorization: $(cat serviceTokenPath)`. */
  readonly serviceTokenPath: string;
  readonly hostName: string;
  readonly caCertificate: string;
  readonly region: string;
  readonly builtInStream: string;
  readonly deadLetterTable: string;
  /** The C2D feedback stream (`''` when the stack has none). */
  readonly feedbackStream: string;
  /** The C2D delivery ledger table (`''` when the stack has none). */
  readonly ledgerTable: string;
  /** Stack output `RegistryJobsBucketName`: the bucket for import/export job files (`''` when none). */
  readonly registryJobsBucket: string;
  /** SQS, SNS and S3 of the custom endpoints (one URL for the three). */
  readonly awsServices: string;
  /** EventBridge of the `eventbridge` custom endpoints. */
  readonly eventBridge: string;
  /** D2C over HTTP: `POST {httpPublish}/topics/{url-encoded topic}?qos=1` with the device's SAS token. */
  readonly httpPublish: string;
  /** The IoT control-plane stand-in (things, certificates, policies of X.509 devices): `aws iot --endpoint-url`. */
  readonly iotControlPlane: string;
  /** Stack output `BasicIngestTopicPrefix` (`$aws/rules/{ingest rule}/`); `''` when Basic Ingest is off. */
  readonly basicIngestTopicPrefix: string;
  /**
   * Custom routing endpoints by name (stack output `CustomEndpoints`): the type and where to read
   * it: stream name, queue URL, topic ARN, bucket name or event bus name.
   */
  readonly customEndpoints: Readonly<Record<string, CustomEndpointInfo>>;
  readonly dataDir: string;
}

/** One custom endpoint, as the stack's `CustomEndpoints` output describes it. */
export interface CustomEndpointInfo {
  readonly type: string;
  readonly target: string;
  readonly arn: string;
}

/** A running local hub. */
export interface LocalHub {
  readonly endpoints: LocalHubEndpoints;
  readonly model: LocalModel;
  readonly broker: RunningBroker;
  close(): Promise<void>;
}

/**
 * Starts the whole hub on this machine from a synthesized template: DynamoDB and Kinesis
 * emulators, the MQTT front door, the rules engine, the functions with their event source
 * mappings and schedules, and the IoT data plane.
 */
export async function startLocalHub(options: LocalHubOptions): Promise<LocalHub> {
  const host = options.host ?? '127.0.0.1';
  const ports = { ...DEFAULT_PORTS, ...options.ports };
  const log = options.log ?? ((line: string) => console.log(`${new Date().toISOString()} ${line}`));
  const dataDir = path.resolve(options.dataDir);
  mkdirSync(dataDir, { recursive: true });
  const template = readTemplate(options.template, 'hub');
  const closers: (() => Promise<void>)[] = [];
  const progress = options.onProgress ?? (() => {});
  const close = async () => {
    for (const c of closers.reverse()) await c().catch((e: unknown) => log(`shutdown: ${String(e)}`));
  };

  let broker: RunningBroker | undefined;
  try {
    progress('starting the DynamoDB and Kinesis emulators');
    // The AWS stand-ins hold every device key and check no credentials: loopback only, whatever `host` says.
    const dynamo = await startDynamo(dataDir, LOOPBACK, ports.dynamodb);
    closers.push(() => dynamo.close());
    const kinesisServer = await startKinesis(dataDir, LOOPBACK, ports.kinesis);
    closers.push(() => kinesisServer.close());
    const dynamoClient = localDynamoClient(dynamo.url);
    const kinesis = localKinesisClient(kinesisServer.url);
    closers.push(async () => {
      dynamoClient.destroy();
      kinesis.destroy();
    });
    progress('creating tables and streams');
    await ensureTables(dynamoClient, template.tables);
    // dynalite has no TTL: delete expired items (the C2D ledger's retired messages) like DynamoDB would.
    const ttl = startTtlSweeper({ client: dynamoClient, tables: template.tables, log });
    closers.push(() => ttl.stop());
    await ensureStreams(kinesis, template.streams);

    progress('starting SQS, SNS, S3 and EventBridge');
    const services = await startEndpointServices({
      host: LOOPBACK,
      port: ports.awsServices,
      ...(options.awsServicesUrl ? { externalUrl: options.awsServicesUrl } : {}),
      queues: template.queues,
      topics: template.topics,
      buckets: template.buckets,
    });
    closers.push(() => services.close());
    const eventBridge = await startEventBridge({
      host: LOOPBACK,
      port: ports.eventBridge,
      dataDir,
      region: LOCAL_REGION,
      deliver: (targetArn, event) => services.sendToQueue(targetArn, event),
      log,
    });
    closers.push(() => eventBridge.close());
    for (const bus of template.eventBuses) eventBridge.createEventBus(bus.name);
    const model = withQueueUrls(template, services.queueUrls);

    progress('starting the IoT data plane and control plane');
    // The IoT Core bus: every publish, whichever door it comes in by, is authorized, runs the rules,
    // reaches the broker's subscribers and the shadow service, in that order (local/bus.ts). The
    // rules, the shadow service and the broker attach to it below, as each exists.
    // The front door's custom authorizer is the function the template's AWS::IoT::Authorizer invokes.
    const customAuthorizer = findCustomAuthorizer(options.template);
    const authorizerFunction = model.functions.find(
      (f) => f.logicalId === customAuthorizer?.functionLogicalId,
    );
    const basicIngestRule = authorizerFunction?.environment[BASIC_INGEST_RULE_ENV];
    const bus = new IotCoreBus({
      maxMessageBytes: options.maxMessageBytes,
      // MQTT connections carry their policy documents (Identity.policy); this decides for the doors whose
      // identities have none: HTTPS publish (which checks the same before) and stale wills.
      policy: (identity, topic) => publishRefusal(identity.deviceId, topic, { basicIngestRule }),
      log,
    });
    const asHub = { kind: 'service', principal: 'iot' } as const;
    // The Device Shadow service (data plane and `$aws/things/{thing}/shadow/...` requests): what it
    // publishes goes through the bus as the hub's own messages, as IoT Core's shadow messages do.
    const shadows = new ShadowService({
      dataDir,
      log,
      publish: (topic, payload) => bus.publish({ topic, payload, qos: 1 }, asHub),
    });
    const dataPlane = await startDataPlane(LOOPBACK, ports.dataPlane, {
      shadows,
      maxMessageBytes: options.maxMessageBytes,
      log,
      disconnect: (clientId) => broker?.disconnect(clientId) ?? false,
      publish: (message) => bus.publish(message, { kind: 'service', principal: 'dataplane' }),
      retainedTopics: () => broker?.retainedTopics() ?? [],
    });
    closers.push(() => dataPlane.close());
    // IoT Core's control plane (things, certificates, policies) for X.509 provisioning, on a free port:
    // only the functions call it (AWS_ENDPOINT_URL_IOT); endpoints.json has its URL.
    const iotControlPlane = await startIotControlPlane({
      host: LOOPBACK,
      port: 0,
      dataDir,
      region: LOCAL_REGION,
      account: '000000000000',
      policies: model.functions.flatMap((f) => f.environment[DEVICE_POLICY_ENV] ?? []),
      log,
    });
    closers.push(() => iotControlPlane.close());

    const runner = new LambdaRunner({
      functions: model.functions,
      projectRoot: PROJECT_ROOT,
      baseEnv: {
        PATH: process.env.PATH ?? '',
        AWS_REGION: LOCAL_REGION,
        AWS_ACCESS_KEY_ID: LOCAL_CREDENTIALS.accessKeyId,
        AWS_SECRET_ACCESS_KEY: LOCAL_CREDENTIALS.secretAccessKey,
        AWS_ENDPOINT_URL_DYNAMODB: dynamo.url,
        AWS_ENDPOINT_URL_KINESIS: kinesisServer.url,
        AWS_ENDPOINT_URL_IOT_DATA_PLANE: dataPlane.url,
        AWS_ENDPOINT_URL_IOT: iotControlPlane.url,
        AWS_ENDPOINT_URL_SQS: services.url,
        AWS_ENDPOINT_URL_SNS: services.url,
        AWS_ENDPOINT_URL_S3: services.url,
        AWS_ENDPOINT_URL_EVENTBRIDGE: eventBridge.url,
        AWS_XRAY_CONTEXT_MISSING: 'IGNORE_ERROR',
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
        POWERTOOLS_LOG_LEVEL: process.env.HUB_FUNCTION_LOG_LEVEL ?? 'WARN',
      },
      log,
      codeDir: path.join(dataDir, 'functions'),
      ...environmentLimitsFromEnv(process.env),
      ...(options.assetDirOf ? { assetDirOf: options.assetDirOf } : {}),
      sendToQueue: (queueName, body) =>
        services.sendToQueue(model.queues.find((q) => q.name === queueName)?.arn ?? queueName, body),
    });
    closers.push(() => runner.close());

    // A rule's write to a stream wakes the mappings reading it at once (filled in below).
    const mappingsByStream = new Map<string, KinesisMapping[]>();
    const rules = new RulesEngine(model.rules, {
      kinesis,
      onStreamWrite: (stream) => {
        for (const m of mappingsByStream.get(stream) ?? []) m.wake();
      },
      dynamo: dynamoClient,
      log,
      // Lambda's asynchronous invocation: retries and on-failure destination as the template says.
      invokeAsync: (fn, event) => runner.invokeAsync(fn, event),
      republish: (topic, payload, qos) =>
        bus.publish({ topic, payload, qos: qos === 1 ? 1 : 0 }, asHub, { skipRules: true }),
    });
    bus.attach({ rules, shadows });

    const registryTable = model.outputs.RegistryTableName;
    if (!registryTable) throw new Error('the template has no RegistryTableName output');
    const documents = DynamoDBDocumentClient.from(dynamoClient, {
      marshallOptions: { removeUndefinedValues: true },
    });
    const registry: DeviceRegistry = new DynamoDbDeviceRegistry({
      client: documents,
      tableName: registryTable,
    });
    const caCertificates = new CaCertificates(
      new DynamoDbCaCertificateStore({ client: documents, tableName: registryTable }),
    );
    // The IoT policy ARNs name the account and region the local functions run in (the authorizer takes them
    // from its function ARN, as in the cloud).
    const target = policyTargetOfFunction(authorizerFunction?.arn ?? model.functions[0]?.arn ?? '');
    const authenticator = frontDoorAuthenticator({
      invokeAuthorizer:
        authorizerFunction === undefined
          ? undefined
          : (event) => runner.invoke(authorizerFunction.logicalId, event),
      authorizerName: authorizerFunction?.logicalId ?? '(none)',
      target,
      // The policy the stack attaches to every device certificate, for this hub's account and region.
      thingPolicy: compilePolicies([
        thingPolicyDocument({ ...target, ...(basicIngestRule ? { basicIngestRule } : {}) }),
      ]),
      // The same decision the cloud makes, against the same registry table: X.509 certificates (checked
      // against the registry and, for CA-signed devices, the registered CAs), and why an authorizer refused.
      decide: async ({ clientId, username, password, clientCertificate }) =>
        authenticateDevice(
          {
            clientId,
            username,
            password,
            // CA-signed devices: the chain must end at a registered, verified CA (the subject CN is
            // compared with the device id by authenticateDevice).
            clientCertificate: clientCertificate && {
              ...clientCertificate,
              issuerMatchesRegisteredCa: (await caCertificates.chainTrust(clientCertificate.chain)).ok,
            },
          },
          { registry, hostName: options.hostName, now: () => new Date() },
        ),
      log,
    });

    progress('starting the MQTT broker');
    const certificate = await serverCertificate(dataDir);
    // Lifecycle events are the hub's own messages on `$aws/events/...`: they go through the bus.
    const lifecycle = (topic: string, event: object, what: string) => {
      bus
        .publish({ topic, payload: Buffer.from(JSON.stringify(event)), qos: 1 }, asHub)
        .catch((error: unknown) => log(`${what} lost: ${String(error)}`));
    };
    broker = await startBroker({
      dataDir,
      host,
      ports,
      certificate,
      authenticator,
      bus,
      staleWillIdentity: async (deviceId) => {
        const device = await registry.find(deviceId);
        if (device?.status !== 'enabled') return undefined;
        return { deviceId, principal: `${device.authentication.type}:${deviceId}` };
      },
      ...(options.brokerHeartbeatMs ? { heartbeatIntervalMs: options.brokerHeartbeatMs } : {}),
      log,
      onPresence: (event) =>
        lifecycle(
          `$aws/events/presence/${event.eventType}/${event.clientId}`,
          event,
          `presence event for '${event.clientId}'`,
        ),
      onSubscription: (event) =>
        lifecycle(
          `$aws/events/subscriptions/${event.eventType}/${event.clientId}`,
          event,
          `${event.eventType} event for '${event.clientId}'`,
        ),
    });
    bus.attach({ subscribers: broker });
    const runningBroker = broker;
    closers.push(() => runningBroker.close());
    // Runs before the broker closes: shadow messages still queued go out first.
    closers.push(() => shadows.idle());

    // D2C over HTTP: the same authentication as an MQTT connect, then the same bus.
    const httpPublish = await startHttpsPublish(host, ports.httpPublish, {
      auth: { registry, hostName: options.hostName, now: () => new Date() },
      maxMessageBytes: options.maxMessageBytes,
      basicIngestRule,
      log,
      publish: ({ topic, payload, qos, identity, mqtt5 }) =>
        bus.publish(
          { topic, payload, qos, ...(mqtt5 ? { mqtt5 } : {}) },
          { kind: 'device', identity: { deviceId: identity.deviceId, principal: identity.principal } },
        ),
    });
    closers.push(() => httpPublish.close());

    progress('starting the stream readers and the service API');
    const checkpoints = new CheckpointStore(dataDir, undefined, (error) =>
      log(`checkpoint write failed (kept; written with the next one): ${String(error)}`),
    );
    closers.push(() => checkpoints.flush()); // closers run in reverse: after the mappings stop
    for (const mapping of model.kinesisMappings) {
      const stream = model.streams.find((s) => s.name === mapping.streamName);
      if (!stream) throw new Error(`mapping ${mapping.logicalId} reads unknown stream ${mapping.streamName}`);
      const m = new KinesisMapping(mapping, stream, {
        kinesis,
        checkpoints,
        log,
        invoke: (fn, event) => runner.invoke(fn, event),
        sendToQueue: (queue, body) => services.sendToQueue(queue, body), // the on-failure destination
      });
      mappingsByStream.set(stream.name, [...(mappingsByStream.get(stream.name) ?? []), m]);
      await m.start();
      closers.push(() => m.stop());
    }

    const credentials = serviceCredentials(dataDir, options.hostName);
    const [functionUrl, ...moreUrls] = model.functionUrls;
    if (!functionUrl || moreUrls.length > 0)
      throw new Error('the local hub expects exactly one Function URL');
    const serviceApi = await startFunctionUrl(host, ports.serviceApi, {
      invoke: (event) => runner.invoke(functionUrl.functionLogicalId, event),
      refuse: (authorization) => refuseServiceCaller(authorization, credentials),
      log,
      maxBodyBytes: 6 * 1024 * 1024,
    });
    closers.push(() => serviceApi.close());

    const endpoints: LocalHubEndpoints = {
      mqtt: `mqtt://${host}:${broker.ports.mqtt}`,
      mqtts: `mqtts://${host}:${broker.ports.mqtts}`,
      ws: `ws://${host}:${broker.ports.ws}/mqtt`,
      dynamodb: dynamo.url,
      kinesis: kinesisServer.url,
      dataPlane: dataPlane.url,
      serviceApi: serviceApi.url,
      serviceTokenPath: credentials.tokenPath,
      hostName: options.hostName,
      caCertificate: certificate.certPath,
      region: LOCAL_REGION,
      builtInStream: model.outputs.BuiltInEndpointStreamName ?? '',
      deadLetterTable: model.outputs.DeadLetterTableName ?? '',
      feedbackStream: model.outputs.FeedbackStreamName ?? '',
      ledgerTable: model.outputs.LedgerTableName ?? '',
      registryJobsBucket: model.outputs.RegistryJobsBucketName ?? '',
      awsServices: services.url,
      eventBridge: eventBridge.url,
      httpPublish: httpPublish.url,
      iotControlPlane: iotControlPlane.url,
      basicIngestTopicPrefix: model.outputs.BasicIngestTopicPrefix ?? '',
      customEndpoints: JSON.parse(model.outputs.CustomEndpoints ?? '{}') as Record<
        string,
        CustomEndpointInfo
      >,
      dataDir,
    };
    writeFileSync(path.join(dataDir, 'endpoints.json'), `${JSON.stringify(endpoints, null, 2)}\n`);
    // Last, so the first run finds the whole hub up.
    // EventBridge invokes its Lambda targets asynchronously: Lambda's retries apply.
    const schedules = startSchedules(
      model.schedules,
      async (fn, event) => runner.invokeAsync(fn, event),
      log,
    );
    closers.push(async () => schedules.stop());
    return { endpoints, model, broker: runningBroker, close };
  } catch (error) {
    await close();
    throw error;
  }
}

/** The model with every queue URL placeholder (functions' environments, outputs) replaced by the emulator's URL. */
function withQueueUrls(model: LocalModel, queueUrls: ReadonlyMap<string, string>): LocalModel {
  const urlOf = (name: string) => {
    const url = queueUrls.get(name);
    if (url === undefined) throw new Error(`the template refers to queue ${name}, which was not created`);
    return url;
  };
  const substitute = (values: Readonly<Record<string, string>>) =>
    Object.fromEntries(Object.entries(values).map(([k, v]) => [k, substituteQueueUrls(v, urlOf)]));
  return {
    ...model,
    functions: model.functions.map((fn) => ({ ...fn, environment: substitute(fn.environment) })),
    outputs: substitute(model.outputs),
  };
}

/** Running schedules; `stop` cancels every pending and future run. */
export interface RunningSchedules {
  stop(): void;
}

/**
 * Fires each `rate(...)` schedule once at once, then every interval. In the cloud the EventBridge
 * rule has been running all along, so a hub that starts (or restarts) sweeps at once instead of
 * waiting one interval. Runs are not serialized: like EventBridge, a slow run does not hold back
 * the next one.
 */
export function startSchedules(
  schedules: readonly LocalSchedule[],
  invoke: (functionLogicalId: string, event: unknown) => Promise<unknown>,
  log: (line: string) => void,
): RunningSchedules {
  const timers: NodeJS.Timeout[] = [];
  let stopped = false;
  const fire = (schedule: LocalSchedule) => {
    if (stopped) return;
    for (const fn of schedule.functionLogicalIds) {
      const event = {
        version: '0',
        id: crypto.randomUUID(),
        'detail-type': 'Scheduled Event',
        source: 'aws.events',
        time: new Date().toISOString(),
        region: LOCAL_REGION,
        resources: [schedule.logicalId],
        detail: {},
      };
      invoke(fn, event).catch((error: unknown) => log(`schedule ${schedule.logicalId}: ${String(error)}`));
    }
  };
  for (const schedule of schedules) {
    timers.push(setTimeout(() => fire(schedule), 0));
    timers.push(setInterval(() => fire(schedule), schedule.everyMs));
  }
  return {
    stop: () => {
      stopped = true;
      for (const timer of timers) clearTimeout(timer);
    },
  };
}
