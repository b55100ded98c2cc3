import { ConflictError, LimitExceededError, ValidationError } from '../errors.ts';

/** The shadow was updated by someone else since the version the caller expected. Maps to 412. */
export class ShadowVersionConflictError extends ConflictError {
  constructor(thingName: string, expectedVersion: number, options?: ErrorOptions) {
    super(
      'PreconditionFailed',
      `the twin of '${thingName}' changed: its desired properties are no longer at version ${expectedVersion}`,
      { deviceId: thingName, expectedVersion },
      options,
    );
  }
}

/** The shadow service refused a document (too deep, invalid). Maps to 400. */
export class ShadowRejectedError extends ValidationError {
  constructor(thingName: string, reason: string, options?: ErrorOptions) {
    super(
      'InvalidTwinPatch',
      `properties.desired: the shadow of '${thingName}' refused it: ${reason}`,
      {
        field: 'properties.desired',
        deviceId: thingName,
      },
      options,
    );
  }
}

/** The shadow would exceed its size limit (8 KB of desired and reported state). Maps to 400, as IoT Hub answers an oversized twin. */
export class ShadowTooLargeError extends LimitExceededError {
  constructor(thingName: string, reason: string, options?: ErrorOptions) {
    super(
      'TwinTooLarge',
      `properties.desired: the twin of '${thingName}' would exceed the shadow's 8 KB of desired and reported state: ${reason}`,
      { field: 'properties.desired', deviceId: thingName, limit: 8192 },
      options,
    );
  }
}

/** Tags were written by someone else since they were read. Maps to 412. */
export class TagsConflictError extends ConflictError {
  constructor(deviceId: string, options?: ErrorOptions) {
    super(
      'PreconditionFailed',
      `the tags of '${deviceId}' changed while they were being written`,
      { deviceId },
      options,
    );
  }
}
