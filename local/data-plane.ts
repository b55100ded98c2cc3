import { createServer, type ServerResponse } from 'node:http';
import { listen, type RunningServer, readBody } from './net.ts';

/** What the data plane does with a publish. */
export interface DataPlaneDeps {
  /** Runs the rules on the message (as IoT Core does for HTTP publishes) and then publishes it. */
  readonly publish: (topic: string, payload: Buffer, qos: 0 | 1) => Promise<void>;
  /** Closes a client's connection; false when it is not connected. */
  readonly disconnect: (clientId: string) => boolean;
  readonly maxMessageBytes: number;
  readonly log: (line: string) => void;
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

/**
 * The IoT data-plane REST API as far as the hub uses it (`POST /topics/{topic}?qos=`,
 * `DELETE /connections/{clientId}`), so
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
          await deps.publish(topic, body, qos);
          return reply(res, 200, {});
        } catch (error) {
          deps.log(`data-plane publish to '${topic}' failed: ${(error as Error).message}`);
          res.setHeader('x-amzn-errortype', 'InternalFailureException');
          return reply(res, 500, { message: 'publish failed' });
        }
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
