import { z } from 'zod';
import { HubError } from '../errors.ts';
import { c2dConfigSchema } from './message.ts';

/** Environment variable that carries the hub's C2D settings (JSON) into every C2D function. */
export const C2D_SETTINGS_ENV = 'C2D_SETTINGS';

/**
 * The hub's C2D settings (`hub.c2d` in `cdk.json`): the ledger's IoT Hub-style limits plus how
 * delivery runs. Times are milliseconds.
 */
export const c2dSettingsSchema = c2dConfigSchema
  .extend({
    /** Messages a device may hold delivered but unsettled at once; 1 keeps strict order across abandons. */
    maxInFlight: z.number().int().min(1).max(100).default(5),
    /**
     * How often the sweep releases lapsed locks, expires messages and repairs feedback. A one-minute
     * schedule starts the sweep function, which sweeps at this interval until the next start.
     */
    sweepIntervalMs: z.number().int().min(1_000).max(60_000).default(10_000),
  })
  .strict();

/** Validated C2D settings. */
export type C2dSettings = z.output<typeof c2dSettingsSchema>;

/** The defaults, as a user who writes nothing gets them. */
export const DEFAULT_C2D_SETTINGS: C2dSettings = c2dSettingsSchema.parse({});

/** Reads {@link C2D_SETTINGS_ENV} at cold start; a missing variable means the defaults. */
export function c2dSettingsFromEnv(env: NodeJS.ProcessEnv): C2dSettings {
  const raw = env[C2D_SETTINGS_ENV];
  if (raw === undefined || raw === '') return DEFAULT_C2D_SETTINGS;
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    throw new HubError('InvalidEnvironment', `environment variable ${C2D_SETTINGS_ENV} is not JSON`, {
      key: C2D_SETTINGS_ENV,
    });
  }
  const parsed = c2dSettingsSchema.safeParse(json);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  throw new HubError(
    'InvalidEnvironment',
    `environment variable ${C2D_SETTINGS_ENV}: ${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}`,
    { key: C2D_SETTINGS_ENV },
  );
}
