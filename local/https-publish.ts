import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { parsePropertyBag } from '../functions/core/d2c/property-bag.ts';
import { parseD2CTopic } from '../functions/core/d2c/topic.ts';
import { HubError } from '../functions/core/errors.ts';
import type { AuthAccepted, AuthDeps } from '../functions/core/identity/authenticate.ts';
import { authenticateHttpDevice } from '../functions/core/identity/http-auth.ts';
import { publishRefusal } from '../functions/core/identity/topics.ts';
import { PublishRefusedError } from './bus.ts';
import type { Mqtt5Properties } from './iot-sql.ts';
import { listen, type RunningServer } from './net.ts';

/**
 * D2C over HTTPS, the local stand-in for AWS IoT Core's HTTPS publish
 * (`POST https://{iot endpoint}/topics/{url-encoded topic}?qos=1`, on port 443 with the hub's custom
 * authorizer): for devices that cannot hold an MQTT connection. The same URL shape, on a loopback
 * port (plain HTTP, like the hub's other local endpoints):
 *
 * 1. the device authenticates with its SAS token in `Authorization` (IoT Hub's HTTPS form), through
 *    `authenticateHttpDevice`, the same decision the cloud's custom authorizer makes: 401 otherwise;
 * 2. the topic must be one the device may publish to, as the broker's `authorizePublish` and the
 *    cloud policy decide (`publishRefusal`): 403 otherwise; a topic that is not a topic name, or a D2C
 *    topic whose property bag does not parse, is 400;
 * 3. a body over the size limit is 413;
 * 4. the publish goes through the IoT Core bus exactly as an MQTT publish does (client id = the device
 *    id, principal `sas:{id}`): the rules make it durable (on the ingest stream) before the 200, and it
 *    reaches MQTT subscribers (not for Basic Ingest topics), as IoT Core forwards HTTPS publishes.
 *
 * Answers are IoT Core's: 200 `{"message":"OK","traceId":...}`, errors `{"message":...,"traceId":...}`
 * with the reason in the message. MQTT 5 properties come as the data-plane Publish API sends them:
 * `contentType` and `responseTopic` query parameters, `x-amz-mqtt5-user-properties` (base64 of a JSON
 * array of `{name: value}` objects), `x-amz-mqtt5-correlation-data` (base64) and
 * `x-amz-mqtt5-payload-format-indicator` (`UNSPECIFIED_BYTES` | `UTF8_DATA`) headers.
 */

/** One authorized HTTPS publish, for the hub to run. */
export interface HttpsPublishInput {
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 0 | 1;
  readonly identity: AuthAccepted;
  readonly mqtt5?: Mqtt5Properties;
}

/** What the endpoint needs. */
export interface HttpsPublishDeps {
  /** Registry, host name and clock for `authenticateHttpDevice`. */
  readonly auth: AuthDeps;
  /** Largest body in bytes (the hub's `maxMessageBytes`). */
  readonly maxMessageBytes: number;
  /** The ingest rule's name when Basic Ingest is on (see `publishRefusal`). */
  readonly basicIngestRule?: string | undefined;
  /**
   * Publishes through the IoT Core bus (`local/bus.ts`): resolves once the rules made it durable (on the
   * ingest stream or in the dead-letter table) and subscribers have it. A {@link PublishRefusedError}
   * answers 4xx; any other rejection 503, and the device retries.
   */
  readonly publish: (input: HttpsPublishInput) => Promise<void>;
  readonly log: (line: string) => void;
}

/** A request the endpoint refuses: the status and the message naming why. */
class Refusal extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** The HTTP status of each kind of bus refusal. */
const REFUSAL_STATUS: Readonly<Record<PublishRefusedError['kind'], number>> = {
  topic: 400,
  policy: 403,
  size: 413,
  retain: 400,
};

/** IoT Core's topic limits (a Basic Ingest prefix not counted). */
const MAX_TOPIC_LEVELS = 8;
const MAX_TOPIC_BYTES = 256;
/** Discarded bytes of an oversize body read before answering 413 (so the client sees the answer). */
const DRAIN_LIMIT = 16 * 1024 * 1024;

function reply(res: ServerResponse, status: number, message: string, traceId: string): void {
  if (res.headersSent) return;
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ message, traceId }));
}

/** Reads and discards what is left of a request body, up to {@link DRAIN_LIMIT}; false when it was more. */
async function drain(req: IncomingMessage): Promise<boolean> {
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > DRAIN_LIMIT) return false;
  }
  return true;
}

/** Reads the body up to `limit` bytes; past it, discards up to {@link DRAIN_LIMIT} and refuses with 413. */
async function readLimited(req: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > DRAIN_LIMIT) break;
    if (size <= limit) chunks.push(chunk as Buffer);
  }
  if (size > limit) {
    throw new Refusal(413, `the body is larger than ${limit} bytes, the largest message the hub takes`);
  }
  return Buffer.concat(chunks);
}

/** The topic from `/topics/{url-encoded topic}`, checked to be a topic name one can publish to. */
function topicOf(encoded: string): string {
  let topic: string;
  try {
    topic = decodeURIComponent(encoded);
  } catch {
    throw new Refusal(400, `the topic in the path is not valid URL encoding: '${encoded.slice(0, 200)}'`);
  }
  if (topic === '') throw new Refusal(400, 'the topic is empty');
  if (/[+#]/.test(topic) || topic.includes(String.fromCharCode(0))) {
    throw new Refusal(400, `'${topic.slice(0, 200)}' is not a topic name: it holds a wildcard (+, #) or NUL`);
  }
  return topic;
}

/**
 * IoT Core's limits on a topic (without a Basic Ingest prefix): 256 bytes, 8 levels. A D2C topic's
 * property bag must parse too (in the cloud IoT Core takes it and the router dead-letters the message).
 */
function checkTopic(topic: string, deviceId: string): void {
  const inner = topic.replace(/^\$aws\/rules\/[^/]+\//, '');
  if (Buffer.byteLength(inner) > MAX_TOPIC_BYTES) {
    throw new Refusal(400, `topic '${topic.slice(0, 100)}...' is longer than ${MAX_TOPIC_BYTES} bytes`);
  }
  if (inner.split('/').length > MAX_TOPIC_LEVELS) {
    throw new Refusal(400, `topic '${topic}' has more than ${MAX_TOPIC_LEVELS} levels`);
  }
  if (!inner.startsWith(`devices/${deviceId}/messages/events`)) return;
  try {
    parsePropertyBag(parseD2CTopic(inner).propertyBag);
  } catch (error) {
    if (error instanceof HubError) throw new Refusal(400, `topic '${topic}': ${error.message}`);
    throw error;
  }
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** The MQTT 5 properties of the data-plane Publish API's query parameters and headers. */
function mqtt5Of(req: IncomingMessage, url: URL): Mqtt5Properties | undefined {
  const out: {
    contentType?: string;
    responseTopic?: string;
    correlationData?: Buffer;
    payloadFormatIndicator?: 0 | 1;
    userProperties?: [string, string][];
  } = {};
  const contentType = url.searchParams.get('contentType');
  if (contentType !== null) out.contentType = contentType;
  const responseTopic = url.searchParams.get('responseTopic');
  if (responseTopic !== null) out.responseTopic = responseTopic;
  const correlation = header(req, 'x-amz-mqtt5-correlation-data');
  if (correlation !== undefined) {
    if (!BASE64.test(correlation)) throw new Refusal(400, 'x-amz-mqtt5-correlation-data is not base64');
    out.correlationData = Buffer.from(correlation, 'base64');
  }
  const format = header(req, 'x-amz-mqtt5-payload-format-indicator');
  if (format !== undefined) {
    if (format !== 'UTF8_DATA' && format !== 'UNSPECIFIED_BYTES') {
      throw new Refusal(400, 'x-amz-mqtt5-payload-format-indicator must be UNSPECIFIED_BYTES or UTF8_DATA');
    }
    out.payloadFormatIndicator = format === 'UTF8_DATA' ? 1 : 0;
  }
  const user = header(req, 'x-amz-mqtt5-user-properties');
  if (user !== undefined) {
    const bad = new Refusal(
      400,
      'x-amz-mqtt5-user-properties must be base64 of a JSON array of {"name": "value"} objects',
    );
    let list: unknown;
    try {
      list = BASE64.test(user) ? JSON.parse(Buffer.from(user, 'base64').toString('utf8')) : undefined;
    } catch {
      throw bad;
    }
    if (!Array.isArray(list)) throw bad;
    out.userProperties = [];
    for (const item of list) {
      if (item === null || typeof item !== 'object' || Array.isArray(item)) throw bad;
      for (const [name, value] of Object.entries(item as Record<string, unknown>)) {
        if (typeof value !== 'string') throw bad;
        out.userProperties.push([name, value]);
      }
    }
  }
  return Object.keys(out).length === 0 ? undefined : out;
}

/**
 * Starts the endpoint on `host:port` (0 = any free port). Publishes of one device are ingested one at
 * a time in the order they arrived, so concurrent requests keep their order on the endpoints.
 */
export async function startHttpsPublish(
  host: string,
  port: number,
  deps: HttpsPublishDeps,
): Promise<RunningServer> {
  const chains = new Map<string, Promise<void>>();
  const inOrder = (deviceId: string, run: () => Promise<void>): Promise<void> => {
    const next = (chains.get(deviceId) ?? Promise.resolve()).then(run);
    const tail = next.catch(() => undefined);
    chains.set(deviceId, tail);
    void tail.then(() => {
      if (chains.get(deviceId) === tail) chains.delete(deviceId);
    });
    return next;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse, traceId: string): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://local');
    const match = /^\/topics\/(.+)$/.exec(url.pathname);
    if (!match?.[1]) {
      throw new Refusal(
        404,
        `no such resource '${url.pathname}': publish with POST /topics/{url-encoded topic}`,
      );
    }
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      throw new Refusal(405, `method ${req.method} is not allowed: publish with POST /topics/{topic}`);
    }

    let decision: Awaited<ReturnType<typeof authenticateHttpDevice>>;
    try {
      decision = await authenticateHttpDevice({ authorization: header(req, 'authorization') }, deps.auth);
    } catch (error) {
      deps.log(`https publish: registry unavailable: ${String(error)}`);
      throw new Refusal(503, 'the device registry is unavailable; retry later');
    }
    if (!decision.ok) {
      deps.log(`https publish refused (401): ${decision.reason}: ${decision.message}`);
      throw new Refusal(401, `${decision.reason}: ${decision.message}`);
    }
    const { deviceId } = decision;

    // The path's raw encoded topic, not url.pathname's normalization.
    const rawPath = (req.url ?? '').split('?')[0] ?? '';
    const topic = topicOf(rawPath.replace(/^\/topics\//, ''));
    const denied = publishRefusal(deviceId, topic, { basicIngestRule: deps.basicIngestRule });
    if (denied) {
      deps.log(`https publish refused (403): ${denied}`);
      throw new Refusal(403, denied);
    }
    const qosParam = url.searchParams.get('qos');
    if (qosParam !== null && qosParam !== '0' && qosParam !== '1') {
      throw new Refusal(400, `qos must be 0 or 1, not '${qosParam.slice(0, 20)}'`);
    }
    const qos: 0 | 1 = qosParam === '1' ? 1 : 0;
    checkTopic(topic, deviceId);
    const mqtt5 = mqtt5Of(req, url);
    const payload = await readLimited(req, deps.maxMessageBytes);

    const input: HttpsPublishInput = { topic, payload, qos, identity: decision, ...(mqtt5 ? { mqtt5 } : {}) };
    try {
      await inOrder(deviceId, () => deps.publish(input));
    } catch (error) {
      if (error instanceof PublishRefusedError) {
        deps.log(`https publish refused: ${error.message}`);
        throw new Refusal(REFUSAL_STATUS[error.kind], error.message);
      }
      deps.log(`https publish from '${deviceId}' to '${topic}' not accepted (503): ${String(error)}`);
      throw new Refusal(503, 'the message could not be made durable; retry it');
    }
    reply(res, 200, 'OK', traceId);
  };

  const server = createServer((req, res) => {
    const traceId = randomUUID();
    handle(req, res, traceId)
      .catch(async (error: unknown) => {
        if (!(error instanceof Refusal)) deps.log(`https publish error: ${String(error)}`);
        const refusal = error instanceof Refusal ? error : new Refusal(500, 'internal error');
        // Let the client finish sending its body (bounded) so that it reads the answer, not a reset.
        if (!req.complete && !(await drain(req).catch(() => false))) res.setHeader('connection', 'close');
        reply(res, refusal.status, refusal.message, traceId);
      })
      .catch((error: unknown) => deps.log(`https publish: answering failed: ${String(error)}`));
  });
  return listen(server, host, port);
}
