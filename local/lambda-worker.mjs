// One Lambda execution environment: a worker thread with the function's own environment variables,
// which loads the handler module once and runs one invocation at a time (the runner sends the next
// only after this one answered). It loads either the bundle `cdk synth` built (plain import() of the
// asset's index.mjs, what Lambda runs) or, for a template synthesized without bundling, the
// TypeScript source through tsx.
import { randomUUID } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';

const { mode, moduleUrl, functionName, functionArn, timeoutMs, sourceMaps } = workerData;
// NODE_OPTIONS is not read by worker threads: honour the template's --enable-source-maps here, so a
// bundle's stack traces name the TypeScript sources as they do in Lambda.
if (sourceMaps) process.setSourceMapsEnabled(true);

let handler;
try {
  const mod =
    mode === 'bundle'
      ? await import(moduleUrl)
      : await (await import('tsx/esm/api')).tsImport(moduleUrl, import.meta.url);
  handler = mod.handler;
  if (typeof handler !== 'function') throw new Error(`${moduleUrl} does not export a function named handler`);
  parentPort.postMessage({ type: 'ready' });
} catch (error) {
  parentPort.postMessage({
    type: 'init-error',
    error: { name: error?.name ?? 'Error', message: error?.message ?? String(error), stack: error?.stack },
  });
}

parentPort.on('message', async ({ id, event }) => {
  const started = Date.now();
  const context = {
    functionName,
    // What Lambda passes: the custom authorizer takes its policy ARNs' partition, region and account from it.
    invokedFunctionArn: functionArn,
    awsRequestId: randomUUID(),
    getRemainingTimeInMillis: () => Math.max(0, timeoutMs - (Date.now() - started)),
    callbackWaitsForEmptyEventLoop: false,
  };
  try {
    const result = await handler(event, context);
    parentPort.postMessage({ type: 'result', id, result });
  } catch (error) {
    parentPort.postMessage({
      type: 'result',
      id,
      error: { name: error?.name ?? 'Error', message: error?.message ?? String(error), stack: error?.stack },
    });
  }
});
