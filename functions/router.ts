import type { KinesisStreamBatchResponse, KinesisStreamEvent } from 'aws-lambda';
import { dynamoDocumentClient, kinesisClient } from './adapters/aws-clients.ts';
import { DynamoDeadLetterStore } from './adapters/dead-letter-dynamodb.ts';
import { KinesisStreamSink } from './adapters/kinesis-sink.ts';
import { powertoolsLog } from './adapters/log.ts';
import { type RouterDeps, routeBatch } from './core/d2c/router.ts';
import { requireEnv, requireIntEnv } from './core/env.ts';
import { endpointStreamsFromEnv, routingFromEnv } from './core/routing/config.ts';
import { compileRouting } from './core/routing/table.ts';

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

function defaultDeps(env: NodeJS.ProcessEnv): RouterDeps {
  const { hubName, routing } = routingFromEnv(env);
  const endpoints = Object.fromEntries(
    Object.entries(endpointStreamsFromEnv(env)).map(([name, stream]) => [
      name,
      new KinesisStreamSink(kinesisClient(), stream),
    ]),
  );
  return {
    builtIn: new KinesisStreamSink(kinesisClient(), requireEnv(env, 'BUILTIN_STREAM_NAME')),
    endpoints,
    routing: compileRouting(routing, hubName),
    deadLetters: new DynamoDeadLetterStore(dynamoDocumentClient(), requireEnv(env, 'DEADLETTER_TABLE_NAME')),
    log: powertoolsLog('router'),
    limits: { maxMessageBytes: requireIntEnv(env, 'MAX_MESSAGE_BYTES') },
  };
}

export const handler = makeHandler(defaultDeps(process.env));
