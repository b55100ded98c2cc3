import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import * as path from 'node:path';
import { z } from 'zod';
import { listen, readBody } from './net.ts';

// A local stand-in for Amazon EventBridge: the JSON 1.1 API the SDK speaks (buses, rules with event
// patterns, SQS targets, PutEvents), enough for the hub's EventBridge endpoints to run on one
// machine. Buses, rules and targets survive restarts; events do not (EventBridge keeps none either).

/** PutEvents' limit on the summed entry sizes of one call (see {@link putEventsEntrySize}). */
export const PUT_EVENTS_MAX_BYTES = 256 * 1024;
/** PutEvents' limit on entries per call. */
export const PUT_EVENTS_MAX_ENTRIES = 10;
/** Targets per rule, as on AWS. */
const MAX_TARGETS_PER_RULE = 5;
/** Largest HTTP request body accepted; PutEvents is bounded by its own size rule well below this. */
const MAX_BODY_BYTES = 10 * 1024 * 1024;
const STATE_FILE = 'eventbridge.json';
const DEFAULT_BUS = 'default';

/** How the stand-in retries a delivery to a target that failed. */
export interface DeliveryRetry {
  /** Attempts in all, the first included. @default 5 */
  readonly attempts?: number;
  /** Delay before the second attempt; each next one doubles it. @default 200 */
  readonly baseDelayMs?: number;
}

/** What a delivery may need besides the target and the text: FIFO queues take a group and a deduplication id. */
export interface DeliveryDetails {
  /** The event's id; EventBridge uses it as a FIFO queue's deduplication id. */
  readonly eventId: string;
  /** The target's `SqsParameters.MessageGroupId` (required for a FIFO queue). */
  readonly messageGroupId?: string;
}

/** What {@link startEventBridge} needs. */
export interface EventBridgeOptions {
  readonly host: string;
  /** 0 picks a free port. */
  readonly port: number;
  /** Where buses, rules and targets are kept (`eventbridge.json`). @default in memory only */
  readonly dataDir?: string;
  /** @default 'us-east-1' */
  readonly region?: string;
  /** @default '000000000000' (the account the local SQS/SNS emulator uses) */
  readonly accountId?: string;
  /**
   * Sends a matched event to a target: an SQS queue ARN and the text EventBridge would send (the
   * whole event envelope as JSON, or the target's `Input` / `InputPath` selection). A rejection is
   * retried, then logged.
   */
  readonly deliver: (targetArn: string, event: string, details: DeliveryDetails) => Promise<void>;
  /** @default writes to stderr */
  readonly log?: (line: string) => void;
  readonly retry?: DeliveryRetry;
  /**
   * PutEvents' request size limit. AWS documents 256 KB (raised to 1 MB in 2026); the default keeps
   * the stricter one so that what passes here passes everywhere.
   * @default {@link PUT_EVENTS_MAX_BYTES}
   */
  readonly maxRequestBytes?: number;
}

/** A rule as the programmatic API takes it. */
export interface RuleInput {
  readonly name: string;
  /** @default 'default' */
  readonly eventBusName?: string;
  /** An event pattern, as JSON text or as the object. */
  readonly eventPattern: string | object;
  /** @default 'ENABLED' */
  readonly state?: 'ENABLED' | 'DISABLED';
  readonly description?: string;
}

/** A running EventBridge stand-in. */
export interface EventBridgeStandIn {
  /** `http://{host}:{port}`: the SDK's `endpoint`, or `AWS_ENDPOINT_URL_EVENTBRIDGE`. */
  readonly url: string;
  readonly port: number;
  readonly region: string;
  readonly accountId: string;
  /** Creates a custom bus unless it exists; returns its ARN either way. */
  createEventBus(name: string): string;
  /** Creates or replaces a rule (its targets stay); returns the rule ARN. Throws {@link EventBridgeError}. */
  putRule(rule: RuleInput): string;
  /**
   * Adds or replaces targets (SQS queue ARNs; a FIFO queue needs `messageGroupId`) of a rule. Throws
   * {@link EventBridgeError}.
   */
  putTargets(
    rule: string,
    targets: readonly { readonly id: string; readonly arn: string; readonly messageGroupId?: string }[],
    eventBusName?: string,
  ): void;
  /** Resolves once every delivery started so far has succeeded or been given up. */
  idle(): Promise<void>;
  /** Stops the server; pending retries are abandoned (and logged), deliveries in flight are awaited. */
  close(): Promise<void>;
}

/**
 * An error EventBridge would return: `type` is its `__type` (the SDK's exception class name), sent
 * with `status`.
 */
export class EventBridgeError extends Error {
  constructor(
    readonly type: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
    this.name = 'EventBridgeError';
  }
}

// ---------------------------------------------------------------------------------------------
// Event patterns

type Scalar = string | number | boolean | null;

type LeafMatcher =
  | { readonly kind: 'exists'; readonly exists: boolean }
  | { readonly kind: 'test'; readonly test: (value: Scalar) => boolean };

type PatternNode =
  | { readonly kind: 'leaf'; readonly matchers: readonly LeafMatcher[] }
  | {
      readonly kind: 'object';
      readonly fields: readonly { readonly key: string; readonly node: PatternNode }[];
      /** `$or` groups: each needs one of its alternatives to match. */
      readonly ors: readonly (readonly PatternNode[])[];
    };

/** A parsed event pattern, ready to match events. */
export interface EventPattern {
  /** True when `event` (an EventBridge event envelope, parsed) matches. */
  matches(event: unknown): boolean;
}

function invalidPattern(reason: string): EventBridgeError {
  return new EventBridgeError(
    'InvalidEventPatternException',
    `Event pattern is not valid. Reason: ${reason}`,
  );
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isScalar(value: unknown): value is Scalar {
  return value === null || ['string', 'number', 'boolean'].includes(typeof value);
}

function wildcardRegex(pattern: string): RegExp {
  if (pattern.includes('**')) throw invalidPattern('Consecutive wildcard characters are not allowed');
  let source = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '\\' && i + 1 < pattern.length) {
      i += 1;
      source += pattern[i]!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    } else if (c === '*') {
      source += '.*';
    } else {
      source += c.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    }
  }
  return new RegExp(`^${source}$`, 's');
}

function stringOperand(op: string, operand: unknown): string {
  if (typeof operand !== 'string') throw invalidPattern(`${op} match pattern must be a string`);
  return operand;
}

/** `prefix` / `suffix` take a string or `{ "equals-ignore-case": string }`. */
function affixTest(op: 'prefix' | 'suffix', operand: unknown): (value: string) => boolean {
  let text: string;
  let ignoreCase = false;
  if (isPlainObject(operand)) {
    const keys = Object.keys(operand);
    if (keys.length !== 1 || keys[0] !== 'equals-ignore-case') {
      throw invalidPattern(`Unsupported ${op} pattern: ${JSON.stringify(operand)}`);
    }
    text = stringOperand(op, operand['equals-ignore-case']).toLowerCase();
    ignoreCase = true;
  } else {
    text = stringOperand(op, operand);
  }
  return (value) => {
    const v = ignoreCase ? value.toLowerCase() : value;
    return op === 'prefix' ? v.startsWith(text) : v.endsWith(text);
  };
}

function numericTest(operand: unknown): (value: Scalar) => boolean {
  if (!Array.isArray(operand) || operand.length === 0 || operand.length % 2 !== 0 || operand.length > 4) {
    throw invalidPattern('Value of numeric must be an array of operator and number pairs');
  }
  const checks: ((n: number) => boolean)[] = [];
  let lower = false;
  let upper = false;
  for (let i = 0; i < operand.length; i += 2) {
    const op = operand[i];
    const bound = operand[i + 1];
    if (typeof bound !== 'number') throw invalidPattern(`Value of ${String(op)} must be a number`);
    switch (op) {
      case '=':
        if (operand.length !== 2) throw invalidPattern('= must be the only numeric operator');
        checks.push((n) => n === bound);
        break;
      case '>':
      case '>=':
        if (lower) throw invalidPattern('Bad numeric range: two lower bounds');
        lower = true;
        checks.push(op === '>' ? (n) => n > bound : (n) => n >= bound);
        break;
      case '<':
      case '<=':
        if (upper) throw invalidPattern('Bad numeric range: two upper bounds');
        upper = true;
        checks.push(op === '<' ? (n) => n < bound : (n) => n <= bound);
        break;
      default:
        throw invalidPattern(`Unrecognized numeric range operator: ${JSON.stringify(op)}`);
    }
  }
  return (value) => typeof value === 'number' && checks.every((check) => check(value));
}

function anythingButTest(operand: unknown): (value: Scalar) => boolean {
  if (isPlainObject(operand)) {
    const keys = Object.keys(operand);
    if (keys.length !== 1) throw invalidPattern('anything-but takes one nested match type');
    const key = keys[0]!;
    const inner = operand[key];
    let test: (value: string) => boolean;
    if (key === 'prefix' || key === 'suffix') {
      test = affixTest(key, stringOperand(`anything-but ${key}`, inner));
    } else if (key === 'equals-ignore-case') {
      const values = (Array.isArray(inner) ? inner : [inner]).map((v) =>
        stringOperand('anything-but equals-ignore-case', v).toLowerCase(),
      );
      test = (value) => values.includes(value.toLowerCase());
    } else if (key === 'wildcard') {
      const regexes = (Array.isArray(inner) ? inner : [inner]).map((v) =>
        wildcardRegex(stringOperand('anything-but wildcard', v)),
      );
      test = (value) => regexes.some((r) => r.test(value));
    } else {
      throw invalidPattern(`Unsupported anything-but pattern: ${key}`);
    }
    return (value) => typeof value === 'string' && !test(value);
  }
  const values: readonly unknown[] = Array.isArray(operand) ? operand : [operand];
  if (values.length === 0) throw invalidPattern('Empty arrays are not allowed');
  const allStrings = values.every((v) => typeof v === 'string');
  const allNumbers = values.every((v) => typeof v === 'number');
  if (!allStrings && !allNumbers) {
    throw invalidPattern('Inside anything-but list, mixed types are not allowed');
  }
  const excluded = new Set<unknown>(values);
  return (value) => value !== null && !excluded.has(value);
}

function compileLeafMatcher(element: unknown): LeafMatcher {
  if (isScalar(element)) {
    return { kind: 'test', test: (value) => value === element };
  }
  if (!isPlainObject(element))
    throw invalidPattern('Match value must be String, number, true, false, or null');
  const keys = Object.keys(element);
  if (keys.length !== 1)
    throw invalidPattern(`Only one key allowed in match expression: ${JSON.stringify(element)}`);
  const op = keys[0]!;
  const operand = element[op];
  switch (op) {
    case 'exists':
      if (typeof operand !== 'boolean')
        throw invalidPattern('exists match pattern must be either true or false.');
      return { kind: 'exists', exists: operand };
    case 'prefix':
    case 'suffix': {
      const test = affixTest(op, operand);
      return { kind: 'test', test: (value) => typeof value === 'string' && test(value) };
    }
    case 'equals-ignore-case': {
      const text = stringOperand(op, operand).toLowerCase();
      return { kind: 'test', test: (value) => typeof value === 'string' && value.toLowerCase() === text };
    }
    case 'wildcard': {
      const regex = wildcardRegex(stringOperand(op, operand));
      return { kind: 'test', test: (value) => typeof value === 'string' && regex.test(value) };
    }
    case 'numeric':
      return { kind: 'test', test: numericTest(operand) };
    case 'anything-but':
      return { kind: 'test', test: anythingButTest(operand) };
    case 'cidr':
      throw invalidPattern('cidr matching is not supported by the local EventBridge stand-in');
    default:
      throw invalidPattern(`Unrecognized match type ${op}`);
  }
}

function compileObject(pattern: Record<string, unknown>): PatternNode {
  const fields: { key: string; node: PatternNode }[] = [];
  const ors: PatternNode[][] = [];
  for (const [key, value] of Object.entries(pattern)) {
    if (key === '$or' && Array.isArray(value) && value.length >= 2 && value.every(isPlainObject)) {
      ors.push(value.map((alternative) => compileObject(alternative)));
    } else if (Array.isArray(value)) {
      if (value.length === 0) throw invalidPattern('Empty arrays are not allowed');
      fields.push({ key, node: { kind: 'leaf', matchers: value.map(compileLeafMatcher) } });
    } else if (isPlainObject(value)) {
      if (Object.keys(value).length === 0) throw invalidPattern('Empty objects are not allowed');
      fields.push({ key, node: compileObject(value) });
    } else {
      throw invalidPattern(`Match value for ${key} must be an array or an object`);
    }
  }
  return { kind: 'object', fields, ors };
}

/** Leaf values of an event field: arrays are flattened; an object is not a leaf, so it gives none. */
function leafValues(value: unknown, out: Scalar[] = []): Scalar[] {
  if (Array.isArray(value)) for (const v of value) leafValues(v, out);
  else if (isScalar(value)) out.push(value);
  return out;
}

function matchNode(node: PatternNode, value: unknown): boolean {
  if (node.kind === 'leaf') {
    const values = leafValues(value);
    if (values.length === 0) return node.matchers.some((m) => m.kind === 'exists' && !m.exists);
    return node.matchers.some((m) => (m.kind === 'exists' ? m.exists : values.some((v) => m.test(v))));
  }
  // An array of objects matches when one of its elements does.
  const candidates = Array.isArray(value) ? value.filter(isPlainObject) : [value];
  if (candidates.length === 0) candidates.push(undefined);
  return candidates.some((candidate) => {
    const obj = isPlainObject(candidate) ? candidate : undefined;
    return (
      node.fields.every((f) => matchNode(f.node, obj?.[f.key])) &&
      node.ors.every((alternatives) => alternatives.some((alt) => matchNode(alt, obj)))
    );
  });
}

/**
 * Parses an EventBridge event pattern. Supported: exact values (strings, numbers, booleans, null),
 * nested fields, arrays in events (any element matches), `prefix`, `suffix`, `equals-ignore-case`,
 * `wildcard`, `anything-but` (values, lists, or a nested `prefix` / `suffix` / `equals-ignore-case` /
 * `wildcard`), `exists`, `numeric` ranges and `$or`. Not supported: `cidr`.
 *
 * @throws {EventBridgeError} `InvalidEventPatternException`, as PutRule would.
 */
export function parseEventPattern(pattern: string | object): EventPattern {
  let parsed: unknown = pattern;
  if (typeof pattern === 'string') {
    try {
      parsed = JSON.parse(pattern);
    } catch {
      throw invalidPattern('Filter is not valid JSON');
    }
  }
  if (!isPlainObject(parsed)) throw invalidPattern('Filter is not an object');
  if (Object.keys(parsed).length === 0) throw invalidPattern('Empty objects are not allowed');
  const root = compileObject(parsed);
  return { matches: (event) => matchNode(root, event) };
}

// ---------------------------------------------------------------------------------------------
// PutEvents

/** A PutEvents request entry, as it comes over the wire. */
const putEventsEntrySchema = z.object({
  Time: z.union([z.number(), z.string()]).optional(),
  Source: z.string().optional(),
  Resources: z.array(z.string()).optional(),
  DetailType: z.string().optional(),
  Detail: z.string().optional(),
  EventBusName: z.string().optional(),
  TraceHeader: z.string().optional(),
});

type PutEventsEntry = z.infer<typeof putEventsEntrySchema>;

const utf8Length = (text: string | undefined): number =>
  text === undefined ? 0 : Buffer.byteLength(text, 'utf8');

/**
 * The size AWS counts for one PutEvents entry: `Time` (when given) as 14 bytes, plus the UTF-8 bytes
 * of `Source`, `DetailType`, `Detail` and each of `Resources`. The summed sizes of a call's entries
 * must not exceed the request limit.
 */
export function putEventsEntrySize(entry: {
  readonly Time?: unknown;
  readonly Source?: string;
  readonly DetailType?: string;
  readonly Detail?: string;
  readonly Resources?: readonly string[];
}): number {
  let size = entry.Time !== undefined && entry.Time !== null ? 14 : 0;
  size += utf8Length(entry.Source) + utf8Length(entry.DetailType) + utf8Length(entry.Detail);
  for (const resource of entry.Resources ?? []) size += utf8Length(resource);
  return size;
}

/** An event as EventBridge delivers it to targets. */
interface EventEnvelope {
  readonly version: '0';
  readonly id: string;
  readonly 'detail-type': string;
  readonly source: string;
  readonly account: string;
  readonly time: string;
  readonly region: string;
  readonly resources: readonly string[];
  readonly detail: Record<string, unknown>;
}

/** EventBridge writes times to the second: `2026-01-02T03:04:05Z`. */
function eventTime(time: number | string | undefined): string {
  let date = new Date();
  if (typeof time === 'number') date = new Date(time * 1000);
  else if (typeof time === 'string') date = new Date(time);
  if (Number.isNaN(date.getTime())) date = new Date();
  return `${date.toISOString().slice(0, 19)}Z`;
}

type EntryResult = { EventId: string } | { ErrorCode: string; ErrorMessage: string };

// ---------------------------------------------------------------------------------------------
// State

const targetSchema = z.looseObject({
  Id: z
    .string()
    .regex(/^[.\-_A-Za-z0-9]+$/, 'Member must satisfy regular expression pattern: [\\.\\-_A-Za-z0-9]+')
    .max(64),
  Arn: z.string().min(1).max(1600),
  Input: z.string().optional(),
  InputPath: z.string().optional(),
  SqsParameters: z.object({ MessageGroupId: z.string().optional() }).optional(),
});

type Target = z.infer<typeof targetSchema>;

const ruleStateSchema = z.enum(['ENABLED', 'DISABLED', 'ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS']);

const persistedSchema = z.object({
  version: z.literal(1),
  buses: z.array(
    z.object({
      name: z.string(),
      description: z.string().optional(),
      created: z.number(),
      modified: z.number(),
      rules: z.array(
        z.object({
          name: z.string(),
          eventPattern: z.string(),
          state: ruleStateSchema,
          description: z.string().optional(),
          created: z.number(),
          targets: z.array(targetSchema),
        }),
      ),
    }),
  ),
});

interface Rule {
  readonly name: string;
  readonly arn: string;
  eventPattern: string;
  pattern: EventPattern;
  state: z.infer<typeof ruleStateSchema>;
  description?: string;
  readonly created: number;
  readonly targets: Map<string, Target>;
}

interface Bus {
  readonly name: string;
  readonly arn: string;
  description?: string;
  readonly created: number;
  modified: number;
  readonly rules: Map<string, Rule>;
}

// ---------------------------------------------------------------------------------------------
// Requests

function validationError(issues: readonly z.core.$ZodIssue[]): EventBridgeError {
  const details = issues.map((issue) => {
    const at = issue.path.map(String).join('.');
    return `Value at '${at}' failed to satisfy constraint: ${issue.message}`;
  });
  return new EventBridgeError(
    'ValidationException',
    `${details.length} validation error${details.length === 1 ? '' : 's'} detected: ${details.join('; ')}`,
  );
}

function parseInput<T>(schema: z.ZodType<T>, input: unknown): T {
  const result = schema.safeParse(input);
  if (!result.success) throw validationError(result.error.issues);
  return result.data;
}

const busNameSchema = z
  .string()
  .min(1)
  .max(256)
  .regex(/^[/.\-_A-Za-z0-9]+$/, 'Member must satisfy regular expression pattern: [/\\.\\-_A-Za-z0-9]+');
const ruleNameSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[.\-_A-Za-z0-9]+$/, 'Member must satisfy regular expression pattern: [\\.\\-_A-Za-z0-9]+');
/** A bus name or ARN, where an operation takes either. */
const busRefSchema = z.string().min(1).max(1600).optional();
const limitSchema = z.number().int().min(1).max(100).optional();

const schemas = {
  CreateEventBus: z.object({ Name: busNameSchema, Description: z.string().max(512).optional() }),
  DescribeEventBus: z.object({ Name: busRefSchema }),
  DeleteEventBus: z.object({ Name: busNameSchema }),
  ListEventBuses: z.object({
    NamePrefix: z.string().optional(),
    NextToken: z.string().optional(),
    Limit: limitSchema,
  }),
  PutEvents: z.object({ Entries: z.array(putEventsEntrySchema) }),
  PutRule: z.object({
    Name: ruleNameSchema,
    EventBusName: busRefSchema,
    EventPattern: z.string().max(4096).optional(),
    ScheduleExpression: z.string().optional(),
    State: ruleStateSchema.optional(),
    Description: z.string().max(512).optional(),
    RoleArn: z.string().optional(),
  }),
  RuleRef: z.object({ Name: ruleNameSchema, EventBusName: busRefSchema }),
  DeleteRule: z.object({ Name: ruleNameSchema, EventBusName: busRefSchema, Force: z.boolean().optional() }),
  ListRules: z.object({
    NamePrefix: z.string().optional(),
    EventBusName: busRefSchema,
    NextToken: z.string().optional(),
    Limit: limitSchema,
  }),
  PutTargets: z.object({
    Rule: ruleNameSchema,
    EventBusName: busRefSchema,
    Targets: z.array(targetSchema).min(1).max(10),
  }),
  RemoveTargets: z.object({
    Rule: ruleNameSchema,
    EventBusName: busRefSchema,
    Ids: z.array(z.string()).min(1).max(100),
    Force: z.boolean().optional(),
  }),
  ListTargetsByRule: z.object({
    Rule: ruleNameSchema,
    EventBusName: busRefSchema,
    NextToken: z.string().optional(),
    Limit: limitSchema,
  }),
  TestEventPattern: z.object({ EventPattern: z.string(), Event: z.string() }),
};

/** The bus name in a name-or-ARN parameter. */
function busNameOf(ref: string | undefined): string {
  if (ref === undefined || ref === '') return DEFAULT_BUS;
  const marker = ':event-bus/';
  const at = ref.startsWith('arn:') ? ref.indexOf(marker) : -1;
  return at >= 0 ? ref.slice(at + marker.length) : ref;
}

/** One page of `items` and the token of the next, if any. */
function page<T>(
  items: readonly T[],
  token: string | undefined,
  limit: number | undefined,
): { items: T[]; next?: string } {
  let start = 0;
  if (token !== undefined) {
    start = Number.parseInt(Buffer.from(token, 'base64').toString('utf8'), 10);
    if (!Number.isInteger(start) || start < 0)
      throw new EventBridgeError('ValidationException', 'The NextToken is not valid.');
  }
  const end = limit === undefined ? items.length : start + limit;
  const next = end < items.length ? Buffer.from(String(end), 'utf8').toString('base64') : undefined;
  return { items: items.slice(start, end), ...(next !== undefined ? { next } : {}) };
}

/** `$`, `$.a.b` or `$['a'].b`: what InputPath selects here. */
function selectPath(event: unknown, jsonPath: string): unknown {
  if (jsonPath === '$') return event;
  const parts = jsonPath
    .replace(/^\$/, '')
    .replace(/\[['"]?([^'"\]]+)['"]?\]/g, '.$1')
    .split('.')
    .filter((p) => p !== '');
  let value: unknown = event;
  for (const part of parts) {
    if (isPlainObject(value)) value = value[part];
    else if (Array.isArray(value) && /^\d+$/.test(part)) value = value[Number(part)];
    else return undefined;
  }
  return value;
}

const SQS_ARN = /^arn:aws[\w-]*:sqs:[a-z0-9-]+:\d{12}:[\w-]+(\.fifo)?$/;

const sleep = (ms: number, signal: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });

/**
 * Starts a local EventBridge on `host:port`. Point `@aws-sdk/client-eventbridge` at its `url`
 * (`endpoint`, or `AWS_ENDPOINT_URL_EVENTBRIDGE`); any credentials are accepted.
 *
 * Operations: CreateEventBus, DescribeEventBus, DeleteEventBus, ListEventBuses, PutEvents,
 * PutRule (event patterns only), DescribeRule, DeleteRule, ListRules, EnableRule, DisableRule,
 * PutTargets (SQS queue targets, with `Input` / `InputPath`), RemoveTargets, ListTargetsByRule,
 * TestEventPattern. A matching event is handed to `deliver` for each target of each enabled rule.
 *
 * @example
 * const eventBridge = await startEventBridge({ host: '127.0.0.1', port: 0, deliver: sendToSqs });
 * const client = new EventBridgeClient({ endpoint: eventBridge.url, region: 'us-east-1', credentials });
 */
export async function startEventBridge(options: EventBridgeOptions): Promise<EventBridgeStandIn> {
  const region = options.region ?? 'us-east-1';
  const accountId = options.accountId ?? '000000000000';
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const attempts = Math.max(1, options.retry?.attempts ?? 5);
  const baseDelayMs = options.retry?.baseDelayMs ?? 200;
  const maxRequestBytes = options.maxRequestBytes ?? PUT_EVENTS_MAX_BYTES;
  const statePath = options.dataDir === undefined ? undefined : path.join(options.dataDir, STATE_FILE);

  const buses = new Map<string, Bus>();
  const inflight = new Set<Promise<void>>();
  const closing = new AbortController();

  const busArn = (name: string) => `arn:aws:events:${region}:${accountId}:event-bus/${name}`;
  const ruleArn = (bus: string, name: string) =>
    `arn:aws:events:${region}:${accountId}:rule/${bus === DEFAULT_BUS ? '' : `${bus}/`}${name}`;

  function addBus(name: string, description?: string, created = Date.now(), modified = created): Bus {
    const bus: Bus = { name, arn: busArn(name), created, modified, rules: new Map() };
    if (description !== undefined) bus.description = description;
    buses.set(name, bus);
    return bus;
  }

  function save(): void {
    if (statePath === undefined) return;
    const state: z.infer<typeof persistedSchema> = {
      version: 1,
      buses: [...buses.values()].map((bus) => ({
        name: bus.name,
        ...(bus.description !== undefined ? { description: bus.description } : {}),
        created: bus.created,
        modified: bus.modified,
        rules: [...bus.rules.values()].map((rule) => ({
          name: rule.name,
          eventPattern: rule.eventPattern,
          state: rule.state,
          ...(rule.description !== undefined ? { description: rule.description } : {}),
          created: rule.created,
          targets: [...rule.targets.values()],
        })),
      })),
    };
    fs.mkdirSync(path.dirname(statePath), { recursive: true });
    const temp = `${statePath}.${process.pid}.tmp`;
    fs.writeFileSync(temp, `${JSON.stringify(state, null, 2)}\n`);
    fs.renameSync(temp, statePath);
  }

  function load(): void {
    if (statePath === undefined || !fs.existsSync(statePath)) return;
    let state: z.infer<typeof persistedSchema>;
    try {
      state = persistedSchema.parse(JSON.parse(fs.readFileSync(statePath, 'utf8')));
    } catch (error) {
      throw new Error(`eventbridge: cannot read ${statePath}: ${String(error)}`, { cause: error });
    }
    for (const saved of state.buses) {
      const bus = addBus(saved.name, saved.description, saved.created, saved.modified);
      for (const r of saved.rules) {
        const rule: Rule = {
          name: r.name,
          arn: ruleArn(bus.name, r.name),
          eventPattern: r.eventPattern,
          pattern: parseEventPattern(r.eventPattern),
          state: r.state,
          created: r.created,
          targets: new Map(r.targets.map((t) => [t.Id, t])),
        };
        if (r.description !== undefined) rule.description = r.description;
        bus.rules.set(rule.name, rule);
      }
    }
  }

  load();
  if (!buses.has(DEFAULT_BUS)) addBus(DEFAULT_BUS);

  function getBus(ref: string | undefined): Bus {
    const name = busNameOf(ref);
    const bus = buses.get(name);
    if (bus === undefined)
      throw new EventBridgeError('ResourceNotFoundException', `Event bus ${name} does not exist.`);
    return bus;
  }

  function getRule(bus: Bus, name: string): Rule {
    const rule = bus.rules.get(name);
    if (rule === undefined) {
      throw new EventBridgeError(
        'ResourceNotFoundException',
        `Rule ${name} does not exist on EventBus ${bus.name}.`,
      );
    }
    return rule;
  }

  function describeBus(bus: Bus): Record<string, unknown> {
    return {
      Name: bus.name,
      Arn: bus.arn,
      ...(bus.description !== undefined ? { Description: bus.description } : {}),
      CreationTime: bus.created / 1000,
      LastModifiedTime: bus.modified / 1000,
    };
  }

  function describeRule(bus: Bus, rule: Rule): Record<string, unknown> {
    return {
      Name: rule.name,
      Arn: rule.arn,
      EventPattern: rule.eventPattern,
      State: rule.state,
      ...(rule.description !== undefined ? { Description: rule.description } : {}),
      EventBusName: bus.name,
      CreatedBy: accountId,
    };
  }

  function createEventBus(name: string, description?: string): string {
    if (buses.has(name))
      throw new EventBridgeError('ResourceAlreadyExistsException', `Event bus ${name} already exists.`);
    if (name.startsWith('aws.')) {
      throw new EventBridgeError(
        'ValidationException',
        `Event bus name ${name} is reserved for partner event sources.`,
      );
    }
    const bus = addBus(name, description);
    save();
    return bus.arn;
  }

  function putRule(input: z.infer<typeof schemas.PutRule>): string {
    if (input.ScheduleExpression !== undefined) {
      throw new EventBridgeError(
        'ValidationException',
        'ScheduleExpression is not supported by the local EventBridge stand-in; use an EventPattern.',
      );
    }
    if (input.EventPattern === undefined) {
      throw new EventBridgeError(
        'ValidationException',
        'Parameter(s) EventPattern or ScheduleExpression must be specified.',
      );
    }
    const bus = getBus(input.EventBusName);
    const pattern = parseEventPattern(input.EventPattern);
    const existing = bus.rules.get(input.Name);
    const rule: Rule = {
      name: input.Name,
      arn: ruleArn(bus.name, input.Name),
      eventPattern: input.EventPattern,
      pattern,
      state: input.State ?? 'ENABLED',
      created: existing?.created ?? Date.now(),
      targets: existing?.targets ?? new Map(),
    };
    if (input.Description !== undefined) rule.description = input.Description;
    bus.rules.set(rule.name, rule);
    save();
    return rule.arn;
  }

  /** Why a target cannot be taken, or undefined. */
  function targetProblem(target: Target): string | undefined {
    if (!SQS_ARN.test(target.Arn)) {
      return `Target ${target.Arn} is not supported by the local EventBridge stand-in: only SQS queue ARNs (arn:aws:sqs:region:account:queue) are.`;
    }
    if (target.Arn.endsWith('.fifo') && target.SqsParameters?.MessageGroupId === undefined) {
      return `Parameter(s) SqsParameters must be specified for target: ${target.Id}.`;
    }
    if (target.InputTransformer !== undefined)
      return 'InputTransformer is not supported by the local EventBridge stand-in.';
    if (target.Input !== undefined && target.InputPath !== undefined) {
      return `Only one of Input, InputPath or InputTransformer may be specified for target: ${target.Id}.`;
    }
    if (target.Input !== undefined) {
      try {
        JSON.parse(target.Input);
      } catch {
        return 'Input is not valid JSON text.';
      }
    }
    if (target.InputPath !== undefined && !target.InputPath.startsWith('$'))
      return 'InputPath is not a valid JSONPath.';
    return undefined;
  }

  function putTargets(
    input: z.infer<typeof schemas.PutTargets>,
  ): { TargetId: string; ErrorCode: string; ErrorMessage: string }[] {
    const rule = getRule(getBus(input.EventBusName), input.Rule);
    const failed: { TargetId: string; ErrorCode: string; ErrorMessage: string }[] = [];
    const accepted: Target[] = [];
    for (const target of input.Targets) {
      const problem = targetProblem(target);
      if (problem === undefined) accepted.push(target);
      else failed.push({ TargetId: target.Id, ErrorCode: 'ValidationException', ErrorMessage: problem });
    }
    const ids = new Set([...rule.targets.keys(), ...accepted.map((t) => t.Id)]);
    if (ids.size > MAX_TARGETS_PER_RULE) {
      throw new EventBridgeError(
        'LimitExceededException',
        'The requested resource exceeds the maximum number allowed.',
      );
    }
    for (const target of accepted) rule.targets.set(target.Id, target);
    if (accepted.length > 0) save();
    for (const f of failed)
      log(`eventbridge: PutTargets on rule ${rule.name} refused target ${f.TargetId}: ${f.ErrorMessage}`);
    return failed;
  }

  function scheduleDelivery(targetArn: string, body: string, details: DeliveryDetails, what: string): void {
    const run = async (): Promise<void> => {
      for (let attempt = 1; ; attempt++) {
        try {
          await options.deliver(targetArn, body, details);
          return;
        } catch (error) {
          const reason = error instanceof Error ? error.message : String(error);
          if (attempt >= attempts) {
            log(
              `eventbridge: gave up delivering ${what} to ${targetArn} after ${attempt} attempts: ${reason}`,
            );
            return;
          }
          await sleep(baseDelayMs * 2 ** (attempt - 1), closing.signal);
          if (closing.signal.aborted) {
            log(
              `eventbridge: dropped ${what} to ${targetArn} on shutdown after ${attempt} attempts: ${reason}`,
            );
            return;
          }
        }
      }
    };
    const p: Promise<void> = run()
      .catch((error: unknown) => log(`eventbridge: delivery of ${what} failed: ${String(error)}`))
      .finally(() => inflight.delete(p));
    inflight.add(p);
  }

  function route(bus: Bus, event: EventEnvelope): void {
    let json: string | undefined;
    for (const rule of bus.rules.values()) {
      if (rule.state === 'DISABLED' || rule.targets.size === 0 || !rule.pattern.matches(event)) continue;
      json ??= JSON.stringify(event);
      for (const target of rule.targets.values()) {
        let body = json;
        if (target.Input !== undefined) body = target.Input;
        else if (target.InputPath !== undefined)
          body = JSON.stringify(selectPath(event, target.InputPath) ?? null);
        const groupId = target.SqsParameters?.MessageGroupId;
        const details: DeliveryDetails = {
          eventId: event.id,
          ...(groupId !== undefined ? { messageGroupId: groupId } : {}),
        };
        scheduleDelivery(
          target.Arn,
          body,
          details,
          `event ${event.id} (rule ${rule.name}, target ${target.Id})`,
        );
      }
    }
  }

  function putEventsEntry(entry: PutEventsEntry): EntryResult {
    if (!entry.Source) {
      return {
        ErrorCode: 'InvalidArgument',
        ErrorMessage: 'Parameter Source is not valid. Reason: Source is a required argument.',
      };
    }
    if (!entry.DetailType) {
      return {
        ErrorCode: 'InvalidArgument',
        ErrorMessage: 'Parameter DetailType is not valid. Reason: DetailType is a required argument.',
      };
    }
    if (!entry.Detail) {
      return {
        ErrorCode: 'InvalidArgument',
        ErrorMessage: 'Parameter Detail is not valid. Reason: Detail is a required argument.',
      };
    }
    let detail: unknown;
    try {
      detail = JSON.parse(entry.Detail);
    } catch {
      detail = undefined;
    }
    if (!isPlainObject(detail)) return { ErrorCode: 'MalformedDetail', ErrorMessage: 'Detail is malformed.' };
    const event: EventEnvelope = {
      version: '0',
      id: randomUUID(),
      'detail-type': entry.DetailType,
      source: entry.Source,
      account: accountId,
      time: eventTime(entry.Time),
      region,
      resources: entry.Resources ?? [],
      detail,
    };
    const busName = busNameOf(entry.EventBusName);
    const bus = buses.get(busName);
    // AWS accepts an event for a bus that does not exist, answers with an EventId, and drops it.
    if (bus === undefined)
      log(`eventbridge: event bus ${busName} does not exist; event ${event.id} accepted and dropped`);
    else route(bus, event);
    return { EventId: event.id };
  }

  function putEvents(input: z.infer<typeof schemas.PutEvents>): {
    FailedEntryCount: number;
    Entries: EntryResult[];
  } {
    const entries = input.Entries;
    if (entries.length < 1 || entries.length > PUT_EVENTS_MAX_ENTRIES) {
      const bound =
        entries.length < 1 ? 'greater than or equal to 1' : `less than or equal to ${PUT_EVENTS_MAX_ENTRIES}`;
      throw new EventBridgeError(
        'ValidationException',
        `1 validation error detected: Value at 'entries' failed to satisfy constraint: Member must have length ${bound}`,
      );
    }
    const total = entries.reduce((sum, entry) => sum + putEventsEntrySize(entry), 0);
    if (total > maxRequestBytes) {
      throw new EventBridgeError(
        'ValidationException',
        'Total size of the entries in the request is over the limit.',
      );
    }
    const results = entries.map(putEventsEntry);
    return { FailedEntryCount: results.filter((r) => 'ErrorCode' in r).length, Entries: results };
  }

  const eventSchema = z.looseObject({
    id: z.string(),
    'detail-type': z.string(),
    source: z.string(),
    account: z.string(),
    time: z.string(),
    region: z.string(),
    resources: z.array(z.string()),
  });

  const operations: Record<string, (input: unknown) => unknown> = {
    CreateEventBus: (input) => {
      const { Name, Description } = parseInput(schemas.CreateEventBus, input);
      return { EventBusArn: createEventBus(Name, Description) };
    },
    DescribeEventBus: (input) => describeBus(getBus(parseInput(schemas.DescribeEventBus, input).Name)),
    DeleteEventBus: (input) => {
      const { Name } = parseInput(schemas.DeleteEventBus, input);
      if (Name === DEFAULT_BUS)
        throw new EventBridgeError('ValidationException', 'Cannot delete event bus default.');
      // Deleting a bus that is not there succeeds, as on AWS.
      if (buses.delete(Name)) save();
      return {};
    },
    ListEventBuses: (input) => {
      const { NamePrefix, NextToken, Limit } = parseInput(schemas.ListEventBuses, input);
      const all = [...buses.values()].filter(
        (b) => NamePrefix === undefined || b.name.startsWith(NamePrefix),
      );
      const { items, next } = page(all, NextToken, Limit);
      return { EventBuses: items.map(describeBus), ...(next !== undefined ? { NextToken: next } : {}) };
    },
    PutEvents: (input) => putEvents(parseInput(schemas.PutEvents, input)),
    PutRule: (input) => ({ RuleArn: putRule(parseInput(schemas.PutRule, input)) }),
    DescribeRule: (input) => {
      const { Name, EventBusName } = parseInput(schemas.RuleRef, input);
      const bus = getBus(EventBusName);
      return describeRule(bus, getRule(bus, Name));
    },
    DeleteRule: (input) => {
      const { Name, EventBusName, Force } = parseInput(schemas.DeleteRule, input);
      const bus = getBus(EventBusName);
      const rule = bus.rules.get(Name);
      if (rule === undefined) return {};
      if (rule.targets.size > 0 && Force !== true) {
        throw new EventBridgeError('ValidationException', "Rule can't be deleted since it has targets.");
      }
      bus.rules.delete(Name);
      save();
      return {};
    },
    EnableRule: (input) => {
      const { Name, EventBusName } = parseInput(schemas.RuleRef, input);
      getRule(getBus(EventBusName), Name).state = 'ENABLED';
      save();
      return {};
    },
    DisableRule: (input) => {
      const { Name, EventBusName } = parseInput(schemas.RuleRef, input);
      getRule(getBus(EventBusName), Name).state = 'DISABLED';
      save();
      return {};
    },
    ListRules: (input) => {
      const { NamePrefix, EventBusName, NextToken, Limit } = parseInput(schemas.ListRules, input);
      const bus = getBus(EventBusName);
      const all = [...bus.rules.values()].filter(
        (r) => NamePrefix === undefined || r.name.startsWith(NamePrefix),
      );
      const { items, next } = page(all, NextToken, Limit);
      return {
        Rules: items.map((r) => describeRule(bus, r)),
        ...(next !== undefined ? { NextToken: next } : {}),
      };
    },
    PutTargets: (input) => {
      const failed = putTargets(parseInput(schemas.PutTargets, input));
      return { FailedEntryCount: failed.length, FailedEntries: failed };
    },
    RemoveTargets: (input) => {
      const { Rule: name, EventBusName, Ids } = parseInput(schemas.RemoveTargets, input);
      const rule = getRule(getBus(EventBusName), name);
      const failed: { TargetId: string; ErrorCode: string; ErrorMessage: string }[] = [];
      for (const id of Ids) {
        if (!rule.targets.delete(id)) {
          failed.push({
            TargetId: id,
            ErrorCode: 'ResourceNotFoundException',
            ErrorMessage: `Rule '${rule.name}' does not have a target with the Id '${id}'.`,
          });
        }
      }
      if (failed.length < Ids.length) save();
      return { FailedEntryCount: failed.length, FailedEntries: failed };
    },
    ListTargetsByRule: (input) => {
      const { Rule: name, EventBusName, NextToken, Limit } = parseInput(schemas.ListTargetsByRule, input);
      const rule = getRule(getBus(EventBusName), name);
      const { items, next } = page([...rule.targets.values()], NextToken, Limit);
      return { Targets: items, ...(next !== undefined ? { NextToken: next } : {}) };
    },
    TestEventPattern: (input) => {
      const { EventPattern, Event } = parseInput(schemas.TestEventPattern, input);
      const pattern = parseEventPattern(EventPattern);
      let event: unknown;
      try {
        event = JSON.parse(Event);
      } catch {
        event = undefined;
      }
      if (!eventSchema.safeParse(event).success) {
        throw new EventBridgeError('ValidationException', 'Parameter Event is not valid.');
      }
      return { Result: pattern.matches(event) };
    },
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = randomUUID();
    let status = 200;
    let payload: unknown;
    try {
      const target = req.headers['x-amz-target'];
      const operation =
        typeof target === 'string' && target.startsWith('AWSEvents.')
          ? operations[target.slice('AWSEvents.'.length)]
          : undefined;
      const body = await readBody(req, MAX_BODY_BYTES);
      if (body === undefined) {
        res.setHeader('connection', 'close');
        throw new EventBridgeError(
          'RequestEntityTooLargeException',
          `Request body is larger than ${MAX_BODY_BYTES} bytes.`,
          413,
        );
      }
      if (req.method !== 'POST' || operation === undefined) {
        throw new EventBridgeError('UnknownOperationException', `Unknown operation ${String(target)}.`);
      }
      let input: unknown = {};
      if (body.length > 0) {
        try {
          input = JSON.parse(body.toString('utf8'));
        } catch {
          throw new EventBridgeError('SerializationException', 'Request body is not valid JSON.');
        }
      }
      payload = operation(input);
    } catch (error) {
      if (error instanceof EventBridgeError) {
        status = error.status;
        payload = { __type: error.type, message: error.message };
      } else {
        status = 500;
        payload = { __type: 'InternalException', message: 'Internal error.' };
        log(
          `eventbridge: internal error (request ${requestId}): ${error instanceof Error ? error.stack : String(error)}`,
        );
      }
    }
    const text = JSON.stringify(payload);
    res.writeHead(status, {
      'content-type': 'application/x-amz-json-1.1',
      'content-length': Buffer.byteLength(text),
      'x-amzn-requestid': requestId,
    });
    res.end(text);
  }

  const server = createServer((req, res) => {
    void handle(req, res);
  });
  const running = await listen(server, options.host, options.port);

  return {
    url: running.url,
    port: running.port,
    region,
    accountId,
    createEventBus: (name) => {
      const bus = buses.get(parseInput(busNameSchema, name));
      return bus?.arn ?? createEventBus(name);
    },
    putRule: (rule) =>
      putRule(
        parseInput(schemas.PutRule, {
          Name: rule.name,
          EventBusName: rule.eventBusName,
          EventPattern:
            typeof rule.eventPattern === 'string' ? rule.eventPattern : JSON.stringify(rule.eventPattern),
          State: rule.state,
          Description: rule.description,
        }),
      ),
    putTargets: (rule, targets, eventBusName) => {
      const failed = putTargets(
        parseInput(schemas.PutTargets, {
          Rule: rule,
          EventBusName: eventBusName,
          Targets: targets.map((t) => ({
            Id: t.id,
            Arn: t.arn,
            ...(t.messageGroupId !== undefined
              ? { SqsParameters: { MessageGroupId: t.messageGroupId } }
              : {}),
          })),
        }),
      );
      if (failed.length > 0)
        throw new EventBridgeError('ValidationException', failed.map((f) => f.ErrorMessage).join(' '));
    },
    idle: async () => {
      while (inflight.size > 0) await Promise.allSettled([...inflight]);
    },
    close: async () => {
      closing.abort();
      await running.close();
      while (inflight.size > 0) await Promise.allSettled([...inflight]);
    },
  };
}
