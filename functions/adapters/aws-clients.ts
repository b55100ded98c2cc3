import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { EventBridgeClient } from '@aws-sdk/client-eventbridge';
import { IoTClient } from '@aws-sdk/client-iot';
import { IoTDataPlaneClient } from '@aws-sdk/client-iot-data-plane';
import { KinesisClient } from '@aws-sdk/client-kinesis';
import { S3Client } from '@aws-sdk/client-s3';
import { SNSClient } from '@aws-sdk/client-sns';
import { SQSClient } from '@aws-sdk/client-sqs';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { NodeHttpHandler } from '@smithy/node-http-handler';

// Endpoints and credentials come from the standard SDK configuration (AWS_REGION,
// AWS_ENDPOINT_URL_<SERVICE>, the credential chain): the same code runs in Lambda and in the local
// hub, which sets those variables for its functions. Clients are made once per process.

let kinesis: KinesisClient | undefined;
let dynamo: DynamoDBDocumentClient | undefined;
let iotData: IoTDataPlaneClient | undefined;
let iot: IoTClient | undefined;
let eventBridge: EventBridgeClient | undefined;
let sqs: SQSClient | undefined;
let sns: SNSClient | undefined;
let s3: S3Client | undefined;

/**
 * The Kinesis client. HTTP/1.1 on purpose: the SDK's HTTP/2 default is needed only for
 * SubscribeToShard, which the hub does not use, and HTTP/1.1 also works against kinesalite.
 */
export function kinesisClient(): KinesisClient {
  kinesis ??= new KinesisClient({ requestHandler: new NodeHttpHandler({ connectionTimeout: 5000 }) });
  return kinesis;
}

/** The DynamoDB document client (undefined attributes dropped, numbers as JS numbers). */
export function dynamoDocumentClient(): DynamoDBDocumentClient {
  dynamo ??= DynamoDBDocumentClient.from(new DynamoDBClient({}), {
    marshallOptions: { removeUndefinedValues: true },
  });
  return dynamo;
}

/** The IoT data-plane client (Publish, shadows). */
export function iotDataClient(): IoTDataPlaneClient {
  iotData ??= new IoTDataPlaneClient({});
  return iotData;
}

/** The IoT control-plane client (things, certificates, policies: X.509 provisioning). */
export function iotClient(): IoTClient {
  iot ??= new IoTClient({});
  return iot;
}

/** The EventBridge client (custom endpoints of type `eventbridge`). */
export function eventBridgeClient(): EventBridgeClient {
  eventBridge ??= new EventBridgeClient({});
  return eventBridge;
}

/** The SQS client (custom endpoints of type `sqs`). */
export function sqsClient(): SQSClient {
  sqs ??= new SQSClient({});
  return sqs;
}

/** The SNS client (custom endpoints of type `sns`). */
export function snsClient(): SNSClient {
  sns ??= new SNSClient({});
  return sns;
}

/**
 * The S3 client (custom endpoints of type `s3`). Path-style addressing when an endpoint URL is set
 * (`AWS_ENDPOINT_URL_S3`, or the all-services `AWS_ENDPOINT_URL`): a local emulator serves every
 * bucket on one host; virtual-hosted style, AWS's default, otherwise.
 */
export function s3Client(): S3Client {
  s3 ??= new S3Client({ forcePathStyle: s3PathStyle(process.env) });
  return s3;
}

/** Whether S3 requests must be path-style: true when the environment points S3 at a custom endpoint. */
export function s3PathStyle(env: NodeJS.ProcessEnv): boolean {
  return Boolean(env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL);
}
