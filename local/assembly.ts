import { createHash, randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';
import type { HubConfig } from '../lib/config.ts';
import { PROJECT_ROOT } from '../lib/function-metadata.ts';
import type { CfnTemplate } from './template.ts';

// The local hub runs what deploys: the cloud assembly `cdk synth` writes, bundles included. Synthesizing
// with bundling takes 10-20 s, so the assembly is cached by a hash of everything it is made from, and a
// warm start reads it without loading aws-cdk-lib at all.

/** The stack template and function bundles the local hub runs. */
export interface HubAssembly {
  readonly template: CfnTemplate;
  /**
   * The folder of a function's bundle (`index.mjs`, its source map, the bundled files), by the
   * function's logical id; undefined when the template came without bundles (synthesized with
   * bundling skipped): the runner then runs the function's source through tsx.
   */
  assetDirOf(logicalId: string): string | undefined;
  /** The cloud assembly directory, or undefined for a lone template file. */
  readonly directory: string | undefined;
  /** 'hit': read from the cache; 'synthesized': made now; 'file': read from `templateFile`. */
  readonly source: 'hit' | 'synthesized' | 'file';
}

/** Options of {@link loadHubAssembly}. */
export interface LoadHubAssemblyOptions {
  /** The parsed hub configuration (cdk.json's `hub` context). */
  readonly config: HubConfig;
  /** cdk.json's whole `context`, as `cdk synth` passes it to the app. @default {} */
  readonly context?: Record<string, unknown>;
  /**
   * A synthesized template to run instead (`--template FILE`). When it sits in a cloud assembly
   * (`cdk synth`'s `cdk.out/ServerlessIotHub.template.json`, next to `ServerlessIotHub.assets.json`),
   * its bundles run; a template synthesized without bundling runs the sources.
   * @default synthesize (or take from the cache) the stack of `config`
   */
  readonly templateFile?: string;
  /**
   * Where assemblies are cached. Shared by every hub of the machine (tests' hubs too), outside any
   * data directory. @default `node_modules/.cache/serverless-iot-hub` in the project
   */
  readonly cacheDir?: string;
  /** How many assemblies of this project the cache keeps (the most recently used). @default 3 */
  readonly keep?: number;
  /** Called with a line saying what happens (cache hit, synthesizing, done in N ms). */
  readonly onProgress?: (message: string) => void;
}

/** The default {@link LoadHubAssemblyOptions.cacheDir}. */
export const DEFAULT_ASSEMBLY_CACHE = path.join(PROJECT_ROOT, 'node_modules', '.cache', 'serverless-iot-hub');

/** Folders whose files the assembly is made from (the app, the constructs, the handlers). */
const SOURCE_DIRS = ['bin', 'lib', 'functions'];
/** Written into a cached assembly: whose it is, so one project's pruning leaves others' alone. */
const CACHE_INFO = 'hub-cache.json';

/**
 * The hub's template and function bundles: from `templateFile` if given, else from the assembly
 * cache, synthesizing with bundling (and caching) on a miss. Concurrent starts are safe: each
 * synthesizes into a temporary folder renamed into place; the loser of a race uses the winner's.
 */
export async function loadHubAssembly(options: LoadHubAssemblyOptions): Promise<HubAssembly> {
  const progress = options.onProgress ?? (() => {});
  if (options.templateFile !== undefined) return readTemplateFile(options.templateFile);

  const cacheDir = options.cacheDir ?? DEFAULT_ASSEMBLY_CACHE;
  const hashStarted = Date.now();
  const key = assemblyKey(options.config, options.context ?? {});
  const dir = path.join(cacheDir, `assembly-${key}`);
  if (existsSync(path.join(dir, CACHE_INFO))) {
    const now = new Date();
    utimesSync(dir, now, now);
    progress(`assembly cache hit ${dir} (hashed sources in ${Date.now() - hashStarted} ms)`);
    return { ...readAssembly(dir), source: 'hit' };
  }

  mkdirSync(cacheDir, { recursive: true });
  const tmp = path.join(cacheDir, `tmp-${key}-${process.pid}-${randomBytes(4).toString('hex')}`);
  const started = Date.now();
  progress(`synthesizing and bundling the stack (cache miss; takes a while) into ${dir}`);
  try {
    const { synthHubAssembly } = await import('./synth.ts');
    synthHubAssembly(options.config, options.context ?? {}, tmp);
    writeFileSync(
      path.join(tmp, CACHE_INFO),
      `${JSON.stringify({ projectRoot: PROJECT_ROOT, createdAt: new Date().toISOString() })}\n`,
    );
    try {
      renameSync(tmp, dir);
    } catch (error) {
      // Another hub finished the same assembly first: use that one.
      if (!existsSync(path.join(dir, CACHE_INFO))) throw error;
      rmSync(tmp, { recursive: true, force: true });
    }
  } catch (error) {
    rmSync(tmp, { recursive: true, force: true });
    throw error;
  }
  progress(`synthesized and bundled in ${Date.now() - started} ms`);
  prune(cacheDir, dir, options.keep ?? 3);
  return { ...readAssembly(dir), source: 'synthesized' };
}

/**
 * Hash of what the assembly is made from: this project's folder (its source maps point there),
 * the context and configuration, `package-lock.json` (aws-cdk-lib, esbuild and the bundled
 * packages) and the contents of `bin/`, `lib/`, `functions/` (contents, not times: a checkout or a
 * touch must not force 15 s of bundling; hashing them takes about 100 ms).
 */
export function assemblyKey(
  config: HubConfig,
  context: Record<string, unknown>,
  root = PROJECT_ROOT,
): string {
  const hash = createHash('sha256');
  hash.update(JSON.stringify({ root, context, config, node: process.version }));
  const add = (file: string) => {
    hash.update(`\0${path.relative(root, file)}\0`);
    hash.update(readFileSync(file));
  };
  add(path.join(root, 'package-lock.json'));
  const walk = (dir: string) => {
    const entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const entry of entries) {
      const file = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(file);
      else if (entry.isFile()) add(file);
    }
  };
  for (const dir of SOURCE_DIRS) if (existsSync(path.join(root, dir))) walk(path.join(root, dir));
  return hash.digest('hex').slice(0, 32);
}

interface AssemblyManifest {
  artifacts?: Record<string, { type: string; properties?: { templateFile?: string } }>;
}
interface AssetManifest {
  files?: Record<
    string,
    { source?: { path?: string }; destinations?: Record<string, { objectKey?: string }> }
  >;
}

/** Reads the (single) stack of the cloud assembly in `dir` and maps its functions to their bundles. */
function readAssembly(dir: string): Omit<HubAssembly, 'source'> {
  const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as AssemblyManifest;
  const stacks = Object.values(manifest.artifacts ?? {}).filter((a) => a.type === 'aws:cloudformation:stack');
  const templateFile = stacks[0]?.properties?.templateFile;
  if (stacks.length !== 1 || templateFile === undefined) {
    throw new Error(`cloud assembly ${dir} must hold exactly one stack, found ${stacks.length}`);
  }
  return fromTemplateFile(path.join(dir, templateFile), dir);
}

/** `--template FILE`: with its assembly's bundles when it has them. */
function readTemplateFile(file: string): HubAssembly {
  if (!existsSync(file)) throw new Error(`template file ${file} does not exist`);
  return { ...fromTemplateFile(file, path.dirname(file)), source: 'file' };
}

function fromTemplateFile(file: string, dir: string): Omit<HubAssembly, 'source'> {
  let template: CfnTemplate;
  try {
    template = JSON.parse(readFileSync(file, 'utf8')) as CfnTemplate;
  } catch (error) {
    throw new Error(`template file ${file} is not JSON: ${(error as Error).message}`);
  }
  if (typeof template?.Resources !== 'object' || template.Resources === null) {
    throw new Error(`template file ${file} has no Resources`);
  }
  // `cdk synth` writes `<Stack>.template.json` next to `<Stack>.assets.json`.
  const assetsFile = file.replace(/\.template\.json$/, '.assets.json');
  const objectKeys = new Map<string, string>();
  if (assetsFile !== file && existsSync(assetsFile)) {
    const assets = JSON.parse(readFileSync(assetsFile, 'utf8')) as AssetManifest;
    for (const asset of Object.values(assets.files ?? {})) {
      const source = asset.source?.path;
      if (source === undefined) continue;
      for (const d of Object.values(asset.destinations ?? {})) {
        if (d.objectKey !== undefined) objectKeys.set(d.objectKey, path.join(dir, source));
      }
    }
  }
  const bundles = new Map<string, string>();
  for (const [id, resource] of Object.entries(template.Resources)) {
    if (resource.Type !== 'AWS::Lambda::Function') continue;
    // The CLI adds `aws:asset:path` (relative to the assembly); the asset manifest maps Code.S3Key.
    const assetPath = resource.Metadata?.['aws:asset:path'];
    const s3Key = (resource.Properties?.Code as { S3Key?: unknown } | undefined)?.S3Key;
    const bundle =
      typeof assetPath === 'string'
        ? path.join(dir, assetPath)
        : typeof s3Key === 'string'
          ? objectKeys.get(s3Key)
          : undefined;
    if (bundle === undefined) continue;
    if (!existsSync(path.join(bundle, 'index.mjs'))) {
      throw new Error(
        `function ${id}: its bundle ${bundle} has no index.mjs (an incomplete cloud assembly?)`,
      );
    }
    bundles.set(id, bundle);
  }
  return { template, assetDirOf: (id) => bundles.get(id), directory: bundles.size > 0 ? dir : undefined };
}

/**
 * Keeps the `keep` most recently used assemblies of this project (and removes those of projects
 * that no longer exist, and temporary folders of synths that died over an hour ago). Other
 * projects' assemblies (other worktrees) are theirs to prune.
 */
function prune(cacheDir: string, current: string, keep: number): void {
  const mine: { dir: string; used: number }[] = [];
  for (const name of readdirSync(cacheDir)) {
    const dir = path.join(cacheDir, name);
    try {
      if (name.startsWith('tmp-')) {
        if (Date.now() - statSync(dir).mtimeMs > 3_600_000) rmSync(dir, { recursive: true, force: true });
        continue;
      }
      if (!name.startsWith('assembly-') || dir === current) continue;
      const info = JSON.parse(readFileSync(path.join(dir, CACHE_INFO), 'utf8')) as { projectRoot?: string };
      if (info.projectRoot === PROJECT_ROOT) mine.push({ dir, used: statSync(dir).mtimeMs });
      else if (typeof info.projectRoot !== 'string' || !existsSync(info.projectRoot)) {
        rmSync(dir, { recursive: true, force: true });
      }
    } catch {
      // Being written or removed by another hub right now: leave it.
    }
  }
  mine.sort((a, b) => b.used - a.used);
  for (const { dir } of mine.slice(Math.max(0, keep - 1))) rmSync(dir, { recursive: true, force: true });
}
