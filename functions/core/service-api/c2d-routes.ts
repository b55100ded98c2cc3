import { z } from 'zod';
import type { C2dSettings } from '../c2d/config.ts';
import { assertDeliverable, type C2dDelivery } from '../c2d/delivery.ts';
import { MessageNotFoundError } from '../c2d/errors.ts';
import type { DeliveryLedger } from '../c2d/ledger.ts';
import { type C2dMessage, createMessage, parseSendRequest } from '../c2d/message.ts';
import { ValidationError } from '../errors.ts';
import { validateDeviceId } from '../identity/device-id.ts';
import { DeviceNotFoundError } from '../identity/errors.ts';
import type { DeviceRegistry } from '../identity/registry.ts';
import type { Log } from '../ports.ts';
import { jsonResponse, parseJsonBody, type RouteEntry } from './http.ts';

/** What {@link c2dRoutes} needs. */
export interface C2dRouteDeps {
  readonly registry: Pick<DeviceRegistry, 'get'>;
  readonly ledger: DeliveryLedger;
  /** Accepts a send and delivers it at once when the device is connected. */
  readonly delivery: Pick<C2dDelivery, 'send'>;
  readonly settings: Pick<C2dSettings, 'defaultTtlMs' | 'maxDeliveryCount' | 'maxQueueDepth'>;
  readonly log: Log;
  /** @default Date.now */
  readonly now?: () => number;
}

/** Most feedback records one read returns. */
export const FEEDBACK_MAX_LIMIT = 100;
/** Most feedback ids one acknowledgement takes. */
export const ACK_MAX_IDS = 100;

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** The status of one C2D message, as `GET /devices/{id}/messages/deviceBound/{messageId}` prints it. */
export function toMessageStatus(message: C2dMessage): Record<string, unknown> {
  const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());
  return {
    deviceId: message.deviceId,
    messageId: message.messageId,
    state: message.state,
    deliveryCount: message.deliveryCount,
    maxDeliveryCount: message.maxDeliveryCount,
    ack: message.ack,
    enqueuedTimeUtc: iso(message.enqueuedAt),
    expiryTimeUtc: iso(message.expiresAt),
    ...(message.lockedUntil === undefined ? {} : { lockedUntilUtc: iso(message.lockedUntil) }),
    ...(message.finalAt === undefined ? {} : { finalTimeUtc: iso(message.finalAt) }),
    ...(message.correlationId === undefined ? {} : { correlationId: message.correlationId }),
  };
}

/**
 * Turns the JSON send body into a send request: `body` is text, or base64 with `"bodyEncoding": "base64"`
 * (for bytes that are not UTF-8); the other fields are {@link parseSendRequest}'s.
 */
function sendRequestOf(json: unknown): ReturnType<typeof parseSendRequest> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new ValidationError('InvalidC2dMessage', 'body: must be a JSON object', { field: 'body' });
  }
  const { bodyEncoding, ...rest } = json as Record<string, unknown>;
  if (bodyEncoding === undefined || bodyEncoding === 'utf8') return parseSendRequest(rest);
  if (bodyEncoding !== 'base64') {
    throw new ValidationError('InvalidC2dMessage', "bodyEncoding: must be 'utf8' or 'base64'", {
      field: 'bodyEncoding',
    });
  }
  if (typeof rest.body !== 'string' || !BASE64.test(rest.body)) {
    throw new ValidationError('InvalidC2dMessage', 'body: must be base64 when bodyEncoding is base64', {
      field: 'body',
    });
  }
  return parseSendRequest({ ...rest, body: new Uint8Array(Buffer.from(rest.body, 'base64')) });
}

function queryInt(value: string | undefined, field: string, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > max) {
    throw new ValidationError('InvalidQuery', `${field}: must be an integer from 1 to ${max}`, { field });
  }
  return n;
}

const ackBodySchema = z.strictObject({ ids: z.array(z.string().min(1)).min(1).max(ACK_MAX_IDS) });

/**
 * Cloud-to-device routes of the service API:
 *
 * | request | answer |
 * | --- | --- |
 * | `POST /devices/{id}/messages/deviceBound` (JSON: `body`, `bodyEncoding`, `messageId`, `correlationId`, `userId`, `contentType`, `contentEncoding`, `properties`, `ttlMs` or `expiryTimeUtc`, `ack`) | 201 with the message status and a `location`; 404 unknown device; 403 `DeviceMaximumQueueDepthExceeded`; 409 `DuplicateMessageId`; 400 naming the bad field |
 * | `GET /devices/{id}/messages/deviceBound/{messageId}` | 200 the message's state, delivery count and times (final states are kept for a day) |
 * | `DELETE /devices/{id}/commands` | 200 `{ deviceId, totalMessagesPurged }` (IoT Hub's PurgeMessageQueueResult) |
 * | `GET /messages/serviceBound/feedback?limit=&cursor=` | 200 `{ records, cursor }`: unacknowledged feedback records |
 * | `POST /messages/serviceBound/feedback/acknowledge` `{ ids }` | 200 `{ acknowledged }`: handled records are removed |
 */
export function c2dRoutes(deps: C2dRouteDeps): RouteEntry[] {
  const now = deps.now ?? Date.now;

  const requireDevice = async (id: string) => {
    validateDeviceId(id);
    const device = await deps.registry.get(id);
    if (device === undefined) throw new DeviceNotFoundError(id);
    return device;
  };

  return [
    {
      method: 'POST',
      pattern: '/devices/{id}/messages/deviceBound',
      handle: async (request, { id }) => {
        const deviceId = id!;
        const sendRequest = sendRequestOf(parseJsonBody(request));
        const device = await requireDevice(deviceId);
        const message = createMessage(deviceId, sendRequest, { now: now(), config: deps.settings });
        assertDeliverable(message);
        // The answer is built from the message as the send wrote (and maybe locked) it: no read back.
        const stored = await deps.delivery.send(deviceId, message, {
          maxQueueDepth: deps.settings.maxQueueDepth,
          connected: device.connectionState === 'Connected',
        });
        return jsonResponse(201, toMessageStatus(stored), {
          location: `/devices/${encodeURIComponent(deviceId)}/messages/deviceBound/${encodeURIComponent(message.messageId)}`,
        });
      },
    },
    {
      method: 'GET',
      pattern: '/devices/{id}/messages/deviceBound/{messageId}',
      handle: async (_request, { id, messageId }) => {
        validateDeviceId(id!);
        const message = await deps.ledger.get(id!, messageId!);
        if (message === undefined) {
          throw new MessageNotFoundError(`device '${id}' has no message '${messageId}'`, { deviceId: id });
        }
        return jsonResponse(200, toMessageStatus(message));
      },
    },
    {
      method: 'DELETE',
      pattern: '/devices/{id}/commands',
      handle: async (_request, { id }) => {
        await requireDevice(id!);
        const result = await deps.ledger.purge(id!, now());
        return jsonResponse(200, { deviceId: id, totalMessagesPurged: result.purged });
      },
    },
    {
      method: 'GET',
      pattern: '/messages/serviceBound/feedback',
      handle: async (request) => {
        const limit = queryInt(request.query.limit, 'limit', FEEDBACK_MAX_LIMIT, FEEDBACK_MAX_LIMIT);
        const cursor = request.query.cursor;
        const page = await deps.ledger.readFeedback(cursor === undefined ? { limit } : { limit, cursor });
        return jsonResponse(200, page);
      },
    },
    {
      method: 'POST',
      pattern: '/messages/serviceBound/feedback/acknowledge',
      handle: async (request) => {
        const parsed = ackBodySchema.safeParse(parseJsonBody(request));
        if (!parsed.success) {
          const issue = parsed.error.issues[0];
          const field = issue && issue.path.length > 0 ? issue.path.map(String).join('.') : 'body';
          throw new ValidationError('InvalidRequestBody', `${field}: ${issue?.message ?? 'is invalid'}`, {
            field,
          });
        }
        const acknowledged = await deps.ledger.acknowledgeFeedback(parsed.data.ids);
        return jsonResponse(200, { acknowledged });
      },
    },
  ];
}
