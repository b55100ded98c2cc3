/**
 * Contract, part 1: the hand-written topic policy (`publishRefusal`/`subscribeRefusal` in `topics.ts`, which
 * the HTTPS publish door and stale wills still use) gives the same allow/deny as the IoT policy documents
 * the cloud enforces, evaluated by `local/iot-policy.ts` as IoT Core evaluates them:
 * (a) the custom authorizer's per-device documents (`devicePolicyDocuments`, the SAS path), and
 * (b) the thing policy attached to X.509 certificates (`thingPolicyDocument` with `ThingName = id` and
 *     `IsAttached = true`; thing-name ids only, as only those can be X.509 things),
 * over every topic family × the own device / other devices (including ids with `*`, `?`, `$`, `.` and a
 * 128-character id) × connect / publish / subscribe / receive, with Basic Ingest off and on.
 *
 * Receive: topics.ts has no receive rule; a broker enforcing it alone would forward every message that
 * matches a subscription the device was allowed to make. So "topics.ts allows receive of T" here means:
 * some filter `subscribeRefusal` allows matches T. Connect: the client id must equal the device id.
 *
 * Part 2: the local front door (`local/front-door.ts`, as the hub builds it: the stack's authorizer handler
 * invoked with IoT Core's event for a real SAS token, or the X.509 thing policy) decides every case as the
 * cloud documents do, with the broker's own rules on top (client id = device id; a message is forwarded
 * when a subscription matches and `iot:Receive` allows it), and differs from topics.ts only as listed.
 *
 * How IoT Core matches a subscription: against `topicfilter/{filter as written}`, where `+` and `#` are plain
 * characters and the policy's `*` matches any run of characters, so `topicfilter/devices/d1/*` matches the
 * filter `devices/d1/messages/devicebound/#` and `devices/d1/#`, but not `devices/+/messages/devicebound/#`.
 *
 * Where IoT Core semantics and the local policy differ by design, the difference is listed in
 * {@link KNOWN_DIFFERENCES} with the reason; the test fails on any other difference, and on a listed one that
 * no longer occurs.
 */
import { describe, expect, it, vi } from 'vitest';
import { MemoryDeviceRegistry } from '../../functions/adapters/registry-memory.ts';
import { makeHandler } from '../../functions/authorizer.ts';
import { devicePolicyDocuments } from '../../functions/core/identity/policy.ts';
import { createSasToken, deviceResourceUri } from '../../functions/core/identity/sas.ts';
import { isThingName, publishRefusal, subscribeRefusal } from '../../functions/core/identity/topics.ts';
import { thingPolicyDocument } from '../../functions/core/identity/x509-provisioning.ts';
import type { Identity } from '../../local/bus.ts';
import { frontDoorAuthenticator } from '../../local/front-door.ts';
import { compilePolicies, type IotAction, resourceArnFor } from '../../local/iot-policy.ts';

// The authorizer module builds its default handler at import (cold start) and fails without its environment.
vi.hoisted(() => {
  process.env.REGISTRY_TABLE_NAME ??= 'registry-test';
  process.env.HUB_HOSTNAME ??= 'hub.example.com';
});

const target = { partition: 'aws', region: 'eu-west-1', account: '123456789012' };
const RULE = 'hub_ingest';

/** The connected devices: a plain id, ids with each special character, and the longest ids. */
const DEVICES = [
  'd1',
  'a*',
  'a?b',
  'a$b',
  'a.b',
  `T:${'x'.repeat(120)}_a-b1`, // a 128-character thing name
  `*?$.${'*'.repeat(124)}`, // a 128-character id whose policy needs one document per statement
];

/** Devices whose topics `id` must not reach: a neighbour, prefixes and extensions, wildcard look-alikes. */
function othersOf(id: string): string[] {
  const candidates = [
    'd2',
    `${id}x`,
    id.slice(0, 1),
    id.toUpperCase(),
    id.replace(/[*?$.]/g, 'x'),
    id.replace(/[*?$.]/g, ''),
  ];
  return [...new Set(candidates)].filter((o) => o !== id && o.length >= 1 && o.length <= 128);
}

interface Case {
  readonly action: IotAction;
  /** A topic (publish, receive), a filter (subscribe) or a client id (connect). */
  readonly name: string;
}

/** Every topic family, for the device `s` (the connected device itself or another one). */
function casesFor(s: string): Case[] {
  const pub = (name: string): Case => ({ action: 'iot:Publish', name });
  const sub = (name: string): Case => ({ action: 'iot:Subscribe', name });
  const rcv = (name: string): Case => ({ action: 'iot:Receive', name });
  const shadow = `$aws/things/${s}/shadow`;
  const shadowAnswers = [
    `${shadow}/get/accepted`,
    `${shadow}/get/rejected`,
    `${shadow}/update/accepted`,
    `${shadow}/update/rejected`,
    `${shadow}/update/delta`,
    `${shadow}/update/documents`,
    `${shadow}/delete/accepted`,
    `${shadow}/name/cfg/update/delta`,
    `${shadow}/name/cfg/update/documents`,
    `${shadow}/name/cfg/get/accepted`,
  ];
  return [
    { action: 'iot:Connect', name: s },
    // D2C, with and without a property bag.
    pub(`devices/${s}/messages/events`),
    pub(`devices/${s}/messages/events/`),
    pub(`devices/${s}/messages/events/$.ct=application%2Fjson&$.ce=utf-8&k=v`),
    // C2D: the device subscribes to its devicebound filter and receives its topics.
    sub(`devices/${s}/messages/devicebound/#`),
    rcv(`devices/${s}/messages/devicebound/%24.mid=m1&%24.to=%2Fdevices%2Fx&k=v`),
    pub(`devices/${s}/messages/devicebound/x`),
    // Settlement requests and answers.
    ...['complete', 'reject', 'abandon'].map((op) => pub(`devices/${s}/messages/settle/${op}/lock-token-1`)),
    sub(`devices/${s}/messages/settle/res/#`),
    rcv(`devices/${s}/messages/settle/res/204/?$rid=lock-token-1`),
    // Direct methods.
    sub(`devices/${s}/methods/POST/#`),
    rcv(`devices/${s}/methods/POST/reboot/?$rid=1`),
    pub(`devices/${s}/methods/res/200/?$rid=1`),
    // Shadows, classic and named: requests are published, answers subscribed to and received only.
    ...['get', 'update', 'delete'].flatMap((op) => [pub(`${shadow}/${op}`), pub(`${shadow}/name/cfg/${op}`)]),
    ...shadowAnswers.flatMap((t) => [pub(t), sub(t), rcv(t)]),
    sub(`${shadow}/#`),
    sub(`${shadow}/name/+/update/delta`),
    // Basic Ingest: the ingest rule's events topic, another rule, and a hidden second device id.
    pub(`$aws/rules/${RULE}/devices/${s}/messages/events`),
    pub(`$aws/rules/${RULE}/devices/${s}/messages/events/k=v`),
    pub(`$aws/rules/other_rule/devices/${s}/messages/events`),
    pub(`$aws/rules/${RULE}/devices/d2/x/devices/${s}/messages/events`),
    // Other reserved topics.
    ...[
      `$aws/events/presence/connected/${s}`,
      `$aws/things/${s}/jobs/notify`,
      `$aws/things/${s}/jobs/get`,
      `$aws/things/${s}/jobs/$next/get/accepted`,
    ].flatMap((t) => [pub(t), sub(t), rcv(t)]),
    // Wildcard filters and edges of the device prefix.
    sub(`devices/${s}/#`),
    sub(`devices/${s}/+/x`),
    sub(`devices/${s}`),
    pub(`devices/${s}`),
    pub(`devices/${s}/`),
    rcv(`devices/${s}/`),
    rcv(`devices/${s}`),
    rcv(shadow),
    // MQTT 5 shared subscriptions name the filter behind `$share/{group}/`.
    sub(`$share/g/devices/${s}/messages/devicebound/#`),
    // Retained publishes: own devices/ topics only, never shadow or reserved topics.
    ...[
      `devices/${s}/state`,
      `devices/${s}/messages/events/`,
      `${shadow}/update`,
      `$aws/rules/${RULE}/devices/${s}/messages/events`,
    ].map((name): Case => ({ action: 'iot:RetainPublish', name })),
  ];
}

/** Filters any device may try; they name no device. */
const GLOBAL_CASES: Case[] = [
  { action: 'iot:Subscribe', name: '#' },
  { action: 'iot:Subscribe', name: '+/#' },
  { action: 'iot:Subscribe', name: 'devices/#' },
  { action: 'iot:Subscribe', name: 'devices/+/messages/devicebound/#' },
  { action: 'iot:Subscribe', name: '$aws/things/+/shadow/#' },
  { action: 'iot:Subscribe', name: '$aws/#' },
  { action: 'iot:Publish', name: 'foo/bar' },
];

/** Whether a broker would forward a message on `topic` to `id`: some filter `maySubscribe` allows matches. */
function forwardsWith(topic: string, maySubscribe: (filter: string) => boolean): boolean {
  const levels = topic.split('/');
  // The topic itself, and every `{ancestor}/#` (which in MQTT also matches its parent level).
  const filters = [topic];
  for (let k = 0; k <= levels.length; k++) filters.push([...levels.slice(0, k), '#'].join('/'));
  return filters.some(maySubscribe);
}

/** Whether a broker enforcing topics.ts alone would forward a message on `topic` to `id`. */
function brokerForwards(id: string, topic: string): boolean {
  return forwardsWith(topic, (filter) => subscribeRefusal(id, filter) === undefined);
}

/** What the local broker decides today. */
function local(id: string, c: Case, basicIngestRule: string | undefined): boolean {
  switch (c.action) {
    case 'iot:Connect':
      return c.name === id;
    case 'iot:Publish':
      return publishRefusal(id, c.name, { basicIngestRule }) === undefined;
    case 'iot:RetainPublish':
      // The bus's rule for an identity without policy documents (local/bus.ts).
      return c.name.startsWith(`devices/${id}/`);
    case 'iot:Subscribe':
      return subscribeRefusal(id, c.name) === undefined;
    case 'iot:Receive':
      return brokerForwards(id, c.name);
  }
}

/**
 * Where the two sides differ, each with the reason; every one still has to occur (so the list cannot rot).
 */
const KNOWN_DIFFERENCES: readonly {
  readonly why: string;
  readonly applies: (id: string, c: Case) => boolean;
}[] = [
  {
    // IAM's `*` cannot say "one topic level", so the policies' named shadow request
    // `.../shadow/name/*\/{op}` also matches an empty name and names with `/`. IoT Core's shadow service
    // takes no such topic as a request (a shadow name is 1-64 of [a-zA-Z0-9:_-]), and only the device
    // itself may subscribe under its shadow prefix, so such a publish reaches nothing and nobody else.
    // topics.ts refuses it (SHADOW_REQUEST): stricter locally, harmless in the cloud; neither is wrong.
    why: 'the policies allow a named-shadow request whose name is empty or spans levels; topics.ts refuses it',
    applies: (id, c) =>
      c.action === 'iot:Publish' &&
      new RegExp(`^\\$aws/things/${escapeRegExp(id)}/shadow/name/(?:|.*/.*)/(?:get|update|delete)$`).test(
        c.name,
      ),
  },
  {
    // An allowed filter `devices/{id}/#` also matches its parent level `devices/{id}` in MQTT, and the
    // broker forwards whatever a subscription matches (it checks no receive). IoT Core checks
    // `iot:Receive` per message against `topic/devices/{id}/*`, which `devices/{id}` does not match, so it
    // drops the message. IoT Core is right; no device may publish there (publish needs the same `/`), so
    // only the hub itself could. The local front door checks receive with the documents, as IoT Core does.
    why: 'the broker forwards the parent level of an allowed `#` filter; IoT Core denies its receive',
    applies: (id, c) =>
      c.action === 'iot:Receive' && (c.name === `devices/${id}` || c.name === `$aws/things/${id}/shadow`),
  },
];

function escapeRegExp(text: string): string {
  return text.replace(/[\\^$.*+?()[\]{}|]/g, '\\$&');
}

/** Topics that only probe the known difference (they are in no topic family of the hub). */
function probesFor(s: string): Case[] {
  return ['', 'a/b', 'cfg/update/accepted'].map((name) => ({
    action: 'iot:Publish' as const,
    name: `$aws/things/${s}/shadow/name/${name}/update`,
  }));
}

interface Mismatch {
  readonly device: string;
  readonly action: IotAction;
  readonly name: string;
  readonly local: boolean;
  readonly cloud: boolean;
}

function compare(basicIngestRule: string | undefined, path: 'sas' | 'x509') {
  const mismatches: Mismatch[] = [];
  const known = new Map<string, number>();
  let checked = 0;
  const x509 = compilePolicies([
    thingPolicyDocument({ ...target, ...(basicIngestRule ? { basicIngestRule } : {}) }),
  ]);
  for (const id of DEVICES) {
    if (path === 'x509' && !isThingName(id)) continue;
    const policy =
      path === 'sas'
        ? compilePolicies(devicePolicyDocuments({ deviceId: id, ...target, basicIngestRule })).forContext({
            clientId: id,
          })
        : x509.forContext({ clientId: id, thingName: id, isAttached: true });
    const subjects = [id, ...othersOf(id)];
    const cases = [...subjects.flatMap((s) => [...casesFor(s), ...probesFor(s)]), ...GLOBAL_CASES];
    for (const c of cases) {
      checked++;
      const expected = local(id, c, basicIngestRule);
      const cloud = policy.authorize(c.action, resourceArnFor(c.action, target, c.name)).allowed;
      if (expected === cloud) continue;
      const difference = KNOWN_DIFFERENCES.find((k) => k.applies(id, c));
      if (difference !== undefined) {
        known.set(difference.why, (known.get(difference.why) ?? 0) + 1);
        continue;
      }
      mismatches.push({ device: id, action: c.action, name: c.name, local: expected, cloud });
    }
  }
  return { mismatches, known, checked };
}

describe.each([
  ['off', undefined],
  ['on', RULE],
])('topic policy contract, Basic Ingest %s', (_label, basicIngestRule) => {
  it.each(['sas', 'x509'] as const)(
    'the %s policy documents allow exactly what topics.ts allows, for every topic family and device',
    (path) => {
      const { mismatches, known, checked } = compare(basicIngestRule, path);
      expect(checked).toBeGreaterThan(path === 'sas' ? 1500 : 500);
      expect(mismatches).toEqual([]);
      // Each listed difference still occurs (else it is stale and must go from the list).
      expect([...known.keys()].sort()).toEqual(KNOWN_DIFFERENCES.map((k) => k.why).sort());
    },
  );
});

describe('the contract test itself', () => {
  it('sees a difference when the policy widens a device to another device’s topics', () => {
    // Unescaped, `a*` would be a wildcard over every device whose id starts with `a`.
    const widened = compilePolicies([
      JSON.stringify({
        Version: '2012-10-17',
        Statement: [
          {
            Effect: 'Allow',
            Action: 'iot:Publish',
            Resource: 'arn:aws:iot:eu-west-1:123456789012:topic/devices/a*/*',
          },
        ],
      }),
    ]).forContext({ clientId: 'a*' });
    const topic = 'devices/ab/messages/events';
    expect(widened.authorize('iot:Publish', resourceArnFor('iot:Publish', target, topic)).allowed).toBe(true);
    expect(local('a*', { action: 'iot:Publish', name: topic }, undefined)).toBe(false);
  });

  it('reads the local broker’s receive as its subscriptions: the parent level of an allowed `#` filter too', () => {
    expect(brokerForwards('d1', 'devices/d1/messages/devicebound/x')).toBe(true);
    expect(brokerForwards('d1', 'devices/d2/messages/devicebound/x')).toBe(false);
    expect(brokerForwards('d1', '$aws/events/presence/connected/d1')).toBe(false);
    expect(brokerForwards('d1', 'devices/d1')).toBe(true);
    expect(brokerForwards('d1', 'devices')).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Part 2: the local front door.

const HOST = 'hub.example.com';
const KEY = Buffer.alloc(32, 5).toString('base64');
const FUNCTION_ARN = `arn:${target.partition}:lambda:${target.region}:${target.account}:function:hub-authorizer`;

/** The front door as `local/hub.ts` builds it, with the authorizer handler run in this process. */
async function frontDoorFor(basicIngestRule: string | undefined) {
  const registry = new MemoryDeviceRegistry();
  for (const deviceId of DEVICES) {
    await registry.create({
      deviceId,
      authentication: { type: 'sas', symmetricKey: { primaryKey: KEY, secondaryKey: KEY } },
    });
  }
  const quiet = { info: () => {}, warn: () => {}, error: () => {} };
  const authorizer = makeHandler({ registry, hostName: HOST, log: quiet, basicIngestRule });
  return frontDoorAuthenticator({
    invokeAuthorizer: (event) => authorizer(event, { invokedFunctionArn: FUNCTION_ARN }),
    authorizerName: 'hub-authorizer',
    target,
    thingPolicy: compilePolicies([
      thingPolicyDocument({ ...target, ...(basicIngestRule ? { basicIngestRule } : {}) }),
    ]),
    // X.509: the registry and CA checks passed (the certificate is the device's own).
    decide: async ({ clientId }) => ({
      ok: true,
      deviceId: clientId,
      authType: 'selfSigned',
      principal: `selfSigned:${clientId}`,
    }),
    log: () => {},
  });
}

/** What the front door lets `identity` do: its policy, and the broker's own rules on top. */
function frontDoor(identity: Identity, c: Case): boolean {
  const policy = identity.policy;
  if (policy === undefined) throw new Error(`the front door gave '${identity.deviceId}' no policy`);
  const allows = (action: IotAction, name: string) => policy.authorize(action, name).allowed;
  switch (c.action) {
    case 'iot:Connect':
      return c.name === identity.deviceId && allows('iot:Connect', c.name);
    case 'iot:Publish':
    case 'iot:RetainPublish':
    case 'iot:Subscribe':
      return allows(c.action, c.name);
    case 'iot:Receive':
      return (
        forwardsWith(c.name, (filter) => allows('iot:Subscribe', filter)) && allows('iot:Receive', c.name)
      );
  }
}

describe.each([
  ['off', undefined],
  ['on', RULE],
])('the local front door, Basic Ingest %s', (_label, basicIngestRule) => {
  it.each(['sas', 'x509'] as const)(
    'decides every case of a %s connection as the cloud documents do, and as topics.ts up to the listed difference',
    async (path) => {
      const door = await frontDoorFor(basicIngestRule);
      const x509 = compilePolicies([
        thingPolicyDocument({ ...target, ...(basicIngestRule ? { basicIngestRule } : {}) }),
      ]);
      const againstCloud: Mismatch[] = [];
      const againstTopics: Mismatch[] = [];
      const known = new Set<string>();
      let checked = 0;
      for (const id of DEVICES) {
        if (path === 'x509' && !isThingName(id)) continue;
        const password =
          path === 'sas'
            ? Buffer.from(
                createSasToken({
                  resourceUri: deviceResourceUri(HOST, id),
                  key: KEY,
                  expiresAt: new Date(Date.now() + 3_600_000),
                }),
              )
            : undefined;
        const identity = await door.authenticate({
          clientId: id,
          username: undefined,
          password,
          clientCertificate:
            path === 'x509' ? { thumbprintSha1: 'aa', thumbprintSha256: 'bb', chain: [] } : undefined,
        });
        const cloud =
          path === 'sas'
            ? compilePolicies(devicePolicyDocuments({ deviceId: id, ...target, basicIngestRule })).forContext(
                {
                  clientId: id,
                },
              )
            : x509.forContext({ clientId: id, thingName: id, isAttached: true });
        const subjects = [id, ...othersOf(id)];
        for (const c of [...subjects.flatMap((s) => [...casesFor(s), ...probesFor(s)]), ...GLOBAL_CASES]) {
          checked++;
          const door = frontDoor(identity, c);
          const cloudAllows = cloud.authorize(c.action, resourceArnFor(c.action, target, c.name)).allowed;
          // The broker adds one rule to IoT Core's: the client id is the device id.
          const cloudDoor = c.action === 'iot:Connect' ? cloudAllows && c.name === id : cloudAllows;
          if (door !== cloudDoor) {
            againstCloud.push({ device: id, action: c.action, name: c.name, local: door, cloud: cloudDoor });
          }
          if (door !== local(id, c, basicIngestRule)) {
            const difference = KNOWN_DIFFERENCES.find((k) => k.applies(id, c));
            if (difference === undefined) {
              againstTopics.push({
                device: id,
                action: c.action,
                name: c.name,
                local: door,
                cloud: cloudAllows,
              });
            } else known.add(difference.why);
          }
        }
      }
      expect(checked).toBeGreaterThan(path === 'sas' ? 1500 : 500);
      expect(againstCloud).toEqual([]);
      expect(againstTopics).toEqual([]);
      // The same differences as topics.ts vs the documents: on each, the front door sides with IoT Core.
      expect([...known].sort()).toEqual(KNOWN_DIFFERENCES.map((k) => k.why).sort());
    },
  );

  it('refuses a client id the authorizer did not authenticate', async () => {
    const door = await frontDoorFor(basicIngestRule);
    const token = createSasToken({
      resourceUri: deviceResourceUri(HOST, 'd1'),
      key: KEY,
      expiresAt: new Date(Date.now() + 3_600_000),
    });
    // The authorizer refuses; the in-process decision (here: an X.509 stand-in that accepts) cannot let it in.
    await expect(
      door.authenticate({
        clientId: 'a*',
        username: undefined,
        password: Buffer.from(token),
        clientCertificate: undefined,
      }),
    ).rejects.toMatchObject({ name: 'ConnectionRefusedError', returnCode: 5 });
  });
});
