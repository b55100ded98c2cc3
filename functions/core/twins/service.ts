import { ValidationError } from '../errors.ts';
import { PreconditionFailedError } from '../identity/errors.ts';
import type { DeviceRegistry } from '../identity/registry.ts';
import { isSpecificIfMatch } from '../identity/registry.ts';
import type { Log } from '../ports.ts';
import { TagsConflictError } from './errors.ts';
import { checkTagsSize, diffPatch, jsonEqual, mergePatch, parseTwinBody, type TwinPatch } from './patch.ts';
import {
  hasShadow,
  type JsonObject,
  parseTwinEtag,
  type ShadowDocument,
  type ShadowStore,
  type StoredTags,
  type TagsStore,
  type TwinJson,
  type TwinParts,
  type TwinVersions,
  tagsOfGeneration,
  toTwinJson,
  twinEtag,
  versionsOf,
} from './twin.ts';

/** A tags change, reported as IoT Hub's twin change event (`updateTwin` / `replaceTwin`). */
export interface TagsChange {
  readonly deviceId: string;
  readonly opType: 'updateTwin' | 'replaceTwin';
  readonly at: Date;
  /** The twin's version right after the tags write (a desired write in the same call follows it and is reported by the shadow). */
  readonly version: number;
  /** The tags patch (`updateTwin`, `null` removes) or the whole new tags (`replaceTwin`). */
  readonly tags: JsonObject;
}

/** What {@link TwinService} needs. */
export interface TwinServiceDeps {
  readonly registry: Pick<DeviceRegistry, 'get'>;
  readonly tags: TagsStore;
  readonly shadows: ShadowStore;
  /**
   * Told of every tags change after it is written, for twin change events. Desired and reported changes
   * are reported by the shadow service itself (its `update/documents` topic). Never rejects.
   * @default none
   */
  readonly onTagsChanged?: (change: TagsChange) => Promise<void>;
  readonly log?: Log;
  /** Tries at an unconditional tags write that loses races to other writers. @default 5 */
  readonly maxTagWriteAttempts?: number;
  readonly now?: () => Date;
}

/**
 * IoT Hub's twin operations over the registry (identity fields), the tags store (tags) and the device's
 * shadow (desired and reported properties).
 *
 * Concurrency: `If-Match` with a twin etag makes an update apply only if neither tags nor desired
 * properties changed since that etag was read: tags are written conditionally on their version, desired
 * properties with the shadow's `version`. Without `If-Match` (or with `*`) a tags patch is merged into
 * whatever is current (re-read and retried when a concurrent write wins) and desired properties merge in
 * the shadow. An update that changes both is two writes, tags first: if the desired write fails (a
 * concurrent change under `If-Match`, the shadow unavailable) the tags change stands and the caller gets
 * the error; repeating an unconditional patch is harmless, since merging it twice gives the same twin.
 */
export class TwinService {
  constructor(private readonly deps: TwinServiceDeps) {}

  /** The twin; `DeviceNotFoundError` when the device is not registered. */
  async get(deviceId: string): Promise<TwinJson> {
    return toTwinJson(await this.read(deviceId));
  }

  /** `PATCH /twins/{id}`: merges tags and desired properties (`null` removes a key). */
  async update(deviceId: string, body: unknown, ifMatch?: string): Promise<TwinJson> {
    const patch = parseTwinBody(body, deviceId, true);
    return this.apply(deviceId, patch, ifMatch, 'updateTwin');
  }

  /** `PUT /twins/{id}`: replaces tags and desired properties (an absent section is replaced by `{}`). */
  async replace(deviceId: string, body: unknown, ifMatch?: string): Promise<TwinJson> {
    const given = parseTwinBody(body, deviceId, false);
    return this.apply(
      deviceId,
      { tags: given.tags ?? {}, desired: given.desired ?? {} },
      ifMatch,
      'replaceTwin',
    );
  }

  /**
   * Forgets the twin of a deleted device: its tags and its shadow. Failures are logged: the tags belong
   * to the deleted generation and are ignored by a later device with the same id, but a shadow left
   * behind would be inherited, so the error is rethrown for the caller to report.
   */
  async forget(deviceId: string): Promise<void> {
    await this.deps.tags.delete(deviceId).catch((error: unknown) => {
      this.deps.log?.warn('could not delete the tags of a deleted device', {
        deviceId,
        error: String(error),
      });
    });
    if (hasShadow(deviceId)) await this.deps.shadows.delete(deviceId);
  }

  private async read(deviceId: string): Promise<TwinParts> {
    const device = await this.deps.registry.get(deviceId);
    const [stored, shadow] = await Promise.all([
      this.deps.tags.get(deviceId),
      hasShadow(deviceId) ? this.deps.shadows.get(deviceId) : undefined,
    ]);
    return { device, tags: tagsOfGeneration(device, stored), shadow };
  }

  private async apply(
    deviceId: string,
    patch: TwinPatch,
    ifMatch: string | undefined,
    opType: TagsChange['opType'],
  ): Promise<TwinJson> {
    let parts = await this.read(deviceId);
    const expected = isSpecificIfMatch(ifMatch) ? this.expectedVersions(parts, ifMatch) : undefined;

    if (patch.desired !== undefined && !hasShadow(deviceId)) {
      // Refused before anything is written.
      throw new ValidationError(
        'InvalidTwinPatch',
        `properties.desired: device '${deviceId}' has no shadow, so no desired properties: AWS IoT thing names allow only letters, digits, ':', '_' and '-'`,
        { field: 'properties.desired', deviceId },
      );
    }

    let tags = parts.tags;
    if (patch.tags !== undefined) {
      const written = await this.writeTags(parts, patch.tags, opType, expected !== undefined);
      tags = written.tags;
      // Reported as soon as it stands, so a failing desired write below cannot lose the event.
      if (written.change !== undefined && this.deps.onTagsChanged !== undefined) {
        const v = versionsOf({ tags, shadow: parts.shadow });
        await this.deps.onTagsChanged({
          deviceId,
          opType,
          at: new Date(tags?.updatedTime ?? Date.now()),
          version: v.tags + v.shadow,
          tags: written.change,
        });
      }
    }

    let shadow: ShadowDocument | undefined = parts.shadow;
    if (patch.desired !== undefined) {
      const current = parts.shadow?.state.desired ?? {};
      const desired = opType === 'replaceTwin' ? diffPatch(current, patch.desired) : patch.desired;
      if (Object.keys(desired).length > 0 || expected !== undefined) {
        shadow = await this.deps.shadows.updateDesired(deviceId, desired, expected?.shadow);
      }
    }
    parts = { ...parts, tags, shadow };
    return toTwinJson(parts);
  }

  /** The versions `ifMatch` stands for, or `PreconditionFailedError` when the twin is no longer there. */
  private expectedVersions(parts: TwinParts, ifMatch: string): TwinVersions {
    const current = versionsOf(parts);
    const expected = parseTwinEtag(ifMatch);
    if (expected === undefined || expected.tags !== current.tags || expected.shadow !== current.shadow) {
      throw new PreconditionFailedError(parts.device.deviceId, ifMatch, twinEtag(current));
    }
    return expected;
  }

  /**
   * Writes the tags: merged (`updateTwin`) or replaced (`replaceTwin`). Conditional on the version read;
   * `strict` (under `If-Match`) turns a lost race into 412, otherwise the write is re-read and retried.
   * Returns the tags now stored and the change to report (`undefined` when nothing changed).
   */
  private async writeTags(
    parts: TwinParts,
    patch: JsonObject,
    opType: TagsChange['opType'],
    strict: boolean,
  ): Promise<{ tags: StoredTags | undefined; change: JsonObject | undefined }> {
    const { device } = parts;
    const attempts = this.deps.maxTagWriteAttempts ?? 5;
    let current = parts.tags;
    for (let attempt = 1; ; attempt++) {
      const before = current?.tags ?? {};
      const after = opType === 'replaceTwin' ? patch : mergePatch(before, patch);
      if (jsonEqual(before, after)) return { tags: current, change: undefined };
      checkTagsSize(after, device.deviceId);
      const next: StoredTags = {
        tags: after,
        version: (current?.version ?? 0) + 1,
        generationId: device.generationId,
        updatedTime: (this.deps.now ?? (() => new Date()))().toISOString(),
      };
      const expected =
        current === undefined ? undefined : { version: current.version, generationId: device.generationId };
      try {
        await this.deps.tags.put(device.deviceId, next, expected);
        return { tags: next, change: opType === 'replaceTwin' ? after : diffPatch(before, after) };
      } catch (error) {
        // A lost race is a 412 under If-Match (TagsConflictError's code), and after the last try.
        if (!(error instanceof TagsConflictError) || strict || attempt >= attempts) throw error;
        current = tagsOfGeneration(device, await this.deps.tags.get(device.deviceId));
      }
    }
  }
}
