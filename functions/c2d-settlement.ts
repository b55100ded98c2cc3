import { z } from 'zod';
import { c2dFromEnv } from './adapters/c2d-wiring.ts';
import { powertoolsLog } from './adapters/log.ts';
import type { C2dDelivery, SettlementAnswer } from './core/c2d/delivery.ts';
import type { Log } from './core/ports.ts';

/** What the settlement rule (`SETTLE_RULE_SQL`) hands over. */
export const SettlementEventSchema = z.object({
  deviceId: z.string().min(1),
  outcome: z.string(),
  lockToken: z.string(),
  clientId: z.string(),
  receivedAt: z.number().optional(),
});

/** What the settlement function needs. */
export interface SettlementDeps {
  readonly delivery: Pick<C2dDelivery, 'settle'>;
  readonly log: Log;
}

/**
 * Settles a C2D message for a device that published to
 * `devices/{id}/messages/settle/{complete|reject|abandon}/{lockToken}`, answers on
 * `devices/{id}/messages/settle/res/{status}/{lockToken}` and delivers what the settlement made room
 * for. The device is the authenticated client id; a topic naming another device (which the topic
 * policy already forbids) is refused without touching the ledger.
 */
export function makeHandler(deps: SettlementDeps) {
  return async (event: unknown): Promise<SettlementAnswer | undefined> => {
    const parsed = SettlementEventSchema.safeParse(event);
    if (!parsed.success) {
      deps.log.warn('settlement ignored: not a settlement rule event', {
        issues: parsed.error.issues.length,
      });
      return undefined;
    }
    const { deviceId, clientId, outcome, lockToken } = parsed.data;
    if (deviceId !== clientId) {
      deps.log.warn('settlement refused: topic names another device', { deviceId, clientId });
      return undefined;
    }
    const answer = await deps.delivery.settle(deviceId, outcome, lockToken);
    deps.log.info('settlement', { deviceId, outcome, status: answer.status });
    return answer;
  };
}

function defaultDeps(env: NodeJS.ProcessEnv): SettlementDeps {
  const log = powertoolsLog('c2d-settlement');
  return { delivery: c2dFromEnv(env, log).delivery, log };
}

export const handler = makeHandler(defaultDeps(process.env));
