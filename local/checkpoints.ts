import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';

/**
 * Where each event source mapping has got to, per shard: the sequence number of the last record
 * handled. Written atomically (temp file + rename) after every batch, so a crash replays at most
 * the batch in flight — at least once, as Lambda's own mappings are.
 */
export class CheckpointStore {
  private readonly file: string;
  private readonly data: Record<string, string>;

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    this.file = path.join(dataDir, 'checkpoints.json');
    try {
      this.data = JSON.parse(readFileSync(this.file, 'utf8')) as Record<string, string>;
    } catch {
      this.data = {};
    }
  }

  get(key: string): string | undefined {
    return this.data[key];
  }

  set(key: string, sequenceNumber: string): void {
    this.data[key] = sequenceNumber;
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.data));
    renameSync(tmp, this.file);
  }
}
