import { appendFileSync } from 'node:fs';
import { beforeAll, expect, it } from 'vitest';
import { startHubProcess } from '../hub-process.ts';

// Starts a hub and never stops it; then one test fails and one times out.
beforeAll(async () => {
  const hub = await startHubProcess();
  appendFileSync(process.env.LEAKED_HUBS_FILE ?? '', `${hub.pid}\n`);
});

it('fails', () => {
  expect('the hub').toBe('stopped');
});

it('times out', async () => {
  await new Promise(() => {});
}, 500);
