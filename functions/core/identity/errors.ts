import { ConflictError, NotFoundError } from '../errors.ts';

/** No device with this id is registered. Code `DeviceNotFound` (IoT Hub's code); maps to 404. */
export class DeviceNotFoundError extends NotFoundError {
  constructor(deviceId: string, options?: ErrorOptions) {
    super('DeviceNotFound', `device '${deviceId}' is not registered`, { deviceId }, options);
  }
}

/** A create met a device with the same id. Code `DeviceAlreadyExists` (IoT Hub's code); maps to 409. */
export class DeviceAlreadyExistsError extends ConflictError {
  constructor(deviceId: string, options?: ErrorOptions) {
    super('DeviceAlreadyExists', `device '${deviceId}' already exists`, { deviceId }, options);
  }
}

/**
 * An `If-Match` etag did not match the stored one (or a concurrent write won the race).
 * Code `PreconditionFailed`; maps to 412 at the edge, unlike the 409 of {@link DeviceAlreadyExistsError}.
 */
export class PreconditionFailedError extends ConflictError {
  constructor(deviceId: string, ifMatch: string, currentEtag: string | undefined, options?: ErrorOptions) {
    super(
      'PreconditionFailed',
      `device '${deviceId}' has changed: If-Match '${ifMatch}' does not match its current etag`,
      { deviceId, ifMatch, currentEtag },
      options,
    );
  }
}
