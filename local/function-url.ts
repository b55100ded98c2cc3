import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { listen, type RunningServer, readBody } from './net.ts';

/** What the Function URL front needs. */
export interface FunctionUrlDeps {
  /** Invokes the URL's function with a payload-format-2.0 event. */
  readonly invoke: (event: APIGatewayProxyEventV2) => Promise<unknown>;
  /** Returns why a caller is refused (401), or undefined to let it through. Stands in for AWS_IAM auth. */
  readonly refuse: (authorization: string | undefined) => string | undefined;
  readonly log: (line: string) => void;
  /** Largest request body; Function URLs take up to 6 MB. */
  readonly maxBodyBytes: number;
}

function json(status: number, body: unknown): APIGatewayProxyStructuredResultV2 {
  return {
    statusCode: status,
    headers: { 'content-type': 'application/json; charset=utf-8' },
    body: JSON.stringify(body),
  };
}

/**
 * A Lambda Function URL on this machine: turns each HTTP request into the payload-format-2.0
 * event Lambda would send, invokes the same handler, and writes its result back. Where the cloud
 * checks IAM (SigV4), this checks the local service key.
 */
export async function startFunctionUrl(
  host: string,
  port: number,
  deps: FunctionUrlDeps,
): Promise<RunningServer> {
  const server = createServer((req, res) => {
    void (async () => {
      const started = Date.now();
      const url = new URL(req.url ?? '/', 'http://local');
      let result: APIGatewayProxyStructuredResultV2;
      const refusal = deps.refuse(req.headers.authorization);
      if (refusal) {
        result = json(401, { code: 'Unauthorized', message: refusal, status: 401 });
      } else {
        const body = await readBody(req, deps.maxBodyBytes);
        if (body === undefined) {
          result = json(413, {
            code: 'RequestEntityTooLarge',
            message: `request body is larger than ${deps.maxBodyBytes} bytes`,
            status: 413,
          });
        } else {
          const headers: Record<string, string> = {};
          for (const [k, v] of Object.entries(req.headers)) if (v !== undefined) headers[k] = String(v);
          const now = new Date();
          const event: APIGatewayProxyEventV2 = {
            version: '2.0',
            routeKey: '$default',
            rawPath: url.pathname,
            rawQueryString: url.search.slice(1),
            headers,
            ...(url.search ? { queryStringParameters: Object.fromEntries(url.searchParams) } : {}),
            requestContext: {
              accountId: '000000000000',
              apiId: 'local',
              domainName: req.headers.host ?? host,
              domainPrefix: 'local',
              http: {
                method: req.method ?? 'GET',
                path: url.pathname,
                protocol: `HTTP/${req.httpVersion}`,
                sourceIp: req.socket.remoteAddress ?? '127.0.0.1',
                userAgent: req.headers['user-agent'] ?? '',
              },
              requestId: randomUUID(),
              routeKey: '$default',
              stage: '$default',
              time: now.toISOString(),
              timeEpoch: now.getTime(),
            },
            ...(body.length > 0 ? { body: body.toString('base64') } : {}),
            isBase64Encoded: body.length > 0,
          };
          try {
            const out = await deps.invoke(event);
            result =
              typeof out === 'object' && out !== null && 'statusCode' in out
                ? (out as APIGatewayProxyStructuredResultV2)
                : json(200, out);
          } catch (error) {
            deps.log(`function URL: handler failed: ${(error as Error).message}`);
            result = json(502, { code: 'BadGateway', message: 'the function failed', status: 502 });
          }
        }
      }
      const status = result.statusCode ?? 200;
      const bodyBytes =
        result.body === undefined
          ? Buffer.alloc(0)
          : Buffer.from(result.body, result.isBase64Encoded ? 'base64' : 'utf8');
      res.writeHead(status, { ...(result.headers as Record<string, string> | undefined) });
      res.end(bodyBytes);
      if (status >= 400)
        deps.log(`service api ${req.method} ${url.pathname} → ${status} (${Date.now() - started} ms)`);
    })().catch((error: unknown) => {
      deps.log(`function URL error: ${String(error)}`);
      if (!res.headersSent) res.writeHead(500).end();
    });
  });
  return listen(server, host, port);
}
