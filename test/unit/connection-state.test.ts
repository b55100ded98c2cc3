import type { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { DynamoDbDeviceRegistry } from '../../functions/adapters/registry-dynamodb.ts';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import { type Device, NEVER } from '../../functions/core/identity/device.ts';
import type { DeviceRegistry } from '../../functions/core/identity/registry.ts';
import { startTestDynamo, type TestDynamo } from '../support/emulators.ts';
import { MemoryLog } from './fakes.ts';

// The module builds its default handler at import time; give it the variable its stack would.
vi.hoisted(() => {
  process.env.REGISTRY_TABLE_NAME ??= 'unit-test-registry';
});

const { makeHandler } = await import('../../functions/connection-state.ts');

/**
 * Issue 17, item 10: the handler wrote the connection state and the last activity time in two writes,
 * so a reader in between saw `Connected` with `lastActivityTime` 0001-01-01 (or the previous connect's).
 * Every write the handler makes is followed here by a read of the device; no read may see a device
 * connected without the activity of that connect.
 */

const t = (seconds: number) => new Date(Date.UTC(2030, 0, 1, 0, 0, seconds));
const presence = (clientId: string, eventType: 'connected' | 'disconnected', seconds: number) => ({
  clientId,
  eventType,
  timestamp: t(seconds).getTime(),
});

/** A registry under test, and every device state read right after one of its writes. */
interface Observed {
  readonly registry: DeviceRegistry;
  readonly seen: Device[];
}

/** Wraps the port: after each write call, reads the device back through the unwrapped registry. */
function observePort(inner: DeviceRegistry): Observed {
  const seen: Device[] = [];
  const writes = new Set(['setConnectionState', 'touchActivity']);
  const registry = new Proxy(inner, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown;
      if (typeof property !== 'string' || !writes.has(property) || typeof value !== 'function') return value;
      return async (deviceId: string, ...rest: unknown[]) => {
        const result = (await value.call(target, deviceId, ...rest)) as unknown;
        seen.push(await inner.get(deviceId));
        return result;
      };
    },
  });
  return { registry, seen };
}

/**
 * Wraps the DynamoDB client: after each UpdateItem (also those the adapter makes inside one port call),
 * reads the device back with a consistent read.
 */
function observeTable(doc: DynamoDBDocumentClient, tableName: string): Observed {
  const seen: Device[] = [];
  const reader = new DynamoDbDeviceRegistry({ client: doc, tableName });
  const watched = new Proxy(doc, {
    get(target, property, receiver) {
      if (property !== 'send') return Reflect.get(target, property, receiver);
      return async (command: { constructor: { name: string }; input: { Key?: { pk?: string } } }) => {
        try {
          return await target.send(command as never);
        } finally {
          const pk = command.input.Key?.pk;
          if (command.constructor.name === 'UpdateCommand' && pk?.startsWith('device#')) {
            seen.push(await reader.get(pk.slice('device#'.length)));
          }
        }
      };
    },
  });
  return { registry: new DynamoDbDeviceRegistry({ client: watched, tableName }), seen };
}

/** A device seen `Connected` must carry the activity of the connect that put it there. */
function connectWithoutActivity(seen: readonly Device[]): Device[] {
  return seen.filter(
    (d) =>
      d.connectionState === 'Connected' &&
      (d.lastActivityTime === NEVER || d.lastActivityTime < d.connectionStateUpdatedTime),
  );
}

let dynamo: TestDynamo;
let tables = 0;
beforeAll(async () => {
  dynamo = await startTestDynamo();
});
afterAll(() => dynamo?.close());

const implementations: { name: string; make: () => Promise<Observed> }[] = [
  { name: 'memory registry', make: async () => observePort(new MemoryDeviceRegistry()) },
  {
    name: 'dynamodb registry (dynalite), observed per UpdateItem',
    make: async () => observeTable(dynamo.doc, await dynamo.createPkSkTable(`conn-state-${++tables}`)),
  },
];

describe.each(implementations)('connection-state handler on the $name', ({ make }) => {
  let observed: Observed;
  let handler: (event: unknown) => Promise<void>;
  let log: MemoryLog;

  beforeEach(async () => {
    observed = await make();
    log = new MemoryLog();
    handler = makeHandler({ registry: observed.registry, log });
    await observed.registry.create({ deviceId: 'd1' });
  });

  it('never shows a new device Connected with lastActivityTime 0001-01-01', async () => {
    await handler(presence('d1', 'connected', 5));
    // One write: the state and the activity of the connect land together.
    expect(observed.seen).toHaveLength(1);
    expect(connectWithoutActivity(observed.seen)).toEqual([]);
    expect(await observed.registry.get('d1')).toMatchObject({
      connectionState: 'Connected',
      connectionStateUpdatedTime: t(5).toISOString(),
      lastActivityTime: t(5).toISOString(),
    });
  });

  it("never shows a reconnected device Connected with the previous connect's activity", async () => {
    await handler(presence('d1', 'connected', 5));
    await handler(presence('d1', 'disconnected', 9));
    await handler(presence('d1', 'connected', 12));
    expect(connectWithoutActivity(observed.seen)).toEqual([]);
    expect(await observed.registry.get('d1')).toMatchObject({
      connectionState: 'Connected',
      lastActivityTime: t(12).toISOString(),
    });
  });

  it('keeps state moving forward only, but records the activity of a late connect', async () => {
    await handler(presence('d1', 'disconnected', 20));
    await handler(presence('d1', 'connected', 10));
    expect(connectWithoutActivity(observed.seen)).toEqual([]);
    expect(await observed.registry.get('d1')).toMatchObject({
      connectionState: 'Disconnected',
      connectionStateUpdatedTime: t(20).toISOString(),
      lastActivityTime: t(10).toISOString(),
    });
  });

  it('does not touch activity on a disconnect', async () => {
    await handler(presence('d1', 'disconnected', 20));
    expect((await observed.registry.get('d1')).lastActivityTime).toBe(NEVER);
  });

  it('ignores an event for a device deleted meanwhile, and a non-presence event with a warning', async () => {
    await handler(presence('ghost', 'connected', 5));
    await handler({ clientId: 'd1' });
    expect(log.at('warn').map((e) => e.message)).toEqual(['presence event ignored: not a presence event']);
    expect((await observed.registry.get('d1')).connectionState).toBe('Disconnected');
  });
});
