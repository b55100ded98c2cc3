import { z } from 'zod';
import { c2dSettingsSchema, DEFAULT_C2D_SETTINGS } from '../functions/core/c2d/config.ts';
import { registryJobsConfigSchema } from '../functions/core/identity/jobs/config.ts';
import { DEFAULT_ROUTING, routingConfigSchema } from '../functions/core/routing/config.ts';

/** The built-in endpoint's capacity: on-demand, or a fixed number of shards. */
const BuiltInEndpointSchema = z
  .object({
    /** Days the built-in endpoint keeps records, 1–365. IoT Hub's default is 1. */
    retentionDays: z.number().int().min(1).max(365).default(1),
    /**
     * `on-demand` (scales itself; billed per stream hour, even when idle, plus per GB written and read)
     * or `provisioned` with `shardCount` (billed per shard hour plus per million PUT units).
     */
    mode: z.enum(['on-demand', 'provisioned']).default('on-demand'),
    /** Shards when `mode` is `provisioned`, 1–500. */
    shardCount: z.number().int().min(1).max(500).optional(),
  })
  .strict()
  .superRefine((value, ctx) => {
    if (value.mode === 'provisioned' && value.shardCount === undefined) {
      ctx.addIssue({ code: 'custom', path: ['shardCount'], message: 'required when mode is provisioned' });
    }
    if (value.mode === 'on-demand' && value.shardCount !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['shardCount'],
        message: 'only allowed when mode is provisioned',
      });
    }
  });

/** The whole hub's configuration, as `cdk.json` context key `hub` or props from code. */
export const HubConfigSchema = z
  .object({
    /** Shown in envelopes and enrichments; not a physical resource name. */
    hubName: z
      .string()
      .regex(/^[a-zA-Z0-9-]{3,50}$/, '3-50 letters, digits or hyphens')
      .default('serverless-iot-hub'),
    builtInEndpoint: BuiltInEndpointSchema.default({ retentionDays: 1, mode: 'on-demand' }),
    /** Largest D2C body in bytes. IoT Hub allows 256 KB; AWS IoT Core itself caps MQTT payloads at 128 KB. */
    maxMessageBytes: z
      .number()
      .int()
      .min(1)
      .max(256 * 1024)
      .default(256 * 1024),
    /**
     * Host name devices and back ends put in SAS tokens (`sr`) and connection strings. In the cloud,
     * your IoT Core data endpoint (`aws iot describe-endpoint --endpoint-type iot:Data-ATS`) or custom domain.
     */
    hostName: z
      .string()
      .regex(/^[a-zA-Z0-9.-]{1,253}$/, 'a DNS host name')
      .default('localhost'),
    /** MQTT topic filter of the ingest rule. Change it only with the device topic scheme. */
    d2cTopicFilter: z.string().min(1).default('devices/+/messages/events/#'),
    /**
     * AWS IoT Basic Ingest for D2C telemetry: devices may also publish to
     * `$aws/rules/{ingest rule}/devices/{id}/messages/events/...` (stack output `BasicIngestTopicPrefix`),
     * which skips the message broker and its per-message charge; such messages reach no MQTT subscriber.
     * Off: devices have no permission on `$aws/rules/...` at all.
     */
    basicIngest: z.boolean().default(false),
    /**
     * Cloud-to-device messaging: default time to live, delivery attempts, lock timeout, queue depth,
     * unsettled messages per device and the sweep interval (times in milliseconds). Passed to the
     * C2D functions as JSON in `C2D_SETTINGS`.
     */
    c2d: c2dSettingsSchema.default(() => ({ ...DEFAULT_C2D_SETTINGS })),
    /**
     * Message routing, IoT Hub's model: custom endpoints (Kinesis streams, SQS queues, SNS topics, S3
     * buckets or EventBridge buses the stack creates), routes (a condition compiled here, at synth
     * time, and one endpoint each), the fallback route and enrichments. Bundled with the router as
     * `routing.json` (with the hub name); the routed endpoints' deploy-time targets go in its
     * `ENDPOINTS` environment variable. Absent: no routes, fallback on, so every message goes to the
     * built-in endpoint.
     */
    routing: routingConfigSchema.default(() => structuredClone(DEFAULT_ROUTING)),
    /**
     * Registry import/export jobs (`docs/registry-jobs.md`): existing buckets, besides the hub's own
     * (stack output `RegistryJobsBucketName`), whose objects jobs may read and write, and how often an
     * idle worker looks for a new job.
     */
    registryJobs: registryJobsConfigSchema.default(() => registryJobsConfigSchema.parse({})),
  })
  .strict();

/** Validated hub configuration. */
export type HubConfig = z.infer<typeof HubConfigSchema>;
/** What a user may write: every field optional, defaults filled in by {@link parseHubConfig}. */
export type HubConfigInput = z.input<typeof HubConfigSchema>;

/** Raised for a bad configuration, naming every bad field. */
export class HubConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HubConfigError';
  }
}

/**
 * Validates raw configuration (from `cdk.json` context or code) and fills defaults.
 * @throws HubConfigError listing each bad field by its path, e.g. `hub.builtInEndpoint.retentionDays`.
 */
export function parseHubConfig(raw: unknown): HubConfig {
  const result = HubConfigSchema.safeParse(raw ?? {});
  if (result.success) return result.data;
  const problems = result.error.issues.flatMap((issue) => {
    const at = ['hub', ...issue.path.map(String)];
    // An unknown key is named by its own path, not its parent's.
    if (issue.code === 'unrecognized_keys')
      return issue.keys.map((key) => `${[...at, key].join('.')}: unknown key`);
    return [`${at.join('.')}: ${issue.message}`];
  });
  throw new HubConfigError(`invalid hub configuration:\n  ${problems.join('\n  ')}`);
}
