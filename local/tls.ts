import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { generate } from 'selfsigned';

/** The local hub's server certificate. */
export interface ServerCertificate {
  readonly key: string;
  readonly cert: string;
  /** Path of the certificate, for clients to trust (`mosquitto_pub --cafile`, `ca:` in mqtt.js). */
  readonly certPath: string;
}

/**
 * Loads the hub's self-signed TLS certificate from `dataDir/tls`, generating it (for localhost
 * and 127.0.0.1, valid ten years) on first start.
 */
export async function serverCertificate(dataDir: string): Promise<ServerCertificate> {
  const dir = path.join(dataDir, 'tls');
  const keyPath = path.join(dir, 'server.key');
  const certPath = path.join(dir, 'server.crt');
  if (!existsSync(keyPath) || !existsSync(certPath)) {
    mkdirSync(dir, { recursive: true });
    const notAfterDate = new Date(Date.now() + 10 * 365 * 24 * 3600 * 1000);
    const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
      keySize: 2048,
      algorithm: 'sha256',
      notAfterDate,
      extensions: [
        { name: 'basicConstraints', cA: true },
        {
          name: 'subjectAltName',
          altNames: [
            { type: 2, value: 'localhost' },
            { type: 7, ip: '127.0.0.1' },
          ],
        },
      ],
    });
    writeFileSync(keyPath, pems.private, { mode: 0o600 });
    writeFileSync(certPath, pems.cert);
  }
  return { key: readFileSync(keyPath, 'utf8'), cert: readFileSync(certPath, 'utf8'), certPath };
}
