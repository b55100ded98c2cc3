import {
  ConflictError,
  HubError,
  LimitExceededError,
  NotFoundError,
  TransientError,
  ValidationError,
} from '../errors.ts';

/**
 * A service API request, independent of how it arrived (Lambda Function URL event, the local hub's HTTP
 * server, a test).
 */
export interface ApiRequest {
  /** Upper-case HTTP method. */
  readonly method: string;
  /** Path as sent, still percent-encoded (Function URLs keep the encoding); the route matcher decodes it. */
  readonly path: string;
  /** Decoded query parameters; a repeated parameter holds its values joined by commas. */
  readonly query: Readonly<Record<string, string>>;
  /** Headers with lower-case names. */
  readonly headers: Readonly<Record<string, string>>;
  /** Body as UTF-8 text, `undefined` when the request had none. */
  readonly body: string | undefined;
}

/** A service API response. `body` is JSON text, or empty for 204. */
export interface ApiResponse {
  /** HTTP status. */
  readonly status: number;
  /** Headers with lower-case names; always includes `content-type`. */
  readonly headers: Readonly<Record<string, string>>;
  /** Response body. */
  readonly body: string;
}

/** `content-type` of every response. */
export const JSON_CONTENT_TYPE = 'application/json; charset=utf-8';

/** Largest request body the service API takes, in bytes (decoded): 256 KB. */
export const MAX_BODY_BYTES = 256 * 1024;

/** Methods the route table knows. */
export type HttpMethod = 'GET' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';

/** Path parameters of a matched route, percent-decoded, by name. */
export type RouteParams = Readonly<Record<string, string>>;

/**
 * One entry of the route table: a method, a path pattern and its handler.
 *
 * @example
 * { method: 'GET', pattern: '/devices/{id}', handle: async (request, { id }) => jsonResponse(200, ...) }
 */
export interface RouteEntry {
  /** HTTP method. */
  readonly method: HttpMethod;
  /**
   * Path pattern: `/`-separated literal segments (matched case-insensitively, as IoT Hub does) and whole
   * segment parameters `{name}`, which match one non-empty segment and reach the handler decoded.
   */
  readonly pattern: string;
  /** Handles a matched request. Throw a `HubError` to answer with its mapped status. */
  readonly handle: (request: ApiRequest, params: RouteParams) => Promise<ApiResponse>;
}

/** Outcome of {@link RouteTable.match}. */
export type RouteMatch =
  | { readonly kind: 'found'; readonly route: RouteEntry; readonly params: RouteParams }
  | { readonly kind: 'methodNotAllowed'; readonly allow: readonly string[] }
  | { readonly kind: 'notFound' };

/** The request body is larger than {@link MAX_BODY_BYTES}. Code `RequestEntityTooLarge`; maps to 413. */
export class RequestEntityTooLargeError extends LimitExceededError {
  constructor(bytes: number, limit: number) {
    super('RequestEntityTooLarge', `body: ${bytes} bytes is over the limit of ${limit} bytes`, {
      field: 'body',
      limit,
    });
  }
}

type Segment = { readonly literal: string } | { readonly param: string };

interface CompiledRoute {
  readonly entry: RouteEntry;
  readonly segments: readonly Segment[];
}

function splitPath(path: string): string[] {
  const trimmed = path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
  return trimmed.split('/').slice(1);
}

function compile(entry: RouteEntry): CompiledRoute {
  if (!entry.pattern.startsWith('/')) {
    throw new Error(`route pattern must start with '/': ${entry.pattern}`);
  }
  const segments = splitPath(entry.pattern).map((part): Segment => {
    const param = /^\{([A-Za-z][A-Za-z0-9]*)\}$/.exec(part)?.[1];
    if (param !== undefined) return { param };
    if (part.includes('{') || part.includes('}') || part === '') {
      throw new Error(
        `route pattern segment '${part}' is neither a literal nor a whole {param}: ${entry.pattern}`,
      );
    }
    return { literal: part.toLowerCase() };
  });
  return { entry, segments };
}

/** Literal segments sort before parameters, position by position, so `/devices/query` beats `/devices/{id}`. */
function bySpecificity(a: CompiledRoute, b: CompiledRoute): number {
  const length = Math.min(a.segments.length, b.segments.length);
  for (let i = 0; i < length; i++) {
    const aLiteral = 'literal' in a.segments[i]! ? 0 : 1;
    const bLiteral = 'literal' in b.segments[i]! ? 0 : 1;
    if (aLiteral !== bLiteral) return aLiteral - bLiteral;
  }
  return 0;
}

function decodeSegments(path: string): string[] {
  return splitPath(path).map((segment, index) => {
    try {
      return decodeURIComponent(segment);
    } catch {
      throw new ValidationError('InvalidPath', `path: segment ${index + 1} is not valid percent-encoding`, {
        field: 'path',
      });
    }
  });
}

/**
 * The route table: matches a method and a percent-encoded path to one {@link RouteEntry}. Other modules add
 * their routes by concatenating entry lists (see `registryRoutes`) before building the table.
 */
export class RouteTable {
  private readonly routes: readonly CompiledRoute[];

  /** Compiles `routes`; throws on a malformed pattern or on two entries for the same method and pattern. */
  constructor(routes: readonly RouteEntry[]) {
    const seen = new Set<string>();
    for (const route of routes) {
      const key = `${route.method} ${route.pattern.toLowerCase().replace(/\{[^}]*\}/g, '{}')}`;
      if (seen.has(key)) throw new Error(`duplicate route: ${route.method} ${route.pattern}`);
      seen.add(key);
    }
    this.routes = routes.map(compile).sort(bySpecificity);
  }

  /**
   * Finds the route for `method` and `path`. A path that some route matches under another method gives
   * `methodNotAllowed` with the methods that would match. Throws `ValidationError` (field `path`) for a
   * path that is not valid percent-encoding.
   */
  match(method: string, path: string): RouteMatch {
    const parts = decodeSegments(path);
    const allow = new Set<string>();
    for (const route of this.routes) {
      const params = matchSegments(route.segments, parts);
      if (params === undefined) continue;
      if (route.entry.method === method) return { kind: 'found', route: route.entry, params };
      allow.add(route.entry.method);
    }
    return allow.size > 0 ? { kind: 'methodNotAllowed', allow: [...allow] } : { kind: 'notFound' };
  }
}

function matchSegments(segments: readonly Segment[], parts: readonly string[]): RouteParams | undefined {
  if (segments.length !== parts.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!;
    const part = parts[i]!;
    if ('literal' in segment) {
      if (part.toLowerCase() !== segment.literal) return undefined;
    } else {
      if (part === '') return undefined;
      params[segment.param] = part;
    }
  }
  return params;
}

/** A JSON response with the standard `content-type`; `body` `undefined` gives an empty body (204). */
export function jsonResponse(
  status: number,
  body: unknown,
  headers: Readonly<Record<string, string>> = {},
): ApiResponse {
  return {
    status,
    headers: { ...headers, 'content-type': JSON_CONTENT_TYPE },
    body: body === undefined ? '' : JSON.stringify(body),
  };
}

/**
 * Parses the request body as JSON. A missing or blank body, or text that is not JSON, is a
 * `ValidationError` (400) whose message says what is wrong, e.g. `body: invalid JSON (Unexpected token ...)`.
 * The result is `unknown`: validate it with a schema next.
 */
export function parseJsonBody(request: ApiRequest): unknown {
  if (request.body === undefined || request.body.trim() === '') {
    throw new ValidationError('InvalidRequestBody', 'body: required, a JSON document', { field: 'body' });
  }
  try {
    return JSON.parse(request.body);
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    throw new ValidationError('InvalidJson', `body: invalid JSON (${detail})`, { field: 'body' });
  }
}

/** Error codes answered with 413 rather than the 400 of other `LimitExceededError`s. */
const PAYLOAD_TOO_LARGE_CODES = new Set(['RequestEntityTooLarge']);

/** Limits IoT Hub answers with 403 Forbidden: a full C2D queue, a second import/export job. */
const FORBIDDEN_LIMIT_CODES = new Set(['DeviceMaximumQueueDepthExceeded', 'JobQuotaExceeded']);

/** Context keys a caller may see: they name its own input or a documented limit, never internals. */
const SAFE_CONTEXT_KEYS = [
  'field',
  'issues',
  'limit',
  'count',
  'deviceId',
  'allow',
  'depth',
  'bytes',
] as const;

/** Whether `code` marks throttling (`Throttled`, `...Throttled`, `Throttling...`): answered with 429. */
export function isThrottledCode(code: string): boolean {
  return /^Throttl|Throttled$/.test(code);
}

/**
 * The HTTP status of an error, decided here at the edge only:
 *
 * | error | status |
 * | --- | --- |
 * | `ValidationError` | 400 |
 * | `NotFoundError` | 404 |
 * | `ConflictError` | 409, or 412 when its code is `PreconditionFailed` |
 * | `LimitExceededError` | 413 for a body over the size limit (`RequestEntityTooLarge`), 403 for a full C2D queue (`DeviceMaximumQueueDepthExceeded`) or a second import/export job (`JobQuotaExceeded`), as IoT Hub, else 400 (IoT Hub answers a too-large bulk request with 400) |
 * | any `HubError` coded as throttling (see {@link isThrottledCode}) | 429 |
 * | `TransientError` | 503 |
 * | anything else | 500 |
 */
export function statusOf(error: unknown): number {
  if (!(error instanceof HubError)) return 500;
  if (isThrottledCode(error.code)) return 429;
  if (error instanceof ValidationError) return 400;
  if (error instanceof NotFoundError) return 404;
  if (error instanceof ConflictError) return error.code === 'PreconditionFailed' ? 412 : 409;
  if (error instanceof LimitExceededError) {
    if (PAYLOAD_TOO_LARGE_CODES.has(error.code)) return 413;
    return FORBIDDEN_LIMIT_CODES.has(error.code) ? 403 : 400;
  }
  if (error instanceof TransientError) return 503;
  return 500;
}

/**
 * The JSON error response for `error`: `{ code, message, status }`, plus `context` limited to safe keys
 * (field names, limits, the caller's own device id). A 500 always says `InternalServerError` with a generic
 * message, so no internal detail or stack reaches a caller; log the error itself. 429 and 503 carry
 * `retry-after: 1`.
 */
export function errorResponse(error: unknown): ApiResponse {
  const status = statusOf(error);
  if (status === 500 || !(error instanceof HubError)) {
    return jsonResponse(500, { code: 'InternalServerError', message: 'internal error', status: 500 });
  }
  const context: Record<string, unknown> = {};
  for (const key of SAFE_CONTEXT_KEYS) {
    if (error.context[key] !== undefined) context[key] = error.context[key];
  }
  const body = {
    code: error.code,
    message: error.message,
    status,
    ...(Object.keys(context).length > 0 ? { context } : {}),
  };
  return jsonResponse(status, body, status === 429 || status === 503 ? { 'retry-after': '1' } : {});
}

/**
 * Answers `request` from `table`: 404 `NotFound` for an unknown path, 405 `MethodNotAllowed` with an `allow`
 * header for a known path under another method, otherwise the route's response, with thrown errors mapped by
 * {@link errorResponse}. `onInternalError` sees every error answered with a 5xx (to log it). Never throws.
 */
export async function dispatch(
  table: RouteTable,
  request: ApiRequest,
  onInternalError: (error: unknown) => void = () => {},
): Promise<ApiResponse> {
  try {
    const match = table.match(request.method, request.path);
    if (match.kind === 'notFound') {
      return jsonResponse(404, {
        code: 'NotFound',
        message: `no resource at ${request.method} ${request.path}`,
        status: 404,
      });
    }
    if (match.kind === 'methodNotAllowed') {
      const allow = match.allow.join(', ');
      return jsonResponse(
        405,
        {
          code: 'MethodNotAllowed',
          message: `${request.method} is not allowed here; allowed: ${allow}`,
          status: 405,
          context: { allow: match.allow },
        },
        { allow },
      );
    }
    return await match.route.handle(request, match.params);
  } catch (error) {
    const response = errorResponse(error);
    if (response.status >= 500) onInternalError(error);
    return response;
  }
}
