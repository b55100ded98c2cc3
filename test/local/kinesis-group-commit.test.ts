import type { KinesisClient, PutRecordsCommandInput, PutRecordsCommandOutput } from '@aws-sdk/client-kinesis';
import { describe, expect, it } from 'vitest';
import { GroupCommitError, KinesisGroupCommit } from '../../local/kinesis-group-commit.ts';

/**
 * PutRecords partial failures cannot be produced with kinesalite (it never throttles), so these use
 * a scripted client: each call's records are recorded and the script says which ones fail.
 */
function scripted(fail: (call: number, key: string, data: string) => boolean) {
  const calls: { key: string; data: string }[][] = [];
  const stream: string[] = [];
  const client = {
    send: async (command: { input: PutRecordsCommandInput }): Promise<Partial<PutRecordsCommandOutput>> => {
      await new Promise((r) => setTimeout(r, 5));
      const records = (command.input.Records ?? []).map((r) => ({
        key: r.PartitionKey ?? '',
        data: Buffer.from(r.Data ?? new Uint8Array()).toString(),
      }));
      const n = calls.push(records);
      return {
        Records: records.map((r) => {
          if (fail(n, r.key, r.data)) return { ErrorCode: 'ProvisionedThroughputExceededException' };
          stream.push(`${r.key}:${r.data}`);
          return { SequenceNumber: String(stream.length), ShardId: 'shardId-000000000000' };
        }),
      };
    },
  } as unknown as KinesisClient;
  return { client, calls, stream };
}

const put = (g: KinesisGroupCommit, key: string, data: string) => g.put('s', key, Buffer.from(data));

describe('KinesisGroupCommit', () => {
  it('puts concurrent records of different keys in one PutRecords call', async () => {
    const { client, calls } = scripted(() => false);
    const g = new KinesisGroupCommit(client);
    await Promise.all(['a', 'b', 'c', 'd'].map((k) => put(g, k, '0')));
    expect(calls).toHaveLength(1);
    expect(calls[0]).toHaveLength(4);
  });

  it('carries at most one record per key per call, so a failed record never lets a later one of its key pass it', async () => {
    // The first attempt at a1 fails; a2 must not reach the stream before a1 does.
    let failedOnce = false;
    const { client, calls, stream } = scripted((_call, key, data) => {
      if (key === 'a' && data === '1' && !failedOnce) {
        failedOnce = true;
        return true;
      }
      return false;
    });
    const g = new KinesisGroupCommit(client, { baseDelayMs: 1 });
    await Promise.all([put(g, 'a', '1'), put(g, 'a', '2'), put(g, 'b', '1'), put(g, 'a', '3')]);
    for (const call of calls) expect(new Set(call.map((r) => r.key)).size).toBe(call.length);
    expect(stream.filter((r) => r.startsWith('a:'))).toEqual(['a:1', 'a:2', 'a:3']);
    expect(stream).toContain('b:1');
  });

  it('after the retries, rejects the failed record and every record of its key behind it; other keys are written', async () => {
    const { client, stream } = scripted((_call, key, data) => key === 'a' && data === '1');
    const g = new KinesisGroupCommit(client, { maxAttempts: 2, baseDelayMs: 1 });
    const a1 = put(g, 'a', '1');
    const a2 = put(g, 'a', '2');
    const b1 = put(g, 'b', '1');
    await expect(a1).rejects.toBeInstanceOf(GroupCommitError);
    await expect(a2).rejects.toThrow(/partition key 'a'.*ProvisionedThroughputExceeded/);
    await b1;
    expect(stream).toEqual(['b:1']);
  });

  it('retries a call that failed as a whole and resolves once it is written', async () => {
    let calls = 0;
    const client = {
      send: async (command: { input: PutRecordsCommandInput }) => {
        calls += 1;
        if (calls === 1) throw new Error('connection reset');
        return { Records: (command.input.Records ?? []).map((_, i) => ({ SequenceNumber: String(i) })) };
      },
    } as unknown as KinesisClient;
    const g = new KinesisGroupCommit(client, { baseDelayMs: 1 });
    await put(g, 'a', '1');
    expect(calls).toBe(2);
  });
});
