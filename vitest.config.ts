import { defineConfig } from 'vitest/config';

// Two projects: `unit` (core, infra and local-service tests, in-process and fast) and
// `integration` (each file drives real hub processes). `npx vitest run --project unit` is the
// quick loop; `npm test` runs both.
export default defineConfig({
  test: {
    pool: 'forks',
    // Two cores: more workers only queue on the CPU (and a hub start gets slower, not faster).
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts', 'test/infra/**/*.test.ts', 'test/local/**/*.test.ts'],
          testTimeout: 60_000,
          hookTimeout: 120_000,
        },
      },
      {
        extends: true,
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          // A crash test starts two hubs; on a busy 2-core machine one start alone took 25 s, so 60 s
          // timed out tests that were not slow, only queued behind other processes for the CPU.
          testTimeout: 120_000,
          hookTimeout: 120_000,
          // Records every hub's process group and kills what is left at the end (test/support/process-groups.ts).
          globalSetup: ['test/support/global-setup.ts'],
          // A worker keeps its modules from file to file, so the shared hub (test/support/shared-hub.ts)
          // serves every file the worker runs instead of one hub start per file.
          isolate: false,
        },
      },
    ],
  },
});
