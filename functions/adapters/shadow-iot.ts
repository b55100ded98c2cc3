import {
  DeleteThingShadowCommand,
  GetThingShadowCommand,
  type IoTDataPlaneClient,
  UpdateThingShadowCommand,
} from '@aws-sdk/client-iot-data-plane';
import { TransientError } from '../core/errors.ts';
import {
  ShadowRejectedError,
  ShadowTooLargeError,
  ShadowVersionConflictError,
} from '../core/twins/errors.ts';
import type { JsonObject, ShadowDocument, ShadowStore } from '../core/twins/twin.ts';

const utf8 = new TextDecoder();

function statusOf(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

function parse(payload: Uint8Array | undefined): ShadowDocument {
  return JSON.parse(utf8.decode(payload ?? new Uint8Array())) as ShadowDocument;
}

/**
 * The classic device shadow through the IoT data-plane API (`GetThingShadow`, `UpdateThingShadow`,
 * `DeleteThingShadow`). The same code runs against the local hub's shadow service, which speaks the
 * same REST API. Throttling and 5xx become `TransientError` (`ShadowUnavailable`, 503 at the edge).
 */
export class IotShadowStore implements ShadowStore {
  constructor(private readonly client: IoTDataPlaneClient) {}

  async get(thingName: string): Promise<ShadowDocument | undefined> {
    try {
      const out = await this.client.send(new GetThingShadowCommand({ thingName }));
      return parse(out.payload);
    } catch (error) {
      if ((error as Error).name === 'ResourceNotFoundException') return undefined;
      throw this.mapped(error, thingName);
    }
  }

  async updateDesired(
    thingName: string,
    desired: JsonObject,
    expectedVersion?: number,
  ): Promise<ShadowDocument> {
    const request = {
      state: { desired },
      ...(expectedVersion !== undefined ? { version: expectedVersion } : {}),
    };
    try {
      const out = await this.client.send(
        new UpdateThingShadowCommand({ thingName, payload: Buffer.from(JSON.stringify(request)) }),
      );
      return parse(out.payload);
    } catch (error) {
      const name = (error as Error).name;
      if (name === 'ConflictException' && expectedVersion !== undefined) {
        throw new ShadowVersionConflictError(thingName, expectedVersion, { cause: error });
      }
      if (name === 'RequestEntityTooLargeException') {
        throw new ShadowTooLargeError(thingName, (error as Error).message, { cause: error });
      }
      if (name === 'InvalidRequestException') {
        throw new ShadowRejectedError(thingName, (error as Error).message, { cause: error });
      }
      throw this.mapped(error, thingName);
    }
  }

  async delete(thingName: string): Promise<void> {
    try {
      await this.client.send(new DeleteThingShadowCommand({ thingName }));
    } catch (error) {
      if ((error as Error).name === 'ResourceNotFoundException') return;
      throw this.mapped(error, thingName);
    }
  }

  private mapped(error: unknown, thingName: string): unknown {
    const status = statusOf(error);
    const name = (error as Error).name;
    if (name === 'ThrottlingException' || (status !== undefined && status >= 500) || status === 429) {
      return new TransientError(
        'ShadowUnavailable',
        `the shadow service did not answer for '${thingName}': ${name}`,
        {
          deviceId: thingName,
        },
        { cause: error },
      );
    }
    return error;
  }
}
