import { CreateTableCommand, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { KinesisClient } from '@aws-sdk/client-kinesis';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import dynalite from 'dynalite';
import kinesalite from 'kinesalite';
import { localDynamoClient, localKinesisClient } from '../../local/emulators.ts';
import { listen } from '../../local/net.ts';

/** An in-memory dynalite on a free loopback port, with SDK clients. */
export interface TestDynamo {
  readonly client: DynamoDBClient;
  readonly doc: DynamoDBDocumentClient;
  /** Creates a table with the hub's generic `pk`/`sk` string keys and returns its name. */
  createPkSkTable(name: string): Promise<string>;
  close(): Promise<void>;
}

/** The `pk`/`sk` key schema every hub table has. */
export const PK_SK_KEYS = {
  AttributeDefinitions: [
    { AttributeName: 'pk', AttributeType: 'S' as const },
    { AttributeName: 'sk', AttributeType: 'S' as const },
  ],
  KeySchema: [
    { AttributeName: 'pk', KeyType: 'HASH' as const },
    { AttributeName: 'sk', KeyType: 'RANGE' as const },
  ],
};

/** Starts an in-memory dynalite for one test file. */
export async function startTestDynamo(): Promise<TestDynamo> {
  const server = await listen(dynalite({ createTableMs: 0, deleteTableMs: 0 }), '127.0.0.1', 0);
  const client = localDynamoClient(server.url);
  const doc = DynamoDBDocumentClient.from(client, { marshallOptions: { removeUndefinedValues: true } });
  return {
    client,
    doc,
    createPkSkTable: async (name) => {
      await client.send(
        new CreateTableCommand({ TableName: name, BillingMode: 'PAY_PER_REQUEST', ...PK_SK_KEYS }),
      );
      return name;
    },
    close: async () => {
      client.destroy();
      await server.close();
    },
  };
}

/** An in-memory kinesalite on a free loopback port, with an SDK client. */
export interface TestKinesis {
  readonly client: KinesisClient;
  readonly url: string;
  close(): Promise<void>;
}

/** Starts an in-memory kinesalite for one test file. */
export async function startTestKinesis(): Promise<TestKinesis> {
  const server = await listen(
    kinesalite({ createStreamMs: 0, deleteStreamMs: 0, shardLimit: 100 }),
    '127.0.0.1',
    0,
  );
  const client = localKinesisClient(server.url);
  return {
    client,
    url: server.url,
    close: async () => {
      client.destroy();
      await server.close();
    },
  };
}
