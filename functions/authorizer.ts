import { z } from 'zod';
import { dynamoDocumentClient } from './adapters/aws-clients.ts';
import { powertoolsLog } from './adapters/log.ts';
import { DynamoDbDeviceRegistry } from './adapters/registry-dynamodb.ts';
import { requireEnv } from './core/env.ts';
import { type AuthDecision, authenticateDevice } from './core/identity/authenticate.ts';
import { authenticateHttpDevice } from './core/identity/http-auth.ts';
import { devicePolicyDocuments, type PolicyTarget } from './core/identity/policy.ts';
import { principalIdFor } from './core/identity/principal-id.ts';
import type { DeviceRegistry } from './core/identity/registry.ts';
import { BASIC_INGEST_RULE_ENV } from './core/identity/topics.ts';
import type { Log } from './core/ports.ts';

/** Seconds between IoT Core's re-invocations of the authorizer on a live connection: disabled devices drop within this. */
export const REFRESH_AFTER_SECONDS = 300;
/** Shortest connection lifetime IoT Core accepts from an authorizer. */
export const DISCONNECT_AFTER_MIN_SECONDS = 300;
/** Longest connection lifetime IoT Core accepts from an authorizer (24 h). */
export const DISCONNECT_AFTER_MAX_SECONDS = 86_400;

/** What the custom authorizer needs. */
export interface AuthorizerDeps {
  /** Device lookups (`find` only). */
  readonly registry: Pick<DeviceRegistry, 'find'>;
  /** Host name device tokens are scoped to (`HUB_HOSTNAME`, the IoT Core endpoint). */
  readonly hostName: string;
  /** The current time. @default () => new Date() */
  readonly now?: () => Date;
  /** Where decisions are logged (never keys or tokens). */
  readonly log: Log;
  /**
   * Region the policy ARNs name (`AWS_REGION`). @default the region of the invoked function's ARN
   */
  readonly region?: string;
  /**
   * Partition, region and account of the policy ARNs, when known up front (tests, tools).
   * @default taken from the invoked function's ARN (a custom authorizer runs in the hub's account and region)
   */
  readonly target?: PolicyTarget;
  /**
   * The ingest rule's name when Basic Ingest is on (`BASIC_INGEST_RULE_NAME`): the policy then lets the
   * device publish its telemetry to `$aws/rules/{name}/devices/{id}/messages/events[/...]`.
   * @default no Basic Ingest permission
   */
  readonly basicIngestRule?: string | undefined;
}

/** The part of the Lambda context the authorizer reads. */
export interface AuthorizerContext {
  /** `arn:{partition}:lambda:{region}:{account}:function:{name}[:{qualifier}]`. */
  readonly invokedFunctionArn: string;
}

/** A successful authorizer answer, in IoT Core's custom authorizer response shape. */
export interface AuthorizerAllow {
  readonly isAuthenticated: true;
  /** `[a-zA-Z0-9]{1,128}`: see {@link principalIdFor}. */
  readonly principalId: string;
  /** Seconds until the SAS token expires, bounded to IoT Core's 300..86400. */
  readonly disconnectAfterInSeconds: number;
  /** {@link REFRESH_AFTER_SECONDS}. */
  readonly refreshAfterInSeconds: number;
  /** Policy documents as JSON strings (see `devicePolicyDocuments`). */
  readonly policyDocuments: string[];
}

/** A refusal: IoT Core closes the connection. */
export interface AuthorizerDeny {
  readonly isAuthenticated: false;
}

/** The authorizer's answer. */
export type AuthorizerResponse = AuthorizerAllow | AuthorizerDeny;

/**
 * The custom authorizer event IoT Core sends (fields beyond these are ignored). MQTT user name and client
 * id arrive as sent; the password arrives base64-encoded. An HTTPS publish brings `protocolData.http`
 * (its request headers and query string) and no MQTT data; `token` is the value of the authorizer's token
 * key (a header or query parameter) when the authorizer has one configured.
 */
export const authorizerEventSchema = z.object({
  token: z.string().optional(),
  signatureVerified: z.boolean().optional(),
  protocols: z.array(z.string()).optional(),
  protocolData: z
    .object({
      mqtt: z
        .object({
          username: z.string().optional(),
          password: z.string().optional(),
          clientId: z.string().optional(),
        })
        .optional(),
      http: z
        .object({
          headers: z.record(z.string(), z.unknown()).optional(),
          queryString: z.string().optional(),
        })
        .optional(),
      tls: z.object({ serverName: z.string().optional() }).optional(),
    })
    .optional(),
  connectionMetadata: z.object({ id: z.string().optional() }).optional(),
});

/** See `functions/core/identity/principal-id.ts`; re-exported for callers of the authorizer. */
export { principalIdFor };

/** Seconds until `expiresAt`, bounded to what IoT Core accepts; the 24 h maximum when there is no expiry. */
export function disconnectAfterSeconds(expiresAt: Date | undefined, now: Date): number {
  if (expiresAt === undefined) return DISCONNECT_AFTER_MAX_SECONDS;
  const seconds = Math.floor((expiresAt.getTime() - now.getTime()) / 1000);
  return Math.min(DISCONNECT_AFTER_MAX_SECONDS, Math.max(DISCONNECT_AFTER_MIN_SECONDS, seconds));
}

/** Partition, region and account from a Lambda function ARN; `undefined` when it is not one. */
export function targetFromFunctionArn(arn: string, region?: string): PolicyTarget | undefined {
  const match = /^arn:([^:]+):lambda:([^:]+):(\d{12}):function:/.exec(arn);
  if (!match) return undefined;
  return { partition: match[1]!, region: region ?? match[2]!, account: match[3]! };
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Decodes the base64 MQTT password; `undefined` when absent, `null` when it is not base64. */
function decodePassword(password: string | undefined): Buffer | undefined | null {
  if (password === undefined || password === '') return undefined;
  if (!BASE64.test(password) || password.length % 4 === 1) return null;
  return Buffer.from(password, 'base64');
}

const DENY: AuthorizerDeny = { isAuthenticated: false };

/** A header's value by name, whatever case the client or IoT Core gave it. */
function header(headers: Record<string, unknown> | undefined, name: string): string | undefined {
  if (headers === undefined) return undefined;
  const wanted = name.toLowerCase();
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() !== wanted) continue;
    if (typeof value === 'string') return value;
    if (Array.isArray(value) && typeof value[0] === 'string') return value[0];
  }
  return undefined;
}

/**
 * The IoT Core custom authorizer, for IoT Hub-style SAS devices:
 * - over MQTT, with IoT Hub's user name (`{hostName}/{deviceId}/?api-version=...`) and the SAS token as
 *   password; the client id must be the device id;
 * - over HTTPS publish (`POST /topics/{topic}` on port 443 with `x-amz-customauthorizer-name`),
 *   with the SAS token in the `Authorization` header, as IoT Hub's HTTPS devices send it (or in the
 *   authorizer's token key, which IoT Core passes as `token`); the device is the one the token's `sr`
 *   names (`authenticateHttpDevice`).
 *
 * The decision is {@link authenticateDevice}, the same one the local broker and the local HTTPS publish
 * endpoint make; an accepted device gets a policy that confines it to its own client id and topics
 * (`devicePolicyDocuments`), plus its Basic Ingest topic when that is on.
 *
 * The connection lasts until the token expires (`disconnectAfterInSeconds`, at least 300 s, so a token
 * about to expire still lives up to 5 minutes), and IoT Core re-runs the authorizer every
 * {@link REFRESH_AFTER_SECONDS}: a device disabled or deleted in the registry is refused at the next refresh
 * (the service API also calls DeleteConnection on disable, so that is the fallback). HTTPS publishes are
 * authorized per request (the authorizer has HTTP caching off). Refusals, including a bad event or a
 * failed registry read, answer `{ isAuthenticated: false }` and log why.
 */
export function makeHandler(deps: AuthorizerDeps) {
  const now = deps.now ?? (() => new Date());
  return async (event: unknown, context?: AuthorizerContext): Promise<AuthorizerResponse> => {
    const parsed = authorizerEventSchema.safeParse(event);
    if (!parsed.success) {
      deps.log.warn('connection refused', {
        reason: 'malformed',
        message: 'event is not an authorizer event',
      });
      return DENY;
    }
    const connectionId = parsed.data.connectionMetadata?.id;
    const mqtt = parsed.data.protocolData?.mqtt;
    const http = parsed.data.protocolData?.http;
    const refused = (
      reason: string,
      message: string,
      extra: Record<string, unknown> = {},
    ): AuthorizerDeny => {
      deps.log.warn('connection refused', { reason, message, connectionId, ...extra });
      return DENY;
    };
    let authenticate: () => Promise<AuthDecision>;
    let who: Record<string, unknown>;
    if (mqtt !== undefined) {
      if (mqtt.clientId === undefined || mqtt.clientId === '')
        return refused('malformed', 'no MQTT client id');
      const clientId = mqtt.clientId;
      const password = decodePassword(mqtt.password);
      if (password === null) return refused('malformed', 'MQTT password is not base64', { clientId });
      who = { clientId, protocol: 'mqtt' };
      authenticate = () =>
        authenticateDevice(
          { clientId, username: mqtt.username, password },
          { registry: deps.registry, hostName: deps.hostName, now },
        );
    } else if (http !== undefined) {
      const authorization = header(http.headers, 'authorization') ?? parsed.data.token;
      who = { protocol: 'http' };
      authenticate = () =>
        authenticateHttpDevice({ authorization }, { registry: deps.registry, hostName: deps.hostName, now });
    } else {
      return refused('malformed', 'neither MQTT nor HTTP protocol data in the event');
    }

    const target =
      deps.target ?? (context ? targetFromFunctionArn(context.invokedFunctionArn, deps.region) : undefined);
    if (target === undefined) {
      deps.log.error('authorizer misconfigured', {
        message: 'no policy target: neither deps.target nor a Lambda function ARN in the context',
        connectionId,
      });
      return DENY;
    }

    let decision: AuthDecision;
    try {
      decision = await authenticate();
    } catch (error) {
      deps.log.error('connection refused: registry unavailable', {
        ...who,
        connectionId,
        error: error instanceof Error ? `${error.name}: ${error.message}` : String(error),
      });
      return DENY;
    }
    if (!decision.ok) {
      return refused(decision.reason, decision.message, { ...who, connackCode: decision.connackCode });
    }

    let policyDocuments: string[];
    try {
      policyDocuments = devicePolicyDocuments({
        deviceId: decision.deviceId,
        ...target,
        basicIngestRule: deps.basicIngestRule,
      });
    } catch (error) {
      deps.log.error('connection refused: no policy for device', {
        ...who,
        connectionId,
        error: error instanceof Error ? error.message : String(error),
      });
      return DENY;
    }
    const response: AuthorizerAllow = {
      isAuthenticated: true,
      principalId: principalIdFor(decision.deviceId),
      disconnectAfterInSeconds: disconnectAfterSeconds(decision.expiresAt, now()),
      refreshAfterInSeconds: REFRESH_AFTER_SECONDS,
      policyDocuments,
    };
    deps.log.info('device authenticated', {
      deviceId: decision.deviceId,
      protocol: who.protocol,
      principal: decision.principal,
      principalId: response.principalId,
      connectionId,
      expiresAt: decision.expiresAt?.toISOString(),
      disconnectAfterInSeconds: response.disconnectAfterInSeconds,
    });
    return response;
  };
}

function defaultDeps(env: NodeJS.ProcessEnv): AuthorizerDeps {
  return {
    registry: new DynamoDbDeviceRegistry({
      client: dynamoDocumentClient(),
      tableName: requireEnv(env, 'REGISTRY_TABLE_NAME'),
    }),
    hostName: requireEnv(env, 'HUB_HOSTNAME'),
    log: powertoolsLog('authorizer'),
    ...(env.AWS_REGION ? { region: env.AWS_REGION } : {}),
    ...(env[BASIC_INGEST_RULE_ENV] ? { basicIngestRule: env[BASIC_INGEST_RULE_ENV] } : {}),
  };
}

/**
 * The Lambda entry point (environment: `REGISTRY_TABLE_NAME`, `HUB_HOSTNAME`, `AWS_REGION`, and
 * `BASIC_INGEST_RULE_NAME` when Basic Ingest is on).
 */
export const handler = makeHandler(defaultDeps(process.env));
