import { createServer as createHttpServer, type IncomingMessage } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { createServer as createTlsServer, type DetailedPeerCertificate } from 'node:tls';
import { Aedes, type AuthenticateError, type Client, type PublishPacket, type Subscription } from 'aedes';
import aedesPersistenceLevel from 'aedes-persistence-level';
import { Level } from 'level';
import { createWebSocketStream, WebSocketServer } from 'ws';
import {
  type BusMessage,
  type Identity,
  type IotCoreBus,
  PublishRefusedError,
  type Subscribers,
} from './bus.ts';
import { listen } from './net.ts';
import { guardProtocolLevel } from './protocol-level.ts';
import type { ServerCertificate } from './tls.ts';

export type { Identity } from './bus.ts';

/** A TLS client certificate's fingerprints, as the transport saw them. */
export interface ClientCertificate {
  readonly thumbprintSha1: string;
  readonly thumbprintSha256: string;
  readonly subjectCommonName?: string;
  /**
   * DER of the leaf, then of each issuer above it that the handshake made known (the intermediates the
   * client sent), for the CA chain check of `certificateAuthority` devices.
   */
  readonly chain: readonly Buffer[];
}

/**
 * A device the authenticate step let in. With a {@link Identity.policy}, the broker checks `iot:Connect` on
 * its client id before the CONNACK, `iot:Subscribe` on each filter and `iot:Receive` on each message it
 * would forward (a denied one is dropped silently, as IoT Core does).
 */
export interface AuthenticatedDevice extends Identity {
  /**
   * IoT Core's `refreshAfterInSeconds`: every `afterMs` the broker asks `again()` for the connection's
   * policy; the answer replaces it, a {@link ConnectionRefusedError} closes the connection (another failure
   * is logged and the policy kept).
   */
  readonly refresh?: {
    readonly afterMs: number;
    again(): Promise<Identity['policy']>;
  };
}

/** Decides who may connect. Issue-level auth (registry, SAS, X.509) plugs in here. */
export interface Authenticator {
  authenticate(input: {
    clientId: string;
    username: string | undefined;
    password: Buffer | undefined;
    clientCertificate: ClientCertificate | undefined;
  }): Promise<AuthenticatedDevice>;
}

/** A refused connection, with the MQTT 3.1.1 CONNACK return code to send. */
export class ConnectionRefusedError extends Error {
  constructor(
    readonly returnCode: 1 | 2 | 3 | 4 | 5,
    message: string,
  ) {
    super(message);
    this.name = 'ConnectionRefusedError';
  }
}

/** Options of {@link startBroker}. */
export interface BrokerOptions {
  readonly dataDir: string;
  readonly host: string;
  readonly ports: { readonly mqtt: number; readonly mqtts: number; readonly ws: number };
  readonly certificate: ServerCertificate;
  readonly authenticator: Authenticator;
  /**
   * The IoT Core bus: each device publish is authorized and its rules run (`bus.publish` with the transport
   * delivering) before the PUBACK, so an acknowledged message is already durable. A refusal or failure
   * disconnects the client without PUBACK, so it resends.
   */
  readonly bus: IotCoreBus;
  /**
   * Why a device whose identity has no {@link Identity.policy} may not subscribe to a filter; undefined
   * when it may. @default such a device may subscribe to nothing
   */
  readonly subscribePolicy?: (identity: Identity, filter: string) => string | undefined;
  /**
   * The identity to publish a stale will under: the will of a device whose connection was lost with a
   * broker that died (SIGKILL, crash) is published when this broker finds it, as IoT Core publishes a will
   * when a connection is lost, but only while the device is still registered and enabled. undefined drops
   * the will (logged).
   */
  readonly staleWillIdentity: (deviceId: string) => Promise<Identity | undefined>;
  /** aedes' heartbeat; stale wills are looked for every 4 heartbeats. @default 60000 */
  readonly heartbeatIntervalMs?: number;
  /** Most retained messages the broker keeps (IoT Core: 500,000 per account). @default 500000 */
  readonly maxRetainedMessages?: number;
  /** Called when a device connects or disconnects (AWS IoT's presence events). */
  readonly onPresence?: (event: PresenceEvent) => void;
  /**
   * Called when a device subscribes or unsubscribes (AWS IoT's subscribe/unsubscribe events), with
   * the filters the broker granted (or removed). A `subscribed` event comes after the subscriptions
   * are stored and active, so a publish it triggers reaches the device.
   */
  readonly onSubscription?: (event: SubscriptionEvent) => void;
  readonly log: (line: string) => void;
}

/** AWS IoT Core's lifecycle event, published on `$aws/events/presence/{eventType}/{clientId}`. */
export interface PresenceEvent {
  readonly clientId: string;
  readonly timestamp: number;
  readonly eventType: 'connected' | 'disconnected';
  readonly sessionIdentifier: string;
  readonly principalIdentifier: string;
  readonly ipAddress?: string;
  readonly versionNumber: number;
  readonly clientInitiatedDisconnect?: boolean;
  readonly disconnectReason?: string;
}

/**
 * AWS IoT Core's subscribe/unsubscribe lifecycle event, published on
 * `$aws/events/subscriptions/{eventType}/{clientId}`. `thingName` (exclusive things only) is never set.
 */
export interface SubscriptionEvent {
  readonly clientId: string;
  readonly timestamp: number;
  readonly eventType: 'subscribed' | 'unsubscribed';
  readonly sessionIdentifier: string;
  readonly principalIdentifier: string;
  /** The topic filters of one SUBSCRIBE (only those granted) or UNSUBSCRIBE packet. */
  readonly topics: readonly string[];
}

/** The TLS client certificate of a connection, if it presented one. */
function clientCertificateOf(client: Client): ClientCertificate | undefined {
  const conn = (
    client as unknown as { conn?: { getPeerCertificate?: (detailed: true) => DetailedPeerCertificate } }
  ).conn;
  const cert = conn?.getPeerCertificate?.(true);
  if (!cert?.fingerprint) return undefined;
  const cn = cert.subject?.CN;
  // The issuer links end at a self-signed certificate, which points at itself.
  const chain: Buffer[] = [];
  const seen = new Set<string>();
  for (let c: DetailedPeerCertificate | undefined = cert; c?.raw && !seen.has(c.fingerprint256); ) {
    seen.add(c.fingerprint256);
    chain.push(c.raw);
    c = c.issuerCertificate;
  }
  return {
    thumbprintSha1: cert.fingerprint,
    thumbprintSha256: cert.fingerprint256,
    ...(typeof cn === 'string' ? { subjectCommonName: cn } : {}),
    chain,
  };
}

/** The running front door; its `deliver` is the bus's subscribers step. */
export interface RunningBroker extends Subscribers {
  readonly broker: Aedes;
  readonly ports: { readonly mqtt: number; readonly mqtts: number; readonly ws: number };
  /** Topics that hold a retained message (the data plane's `ListRetainedMessages`). */
  retainedTopics(): string[];
  /** Disconnects a device's live connection; false when it had none. */
  disconnect(deviceId: string): boolean;
  close(): Promise<void>;
}

/**
 * Starts aedes with persistent sessions (LevelDB under `dataDir/broker`) on plain TCP, TLS and
 * WebSocket listeners. Policy lives in the hooks: who connects (authenticator), and what a device may
 * connect as, publish, subscribe to and receive: its IoT policy documents ({@link Identity.policy}), as IoT
 * Core checks them (publish through the bus, with the size and retain limits). Refusals are logged with
 * the reason (for a policy, the deciding statement); the broker stays up.
 */
export async function startBroker(options: BrokerOptions): Promise<RunningBroker> {
  const { log } = options;
  const identities = new WeakMap<Client, Identity>();
  const db = new Level<string, unknown>(path.join(options.dataDir, 'broker'), { valueEncoding: 'view' });
  // Per-device chains answer a device's publishes in the order they arrived.
  const chains = new Map<string, Promise<void>>();
  // A publish starts at once, in arrival order (the rules engine queues a device's records in call order),
  // so several publishes of one device are in flight; the chain answers them in order.
  const answeredInOrder = (deviceId: string, started: Promise<void>): Promise<void> => {
    started.catch(() => undefined); // handled by the caller, once the publishes before it are answered
    const next = (chains.get(deviceId) ?? Promise.resolve()).then(() => started);
    const tail = next.catch(() => undefined);
    chains.set(deviceId, tail);
    void tail.then(() => {
      if (chains.get(deviceId) === tail) chains.delete(deviceId);
    });
    return next;
  };
  const retained = new RetainedMessages(options.maxRetainedMessages ?? 500_000);
  /** Why `identity` may not subscribe to `filter` (its policy's iot:Subscribe, with the deciding statement). */
  const subscribeRefusal = (identity: Identity, filter: string): string | undefined => {
    if (identity.policy) {
      const decision = identity.policy.authorize('iot:Subscribe', filter);
      return decision.allowed ? undefined : `device '${identity.deviceId}': ${decision.reason}`;
    }
    return options.subscribePolicy
      ? options.subscribePolicy(identity, filter)
      : `device '${identity.deviceId}' has no policy`;
  };
  let brokerRef: Aedes | undefined;

  /**
   * A will left by a connection this broker never saw: its broker died with the connection (IoT Core
   * publishes a will when a connection is lost without DISCONNECT, and the broker going away is such a
   * loss). Published as the device, through the bus, while the device is registered and enabled and the
   * topic is its own; otherwise dropped for good (deleted from the store, so it is not tried again).
   */
  const publishStaleWill = async (packet: PublishPacket, payload: Buffer): Promise<void> => {
    const will = packet as PublishPacket & { clientId?: string; brokerId?: string };
    const deviceId = will.clientId ?? '';
    const drop = async (why: string): Promise<never> => {
      await persistenceOf(brokerRef)?.delWill({ id: deviceId, brokerId: will.brokerId });
      throw new Error(`stale will of '${deviceId}' on '${packet.topic}' dropped: ${why}`);
    };
    let identity: Identity | undefined;
    try {
      identity = await options.staleWillIdentity(deviceId);
    } catch (error) {
      // The registry is unreachable: keep the will; aedes tries again in four heartbeats.
      throw new Error(`stale will of '${deviceId}' kept for later: ${(error as Error).message}`);
    }
    if (!identity) return drop('the device is not registered or not enabled');
    const message = toMessage(packet, payload);
    try {
      options.bus.authorize(message, identity);
      retained.check(message, identity);
    } catch (error) {
      return drop((error as Error).message);
    }
    await options.bus.publish(message, { kind: 'device', identity }, { transportDelivers: true });
    retained.note(message);
    log(
      `published the stale will of '${deviceId}' on '${packet.topic}' (its connection was lost with the previous run)`,
    );
  };

  const broker = await Aedes.createBroker({
    persistence: aedesPersistenceLevel(db),
    heartbeatInterval: options.heartbeatIntervalMs ?? 60_000,
    authenticate: (client, username, password, done) => {
      options.authenticator
        .authenticate({
          clientId: client.id,
          username,
          password: password ?? undefined,
          clientCertificate: clientCertificateOf(client),
        })
        .then((identity) => {
          if (identity.deviceId !== client.id) {
            throw new ConnectionRefusedError(
              2,
              `client id '${client.id}' must equal the device id '${identity.deviceId}'`,
            );
          }
          const connect = identity.policy?.authorize('iot:Connect', client.id);
          if (connect && !connect.allowed) {
            throw new ConnectionRefusedError(
              5,
              `not-authorized: device '${identity.deviceId}': ${connect.reason}`,
            );
          }
          const { refresh, ...connected } = identity;
          identities.set(client, connected);
          const onClose = (f: () => void) =>
            (client as unknown as { conn?: { once?: (e: string, f: () => void) => void } }).conn?.once?.(
              'close',
              f,
            );
          if (refresh) {
            const timer = setInterval(() => {
              refresh.again().then(
                (policy) => {
                  const current = identities.get(client);
                  if (current && policy) identities.set(client, { ...current, policy });
                },
                (error: unknown) => {
                  if (!(error instanceof ConnectionRefusedError)) {
                    log(`re-authorizing '${client.id}' failed, policy kept: ${(error as Error).message}`);
                    return;
                  }
                  log(`closing '${client.id}': refused when re-authorized: ${error.message}`);
                  client.close();
                },
              );
            }, refresh.afterMs);
            timer.unref();
            onClose(() => clearInterval(timer));
          }
          if (identity.expiresAt) {
            // setTimeout holds at most ~24.8 days; a longer-lived token is cut off then and reconnects.
            const ms = Math.max(0, Math.min(identity.expiresAt.getTime() - Date.now(), 2 ** 31 - 1));
            const timer = setTimeout(() => {
              log(
                `closing '${client.id}': its SAS token expired (or the authorizer's disconnectAfterInSeconds passed)`,
              );
              client.close();
            }, ms);
            timer.unref();
            onClose(() => clearTimeout(timer));
          }
          done(null, true);
        })
        .catch((error: unknown) => {
          const returnCode = error instanceof ConnectionRefusedError ? error.returnCode : 3;
          log(`connect refused: client '${client.id}': ${(error as Error).message}`);
          const refusal = Object.assign(new Error((error as Error).message), {
            returnCode,
          }) as AuthenticateError;
          done(refusal, false);
        });
    },
    authorizePublish: (client, packet: PublishPacket, done) => {
      const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
      if (!client) {
        // aedes publishes the wills of a broker that is gone (our previous run, killed) with no client.
        publishStaleWill(packet, payload).then(
          () => done(null),
          (error: unknown) => done(error as Error),
        );
        return;
      }
      const identity = identities.get(client);
      if (!identity) return done(new Error('publish from an unauthenticated client'));
      if ((packet.qos as number) === 2) {
        const reason = `device '${identity.deviceId}' published with QoS 2 on '${packet.topic}'; IoT Core takes QoS 0 and 1 only`;
        log(`publish refused, disconnecting: ${reason}`);
        return done(new Error(reason));
      }
      const message = toMessage(packet, payload);
      try {
        options.bus.authorize(message, identity);
        retained.check(message, identity);
      } catch (error) {
        log(`publish refused, disconnecting: ${(error as Error).message}`);
        return done(error as Error);
      }
      answeredInOrder(
        identity.deviceId,
        options.bus.publish(message, { kind: 'device', identity }, { transportDelivers: true }),
      ).then(
        () => {
          retained.note(message);
          done(null);
        },
        (error: unknown) => {
          log(`publish not accepted, disconnecting so the device retries: ${(error as Error).message}`);
          done(error as Error);
        },
      );
    },
    // Basic Ingest skips the message broker: such a publish goes to its rule, never to subscribers. A
    // subscriber gets a message only if its policy allows iot:Receive on the topic; IoT Core drops the
    // others silently (the subscription stays).
    authorizeForward: (client, packet) => {
      if (packet.topic.startsWith('$aws/rules/')) return null;
      const policy = client ? identities.get(client)?.policy : undefined;
      if (policy && !policy.authorize('iot:Receive', packet.topic).allowed) return null;
      return packet;
    },
    authorizeSubscribe: (client, sub: Subscription, done) => {
      const identity = client ? identities.get(client) : undefined;
      const denied = identity ? subscribeRefusal(identity, sub.topic) : 'unauthenticated client';
      if (denied) {
        log(`subscribe refused: ${denied}`);
        return done(null, null);
      }
      if ((sub.qos as number) === 2) {
        // IoT Core sends no SUBACK for QoS 2; the connection is closed so the device is not left waiting.
        const reason = `device '${identity?.deviceId}' subscribed to '${sub.topic}' with QoS 2; IoT Core takes QoS 0 and 1 only`;
        log(`subscribe refused, disconnecting: ${reason}`);
        return done(new Error(reason), null);
      }
      done(null, sub);
    },
  });
  brokerRef = broker;
  await retained.load(broker);
  // aedes reports here what no client owns (a stale will it could not publish, a persistence failure);
  // without a listener an 'error' event would end the process.
  (broker as unknown as NodeJS.EventEmitter).on('error', (error: Error) => log(`broker: ${error.message}`));
  broker.on('clientError', (client, error) => log(`client '${client.id}' error: ${error.message}`));
  broker.on('connectionError', (_client, error) =>
    log(`connection error before CONNECT completed: ${error.message}`),
  );
  broker.on('connackSent', (packet, client) => {
    const code = (packet as { returnCode?: number }).returnCode ?? 0;
    // Authentication refusals are logged where they are decided; this catches aedes' own (protocol level).
    if (code === 1) log(`connect refused: client '${client.id}': unacceptable protocol version (CONNACK 1)`);
  });
  const presence = (client: Client, eventType: 'connected' | 'disconnected') => {
    const identity = identities.get(client);
    if (!identity || !options.onPresence) return;
    const remote = (client as unknown as { conn?: { remoteAddress?: string } }).conn?.remoteAddress;
    options.onPresence({
      clientId: client.id,
      timestamp: Date.now(),
      eventType,
      sessionIdentifier: identity.principal,
      principalIdentifier: identity.principal,
      ...(remote ? { ipAddress: remote } : {}),
      versionNumber: 0,
      ...(eventType === 'disconnected'
        ? { clientInitiatedDisconnect: false, disconnectReason: 'CONNECTION_LOST' }
        : {}),
    });
  };
  broker.on('client', (client) => presence(client, 'connected'));
  broker.on('clientDisconnect', (client) => presence(client, 'disconnected'));

  const subscription = (client: Client, eventType: 'subscribed' | 'unsubscribed', topics: string[]) => {
    const identity = identities.get(client);
    if (!identity || !options.onSubscription || topics.length === 0) return;
    options.onSubscription({
      clientId: client.id,
      timestamp: Date.now(),
      eventType,
      sessionIdentifier: identity.principal,
      principalIdentifier: identity.principal,
      topics,
    });
  };
  // aedes emits 'subscribe' once per SUBSCRIBE packet, after every granted filter is persisted (for
  // a persistent session) and added to the router, with the granted QoS on each (128 = refused).
  // Sessions restored on reconnect emit nothing, as in IoT Core, where they only have a connect event.
  broker.on('subscribe', (subscriptions, client) => {
    if (!client) return;
    const granted = subscriptions.filter((s) => (s.qos as number) !== 128).map((s) => s.topic);
    subscription(client, 'subscribed', granted);
  });
  // aedes also emits 'unsubscribe' when it drops a clean session's subscriptions on disconnect; only
  // an UNSUBSCRIBE packet (the client still open) is an unsubscribe event, and only for filters the
  // device may hold (a refused filter was never subscribed).
  broker.on('unsubscribe', (unsubscriptions, client) => {
    if (!client || client.closed) return;
    const identity = identities.get(client);
    if (!identity) return;
    const held = unsubscriptions.filter((topic) => !subscribeRefusal(identity, topic));
    subscription(client, 'unsubscribed', held);
  });

  // Nagle off, as IoT Core's broker: small MQTT packets (PUBACKs, settlement answers) go out at once
  // instead of waiting ~40 ms for the peer's delayed ACK.
  // Every connection passes the protocol-level guard first (CONNACK 1 for a level aedes cannot parse).
  const handle = (stream: Duplex, req?: IncomingMessage) =>
    guardProtocolLevel(
      stream,
      (level) => log(`connect refused: protocol level ${level} is not MQTT 3.1.1 (CONNACK 1)`),
      (guarded) => broker.handle(guarded as Parameters<typeof broker.handle>[0], req as never),
    );
  const tcp = createNetServer({ noDelay: true }, (socket) => handle(socket));
  // Client certificates are asked for but not chain-checked by TLS: X.509 devices are matched by
  // thumbprint against the registry (self-signed) or their chain checked against the registered,
  // verified CAs (CA-signed) in the authenticate step, as IoT Hub does.
  const tls = createTlsServer(
    {
      key: options.certificate.key,
      cert: options.certificate.cert,
      requestCert: true,
      rejectUnauthorized: false,
      noDelay: true,
    },
    (socket) => handle(socket),
  );
  const http = createHttpServer((_req, res) => {
    res
      .writeHead(426, { 'content-type': 'text/plain' })
      .end('MQTT over WebSocket: connect with a WebSocket client\n');
  });
  const wss = new WebSocketServer({ server: http, path: '/mqtt' });
  wss.on('connection', (socket, req) => {
    req.socket.setNoDelay(true);
    handle(createWebSocketStream(socket), req);
  });
  const servers = [
    await listen(tcp, options.host, options.ports.mqtt, 'mqtt'),
    await listen(tls, options.host, options.ports.mqtts, 'mqtts'),
    await listen(http, options.host, options.ports.ws, 'ws'),
  ] as const;
  const ports = { mqtt: servers[0].port, mqtts: servers[1].port, ws: servers[2].port };

  return {
    broker,
    ports,
    deliver: (message) =>
      new Promise((resolve, reject) => {
        const { topic, payload, qos } = message;
        const retain = message.retain === true;
        broker.publish(
          { cmd: 'publish', topic, payload, qos, retain, dup: false } as PublishPacket,
          (error?: Error | null) => {
            if (error) return reject(error);
            retained.note(message);
            resolve();
          },
        );
      }),
    retainedTopics: () => retained.list(),
    disconnect: (deviceId) => {
      const client = (broker as unknown as { clients: Record<string, Client | undefined> }).clients[deviceId];
      if (!client) return false;
      log(`disconnecting '${deviceId}' on request`);
      client.close();
      return true;
    },
    close: async () => {
      for (const c of wss.clients) c.terminate();
      // Stop accepting first, then close the clients: a listener's close waits for its connections.
      const closing = Promise.all(servers.map((s) => s.close()));
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      await closing;
      await db.close();
    },
  };
}

/** The part of aedes' persistence the broker calls directly (the types do not declare it). */
interface Persistence {
  delWill(client: { id: string; brokerId: string | undefined }): Promise<unknown>;
  createRetainedStreamCombi(patterns: string[]): AsyncIterable<PublishPacket>;
}

function persistenceOf(broker: Aedes | undefined): Persistence | undefined {
  return (broker as unknown as { persistence?: Persistence } | undefined)?.persistence;
}

/** A publish packet as the bus sees it. */
function toMessage(packet: PublishPacket, payload: Buffer): BusMessage {
  return { topic: packet.topic, payload, qos: packet.qos === 1 ? 1 : 0, retain: packet.retain === true };
}

/**
 * Which topics hold a retained message, kept beside aedes' store so that the broker can bound them as IoT
 * Core does (a number per account; the size of one is bounded by the bus) and list them (the data plane's
 * `ListRetainedMessages`). A retained publish with an empty payload clears its topic.
 */
class RetainedMessages {
  private readonly topics = new Set<string>();

  constructor(private readonly limit: number) {}

  /** Reads the topics aedes kept from earlier runs. */
  async load(broker: Aedes): Promise<void> {
    const stream = persistenceOf(broker)?.createRetainedStreamCombi(['#', '$aws/#']) ?? [];
    for await (const packet of stream) this.topics.add(packet.topic);
  }

  /** Refuses a new retained topic past the limit (replacing or clearing one is always allowed). */
  check(message: BusMessage, identity: Identity): void {
    if (!message.retain || message.payload.length === 0 || this.topics.has(message.topic)) return;
    if (this.topics.size >= this.limit) {
      throw new PublishRefusedError(
        'retain',
        `device '${identity.deviceId}' sent a retained message on '${message.topic}', but the hub already keeps ${this.limit} retained messages, IoT Core's limit`,
      );
    }
  }

  /** Records a retained publish that went through. */
  note(message: BusMessage): void {
    if (!message.retain) return;
    if (message.payload.length === 0) this.topics.delete(message.topic);
    else this.topics.add(message.topic);
  }

  /** The topics with a retained message, sorted. */
  list(): string[] {
    return [...this.topics].sort();
  }
}
