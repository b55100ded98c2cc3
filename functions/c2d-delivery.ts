import type { Context } from 'aws-lambda';
import { z } from 'zod';
import { dynamoDocumentClient } from './adapters/aws-clients.ts';
import { c2dFromEnv } from './adapters/c2d-wiring.ts';
import { powertoolsLog } from './adapters/log.ts';
import { DynamoDbDeviceRegistry } from './adapters/registry-dynamodb.ts';
import type { C2dDelivery } from './core/c2d/delivery.ts';
import { coversDevicebound } from './core/c2d/topics.ts';
import { requireEnv } from './core/env.ts';
import type { DeviceRegistry } from './core/identity/registry.ts';
import type { Log } from './core/ports.ts';

/** AWS IoT lifecycle events that start a delivery: connected, subscribed. */
const LifecycleEventSchema = z.object({
  clientId: z.string().min(1),
  eventType: z.string(),
  topics: z.array(z.string()).optional(),
});

const ScheduledEventSchema = z.object({ 'detail-type': z.literal('Scheduled Event') });

/** Due entries one sweep handles; a full sweep is followed at once by another. */
export const SWEEP_BATCH = 100;
/** Time left for the last sweep of an invocation before its timeout. */
const SAFETY_MS = 5_000;
/** The schedule starts the function every minute; sweeping stops before the next start. */
const SCHEDULE_PERIOD_MS = 60_000;

/** What the delivery function needs. */
export interface DeliveryFunctionDeps {
  readonly delivery: Pick<C2dDelivery, 'deliver' | 'sweep'>;
  readonly registry: Pick<DeviceRegistry, 'get'>;
  readonly sweepIntervalMs: number;
  readonly log: Log;
  /** @default a timer */
  readonly sleep?: (ms: number) => Promise<void>;
}

/**
 * Delivers C2D messages. Three triggers:
 * - the device connected (`$aws/events/presence/connected/{id}`) or subscribed to a filter that covers
 *   its devicebound topics (`$aws/events/subscriptions/subscribed/{id}`): deliver its queue in order;
 * - the one-minute schedule: sweep the ledger's due index every `sweepIntervalMs` until the next start
 *   (release lapsed locks and redeliver to connected devices, expire, dead-letter, repair feedback).
 */
export function makeHandler(deps: DeliveryFunctionDeps) {
  const sleep = deps.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const isConnected = async (deviceId: string): Promise<boolean> =>
    (await deps.registry.get(deviceId))?.connectionState === 'Connected';

  const sweepUntilNextStart = async (context: Pick<Context, 'getRemainingTimeInMillis'> | undefined) => {
    const started = Date.now();
    const interval = deps.sweepIntervalMs;
    let sweeps = 0;
    for (;;) {
      // Sweep until the due index has nothing more due now.
      for (;;) {
        const { report, deliveries } = await deps.delivery.sweep({ limit: SWEEP_BATCH, isConnected });
        sweeps++;
        const handled = report.changed.length + report.feedback.length + report.deleted + report.conflicts;
        if (report.changed.length > 0 || report.deleted > 0) {
          deps.log.info('sweep', {
            changed: report.changed.length,
            feedback: report.feedback.length,
            deleted: report.deleted,
            conflicts: report.conflicts,
            redelivered: deliveries.reduce((n, d) => n + d.delivered.length, 0),
          });
        }
        if (handled < SWEEP_BATCH) break;
        if (timeLeft(context) < SAFETY_MS) return sweeps;
      }
      const elapsed = Date.now() - started;
      if (elapsed + interval >= SCHEDULE_PERIOD_MS || timeLeft(context) < interval + SAFETY_MS) return sweeps;
      await sleep(interval);
    }
  };

  return async (event: unknown, context?: Context): Promise<unknown> => {
    if (ScheduledEventSchema.safeParse(event).success) {
      return { sweeps: await sweepUntilNextStart(context) };
    }
    const lifecycle = LifecycleEventSchema.safeParse(event);
    if (!lifecycle.success) {
      deps.log.warn('event ignored: neither a schedule nor a lifecycle event', {
        issues: lifecycle.error.issues.length,
      });
      return undefined;
    }
    const { clientId, eventType, topics } = lifecycle.data;
    const receives =
      eventType === 'connected' ||
      (eventType === 'subscribed' && (topics ?? []).some((filter) => coversDevicebound(clientId, filter)));
    if (!receives) return undefined;
    const report = await deps.delivery.deliver(clientId);
    if (report.delivered.length > 0 || report.failed.length > 0) {
      deps.log.info('delivered', {
        deviceId: clientId,
        trigger: eventType,
        delivered: report.delivered.length,
        failed: report.failed.length,
      });
    }
    return report;
  };
}

function timeLeft(context: Pick<Context, 'getRemainingTimeInMillis'> | undefined): number {
  return context?.getRemainingTimeInMillis() ?? Number.POSITIVE_INFINITY;
}

function defaultDeps(env: NodeJS.ProcessEnv): DeliveryFunctionDeps {
  const log = powertoolsLog('c2d-delivery');
  const { delivery, settings } = c2dFromEnv(env, log);
  return {
    delivery,
    registry: new DynamoDbDeviceRegistry({
      client: dynamoDocumentClient(),
      tableName: requireEnv(env, 'REGISTRY_TABLE_NAME'),
    }),
    sweepIntervalMs: settings.sweepIntervalMs,
    log,
  };
}

export const handler = makeHandler(defaultDeps(process.env));
