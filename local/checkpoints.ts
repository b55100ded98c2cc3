import { mkdirSync, readFileSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import * as path from 'node:path';

/**
 * Where each event source mapping has got to, per shard: the sequence number of the last record
 * handled. `set` only updates memory and schedules a write: the file is written asynchronously
 * (temp file + rename), at most one write at a time and at most every `debounceMs`, so a
 * checkpoint never blocks the event loop. A crash replays what was handled after the last write
 * (at least once, as Lambda's own mappings do), never skips anything.
 */
export class CheckpointStore {
  private readonly file: string;
  private readonly data: Record<string, string>;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> | undefined;
  private dirty = false;

  /**
   * @param debounceMs longest a handled batch waits for its checkpoint write; `LOCAL_HUB_CHECKPOINT_MS`
   * overrides the default (the crash tests set it long to kill the hub between a batch and its checkpoint)
   * @param onError told of a background write that failed (the checkpoint stays dirty and is written
   * with the next one, or by {@link flush}, which throws instead)
   */
  constructor(
    dataDir: string,
    private readonly debounceMs = Number(process.env.LOCAL_HUB_CHECKPOINT_MS) || 20,
    private readonly onError: (error: unknown) => void = () => {},
  ) {
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
    this.dirty = true;
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.write().catch((error: unknown) => this.onError(error));
    }, this.debounceMs);
  }

  /** Writes what is not written yet and resolves once it is on disk (on shutdown). */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.writing;
    if (this.dirty) await this.write();
  }

  private async write(): Promise<void> {
    if (this.writing) {
      // One write at a time; the one after it picks up what changed meanwhile.
      await this.writing;
      if (!this.dirty) return;
    }
    this.dirty = false;
    const tmp = `${this.file}.tmp`;
    this.writing = writeFile(tmp, JSON.stringify(this.data))
      .then(() => rename(tmp, this.file))
      .catch((error: unknown) => {
        this.dirty = true; // not on disk: the next write or flush tries again
        throw error;
      })
      .finally(() => {
        this.writing = undefined;
      });
    await this.writing;
  }
}
