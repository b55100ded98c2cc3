import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { IoTDataPlaneClient } from '@aws-sdk/client-iot-data-plane';
import { KinesisClient } from '@aws-sdk/client-kinesis';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { NodeHttpHandler } from '@smithy/node-http-handler';

// Endpoints and credentials come from the standard SDK configuration (AWS_REGION,
// AWS_ENDPOINT_URL_<SERVICE>, the credential chain): the same code runs in Lambda and in the local
// hub, which sets those variables for its functions. Clients are made once per process.

let kinesis: KinesisClient | undefined;
let dynamo: DynamoDBDocumentClient | undefined;
let iotData: IoTDataPlaneClient | undefined;

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
