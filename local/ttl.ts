/**
 * DynamoDB Time to Live for the local hub. dynalite has no TTL, so items the stack marks for expiry
 * (the C2D ledger's final messages and message-id pointers, for instance) would stay for ever. This
 * sweeper reads each table's `TimeToLiveSpecification` from the synthesized template and deletes the
 * items whose TTL attribute (epoch seconds) is past: once at start, then every `everyMs`. Each delete
 * is conditional on the attribute still saying expired, so an item rewritten in between is kept, like
 * DynamoDB's own TTL (which also deletes lazily: readers must not rely on the exact moment).
 */
import {
  DeleteItemCommand,
  type DynamoDBClient,
  ScanCommand,
  type ScanCommandOutput,
} from '@aws-sdk/client-dynamodb';
import type { LocalTable } from './template.ts';

/** A table with TTL on, as the sweeper sees it. */
interface TtlTable {
  readonly name: string;
  readonly attribute: string;
  readonly keys: readonly string[];
}

/** What {@link startTtlSweeper} needs. */
export interface TtlSweeperOptions {
  readonly client: DynamoDBClient;
  /** The template's tables; only those with `TimeToLiveSpecification.Enabled` are swept. */
  readonly tables: readonly LocalTable[];
  readonly log: (line: string) => void;
  /** @default 60_000 */
  readonly everyMs?: number;
  /** Epoch milliseconds. @default Date.now */
  readonly now?: () => number;
}

/** The running sweeper. */
export interface TtlSweeper {
  /** Stops the timer and waits for a sweep in progress. */
  stop(): Promise<void>;
}

/** The tables of `tables` that have TTL enabled, with their key attribute names. */
export function ttlTables(tables: readonly LocalTable[]): TtlTable[] {
  const out: TtlTable[] = [];
  for (const table of tables) {
    const spec = table.properties.TimeToLiveSpecification as
      | { AttributeName?: unknown; Enabled?: unknown }
      | undefined;
    if (spec?.Enabled !== true || typeof spec.AttributeName !== 'string') continue;
    const schema = table.properties.KeySchema;
    if (!Array.isArray(schema)) {
      throw new Error(`table ${table.logicalId}: TimeToLiveSpecification without a KeySchema`);
    }
    const keys = schema.map((k: { AttributeName?: unknown }) => {
      if (typeof k.AttributeName !== 'string') throw new Error(`table ${table.logicalId}: bad KeySchema`);
      return k.AttributeName;
    });
    out.push({ name: table.name, attribute: spec.AttributeName, keys });
  }
  return out;
}

/**
 * One pass over every TTL table: deletes the items whose TTL attribute is a number of epoch seconds
 * at or before `nowMs`. Returns how many it deleted. Items whose attribute is missing or not a number
 * are left alone, as DynamoDB leaves them.
 */
export async function sweepExpired(
  client: DynamoDBClient,
  tables: readonly LocalTable[],
  nowMs: number,
): Promise<number> {
  const now = { N: String(Math.floor(nowMs / 1000)) };
  let deleted = 0;
  for (const table of ttlTables(tables)) {
    const names: Record<string, string> = { '#ttl': table.attribute };
    for (const [i, key] of table.keys.entries()) names[`#k${i}`] = key;
    let start: ScanCommandOutput['LastEvaluatedKey'];
    do {
      const page = await client.send(
        new ScanCommand({
          TableName: table.name,
          FilterExpression: '#ttl <= :now',
          ProjectionExpression: Object.keys(names).join(', '),
          ExpressionAttributeNames: names,
          ExpressionAttributeValues: { ':now': now },
          ExclusiveStartKey: start,
        }),
      );
      for (const item of page.Items ?? []) {
        const key = Object.fromEntries(table.keys.map((k) => [k, item[k]]));
        if (Object.values(key).some((v) => v === undefined)) continue;
        try {
          await client.send(
            new DeleteItemCommand({
              TableName: table.name,
              Key: key as NonNullable<typeof page.Items>[number],
              ConditionExpression: '#ttl <= :now',
              ExpressionAttributeNames: { '#ttl': table.attribute },
              ExpressionAttributeValues: { ':now': now },
            }),
          );
          deleted++;
        } catch (error) {
          // Rewritten since the scan (no longer expired): kept.
          if (!(error instanceof Error && error.name === 'ConditionalCheckFailedException')) throw error;
        }
      }
      start = page.LastEvaluatedKey;
    } while (start !== undefined);
  }
  return deleted;
}

/**
 * Starts the sweeper: a pass at once, then one every `everyMs`. A failing pass is logged and the
 * next one tries again.
 *
 * @example
 * const ttl = startTtlSweeper({ client: dynamoClient, tables: template.tables, log });
 * closers.push(() => ttl.stop());
 */
export function startTtlSweeper(options: TtlSweeperOptions): TtlSweeper {
  const everyMs = options.everyMs ?? 60_000;
  const now = options.now ?? Date.now;
  if (!Number.isFinite(everyMs) || everyMs <= 0) {
    throw new Error(`startTtlSweeper: everyMs must be a positive number of milliseconds, got ${everyMs}`);
  }
  let running: Promise<void> = Promise.resolve();
  let stopped = false;
  const pass = () => {
    if (stopped) return;
    running = running.then(async () => {
      if (stopped) return;
      try {
        const deleted = await sweepExpired(options.client, options.tables, now());
        if (deleted > 0) options.log(`ttl: deleted ${deleted} expired item(s)`);
      } catch (error) {
        options.log(`ttl: sweep failed, retrying in ${everyMs} ms: ${String(error)}`);
      }
    });
  };
  pass();
  const timer = setInterval(pass, everyMs);
  timer.unref();
  return {
    stop: async () => {
      stopped = true;
      clearInterval(timer);
      await running;
    },
  };
}
