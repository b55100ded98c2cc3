import { createServer, type ServerResponse } from 'node:http';
import type { BusMessage } from './bus.ts';
import { listen, type RunningServer, readBody } from './net.ts';
import { SHADOW_ERROR_TYPES, type ShadowRejection, type ShadowResult, type ShadowService } from './shadow.ts';

/** What the data plane does with a publish. */
export interface DataPlaneDeps {
  /** Publishes through the IoT Core bus as the service: rules, subscribers, shadow service. */
  readonly publish: (message: BusMessage) => Promise<void>;
  /** Topics that hold a retained message, for `ListRetainedMessages`. */
  readonly retainedTopics: () => readonly string[];
  /** Closes a client's connection; false when it is not connected. */
  readonly disconnect: (clientId: string) => boolean;
  readonly maxMessageBytes: number;
  readonly log: (line: string) => void;
  /**
   * The Device Shadow service behind `GET`/`POST`/`DELETE /things/{thing}/shadow[?name=]` and
   * `GET /api/things/shadow/ListNamedShadowsForThing/{thing}`. @default shadow operations answer 404
   */
  readonly shadows?: Pick<ShadowService, 'get' | 'update' | 'delete' | 'listNamedShadows'>;
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

/** A shadow outcome as the data plane answers it: 200 with the document, or the error with its type. */
function replyShadow(res: ServerResponse, result: ShadowResult<object>): void {
  if (result.ok) {
    reply(res, 200, result.document);
    return;
  }
  const rejection: ShadowRejection = result.rejection;
  res.setHeader('x-amzn-errortype', SHADOW_ERROR_TYPES[rejection.code]);
  reply(res, rejection.code, { code: rejection.code, message: rejection.message });
}

/**
 * The IoT data-plane REST API as far as the hub uses it (`POST /topics/{topic}?qos=&retain=`,
 * `GET /retainedMessage` (ListRetainedMessages),
 * `DELETE /connections/{clientId}`, the shadow operations when `deps.shadows` is given), so
 * `@aws-sdk/client-iot-data-plane` works against it unchanged. Errors use the data plane's
 * JSON shape (`{ message }` with the exception name in `x-amzn-errortype`).
 */
export async function startDataPlane(
  host: string,
  port: number,
  deps: DataPlaneDeps,
): Promise<RunningServer> {
  const server = createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://local');
      const publish = /^\/topics\/(.+)$/.exec(url.pathname);
      if (req.method === 'POST' && publish?.[1]) {
        const topic = decodeURIComponent(publish[1]);
        const qos = url.searchParams.get('qos') === '1' ? 1 : 0;
        // `retain=true` keeps the message for later subscribers; an empty retained payload clears it.
        const retain = url.searchParams.get('retain') === 'true';
        const body = await readBody(req, deps.maxMessageBytes);
        if (body === undefined) {
          res.setHeader('x-amzn-errortype', 'RequestEntityTooLargeException');
          return reply(res, 413, { message: `payload is larger than ${deps.maxMessageBytes} bytes` });
        }
        if (/[+#]/.test(topic) || topic === '') {
          res.setHeader('x-amzn-errortype', 'InvalidRequestException');
          return reply(res, 400, { message: `'${topic}' is not a topic name one can publish to` });
        }
        try {
          await deps.publish({ topic, payload: body, qos, retain });
          return reply(res, 200, {});
        } catch (error) {
          deps.log(`data-plane publish to '${topic}' failed: ${(error as Error).message}`);
          res.setHeader('x-amzn-errortype', 'InternalFailureException');
          return reply(res, 500, { message: 'publish failed' });
        }
      }
      const shadow = /^\/things\/([^/]+)\/shadow$/.exec(url.pathname);
      if (shadow?.[1] && deps.shadows) {
        const thingName = decodeURIComponent(shadow[1]);
        const shadowName = url.searchParams.get('name') ?? undefined;
        if (req.method === 'GET') return replyShadow(res, await deps.shadows.get(thingName, shadowName));
        if (req.method === 'DELETE')
          return replyShadow(res, await deps.shadows.delete(thingName, shadowName));
        if (req.method === 'POST') {
          const body = await readBody(req, deps.maxMessageBytes);
          if (body === undefined) {
            res.setHeader('x-amzn-errortype', 'RequestEntityTooLargeException');
            return reply(res, 413, { code: 413, message: 'The payload exceeds the maximum size allowed' });
          }
          return replyShadow(res, await deps.shadows.update(thingName, body, shadowName));
        }
      }
      const named = /^\/api\/things\/shadow\/ListNamedShadowsForThing\/([^/]+)$/.exec(url.pathname);
      if (req.method === 'GET' && named?.[1] && deps.shadows) {
        const pageSize = url.searchParams.get('pageSize');
        const nextToken = url.searchParams.get('nextToken');
        const listed = await deps.shadows.listNamedShadows(decodeURIComponent(named[1]), {
          ...(pageSize !== null ? { pageSize: Number(pageSize) } : {}),
          ...(nextToken !== null ? { nextToken } : {}),
        });
        return replyShadow(res, listed);
      }
      if (req.method === 'GET' && url.pathname === '/retainedMessage') {
        // ListRetainedMessages: one page holds them all locally (the hub keeps at most its limit).
        const retainedTopics = deps.retainedTopics().map((topic) => ({ topic }));
        return reply(res, 200, { retainedTopics });
      }
      const connection = /^\/connections\/([^/]+)$/.exec(url.pathname);
      if (req.method === 'DELETE' && connection?.[1]) {
        const clientId = decodeURIComponent(connection[1]);
        if (deps.disconnect(clientId)) return reply(res, 200, {});
        res.setHeader('x-amzn-errortype', 'ResourceNotFoundException');
        return reply(res, 404, { message: `client '${clientId}' is not connected` });
      }
      res.setHeader('x-amzn-errortype', 'ResourceNotFoundException');
      reply(res, 404, { message: `no data-plane operation ${req.method} ${url.pathname} in the local hub` });
    })().catch((error: unknown) => {
      deps.log(`data-plane error: ${String(error)}`);
      if (!res.headersSent) reply(res, 500, { message: 'internal error' });
    });
  });
  return listen(server, host, port);
}
