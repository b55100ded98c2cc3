/**
 * The environment the service API's stack gives it, for unit tests: `functions/service-api.ts` builds its
 * default handler at import time. Import this module first (for its side effect), then import the
 * service API dynamically.
 *
 * @example
 * import '../support/service-api-env.ts';
 * const { makeHandler } = await import('../../functions/service-api.ts');
 */
process.env.REGISTRY_TABLE_NAME ??= 'unit-test-registry';
process.env.LEDGER_TABLE_NAME ??= 'unit-test-ledger';
process.env.FEEDBACK_STREAM_NAME ??= 'unit-test-feedback';
process.env.INGEST_STREAM_NAME ??= 'unit-test-ingest';
process.env.REGISTRY_JOBS_TABLE_NAME ??= 'unit-test-registry-jobs';
process.env.REGISTRY_JOBS_BUCKETS ??= 'unit-test-registry-jobs-bucket';
