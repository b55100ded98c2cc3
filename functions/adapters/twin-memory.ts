import { ShadowVersionConflictError, TagsConflictError } from '../core/twins/errors.ts';
import { mergePatch } from '../core/twins/patch.ts';
import type { JsonObject, ShadowDocument, ShadowStore, StoredTags, TagsStore } from '../core/twins/twin.ts';

/** Twin tags in memory, with the DynamoDB adapter's conditions; for tests and tools. */
export class MemoryTagsStore implements TagsStore {
  readonly items = new Map<string, StoredTags>();

  async get(deviceId: string): Promise<StoredTags | undefined> {
    return this.items.get(deviceId);
  }

  async put(
    deviceId: string,
    next: StoredTags,
    expected: { version: number; generationId: string } | undefined,
  ): Promise<void> {
    const current = this.items.get(deviceId);
    const ok =
      expected === undefined
        ? current === undefined || current.generationId !== next.generationId
        : current?.version === expected.version && current.generationId === expected.generationId;
    if (!ok) throw new TagsConflictError(deviceId);
    this.items.set(deviceId, next);
  }

  async delete(deviceId: string): Promise<void> {
    this.items.delete(deviceId);
  }
}

/**
 * Classic shadows in memory: desired merged as the shadow service merges it, one version per update,
 * leaf metadata timestamps from `now`. No delta, no size limits; for tests and tools.
 */
export class MemoryShadowStore implements ShadowStore {
  readonly shadows = new Map<string, ShadowDocument>();

  constructor(private readonly now: () => number = () => Math.floor(Date.now() / 1000)) {}

  async get(thingName: string): Promise<ShadowDocument | undefined> {
    return this.shadows.get(thingName);
  }

  async updateDesired(
    thingName: string,
    desired: JsonObject,
    expectedVersion?: number,
  ): Promise<ShadowDocument> {
    return this.update(thingName, { desired }, expectedVersion);
  }

  /** Merges desired and/or reported, as a device's or service's shadow update does. */
  async update(
    thingName: string,
    state: { desired?: JsonObject; reported?: JsonObject },
    expectedVersion?: number,
  ): Promise<ShadowDocument> {
    const current = this.shadows.get(thingName);
    if (expectedVersion !== undefined && (current?.version ?? 0) !== expectedVersion) {
      throw new ShadowVersionConflictError(thingName, expectedVersion);
    }
    const timestamp = this.now();
    const stamp = (patch: JsonObject): JsonObject =>
      Object.fromEntries(
        Object.entries(patch).map(([k, v]) => [
          k,
          v === null ? null : typeof v === 'object' && !Array.isArray(v) ? stamp(v) : { timestamp },
        ]),
      );
    const merge = (section: 'desired' | 'reported') => {
      const patch = state[section];
      const before = current?.state[section] ?? {};
      const meta = (current?.metadata?.[section] ?? {}) as JsonObject;
      return patch === undefined
        ? { value: current?.state[section], meta: current?.metadata?.[section] }
        : { value: mergePatch(before, patch), meta: mergePatch(meta, stamp(patch)) };
    };
    const desired = merge('desired');
    const reported = merge('reported');
    const next: ShadowDocument = {
      state: {
        ...(desired.value !== undefined ? { desired: desired.value } : {}),
        ...(reported.value !== undefined ? { reported: reported.value } : {}),
      },
      metadata: {
        ...(desired.meta !== undefined ? { desired: desired.meta } : {}),
        ...(reported.meta !== undefined ? { reported: reported.meta } : {}),
      } as ShadowDocument['metadata'],
      version: (current?.version ?? 0) + 1,
      timestamp,
    };
    this.shadows.set(thingName, next);
    return next;
  }

  async delete(thingName: string): Promise<void> {
    this.shadows.delete(thingName);
  }
}
