/**
 * Delivery ledger on one DynamoDB table (works unchanged against dynalite: no transactions or
 * streams needed; TTL on `retainUntil` is emulated locally by `local/ttl.ts`). Every write is a single-item conditional write; see `LedgerEngine` for
 * how feedback and pointers survive a crash between two writes.
 *
 * Table contract (the stack must create exactly this; see {@link ledgerTableDefinition}):
 * - `pk` (S) partition key, `sk` (S) sort key, on-demand billing.
 * - GSI `gsi1`: `gsi1pk` (S) partition, `gsi1sk` (S) sort, projection KEYS_ONLY. Sparse: only
 *   message items that are due for something carry `gsi1pk`/`gsi1sk`
 *   (`due#{shard}` / `{dueAt ISO}#{deviceId}#{messageId}`, dueAt = `lockedUntil` when Invisible,
 *   `expiresAt` or the next delivery check when Enqueued, `finalAt` while feedback is owed; a
 *   final message that owes nothing has no slot).
 *   The sweep reads each shard with `gsi1pk = :shard AND gsi1sk < :now` — never a scan.
 * - LSI `active`: `pk` / `activeKey`, projection ALL, sparse (active messages only); queue reads.
 * - TTL on `retainUntil` (epoch seconds).
 * - Items: see `functions/core/c2d/keys.ts` (messages and pointers in `dev#{deviceId}`, feedback in
 *   `feedback#{shard}`).
 */
import type { AttributeValue, CreateTableCommandInput } from '@aws-sdk/client-dynamodb';
import {
  DeleteCommand,
  type DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  QueryCommand,
  type QueryCommandInput,
  UpdateCommand,
} from '@aws-sdk/lib-dynamodb';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import { LedgerEngine, type LedgerEngineOptions } from '../core/c2d/engine.ts';
import { FEEDBACK_STATUS_CODES, type FeedbackRecord } from '../core/c2d/feedback.ts';
import {
  type DueRow,
  type DueSlot,
  devicePk,
  LEDGER_ACTIVE_INDEX,
  LEDGER_ACTIVE_KEY,
  MESSAGE_SK_PREFIX,
  messageSk,
  parseDueRow,
  pointerSk,
} from '../core/c2d/keys.ts';
import type { AckMode, C2dMessage, C2dState, FeedbackStatus } from '../core/c2d/message.ts';
import type { FeedbackRow, LedgerStore, SettleLockedInput, SettleLockedResult } from '../core/c2d/store.ts';
import { TransientError } from '../core/errors.ts';

/** Name of the due index. */
export const LEDGER_DUE_INDEX = 'gsi1';

/**
 * Queue reads (depth, the delivery plan, purge) query the sparse active index ({@link LEDGER_ACTIVE_INDEX},
 * an LSI: strongly consistent), so they read only active messages however many final ones a device
 * keeps for the retention.
 */
export { LEDGER_ACTIVE_INDEX };

const ACTIVE_KEY = LEDGER_ACTIVE_KEY;

export { LEDGER_TTL_ATTRIBUTE } from '../core/c2d/keys.ts';

/**
 * The table and index the ledger needs, as a `CreateTableCommand` input (local hub, tests). The
 * CDK stack must declare the same keys and indexes (`pk`/`sk`, GSI `gsi1` on `gsi1pk`/`gsi1sk`,
 * KEYS_ONLY; LSI `active` on `activeKey`, ALL), TTL on `retainUntil` (not part of CreateTable), and
 * should enable point-in-time recovery.
 */
export function ledgerTableDefinition(tableName: string): CreateTableCommandInput {
  return {
    TableName: tableName,
    BillingMode: 'PAY_PER_REQUEST',
    AttributeDefinitions: [
      { AttributeName: 'pk', AttributeType: 'S' },
      { AttributeName: 'sk', AttributeType: 'S' },
      { AttributeName: 'gsi1pk', AttributeType: 'S' },
      { AttributeName: 'gsi1sk', AttributeType: 'S' },
      { AttributeName: ACTIVE_KEY, AttributeType: 'S' },
    ],
    KeySchema: [
      { AttributeName: 'pk', KeyType: 'HASH' },
      { AttributeName: 'sk', KeyType: 'RANGE' },
    ],
    GlobalSecondaryIndexes: [
      {
        IndexName: LEDGER_DUE_INDEX,
        KeySchema: [
          { AttributeName: 'gsi1pk', KeyType: 'HASH' },
          { AttributeName: 'gsi1sk', KeyType: 'RANGE' },
        ],
        Projection: { ProjectionType: 'KEYS_ONLY' },
      },
    ],
    LocalSecondaryIndexes: [
      {
        IndexName: LEDGER_ACTIVE_INDEX,
        KeySchema: [
          { AttributeName: 'pk', KeyType: 'HASH' },
          { AttributeName: ACTIVE_KEY, KeyType: 'RANGE' },
        ],
        Projection: { ProjectionType: 'ALL' },
      },
    ],
  };
}

/** Where the ledger lives. */
export interface DynamoDbLedgerProps extends LedgerEngineOptions {
  readonly client: DynamoDBDocumentClient;
  readonly tableName: string;
}

const ACTIVE: readonly C2dState[] = ['Enqueued', 'Invisible'];
const STATES: readonly C2dState[] = [
  'Enqueued',
  'Invisible',
  'Completed',
  'Rejected',
  'Expired',
  'DeadLettered',
  'Purged',
];
const ACK_MODES: readonly AckMode[] = ['none', 'positive', 'negative', 'full'];
const FEEDBACK_STATUSES = Object.keys(FEEDBACK_STATUS_CODES) as FeedbackStatus[];
const STATUS_CODES = Object.values(FEEDBACK_STATUS_CODES).map((c) => c.name);
const TRANSIENT = new Set([
  'ProvisionedThroughputExceededException',
  'ThrottlingException',
  'RequestLimitExceeded',
  'InternalServerError',
  'ServiceUnavailable',
  'TimeoutError',
]);

/** {@link LedgerStore} on a DynamoDB table with the layout of {@link ledgerTableDefinition}. */
export class DynamoDbLedgerStore implements LedgerStore {
  readonly #client: DynamoDBDocumentClient;
  readonly #table: string;

  constructor(props: { client: DynamoDBDocumentClient; tableName: string }) {
    this.#client = props.client;
    this.#table = props.tableName;
  }

  async getMessage(deviceId: string, queueKey: string): Promise<C2dMessage | undefined> {
    const out = await this.#send('GetItem', () =>
      this.#client.send(
        new GetCommand({
          TableName: this.#table,
          Key: { pk: devicePk(deviceId), sk: messageSk(queueKey) },
          ConsistentRead: true,
        }),
      ),
    );
    return out.Item === undefined ? undefined : toMessage(out.Item);
  }

  async listActive(deviceId: string): Promise<C2dMessage[]> {
    const items = await this.#queryAll({
      ...this.#activeQuery(deviceId),
    });
    return items.map(toMessage);
  }

  async countActive(deviceId: string): Promise<number> {
    let count = 0;
    let start: Record<string, unknown> | undefined;
    do {
      const out = await this.#send('Query', () =>
        this.#client.send(
          new QueryCommand({ ...this.#activeQuery(deviceId), Select: 'COUNT', ExclusiveStartKey: start }),
        ),
      );
      count += out.Count ?? 0;
      start = out.LastEvaluatedKey;
    } while (start !== undefined);
    return count;
  }

  async findByMessageId(deviceId: string, messageId: string): Promise<C2dMessage[]> {
    const items = await this.#queryAll({
      TableName: this.#table,
      KeyConditionExpression: 'pk = :pk AND begins_with(sk, :prefix)',
      FilterExpression: 'messageId = :mid',
      ExpressionAttributeValues: {
        ':pk': devicePk(deviceId),
        ':prefix': MESSAGE_SK_PREFIX,
        ':mid': messageId,
      },
      ConsistentRead: true,
    });
    return items.map(toMessage);
  }

  async insertMessage(message: C2dMessage, due: DueSlot | undefined): Promise<boolean> {
    const item: Record<string, unknown> = {
      pk: devicePk(message.deviceId),
      sk: messageSk(message.queueKey),
      ...withoutUndefined(message),
      ...(ACTIVE.includes(message.state) ? { [ACTIVE_KEY]: message.queueKey } : {}),
      ...(due === undefined ? {} : { gsi1pk: due.pk, gsi1sk: due.sk }),
    };
    return this.#conditional('PutItem', () =>
      this.#client.send(
        new PutCommand({
          TableName: this.#table,
          Item: item,
          ConditionExpression: 'attribute_not_exists(pk)',
        }),
      ),
    );
  }

  async updateMessage(expectedVersion: number, next: C2dMessage, due: DueSlot | undefined): Promise<boolean> {
    const set: Record<string, unknown> = {
      state: next.state,
      version: next.version,
      deliveryCount: next.deliveryCount,
    };
    const remove: string[] = [];
    const optional: Record<string, unknown> = {
      lockToken: next.lockToken,
      lockedUntil: next.lockedUntil,
      checkAt: next.checkAt,
      finalAt: next.finalAt,
      pendingFeedback: next.pendingFeedback,
      wake: next.wake,
      retainUntil: next.retainUntil,
      [ACTIVE_KEY]: ACTIVE.includes(next.state) ? next.queueKey : undefined,
      gsi1pk: due?.pk,
      gsi1sk: due?.sk,
    };
    for (const [name, value] of Object.entries(optional)) {
      if (value === undefined) remove.push(name);
      else set[name] = value;
    }
    const names: Record<string, string> = {};
    const values: Record<string, unknown> = { ':expected': expectedVersion };
    const sets = Object.entries(set).map(([name, value]) => {
      names[`#${name}`] = name;
      values[`:${name}`] = value;
      return `#${name} = :${name}`;
    });
    const removes = remove.map((name) => {
      names[`#${name}`] = name;
      return `#${name}`;
    });
    return this.#conditional('UpdateItem', () =>
      this.#client.send(
        new UpdateCommand({
          TableName: this.#table,
          Key: { pk: devicePk(next.deviceId), sk: messageSk(next.queueKey) },
          UpdateExpression: `SET ${sets.join(', ')}${removes.length > 0 ? ` REMOVE ${removes.join(', ')}` : ''}`,
          ConditionExpression: '#version = :expected',
          ExpressionAttributeNames: names,
          ExpressionAttributeValues: values,
        }),
      ),
    );
  }

  async settleLocked(input: SettleLockedInput): Promise<SettleLockedResult> {
    const acks = Object.fromEntries(input.quietAcks.map((ack, i) => [`:ack${i}`, ack]));
    try {
      const out = await this.#client.send(
        new UpdateCommand({
          TableName: this.#table,
          Key: { pk: devicePk(input.deviceId), sk: messageSk(input.queueKey) },
          UpdateExpression:
            'SET #state = :to, finalAt = :now, retainUntil = :retain, #version = #version + :one ' +
            `REMOVE lockToken, lockedUntil, checkAt, pendingFeedback, wake, gsi1pk, gsi1sk, ${ACTIVE_KEY}`,
          ConditionExpression:
            `#state = :invisible AND lockToken = :lt AND lockedUntil > :now AND ` +
            `#ack IN (${Object.keys(acks).join(', ')})`,
          ExpressionAttributeNames: { '#state': 'state', '#version': 'version', '#ack': 'ack' },
          ExpressionAttributeValues: {
            ':to': input.state,
            ':now': input.now,
            ':retain': input.retainUntil,
            ':one': 1,
            ':invisible': 'Invisible',
            ':lt': input.lockToken,
            ...acks,
          },
          ReturnValues: 'ALL_OLD',
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
      if (out.Attributes === undefined) throw new TypeError('settlement returned no old item');
      return { ok: true, before: toMessage(out.Attributes) };
    } catch (error) {
      if (errorName(error) !== 'ConditionalCheckFailedException') {
        throw mapError('UpdateItem', this.#table, error);
      }
      // DynamoDB returns the item that failed the condition; dynalite does not, so read it there.
      const old = (error as { Item?: Record<string, AttributeValue> }).Item;
      if (old !== undefined) return { ok: false, current: toMessage(unmarshall(old)) };
      return { ok: false, current: await this.getMessage(input.deviceId, input.queueKey) };
    }
  }

  async deleteMessage(deviceId: string, queueKey: string, expectedVersion: number): Promise<boolean> {
    return this.#conditional('DeleteItem', () =>
      this.#client.send(
        new DeleteCommand({
          TableName: this.#table,
          Key: { pk: devicePk(deviceId), sk: messageSk(queueKey) },
          ConditionExpression: '#version = :expected',
          ExpressionAttributeNames: { '#version': 'version' },
          ExpressionAttributeValues: { ':expected': expectedVersion },
        }),
      ),
    );
  }

  async getPointer(deviceId: string, messageId: string): Promise<string | undefined> {
    const out = await this.#send('GetItem', () =>
      this.#client.send(
        new GetCommand({
          TableName: this.#table,
          Key: { pk: devicePk(deviceId), sk: pointerSk(messageId) },
          ConsistentRead: true,
        }),
      ),
    );
    const queueKey = out.Item?.queueKey;
    return typeof queueKey === 'string' ? queueKey : undefined;
  }

  async insertPointer(
    deviceId: string,
    messageId: string,
    queueKey: string,
    retainUntil: number,
  ): Promise<boolean> {
    return this.#conditional('PutItem', () =>
      this.#client.send(
        new PutCommand({
          TableName: this.#table,
          Item: { pk: devicePk(deviceId), sk: pointerSk(messageId), queueKey, retainUntil },
          ConditionExpression: 'attribute_not_exists(pk)',
        }),
      ),
    );
  }

  async swapPointer(
    deviceId: string,
    messageId: string,
    expectedQueueKey: string,
    queueKey: string,
    retainUntil: number,
  ): Promise<boolean> {
    return this.#conditional('UpdateItem', () =>
      this.#client.send(
        new UpdateCommand({
          TableName: this.#table,
          Key: { pk: devicePk(deviceId), sk: pointerSk(messageId) },
          UpdateExpression: 'SET queueKey = :next, retainUntil = :retain',
          ConditionExpression: 'queueKey = :expected',
          ExpressionAttributeValues: {
            ':next': queueKey,
            ':expected': expectedQueueKey,
            ':retain': retainUntil,
          },
        }),
      ),
    );
  }

  async deletePointer(deviceId: string, messageId: string, expectedQueueKey: string): Promise<boolean> {
    return this.#conditional('DeleteItem', () =>
      this.#client.send(
        new DeleteCommand({
          TableName: this.#table,
          Key: { pk: devicePk(deviceId), sk: pointerSk(messageId) },
          ConditionExpression: 'queueKey = :expected',
          ExpressionAttributeValues: { ':expected': expectedQueueKey },
        }),
      ),
    );
  }

  async queryDue(duePk: string, beforeSk: string, limit: number): Promise<DueRow[]> {
    const items = await this.#queryAll(
      {
        TableName: this.#table,
        IndexName: LEDGER_DUE_INDEX,
        KeyConditionExpression: 'gsi1pk = :pk AND gsi1sk < :before',
        ExpressionAttributeValues: { ':pk': duePk, ':before': beforeSk },
      },
      limit,
    );
    const rows: DueRow[] = [];
    for (const item of items) {
      const { pk, sk, gsi1sk } = item;
      if (typeof pk !== 'string' || typeof sk !== 'string' || typeof gsi1sk !== 'string') continue;
      const row = parseDueRow(pk, sk, gsi1sk);
      if (row !== undefined) rows.push(row);
    }
    return rows;
  }

  async insertFeedback(row: FeedbackRow): Promise<boolean> {
    return this.#conditional('PutItem', () =>
      this.#client.send(
        new PutCommand({
          TableName: this.#table,
          Item: { pk: row.pk, sk: row.sk, ...withoutUndefined(row.record) },
          ConditionExpression: 'attribute_not_exists(pk)',
        }),
      ),
    );
  }

  async queryFeedback(pk: string, afterSk: string | undefined, limit: number): Promise<FeedbackRow[]> {
    const items = await this.#queryAll(
      {
        TableName: this.#table,
        KeyConditionExpression: afterSk === undefined ? 'pk = :pk' : 'pk = :pk AND sk > :after',
        ExpressionAttributeValues: afterSk === undefined ? { ':pk': pk } : { ':pk': pk, ':after': afterSk },
        ConsistentRead: true,
      },
      limit,
    );
    return items.map((item) => ({
      pk: String(item.pk),
      sk: String(item.sk),
      record: toFeedbackRecord(item),
    }));
  }

  async deleteFeedback(pk: string, sk: string): Promise<void> {
    await this.#send('DeleteItem', () =>
      this.#client.send(new DeleteCommand({ TableName: this.#table, Key: { pk, sk } })),
    );
  }

  /** Active messages of the device in queue order: the sparse active index, strongly consistent. */
  #activeQuery(deviceId: string): QueryCommandInput {
    return {
      TableName: this.#table,
      IndexName: LEDGER_ACTIVE_INDEX,
      KeyConditionExpression: 'pk = :pk',
      FilterExpression: '#state IN (:enqueued, :invisible)',
      ExpressionAttributeNames: { '#state': 'state' },
      ExpressionAttributeValues: {
        ':pk': devicePk(deviceId),
        ':enqueued': ACTIVE[0],
        ':invisible': ACTIVE[1],
      },
      ConsistentRead: true,
    };
  }

  async #queryAll(
    input: QueryCommandInput,
    limit = Number.POSITIVE_INFINITY,
  ): Promise<Record<string, unknown>[]> {
    const items: Record<string, unknown>[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const remaining = limit - items.length;
      const out = await this.#send('Query', () =>
        this.#client.send(
          new QueryCommand({
            ...input,
            ExclusiveStartKey: start,
            ...(Number.isFinite(remaining) ? { Limit: remaining } : {}),
          }),
        ),
      );
      items.push(...(out.Items ?? []));
      start = out.LastEvaluatedKey;
    } while (start !== undefined && items.length < limit);
    return items;
  }

  /** Runs a conditional write: `true` when applied, `false` when its condition failed. */
  async #conditional(operation: string, call: () => Promise<unknown>): Promise<boolean> {
    try {
      await call();
      return true;
    } catch (error) {
      if (errorName(error) === 'ConditionalCheckFailedException') return false;
      throw mapError(operation, this.#table, error);
    }
  }

  async #send<T>(operation: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      throw mapError(operation, this.#table, error);
    }
  }
}

/**
 * Delivery ledger on DynamoDB (or dynalite).
 *
 * @example
 * const ledger = new DynamoDbDeliveryLedger({ client: DynamoDBDocumentClient.from(new DynamoDBClient({})), tableName });
 */
export class DynamoDbDeliveryLedger extends LedgerEngine {
  constructor(props: DynamoDbLedgerProps) {
    super(new DynamoDbLedgerStore(props), props);
  }
}

function errorName(error: unknown): string | undefined {
  return error instanceof Error ? error.name : undefined;
}

function mapError(operation: string, table: string, error: unknown): unknown {
  const name = errorName(error);
  if (name !== undefined && TRANSIENT.has(name)) {
    return new TransientError(
      'LedgerUnavailable',
      `DynamoDB ${operation} failed: ${name}`,
      { table, operation },
      {
        cause: error,
      },
    );
  }
  return error;
}

function withoutUndefined(value: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined));
}

function str(item: Record<string, unknown>, name: string): string {
  const value = item[name];
  if (typeof value !== 'string') throw new TypeError(`ledger item lacks string ${name}`);
  return value;
}

function num(item: Record<string, unknown>, name: string): number {
  const value = item[name];
  if (typeof value !== 'number') throw new TypeError(`ledger item lacks number ${name}`);
  return value;
}

function oneOf<T extends string>(item: Record<string, unknown>, name: string, allowed: readonly T[]): T {
  const value = item[name];
  const found = allowed.find((a) => a === value);
  if (found === undefined) throw new TypeError(`ledger item has an unknown ${name}: ${String(value)}`);
  return found;
}

function optStr(item: Record<string, unknown>, name: string): Record<string, string> {
  const value = item[name];
  return typeof value === 'string' ? { [name]: value } : {};
}

function optNum(item: Record<string, unknown>, name: string): Record<string, number> {
  const value = item[name];
  return typeof value === 'number' ? { [name]: value } : {};
}

function toMessage(item: Record<string, unknown>): C2dMessage {
  const body = item.body;
  const properties: Record<string, string> = {};
  if (typeof item.properties === 'object' && item.properties !== null) {
    for (const [k, v] of Object.entries(item.properties)) if (typeof v === 'string') properties[k] = v;
  }
  return {
    deviceId: str(item, 'deviceId'),
    messageId: str(item, 'messageId'),
    queueKey: str(item, 'queueKey'),
    body: body instanceof Uint8Array ? body : new Uint8Array(),
    ...optStr(item, 'correlationId'),
    ...optStr(item, 'userId'),
    ...optStr(item, 'contentType'),
    ...optStr(item, 'contentEncoding'),
    properties,
    ack: oneOf(item, 'ack', ACK_MODES),
    enqueuedAt: num(item, 'enqueuedAt'),
    expiresAt: num(item, 'expiresAt'),
    maxDeliveryCount: num(item, 'maxDeliveryCount'),
    state: oneOf(item, 'state', STATES),
    deliveryCount: num(item, 'deliveryCount'),
    ...optStr(item, 'lockToken'),
    ...optNum(item, 'lockedUntil'),
    ...optNum(item, 'checkAt'),
    ...optNum(item, 'finalAt'),
    ...(typeof item.pendingFeedback === 'string'
      ? { pendingFeedback: item.pendingFeedback as FeedbackStatus }
      : {}),
    ...(item.wake === true ? { wake: true } : {}),
    ...optNum(item, 'retainUntil'),
    version: num(item, 'version'),
  };
}

function toFeedbackRecord(item: Record<string, unknown>): FeedbackRecord {
  return {
    id: str(item, 'id'),
    originalMessageId: str(item, 'originalMessageId'),
    deviceId: str(item, 'deviceId'),
    ...optStr(item, 'correlationId'),
    enqueuedTimeUtc: str(item, 'enqueuedTimeUtc'),
    statusTimeUtc: str(item, 'statusTimeUtc'),
    status: oneOf(item, 'status', FEEDBACK_STATUSES),
    statusCode: oneOf(item, 'statusCode', STATUS_CODES),
    description: str(item, 'description'),
  };
}
