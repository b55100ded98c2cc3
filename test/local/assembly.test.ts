import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseHubConfig } from '../../lib/config.ts';
import { PROJECT_ROOT } from '../../lib/function-metadata.ts';
import { assemblyKey, loadHubAssembly } from '../../local/assembly.ts';
import { LambdaRunner } from '../../local/lambda-runner.ts';
import { readTemplate } from '../../local/template.ts';

const dirs: string[] = [];
function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  dirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A cloud assembly as `cdk synth` writes it: one stack, one function whose code is an asset. */
function fakeAssembly(dir: string, withAssets = true): string {
  const template = {
    Resources: {
      Fn: {
        Type: 'AWS::Lambda::Function',
        Properties: { Code: { S3Bucket: 'b', S3Key: 'abc123.zip' }, Handler: 'index.handler' },
        Metadata: { 'serverless-iot-hub:entry': 'functions/router.ts' },
      },
    },
  };
  writeFileSync(path.join(dir, 'Stk.template.json'), JSON.stringify(template));
  writeFileSync(
    path.join(dir, 'manifest.json'),
    JSON.stringify({
      artifacts: {
        'Stk.assets': { type: 'cdk:asset-manifest', properties: { file: 'Stk.assets.json' } },
        Stk: { type: 'aws:cloudformation:stack', properties: { templateFile: 'Stk.template.json' } },
      },
    }),
  );
  if (withAssets) {
    writeFileSync(
      path.join(dir, 'Stk.assets.json'),
      JSON.stringify({
        files: {
          abc123: {
            source: { path: 'asset.abc123', packaging: 'zip' },
            destinations: { 'current_account-current_region': { objectKey: 'abc123.zip' } },
          },
        },
      }),
    );
    mkdirSync(path.join(dir, 'asset.abc123'));
    writeFileSync(
      path.join(dir, 'asset.abc123', 'index.mjs'),
      'export const handler = async () => "bundle";\n',
    );
  }
  return path.join(dir, 'Stk.template.json');
}

describe('loadHubAssembly', () => {
  const config = parseHubConfig({});

  it('--template: a template in a cloud assembly runs its bundles (found through Code.S3Key)', async () => {
    const dir = tempDir('assembly-file-');
    const assembly = await loadHubAssembly({ config, templateFile: fakeAssembly(dir) });
    expect(assembly.source).toBe('file');
    expect(assembly.assetDirOf('Fn')).toBe(path.join(dir, 'asset.abc123'));
    expect(assembly.assetDirOf('Other')).toBeUndefined();
  });

  it('--template: a lone template (synthesized without bundling) has no bundles: sources run', async () => {
    const dir = tempDir('assembly-file-');
    const assembly = await loadHubAssembly({ config, templateFile: fakeAssembly(dir, false) });
    expect(assembly.assetDirOf('Fn')).toBeUndefined();
    expect(assembly.directory).toBeUndefined();
  });

  it('--template: names a missing or malformed file and an asset folder without its bundle', async () => {
    const dir = tempDir('assembly-file-');
    await expect(loadHubAssembly({ config, templateFile: path.join(dir, 'nope.json') })).rejects.toThrow(
      /nope\.json does not exist/,
    );
    writeFileSync(path.join(dir, 'bad.template.json'), '{ not json');
    await expect(
      loadHubAssembly({ config, templateFile: path.join(dir, 'bad.template.json') }),
    ).rejects.toThrow(/bad\.template\.json is not JSON/);
    const file = fakeAssembly(dir);
    rmSync(path.join(dir, 'asset.abc123', 'index.mjs'));
    await expect(loadHubAssembly({ config, templateFile: file })).rejects.toThrow(
      /function Fn: its bundle .* has no index\.mjs/,
    );
  });

  it('reads a cached assembly without synthesizing', async () => {
    const cacheDir = tempDir('assembly-cache-');
    const dir = path.join(cacheDir, `assembly-${assemblyKey(config, { x: 1 })}`);
    mkdirSync(dir);
    fakeAssembly(dir);
    writeFileSync(path.join(dir, 'hub-cache.json'), JSON.stringify({ projectRoot: PROJECT_ROOT }));
    const lines: string[] = [];
    const assembly = await loadHubAssembly({
      config,
      context: { x: 1 },
      cacheDir,
      onProgress: (l) => lines.push(l),
    });
    expect(assembly.source).toBe('hit');
    expect(assembly.directory).toBe(dir);
    expect(assembly.assetDirOf('Fn')).toBe(path.join(dir, 'asset.abc123'));
    expect(lines.join('\n')).toMatch(/cache hit/);
  });

  it('the key changes with the context, the configuration and the project folder', () => {
    const key = assemblyKey(config, {});
    expect(assemblyKey(config, {})).toBe(key);
    expect(assemblyKey(config, { flag: true })).not.toBe(key);
    expect(assemblyKey(parseHubConfig({ hubName: 'other-hub' }), {})).not.toBe(key);
    const otherRoot = tempDir('other-root-');
    writeFileSync(path.join(otherRoot, 'package-lock.json'), '{}');
    expect(assemblyKey(config, {}, otherRoot)).not.toBe(key);
  });

  it('on a miss synthesizes with bundling, caches the assembly, and its bundles run; the next load hits', async () => {
    const cacheDir = tempDir('assembly-cache-');
    const first = await loadHubAssembly({ config, context: {}, cacheDir });
    expect(first.source).toBe('synthesized');
    const model = readTemplate(first.template, 'hub');
    expect(model.functions.length).toBeGreaterThan(3);
    for (const fn of model.functions) {
      const bundle = first.assetDirOf(fn.logicalId);
      expect(bundle).toBeDefined();
      expect(existsSync(path.join(bundle ?? '', 'index.mjs'))).toBe(true);
    }
    // The router's routing.json is in its bundle, as in Lambda.
    const router = model.functions.find((f) => f.entry === 'functions/router.ts');
    expect(existsSync(path.join(first.assetDirOf(router?.logicalId ?? '') ?? '', 'routing.json'))).toBe(true);
    // No temporary folder is left behind.
    expect(readdirSync(cacheDir).filter((n) => n.startsWith('tmp-'))).toEqual([]);

    // The router's bundle runs (it reads routing.json from its LAMBDA_TASK_ROOT while it loads).
    const runner = new LambdaRunner({
      functions: router ? [router] : [],
      projectRoot: PROJECT_ROOT,
      // No AWS call is expected; should one be made, it goes nowhere.
      baseEnv: {
        PATH: process.env.PATH ?? '',
        AWS_REGION: 'us-east-1',
        AWS_ENDPOINT_URL: 'http://127.0.0.1:9',
      },
      log: () => {},
      assetDirOf: first.assetDirOf,
    });
    try {
      expect(await runner.invoke(router?.logicalId ?? '', { Records: [] })).toEqual({
        batchItemFailures: [],
      });
    } finally {
      await runner.close();
    }

    const second = await loadHubAssembly({ config, context: {}, cacheDir });
    expect(second.source).toBe('hit');
    expect(second.directory).toBe(first.directory);
  }, 180_000);
});
