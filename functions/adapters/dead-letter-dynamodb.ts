import { BatchWriteCommand, type DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { TransientError } from '../core/errors.ts';
import type { DeadLetter, DeadLetterStore } from '../core/ports.ts';

/** How long a dead letter is kept before DynamoDB TTL removes it. */
const RETENTION_SECONDS = 14 * 24 * 3600;

/**
 * Dead letters in the hub's dead-letter table: pk `dl#{deviceId}`, sk `{id}` (so a rewrite is idempotent), and one
 * device's dead letters read back with a Query, and the whole table with a Scan.
 */
export class DynamoDeadLetterStore implements DeadLetterStore {
  constructor(
    private readonly client: DynamoDBDocumentClient,
    private readonly tableName: string,
  ) {}

  async put(letters: readonly DeadLetter[]): Promise<void> {
    // BatchWriteItem refuses two writes of one key in a request; copies of one record are one letter.
    const unique = [...new Map(letters.map((l) => [`${l.deviceId}\n${l.id}`, l])).values()];
    for (let i = 0; i < unique.length; i += 25) {
      let requests = unique.slice(i, i + 25).map((l) => ({
        PutRequest: {
          Item: {
            pk: `dl#${l.deviceId}`,
            sk: `${l.id}`,
            ...l,
            expiresAt: Math.floor(Date.parse(l.at) / 1000) + RETENTION_SECONDS,
          },
        },
      }));
      for (let attempt = 0; requests.length > 0; attempt++) {
        if (attempt === 5)
          throw new TransientError('DeadLetterWriteFailed', 'dead-letter table kept refusing writes');
        const out = await this.client.send(
          new BatchWriteCommand({ RequestItems: { [this.tableName]: requests } }),
        );
        requests = (out.UnprocessedItems?.[this.tableName] ?? []) as typeof requests;
        if (requests.length > 0) await new Promise((r) => setTimeout(r, 50 * 2 ** attempt));
      }
    }
  }
}
