import {
  DeleteCommand,
  type DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  type PutCommandInput,
} from '@aws-sdk/lib-dynamodb';
import { TagsConflictError } from '../core/twins/errors.ts';
import type { JsonObject, StoredTags, TagsStore } from '../core/twins/twin.ts';
import { callTable, isConditionalCheckFailed } from './dynamodb-calls.ts';

/** Sort key of a device's twin tags item, next to its registry item (`sk = device`). */
export const TWIN_SORT_KEY = 'twin';

/** Key of a device's twin tags item: `pk = device#{deviceId}`, `sk = twin`. */
export function twinTagsKey(deviceId: string): { pk: string; sk: string } {
  return { pk: `device#${deviceId}`, sk: TWIN_SORT_KEY };
}

/**
 * Twin tags in the registry table, one item per device beside its registry item. Writes are conditional
 * on the version and generation read, so concurrent tag updates cannot overwrite each other unseen.
 * The registry's delete leaves this item; it belongs to the device's generation, so a device created
 * later with the same id starts with no tags (and the service API deletes it after a device delete).
 */
export class DynamoDbTagsStore implements TagsStore {
  constructor(
    private readonly options: { readonly client: DynamoDBDocumentClient; readonly tableName: string },
  ) {}

  async get(deviceId: string): Promise<StoredTags | undefined> {
    const out = await this.call(() =>
      this.options.client.send(
        new GetCommand({
          TableName: this.options.tableName,
          Key: twinTagsKey(deviceId),
          ConsistentRead: true,
        }),
      ),
    );
    const item = out.Item;
    if (item === undefined) return undefined;
    return {
      tags: (item.tags ?? {}) as JsonObject,
      version: Number(item.version),
      generationId: String(item.generationId),
      updatedTime: String(item.updatedTime),
    };
  }

  async put(
    deviceId: string,
    next: StoredTags,
    expected: { version: number; generationId: string } | undefined,
  ): Promise<void> {
    const condition: Pick<
      PutCommandInput,
      'ConditionExpression' | 'ExpressionAttributeNames' | 'ExpressionAttributeValues'
    > =
      expected === undefined
        ? {
            ConditionExpression: 'attribute_not_exists(#pk) OR #gen <> :gen',
            ExpressionAttributeNames: { '#pk': 'pk', '#gen': 'generationId' },
            ExpressionAttributeValues: { ':gen': next.generationId },
          }
        : {
            ConditionExpression: '#version = :version AND #gen = :gen',
            ExpressionAttributeNames: { '#version': 'version', '#gen': 'generationId' },
            ExpressionAttributeValues: { ':version': expected.version, ':gen': expected.generationId },
          };
    try {
      await this.call(() =>
        this.options.client.send(
          new PutCommand({
            TableName: this.options.tableName,
            Item: { ...twinTagsKey(deviceId), ...next },
            ...condition,
          }),
        ),
      );
    } catch (error) {
      if (isConditionalCheckFailed(error)) {
        throw new TagsConflictError(deviceId, { cause: error });
      }
      throw error;
    }
  }

  async delete(deviceId: string): Promise<void> {
    await this.call(() =>
      this.options.client.send(
        new DeleteCommand({ TableName: this.options.tableName, Key: twinTagsKey(deviceId) }),
      ),
    );
  }

  private call<T>(fn: () => Promise<T>): Promise<T> {
    return callTable(fn, 'RegistryUnavailable', 'registry table');
  }
}
