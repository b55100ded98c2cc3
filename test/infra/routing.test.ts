import { Validations } from 'aws-cdk-lib';
import type { Template } from 'aws-cdk-lib/assertions';
import { Construct, type IConstruct } from 'constructs';
import { beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  ENDPOINTS_ENV,
  endpointTargetsFromEnv,
  parseRouterRouting,
  ROUTING_FILE,
} from '../../functions/core/routing/config.ts';
import { type HubConfigInput, parseHubConfig } from '../../lib/config.ts';
import { type CustomEndpoint, routedEndpointNames, WRITE_ACTIONS } from '../../lib/endpoints.ts';
import { FILES_METADATA_KEY } from '../../lib/hub-function.ts';
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
 * Ten custom endpoints, all five types. Routed: `hot-path` (kinesis, 3 days), `alerts` (sqs),
 * `ordered` (sqs FIFO), `fanout` (sns), `fanout-fifo` (sns FIFO), `archive` (s3) and `bus`
 * (eventbridge). Not routed: `cold_store` (only a disabled route and an enrichment name it),
 * `unused` (kinesis, nothing names it) and `idle-queue` (sqs, nothing names it). Plus a route to `events`.
 */
const ROUTED: HubConfigInput = {
  hubName: 'routing-hub',
  routing: {
    endpoints: [
      { name: 'hot-path', type: 'kinesis', retentionDays: 3 },
      { name: 'cold_store', type: 'kinesis' },
      { name: 'unused', type: 'kinesis', retentionDays: 7 },
      { name: 'alerts', type: 'sqs' },
      { name: 'ordered', type: 'sqs', fifo: true },
      { name: 'fanout', type: 'sns' },
      { name: 'fanout-fifo', type: 'sns', fifo: true },
      { name: 'archive', type: 's3', format: 'avro', maxChunkSizeInBytes: 1024 * 1024 },
      { name: 'bus', type: 'eventbridge' },
      { name: 'idle-queue', type: 'sqs' },
    ],
    routes: [
      {
        name: 'hot',
        condition: "$body.temperature > 30 AND level = 'critical'",
        endpointNames: ['hot-path'],
      },
      { name: 'all-events', endpointNames: ['events'] },
      { name: 'archive-old', endpointNames: ['cold_store'], isEnabled: false },
      { name: 'alert', condition: "level = 'alert'", endpointNames: ['alerts'] },
      { name: 'in-order', endpointNames: ['ordered'] },
      { name: 'fan', source: 'DeviceLifecycleEvents', endpointNames: ['fanout'] },
      { name: 'fan-fifo', source: 'DeviceConnectionStateEvents', endpointNames: ['fanout-fifo'] },
      { name: 'keep', endpointNames: ['archive'] },
      { name: 'publish', endpointNames: ['bus'] },
    ],
    fallbackRoute: { isEnabled: false },
    enrichments: [{ key: 'hub', value: '$iothubname', endpointNames: ['hot-path', 'cold_store'] }],
  },
};
const ROUTED_NAMES = ['hot-path', 'alerts', 'ordered', 'fanout', 'fanout-fifo', 'archive', 'bus'];

const EnvironmentSchema = z.object({ Variables: z.record(z.string(), z.unknown()) });

let stack: HubStack;
let template: Template;
let ids: {
  builtIn: string;
  ingest: string;
  feedback: string;
  router: string;
  routerRole: string;
};

/** Logical id of the resource the hub made for the named endpoint (its stream, queue, topic, bucket or bus). */
const endpointId = (name: string) => logicalId(stack.customEndpoints.endpoint(name).resource);

/** The endpoint, narrowed to its type. */
function endpointOf<T extends CustomEndpoint['type']>(
  name: string,
  type: T,
): Extract<CustomEndpoint, { type: T }> {
  const endpoint = stack.customEndpoints.endpoint(name);
  if (endpoint.type !== type) throw new Error(`${name} is ${endpoint.type}, not ${type}`);
  return endpoint as Extract<CustomEndpoint, { type: T }>;
}

beforeAll(() => {
  ({ stack, template } = synthHub(ROUTED));
  const role = stack.d2c.router.function.role;
  if (role === undefined) throw new Error('the router function has no role');
  ids = {
    builtIn: logicalId(stack.builtInEndpoint.stream),
    ingest: logicalId(stack.d2c.ingestStream),
    feedback: logicalId(stack.c2d.feedbackStream),
    router: logicalId(stack.d2c.router.function),
    routerRole: logicalId(role),
  };
});

/** A resource of the template by logical id. */
function resource(id: string): {
  Type: string;
  Properties?: Record<string, unknown>;
  DeletionPolicy?: string;
} {
  const found = template.toJSON().Resources?.[id];
  if (found === undefined) throw new Error(`no resource ${id}`);
  return found;
}

/** The router's environment variables as written in the template. */
function routerEnvironment(t: Template = template, id = ids.router): Record<string, unknown> {
  const router = t.findResources('AWS::Lambda::Function')[id];
  return EnvironmentSchema.parse(router?.Properties?.Environment).Variables;
}

/** The router's bundled files as recorded in its template metadata. */
function routerFiles(t: Template = template, id = ids.router): Record<string, string> {
  const router = t.findResources('AWS::Lambda::Function')[id];
  return z.record(z.string(), z.string()).parse(router?.Metadata?.[FILES_METADATA_KEY]);
}

/**
 * An intrinsic as a readable string: `Ref` → `<id>`, `Fn::GetAtt` → `<id.Attr>`, `Fn::Join` with ''
 * → its parts concatenated, a literal string → itself.
 */
function show(value: unknown): string {
  if (typeof value === 'string') return value;
  const ref = z.object({ Ref: z.string() }).safeParse(value);
  if (ref.success) return `<${ref.data.Ref}>`;
  const getAtt = z.object({ 'Fn::GetAtt': z.tuple([z.string(), z.string()]) }).safeParse(value);
  if (getAtt.success) return `<${getAtt.data['Fn::GetAtt'].join('.')}>`;
  const join = z.object({ 'Fn::Join': z.tuple([z.literal(''), z.array(z.unknown())]) }).parse(value);
  return join['Fn::Join'][1].map(show).join('');
}

/** `action on resource` for each Allow statement of the router role that names a custom endpoint resource. */
function routerEndpointGrants(): string[] {
  const endpointResources = new Set(
    Object.keys(template.toJSON().Resources ?? {}).filter((id) => id.startsWith('CustomEndpoints')),
  );
  return iamStatements(template)
    .filter((s) => s.roles.includes(ids.routerRole) && s.effect === 'Allow')
    .flatMap((s) =>
      s.resources
        .filter((r) => referencedIds(r).some((id) => endpointResources.has(id)))
        .flatMap((r) => s.actions.map((a) => `${a} on ${show(r)}`)),
    );
}

describe('custom endpoint resources', () => {
  it('derives each construct id from the endpoint name (renaming an endpoint replaces its resources)', () => {
    expect(stack.customEndpoints.endpoint('hot-path').resource.node.path).toBe(
      'ServerlessIotHub/CustomEndpoints/hot-path/Stream',
    );
    expect(endpointId('hot-path')).toMatch(/^CustomEndpointshotpathStream[0-9A-F]{8}$/);
    expect(endpointId('cold_store')).toMatch(/^CustomEndpointscoldstoreStream[0-9A-F]{8}$/);
    expect(endpointId('alerts')).toMatch(/^CustomEndpointsalertsQueue[0-9A-F]{8}$/);
    expect(endpointId('fanout')).toMatch(/^CustomEndpointsfanoutTopic[0-9A-F]{8}$/);
    expect(endpointId('archive')).toMatch(/^CustomEndpointsarchiveBucket[0-9A-F]{8}$/);
    expect(endpointId('bus')).toMatch(/^CustomEndpointsbusBus[0-9A-F]{8}$/);
    expect([...stack.customEndpoints.endpoints.keys()]).toEqual(
      parseHubConfig(ROUTED).routing.endpoints.map((e) => e.name),
    );
    expect(() => stack.customEndpoints.endpoint('events')).toThrow(/no custom endpoint 'events'/);
  });

  it('creates one stream per kinesis endpoint, besides the ingest, built-in and feedback streams', () => {
    const streams = Object.keys(template.findResources('AWS::Kinesis::Stream')).sort();
    const custom = ['hot-path', 'cold_store', 'unused'].map(endpointId);
    expect(streams).toEqual([...custom, ids.builtIn, ids.ingest, ids.feedback].sort());
  });

  it.each([
    ['hot-path', 3],
    ['cold_store', 1],
    ['unused', 7],
  ])('makes stream %s on-demand, KMS-encrypted with the AWS-managed key, keeping %i day(s)', (name, days) => {
    expect(resource(endpointId(name)).Properties).toEqual({
      RetentionPeriodHours: days * 24,
      StreamEncryption: { EncryptionType: 'KMS', KeyId: 'alias/aws/kinesis' },
      StreamModeDetails: { StreamMode: 'ON_DEMAND' },
    });
  });

  it.each([
    ['alerts', false],
    ['ordered', true],
    ['idle-queue', false],
  ])(
    'makes queue %s (FIFO: %s) encrypted, 14 days, retained, redriving to a DLQ after 10 receives',
    (name, fifo) => {
      const { queue, deadLetterQueue } = endpointOf(name, 'sqs');
      const dlq = logicalId(deadLetterQueue);
      const fifoProps = fifo
        ? {
            FifoQueue: true,
            ContentBasedDeduplication: false,
            DeduplicationScope: 'messageGroup',
            FifoThroughputLimit: 'perMessageGroupId',
          }
        : {};
      expect(resource(logicalId(queue))).toMatchObject({ DeletionPolicy: 'Retain' });
      expect(resource(logicalId(queue)).Properties).toEqual({
        ...fifoProps,
        MessageRetentionPeriod: 14 * 24 * 3600,
        SqsManagedSseEnabled: true,
        RedrivePolicy: { deadLetterTargetArn: { 'Fn::GetAtt': [dlq, 'Arn'] }, maxReceiveCount: 10 },
      });
      expect(resource(dlq)).toMatchObject({ DeletionPolicy: 'Retain' });
      expect(resource(dlq).Properties).toEqual({
        ...(fifo ? { FifoQueue: true } : {}),
        MessageRetentionPeriod: 14 * 24 * 3600,
        SqsManagedSseEnabled: true,
      });
    },
  );

  it('denies non-TLS access to every endpoint queue and dead-letter queue', () => {
    const policies = Object.values(template.findResources('AWS::SQS::QueuePolicy'));
    for (const name of ['alerts', 'ordered', 'idle-queue']) {
      const { queue, deadLetterQueue } = endpointOf(name, 'sqs');
      for (const id of [logicalId(queue), logicalId(deadLetterQueue)]) {
        const policy = policies.find(
          (p) => JSON.stringify(p.Properties?.Queues) === JSON.stringify([{ Ref: id }]),
        );
        expect(policy?.Properties?.PolicyDocument?.Statement).toContainEqual(
          expect.objectContaining({
            Effect: 'Deny',
            Action: 'sqs:*',
            Condition: { Bool: { 'aws:SecureTransport': 'false' } },
          }),
        );
      }
    }
  });

  it.each([
    ['fanout', false],
    ['fanout-fifo', true],
  ])(
    'makes topic %s (FIFO: %s) encrypted with the AWS-managed SNS key, TLS-only publishing',
    (name, fifo) => {
      const id = endpointId(name);
      const props = resource(id).Properties ?? {};
      expect(show(props.KmsMasterKeyId)).toBe(
        'arn:<AWS::Partition>:kms:<AWS::Region>:<AWS::AccountId>:alias/aws/sns',
      );
      if (fifo) {
        expect(props).toMatchObject({
          FifoTopic: true,
          ContentBasedDeduplication: false,
          FifoThroughputScope: 'MessageGroup',
        });
        // FIFO topics need a name ending in .fifo: CDK generates it from the construct path.
        expect(props.TopicName).toMatch(
          /^ServerlessIotHub-CustomEndpoints-fanoutfifo-Topic-[0-9A-F]{8}\.fifo$/,
        );
      } else {
        expect(Object.keys(props).sort()).toEqual(['KmsMasterKeyId']);
      }
      const policy = Object.values(template.findResources('AWS::SNS::TopicPolicy')).find(
        (p) => JSON.stringify(p.Properties?.Topics) === JSON.stringify([{ Ref: id }]),
      );
      expect(policy?.Properties?.PolicyDocument?.Statement).toContainEqual(
        expect.objectContaining({
          Effect: 'Deny',
          Action: 'sns:Publish',
          Condition: { Bool: { 'aws:SecureTransport': 'false' } },
        }),
      );
    },
  );

  it('makes the S3 bucket private, TLS-only, S3-encrypted, versioned, retained, with access logs', () => {
    const { bucket, accessLogs } = endpointOf('archive', 's3');
    const [bucketId, logsId] = [logicalId(bucket), logicalId(accessLogs)];
    const blockAll = {
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    };
    const sse = {
      ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }],
    };
    expect(resource(bucketId)).toMatchObject({ DeletionPolicy: 'Retain' });
    expect(resource(bucketId).Properties).toEqual({
      BucketEncryption: sse,
      PublicAccessBlockConfiguration: blockAll,
      VersioningConfiguration: { Status: 'Enabled' },
      LifecycleConfiguration: {
        Rules: [{ NoncurrentVersionExpiration: { NoncurrentDays: 30 }, Status: 'Enabled' }],
      },
      LoggingConfiguration: { DestinationBucketName: { Ref: logsId } },
    });
    expect(resource(logsId)).toMatchObject({ DeletionPolicy: 'Retain' });
    expect(resource(logsId).Properties).toMatchObject({
      BucketEncryption: sse,
      PublicAccessBlockConfiguration: blockAll,
    });
    expect(resource(logsId).Properties?.AccessControl).toBeUndefined();

    const policies = Object.values(template.findResources('AWS::S3::BucketPolicy'));
    const statementsOf = (id: string) =>
      policies.find((p) => JSON.stringify(p.Properties?.Bucket) === JSON.stringify({ Ref: id }))?.Properties
        ?.PolicyDocument?.Statement as unknown[];
    const denyPlain = expect.objectContaining({
      Effect: 'Deny',
      Action: 's3:*',
      Condition: { Bool: { 'aws:SecureTransport': 'false' } },
    });
    expect(statementsOf(bucketId)).toContainEqual(denyPlain);
    expect(statementsOf(logsId)).toContainEqual(denyPlain);
    // Log delivery by bucket policy, only from the endpoint bucket (no ACL).
    expect(statementsOf(logsId)).toContainEqual(
      expect.objectContaining({
        Effect: 'Allow',
        Principal: { Service: 'logging.s3.amazonaws.com' },
        Action: 's3:PutObject',
        Condition: {
          ArnLike: { 'aws:SourceArn': { 'Fn::GetAtt': [bucketId, 'Arn'] } },
          StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } },
        },
      }),
    );
  });

  it('makes a custom event bus for the eventbridge endpoint', () => {
    const bus = resource(endpointId('bus'));
    expect(bus.Type).toBe('AWS::Events::EventBus');
    expect(bus.Properties?.Description).toBe("Custom endpoint 'bus' of the IoT hub");
    // The name is required by CloudFormation; CDK derives it from the construct path.
    expect(bus.Properties?.Name).toMatch(/^ServerlessIotHubCustomEndpointsbusBus[0-9A-F]{8}$/);
  });

  it('gives no endpoint resource a configured physical name', () => {
    const named = Object.entries(template.toJSON().Resources ?? {})
      .filter(([id]) => id.startsWith('CustomEndpoints'))
      .flatMap(([id, r]) => {
        const props = (r as { Properties?: Record<string, unknown> }).Properties ?? {};
        return ['Name', 'QueueName', 'BucketName', 'TopicName']
          .filter((key) => props[key] !== undefined)
          .map((key) => `${id}.${key}`);
      });
    // Only the names CloudFormation requires and CDK generates: the FIFO topic's and the bus's.
    expect(named.sort()).toEqual(
      [`${endpointId('bus')}.Name`, `${endpointId('fanout-fifo')}.TopicName`].sort(),
    );
  });

  it('exports every endpoint, routed or not, with type, target and ARN in the CustomEndpoints output', () => {
    const output = template.findOutputs('CustomEndpoints').CustomEndpoints;
    const streamOf = (name: string) => ({
      type: 'kinesis',
      target: `<${endpointId(name)}>`,
      arn: `<${endpointId(name)}.Arn>`,
    });
    const queueOf = (name: string) => ({
      type: 'sqs',
      target: `<${endpointId(name)}>`,
      arn: `<${endpointId(name)}.Arn>`,
    });
    const topicOf = (name: string) => ({
      type: 'sns',
      target: `<${endpointId(name)}>`,
      arn: `<${endpointId(name)}>`,
    });
    expect(JSON.parse(show(output?.Value))).toEqual({
      'hot-path': streamOf('hot-path'),
      cold_store: streamOf('cold_store'),
      unused: streamOf('unused'),
      alerts: queueOf('alerts'),
      ordered: queueOf('ordered'),
      fanout: topicOf('fanout'),
      'fanout-fifo': topicOf('fanout-fifo'),
      archive: { type: 's3', target: `<${endpointId('archive')}>`, arn: `<${endpointId('archive')}.Arn>` },
      bus: { type: 'eventbridge', target: `<${endpointId('bus')}>`, arn: `<${endpointId('bus')}.Arn>` },
      'idle-queue': queueOf('idle-queue'),
    });
    expect(template.findOutputs('CustomEndpointStreams')).toEqual({});
  });

  it('exports an empty mapping and creates no endpoint resource when there are no custom endpoints', () => {
    const plain = synthHub({}).template;
    expect(plain.findOutputs('CustomEndpoints').CustomEndpoints?.Value).toBe('{}');
    expect(Object.keys(plain.findResources('AWS::Kinesis::Stream'))).toHaveLength(3);
    expect(
      Object.keys(plain.toJSON().Resources ?? {}).filter((id) => id.startsWith('CustomEndpoints')),
    ).toEqual([]);
  });
});

describe('router routing file', () => {
  it('bundles the hub name and the validated routing configuration as routing.json, recorded in metadata', () => {
    const files = routerFiles();
    expect(Object.keys(files)).toEqual([ROUTING_FILE]);
    const expected = { hubName: 'routing-hub', routing: parseHubConfig(ROUTED).routing };
    expect(JSON.parse(files[ROUTING_FILE] ?? '')).toEqual(expected);
    // What the router itself reads back.
    expect(parseRouterRouting(files[ROUTING_FILE])).toEqual(expected);
  });

  it('keeps the routing out of the environment', () => {
    const env = routerEnvironment();
    expect(Object.keys(env)).not.toContain('ROUTING');
    expect(Object.keys(env)).not.toContain('ENDPOINT_STREAMS');
    expect(env.MAX_MESSAGE_BYTES).toBe(String(256 * 1024));
    expect(env.BUILTIN_STREAM_NAME).toEqual({ Ref: ids.builtIn });
  });

  it('bundles the default routing and sets an empty ENDPOINTS when hub.routing is absent', () => {
    const plain = synthHub({});
    const id = logicalId(plain.stack.d2c.router.function);
    expect(JSON.parse(routerFiles(plain.template, id)[ROUTING_FILE] ?? '')).toEqual({
      hubName: 'serverless-iot-hub',
      routing: { endpoints: [], routes: [], fallbackRoute: { isEnabled: true }, enrichments: [] },
    });
    expect(routerEnvironment(plain.template, id)[ENDPOINTS_ENV]).toBe('{}');
  });

  it('synthesizes 100 routes with 1 KB conditions (no environment size cap)', () => {
    const condition = (i: number) => {
      const head = `$body.temperature > ${i} AND level = '`;
      return `${head}${'x'.repeat(1024 - head.length - 1)}'`;
    };
    const routing = {
      routes: Array.from({ length: 100 }, (_, i) => ({
        name: `route-${i}`,
        condition: condition(i),
        endpointNames: ['events'],
      })),
    };
    expect(routing.routes.every((r) => r.condition.length === 1024)).toBe(true);
    const big = synthHub({ routing });
    const id = logicalId(big.stack.d2c.router.function);
    const content = routerFiles(big.template, id)[ROUTING_FILE] ?? '';
    expect(content.length).toBeGreaterThan(100 * 1024);
    expect(parseRouterRouting(content).routing.routes).toHaveLength(100);
    // The environment stays small: names and numbers only.
    expect(JSON.stringify(routerEnvironment(big.template, id)).length).toBeLessThan(1024);
  });
});

describe('router ENDPOINTS', () => {
  it('maps only the routed endpoints to their type and target', () => {
    const mapping = JSON.parse(show(routerEnvironment()[ENDPOINTS_ENV]));
    // Ref of a stream is its name, of a queue its URL, of a topic its ARN, of a bucket or a bus its name.
    expect(mapping).toEqual(
      Object.fromEntries(
        ROUTED_NAMES.map((name) => [
          name,
          { type: stack.customEndpoints.endpoint(name).type, target: `<${endpointId(name)}>` },
        ]),
      ),
    );
    expect(Object.values(mapping).map((e) => (e as { type: string }).type)).toEqual([
      'kinesis',
      'sqs',
      'sqs',
      'sns',
      'sns',
      's3',
      'eventbridge',
    ]);
    // What the router itself reads back.
    expect(endpointTargetsFromEnv({ [ENDPOINTS_ENV]: JSON.stringify(mapping) })).toEqual(mapping);
  });

  it('needs no custom endpoint for a route to events', () => {
    const { stack: eventsOnly, template: t } = synthHub({
      routing: { routes: [{ name: 'to-events', condition: "level = 'info'", endpointNames: ['events'] }] },
    });
    expect(Object.keys(t.findResources('AWS::Kinesis::Stream'))).toHaveLength(3);
    expect(eventsOnly.customEndpoints.endpoints.size).toBe(0);
    expect(routerEnvironment(t, logicalId(eventsOnly.d2c.router.function))[ENDPOINTS_ENV]).toBe('{}');
  });
});

describe('router grants', () => {
  it('lists the routed endpoints: enabled routes only, not events', () => {
    expect(routedEndpointNames(parseHubConfig(ROUTED).routing)).toEqual(ROUTED_NAMES);
  });

  it('grants exactly the write action of each routed endpoint, on that resource only', () => {
    const arn = (name: string) => `<${endpointId(name)}.Arn>`;
    expect(routerEndpointGrants().sort()).toEqual(
      [
        `kinesis:PutRecord on ${arn('hot-path')}`,
        `kinesis:PutRecords on ${arn('hot-path')}`,
        `sqs:SendMessage on ${arn('alerts')}`,
        `sqs:SendMessage on ${arn('ordered')}`,
        // A topic's Ref is its ARN.
        `sns:Publish on <${endpointId('fanout')}>`,
        `sns:Publish on <${endpointId('fanout-fifo')}>`,
        `s3:PutObject on ${arn('archive')}/*`,
        `events:PutEvents on ${arn('bus')}`,
      ].sort(),
    );
    expect(WRITE_ACTIONS).toEqual({
      kinesis: ['kinesis:PutRecord', 'kinesis:PutRecords'],
      sqs: ['sqs:SendMessage'],
      sns: ['sns:Publish'],
      s3: ['s3:PutObject'],
      eventbridge: ['events:PutEvents'],
    });
  });

  it('gives the router nothing on an unrouted endpoint, a dead-letter queue or an access log bucket', () => {
    const touched = new Set(
      iamStatements(template)
        .filter((s) => s.roles.includes(ids.routerRole))
        .flatMap((s) => referencedIds(s.resources)),
    );
    const untouched = [
      endpointId('cold_store'),
      endpointId('unused'),
      endpointId('idle-queue'),
      logicalId(endpointOf('alerts', 'sqs').deadLetterQueue),
      logicalId(endpointOf('ordered', 'sqs').deadLetterQueue),
      logicalId(endpointOf('idle-queue', 'sqs').deadLetterQueue),
      logicalId(endpointOf('archive', 's3').accessLogs),
    ];
    for (const id of untouched) expect(touched).not.toContain(id);
  });

  it('gives the router no KMS permission (the endpoints use AWS-managed or service-managed keys)', () => {
    const kms = iamStatements(template)
      .filter((s) => s.roles.includes(ids.routerRole))
      .flatMap((s) => s.actions.filter((a) => a.startsWith('kms:')));
    expect(kms).toEqual([]);
  });

  it("grants no action with a wildcard ('*', 'service:*' or 'service:Prefix*') anywhere", () => {
    const wildcards = iamStatements(template).flatMap((s) =>
      s.actions.filter((a) => a.includes('*')).map((a) => `${s.source}: ${a}`),
    );
    expect(wildcards).toEqual([]);
  });
});

describe('cdk-nag with all five endpoint types routed', () => {
  it("acknowledges the bucket's object wildcard on the router role only, naming that bucket", () => {
    const acknowledged = (construct: IConstruct) =>
      construct.node.metadata
        .filter((m) => m.type === Validations.ACKNOWLEDGED_RULES_METADATA_KEY)
        .flatMap((m) => Object.keys(m.data as Record<string, string>))
        .map((id) => id.replace(/^annotation::/i, ''))
        .filter((id) => id.startsWith('AwsSolutions-IAM5[Resource::<CustomEndpoints'));
    const role = stack.d2c.router.function.role;
    if (!(role instanceof Construct)) throw new Error('the router role is not a construct');
    expect(acknowledged(role)).toEqual([`AwsSolutions-IAM5[Resource::<${endpointId('archive')}.Arn>/*]`]);
    const others = stack.node.findAll().filter((c) => c !== role);
    expect(others.flatMap(acknowledged)).toEqual([]);
  });

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
          { name: 'A', type: 'sqs' },
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
    expect(configError({ routing: { endpoints: [{ name: 'Events', type: 'sqs' }] } })).toContain(
      'hub.routing.endpoints.0.name:',
    );
    expect(configError({ routing: { endpoints: [{ name: 'q', type: 'kafka' }] } })).toContain(
      'hub.routing.endpoints.0.type:',
    );
    expect(configError({ routing: { endpoints: [{ name: 'q', type: 'sqs', retentionDays: 3 }] } })).toContain(
      'hub.routing.endpoints.0.retentionDays: unknown key',
    );
    expect(configError({ routing: { route: [] } })).toContain('hub.routing.route: unknown key');
  });

  it('refuses a stream retention outside 1-365 days and an S3 chunk size out of range', () => {
    expect(
      configError({ routing: { endpoints: [{ name: 'e', type: 'kinesis', retentionDays: 366 }] } }),
    ).toContain('hub.routing.endpoints.0.retentionDays');
    expect(
      configError({ routing: { endpoints: [{ name: 'b', type: 's3', maxChunkSizeInBytes: 1 }] } }),
    ).toContain('hub.routing.endpoints.0.maxChunkSizeInBytes');
  });
});
