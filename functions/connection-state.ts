import { z } from 'zod';
import { dynamoDocumentClient } from './adapters/aws-clients.ts';
import { powertoolsLog } from './adapters/log.ts';
import { DynamoDbDeviceRegistry } from './adapters/registry-dynamodb.ts';
import { requireEnv } from './core/env.ts';
import { DeviceNotFoundError } from './core/identity/errors.ts';
import type { DeviceRegistry } from './core/identity/registry.ts';
import type { Log } from './core/ports.ts';

/** AWS IoT's lifecycle (presence) event, as published on `$aws/events/presence/{connected|disconnected}/{clientId}`. */
export const PresenceEventSchema = z.object({
  clientId: z.string().min(1),
  timestamp: z.number(),
  eventType: z.enum(['connected', 'disconnected']),
  disconnectReason: z.string().optional(),
});

/** What the connection-state function needs. */
export interface ConnectionStateDeps {
  readonly registry: DeviceRegistry;
  readonly log: Log;
}

/**
 * Keeps the registry's `connectionState`, `connectionStateUpdatedTime` and `lastActivityTime`
 * in step with the front door's presence events (an IoT rule invokes it asynchronously). Events
 * can arrive out of order; the registry only moves connection state forward in time.
 */
export function makeHandler(deps: ConnectionStateDeps) {
  return async (event: unknown): Promise<void> => {
    const parsed = PresenceEventSchema.safeParse(event);
    if (!parsed.success) {
      deps.log.warn('presence event ignored: not a presence event', { issues: parsed.error.issues.length });
      return;
    }
    const { clientId, timestamp, eventType } = parsed.data;
    const at = new Date(timestamp);
    try {
      // One write: a connect is also activity, and a reader must never see the device connected with
      // the last activity time it had before (for a new device, 0001-01-01).
      await deps.registry.setConnectionState(
        clientId,
        eventType === 'connected' ? 'Connected' : 'Disconnected',
        at,
        { touchActivity: eventType === 'connected' },
      );
    } catch (error) {
      // A device deleted while connected still disconnects; there is nothing left to update.
      if (error instanceof DeviceNotFoundError) return;
      throw error;
    }
  };
}

function defaultDeps(env: NodeJS.ProcessEnv): ConnectionStateDeps {
  return {
    registry: new DynamoDbDeviceRegistry({
      client: dynamoDocumentClient(),
      tableName: requireEnv(env, 'REGISTRY_TABLE_NAME'),
    }),
    log: powertoolsLog('connection-state'),
  };
}

export const handler = makeHandler(defaultDeps(process.env));
