/**
 * Base class of every error the hub raises on purpose. Each subclass has a stable `code` that
 * reaches callers (service API JSON errors, MQTT refusal log lines, dead-letter reasons) and
 * optional context; the edge (HTTP, MQTT, batch) maps it to a status, never the core.
 */
export class HubError extends Error {
  /** Stable machine-readable code, e.g. `InvalidPropertyBag`. */
  readonly code: string;
  /** Values that explain the failure (the bad field, the limit, the id). */
  readonly context: Readonly<Record<string, unknown>>;

  constructor(code: string, message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.context = context;
  }

  /** A JSON-safe view without the stack: what a caller may see. */
  toJSON(): { code: string; message: string; context: Readonly<Record<string, unknown>> } {
    return { code: this.code, message: this.message, context: this.context };
  }
}

/** Input that breaks a documented rule (bad topic, bad property bag, bad body). Maps to 400. */
export class ValidationError extends HubError {
  constructor(code: string, message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(code, message, context, options);
  }
}

/** Input larger than a documented limit. Maps to 413 / a documented drop. */
export class LimitExceededError extends HubError {
  constructor(code: string, message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(code, message, context, options);
  }
}

/** The thing named does not exist. Maps to 404. */
export class NotFoundError extends HubError {
  constructor(code: string, message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(code, message, context, options);
  }
}

/** A conditional write lost a race or an etag did not match. Maps to 409/412. */
export class ConflictError extends HubError {
  constructor(code: string, message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(code, message, context, options);
  }
}

/** A downstream write failed in a way worth retrying (throttling, timeouts, 5xx). */
export class TransientError extends HubError {
  constructor(code: string, message: string, context: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(code, message, context, options);
  }
}
