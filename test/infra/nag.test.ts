import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App } from 'aws-cdk-lib';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import { buildHub } from '../../lib/app.ts';
import { parseHubConfig } from '../../lib/config.ts';
import { NO_BUNDLING } from './hub-template.ts';

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
type Report = z.infer<typeof ReportSchema>;

const outdirs: string[] = [];
afterAll(() => {
  for (const dir of outdirs) rmSync(dir, { recursive: true, force: true });
});

/** Builds the hub as `bin/app.ts` does (without bundling), lets `extend` add to it, and synthesizes. */
function synthWithNag(extend: (stack: ReturnType<typeof buildHub>) => void = () => {}): {
  error: unknown;
  report: Report;
} {
  const outdir = mkdtempSync(join(tmpdir(), 'hub-nag-'));
  outdirs.push(outdir);
  const app = new App({ outdir, context: { ...NO_BUNDLING } });
  extend(buildHub(app, parseHubConfig({})));
  // The plugin prints its findings; keep the test output readable.
  const quiet = [vi.spyOn(console, 'error'), vi.spyOn(console, 'log'), vi.spyOn(console, 'warn')].map((s) =>
    s.mockImplementation(() => {}),
  );
  let error: unknown;
  try {
    app.synth();
  } catch (caught) {
    error = caught;
  } finally {
    for (const spy of quiet) spy.mockRestore();
  }
  const report = ReportSchema.parse(JSON.parse(readFileSync(join(outdir, 'validation-report.json'), 'utf8')));
  return { error, report };
}

const errorFindings = (report: Report) =>
  report.pluginReports.flatMap((p) =>
    p.violations
      .filter((v) => v.severity === 'error')
      .flatMap((v) => v.violatingConstructs.map((c) => `${v.ruleName} at ${c.constructPath}`)),
  );

describe('cdk-nag (AwsSolutions and Serverless packs)', () => {
  it('synthesizes the hub with no unacknowledged finding', () => {
    const { error, report } = synthWithNag();
    expect(error).toBeUndefined();
    expect(errorFindings(report)).toEqual([]);
    expect(report.pluginReports.every((p) => p.conclusion === 'success')).toBe(true);
  });

  it('fails the synth on an unencrypted, non-TLS queue and reports AwsSolutions-SQS4 on it', () => {
    const { error, report } = synthWithNag((stack) => {
      new sqs.Queue(stack, 'Bad');
    });
    expect(error).toBeInstanceOf(Error);
    // The message lists the findings when the synth runs outside a terminal (as here), else points at the report.
    expect((error as Error).message).toMatch(/AwsSolutions-SQS4|Validation failed/);
    expect(errorFindings(report)).toContain('AwsSolutions-SQS4 at ServerlessIotHub/Bad/Resource');
    expect(report.pluginReports.find((p) => p.pluginName === 'AwsSolutions')?.conclusion).toBe('failure');
  });
});
