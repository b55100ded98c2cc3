import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CheckpointStore } from '../../local/checkpoints.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'checkpoints-'));
  dirs.push(dir);
  return dir;
}

async function until(done: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!done()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('CheckpointStore', () => {
  it('writes in the background and a new store reads what was set', async () => {
    const dir = tempDir();
    const store = new CheckpointStore(dir, 1);
    store.set('m/shard-0', '42');
    await store.flush();
    expect(new CheckpointStore(dir).get('m/shard-0')).toBe('42');
  });

  it('reports a failed background write, keeps the checkpoint, and writes it with the next flush', async () => {
    const dir = tempDir();
    const errors: unknown[] = [];
    const store = new CheckpointStore(dir, 1, (error) => errors.push(error));
    rmSync(dir, { recursive: true, force: true }); // the write's temp file cannot be created
    store.set('m/shard-0', '7');
    await until(() => errors.length > 0);
    expect(String(errors[0])).toContain('ENOENT');
    mkdirSync(dir, { recursive: true });
    await store.flush();
    expect(JSON.parse(readFileSync(path.join(dir, 'checkpoints.json'), 'utf8'))).toEqual({
      'm/shard-0': '7',
    });
  });

  it('flush throws when the checkpoint cannot be written', async () => {
    const dir = tempDir();
    const store = new CheckpointStore(dir, 60_000);
    store.set('m/shard-0', '1');
    rmSync(dir, { recursive: true, force: true });
    await expect(store.flush()).rejects.toThrow(/ENOENT/);
  });
});
