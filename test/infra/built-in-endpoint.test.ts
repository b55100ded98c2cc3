import { App, Stack } from 'aws-cdk-lib';
import type { Template } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_C2D_SETTINGS } from '../../functions/core/c2d/config.ts';
import { BuiltInEndpoint } from '../../lib/built-in-endpoint.ts';
import { type HubConfigInput, parseHubConfig } from '../../lib/config.ts';
import type { HubStack } from '../../lib/hub-stack.ts';
import { configError, logicalId, synthHub } from './hub-template.ts';

/** The built-in endpoint stream's properties in a template. */
function builtInStream(template: Template, stack: HubStack): Record<string, unknown> {
  const props: unknown =
    template.findResources('AWS::Kinesis::Stream')[logicalId(stack.builtInEndpoint.stream)]?.Properties;
  if (props === null || typeof props !== 'object') throw new Error('no built-in endpoint stream');
  return props as Record<string, unknown>;
}

describe('built-in endpoint stream', () => {
  const synthed = new Map<string, { template: Template; stack: HubStack }>();
  const configs: Record<string, HubConfigInput> = {
    default: {},
    week: { builtInEndpoint: { retentionDays: 7 } },
    year: { builtInEndpoint: { retentionDays: 365 } },
    provisioned: { builtInEndpoint: { mode: 'provisioned', shardCount: 3 }, maxMessageBytes: 128 * 1024 },
  };
  const hub = (name: string) => {
    const s = synthed.get(name);
    if (s === undefined) throw new Error(`config ${name} was not synthesized`);
    return s;
  };

  beforeAll(() => {
    for (const [name, config] of Object.entries(configs)) {
      const { template, stack } = synthHub(config);
      synthed.set(name, { template, stack });
    }
  });

  it.each(['default', 'week', 'year', 'provisioned'])(
    'is KMS-encrypted with the AWS-managed key (%s)',
    (name) => {
      const { template, stack } = hub(name);
      expect(builtInStream(template, stack).StreamEncryption).toEqual({
        EncryptionType: 'KMS',
        KeyId: 'alias/aws/kinesis',
      });
    },
  );

  it.each([
    ['default', 24],
    ['week', 7 * 24],
    ['year', 365 * 24],
  ])('keeps records retentionDays*24 hours (%s: %i h)', (name, hours) => {
    const { template, stack } = hub(name);
    expect(builtInStream(template, stack).RetentionPeriodHours).toBe(hours);
  });

  it('is on-demand by default, with no shard count', () => {
    const { template, stack } = hub('default');
    const props = builtInStream(template, stack);
    expect(props.StreamModeDetails).toEqual({ StreamMode: 'ON_DEMAND' });
    expect(props.ShardCount).toBeUndefined();
  });

  it('is provisioned with the configured shard count when mode is provisioned', () => {
    const { template, stack } = hub('provisioned');
    const props = builtInStream(template, stack);
    expect(props.StreamModeDetails).toEqual({ StreamMode: 'PROVISIONED' });
    expect(props.ShardCount).toBe(3);
  });

  it('leaves the ingest stream alone: on-demand, a week, encrypted, whatever the built-in config', () => {
    const { template, stack } = hub('provisioned');
    const ingest = template.findResources('AWS::Kinesis::Stream')[logicalId(stack.d2c.ingestStream)];
    expect(ingest?.Properties).toEqual({
      RetentionPeriodHours: 7 * 24,
      StreamEncryption: { EncryptionType: 'KMS', KeyId: 'alias/aws/kinesis' },
      StreamModeDetails: { StreamMode: 'ON_DEMAND' },
    });
  });

  it('passes a configured maxMessageBytes to the router', () => {
    const { template, stack } = hub('provisioned');
    const router = template.findResources('AWS::Lambda::Function')[logicalId(stack.d2c.router.function)];
    expect(router?.Properties?.Environment?.Variables?.MAX_MESSAGE_BYTES).toBe(String(128 * 1024));
  });
});

describe('hub configuration errors', () => {
  it('fills defaults for an absent configuration', () => {
    expect(parseHubConfig(undefined)).toEqual({
      hubName: 'serverless-iot-hub',
      builtInEndpoint: { retentionDays: 1, mode: 'on-demand' },
      maxMessageBytes: 256 * 1024,
      hostName: 'localhost',
      d2cTopicFilter: 'devices/+/messages/events/#',
      basicIngest: false,
      c2d: DEFAULT_C2D_SETTINGS,
      routing: { endpoints: [], routes: [], fallbackRoute: { isEnabled: true }, enrichments: [] },
      registryJobs: { buckets: [], idlePollMs: 2000 },
    });
  });

  it('accepts the retention bounds 1 and 365', () => {
    expect(parseHubConfig({ builtInEndpoint: { retentionDays: 1 } }).builtInEndpoint.retentionDays).toBe(1);
    expect(parseHubConfig({ builtInEndpoint: { retentionDays: 365 } }).builtInEndpoint.retentionDays).toBe(
      365,
    );
  });

  it.each([0, 366, 1.5])('refuses retentionDays %s, naming hub.builtInEndpoint.retentionDays', (days) => {
    const error = configError({ builtInEndpoint: { retentionDays: days } });
    expect(error.name).toBe('HubConfigError');
    expect(error.message).toContain('hub.builtInEndpoint.retentionDays');
  });

  it('refuses provisioned mode without shardCount, naming hub.builtInEndpoint.shardCount', () => {
    const error = configError({ builtInEndpoint: { mode: 'provisioned' } });
    expect(error.message).toMatch(/hub\.builtInEndpoint\.shardCount: required when mode is provisioned/);
  });

  it('refuses a shardCount in on-demand mode, naming hub.builtInEndpoint.shardCount', () => {
    const error = configError({ builtInEndpoint: { mode: 'on-demand', shardCount: 2 } });
    expect(error.message).toMatch(/hub\.builtInEndpoint\.shardCount: only allowed when mode is provisioned/);
  });

  it('refuses an unknown key inside builtInEndpoint, naming its parent path and the key', () => {
    const error = configError({ builtInEndpoint: { retention: 7 } });
    expect(error.message).toContain('hub.builtInEndpoint.retention: unknown key');
  });

  it('refuses an unknown top-level key, naming the key', () => {
    const error = configError({ hubname: 'x-hub' });
    expect(error.message).toContain('hubname');
  });

  it('names an unknown top-level key by its path hub.hubname, not "hub.:"', () => {
    const error = configError({ hubname: 'x-hub' });
    expect(error.message).not.toContain('hub.:');
    expect(error.message).toContain('hub.hubname');
  });

  it('lists every bad field, one per line', () => {
    const error = configError({
      builtInEndpoint: { retentionDays: 366, mode: 'provisioned' },
      maxMessageBytes: 0,
    });
    expect(error.message).toContain('hub.builtInEndpoint.retentionDays');
    expect(error.message).toContain('hub.builtInEndpoint.shardCount');
    expect(error.message).toContain('hub.maxMessageBytes');
    expect(error.message.split('\n')).toHaveLength(4);
  });

  it('refuses shard counts outside 1-500 and message limits above 256 KiB', () => {
    expect(configError({ builtInEndpoint: { mode: 'provisioned', shardCount: 0 } }).message).toContain(
      'hub.builtInEndpoint.shardCount',
    );
    expect(configError({ builtInEndpoint: { mode: 'provisioned', shardCount: 501 } }).message).toContain(
      'hub.builtInEndpoint.shardCount',
    );
    expect(configError({ maxMessageBytes: 256 * 1024 + 1 }).message).toContain('hub.maxMessageBytes');
  });

  it('refuses a bad hub name', () => {
    expect(configError({ hubName: 'a b' }).message).toContain('hub.hubName');
  });

  it('also guards retention in the construct, for callers that bypass parseHubConfig', () => {
    const stack = new Stack(new App(), 'Direct');
    expect(
      () => new BuiltInEndpoint(stack, 'Zero', { config: { retentionDays: 0, mode: 'on-demand' } }),
    ).toThrow(/retention must be 1-365 days, got 0/);
    expect(
      () => new BuiltInEndpoint(stack, 'TooLong', { config: { retentionDays: 366, mode: 'on-demand' } }),
    ).toThrow(/got 366/);
  });
});
