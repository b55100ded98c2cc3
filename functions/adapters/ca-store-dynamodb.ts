import { DeleteCommand, type DynamoDBDocumentClient, GetCommand, PutCommand } from '@aws-sdk/lib-dynamodb';
import { HubError } from '../core/errors.ts';
import {
  type CaCertificate,
  type CaCertificateStore,
  caCertificateRecordSchema,
} from '../core/identity/ca-certificates.ts';
import { callTable, isConditionalCheckFailed, queryPages } from './dynamodb-calls.ts';

/** Partition key of every CA certificate item in the registry table. */
export const CA_CERTIFICATE_PARTITION = 'cacert';

/**
 * Key of a CA certificate's item in the registry table: `pk = cacert`, `sk = cacert#{name}`.
 *
 * All CAs share one partition, so the authenticator reads them all with one Query (a hub keeps at most 25)
 * instead of a Scan over every device; device items (`pk = device#{id}`, `sk = device`) never collide with
 * it, and the registry's device listing filters on `sk = device`, so it never returns these items.
 */
export function caCertificateKey(name: string): { pk: string; sk: string } {
  return { pk: CA_CERTIFICATE_PARTITION, sk: `cacert#${name}` };
}

/** Constructor options of {@link DynamoDbCaCertificateStore}. */
export interface DynamoDbCaCertificateStoreOptions {
  /** Document client, configured by the caller (endpoint, region, credentials). */
  readonly client: DynamoDBDocumentClient;
  /** The registry table (`pk`/`sk` strings; see `deviceKey` in `registry-dynamodb.ts`). */
  readonly tableName: string;
}

/**
 * CA certificates in the registry table (DynamoDB, dynalite locally): single conditional writes, consistent
 * reads. Needs item read/write on the table (`grantReadWriteData`), which the service API already has; the
 * local broker reads through it too.
 */
export class DynamoDbCaCertificateStore implements CaCertificateStore {
  private readonly client: DynamoDBDocumentClient;
  private readonly tableName: string;

  constructor(options: DynamoDbCaCertificateStoreOptions) {
    this.client = options.client;
    this.tableName = options.tableName;
  }

  /** {@inheritDoc CaCertificateStore.find} */
  async find(name: string): Promise<CaCertificate | undefined> {
    const out = await this.call(() =>
      this.client.send(
        new GetCommand({ TableName: this.tableName, Key: caCertificateKey(name), ConsistentRead: true }),
      ),
    );
    return out.Item === undefined ? undefined : this.fromItem(out.Item);
  }

  /** {@inheritDoc CaCertificateStore.list} */
  async list(): Promise<CaCertificate[]> {
    const records: CaCertificate[] = [];
    const pages = queryPages(
      this.client,
      {
        TableName: this.tableName,
        KeyConditionExpression: '#pk = :pk',
        ExpressionAttributeNames: { '#pk': 'pk' },
        ExpressionAttributeValues: { ':pk': CA_CERTIFICATE_PARTITION },
        ConsistentRead: true,
      },
      (fn) => this.call(fn),
    );
    for await (const items of pages) for (const item of items) records.push(this.fromItem(item));
    return records.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** {@inheritDoc CaCertificateStore.put} */
  async put(record: CaCertificate, expect: 'absent' | { readonly etag: string }): Promise<boolean> {
    try {
      await this.call(() =>
        this.client.send(
          new PutCommand({
            TableName: this.tableName,
            Item: { ...caCertificateKey(record.name), ...record },
            ...(expect === 'absent'
              ? {
                  ConditionExpression: 'attribute_not_exists(#pk)',
                  ExpressionAttributeNames: { '#pk': 'pk' },
                }
              : {
                  ConditionExpression: '#etag = :etag',
                  ExpressionAttributeNames: { '#etag': 'etag' },
                  ExpressionAttributeValues: { ':etag': expect.etag },
                }),
          }),
        ),
      );
      return true;
    } catch (error) {
      if (isConditionalCheckFailed(error)) return false;
      throw error;
    }
  }

  /** {@inheritDoc CaCertificateStore.delete} */
  async delete(name: string, etag: string): Promise<boolean> {
    try {
      await this.call(() =>
        this.client.send(
          new DeleteCommand({
            TableName: this.tableName,
            Key: caCertificateKey(name),
            ConditionExpression: '#etag = :etag',
            ExpressionAttributeNames: { '#etag': 'etag' },
            ExpressionAttributeValues: { ':etag': etag },
          }),
        ),
      );
      return true;
    } catch (error) {
      if (isConditionalCheckFailed(error)) return false;
      throw error;
    }
  }

  private fromItem(item: Record<string, unknown>): CaCertificate {
    const { pk: _pk, sk: _sk, ...rest } = item;
    const parsed = caCertificateRecordSchema.safeParse(rest);
    if (!parsed.success) {
      throw new HubError(
        'CorruptCertificateRecord',
        `registry item ${String(item.sk)} is not a CA certificate`,
        {
          sk: item.sk,
          issues: parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`),
        },
      );
    }
    return parsed.data;
  }

  /** Runs a DynamoDB call, turning throttling and server faults into {@link TransientError}. */
  private call<T>(fn: () => Promise<T>): Promise<T> {
    return callTable(fn, 'RegistryUnavailable', 'registry table');
  }
}
