#!/usr/bin/env -S npx tsx
import { App } from 'aws-cdk-lib';
import { buildHub } from '../lib/app.ts';
import { parseHubConfig } from '../lib/config.ts';

// The only place that reads CDK context: everything below gets typed props.
const app = new App();
buildHub(app, parseHubConfig(app.node.tryGetContext('hub')));
app.synth();
