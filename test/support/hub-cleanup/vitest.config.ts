import { defineConfig } from 'vitest/config';

// The child run of test/integration/hub-cleanup.test.ts: files that leave hubs running in every
// way a test can, with the same global setup as the integration project.
export default defineConfig({
  test: {
    root: new URL('../../..', import.meta.url).pathname,
    include: ['test/support/hub-cleanup/*.leak.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    pool: 'forks',
    maxWorkers: 1,
    hookTimeout: 120_000,
  },
});
