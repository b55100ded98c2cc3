/**
 * Reads a synthesized CloudFormation template into the local hub's model: which streams, tables,
 * queues, functions (with their environment), IoT rules, event source mappings and schedules
 * exist. Intrinsics (Ref, Fn::GetAtt, Fn::Join, Fn::Sub, pseudo parameters) are resolved to the
 * local physical names, so the environment a handler sees here has the same shape as in Lambda.
 */

import { ENTRY_METADATA_KEY, FILES_METADATA_KEY } from '../lib/function-metadata.ts';

const REGION = 'us-east-1';
const ACCOUNT = '000000000000';

/**
 * What an SQS queue's `Ref` (its URL) resolves to until the local SQS emulator listens: the hub
 * replaces this prefix with the emulator's queue URL prefix (see {@link substituteQueueUrls}).
 */
export const QUEUE_URL_PLACEHOLDER = 'local-sqs-queue://';

/** Replaces {@link QUEUE_URL_PLACEHOLDER} in `value` with `urlOf(queueName)`. */
export function substituteQueueUrls(value: string, urlOf: (queueName: string) => string): string {
  return value.replace(/local-sqs-queue:\/\/([A-Za-z0-9_.-]+)/g, (_, name: string) => urlOf(name));
}

/** A CloudFormation template, as far as the local hub reads it. */
export interface CfnTemplate {
  Resources: Record<string, CfnResource>;
  Outputs?: Record<string, { Value: unknown }>;
}
interface CfnResource {
  Type: string;
  Properties?: Record<string, unknown>;
  Metadata?: Record<string, unknown>;
}

/** A DynamoDB table to create locally. */
export interface LocalTable {
  readonly logicalId: string;
  readonly name: string;
  readonly properties: Record<string, unknown>;
}
/** A Kinesis stream to create locally. */
export interface LocalStream {
  readonly logicalId: string;
  readonly name: string;
  readonly arn: string;
  readonly shardCount: number;
}
/**
 * An SQS queue, created in the local SQS emulator. A Lambda on-failure destination queue is also
 * kept as a JSON-lines file under the data directory (see `local/kinesis-mapping.ts`).
 */
export interface LocalQueue {
  readonly logicalId: string;
  readonly name: string;
  readonly arn: string;
  readonly fifo: boolean;
  /** Queue attributes for CreateQueue (retention, redrive policy, ...), as strings. */
  readonly attributes: Readonly<Record<string, string>>;
}
/** An SNS topic, created in the local SNS emulator. */
export interface LocalTopic {
  readonly logicalId: string;
  readonly name: string;
  readonly arn: string;
  readonly fifo: boolean;
}
/** An S3 bucket, created in the local S3 emulator. */
export interface LocalBucket {
  readonly logicalId: string;
  readonly name: string;
}
/** A custom EventBridge event bus, created in the local EventBridge stand-in. */
export interface LocalEventBus {
  readonly logicalId: string;
  readonly name: string;
  readonly arn: string;
}
/** A Lambda function and the module that implements it. */
export interface LocalFunction {
  readonly logicalId: string;
  readonly name: string;
  readonly arn: string;
  /** Handler source relative to the project root, from the function's metadata. */
  readonly entry: string;
  readonly environment: Record<string, string>;
  readonly timeoutSeconds: number;
  /** Files bundled next to the handler (`HubFunction`'s `files`), by name. */
  readonly files: Readonly<Record<string, string>>;
  /**
   * `ReservedConcurrentExecutions`: at most this many environments run the function at once.
   * @default the local runner's default
   */
  readonly reservedConcurrency?: number;
  /**
   * How Lambda treats an asynchronous (`Event`) invocation that fails, from the function's
   * `AWS::Lambda::EventInvokeConfig`. @default Lambda's defaults (see {@link DEFAULT_ASYNC_INVOKE})
   */
  readonly asyncInvoke?: LocalAsyncInvokeConfig;
}
/** A function's `AWS::Lambda::EventInvokeConfig`: retries and on-failure destination of async invocations. */
export interface LocalAsyncInvokeConfig {
  /** Retries after the first attempt (0 to 2). */
  readonly maximumRetryAttempts: number;
  /** An event older than this is not tried again (60 to 21600). */
  readonly maximumEventAgeSeconds: number;
  /** SQS queue (local name) that gets the invocation record of an event that finally failed. */
  readonly onFailureQueueName?: string;
}
/** What Lambda does without an EventInvokeConfig: two retries, events kept six hours, no destination. */
export const DEFAULT_ASYNC_INVOKE: LocalAsyncInvokeConfig = {
  maximumRetryAttempts: 2,
  maximumEventAgeSeconds: 21_600,
};
/** One IoT rule action, with templates still unevaluated (`${topic(2)}`). */
export type LocalRuleAction =
  | { readonly kind: 'kinesis'; readonly streamName: string; readonly partitionKey: string }
  | {
      readonly kind: 'dynamoDb';
      readonly tableName: string;
      readonly hashKeyField: string;
      readonly hashKeyValue: string;
      readonly rangeKeyField?: string;
      readonly rangeKeyValue?: string;
      readonly payloadField: string;
    }
  | { readonly kind: 'lambda'; readonly functionLogicalId: string }
  | { readonly kind: 'republish'; readonly topic: string; readonly qos: number };
/** An IoT topic rule. */
export interface LocalRule {
  readonly logicalId: string;
  /** The rule's name (its `Ref`), as in a Basic Ingest topic `$aws/rules/{name}/...`. @default logicalId */
  readonly name?: string;
  readonly sql: string;
  readonly disabled: boolean;
  readonly actions: readonly LocalRuleAction[];
  readonly errorAction?: LocalRuleAction;
}
/** A Kinesis event source mapping. */
export interface LocalKinesisMapping {
  readonly logicalId: string;
  readonly functionLogicalId: string;
  readonly streamName: string;
  readonly batchSize: number;
  readonly startingPosition: 'TRIM_HORIZON' | 'LATEST';
  readonly bisectOnError: boolean;
  readonly reportBatchItemFailures: boolean;
  /** -1 means retry until the records expire. */
  readonly maxRetryAttempts: number;
  readonly onFailureQueueName?: string;
  /** `MaximumBatchingWindowInSeconds` in ms: how long a batch may gather records (0: none). */
  readonly maxBatchingWindowMs?: number;
  /** `ParallelizationFactor`: the local hub runs one batch per shard at a time and accepts only 1. */
  readonly parallelizationFactor?: number;
}
/** A schedule (EventBridge rule with a `rate(...)` expression) that invokes functions. */
export interface LocalSchedule {
  readonly logicalId: string;
  readonly everyMs: number;
  readonly functionLogicalIds: readonly string[];
}
/** A Lambda Function URL: locally an HTTP server in front of the function. */
export interface LocalFunctionUrl {
  readonly logicalId: string;
  readonly functionLogicalId: string;
  readonly authType: string;
}
/** Everything the local hub runs, derived from one template. */
export interface LocalModel {
  readonly tables: readonly LocalTable[];
  readonly streams: readonly LocalStream[];
  readonly queues: readonly LocalQueue[];
  readonly topics: readonly LocalTopic[];
  readonly buckets: readonly LocalBucket[];
  readonly eventBuses: readonly LocalEventBus[];
  readonly functions: readonly LocalFunction[];
  readonly rules: readonly LocalRule[];
  readonly kinesisMappings: readonly LocalKinesisMapping[];
  readonly schedules: readonly LocalSchedule[];
  readonly functionUrls: readonly LocalFunctionUrl[];
  /** Stack outputs, resolved to local values (e.g. `BuiltInEndpointStreamName`). */
  readonly outputs: Readonly<Record<string, string>>;
}

/** A template that uses something the local hub cannot run; names the resource and the property. */
export class UnsupportedTemplateError extends Error {
  constructor(logicalId: string, what: string) {
    super(`local hub cannot run resource ${logicalId}: ${what}`);
    this.name = 'UnsupportedTemplateError';
  }
}

/**
 * Physical name the local hub gives a resource: stable across restarts, like a deployed stack's,
 * and valid for its service (FIFO queues and topics end in `.fifo`; bucket names are lower case).
 */
function physicalName(stackName: string, logicalId: string, resource: CfnResource): string {
  const name = `${stackName}-${logicalId}`;
  switch (resource.Type) {
    case 'AWS::SQS::Queue':
      return resource.Properties?.FifoQueue === true ? `${name.slice(0, 75)}.fifo` : name.slice(0, 80);
    case 'AWS::SNS::Topic':
      return resource.Properties?.FifoTopic === true ? `${name.slice(0, 251)}.fifo` : name;
    case 'AWS::S3::Bucket':
      return name.toLowerCase().slice(0, 63);
    case 'AWS::IoT::TopicRule':
      // IoT rule names allow only letters, digits and '_' (they appear in Basic Ingest topics).
      return name.replace(/[^a-zA-Z0-9_]/g, '_').slice(0, 128);
    default:
      return name;
  }
}

function arnOf(type: string, name: string): string | undefined {
  switch (type) {
    case 'AWS::Kinesis::Stream':
      return `arn:aws:kinesis:${REGION}:${ACCOUNT}:stream/${name}`;
    case 'AWS::DynamoDB::Table':
      return `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/${name}`;
    case 'AWS::SQS::Queue':
      return `arn:aws:sqs:${REGION}:${ACCOUNT}:${name}`;
    case 'AWS::Lambda::Function':
      return `arn:aws:lambda:${REGION}:${ACCOUNT}:function:${name}`;
    case 'AWS::IAM::Role':
      return `arn:aws:iam::${ACCOUNT}:role/${name}`;
    case 'AWS::Logs::LogGroup':
      return `arn:aws:logs:${REGION}:${ACCOUNT}:log-group:${name}:*`;
    case 'AWS::SNS::Topic':
      return `arn:aws:sns:${REGION}:${ACCOUNT}:${name}`;
    case 'AWS::S3::Bucket':
      return `arn:aws:s3:::${name}`;
    case 'AWS::Events::EventBus':
      return `arn:aws:events:${REGION}:${ACCOUNT}:event-bus/${name}`;
    default:
      return undefined;
  }
}

/** Reads a template into a {@link LocalModel}. `stackName` prefixes local physical names. */
export function readTemplate(template: CfnTemplate, stackName: string): LocalModel {
  const resources = template.Resources;
  const names = new Map<string, string>();
  const arns = new Map<string, string>();
  for (const [id, r] of Object.entries(resources)) {
    const name = physicalName(stackName, id, r);
    names.set(id, name);
    const arn = arnOf(r.Type, name);
    if (arn !== undefined) arns.set(id, arn);
  }

  const resolve = (value: unknown, where: string): unknown => {
    if (Array.isArray(value)) return value.map((v) => resolve(v, where));
    if (value === null || typeof value !== 'object') return value;
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj);
    if (keys.length === 1) {
      const [key] = keys as [string];
      const arg = obj[key];
      switch (key) {
        case 'Ref':
          return ref(String(arg), where);
        case 'Fn::GetAtt': {
          const [id, attr] = (Array.isArray(arg) ? arg : String(arg).split('.')) as [string, string];
          if (attr === 'Arn') {
            const arn = arns.get(id);
            if (arn === undefined) throw new UnsupportedTemplateError(where, `no local ARN for ${id}`);
            return arn;
          }
          if (attr === 'StreamArn') return `${arns.get(id)}/stream/local`;
          if (attr === 'QueueName' || attr === 'TopicName' || attr === 'Name') return names.get(id);
          if (attr === 'QueueUrl') return `${QUEUE_URL_PLACEHOLDER}${names.get(id)}`;
          // The local service API's address is known only once it listens; see LocalHubEndpoints.
          if (attr === 'FunctionUrl') return `local-function-url://${id}`;
          throw new UnsupportedTemplateError(where, `Fn::GetAtt ${id}.${attr}`);
        }
        case 'Fn::Join': {
          const [sep, parts] = arg as [string, unknown[]];
          return parts.map((p) => String(resolve(p, where))).join(sep);
        }
        case 'Fn::Sub': {
          const [text, vars] = (Array.isArray(arg) ? arg : [arg, {}]) as [string, Record<string, unknown>];
          return text.replace(/\$\{([^}]+)\}/g, (_, name: string) => {
            // `${!Literal}` is CloudFormation's escape for a literal `${Literal}`.
            if (name.startsWith('!')) return `\${${name.slice(1)}}`;
            if (name in vars) return String(resolve(vars[name], where));
            if (name.endsWith('.Arn'))
              return String(resolve({ 'Fn::GetAtt': [name.slice(0, -4), 'Arn'] }, where));
            return String(ref(name, where));
          });
        }
        case 'Fn::Select': {
          const [index, list] = arg as [number, unknown];
          const items = resolve(list, where) as unknown[];
          return items[Number(index)];
        }
        case 'Fn::Split': {
          const [sep, text] = arg as [string, unknown];
          return String(resolve(text, where)).split(sep);
        }
      }
    }
    return Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, resolve(v, where)]));
  };
  const ref = (id: string, where: string): string => {
    switch (id) {
      case 'AWS::Region':
        return REGION;
      case 'AWS::AccountId':
        return ACCOUNT;
      case 'AWS::Partition':
        return 'aws';
      case 'AWS::URLSuffix':
        return 'amazonaws.com';
      case 'AWS::StackName':
        return stackName;
      case 'AWS::NoValue':
        return '';
    }
    const name = names.get(id);
    if (name === undefined) throw new UnsupportedTemplateError(where, `Ref to unknown ${id}`);
    switch (resources[id]?.Type) {
      // A queue's Ref is its URL, known once the SQS emulator listens.
      case 'AWS::SQS::Queue':
        return `${QUEUE_URL_PLACEHOLDER}${name}`;
      case 'AWS::SNS::Topic':
        return arns.get(id) ?? name;
      default:
        return name;
    }
  };
  const byArn = (arn: unknown, where: string): string => {
    for (const [id, a] of arns) if (a === arn) return id;
    throw new UnsupportedTemplateError(where, `no local resource with ARN ${String(arn)}`);
  };
  const functionIdOf = (value: unknown, where: string): string => {
    const text = String(value);
    for (const [id, name] of names) {
      if (resources[id]?.Type !== 'AWS::Lambda::Function') continue;
      if (text === name || text === arns.get(id)) return id;
    }
    throw new UnsupportedTemplateError(where, `no local function ${text}`);
  };

  const model: {
    tables: LocalTable[];
    streams: LocalStream[];
    queues: LocalQueue[];
    topics: LocalTopic[];
    buckets: LocalBucket[];
    eventBuses: LocalEventBus[];
    functions: LocalFunction[];
    rules: LocalRule[];
    kinesisMappings: LocalKinesisMapping[];
    schedules: LocalSchedule[];
    functionUrls: LocalFunctionUrl[];
    outputs: Record<string, string>;
  } = {
    functionUrls: [],
    tables: [],
    streams: [],
    queues: [],
    topics: [],
    buckets: [],
    eventBuses: [],
    functions: [],
    rules: [],
    kinesisMappings: [],
    schedules: [],
    outputs: {},
  };
  for (const [key, output] of Object.entries(template.Outputs ?? {})) {
    model.outputs[key] = String(resolve(output.Value, `Outputs.${key}`));
  }

  // Only the resource types the hub runs are read; others (permissions, roles, authorizers) may use
  // attributes that have no local value, and must not make the template unreadable.
  const RUN = new Set([
    'AWS::DynamoDB::Table',
    'AWS::Kinesis::Stream',
    'AWS::SQS::Queue',
    'AWS::SNS::Topic',
    'AWS::S3::Bucket',
    'AWS::Events::EventBus',
    'AWS::Lambda::Function',
    'AWS::IoT::TopicRule',
    'AWS::Lambda::EventSourceMapping',
    'AWS::Lambda::Url',
    'AWS::Events::Rule',
    'AWS::Lambda::EventInvokeConfig',
  ]);
  const asyncConfigs = new Map<string, LocalAsyncInvokeConfig>();
  for (const [id, r] of Object.entries(resources)) {
    if (!RUN.has(r.Type)) continue;
    const props = (resolve(r.Properties ?? {}, id) ?? {}) as Record<string, unknown>;
    const name = names.get(id) ?? id;
    switch (r.Type) {
      case 'AWS::DynamoDB::Table':
        model.tables.push({ logicalId: id, name, properties: props });
        break;
      case 'AWS::Kinesis::Stream':
        model.streams.push({
          logicalId: id,
          name,
          arn: arns.get(id) ?? '',
          // On-demand streams scale themselves in the cloud; locally two shards show the partitioning.
          shardCount: typeof props.ShardCount === 'number' ? Math.min(props.ShardCount, 4) : 2,
        });
        break;
      case 'AWS::SQS::Queue':
        model.queues.push({
          logicalId: id,
          name,
          arn: arns.get(id) ?? '',
          fifo: props.FifoQueue === true,
          attributes: queueAttributes(props),
        });
        break;
      case 'AWS::SNS::Topic':
        model.topics.push({ logicalId: id, name, arn: arns.get(id) ?? '', fifo: props.FifoTopic === true });
        break;
      case 'AWS::S3::Bucket':
        model.buckets.push({ logicalId: id, name });
        break;
      case 'AWS::Events::EventBus':
        model.eventBuses.push({ logicalId: id, name, arn: arns.get(id) ?? '' });
        break;
      case 'AWS::Lambda::Function': {
        const entry = r.Metadata?.[ENTRY_METADATA_KEY];
        if (typeof entry !== 'string') {
          throw new UnsupportedTemplateError(
            id,
            `function has no '${ENTRY_METADATA_KEY}' metadata (use HubFunction)`,
          );
        }
        const env = ((props.Environment as { Variables?: Record<string, unknown> } | undefined)?.Variables ??
          {}) as Record<string, unknown>;
        const files = (r.Metadata?.[FILES_METADATA_KEY] ?? {}) as Record<string, unknown>;
        model.functions.push({
          logicalId: id,
          name,
          arn: arns.get(id) ?? '',
          entry,
          environment: Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)])),
          timeoutSeconds: typeof props.Timeout === 'number' ? props.Timeout : 3,
          files: Object.fromEntries(Object.entries(files).map(([k, v]) => [k, String(v)])),
          ...reservedConcurrency(props.ReservedConcurrentExecutions, id),
        });
        break;
      }
      case 'AWS::Lambda::EventInvokeConfig': {
        const functionId = functionIdOf(props.FunctionName, id);
        if (asyncConfigs.has(functionId)) {
          throw new UnsupportedTemplateError(id, `a second EventInvokeConfig for ${functionId}`);
        }
        asyncConfigs.set(functionId, asyncInvokeConfig(props, id));
        break;
      }
      case 'AWS::IoT::TopicRule': {
        const payload = props.TopicRulePayload as Record<string, unknown>;
        const actions = (payload.Actions as Record<string, unknown>[]).map((a) => ruleAction(a, id));
        const errorAction = payload.ErrorAction
          ? ruleAction(payload.ErrorAction as Record<string, unknown>, id)
          : undefined;
        model.rules.push({
          logicalId: id,
          name,
          sql: String(payload.Sql),
          disabled: payload.RuleDisabled === true,
          actions,
          ...(errorAction ? { errorAction } : {}),
        });
        break;
      }
      case 'AWS::Lambda::EventSourceMapping': {
        const sourceId = byArn(props.EventSourceArn, id);
        if (resources[sourceId]?.Type !== 'AWS::Kinesis::Stream') {
          throw new UnsupportedTemplateError(id, `event source ${sourceId} is not a Kinesis stream`);
        }
        const onFailure = (props.DestinationConfig as { OnFailure?: { Destination?: string } } | undefined)
          ?.OnFailure?.Destination;
        const types = (props.FunctionResponseTypes as string[] | undefined) ?? [];
        const parallelization =
          typeof props.ParallelizationFactor === 'number' ? props.ParallelizationFactor : 1;
        if (parallelization !== 1) {
          throw new UnsupportedTemplateError(
            id,
            `ParallelizationFactor ${parallelization}: the local hub runs one batch per shard at a time (1)`,
          );
        }
        model.kinesisMappings.push({
          logicalId: id,
          functionLogicalId: functionIdOf(props.FunctionName, id),
          streamName: names.get(sourceId) ?? sourceId,
          batchSize: typeof props.BatchSize === 'number' ? props.BatchSize : 100,
          startingPosition: props.StartingPosition === 'LATEST' ? 'LATEST' : 'TRIM_HORIZON',
          bisectOnError: props.BisectBatchOnFunctionError === true,
          reportBatchItemFailures: types.includes('ReportBatchItemFailures'),
          maxRetryAttempts: typeof props.MaximumRetryAttempts === 'number' ? props.MaximumRetryAttempts : -1,
          ...(onFailure ? { onFailureQueueName: names.get(byArn(onFailure, id)) ?? '' } : {}),
          maxBatchingWindowMs:
            typeof props.MaximumBatchingWindowInSeconds === 'number'
              ? props.MaximumBatchingWindowInSeconds * 1000
              : 0,
          parallelizationFactor: parallelization,
        });
        break;
      }
      case 'AWS::Lambda::Url':
        model.functionUrls.push({
          logicalId: id,
          functionLogicalId: functionIdOf(props.TargetFunctionArn, id),
          authType: String(props.AuthType),
        });
        break;
      case 'AWS::Events::Rule': {
        const expression = props.ScheduleExpression;
        if (typeof expression !== 'string') break;
        const targets = ((props.Targets as { Arn: string }[] | undefined) ?? []).map((t) =>
          functionIdOf(t.Arn, id),
        );
        model.schedules.push({
          logicalId: id,
          everyMs: rateToMs(expression, id),
          functionLogicalIds: targets,
        });
        break;
      }
    }
  }
  // An EventInvokeConfig may come before or after its function in the template.
  model.functions = model.functions.map((fn) => {
    const asyncInvoke = asyncConfigs.get(fn.logicalId);
    return asyncInvoke ? { ...fn, asyncInvoke } : fn;
  });
  return model;

  function asyncInvokeConfig(props: Record<string, unknown>, where: string): LocalAsyncInvokeConfig {
    const number = (key: string, min: number, max: number, fallback: number): number => {
      const value = props[key];
      if (value === undefined) return fallback;
      if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
        throw new UnsupportedTemplateError(
          where,
          `${key} must be an integer from ${min} to ${max}, got ${String(value)}`,
        );
      }
      return value;
    };
    const destination = (props.DestinationConfig as { OnFailure?: { Destination?: unknown } } | undefined)
      ?.OnFailure?.Destination;
    let onFailureQueueName: string | undefined;
    if (destination !== undefined) {
      const targetId = byArn(destination, where);
      if (resources[targetId]?.Type !== 'AWS::SQS::Queue') {
        throw new UnsupportedTemplateError(
          where,
          `on-failure destination ${targetId} is a ${resources[targetId]?.Type}; only SQS queues are emulated`,
        );
      }
      onFailureQueueName = names.get(targetId) ?? targetId;
    }
    if ((props.DestinationConfig as { OnSuccess?: unknown } | undefined)?.OnSuccess !== undefined) {
      throw new UnsupportedTemplateError(where, 'on-success destinations are not emulated');
    }
    return {
      maximumRetryAttempts: number('MaximumRetryAttempts', 0, 2, DEFAULT_ASYNC_INVOKE.maximumRetryAttempts),
      maximumEventAgeSeconds: number(
        'MaximumEventAgeInSeconds',
        60,
        21_600,
        DEFAULT_ASYNC_INVOKE.maximumEventAgeSeconds,
      ),
      ...(onFailureQueueName === undefined ? {} : { onFailureQueueName }),
    };
  }

  function ruleAction(action: Record<string, unknown>, where: string): LocalRuleAction {
    const [kind] = Object.keys(action);
    const a = action[kind ?? ''] as Record<string, unknown>;
    switch (kind) {
      case 'Kinesis':
        return {
          kind: 'kinesis',
          streamName: String(a.StreamName),
          partitionKey: String(a.PartitionKey ?? '${newuuid()}'),
        };
      case 'DynamoDB':
        return {
          kind: 'dynamoDb',
          tableName: String(a.TableName),
          hashKeyField: String(a.HashKeyField),
          hashKeyValue: String(a.HashKeyValue),
          ...(a.RangeKeyField
            ? { rangeKeyField: String(a.RangeKeyField), rangeKeyValue: String(a.RangeKeyValue) }
            : {}),
          payloadField: String(a.PayloadField ?? 'payload'),
        };
      case 'Lambda':
        return { kind: 'lambda', functionLogicalId: functionIdOf(a.FunctionArn, where) };
      case 'Republish':
        return { kind: 'republish', topic: String(a.Topic), qos: Number(a.Qos ?? 0) };
      default:
        throw new UnsupportedTemplateError(where, `IoT rule action '${kind}' is not emulated`);
    }
  }
}

/** `ReservedConcurrentExecutions` as a {@link LocalFunction} field; 0 (a disabled function) is refused. */
function reservedConcurrency(value: unknown, where: string): { reservedConcurrency?: number } {
  if (value === undefined) return {};
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new UnsupportedTemplateError(
      where,
      `ReservedConcurrentExecutions must be a positive integer (0, a throttled function, is not emulated), got ${String(value)}`,
    );
  }
  return { reservedConcurrency: value };
}

/** The CreateQueue attributes of an `AWS::SQS::Queue`'s (resolved) properties. */
function queueAttributes(props: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of ['MessageRetentionPeriod', 'VisibilityTimeout', 'DelaySeconds', 'MaximumMessageSize']) {
    if (props[key] !== undefined) out[key] = String(props[key]);
  }
  if (props.FifoQueue === true) out.FifoQueue = 'true';
  if (props.ContentBasedDeduplication === true) out.ContentBasedDeduplication = 'true';
  if (props.RedrivePolicy !== undefined) out.RedrivePolicy = JSON.stringify(props.RedrivePolicy);
  return out;
}

/** `rate(5 minutes)` → milliseconds. */
function rateToMs(expression: string, where: string): number {
  const m = /^rate\((\d+)\s+(second|seconds|minute|minutes|hour|hours|day|days)\)$/.exec(expression.trim());
  if (!m) throw new UnsupportedTemplateError(where, `schedule '${expression}' (only rate(...) is emulated)`);
  const unit = (m[2] ?? '').replace(/s$/, '');
  const scale = { second: 1000, minute: 60_000, hour: 3_600_000, day: 86_400_000 }[unit] ?? 60_000;
  return Number(m[1]) * scale;
}
