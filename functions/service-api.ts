import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { dynamoDocumentClient, iotDataClient, kinesisClient } from './adapters/aws-clients.ts';
import { c2dFromEnv } from './adapters/c2d-wiring.ts';
import { IotConnections } from './adapters/connections.ts';
import { KinesisStreamSink } from './adapters/kinesis-sink.ts';
import { powertoolsLog } from './adapters/log.ts';
import { DynamoDbDeviceRegistry } from './adapters/registry-dynamodb.ts';
import { DynamoDbJobStore } from './adapters/registry-jobs-dynamodb.ts';
import { IotShadowStore } from './adapters/shadow-iot.ts';
import { DynamoDbTagsStore } from './adapters/twin-tags-dynamodb.ts';
import { x509FromEnv } from './adapters/x509-wiring.ts';
import { IngestLifecycleEvents, type LifecycleEvents } from './core/d2c/lifecycle-events.ts';
import { IngestTwinChangeEvents } from './core/d2c/twin-change-events.ts';
import { requireEnv } from './core/env.ts';
import { ValidationError } from './core/errors.ts';
import { allowedBucketsFromEnv, REGISTRY_JOBS_ENV } from './core/identity/jobs/config.ts';
import type { DeviceRegistry } from './core/identity/registry.ts';
import type { Log } from './core/ports.ts';
import { type C2dRouteDeps, c2dRoutes } from './core/service-api/c2d-routes.ts';
import { type CertificateRouteDeps, certificateRoutes } from './core/service-api/certificate-routes.ts';
import {
  type ApiRequest,
  type ApiResponse,
  dispatch,
  errorResponse,
  MAX_BODY_BYTES,
  RequestEntityTooLargeError,
  type RouteEntry,
  RouteTable,
} from './core/service-api/http.ts';
import { registryJobsRoutes } from './core/service-api/registry-jobs-routes.ts';
import { type DeviceConnections, registryRoutes } from './core/service-api/registry-routes.ts';
import { twinRoutes } from './core/service-api/twin-routes.ts';
import { TwinService } from './core/twins/service.ts';

/** What the service API handler needs. */
export interface ServiceApiDeps {
  /** The identity registry. */
  readonly registry: DeviceRegistry;
  /** Cuts the live connection of a device that was disabled or deleted. */
  readonly connections: DeviceConnections;
  /** Request log (one info line per request) and error log. */
  readonly log: Log;
  /**
   * Cloud-to-device messaging: its routes, and the purge of a deleted device's queue. Without it the
   * API serves the registry only.
   */
  readonly c2d?: Omit<C2dRouteDeps, 'registry' | 'log'>;
  /**
   * Device lifecycle events (`createDeviceIdentity` / `deleteDeviceIdentity`) onto the ingest stream,
   * for routes of source `DeviceLifecycleEvents`. @default none
   */
  readonly lifecycleEvents?: LifecycleEvents;
  /** X.509 CA certificates (`/certificates/...`). @default none: no certificate routes */
  readonly certificates?: CertificateRouteDeps;
  /** Device twins: `GET/PATCH/PUT /twins/{id}`, and forgetting a deleted device's twin. @default none */
  readonly twins?: TwinService;
  /** Routes of other modules, added after the registry, C2D and twin routes. @default [] */
  readonly extraRoutes?: readonly RouteEntry[];
  /** Largest accepted body in bytes, after base64 decoding. @default MAX_BODY_BYTES (256 KB) */
  readonly maxBodyBytes?: number;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Turns a Function URL event (payload format 2.0) into an {@link ApiRequest}: base64 bodies are decoded,
 * bodies over `maxBodyBytes` throw `RequestEntityTooLargeError` (413), bodies that are not UTF-8 a 400.
 */
export function toApiRequest(event: APIGatewayProxyEventV2, maxBodyBytes = MAX_BODY_BYTES): ApiRequest {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(event.headers ?? {})) {
    if (value !== undefined) headers[name.toLowerCase()] = value;
  }
  const query: Record<string, string> = {};
  for (const [name, value] of Object.entries(event.queryStringParameters ?? {})) {
    if (value !== undefined) query[name] = value;
  }
  let body: string | undefined;
  if (event.body !== undefined) {
    const bytes = Buffer.from(event.body, event.isBase64Encoded ? 'base64' : 'utf8');
    if (bytes.length > maxBodyBytes) throw new RequestEntityTooLargeError(bytes.length, maxBodyBytes);
    try {
      body = utf8.decode(bytes);
    } catch {
      throw new ValidationError('InvalidRequestBody', 'body: not valid UTF-8', { field: 'body' });
    }
  }
  return {
    method: event.requestContext.http.method.toUpperCase(),
    path: event.rawPath,
    query,
    headers,
    body,
  };
}

function toResult(response: ApiResponse): APIGatewayProxyStructuredResultV2 {
  return {
    statusCode: response.status,
    headers: { ...response.headers },
    body: response.body,
    isBase64Encoded: false,
  };
}

function describeError(error: unknown): Record<string, unknown> {
  return error instanceof Error
    ? { name: error.name, message: error.message, stack: error.stack }
    : { value: String(error) };
}

/**
 * The service API: one Lambda behind a Function URL. It does not authenticate: in the cloud the Function
 * URL's `AWS_IAM` auth type checks SigV4 before it runs; in the local hub the HTTP server checks the service
 * key before invoking it. Logs every request (method, path, status, ms) at info, and 5xx errors in full.
 *
 * @example
 * const handle = makeHandler({ registry: new MemoryDeviceRegistry(), connections, log });
 * await handle(functionUrlEvent); // { statusCode: 201, headers: { etag: '"..."', ... }, body: '{...}' }
 */
export function makeHandler(deps: ServiceApiDeps) {
  const { c2d } = deps;
  const onDeviceDisabledOrDeleted = async (deviceId: string, reason: 'disabled' | 'deleted') => {
    if (reason === 'deleted' && c2d !== undefined) {
      // Deleting a device settles its queue as purged (feedback where asked). A failure here leaves the
      // messages to expire with feedback: logged, never lost.
      try {
        const purged = await c2d.ledger.purge(deviceId, (c2d.now ?? Date.now)());
        if (purged.purged > 0) deps.log.info('purged the queue of a deleted device', { deviceId, ...purged });
      } catch (error) {
        deps.log.error('could not purge the queue of a deleted device', {
          deviceId,
          ...describeError(error),
        });
      }
    }
    if (reason === 'deleted' && deps.connections.forgetRetained) {
      // Retained messages on its topics would reach a later device registered under the same id.
      await deps.connections.forgetRetained(deviceId).catch((error: unknown) => {
        deps.log.error('could not clear the retained messages of a deleted device', {
          deviceId,
          ...describeError(error),
        });
      });
    }
    if (reason === 'deleted' && deps.twins !== undefined) {
      // A shadow left behind would be inherited by a later device with the same id: logged loudly.
      await deps.twins.forget(deviceId).catch((error: unknown) => {
        deps.log.error('could not delete the twin of a deleted device', {
          deviceId,
          ...describeError(error),
        });
      });
    }
    await deps.connections.disconnect(deviceId);
  };
  const table = new RouteTable([
    ...registryRoutes({
      registry: deps.registry,
      log: deps.log,
      onDeviceDisabledOrDeleted,
      ...(deps.lifecycleEvents ? { lifecycleEvents: deps.lifecycleEvents } : {}),
    }),
    ...(c2d === undefined ? [] : c2dRoutes({ ...c2d, registry: deps.registry, log: deps.log })),
    ...(deps.certificates === undefined ? [] : certificateRoutes(deps.certificates)),
    ...(deps.twins === undefined ? [] : twinRoutes(deps.twins)),
    ...(deps.extraRoutes ?? []),
  ]);
  const onInternalError = (error: unknown): void => deps.log.error('request failed', describeError(error));

  return async (event: APIGatewayProxyEventV2): Promise<APIGatewayProxyStructuredResultV2> => {
    const started = performance.now();
    let response: ApiResponse;
    try {
      response = await dispatch(table, toApiRequest(event, deps.maxBodyBytes), onInternalError);
    } catch (error) {
      response = errorResponse(error);
      if (response.status >= 500) onInternalError(error);
    }
    deps.log.info('request', {
      method: event.requestContext.http.method,
      path: event.rawPath,
      status: response.status,
      ms: Math.round(performance.now() - started),
      requestId: event.requestContext.requestId,
    });
    return toResult(response);
  };
}

function defaultDeps(env: NodeJS.ProcessEnv): ServiceApiDeps {
  const log = powertoolsLog('service-api');
  const { ledger, delivery, settings } = c2dFromEnv(env, log);
  const registryTable = requireEnv(env, 'REGISTRY_TABLE_NAME');
  const registry = new DynamoDbDeviceRegistry({ client: dynamoDocumentClient(), tableName: registryTable });
  // X.509 devices and CAs are provisioned in IoT Core when the stack names the device policy.
  const x509 = x509FromEnv(env, registry, registryTable, log);
  const ingest = new KinesisStreamSink(kinesisClient(), requireEnv(env, 'INGEST_STREAM_NAME'));
  const twinChangeEvents = new IngestTwinChangeEvents({ sink: ingest, log });
  return {
    c2d: { ledger, delivery, settings },
    registry: x509.registry,
    certificates: { certificates: x509.certificates },
    connections: new IotConnections(iotDataClient()),
    twins: new TwinService({
      registry,
      tags: new DynamoDbTagsStore({ client: dynamoDocumentClient(), tableName: registryTable }),
      shadows: new IotShadowStore(iotDataClient()),
      // Tags changes become twin change events on the ingest stream; desired and reported changes get
      // there from the shadow's update/documents topic.
      onTagsChanged: (change) => twinChangeEvents.emit([change]),
      log,
    }),
    lifecycleEvents: new IngestLifecycleEvents({ sink: ingest, log }),
    // Import/export jobs: the routes record them; functions/registry-jobs.ts runs them.
    extraRoutes: registryJobsRoutes({
      store: new DynamoDbJobStore({
        client: dynamoDocumentClient(),
        tableName: requireEnv(env, REGISTRY_JOBS_ENV.jobsTable),
      }),
      allowedBuckets: allowedBucketsFromEnv(env),
    }),
    log,
  };
}

/** The Lambda entry point. */
export const handler = makeHandler(defaultDeps(process.env));
