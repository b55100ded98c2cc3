import type { BulkOperation, ConnectionState, Device, DeviceInput } from '../core/identity/device.ts';
import {
  DeviceAlreadyExistsError,
  DeviceNotFoundError,
  PreconditionFailedError,
} from '../core/identity/errors.ts';
import {
  applyReplacement,
  type BulkResult,
  buildNewDevice,
  type Clock,
  type ConditionalOptions,
  type ConnectionStateOptions,
  checkListLimit,
  type DevicePage,
  type DeviceRegistry,
  decodeCursor,
  encodeCursor,
  etagMatches,
  type ListOptions,
  runBulk,
} from '../core/identity/registry.ts';

/** Options of {@link MemoryDeviceRegistry}. */
export interface MemoryDeviceRegistryOptions {
  /** Source of "now" for status times. @default () => new Date() */
  readonly clock?: Clock;
}

/**
 * The identity registry in a Map: for unit tests of code that uses the registry, and tools. Each method
 * runs without an `await` between its read and its write, so it is atomic the way a conditional write is.
 * Devices are copied in and out; callers cannot mutate the store. Lists in id order.
 */
export class MemoryDeviceRegistry implements DeviceRegistry {
  private readonly devices = new Map<string, Device>();
  private readonly clock: Clock;

  constructor(options: MemoryDeviceRegistryOptions = {}) {
    this.clock = options.clock ?? (() => new Date());
  }

  /** {@inheritDoc DeviceRegistry.create} */
  async create(input: DeviceInput): Promise<Device> {
    const device = buildNewDevice(input, this.clock());
    if (this.devices.has(device.deviceId)) throw new DeviceAlreadyExistsError(device.deviceId);
    this.devices.set(device.deviceId, structuredClone(device));
    return device;
  }

  /** {@inheritDoc DeviceRegistry.get} */
  async get(deviceId: string): Promise<Device> {
    const device = this.devices.get(deviceId);
    if (device === undefined) throw new DeviceNotFoundError(deviceId);
    return structuredClone(device);
  }

  /** {@inheritDoc DeviceRegistry.find} */
  async find(deviceId: string): Promise<Device | undefined> {
    const device = this.devices.get(deviceId);
    return device === undefined ? undefined : structuredClone(device);
  }

  /** {@inheritDoc DeviceRegistry.replace} */
  async replace(input: DeviceInput, options: ConditionalOptions = {}): Promise<Device> {
    const existing = this.devices.get(input.deviceId);
    if (existing === undefined) throw new DeviceNotFoundError(input.deviceId);
    if (!etagMatches(existing.etag, options.ifMatch)) {
      throw new PreconditionFailedError(input.deviceId, options.ifMatch ?? '', existing.etag);
    }
    const next = applyReplacement(existing, input, this.clock());
    this.devices.set(next.deviceId, structuredClone(next));
    return next;
  }

  /** {@inheritDoc DeviceRegistry.delete} */
  async delete(deviceId: string, options: ConditionalOptions = {}): Promise<Device> {
    const existing = this.devices.get(deviceId);
    if (existing === undefined) throw new DeviceNotFoundError(deviceId);
    if (!etagMatches(existing.etag, options.ifMatch)) {
      throw new PreconditionFailedError(deviceId, options.ifMatch ?? '', existing.etag);
    }
    this.devices.delete(deviceId);
    return structuredClone(existing);
  }

  /** {@inheritDoc DeviceRegistry.list} */
  async list(options: ListOptions = {}): Promise<DevicePage> {
    const limit = checkListLimit(options.limit);
    const after =
      options.cursor === undefined ? undefined : decodeCursor(options.cursor).pk.slice('device#'.length);
    const ids = [...this.devices.keys()].sort().filter((id) => after === undefined || id > after);
    const page = ids.slice(0, limit);
    const devices = page.map((id) => structuredClone(this.devices.get(id)!));
    const last = page.at(-1);
    return ids.length > limit && last !== undefined
      ? { devices, nextCursor: encodeCursor({ pk: `device#${last}`, sk: 'device' }) }
      : { devices };
  }

  /** {@inheritDoc DeviceRegistry.bulk} */
  async bulk(operations: readonly BulkOperation[]): Promise<BulkResult> {
    return runBulk(this, operations);
  }

  /** {@inheritDoc DeviceRegistry.setConnectionState} */
  async setConnectionState(
    deviceId: string,
    state: ConnectionState,
    at: Date,
    options: ConnectionStateOptions = {},
  ): Promise<Device> {
    const existing = this.devices.get(deviceId);
    if (existing === undefined) throw new DeviceNotFoundError(deviceId);
    const time = at.toISOString();
    const stateMoves = existing.connectionStateUpdatedTime <= time;
    const activityMoves = options.touchActivity === true && existing.lastActivityTime < time;
    if (!stateMoves && !activityMoves) return structuredClone(existing);
    const next: Device = {
      ...existing,
      ...(stateMoves ? { connectionState: state, connectionStateUpdatedTime: time } : {}),
      ...(activityMoves ? { lastActivityTime: time } : {}),
    };
    this.devices.set(deviceId, next);
    return structuredClone(next);
  }

  /** {@inheritDoc DeviceRegistry.touchActivity} */
  async touchActivity(deviceId: string, at: Date): Promise<Device> {
    const existing = this.devices.get(deviceId);
    if (existing === undefined) throw new DeviceNotFoundError(deviceId);
    const time = at.toISOString();
    if (existing.lastActivityTime >= time) return structuredClone(existing);
    const next: Device = { ...existing, lastActivityTime: time };
    this.devices.set(deviceId, next);
    return structuredClone(next);
  }
}
