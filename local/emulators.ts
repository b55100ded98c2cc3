import * as path from 'node:path';
import {
  CreateTableCommand,
  type CreateTableCommandInput,
  DescribeTableCommand,
  DynamoDBClient,
  ResourceInUseException,
} from '@aws-sdk/client-dynamodb';
import { EventBridgeClient } from '@aws-sdk/client-eventbridge';
import { IoTDataPlaneClient } from '@aws-sdk/client-iot-data-plane';
import {
  CreateStreamCommand,
  DescribeStreamSummaryCommand,
  KinesisClient,
  ResourceInUseException as StreamInUseException,
} from '@aws-sdk/client-kinesis';
import { S3Client } from '@aws-sdk/client-s3';
import { SNSClient } from '@aws-sdk/client-sns';
import { SQSClient } from '@aws-sdk/client-sqs';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import dynalite from 'dynalite';
import kinesalite from 'kinesalite';
import { listen, type RunningServer } from './net.ts';
import type { LocalStream, LocalTable } from './template.ts';

/** Credentials the local hub hands every SDK client; the emulators accept any. */
export const LOCAL_CREDENTIALS = { accessKeyId: 'local', secretAccessKey: 'local' } as const;
/** Region the local hub pretends to be in. */
export const LOCAL_REGION = 'us-east-1';

/** Starts dynalite with its LevelDB under `dataDir/dynamodb`. */
export function startDynamo(dataDir: string, host: string, port: number): Promise<RunningServer> {
  return listen(
    dynalite({ path: path.join(dataDir, 'dynamodb'), createTableMs: 0, deleteTableMs: 0 }),
    host,
    port,
  );
}

/** Starts kinesalite with its LevelDB under `dataDir/kinesis`. */
export function startKinesis(dataDir: string, host: string, port: number): Promise<RunningServer> {
  return listen(
    kinesalite({
      path: path.join(dataDir, 'kinesis'),
      createStreamMs: 0,
      deleteStreamMs: 0,
      shardLimit: 100,
    }),
    host,
    port,
  );
}

/** What every SDK client of a local emulator is given: its URL, the local region and credentials, HTTP/1.1. */
function localClientConfig(url: string) {
  return {
    endpoint: url,
    region: LOCAL_REGION,
    credentials: LOCAL_CREDENTIALS,
    requestHandler: new NodeHttpHandler(),
  };
}

/** SDK clients pointed at the local emulators. */
export function localKinesisClient(url: string): KinesisClient {
  return new KinesisClient(localClientConfig(url));
}

/** An SQS client for the local SQS emulator (`endpoints.awsServices`). */
export function localSqsClient(url: string): SQSClient {
  return new SQSClient(localClientConfig(url));
}

/** An SNS client for the local SNS emulator (`endpoints.awsServices`). */
export function localSnsClient(url: string): SNSClient {
  return new SNSClient(localClientConfig(url));
}

/** An S3 client for the local S3 emulator (`endpoints.awsServices`): path-style, one host serves every bucket. */
export function localS3Client(url: string): S3Client {
  return new S3Client({ ...localClientConfig(url), forcePathStyle: true });
}

/** An EventBridge client for the local stand-in (`endpoints.eventBridge`). */
export function localEventBridgeClient(url: string): EventBridgeClient {
  return new EventBridgeClient(localClientConfig(url));
}

/** An IoT data-plane client for the local hub's data plane (`endpoints.dataPlane`): publish, shadows. */
export function localIoTDataPlaneClient(url: string): IoTDataPlaneClient {
  return new IoTDataPlaneClient(localClientConfig(url));
}

/** A DynamoDB client for the local emulator. */
export function localDynamoClient(url: string): DynamoDBClient {
  return new DynamoDBClient({ endpoint: url, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
}

const TABLE_KEYS = [
  'AttributeDefinitions',
  'KeySchema',
  'GlobalSecondaryIndexes',
  'LocalSecondaryIndexes',
] as const;

/** Creates each table unless it exists (a restart reuses the data). */
export async function ensureTables(client: DynamoDBClient, tables: readonly LocalTable[]): Promise<void> {
  for (const table of tables) {
    const input: Record<string, unknown> = { TableName: table.name, BillingMode: 'PAY_PER_REQUEST' };
    for (const key of TABLE_KEYS) if (table.properties[key] !== undefined) input[key] = table.properties[key];
    try {
      await client.send(new DescribeTableCommand({ TableName: table.name }));
      continue;
    } catch {
      // not there yet
    }
    try {
      await client.send(new CreateTableCommand(input as unknown as CreateTableCommandInput));
    } catch (error) {
      if (!(error instanceof ResourceInUseException)) throw error;
    }
  }
}

/** Creates each stream unless it exists and waits until all are ACTIVE. */
export async function ensureStreams(client: KinesisClient, streams: readonly LocalStream[]): Promise<void> {
  for (const stream of streams) {
    try {
      await client.send(new CreateStreamCommand({ StreamName: stream.name, ShardCount: stream.shardCount }));
    } catch (error) {
      if (!(error instanceof StreamInUseException)) throw error;
    }
  }
  for (const stream of streams) {
    for (let i = 0; ; i++) {
      const out = await client.send(new DescribeStreamSummaryCommand({ StreamName: stream.name }));
      if (out.StreamDescriptionSummary?.StreamStatus === 'ACTIVE') break;
      if (i > 100) throw new Error(`stream ${stream.name} did not become ACTIVE`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
