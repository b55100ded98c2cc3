import { createHash, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import * as path from 'node:path';
import { z } from 'zod';
import { listen, type RunningServer, readBody } from './net.ts';

/** Options of {@link startIotControlPlane}. */
export interface IotControlPlaneOptions {
  readonly host: string;
  /** 0 picks a free port. */
  readonly port: number;
  /** State lives in `dataDir/iot-control-plane.json`, so things and certificates survive a restart. */
  readonly dataDir: string;
  /** Region and account in the ARNs it hands out. */
  readonly region: string;
  readonly account: string;
  /** Names of the IoT policies that exist (the stack's, from the template); attaching another is a 404. */
  readonly policies: readonly string[];
  readonly log: (line: string) => void;
}

/** A certificate as the stand-in keeps it. */
export interface StoredCertificate {
  readonly certificateId: string;
  readonly certificateArn: string;
  status: string;
  readonly certificatePem: string;
  readonly caCertificateId?: string;
  readonly creationDate: number;
  lastModifiedDate: number;
  /** Policy names attached to it. */
  policies: string[];
}

/** A CA certificate as the stand-in keeps it. */
export interface StoredCaCertificate {
  readonly certificateId: string;
  readonly certificateArn: string;
  status: string;
  autoRegistrationStatus: string;
  readonly certificatePem: string;
  readonly certificateMode: string;
  readonly creationDate: number;
  lastModifiedDate: number;
}

const StateSchema = z.object({
  things: z.record(z.string(), z.object({ thingId: z.string(), principals: z.array(z.string()) })),
  certificates: z.record(
    z.string(),
    z.custom<StoredCertificate>((v) => typeof v === 'object' && v !== null),
  ),
  caCertificates: z.record(
    z.string(),
    z.custom<StoredCaCertificate>((v) => typeof v === 'object' && v !== null),
  ),
});

/** Everything the stand-in knows. */
export type IotControlPlaneState = z.infer<typeof StateSchema>;

/** A running stand-in. */
export interface RunningIotControlPlane extends RunningServer {
  /** The current state (for tests and tools; do not mutate). */
  state(): IotControlPlaneState;
}

class IotError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
    readonly extra: Record<string, string> = {},
  ) {
    super(message);
  }
}

const notFound = (what: string) => new IotError(404, 'ResourceNotFoundException', `${what} does not exist`);
const epoch = () => Math.floor(Date.now() / 1000);
const idOf = (pem: string) => createHash('sha256').update(new X509Certificate(pem).raw).digest('hex');

function parsePem(pem: unknown, field: string): string {
  if (typeof pem !== 'string') throw new IotError(400, 'InvalidRequestException', `${field} is required`);
  try {
    new X509Certificate(pem);
  } catch (error) {
    throw new IotError(400, 'CertificateValidationException', `${field}: ${(error as Error).message}`);
  }
  return pem;
}

/**
 * The IoT Core control plane, as far as X.509 provisioning uses it, over IoT's REST API so that
 * `@aws-sdk/client-iot` works against it unchanged (`AWS_ENDPOINT_URL_IOT`): things (`CreateThing`,
 * `DescribeThing`, `DeleteThing`, `ListThings`), their principals (`AttachThingPrincipal`,
 * `DetachThingPrincipal`, `ListThingPrincipals`), certificates (`RegisterCertificateWithoutCA`,
 * `DescribeCertificate`, `UpdateCertificate`, `DeleteCertificate`, `ListCertificates`), policy attachments
 * (`AttachPolicy`, `DetachPolicy`, `ListAttachedPolicies`) and CA certificates (`RegisterCACertificate`,
 * `DescribeCACertificate`, `UpdateCACertificate`, `DeleteCACertificate`, `ListCertificatesByCA`).
 *
 * It keeps IoT Core's rules that provisioning must respect: an `ACTIVE` certificate, or one still attached
 * to a thing or policy, cannot be deleted (`CertificateStateException` 406 / `DeleteConflictException` 409);
 * a CA must be `INACTIVE` to be deleted; attaching needs the thing, the certificate and the policy to exist.
 * Requests are not authenticated (the local hub's functions are the only callers). The local broker does
 * not consult it: locally X.509 devices are checked against the registry by thumbprint or CA chain.
 */
export async function startIotControlPlane(options: IotControlPlaneOptions): Promise<RunningIotControlPlane> {
  const file = path.join(options.dataDir, 'iot-control-plane.json');
  mkdirSync(options.dataDir, { recursive: true });
  const state: IotControlPlaneState = existsSync(file)
    ? StateSchema.parse(JSON.parse(readFileSync(file, 'utf8')))
    : { things: {}, certificates: {}, caCertificates: {} };
  const save = () => {
    writeFileSync(`${file}.tmp`, JSON.stringify(state, null, 2));
    renameSync(`${file}.tmp`, file);
  };
  const arn = (resource: string) => `arn:aws:iot:${options.region}:${options.account}:${resource}`;
  const policies = new Set(options.policies);

  const thing = (name: string) => state.things[name] ?? throwError(notFound(`thing '${name}'`));
  const certificate = (id: string) => state.certificates[id] ?? throwError(notFound(`certificate '${id}'`));
  const certificateByArn = (certificateArn: string) => {
    const id = /:cert\/([0-9a-f]{64})$/.exec(certificateArn)?.[1];
    return certificate(id ?? certificateArn);
  };
  const ca = (id: string) => state.caCertificates[id] ?? throwError(notFound(`CA certificate '${id}'`));
  const describe = (c: StoredCertificate) => ({
    certificateArn: c.certificateArn,
    certificateId: c.certificateId,
    ...(c.caCertificateId ? { caCertificateId: c.caCertificateId } : {}),
    status: c.status,
    certificatePem: c.certificatePem,
    ownedBy: options.account,
    creationDate: c.creationDate,
    lastModifiedDate: c.lastModifiedDate,
    certificateMode: 'DEFAULT',
  });
  const summary = (c: StoredCertificate) => ({
    certificateArn: c.certificateArn,
    certificateId: c.certificateId,
    status: c.status,
    certificateMode: 'DEFAULT',
    creationDate: c.creationDate,
  });

  type Handler = (
    match: string[],
    query: URLSearchParams,
    body: Record<string, unknown>,
    req: IncomingMessage,
  ) => unknown;
  const routes: [string, RegExp, Handler][] = [
    [
      'GET',
      /^\/things$/,
      () => ({
        things: Object.entries(state.things).map(([thingName, t]) => ({
          thingName,
          thingArn: arn(`thing/${thingName}`),
          attributes: {},
          version: 1,
          thingId: t.thingId,
        })),
      }),
    ],
    [
      'POST',
      /^\/things\/([^/]+)$/,
      ([name]) => {
        const existing = state.things[name!];
        const thingId = existing?.thingId ?? crypto.randomUUID();
        if (!existing) state.things[name!] = { thingId, principals: [] };
        return { thingName: name, thingArn: arn(`thing/${name}`), thingId };
      },
    ],
    [
      'GET',
      /^\/things\/([^/]+)$/,
      ([name]) => {
        const t = thing(name!);
        return {
          thingName: name,
          thingId: t.thingId,
          thingArn: arn(`thing/${name}`),
          attributes: {},
          version: 1,
        };
      },
    ],
    [
      'DELETE',
      /^\/things\/([^/]+)$/,
      ([name]) => {
        const t = state.things[name!];
        if (t && t.principals.length > 0) {
          throw new IotError(409, 'InvalidRequestException', `thing '${name}' still has principals attached`);
        }
        delete state.things[name!];
        return {};
      },
    ],
    ['GET', /^\/things\/([^/]+)\/principals$/, ([name]) => ({ principals: [...thing(name!).principals] })],
    [
      'PUT',
      /^\/things\/([^/]+)\/principals$/,
      ([name], _q, _b, req) => {
        const t = thing(name!);
        const principal = String(req.headers['x-amzn-principal'] ?? '');
        certificateByArn(principal);
        if (!t.principals.includes(principal)) t.principals.push(principal);
        return {};
      },
    ],
    [
      'DELETE',
      /^\/things\/([^/]+)\/principals$/,
      ([name], _q, _b, req) => {
        const t = thing(name!);
        const principal = String(req.headers['x-amzn-principal'] ?? '');
        if (!t.principals.includes(principal)) throw notFound(`principal '${principal}' on thing '${name}'`);
        t.principals = t.principals.filter((p) => p !== principal);
        return {};
      },
    ],
    ['GET', /^\/certificates$/, () => ({ certificates: Object.values(state.certificates).map(summary) })],
    [
      'POST',
      /^\/certificate\/register-no-ca$/,
      (_m, _q, body) => {
        const pem = parsePem(body.certificatePem, 'certificatePem');
        const certificateId = idOf(pem);
        const certificateArn = arn(`cert/${certificateId}`);
        if (state.certificates[certificateId]) {
          throw new IotError(409, 'ResourceAlreadyExistsException', 'the certificate is already registered', {
            resourceId: certificateId,
            resourceArn: certificateArn,
          });
        }
        const now = epoch();
        state.certificates[certificateId] = {
          certificateId,
          certificateArn,
          status: typeof body.status === 'string' ? body.status : 'INACTIVE',
          certificatePem: pem,
          creationDate: now,
          lastModifiedDate: now,
          policies: [],
        };
        return { certificateArn, certificateId };
      },
    ],
    [
      'GET',
      /^\/certificates\/([0-9a-f]{64})$/,
      ([id]) => ({ certificateDescription: describe(certificate(id!)) }),
    ],
    [
      'PUT',
      /^\/certificates\/([0-9a-f]{64})$/,
      ([id], query) => {
        const c = certificate(id!);
        const status = query.get('newStatus');
        if (
          !status ||
          !['ACTIVE', 'INACTIVE', 'REVOKED', 'PENDING_TRANSFER', 'PENDING_ACTIVATION'].includes(status)
        ) {
          throw new IotError(
            400,
            'InvalidRequestException',
            `newStatus '${status}' is not a certificate status`,
          );
        }
        c.status = status;
        c.lastModifiedDate = epoch();
        return {};
      },
    ],
    [
      'DELETE',
      /^\/certificates\/([0-9a-f]{64})$/,
      ([id]) => {
        const c = certificate(id!);
        if (c.status === 'ACTIVE')
          throw new IotError(406, 'CertificateStateException', 'the certificate is ACTIVE');
        const things = Object.entries(state.things).filter(([, t]) =>
          t.principals.includes(c.certificateArn),
        );
        if (things.length > 0 || c.policies.length > 0) {
          throw new IotError(
            409,
            'DeleteConflictException',
            'the certificate is attached to a thing or policy',
          );
        }
        delete state.certificates[id!];
        return {};
      },
    ],
    [
      'PUT',
      /^\/target-policies\/([^/]+)$/,
      ([policyName], _q, body) => {
        if (!policies.has(policyName!)) throw notFound(`policy '${policyName}'`);
        const c = certificateByArn(String(body.target));
        if (!c.policies.includes(policyName!)) c.policies.push(policyName!);
        return {};
      },
    ],
    [
      'POST',
      /^\/target-policies\/([^/]+)$/,
      ([policyName], _q, body) => {
        const c = certificateByArn(String(body.target));
        if (!c.policies.includes(policyName!)) throw notFound(`attachment of policy '${policyName}'`);
        c.policies = c.policies.filter((p) => p !== policyName);
        return {};
      },
    ],
    [
      'POST',
      /^\/attached-policies\/(.+)$/,
      ([target]) => ({
        policies: certificateByArn(target!).policies.map((policyName) => ({
          policyName,
          policyArn: arn(`policy/${policyName}`),
        })),
      }),
    ],
    [
      'POST',
      /^\/cacertificate$/,
      (_m, query, body) => {
        const pem = parsePem(body.caCertificate, 'caCertificate');
        const mode = typeof body.certificateMode === 'string' ? body.certificateMode : 'DEFAULT';
        if (mode === 'DEFAULT' && typeof body.verificationCertificate !== 'string') {
          throw new IotError(
            400,
            'InvalidRequestException',
            'verificationCertificate is required in DEFAULT mode',
          );
        }
        const certificateId = idOf(pem);
        const certificateArn = arn(`cacert/${certificateId}`);
        if (state.caCertificates[certificateId]) {
          throw new IotError(
            409,
            'ResourceAlreadyExistsException',
            'the CA certificate is already registered',
            {
              resourceId: certificateId,
              resourceArn: certificateArn,
            },
          );
        }
        const now = epoch();
        state.caCertificates[certificateId] = {
          certificateId,
          certificateArn,
          status: query.get('setAsActive') === 'true' ? 'ACTIVE' : 'INACTIVE',
          autoRegistrationStatus: query.get('allowAutoRegistration') === 'true' ? 'ENABLE' : 'DISABLE',
          certificatePem: pem,
          certificateMode: mode,
          creationDate: now,
          lastModifiedDate: now,
        };
        return { certificateArn, certificateId };
      },
    ],
    [
      'GET',
      /^\/cacertificate\/([0-9a-f]{64})$/,
      ([id]) => {
        const c = ca(id!);
        return {
          certificateDescription: {
            certificateArn: c.certificateArn,
            certificateId: c.certificateId,
            status: c.status,
            certificatePem: c.certificatePem,
            autoRegistrationStatus: c.autoRegistrationStatus,
            certificateMode: c.certificateMode,
            ownedBy: options.account,
            creationDate: c.creationDate,
            lastModifiedDate: c.lastModifiedDate,
          },
        };
      },
    ],
    [
      'PUT',
      /^\/cacertificate\/([0-9a-f]{64})$/,
      ([id], query) => {
        const c = ca(id!);
        const status = query.get('newStatus');
        const auto = query.get('newAutoRegistrationStatus');
        if (status) c.status = status;
        if (auto) c.autoRegistrationStatus = auto;
        c.lastModifiedDate = epoch();
        return {};
      },
    ],
    [
      'DELETE',
      /^\/cacertificate\/([0-9a-f]{64})$/,
      ([id]) => {
        const c = ca(id!);
        if (c.status !== 'INACTIVE')
          throw new IotError(406, 'CertificateStateException', 'the CA certificate is ACTIVE');
        delete state.caCertificates[id!];
        return {};
      },
    ],
    [
      'GET',
      /^\/certificates-by-ca\/([0-9a-f]{64})$/,
      ([id]) => {
        ca(id!);
        return {
          certificates: Object.values(state.certificates)
            .filter((c) => c.caCertificateId === id)
            .map(summary),
        };
      },
    ],
  ];

  const server = createServer((req, res) => {
    void handle(req, res);
  });
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://local');
    const reply = (status: number, body: unknown, headers: Record<string, string> = {}): void => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
    };
    try {
      const segments = url.pathname.split('/').map((s) => decodeURIComponent(s));
      const decoded = segments.join('/');
      for (const [method, pattern, run] of routes) {
        const match = pattern.exec(decoded);
        if (req.method !== method || !match) continue;
        const raw = (await readBody(req, 1024 * 1024)) ?? Buffer.alloc(0);
        const body = raw.length === 0 ? {} : (JSON.parse(raw.toString('utf8')) as Record<string, unknown>);
        const out = run(match.slice(1), url.searchParams, body, req);
        if (req.method !== 'GET') save();
        return reply(200, out);
      }
      throw new IotError(404, 'ResourceNotFoundException', `no operation at ${req.method} ${url.pathname}`);
    } catch (error) {
      if (error instanceof IotError) {
        return reply(
          error.status,
          { message: error.message, ...error.extra },
          { 'x-amzn-errortype': error.type },
        );
      }
      options.log(`iot control plane: ${req.method} ${url.pathname} failed: ${String(error)}`);
      return reply(500, { message: 'internal error' }, { 'x-amzn-errortype': 'InternalFailureException' });
    }
  };
  const running = await listen(server, options.host, options.port);
  return { ...running, state: () => structuredClone(state) };
}

function throwError(error: Error): never {
  throw error;
}
