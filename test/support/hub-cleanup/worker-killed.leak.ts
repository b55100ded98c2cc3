import { appendFileSync } from 'node:fs';
import { it } from 'vitest';
import { startHubProcess } from '../hub-process.ts';

// Starts a hub, then its worker dies by SIGKILL: no code of the worker runs after that.
it('loses its worker', async () => {
  const hub = await startHubProcess();
  appendFileSync(process.env.LEAKED_HUBS_FILE ?? '', `${hub.pid}\n`);
  process.kill(process.pid, 'SIGKILL');
}, 120_000);
