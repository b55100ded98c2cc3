import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { DEFAULT_ASYNC_INVOKE, type LocalFunction } from './template.ts';

/** A function invocation that failed: the handler threw, timed out, or its module did not load. */
export class FunctionError extends Error {
  constructor(
    readonly functionName: string,
    readonly errorType: string,
    /** The error's own message, without the function name and type. */
    readonly errorMessage: string,
    /** The handler's stack trace, when it threw (source-mapped when the template enables source maps). */
    readonly trace: readonly string[] = [],
  ) {
    super(`${functionName}: ${errorType}: ${errorMessage}`);
    this.name = 'FunctionError';
  }
}

/** The Lambda "environments per function" when the template sets no `ReservedConcurrentExecutions`. */
export const DEFAULT_LOCAL_CONCURRENCY = 4;

/**
 * How long an environment may sit idle before it is retired. Each environment is a worker thread
 * (a V8 isolate with the function's bundle loaded, about 60 MB), and without retirement every
 * environment a burst started stayed for the hub's life: 19 of them, 1.1 GB, after one load of the
 * memory bench. Lambda too reclaims idle environments (after minutes; locally memory is dearer
 * than a cold start). `HUB_LAMBDA_IDLE_MS` overrides it for the hub.
 */
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;

/**
 * Most environments the runner keeps across all functions before it retires idle ones (the least
 * recently used first) to make room for a new one. A soft cap: when every environment is busy a
 * new one still starts (up to its function's own limit), so an invocation never waits on the cap
 * and nested invocations cannot deadlock. `HUB_LAMBDA_MAX_ENVIRONMENTS` overrides it for the hub.
 */
export const DEFAULT_MAX_ENVIRONMENTS = 8;

/** How a function's code is loaded in its environments. */
type Code =
  /** The bundle `cdk synth` built: `index.mjs` in the asset directory, which is `LAMBDA_TASK_ROOT`. */
  | { readonly mode: 'bundle'; readonly moduleUrl: string; readonly taskRoot: string }
  /** Fallback for a template synthesized without bundling: the TypeScript source through tsx. */
  | { readonly mode: 'source'; readonly moduleUrl: string; readonly taskRoot?: string };

interface WorkerError {
  name: string;
  message: string;
  stack?: string;
}
type WorkerMessage =
  | { type: 'ready' }
  | { type: 'init-error'; error: WorkerError }
  | { type: 'result'; id: number; result?: unknown; error?: WorkerError };

interface Current {
  readonly id: number;
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer?: NodeJS.Timeout;
}

/**
 * One execution environment of a function: one worker thread that runs one invocation at a time,
 * as a Lambda environment does. It is discarded (never reused) after its module failed to load,
 * its thread ended, an invocation timed out, or the runner closed.
 */
class Environment {
  private readonly worker: Worker;
  private readonly ready: Promise<void>;
  private current: Current | undefined;
  private nextId = 0;
  /** True once this environment must not run anything again. */
  dead = false;
  /** When it last finished an invocation (or started), on the runner's clock: idle retirement reads it. */
  lastUsed: number;

  constructor(
    private readonly fn: LocalFunction,
    code: Code,
    env: Record<string, string>,
    private readonly log: (line: string) => void,
    now: number,
  ) {
    this.lastUsed = now;
    const worker = new Worker(new URL('./lambda-worker.mjs', import.meta.url), {
      env,
      workerData: {
        mode: code.mode,
        moduleUrl: code.moduleUrl,
        functionName: fn.name,
        functionArn: fn.arn,
        timeoutMs: fn.timeoutSeconds * 1000,
        sourceMaps: /(^|\s)--enable-source-maps(\s|$)/.test(env.NODE_OPTIONS ?? ''),
      },
      stdout: false,
      stderr: false,
    });
    this.worker = worker;
    this.ready = new Promise<void>((resolve, reject) => {
      worker.on('message', (msg: WorkerMessage) => {
        if (msg.type === 'ready') return resolve();
        if (msg.type === 'init-error') {
          const e = this.error('Runtime.ImportModuleError', msg.error);
          this.discard(e);
          return reject(e);
        }
        const current = this.current;
        if (!current || current.id !== msg.id) return;
        this.finish();
        if (msg.error) current.reject(this.error(msg.error.name, msg.error));
        else current.resolve(msg.result);
      });
      worker.on('error', (error) => {
        const e = this.error('Runtime.ExitError', error);
        this.discard(e);
        reject(e);
      });
      worker.on('exit', (code) => {
        const e = new FunctionError(fn.name, 'Runtime.ExitError', `exit ${code}`);
        this.discard(e);
        reject(e);
      });
    });
    // A load failure is reported to the invocation that waits for it; never unhandled.
    this.ready.catch(() => {});
  }

  private error(errorType: string, error: WorkerError | Error): FunctionError {
    return new FunctionError(this.fn.name, errorType, error.message, error.stack?.split('\n') ?? []);
  }

  private finish(): void {
    if (this.current?.timer) clearTimeout(this.current.timer);
    this.current = undefined;
  }

  /** Ends the environment; the invocation it runs, if any, fails with `error` at once. */
  discard(error: Error): void {
    const current = this.current;
    this.finish();
    current?.reject(error);
    if (this.dead) return;
    this.dead = true;
    void this.worker.terminate();
  }

  /** Runs one invocation; the caller sends the next only after this one settled. */
  async invoke(event: unknown): Promise<unknown> {
    await this.ready;
    if (this.dead) throw new FunctionError(this.fn.name, 'Runtime.ExitError', 'environment went away');
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const current: Current = { id, resolve, reject };
      this.current = current;
      current.timer = setTimeout(() => {
        if (this.current !== current) return;
        this.log(
          `function ${this.fn.logicalId} timed out after ${this.fn.timeoutSeconds}s; environment replaced`,
        );
        this.discard(
          new FunctionError(this.fn.name, 'Sandbox.Timedout', `timed out after ${this.fn.timeoutSeconds}s`),
        );
      }, this.fn.timeoutSeconds * 1000);
      this.worker.postMessage({ id, event });
    });
  }

  /** Ends the environment (an invocation in flight fails at once) and its worker thread. */
  async close(reason: 'shutdown' | 'retired' = 'shutdown'): Promise<void> {
    const message = reason === 'retired' ? 'the environment was retired' : 'the local hub is shutting down';
    this.discard(new FunctionError(this.fn.name, 'Runtime.ExitError', message));
    await this.worker.terminate();
  }
}

/**
 * The environments of one function: an idle one is reused (the most recently used first, which is
 * the warmest); a new one starts while fewer than `limit` run; beyond that an invocation waits for
 * one to be free. (Lambda throttles a synchronous invocation beyond the limit; locally it queues, so
 * a burst of service calls slows down instead of failing.)
 */
class FunctionPool {
  /** Idle environments, the least recently used first (the warmest is popped). */
  private readonly idle: Environment[] = [];
  private readonly busy = new Set<Environment>();
  private readonly waiting: { resolve(env: Environment): void; reject(error: Error): void }[] = [];

  constructor(
    readonly fn: LocalFunction,
    private readonly limit: number,
    private readonly create: () => Environment,
    private readonly clock: () => number,
  ) {}

  async invoke(event: unknown): Promise<unknown> {
    const env = await this.acquire();
    try {
      return await env.invoke(event);
    } finally {
      this.release(env);
    }
  }

  private acquire(): Promise<Environment> {
    const idle = this.idle.pop();
    if (idle) {
      this.busy.add(idle);
      return Promise.resolve(idle);
    }
    if (this.busy.size < this.limit) {
      const env = this.create();
      this.busy.add(env);
      return Promise.resolve(env);
    }
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  private release(env: Environment): void {
    if (!this.busy.delete(env)) return;
    env.lastUsed = this.clock();
    const next = this.waiting.shift();
    if (!next) {
      if (!env.dead) this.idle.push(env);
      return;
    }
    // A dead environment (timeout, crash, load failure) is replaced for the next invocation.
    const successor = env.dead ? this.create() : env;
    this.busy.add(successor);
    next.resolve(successor);
  }

  /** How many environments exist (idle and busy). */
  get size(): number {
    return this.idle.length + this.busy.size;
  }

  /** How many environments wait idle. */
  get idleCount(): number {
    return this.idle.length;
  }

  /** When the least recently used idle environment was last used, or undefined when none is idle. */
  get oldestIdle(): number | undefined {
    return this.idle[0]?.lastUsed;
  }

  /** Ends the least recently used idle environment, if any; true when there was one. */
  retireOldestIdle(): boolean {
    const env = this.idle.shift();
    if (!env) return false;
    // Ending a thread does not fail; were it to, the hub must not die of an unhandled rejection.
    env.close('retired').catch(() => {});
    return true;
  }

  /** Ends the idle environments last used at or before `before`; returns how many. */
  retireIdleSince(before: number): number {
    let count = 0;
    while ((this.idle[0]?.lastUsed ?? Number.POSITIVE_INFINITY) <= before) {
      this.retireOldestIdle();
      count++;
    }
    return count;
  }

  async close(): Promise<void> {
    const error = new FunctionError(this.fn.name, 'Runtime.ExitError', 'the local hub is shutting down');
    for (const w of this.waiting.splice(0)) w.reject(error);
    const all = [...this.idle.splice(0), ...this.busy];
    this.busy.clear();
    await Promise.all(all.map((e) => e.close()));
  }
}

/**
 * The runner's environment limits from `HUB_LAMBDA_IDLE_MS` and `HUB_LAMBDA_MAX_ENVIRONMENTS`
 * (unset: the defaults), so a user can trade memory against cold starts without a new template.
 * A value that is not a positive whole number is refused, naming the variable.
 */
export function environmentLimitsFromEnv(
  env: Readonly<Record<string, string | undefined>>,
): Pick<LambdaRunnerOptions, 'idleTimeoutMs' | 'maxEnvironments'> {
  const read = (name: string): number | undefined => {
    const raw = env[name];
    if (raw === undefined || raw === '') return undefined;
    const value = Number(raw);
    if (!Number.isInteger(value) || value < 1) {
      throw new Error(`${name} must be a positive whole number, got '${raw}'`);
    }
    return value;
  };
  const idleTimeoutMs = read('HUB_LAMBDA_IDLE_MS');
  const maxEnvironments = read('HUB_LAMBDA_MAX_ENVIRONMENTS');
  return {
    ...(idleTimeoutMs === undefined ? {} : { idleTimeoutMs }),
    ...(maxEnvironments === undefined ? {} : { maxEnvironments }),
  };
}

/** Options of {@link LambdaRunner}. */
export interface LambdaRunnerOptions {
  readonly functions: readonly LocalFunction[];
  /** Root against which a function's `entry` (its source) is resolved. */
  readonly projectRoot: string;
  /** Variables every function sees besides its own (SDK endpoints, credentials, region). */
  readonly baseEnv: Record<string, string>;
  readonly log: (line: string) => void;
  /**
   * The directory of a function's bundle (the cloud assembly's asset, with `index.mjs` and the
   * bundled files), or undefined when there is none: then its source runs through tsx.
   * @default no bundles: every function runs from source
   */
  readonly assetDirOf?: (logicalId: string) => string | undefined;
  /**
   * For functions run from source: where each one's bundled files (`LocalFunction.files`) are
   * written, in a folder per function that becomes its `LAMBDA_TASK_ROOT`, as the bundle's folder
   * is in Lambda. @default no files and no `LAMBDA_TASK_ROOT`
   */
  readonly codeDir?: string;
  /** Environments per function when the template sets no `ReservedConcurrentExecutions`. @default 4 */
  readonly defaultConcurrency?: number;
  /**
   * Sends an asynchronous invocation's failure record to the function's on-failure SQS queue
   * (`EventInvokeConfig.DestinationConfig.OnFailure`), by the queue's local name.
   * @default none: a function with an on-failure queue is refused
   */
  readonly sendToQueue?: (queueName: string, body: string) => Promise<void>;
  /**
   * Delay before retry `n` (1, 2) of a failed asynchronous invocation. Lambda waits about one and
   * then two minutes; locally seconds, so that a retry is seen while one watches.
   * @default n => n * 1000
   */
  readonly asyncRetryDelayMs?: (retry: number) => number;
  /**
   * An environment idle this long is retired (its worker thread ends); the next invocation starts
   * a new one. @default {@link DEFAULT_IDLE_TIMEOUT_MS}
   */
  readonly idleTimeoutMs?: number;
  /**
   * Environments kept across all functions before idle ones are retired to make room (a soft cap,
   * see {@link DEFAULT_MAX_ENVIRONMENTS}). @default {@link DEFAULT_MAX_ENVIRONMENTS}
   */
  readonly maxEnvironments?: number;
  /** The clock idle retirement reads (tests move it by hand). @default Date.now */
  readonly clock?: () => number;
}

/**
 * The local Lambda service: runs the stack's functions in worker threads, each invocation in an
 * environment of its own function (up to its concurrency limit), with the environment the template
 * gives the function plus the SDK endpoint variables of the local hub. It runs the bundles
 * `cdk synth` produced when the template comes with them, else the sources (see
 * {@link LambdaRunnerOptions.assetDirOf}), and does asynchronous invocations with Lambda's retries
 * and on-failure destination ({@link invokeAsync}).
 */
export class LambdaRunner {
  private readonly pools = new Map<string, FunctionPool>();
  private readonly retryTimers = new Set<NodeJS.Timeout>();
  private readonly log: (line: string) => void;
  private readonly sendToQueue: ((queueName: string, body: string) => Promise<void>) | undefined;
  private readonly retryDelayMs: (retry: number) => number;
  private readonly inFlightAsync = new Set<Promise<void>>();
  private closed = false;
  private readonly idleTimeoutMs: number;
  private readonly maxEnvironments: number;
  private readonly clock: () => number;
  /** Looks for environments idle too long while any exist; unref'd, so it never keeps the hub up. */
  private sweeper: NodeJS.Timeout | undefined;

  constructor(options: LambdaRunnerOptions) {
    this.log = options.log;
    this.sendToQueue = options.sendToQueue;
    this.retryDelayMs = options.asyncRetryDelayMs ?? ((n) => n * 1000);
    const defaultConcurrency = options.defaultConcurrency ?? DEFAULT_LOCAL_CONCURRENCY;
    if (!Number.isInteger(defaultConcurrency) || defaultConcurrency < 1) {
      throw new Error(`defaultConcurrency must be a positive integer, got ${defaultConcurrency}`);
    }
    this.idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    if (!Number.isFinite(this.idleTimeoutMs) || this.idleTimeoutMs <= 0) {
      throw new Error(`idleTimeoutMs must be a positive number of milliseconds, got ${this.idleTimeoutMs}`);
    }
    this.maxEnvironments = options.maxEnvironments ?? DEFAULT_MAX_ENVIRONMENTS;
    if (!Number.isInteger(this.maxEnvironments) || this.maxEnvironments < 1) {
      throw new Error(`maxEnvironments must be a positive integer, got ${this.maxEnvironments}`);
    }
    this.clock = options.clock ?? Date.now;
    for (const fn of options.functions) {
      if (fn.asyncInvoke?.onFailureQueueName !== undefined && !options.sendToQueue) {
        throw new Error(
          `function ${fn.logicalId} has an on-failure queue, but the runner got no sendToQueue`,
        );
      }
      const code = this.codeOf(fn, options);
      const env: Record<string, string> = {
        ...options.baseEnv,
        ...fn.environment,
        AWS_LAMBDA_FUNCTION_NAME: fn.name,
        AWS_LAMBDA_FUNCTION_TIMEOUT: String(fn.timeoutSeconds),
        POWERTOOLS_SERVICE_NAME: fn.logicalId,
        ...(code.taskRoot === undefined ? {} : { LAMBDA_TASK_ROOT: code.taskRoot }),
      };
      const limit = fn.reservedConcurrency ?? defaultConcurrency;
      const create = () => {
        this.makeRoom();
        this.startSweeper();
        return new Environment(fn, code, env, this.log, this.clock());
      };
      this.pools.set(fn.logicalId, new FunctionPool(fn, limit, create, this.clock));
    }
  }

  private codeOf(fn: LocalFunction, options: LambdaRunnerOptions): Code {
    const assetDir = options.assetDirOf?.(fn.logicalId);
    if (assetDir !== undefined) {
      const index = path.join(assetDir, 'index.mjs');
      if (!existsSync(index)) {
        throw new Error(`function ${fn.logicalId}: its bundle ${assetDir} has no index.mjs`);
      }
      return { mode: 'bundle', moduleUrl: pathToFileURL(index).href, taskRoot: assetDir };
    }
    const moduleUrl = pathToFileURL(path.join(options.projectRoot, fn.entry)).href;
    if (options.codeDir === undefined) return { mode: 'source', moduleUrl };
    const root = path.join(options.codeDir, fn.logicalId);
    // Written afresh at every start: the files belong to this template, not to an earlier one.
    rmSync(root, { recursive: true, force: true });
    mkdirSync(root, { recursive: true });
    for (const [name, content] of Object.entries(fn.files)) writeFileSync(path.join(root, name), content);
    return { mode: 'source', moduleUrl, taskRoot: root };
  }

  private pool(logicalId: string): FunctionPool {
    const pool = this.pools.get(logicalId);
    if (!pool) throw new Error(`no function ${logicalId} in the template`);
    return pool;
  }

  /** Invokes a function synchronously (`RequestResponse`) and returns its result. */
  invoke(logicalId: string, event: unknown): Promise<unknown> {
    try {
      return this.pool(logicalId).invoke(event);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** How many environments a function has now (idle and busy). */
  environmentCount(logicalId: string): number {
    return this.pool(logicalId).size;
  }

  /** How many environments all functions have now (each is a worker thread). */
  totalEnvironments(): number {
    let total = 0;
    for (const pool of this.pools.values()) total += pool.size;
    return total;
  }

  /**
   * Retires every environment idle for {@link LambdaRunnerOptions.idleTimeoutMs} or longer and
   * returns how many. A timer calls it while environments exist; tests call it after moving the clock.
   */
  retireIdleEnvironments(): number {
    const before = this.clock() - this.idleTimeoutMs;
    let count = 0;
    for (const pool of this.pools.values()) count += pool.retireIdleSince(before);
    if (this.totalEnvironments() === 0) this.stopSweeper();
    return count;
  }

  /** Before a new environment starts: at the cap, retire the least recently used idle ones (any function). */
  private makeRoom(): void {
    while (this.totalEnvironments() >= this.maxEnvironments) {
      let oldest: FunctionPool | undefined;
      for (const pool of this.pools.values()) {
        const at = pool.oldestIdle;
        if (at !== undefined && (oldest === undefined || at < (oldest.oldestIdle ?? at))) oldest = pool;
      }
      // Every environment is busy: the new one starts anyway (a soft cap never makes a caller wait).
      if (!oldest?.retireOldestIdle()) return;
    }
  }

  private startSweeper(): void {
    if (this.sweeper) return;
    // Often enough that an idle environment goes within about 1.25 × the idle timeout.
    const every = Math.max(1000, Math.min(this.idleTimeoutMs / 4, 15_000));
    this.sweeper = setInterval(() => this.retireIdleEnvironments(), every);
    this.sweeper.unref();
  }

  private stopSweeper(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  /**
   * Invokes a function asynchronously (`InvocationType: Event`, as IoT rule Lambda actions and
   * EventBridge targets do) and returns at once. A failed invocation is retried as the function's
   * EventInvokeConfig says (Lambda's default: twice, with backoff) while the event is younger than
   * its maximum age; then Lambda's invocation record goes to the on-failure queue, if there is one,
   * else a log line says the event was dropped.
   */
  invokeAsync(logicalId: string, event: unknown): void {
    const pool = this.pool(logicalId);
    const fn = pool.fn;
    const config = fn.asyncInvoke ?? DEFAULT_ASYNC_INVOKE;
    const requestId = randomUUID();
    const queuedAt = Date.now();
    const attempt = (count: number): void => {
      if (this.closed) return;
      const run = pool.invoke(event).then(
        () => undefined,
        (error: unknown) => {
          if (this.closed) return;
          const delay = this.retryDelayMs(count);
          if (count <= config.maximumRetryAttempts) {
            if (Date.now() + delay - queuedAt <= config.maximumEventAgeSeconds * 1000) {
              const timer = setTimeout(() => {
                this.retryTimers.delete(timer);
                attempt(count + 1);
              }, delay);
              this.retryTimers.add(timer);
              return;
            }
            return this.failAsync(fn, requestId, event, 'EventAgeExceeded', count, error);
          }
          return this.failAsync(fn, requestId, event, 'RetriesExhausted', count, error);
        },
      );
      this.inFlightAsync.add(run);
      void run.finally(() => this.inFlightAsync.delete(run));
    };
    attempt(1);
  }

  private async failAsync(
    fn: LocalFunction,
    requestId: string,
    event: unknown,
    condition: 'RetriesExhausted' | 'EventAgeExceeded',
    invokeCount: number,
    error: unknown,
  ): Promise<void> {
    const queue = fn.asyncInvoke?.onFailureQueueName;
    const what = `async invocation ${requestId} of ${fn.logicalId} failed (${condition}, ${invokeCount} attempts): ${String(error)}`;
    if (queue === undefined || !this.sendToQueue) {
      this.log(`${what}; no on-failure destination, event dropped`);
      return;
    }
    const e = error instanceof FunctionError ? error : undefined;
    // The record Lambda sends to an on-failure destination of an asynchronous invocation.
    const record = {
      version: '1.0',
      timestamp: new Date().toISOString(),
      requestContext: {
        requestId,
        functionArn: `${fn.arn}:$LATEST`,
        condition,
        approximateInvokeCount: invokeCount,
      },
      requestPayload: event,
      responseContext: { statusCode: 200, executedVersion: '$LATEST', functionError: 'Unhandled' },
      responsePayload: {
        errorType: e?.errorType ?? 'Error',
        errorMessage: e?.errorMessage ?? String(error),
        trace: e?.trace ?? [],
      },
    };
    try {
      await this.sendToQueue(queue, JSON.stringify(record));
      this.log(`${what}; record sent to ${queue}`);
    } catch (sendError) {
      this.log(`${what}; sending the record to ${queue} failed too, event dropped: ${String(sendError)}`);
    }
  }

  /**
   * Waits until no asynchronous invocation is running or waiting for a retry (tests use it to
   * know the on-failure record was sent).
   */
  async asyncIdle(): Promise<void> {
    while (this.inFlightAsync.size > 0 || this.retryTimers.size > 0) {
      if (this.inFlightAsync.size > 0) await Promise.allSettled([...this.inFlightAsync]);
      else await new Promise((r) => setTimeout(r, 10));
    }
  }

  /**
   * Ends every environment (invocations in flight fail at once) and drops pending async retries.
   * The runner may be used again afterwards: new environments start.
   */
  async close(): Promise<void> {
    this.closed = true;
    this.stopSweeper();
    for (const timer of this.retryTimers) clearTimeout(timer);
    this.retryTimers.clear();
    await Promise.all([...this.pools.values()].map((p) => p.close()));
    this.closed = false;
  }
}
