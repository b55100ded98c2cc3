import * as sqs from 'aws-cdk-lib/aws-sqs';
import { describe, expect, it } from 'vitest';
import { synthWithNag } from './hub-template.ts';

describe('cdk-nag (AwsSolutions and Serverless packs)', () => {
  it('synthesizes the hub with no unacknowledged finding', () => {
    const { error, report, findings } = synthWithNag();
    expect(error).toBeUndefined();
    expect(findings).toEqual([]);
    expect(report.pluginReports.every((p) => p.conclusion === 'success')).toBe(true);
  });

  it('fails the synth on an unencrypted, non-TLS queue and reports AwsSolutions-SQS4 on it', () => {
    const { error, report, findings } = synthWithNag({}, (stack) => {
      new sqs.Queue(stack, 'Bad');
    });
    expect(error).toBeInstanceOf(Error);
    // The message lists the findings when the synth runs outside a terminal (as here), else points at the report.
    expect((error as Error).message).toMatch(/AwsSolutions-SQS4|Validation failed/);
    expect(findings).toContain('AwsSolutions-SQS4 at ServerlessIotHub/Bad/Resource');
    expect(report.pluginReports.find((p) => p.pluginName === 'AwsSolutions')?.conclusion).toBe('failure');
  });
});
