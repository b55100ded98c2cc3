import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, type CfnElement, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import type { IConstruct } from 'constructs';
import { vi } from 'vitest';
import { z } from 'zod';
import { buildHub } from '../../lib/app.ts';
import { HubConfigError, type HubConfigInput, parseHubConfig } from '../../lib/config.ts';
import type { HubFunction } from '../../lib/hub-function.ts';
import type { HubStack } from '../../lib/hub-stack.ts';

/** Context that skips NodejsFunction bundling (esbuild) so a synth takes a second or two, not ten. */
export const NO_BUNDLING = { 'aws:cdk:bundling-stacks': [] } as const;

/** A hub stack built the way `bin/app.ts` builds it, and its template. */
export interface SynthedHub {
  readonly app: App;
  readonly stack: HubStack;
  readonly template: Template;
}

/** Builds the hub from raw configuration (as `cdk.json` would give it) without bundling. */
export function synthHub(config: HubConfigInput = {}, outdir?: string): SynthedHub {
  const app = new App({ context: { ...NO_BUNDLING }, ...(outdir === undefined ? {} : { outdir }) });
  const stack = buildHub(app, parseHubConfig(config));
  return { app, stack, template: Template.fromStack(stack) };
}

/** The {@link HubConfigError} that parsing `raw` throws; fails the test when `raw` is accepted. */
export function configError(raw: unknown): HubConfigError {
  try {
    parseHubConfig(raw);
  } catch (error) {
    if (error instanceof HubConfigError) return error;
    throw error;
  }
  throw new Error(`configuration was accepted: ${JSON.stringify(raw)}`);
}

// cdk-nag 3 runs as a CDK validation plugin (`Validations.of(app).addPlugins(...)`): `app.synth()`
// prints each unacknowledged finding, writes `validation-report.json` into the cloud assembly and
// throws `Validation failed` when any plugin reports a failure.
const ReportSchema = z.object({
  pluginReports: z.array(
    z.object({
      pluginName: z.string(),
      conclusion: z.enum(['success', 'failure']),
      violations: z.array(
        z.object({
          ruleName: z.string(),
          severity: z.string(),
          violatingConstructs: z.array(z.object({ constructPath: z.string() })),
        }),
      ),
    }),
  ),
});
/** The validation report cdk-nag writes. */
export type NagReport = z.infer<typeof ReportSchema>;

/** What {@link synthWithNag} saw: the synth's error (if any), the report and its error findings. */
export interface NagResult {
  readonly error: unknown;
  readonly report: NagReport;
  /** `{rule} at {construct path}` for every error-severity finding. */
  readonly findings: readonly string[];
}

/**
 * Builds the hub as `bin/app.ts` does (without bundling) from `config`, lets `extend` add to it, and
 * synthesizes with the cdk-nag plugins, quietly; the cloud assembly is removed afterwards.
 */
export function synthWithNag(
  config: HubConfigInput = {},
  extend: (stack: HubStack) => void = () => {},
): NagResult {
  const outdir = mkdtempSync(join(tmpdir(), 'hub-nag-'));
  try {
    const app = new App({ outdir, context: { ...NO_BUNDLING } });
    extend(buildHub(app, parseHubConfig(config)));
    // The plugin prints its findings; keep the test output readable.
    const quiet = [vi.spyOn(console, 'error'), vi.spyOn(console, 'log'), vi.spyOn(console, 'warn')].map(
      (spy) => spy.mockImplementation(() => {}),
    );
    let error: unknown;
    try {
      app.synth();
    } catch (caught) {
      error = caught;
    } finally {
      for (const spy of quiet) spy.mockRestore();
    }
    const report = ReportSchema.parse(
      JSON.parse(readFileSync(join(outdir, 'validation-report.json'), 'utf8')),
    );
    const findings = report.pluginReports.flatMap((p) =>
      p.violations
        .filter((v) => v.severity === 'error')
        .flatMap((v) => v.violatingConstructs.map((c) => `${v.ruleName} at ${c.constructPath}`)),
    );
    return { error, report, findings };
  } finally {
    rmSync(outdir, { recursive: true, force: true });
  }
}

/** The logical id of a construct's CloudFormation resource (its default child, or itself). */
export function logicalId(construct: IConstruct): string {
  const element = (construct.node.defaultChild ?? construct) as CfnElement;
  return Stack.of(construct).getLogicalId(element);
}

/** The logical id of a hub function's execution role. */
export function roleLogicalId(fn: HubFunction): string {
  const role = fn.function.role;
  if (role === undefined) throw new Error(`${fn.node.path} has no role`);
  return logicalId(role);
}

const StatementSchema = z.object({
  Effect: z.enum(['Allow', 'Deny']),
  Action: z.union([z.string(), z.array(z.string())]),
  Resource: z.unknown(),
});
const PolicyDocumentSchema = z.object({ Statement: z.array(StatementSchema) });
const RefSchema = z.object({ Ref: z.string() });
const PolicyPropsSchema = z.object({
  PolicyDocument: PolicyDocumentSchema,
  Roles: z.array(RefSchema).default([]),
});
const RolePropsSchema = z.object({
  Policies: z.array(z.object({ PolicyDocument: PolicyDocumentSchema })).default([]),
});

/** One IAM statement of the template, flattened, with where it came from. */
export interface FlatStatement {
  /** Logical id of the AWS::IAM::Policy or AWS::IAM::Role holding it. */
  readonly source: string;
  /** Logical ids of the roles it applies to. */
  readonly roles: readonly string[];
  readonly effect: 'Allow' | 'Deny';
  readonly actions: readonly string[];
  /** Each Resource entry as written (a string or an intrinsic). */
  readonly resources: readonly unknown[];
}

const asArray = <T>(value: T | readonly T[]): readonly T[] => (Array.isArray(value) ? value : [value as T]);

/** Every statement of every AWS::IAM::Policy and every AWS::IAM::Role inline policy. */
export function iamStatements(template: Template): FlatStatement[] {
  const out: FlatStatement[] = [];
  for (const [id, resource] of Object.entries(template.findResources('AWS::IAM::Policy'))) {
    const props = PolicyPropsSchema.parse(resource.Properties);
    const roles = props.Roles.map((r) => r.Ref);
    for (const s of props.PolicyDocument.Statement) {
      out.push({
        source: id,
        roles,
        effect: s.Effect,
        actions: asArray(s.Action),
        resources: asArray(s.Resource),
      });
    }
  }
  for (const [id, resource] of Object.entries(template.findResources('AWS::IAM::Role'))) {
    const props = RolePropsSchema.parse(resource.Properties ?? {});
    for (const policy of props.Policies) {
      for (const s of policy.PolicyDocument.Statement) {
        out.push({
          source: id,
          roles: [id],
          effect: s.Effect,
          actions: asArray(s.Action),
          resources: asArray(s.Resource),
        });
      }
    }
  }
  return out;
}

/** Logical ids an intrinsic refers to through `Ref` or `Fn::GetAtt`, anywhere inside it. */
export function referencedIds(value: unknown): string[] {
  if (Array.isArray(value)) return value.flatMap(referencedIds);
  if (value === null || typeof value !== 'object') return [];
  const ids: string[] = [];
  for (const [key, inner] of Object.entries(value)) {
    if (key === 'Ref' && typeof inner === 'string') ids.push(inner);
    else if (key === 'Fn::GetAtt' && Array.isArray(inner) && typeof inner[0] === 'string') ids.push(inner[0]);
    else ids.push(...referencedIds(inner));
  }
  return ids;
}

/** `{ 'Fn::GetAtt': [id, 'Arn'] }` */
export const arnOf = (id: string) => ({ 'Fn::GetAtt': [id, 'Arn'] });
