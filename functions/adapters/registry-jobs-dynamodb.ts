import { DeleteCommand, type DynamoDBDocumentClient, GetCommand, PutCommand } from '@aws-sdk/lib-dynamodb';
import { HubError } from '../core/errors.ts';
import { JobChangedError } from '../core/identity/jobs/errors.ts';
import { type ImportExportJob, JOB_RETENTION_SECONDS, jobRecordSchema } from '../core/identity/jobs/job.ts';
import type { ActiveJob, JobStore } from '../core/identity/jobs/ports.ts';
import { isConditionalCheckFailed, queryPages } from './dynamodb-calls.ts';

/** Partition of every job item and of the active-job marker: one partition, so listing is one Query. */
export const JOBS_PARTITION = 'importExportJobs';
/** Sort key of the active-job marker. */
export const ACTIVE_SORT_KEY = 'active';

/**
 * Keys of the jobs table (a hub table: `pk`/`sk` strings, on-demand, TTL on `expiresAt`):
 *
 * | item | pk | sk |
 * | --- | --- | --- |
 * | a job | `importExportJobs` | `job#{jobId}` |
 * | the active-job marker | `importExportJobs` | `active` |
 * | a chunk's import error lines | `importErrors#{jobId}` | `line#{first line, 12 digits}` |
 *
 * Jobs share one partition: one job runs at a time and each saves a few times a second at most, far under
 * a partition's limits, and `GET /jobs` is then one Query instead of a Scan. Finished jobs and error lines
 * carry `expiresAt` (30 days, IoT Hub's job retention).
 */
export function jobKey(jobId: string): { pk: string; sk: string } {
  return { pk: JOBS_PARTITION, sk: `job#${jobId}` };
}

function errorsKey(jobId: string, firstLine: number): { pk: string; sk: string } {
  return { pk: `importErrors#${jobId}`, sk: `line#${String(firstLine).padStart(12, '0')}` };
}

/** Constructor options of {@link DynamoDbJobStore}. */
export interface DynamoDbJobStoreOptions {
  /** Document client, configured by the caller (endpoint, region, credentials). */
  readonly client: DynamoDBDocumentClient;
  /** Name of the jobs table. */
  readonly tableName: string;
}

/**
 * Import/export jobs in their own DynamoDB table (dynalite locally), not in the registry table: the
 * registry's listing and export Scan the registry table and hand out the last evaluated key as a device
 * cursor, which a job item ending a page would break; a table of their own also scopes the worker's grants.
 *
 * Every write is one conditional write: the marker `attribute_not_exists` (or naming the job it replaces),
 * a job update `version = :previous`. No transactions (dynalite has none).
 */
export class DynamoDbJobStore implements JobStore {
  private readonly client: DynamoDBDocumentClient;
  private readonly tableName: string;

  constructor(options: DynamoDbJobStoreOptions) {
    this.client = options.client;
    this.tableName = options.tableName;
  }

  /** {@inheritDoc JobStore.claimActive} */
  async claimActive(jobId: string, since: number, replacing?: string): Promise<boolean> {
    try {
      await this.client.send(
        new PutCommand({
          TableName: this.tableName,
          Item: { pk: JOBS_PARTITION, sk: ACTIVE_SORT_KEY, jobId, since },
          ...(replacing === undefined
            ? { ConditionExpression: 'attribute_not_exists(pk)' }
            : {
                ConditionExpression: 'jobId = :replacing',
                ExpressionAttributeValues: { ':replacing': replacing },
              }),
        }),
      );
      return true;
    } catch (error) {
      if (isConditionalCheckFailed(error)) return false;
      throw error;
    }
  }

  /** {@inheritDoc JobStore.active} */
  async active(): Promise<ActiveJob | undefined> {
    const out = await this.client.send(
      new GetCommand({
        TableName: this.tableName,
        Key: { pk: JOBS_PARTITION, sk: ACTIVE_SORT_KEY },
        ConsistentRead: true,
      }),
    );
    const item = out.Item;
    if (item === undefined) return undefined;
    if (typeof item.jobId !== 'string' || typeof item.since !== 'number') {
      throw new HubError('CorruptJobRecord', 'the active-job marker is not valid', { item });
    }
    return { jobId: item.jobId, since: item.since };
  }

  /** {@inheritDoc JobStore.releaseActive} */
  async releaseActive(jobId: string): Promise<void> {
    try {
      await this.client.send(
        new DeleteCommand({
          TableName: this.tableName,
          Key: { pk: JOBS_PARTITION, sk: ACTIVE_SORT_KEY },
          ConditionExpression: 'jobId = :jobId',
          ExpressionAttributeValues: { ':jobId': jobId },
        }),
      );
    } catch (error) {
      if (!isConditionalCheckFailed(error)) throw error;
    }
  }

  /** {@inheritDoc JobStore.put} */
  async put(job: ImportExportJob): Promise<void> {
    await this.client.send(
      new PutCommand({
        TableName: this.tableName,
        Item: { ...jobKey(job.jobId), ...job },
        ConditionExpression: 'attribute_not_exists(pk)',
      }),
    );
  }

  /** {@inheritDoc JobStore.get} */
  async get(jobId: string): Promise<ImportExportJob | undefined> {
    const out = await this.client.send(
      new GetCommand({ TableName: this.tableName, Key: jobKey(jobId), ConsistentRead: true }),
    );
    return out.Item === undefined ? undefined : this.fromItem(out.Item);
  }

  /** {@inheritDoc JobStore.list} */
  async list(): Promise<ImportExportJob[]> {
    const jobs: ImportExportJob[] = [];
    const pages = queryPages(this.client, {
      TableName: this.tableName,
      KeyConditionExpression: 'pk = :pk AND begins_with(sk, :job)',
      ExpressionAttributeValues: { ':pk': JOBS_PARTITION, ':job': 'job#' },
    });
    for await (const items of pages) for (const item of items) jobs.push(this.fromItem(item));
    return jobs;
  }

  /** {@inheritDoc JobStore.update} */
  async update(job: ImportExportJob): Promise<void> {
    try {
      await this.client.send(
        new PutCommand({
          TableName: this.tableName,
          Item: { ...jobKey(job.jobId), ...job },
          ConditionExpression: '#version = :previous',
          ExpressionAttributeNames: { '#version': 'version' },
          ExpressionAttributeValues: { ':previous': job.version - 1 },
        }),
      );
    } catch (error) {
      if (isConditionalCheckFailed(error))
        throw new JobChangedError(job.jobId, job.version - 1, { cause: error });
      throw error;
    }
  }

  /** {@inheritDoc JobStore.putErrors} */
  async putErrors(jobId: string, firstLine: number, lines: readonly string[]): Promise<void> {
    await this.client.send(
      new PutCommand({
        TableName: this.tableName,
        Item: {
          ...errorsKey(jobId, firstLine),
          lines: [...lines],
          expiresAt: Math.floor(Date.now() / 1000) + 2 * JOB_RETENTION_SECONDS,
        },
      }),
    );
  }

  /** {@inheritDoc JobStore.errors} */
  async *errors(jobId: string): AsyncIterable<readonly string[]> {
    const pages = queryPages(this.client, {
      TableName: this.tableName,
      KeyConditionExpression: 'pk = :pk',
      ExpressionAttributeValues: { ':pk': `importErrors#${jobId}` },
      ConsistentRead: true,
    });
    for await (const items of pages) {
      for (const item of items) {
        const lines = item.lines;
        if (!Array.isArray(lines) || !lines.every((l) => typeof l === 'string')) {
          throw new HubError('CorruptJobRecord', `error lines of job '${jobId}' are not valid`, {
            sk: item.sk,
          });
        }
        yield lines;
      }
    }
  }

  private fromItem(item: Record<string, unknown>): ImportExportJob {
    const { pk: _pk, sk: _sk, ...rest } = item;
    const parsed = jobRecordSchema.safeParse(rest);
    if (!parsed.success) {
      throw new HubError('CorruptJobRecord', `job item ${String(item.sk)} is not a valid job`, {
        sk: item.sk,
        issues: parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`),
      });
    }
    return parsed.data;
  }
}
