import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, Lazy, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import { afterEach, describe, expect, it } from 'vitest';
import { ENTRY_METADATA_KEY, FILES_METADATA_KEY, HubFunction } from '../../lib/hub-function.ts';
import { logicalId, NO_BUNDLING } from './hub-template.ts';

const ENTRY = 'functions/authorizer.ts';

/** A stack with one hub function carrying `files`, synthesized without bundling. */
function withFiles(files?: Record<string, string>) {
  const stack = new Stack(new App({ context: { ...NO_BUNDLING } }), 'Files');
  const fn = new HubFunction(stack, 'Fn', {
    entry: ENTRY,
    description: 'files',
    ...(files ? { files } : {}),
  });
  return { fn, template: Template.fromStack(stack) };
}

function metadataOf(files?: Record<string, string>): Record<string, unknown> | undefined {
  const { fn, template } = withFiles(files);
  return template.findResources('AWS::Lambda::Function')[logicalId(fn.function)]?.Metadata;
}

describe('HubFunction files', () => {
  it('records the files in the function metadata, even when bundling is skipped', () => {
    const files = { 'routing.json': '{"a":1}', 'notes.txt': 'x\ny' };
    expect(metadataOf(files)).toMatchObject({ [ENTRY_METADATA_KEY]: ENTRY, [FILES_METADATA_KEY]: files });
  });

  it('records no files key when there are none', () => {
    expect(Object.keys(metadataOf() ?? {})).not.toContain(FILES_METADATA_KEY);
    expect(Object.keys(metadataOf({}) ?? {})).not.toContain(FILES_METADATA_KEY);
  });

  it.each([
    ['a path', 'config/routing.json'],
    ['a parent path', '../routing.json'],
    ['a backslash path', 'a\\b.json'],
    ['a dot name', '..'],
    ['a hidden name', '.env'],
    ['an empty name', ''],
    ['a space', 'my file.json'],
    ['the bundle itself', 'index.mjs'],
    ['its source map', 'index.mjs.map'],
  ])('refuses %s as a file name', (_what, name) => {
    expect(() => withFiles({ [name]: 'x' })).toThrow(/must be a plain name/);
  });

  it('refuses content that is a deploy-time token', () => {
    expect(() => withFiles({ 'a.json': Lazy.string({ produce: () => 'x' }) })).toThrow(
      /must be plain content known at synth time/,
    );
  });
});

describe('HubFunction files in the cloud bundle', () => {
  const dirs: string[] = [];
  const tmp = process.env.TMPDIR;
  afterEach(() => {
    if (tmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = tmp;
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('copies each file, byte for byte, next to the bundled handler', () => {
    const outdir = mkdtempSync(join(tmpdir(), 'hub-files-out-'));
    dirs.push(outdir);
    // A temp dir whose path needs quoting, for the copy command.
    const awkward = join(mkdtempSync(join(tmpdir(), 'hub-files-tmp-')), "with space and 'quote'");
    dirs.push(join(awkward, '..'));
    mkdirSync(awkward);
    process.env.TMPDIR = awkward;

    // 150 KB, with what a shell would mangle if it were inlined.
    const big = `{"condition":"$body.x > 1 AND \`y\` = '\\"z\\"'"}\n`.repeat(3500);
    const files = { 'routing.json': big, 'other.txt': 'second\n' };
    const app = new App({ outdir });
    const stack = new Stack(app, 'Bundled');
    const fn = new HubFunction(stack, 'Fn', { entry: ENTRY, description: 'files', files });
    app.synth();

    const assetDirs = readdirSync(outdir).filter((d) => d.startsWith('asset.'));
    expect(assetDirs).toHaveLength(1);
    const bundle = join(outdir, assetDirs[0] ?? '');
    expect(readdirSync(bundle).sort()).toEqual(['index.mjs', 'index.mjs.map', 'other.txt', 'routing.json']);
    expect(readFileSync(join(bundle, 'routing.json'), 'utf8')).toBe(big);
    expect(readFileSync(join(bundle, 'other.txt'), 'utf8')).toBe('second\n');
    // The files are part of the asset, so changing one changes the code hash and updates the function.
    const code = (fn.function.node.defaultChild as lambda.CfnFunction).code as { s3Key?: string };
    expect(Stack.of(fn).resolve(code.s3Key)).toContain(assetDirs[0]?.slice('asset.'.length));
    // The content went through the awkward temp dir (written there, copied from there).
    expect(readdirSync(awkward).filter((d) => d.startsWith('hub-function-files-'))).toHaveLength(1);
  });
});
