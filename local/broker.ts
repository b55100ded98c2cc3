import { createServer as createHttpServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import * as path from 'node:path';
import { createServer as createTlsServer, type DetailedPeerCertificate } from 'node:tls';
import { Aedes, type AuthenticateError, type Client, type PublishPacket, type Subscription } from 'aedes';
import aedesPersistenceLevel from 'aedes-persistence-level';
import { Level } from 'level';
import { createWebSocketStream, WebSocketServer } from 'ws';
import { publishRefusal, subscribeRefusal } from '../functions/core/identity/topics.ts';
import { listen } from './net.ts';
import type { ServerCertificate } from './tls.ts';

/** Who a connected client is, as the authenticate step established it. */
export interface Identity {
  /** The device id: the only id the client may publish or subscribe under. */
  readonly deviceId: string;
  /** `{authType}:{deviceId}`, reported as `principal()` to the rules. */
  readonly principal: string;
  /** When the credential expires; the connection is closed then, as IoT Hub does. */
  readonly expiresAt?: Date;
}

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

/** Decides who may connect. Issue-level auth (registry, SAS, X.509) plugs in here. */
export interface Authenticator {
  authenticate(input: {
    clientId: string;
    username: string | undefined;
    password: Buffer | undefined;
    clientCertificate: ClientCertificate | undefined;
  }): Promise<Identity>;
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
  readonly maxMessageBytes: number;
  readonly authenticator: Authenticator;
  /**
   * The ingest rule's name when Basic Ingest is on: devices may then publish their telemetry to
   * `$aws/rules/{name}/devices/{id}/messages/events[/...]` too (`publishRefusal`). As in IoT Core,
   * Basic Ingest publishes reach the rules only, never a subscriber. @default Basic Ingest refused
   */
  readonly basicIngestRule?: string | undefined;
  /**
   * Called for each device publish after authorization and before the PUBACK: rules run here, so
   * an acknowledged message is already durable. A rejection disconnects the client without PUBACK.
   */
  readonly ingest: (input: { topic: string; payload: Buffer; identity: Identity }) => Promise<void>;
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

/** The running front door. */
export interface RunningBroker {
  readonly broker: Aedes;
  readonly ports: { readonly mqtt: number; readonly mqtts: number; readonly ws: number };
  /** Publishes as the hub (data plane, C2D delivery): no rules, no authorization. */
  publish(topic: string, payload: Buffer, qos: 0 | 1): Promise<void>;
  /** Disconnects a device's live connection; false when it had none. */
  disconnect(deviceId: string): boolean;
  close(): Promise<void>;
}

/**
 * Starts aedes with persistent sessions (LevelDB under `dataDir/broker`) on plain TCP, TLS and
 * WebSocket listeners. Policy lives in the hooks: who connects (authenticator), what a device may
 * publish and subscribe to (its own topics), and the size limit. Refusals are logged with the
 * reason; the broker stays up.
 */
export async function startBroker(options: BrokerOptions): Promise<RunningBroker> {
  const { log } = options;
  const identities = new WeakMap<Client, Identity>();
  const db = new Level<string, unknown>(path.join(options.dataDir, 'broker'), { valueEncoding: 'view' });
  // Per-device chains answer a device's publishes in the order they arrived.
  const chains = new Map<string, Promise<void>>();

  const broker = await Aedes.createBroker({
    persistence: aedesPersistenceLevel(db),
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
          identities.set(client, identity);
          if (identity.expiresAt) {
            // setTimeout holds at most ~24.8 days; a longer-lived token is cut off then and reconnects.
            const ms = Math.max(0, Math.min(identity.expiresAt.getTime() - Date.now(), 2 ** 31 - 1));
            const timer = setTimeout(() => {
              log(`closing '${client.id}': its SAS token expired`);
              client.close();
            }, ms);
            timer.unref();
            (client as unknown as { conn?: { once?: (e: string, f: () => void) => void } }).conn?.once?.(
              'close',
              () => clearTimeout(timer),
            );
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
      const identity = client ? identities.get(client) : undefined;
      if (!client || !identity) return done(new Error('publish from an unauthenticated client'));
      const denied = publishRefusal(identity.deviceId, packet.topic, {
        basicIngestRule: options.basicIngestRule,
      });
      if (denied) {
        log(`publish refused, disconnecting: ${denied}`);
        return done(new Error(denied));
      }
      const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
      if (payload.length > options.maxMessageBytes) {
        const reason = `device '${identity.deviceId}' sent ${payload.length} bytes on '${packet.topic}'; the limit is ${options.maxMessageBytes}`;
        log(`publish refused, disconnecting: ${reason}`);
        return done(new Error(reason));
      }
      // Ingest starts at once, in arrival order (the rules engine queues a device's records in call
      // order), so several publishes of one device are in flight; the chain keeps their PUBACKs in order.
      const started = options.ingest({ topic: packet.topic, payload, identity });
      started.catch(() => undefined); // handled below, once the publishes before it are answered
      const previous = chains.get(identity.deviceId) ?? Promise.resolve();
      const next = previous.then(() => started);
      const tail = next.catch(() => undefined);
      chains.set(identity.deviceId, tail);
      void tail.then(() => {
        if (chains.get(identity.deviceId) === tail) chains.delete(identity.deviceId);
      });
      next.then(
        () => done(null),
        (error: unknown) => {
          log(`publish not accepted, disconnecting so the device retries: ${(error as Error).message}`);
          done(error as Error);
        },
      );
    },
    // Basic Ingest skips the message broker: such a publish goes to its rule, never to subscribers.
    authorizeForward: (_client, packet) => (packet.topic.startsWith('$aws/rules/') ? null : packet),
    authorizeSubscribe: (client, sub: Subscription, done) => {
      const identity = client ? identities.get(client) : undefined;
      const denied = identity ? subscribeRefusal(identity.deviceId, sub.topic) : 'unauthenticated client';
      if (denied) {
        log(`subscribe refused: ${denied}`);
        return done(null, null);
      }
      done(null, sub);
    },
  });
  broker.on('clientError', (client, error) => log(`client '${client.id}' error: ${error.message}`));
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
    const held = unsubscriptions.filter((topic) => !subscribeRefusal(identity.deviceId, topic));
    subscription(client, 'unsubscribed', held);
  });

  // Nagle off, as IoT Core's broker: small MQTT packets (PUBACKs, settlement answers) go out at once
  // instead of waiting ~40 ms for the peer's delayed ACK.
  const tcp = createNetServer({ noDelay: true }, broker.handle);
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
    broker.handle,
  );
  const http = createHttpServer((_req, res) => {
    res
      .writeHead(426, { 'content-type': 'text/plain' })
      .end('MQTT over WebSocket: connect with a WebSocket client\n');
  });
  const wss = new WebSocketServer({ server: http, path: '/mqtt' });
  wss.on('connection', (socket, req) => {
    req.socket.setNoDelay(true);
    broker.handle(createWebSocketStream(socket) as unknown as Parameters<typeof broker.handle>[0], req);
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
    publish: (topic, payload, qos) =>
      new Promise((resolve, reject) => {
        broker.publish(
          { cmd: 'publish', topic, payload, qos, retain: false, dup: false } as PublishPacket,
          (error?: Error | null) => (error ? reject(error) : resolve()),
        );
      }),
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
