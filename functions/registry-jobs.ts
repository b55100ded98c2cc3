import type { Context } from 'aws-lambda';
import { z } from 'zod';
import { dynamoDocumentClient, iotDataClient, kinesisClient, s3Client } from './adapters/aws-clients.ts';
import { IotConnections } from './adapters/connections.ts';
import { KinesisStreamSink } from './adapters/kinesis-sink.ts';
import { powertoolsLog } from './adapters/log.ts';
import { DynamoDbDeviceRegistry } from './adapters/registry-dynamodb.ts';
import { DynamoDbJobStore } from './adapters/registry-jobs-dynamodb.ts';
import { S3BlobStore } from './adapters/s3-blob-store.ts';
import { IotShadowStore } from './adapters/shadow-iot.ts';
import { DynamoDbTagsStore } from './adapters/twin-tags-dynamodb.ts';
import { x509FromEnv } from './adapters/x509-wiring.ts';
import { IngestLifecycleEvents } from './core/d2c/lifecycle-events.ts';
import { requireEnv } from './core/env.ts';
import { idlePollFromEnv, REGISTRY_JOBS_ENV } from './core/identity/jobs/config.ts';
import { JobWorker, type WorkerDeps, type WorkerReport } from './core/identity/jobs/worker.ts';
import { TwinService } from './core/twins/service.ts';

const ScheduledEventSchema = z.object({ 'detail-type': z.literal('Scheduled Event') });

/** The schedule starts the worker every minute; a run stops taking new chunks before the next start. */
export const RUN_MS = 55_000;
/** Time a run leaves before its timeout for the chunk in hand and the last save. */
export const SAFETY_MS = 20_000;

/**
 * The import/export worker: started every minute by a schedule, it runs the active import/export job
 * in chunks until shortly before the next start and, while it has none, looks for a new one every
 * `hub.registryJobs.idlePollMs` (2 s by default), so a job starts within seconds of `POST /jobs/create`
 * (with 0: at the next start, within a minute). Other events are ignored.
 */
export function makeHandler(deps: WorkerDeps) {
  const worker = new JobWorker(deps);
  return async (
    event: unknown,
    context?: Pick<Context, 'getRemainingTimeInMillis'>,
  ): Promise<WorkerReport | undefined> => {
    if (!ScheduledEventSchema.safeParse(event).success) {
      deps.log.warn('event ignored: not a schedule tick');
      return undefined;
    }
    const started = (deps.now ?? (() => new Date()))().getTime();
    const left = context?.getRemainingTimeInMillis() ?? Number.POSITIVE_INFINITY;
    return worker.run(Math.min(started + RUN_MS, started + left - SAFETY_MS));
  };
}

function defaultDeps(env: NodeJS.ProcessEnv): WorkerDeps {
  const log = powertoolsLog('registry-jobs');
  const documents = dynamoDocumentClient();
  const registryTable = requireEnv(env, 'REGISTRY_TABLE_NAME');
  const registry = new DynamoDbDeviceRegistry({ client: documents, tableName: registryTable });
  return {
    // Imported X.509 devices get their thing, certificates and policy in IoT Core, as through the API.
    registry: x509FromEnv(env, registry, registryTable, log).registry,
    store: new DynamoDbJobStore({
      client: documents,
      tableName: requireEnv(env, REGISTRY_JOBS_ENV.jobsTable),
    }),
    blobs: new S3BlobStore(s3Client()),
    lifecycleEvents: new IngestLifecycleEvents({
      sink: new KinesisStreamSink(kinesisClient(), requireEnv(env, 'INGEST_STREAM_NAME')),
      log,
    }),
    connections: new IotConnections(iotDataClient()),
    // A deleted device's twin goes with it (tags and shadow), as through DELETE /devices/{id}.
    twins: new TwinService({
      registry,
      tags: new DynamoDbTagsStore({ client: documents, tableName: registryTable }),
      shadows: new IotShadowStore(iotDataClient()),
      log,
    }),
    pollIntervalMs: idlePollFromEnv(env),
    log,
  };
}

/** The Lambda entry point. */
export const handler = makeHandler(defaultDeps(process.env));
