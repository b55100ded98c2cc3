import type { Server as HttpServer, IncomingMessage } from 'node:http';
import type { AddressInfo, Server as NetServer } from 'node:net';

/** A listening server of the local hub. */
export interface RunningServer {
  /** `{scheme}://{host}:{port}` */
  readonly url: string;
  readonly port: number;
  /** Stops accepting connections, drops idle HTTP keep-alive ones, and resolves once all are gone. */
  close(): Promise<void>;
}

/** Listens on `host:port` (0 = any free port) and resolves with the address actually bound. */
export async function listen(
  server: NetServer | HttpServer,
  host: string,
  port: number,
  scheme = 'http',
): Promise<RunningServer> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const actual = (server.address() as AddressInfo).port;
  return {
    url: `${scheme}://${host}:${actual}`,
    port: actual,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        if ('closeAllConnections' in server) server.closeAllConnections();
      }),
  };
}

/** Reads a request body; undefined when it is larger than `limit` bytes (the caller answers 413). */
export async function readBody(req: IncomingMessage, limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}
