import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { platform, tmpdir } from 'node:os';
import * as path from 'node:path';
import { Arn, AssetStaging, Duration, RemovalPolicy, Stack, Token, Validations } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as kinesis from 'aws-cdk-lib/aws-kinesis';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';

import { ENTRY_METADATA_KEY, FILES_METADATA_KEY, PROJECT_ROOT } from './function-metadata.ts';

export { ENTRY_METADATA_KEY, FILES_METADATA_KEY, PROJECT_ROOT } from './function-metadata.ts';

/** A bundled file's name: a plain name in the code directory, no path. */
const FILE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
/** What the bundle itself writes into the code directory. */
const BUNDLE_OUTPUTS = new Set(['index.mjs', 'index.mjs.map', 'package.json']);

function validateFiles(entry: string, files: Record<string, string>): void {
  for (const [name, content] of Object.entries(files)) {
    if (!FILE_NAME.test(name) || BUNDLE_OUTPUTS.has(name)) {
      throw new Error(
        `hub function ${entry}: file name '${name}' must be a plain name (letters, digits, '.', '_', '-'; ` +
          `no path) and not one the bundle writes (${[...BUNDLE_OUTPUTS].join(', ')})`,
      );
    }
    if (typeof content !== 'string' || Token.isUnresolved(content)) {
      throw new Error(`hub function ${entry}: file '${name}' must be plain content known at synth time`);
    }
  }
}

/** Temp dirs holding files to bundle, removed when the synth process exits. */
const filesDirs = new Set<string>();
function removeFilesDirs(): void {
  for (const dir of filesDirs) rmSync(dir, { recursive: true, force: true });
  filesDirs.clear();
}

/** A shell word for the local bundling shell (bash, or cmd on Windows). */
function shellQuote(value: string): string {
  return platform() === 'win32' ? `"${value}"` : `'${value.replaceAll("'", `'\\''`)}'`;
}

/**
 * `afterBundling` hook that copies `files` into the bundle. The content (possibly 100+ KB) is written
 * to a temp dir when local bundling runs, not put on a command line. Docker bundling (no local
 * esbuild) cannot see that dir: its command fails saying so.
 */
function copyFilesHooks(files: Record<string, string>): nodejs.ICommandHooks {
  let dir: string | undefined;
  return {
    beforeBundling: () => [],
    beforeInstall: () => [],
    afterBundling: (_inputDir, outputDir) => {
      const names = Object.keys(files);
      if (names.length === 0) return [];
      if (outputDir === AssetStaging.BUNDLING_OUTPUT_DIR) {
        return ["echo 'HubFunction files need local bundling: install esbuild (npm ci)' >&2", 'exit 1'];
      }
      if (dir === undefined) {
        dir = mkdtempSync(path.join(tmpdir(), 'hub-function-files-'));
        if (filesDirs.size === 0) process.once('exit', removeFilesDirs);
        filesDirs.add(dir);
        for (const name of names) writeFileSync(path.join(dir, name), files[name] ?? '');
      }
      const from = dir;
      const copy = platform() === 'win32' ? 'copy /y' : 'cp';
      return names.map(
        (name) => `${copy} ${shellQuote(path.join(from, name))} ${shellQuote(path.join(outputDir, name))}`,
      );
    },
  };
}

/** Props of {@link HubFunction}. */
export interface HubFunctionProps {
  /** Handler module, relative to the project root, e.g. `functions/router.ts`. It exports `handler`. */
  readonly entry: string;
  /** What the function does, shown in the console. */
  readonly description: string;
  /** @default 30 seconds */
  readonly timeout?: Duration;
  /** @default 256 MiB */
  readonly memorySize?: number;
  /** Plain configuration values (not resource names: use the bind methods for those). @default none */
  readonly environment?: Record<string, string>;
  /**
   * Files (name → content) bundled next to the handler, in its code directory (`LAMBDA_TASK_ROOT`):
   * configuration too large for the environment. Also recorded in the template (metadata
   * {@link FILES_METADATA_KEY}) for the local hub. Plain names only; content known at synth time.
   * @default none
   */
  readonly files?: Record<string, string>;
}

/**
 * A Node.js Lambda function bundled by the local esbuild, with the conventions every hub
 * function shares: newest Node runtime, ARM, X-Ray tracing, a log group with bounded retention,
 * and `bind*` methods that add a resource's name to the environment and grant exactly what is
 * needed in one call.
 */
export class HubFunction extends Construct {
  readonly function: nodejs.NodejsFunction;

  constructor(scope: Construct, id: string, props: HubFunctionProps) {
    super(scope, id);
    if (!/^functions\/[\w/-]+\.ts$/.test(props.entry)) {
      throw new Error(`hub function entry must be a .ts file under functions/, got '${props.entry}'`);
    }
    const files = { ...props.files };
    validateFiles(props.entry, files);
    const logGroup = new logs.LogGroup(this, 'Logs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    // An own role instead of AWSLambdaBasicExecutionRole: it may write only its own log group.
    const role = new iam.Role(this, 'Role', {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: `Execution role of ${props.entry}`,
    });
    logGroup.grantWrite(role);
    this.function = new nodejs.NodejsFunction(this, 'Function', {
      role,
      loggingFormat: lambda.LoggingFormat.JSON,
      entry: path.join(PROJECT_ROOT, props.entry),
      handler: 'handler',
      description: props.description,
      runtime: lambda.Runtime.NODEJS_24_X,
      architecture: lambda.Architecture.ARM_64,
      timeout: props.timeout ?? Duration.seconds(30),
      memorySize: props.memorySize ?? 256,
      tracing: lambda.Tracing.ACTIVE,
      logGroup,
      environment: { NODE_OPTIONS: '--enable-source-maps', ...props.environment },
      bundling: {
        format: nodejs.OutputFormat.ESM,
        target: 'node22',
        minify: true,
        sourceMap: true,
        // Bundle the SDK too: the code runs against the SDK version it was tested with.
        bundleAwsSDK: true,
        banner: "import { createRequire } from 'module'; const require = createRequire(import.meta.url);",
        commandHooks: copyFilesHooks(files),
      },
      projectRoot: PROJECT_ROOT,
      depsLockFilePath: path.join(PROJECT_ROOT, 'package-lock.json'),
    });
    const cfnFunction = this.function.node.defaultChild as lambda.CfnFunction;
    cfnFunction.addMetadata(ENTRY_METADATA_KEY, props.entry);
    if (Object.keys(files).length > 0) cfnFunction.addMetadata(FILES_METADATA_KEY, files);
    Validations.of(role).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason:
        'X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions; tracing adds them on *',
    });
  }

  /** Adds `envName` = stream name and grants PutRecord(s) on it. */
  bindStreamWrite(envName: string, stream: kinesis.IStream): this {
    this.function.addEnvironment(envName, stream.streamName);
    stream.grantWrite(this.function);
    return this;
  }

  /** Adds `envName` = table name and grants item reads and writes on it. */
  bindTableReadWrite(envName: string, table: dynamodb.ITable): this {
    this.function.addEnvironment(envName, table.tableName);
    table.grantReadWriteData(this.function);
    return this;
  }

  /** Adds `envName` = table name and grants item reads only. */
  bindTableRead(envName: string, table: dynamodb.ITable): this {
    this.function.addEnvironment(envName, table.tableName);
    table.grantReadData(this.function);
    return this;
  }

  /**
   * Grants `iot:Publish` (the IoT data plane's Publish) on the topics matching each pattern. A pattern
   * is the part of the topic ARN after `topic/`, with IAM wildcards (acknowledge those where they are
   * granted, with the reason).
   */
  grantPublish(...topicPatterns: string[]): this {
    if (topicPatterns.length === 0) throw new Error('grantPublish needs at least one topic pattern');
    const stack = Stack.of(this);
    const arns = topicPatterns.map((pattern) =>
      Arn.format({ service: 'iot', resource: 'topic', resourceName: pattern }, stack),
    );
    this.function.addToRolePolicy(new iam.PolicyStatement({ actions: ['iot:Publish'], resources: arns }));
    return this;
  }

  /** Adds `envName` = table name and grants item writes only. */
  bindTableWrite(envName: string, table: dynamodb.ITable): this {
    this.function.addEnvironment(envName, table.tableName);
    table.grantWriteData(this.function);
    return this;
  }
}
