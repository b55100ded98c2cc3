/** What the rules engine knows about one MQTT publish when it evaluates a rule or a template. */
export interface IotSqlContext {
  /** The MQTT topic the message was published on. */
  topic: string;
  /** The raw payload bytes. */
  payload: Buffer;
  /** The MQTT client id of the publisher. */
  clientId: string;
  /** The authenticated principal (e.g. device id or certificate id). */
  principal: string;
  /** Epoch milliseconds when the broker received the message. */
  timestamp: number;
  /** Generates the value of `newuuid()` and `traceid()`; injectable for tests. */
  newuuid: () => string;
  /**
   * The MQTT 5 properties of the publish, for `get_mqtt_property()` and `get_user_properties()`;
   * absent for an MQTT 3.1.1 publish (the local broker, aedes, speaks only 3.1.1), where both are Undefined.
   */
  mqtt5?: Mqtt5Properties | undefined;
}

/** The MQTT 5 PUBLISH properties the IoT SQL functions read. */
export interface Mqtt5Properties {
  readonly contentType?: string | undefined;
  readonly correlationData?: Buffer | undefined;
  /** Payload format indicator: 1 = UTF-8 data. */
  readonly payloadFormatIndicator?: 0 | 1 | undefined;
  readonly responseTopic?: string | undefined;
  /** In the order sent; a name may repeat. */
  readonly userProperties?: readonly (readonly [string, string])[] | undefined;
}

const UNPARSED: unique symbol = Symbol('unparsed');

/**
 * Per-message evaluation state. The payload is parsed as JSON at most once, and only when an
 * expression needs it; a payload that is empty or not valid JSON reads as Undefined. Topic levels
 * are split at most once.
 */
export class Env {
  private parsed: unknown = UNPARSED;
  private levels: string[] | undefined;

  constructor(readonly ctx: IotSqlContext) {}

  /** The payload as a JSON value, or undefined when it is empty or not JSON. */
  get doc(): unknown {
    if (this.parsed === UNPARSED) {
      this.parsed = parsePayload(this.ctx.payload);
    }
    return this.parsed;
  }

  /** The topic's levels, split on `/`. */
  get topicLevels(): string[] {
    this.levels ??= this.ctx.topic.split('/');
    return this.levels;
  }
}

function parsePayload(payload: Buffer): unknown {
  if (payload.length === 0) return undefined;
  try {
    return JSON.parse(payload.toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}
