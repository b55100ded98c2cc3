import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import type { KinesisStreamBatchResponse, KinesisStreamEvent } from 'aws-lambda';
import { dynamoDocumentClient, iotDataClient, kinesisClient } from './adapters/aws-clients.ts';
import { DynamoDeadLetterStore } from './adapters/dead-letter-dynamodb.ts';
import { endpointSink } from './adapters/endpoint-sinks.ts';
import { KinesisStreamSink } from './adapters/kinesis-sink.ts';
import { powertoolsLog } from './adapters/log.ts';
import { DynamoDbDeviceRegistry } from './adapters/registry-dynamodb.ts';
import { IotShadowStore } from './adapters/shadow-iot.ts';
import { DynamoDbTagsStore } from './adapters/twin-tags-dynamodb.ts';
import { type RouterDeps, routeBatch } from './core/d2c/router.ts';
import { requireEnv, requireIntEnv } from './core/env.ts';
import { HubError } from './core/errors.ts';
import { endpointTargetsFromEnv, parseRouterRouting, ROUTING_FILE } from './core/routing/config.ts';
import { compileRouting } from './core/routing/table.ts';
import { RegistryTwinReader, type TwinReader } from './core/twins/twin-reader.ts';

/**
 * The D2C router: a Kinesis event source mapping on the ingest stream invokes it with batches;
 * it evaluates the hub's routes and writes envelopes to the endpoints they select (the built-in
 * endpoint for the fallback route) and reports the first unsafe record as a batch
 * item failure, so Lambda retries from there (and only from there).
 */
export function makeHandler(deps: RouterDeps) {
  return async (event: KinesisStreamEvent): Promise<KinesisStreamBatchResponse> => {
    const records = event.Records.map((r) => ({
      sequenceNumber: r.kinesis.sequenceNumber,
      data: Buffer.from(r.kinesis.data, 'base64'),
    }));
    const result = await routeBatch(records, deps);
    deps.log.info('batch routed', { records: records.length, ...result });
    return {
      batchItemFailures: result.retryFrom === undefined ? [] : [{ itemIdentifier: result.retryFrom }],
    };
  };
}

/** Reads {@link ROUTING_FILE} from the function's code directory, where the stack bundles it. */
export function readRoutingFile(env: NodeJS.ProcessEnv) {
  const file = path.join(env.LAMBDA_TASK_ROOT ?? process.cwd(), ROUTING_FILE);
  if (!existsSync(file)) {
    throw new HubError('InvalidConfiguration', `${file} is missing; the stack bundles it with the router`, {
      file,
    });
  }
  return parseRouterRouting(readFileSync(file, 'utf8'));
}

/**
 * The twin reader over the registry table (`REGISTRY_TABLE_NAME`: device and tags items) and the IoT
 * data plane (classic shadows). The stack sets the variable, and grants the reads, only when the routing
 * reads `$twin`.
 */
export function twinReaderFromEnv(env: NodeJS.ProcessEnv): TwinReader {
  const tableName = requireEnv(env, 'REGISTRY_TABLE_NAME');
  const client = dynamoDocumentClient();
  return new RegistryTwinReader({
    registry: new DynamoDbDeviceRegistry({ client, tableName }),
    tags: new DynamoDbTagsStore({ client, tableName }),
    shadows: new IotShadowStore(iotDataClient()),
  });
}

function defaultDeps(env: NodeJS.ProcessEnv): RouterDeps {
  const { hubName, routing } = readRoutingFile(env);
  const compiled = compileRouting(routing, hubName);
  const endpoints = Object.fromEntries(
    Object.entries(endpointTargetsFromEnv(env)).map(([name, target]) => [
      name,
      endpointSink(name, target, { hubName, config: routing.endpoints.find((e) => e.name === name) }),
    ]),
  );
  return {
    builtIn: new KinesisStreamSink(kinesisClient(), requireEnv(env, 'BUILTIN_STREAM_NAME')),
    endpoints,
    routing: compiled,
    ...(compiled.usesTwin ? { twins: twinReaderFromEnv(env) } : {}),
    hubName,
    deadLetters: new DynamoDeadLetterStore(dynamoDocumentClient(), requireEnv(env, 'DEADLETTER_TABLE_NAME')),
    log: powertoolsLog('router'),
    limits: { maxMessageBytes: requireIntEnv(env, 'MAX_MESSAGE_BYTES') },
  };
}

export const handler = makeHandler(defaultDeps(process.env));
