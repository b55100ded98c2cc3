import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { App } from 'aws-cdk-lib';
import { buildHub, HUB_STACK_ID } from '../lib/app.ts';
import type { HubConfig } from '../lib/config.ts';
import type { CfnTemplate } from './template.ts';

/**
 * Synthesizes the hub stack in-process, exactly as `cdk synth` does (same `buildHub`, same
 * cdk-nag checks) but without bundling the functions: a quick template for tests that read it.
 * The local hub runs the bundles instead (see `loadHubAssembly` in `local/assembly.ts`).
 */
export function synthHubTemplate(config: HubConfig, context: Record<string, unknown> = {}): CfnTemplate {
  const outdir = mkdtempSync(path.join(tmpdir(), 'hub-synth-'));
  try {
    const app = new App({ outdir, context: { ...context, 'aws:cdk:bundling-stacks': [] } });
    buildHub(app, config);
    const assembly = app.synth();
    return assembly.getStackByName(HUB_STACK_ID).template as CfnTemplate;
  } finally {
    rmSync(outdir, { recursive: true, force: true });
  }
}

/**
 * Synthesizes the hub stack into `outdir` as `cdk synth` does, WITH bundling (NodejsFunction bundles
 * each function with the local esbuild): a cloud assembly whose `asset.<hash>/` folders are what
 * deploys. Loaded lazily by `local/assembly.ts`, only when its cache misses.
 */
export function synthHubAssembly(config: HubConfig, context: Record<string, unknown>, outdir: string): void {
  const app = new App({ outdir, context });
  buildHub(app, config);
  app.synth();
}
