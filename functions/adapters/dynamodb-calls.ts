import type { ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';
import { type DynamoDBDocumentClient, QueryCommand, type QueryCommandInput } from '@aws-sdk/lib-dynamodb';
import { TransientError } from '../core/errors.ts';

/** DynamoDB error names worth retrying later: throttling, server faults, transaction conflicts. */
const TRANSIENT = new Set([
  'ProvisionedThroughputExceededException',
  'ThrottlingException',
  'RequestLimitExceeded',
  'InternalServerError',
  'ServiceUnavailable',
  'TransactionConflictException',
]);

/** Whether a DynamoDB call failed its condition (by name: dynalite's errors are not the SDK's classes). */
export function isConditionalCheckFailed(error: unknown): error is ConditionalCheckFailedException {
  return error instanceof Error && error.name === 'ConditionalCheckFailedException';
}

/**
 * Runs a DynamoDB call, turning throttling and server faults into a {@link TransientError} (`code`, 503 at
 * the edge, retried by event sources) that names the table's role; other errors pass unchanged.
 *
 * @example
 * const out = await callTable(() => client.send(new GetCommand(...)), 'RegistryUnavailable', 'registry table');
 */
export async function callTable<T>(fn: () => Promise<T>, code: string, what: string): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    if (error instanceof Error && !isConditionalCheckFailed(error)) {
      const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (TRANSIENT.has(error.name) || (status !== undefined && status >= 500)) {
        throw new TransientError(code, `${what} unavailable: ${error.name}`, {}, { cause: error });
      }
    }
    throw error;
  }
}

/**
 * Every page of a Query, in order: one `Items` array per page, following `LastEvaluatedKey` until the
 * last. `call` wraps each request (e.g. {@link callTable}); the default sends it as it is.
 *
 * @example
 * for await (const items of queryPages(client, { TableName, KeyConditionExpression, ... })) { ... }
 */
export async function* queryPages(
  client: DynamoDBDocumentClient,
  input: QueryCommandInput,
  call: <T>(fn: () => Promise<T>) => Promise<T> = (fn) => fn(),
): AsyncIterable<Record<string, unknown>[]> {
  let startKey: Record<string, unknown> | undefined;
  do {
    const out = await call(() =>
      client.send(new QueryCommand({ ...input, ...(startKey ? { ExclusiveStartKey: startKey } : {}) })),
    );
    yield out.Items ?? [];
    startKey = out.LastEvaluatedKey;
  } while (startKey !== undefined);
}
