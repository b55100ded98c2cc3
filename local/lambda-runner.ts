import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { LocalFunction } from './template.ts';

/** A function invocation that failed: the handler threw, timed out, or its module did not load. */
export class FunctionError extends Error {
  constructor(
    readonly functionName: string,
    readonly errorType: string,
    message: string,
  ) {
    super(`${functionName}: ${errorType}: ${message}`);
    this.name = 'FunctionError';
  }
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

/** One function's execution environment. Replaced after a crash or timeout, as Lambda does. */
class Environment {
  private worker: Worker | undefined;
  private ready: Promise<void> | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;

  constructor(
    private readonly fn: LocalFunction,
    private readonly projectRoot: string,
    private readonly baseEnv: Record<string, string>,
    private readonly log: (line: string) => void,
  ) {}

  private start(): Promise<void> {
    if (this.ready) return this.ready;
    const worker = new Worker(new URL('./lambda-worker.mjs', import.meta.url), {
      env: {
        ...this.baseEnv,
        ...this.fn.environment,
        AWS_LAMBDA_FUNCTION_NAME: this.fn.name,
        AWS_LAMBDA_FUNCTION_TIMEOUT: String(this.fn.timeoutSeconds),
        POWERTOOLS_SERVICE_NAME: this.fn.logicalId,
      },
      workerData: {
        entryUrl: pathToFileURL(path.join(this.projectRoot, this.fn.entry)).href,
        functionName: this.fn.name,
        timeoutMs: this.fn.timeoutSeconds * 1000,
      },
      stdout: false,
      stderr: false,
    });
    this.worker = worker;
    this.ready = new Promise<void>((resolve, reject) => {
      worker.on(
        'message',
        (msg: { type: string; id?: number; result?: unknown; error?: { name: string; message: string } }) => {
          if (msg.type === 'ready') return resolve();
          if (msg.type === 'init-error') {
            const e = new FunctionError(this.fn.name, 'Runtime.ImportModuleError', msg.error?.message ?? '');
            this.reset(e);
            return reject(e);
          }
          const pending = msg.id === undefined ? undefined : this.pending.get(msg.id);
          if (!pending || msg.id === undefined) return;
          this.pending.delete(msg.id);
          clearTimeout(pending.timer);
          if (msg.error) pending.reject(new FunctionError(this.fn.name, msg.error.name, msg.error.message));
          else pending.resolve(msg.result);
        },
      );
      worker.on('error', (error) => {
        const e = new FunctionError(this.fn.name, 'Runtime.ExitError', error.message);
        reject(e);
        this.reset(e);
      });
      worker.on('exit', (code) => {
        if (this.worker === worker)
          this.reset(new FunctionError(this.fn.name, 'Runtime.ExitError', `exit ${code}`));
      });
    });
    return this.ready;
  }

  private reset(error: Error): void {
    const worker = this.worker;
    this.worker = undefined;
    this.ready = undefined;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(error);
    }
    this.pending.clear();
    void worker?.terminate();
  }

  async invoke(event: unknown): Promise<unknown> {
    await this.start();
    const worker = this.worker;
    if (!worker) throw new FunctionError(this.fn.name, 'Runtime.ExitError', 'environment went away');
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // Only the environment this invocation ran in is replaced, never a newer one.
        if (this.worker !== worker) return;
        this.log(
          `function ${this.fn.logicalId} timed out after ${this.fn.timeoutSeconds}s; environment replaced`,
        );
        this.reset(
          new FunctionError(this.fn.name, 'Sandbox.Timedout', `timed out after ${this.fn.timeoutSeconds}s`),
        );
      }, this.fn.timeoutSeconds * 1000);
      this.pending.set(id, { resolve, reject, timer });
      worker.postMessage({ id, event });
    });
  }

  async close(): Promise<void> {
    const worker = this.worker;
    this.reset(new FunctionError(this.fn.name, 'Runtime.ExitError', 'the local hub is shutting down'));
    await worker?.terminate();
  }
}

/**
 * Runs the stack's Lambda functions in-process, each in worker threads of its own with the
 * environment the template gives it plus the SDK endpoint variables of the local hub.
 */
export class LambdaRunner {
  private readonly environments = new Map<string, Environment>();

  /**
   * @param codeDir where each function's bundled files (`LocalFunction.files`) are written, in a
   * folder per function that becomes its `LAMBDA_TASK_ROOT`, as the bundle's folder is in Lambda.
   * @default no files and no `LAMBDA_TASK_ROOT`
   */
  constructor(
    functions: readonly LocalFunction[],
    projectRoot: string,
    baseEnv: Record<string, string>,
    log: (line: string) => void,
    codeDir?: string,
  ) {
    for (const fn of functions) {
      let env = baseEnv;
      if (codeDir !== undefined) {
        const root = path.join(codeDir, fn.logicalId);
        // Written afresh at every start: the files belong to this template, not to an earlier one.
        rmSync(root, { recursive: true, force: true });
        mkdirSync(root, { recursive: true });
        for (const [name, content] of Object.entries(fn.files)) writeFileSync(path.join(root, name), content);
        env = { ...baseEnv, LAMBDA_TASK_ROOT: root };
      }
      this.environments.set(fn.logicalId, new Environment(fn, projectRoot, env, log));
    }
  }

  /** Invokes a function synchronously (RequestResponse) and returns its result. */
  invoke(logicalId: string, event: unknown): Promise<unknown> {
    const env = this.environments.get(logicalId);
    if (!env) return Promise.reject(new Error(`no function ${logicalId} in the template`));
    return env.invoke(event);
  }

  async close(): Promise<void> {
    await Promise.all([...this.environments.values()].map((e) => e.close()));
  }
}
