// One Lambda "execution environment": a worker thread with the function's own environment
// variables, which loads the handler module (TypeScript, through tsx) once and runs invocations.
import { randomUUID } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { tsImport } from 'tsx/esm/api';

const { entryUrl, functionName, timeoutMs } = workerData;
let handler;
try {
  const mod = await tsImport(entryUrl, import.meta.url);
  handler = mod.handler;
  if (typeof handler !== 'function') throw new Error(`${entryUrl} does not export a function named handler`);
  parentPort.postMessage({ type: 'ready' });
} catch (error) {
  parentPort.postMessage({
    type: 'init-error',
    error: { name: error.name, message: error.message, stack: error.stack },
  });
}

parentPort.on('message', async ({ id, event }) => {
  const started = Date.now();
  const context = {
    functionName,
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
