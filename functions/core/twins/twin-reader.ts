import type { DeviceRegistry } from '../identity/registry.ts';
import {
  type RoutingTwin,
  type ShadowStore,
  type TagsStore,
  tagsOfGeneration,
  toRoutingTwin,
} from './twin.ts';

/**
 * Reads the twin that `$twin` route conditions and enrichments see. Implemented by
 * {@link RegistryTwinReader}; the router reads each device's twin at most once per batch.
 */
export interface TwinReader {
  /**
   * The device's twin (tags, desired and reported properties), or `undefined` when the device is not
   * registered. Rejects when a store cannot be read (`TransientError` for throttling and 5xx): the
   * caller must not take a failed read for an empty twin.
   */
  read(deviceId: string): Promise<RoutingTwin | undefined>;
}

/** What {@link RegistryTwinReader} reads from. */
export interface RegistryTwinReaderDeps {
  readonly registry: Pick<DeviceRegistry, 'find'>;
  readonly tags: Pick<TagsStore, 'get'>;
  readonly shadows: Pick<ShadowStore, 'get'>;
}

/**
 * The twin as the twin service assembles it, without metadata: the registry says whether the device
 * exists (and its generation, so tags left by an earlier device with the same id count as none), the
 * tags store holds the tags, the device's classic shadow the desired and reported properties. The three
 * reads run at once: two DynamoDB `GetItem`s on the registry table and one `GetThingShadow`.
 *
 * What routing sees is the twin as read at routing time, not as it was when the message was sent: a
 * twin update that lands between a device's publish and its routing is already visible (IoT Hub
 * documents the same eventual consistency for its twin-based routes and enrichments).
 */
export class RegistryTwinReader implements TwinReader {
  constructor(private readonly deps: RegistryTwinReaderDeps) {}

  async read(deviceId: string): Promise<RoutingTwin | undefined> {
    const [device, stored, shadow] = await Promise.all([
      this.deps.registry.find(deviceId),
      this.deps.tags.get(deviceId),
      this.deps.shadows.get(deviceId),
    ]);
    if (device === undefined) return undefined;
    return toRoutingTwin({ tags: tagsOfGeneration(device, stored), shadow });
  }
}
