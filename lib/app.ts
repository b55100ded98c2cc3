import { type App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks, ServerlessChecks } from 'cdk-nag';
import type { HubConfig } from './config.ts';
import { HubStack } from './hub-stack.ts';

/** The stack id of the hub, used by `cdk deploy` and by the local hub to find the template. */
export const HUB_STACK_ID = 'ServerlessIotHub';

/**
 * Adds the hub stack to an app and applies cdk-nag's AwsSolutions and Serverless packs, so every
 * synth (`cdk synth`, the local hub, the infra tests) reports unacknowledged findings as errors.
 */
export function buildHub(app: App, config: HubConfig, stackId = HUB_STACK_ID): HubStack {
  const stack = new HubStack(app, stackId, {
    config,
    description: `serverless-iot-hub '${config.hubName}': Azure IoT Hub's messaging model on AWS`,
  });
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app), new ServerlessChecks(app));
  return stack;
}
