/**
 * The local IoT Core message bus: the one path every publish takes, whichever door it came in by.
 *
 *   publish(message, from)
 *     1. authorize   a device's publish: topic name rules, its policy documents' iot:Publish, size, retain rules
 *     2. rules       every matching IoT rule runs its actions; resolves once each action made it durable
 *     3. subscribers the broker's MQTT subscribers (not for Basic Ingest topics, which reach rules only)
 *     4. shadows     a Device Shadow request topic (`$aws/things/{thing}/shadow/...get|update|delete`)
 *
 * The adapters are the front doors and the services that publish: the MQTT broker (TCP, TLS, WebSocket),
 * the IoT data plane's Publish, HTTPS publish, the Device Shadow service's answers, the rules' republish
 * action and the lifecycle events. For an MQTT device publish, aedes itself forwards the packet to its
 * subscribers once the broker's `authorizePublish` hook resolves (`transportDelivers`): that is step 3.
 *
 * Step 2 comes before the publisher is acknowledged (PUBACK, HTTP 200): a message that got an
 * acknowledgement is already on the ingest stream or in the dead-letter table, even if the hub is killed
 * right after. IoT Core acknowledges before its rules run; locally the stricter order keeps the
 * at-least-once tests honest.
 */
import type { ConnectionPolicy } from './iot-policy.ts';
import type { IngestInput } from './rules-engine.ts';
import { topicNameProblem } from './topic-name.ts';

/** Who a connected device is, as the authenticate step established it. */
export interface Identity {
  /** The device id: the only id the client may publish or subscribe under. */
  readonly deviceId: string;
  /** What the rules see as `principal()`. */
  readonly principal: string;
  /** When the credential expires; the connection is closed then, as IoT Hub does. */
  readonly expiresAt?: Date;
  /**
   * The IoT policy documents of the connection (the custom authorizer's answer, or the thing policy of an
   * X.509 certificate), bound to it: when present, they alone decide `iot:Publish` (and the broker's
   * connect, subscribe and receive). Without it (HTTPS publish, a stale will) {@link BusOptions.policy} does.
   */
  readonly policy?: ConnectionPolicy;
}

/** Who publishes: a device (authorized by its policy) or the service itself (trusted). */
export type Publisher =
  | { readonly kind: 'device'; readonly identity: Identity }
  /** `iot` for the broker's own messages (shadow answers, lifecycle events), `dataplane` for the Publish API. */
  | { readonly kind: 'service'; readonly principal: 'iot' | 'dataplane' };

/** One publish. */
export interface BusMessage {
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 0 | 1;
  readonly retain?: boolean;
  /** MQTT 5 properties (HTTPS publish carries them; the local broker speaks MQTT 3.1.1). */
  readonly mqtt5?: IngestInput['mqtt5'];
}

/** The broker's side: delivery to MQTT subscribers. */
export interface Subscribers {
  deliver(message: BusMessage): Promise<void>;
}

/** The rules engine's side. */
export interface Rules {
  ingest(input: IngestInput): Promise<number>;
}

/** The Device Shadow service's side: requests published on `$aws/things/{thing}/shadow/...`. */
export interface ShadowRequests {
  handleMqtt(topic: string, payload: Buffer): Promise<unknown>;
}

/** Decides what a device may publish to; undefined when allowed, else why not. */
export type PublishPolicy = (identity: Identity, topic: string) => string | undefined;

/** A device publish the front door must refuse (the MQTT connection is closed, HTTP answers 4xx). */
export class PublishRefusedError extends Error {
  constructor(
    /** `topic` (not a topic name), `policy` (not the device's topic), `size`, `retain`. */
    readonly kind: 'topic' | 'policy' | 'size' | 'retain',
    message: string,
  ) {
    super(message);
    this.name = 'PublishRefusedError';
  }
}

/** Options of {@link IotCoreBus}. */
export interface BusOptions {
  /** What a device may publish to when its identity carries no {@link Identity.policy}. */
  readonly policy: PublishPolicy;
  /** Largest payload a device may publish. */
  readonly maxMessageBytes: number;
  /**
   * Largest retained payload. IoT Core keeps retained messages up to its message size limit, 128 KB.
   * @default 131072
   */
  readonly maxRetainedBytes?: number;
  readonly log: (line: string) => void;
}

/** Options of one {@link IotCoreBus.publish}. */
export interface PublishOptions {
  /** The transport forwards to subscribers itself (aedes after `authorizePublish`). @default false */
  readonly transportDelivers?: boolean;
  /**
   * Skip the rules: the rules' own republish action, whose messages do not re-enter the rules locally, so a
   * rule that republishes onto a topic it reads cannot loop the hub. @default false
   */
  readonly skipRules?: boolean;
}

const SHADOW_REQUEST = /^\$aws\/things\/[^/]+\/shadow\/(?:name\/[^/]+\/)?(?:get|update|delete)$/;
const BASIC_INGEST = /^\$aws\/rules\//;
const NO_SUBSCRIBERS: Subscribers = { deliver: async () => undefined };

/** See the module comment. */
export class IotCoreBus {
  private rules: Rules | undefined;
  private shadows: ShadowRequests | undefined;
  private subscribers: Subscribers = NO_SUBSCRIBERS;

  constructor(private readonly options: BusOptions) {}

  /**
   * Connects the services the bus hands messages to. The broker connects its subscribers once it listens;
   * before that no client can have subscribed, so a publish reaches nobody, as on a broker with no clients.
   */
  attach(ports: { rules?: Rules; shadows?: ShadowRequests; subscribers?: Subscribers }): void {
    if (ports.rules) this.rules = ports.rules;
    if (ports.shadows) this.shadows = ports.shadows;
    if (ports.subscribers) this.subscribers = ports.subscribers;
  }

  /** Step 1 alone: throws {@link PublishRefusedError} for what a device may not publish. */
  authorize(message: BusMessage, identity: Identity): void {
    const { topic } = message;
    const problem = topicNameProblem(topic);
    if (problem) throw new PublishRefusedError('topic', `device '${identity.deviceId}': ${problem}`);
    if (identity.policy) {
      const decision = identity.policy.authorize('iot:Publish', topic);
      if (!decision.allowed) {
        throw new PublishRefusedError(
          'policy',
          `device '${identity.deviceId}' may not publish on '${topic}': ${decision.reason}`,
        );
      }
    } else {
      const denied = this.options.policy(identity, topic);
      if (denied) throw new PublishRefusedError('policy', denied);
    }
    const bytes = message.payload.length;
    if (bytes > this.options.maxMessageBytes) {
      throw new PublishRefusedError(
        'size',
        `device '${identity.deviceId}' sent ${bytes} bytes on '${topic}'; the limit is ${this.options.maxMessageBytes}`,
      );
    }
    const retainedLimit = this.options.maxRetainedBytes ?? 131_072;
    if (message.retain && !this.mayRetain(identity, topic)) {
      throw new PublishRefusedError(
        'retain',
        `device '${identity.deviceId}' sent a retained message on '${topic}'; its policy grants iot:RetainPublish on devices/${identity.deviceId}/* only`,
      );
    }
    if (message.retain && bytes > retainedLimit) {
      throw new PublishRefusedError(
        'retain',
        `device '${identity.deviceId}' sent a retained message of ${bytes} bytes on '${topic}'; IoT Core keeps retained messages up to ${retainedLimit} bytes`,
      );
    }
  }

  /** `iot:RetainPublish`: the connection's policy, else (no documents) its own `devices/{id}/` topics. */
  private mayRetain(identity: Identity, topic: string): boolean {
    return identity.policy
      ? identity.policy.authorize('iot:RetainPublish', topic).allowed
      : topic.startsWith(`devices/${identity.deviceId}/`);
  }

  /** The whole chain (see the module comment). Rejects when the message is not durable or is refused. */
  async publish(message: BusMessage, from: Publisher, options: PublishOptions = {}): Promise<void> {
    const rules = this.rules;
    const shadows = this.shadows;
    if (!rules || !shadows) throw new Error('the IoT Core bus is not ready: rules or shadows not attached');
    if (from.kind === 'device') this.authorize(message, from.identity);
    if (!options.skipRules) {
      await rules.ingest({
        topic: message.topic,
        payload: message.payload,
        clientId: from.kind === 'device' ? from.identity.deviceId : '',
        principal: from.kind === 'device' ? from.identity.principal : from.principal,
        ...(message.mqtt5 ? { mqtt5: message.mqtt5 } : {}),
      });
    }
    if (!options.transportDelivers && !BASIC_INGEST.test(message.topic)) {
      await this.subscribers.deliver(message);
    }
    if (SHADOW_REQUEST.test(message.topic)) await shadows.handleMqtt(message.topic, message.payload);
  }
}
