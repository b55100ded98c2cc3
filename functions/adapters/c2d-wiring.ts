import { type C2dSettings, c2dSettingsFromEnv } from '../core/c2d/config.ts';
import { C2dDelivery } from '../core/c2d/delivery.ts';
import { requireEnv } from '../core/env.ts';
import type { Log } from '../core/ports.ts';
import { dynamoDocumentClient, iotDataClient, kinesisClient } from './aws-clients.ts';
import { feedbackToStream } from './feedback-stream.ts';
import { IotDevicePublisher } from './iot-publisher.ts';
import { KinesisStreamSink } from './kinesis-sink.ts';
import { DynamoDbDeliveryLedger } from './ledger-dynamodb.ts';

/** The C2D parts every C2D entry point builds the same way from its environment. */
export interface C2dParts {
  readonly settings: C2dSettings;
  readonly ledger: DynamoDbDeliveryLedger;
  readonly delivery: C2dDelivery;
}

/**
 * Builds the ledger (LEDGER_TABLE_NAME, feedback to FEEDBACK_STREAM_NAME) and the delivery over the
 * IoT data plane from the environment the stack gives C2D functions (C2D_SETTINGS for the settings).
 */
export function c2dFromEnv(env: NodeJS.ProcessEnv, log: Log): C2dParts {
  const settings = c2dSettingsFromEnv(env);
  const ledger = new DynamoDbDeliveryLedger({
    client: dynamoDocumentClient(),
    tableName: requireEnv(env, 'LEDGER_TABLE_NAME'),
    feedbackSink: feedbackToStream(
      new KinesisStreamSink(kinesisClient(), requireEnv(env, 'FEEDBACK_STREAM_NAME')),
    ),
  });
  const delivery = new C2dDelivery({
    ledger,
    publisher: new IotDevicePublisher(iotDataClient()),
    settings,
    log,
  });
  return { settings, ledger, delivery };
}
