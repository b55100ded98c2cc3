import { ConflictError, LimitExceededError, NotFoundError } from '../errors.ts';

/**
 * A settlement named a lock token that no longer holds the message: the message was settled,
 * released after its lock expired, redelivered with a new token, expired or purged. Nothing
 * changed. Maps to 412 (IoT Hub answers a stale lock token with PreconditionFailed).
 */
export class StaleLockTokenError extends ConflictError {
  constructor(message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super('StaleLockToken', message, context, options);
  }
}

/** No message exists for the device under that message id or lock token. Maps to 404. */
export class MessageNotFoundError extends NotFoundError {
  constructor(message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super('MessageNotFound', message, context, options);
  }
}

/**
 * An event that the message's current state does not accept (deliver a message that is already
 * locked, expire one that has not expired, anything on a final state). Maps to 409.
 */
export class IllegalTransitionError extends ConflictError {
  constructor(message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super('IllegalTransition', message, context, options);
  }
}

/**
 * A conditional write on the ledger lost a race: another actor changed the message between
 * our read and our write. Nothing was overwritten; re-read and decide again.
 */
export class ConcurrentUpdateError extends ConflictError {
  constructor(message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super('ConcurrentUpdate', message, context, options);
  }
}

/** The device already holds a message with this message id (within the retention window). Maps to 409. */
export class DuplicateMessageIdError extends ConflictError {
  constructor(message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super('DuplicateMessageId', message, context, options);
  }
}

/**
 * The device's queue already holds `maxQueueDepth` messages that are not final. The context names
 * the limit (`limit`, `deviceId`). Maps to 403 like IoT Hub's `DeviceMaximumQueueDepthExceeded`.
 */
export class QueueFullError extends LimitExceededError {
  constructor(message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super('DeviceMaximumQueueDepthExceeded', message, context, options);
  }
}
