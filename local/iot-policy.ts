/**
 * An evaluator of AWS IoT Core policy documents, as IoT Core evaluates them, for the local broker.
 *
 * Why: the cloud enforces the policy documents the custom authorizer returns (`devicePolicyDocuments` in
 * `functions/core/identity/policy.ts`) and the thing policy attached to X.509 certificates
 * (`thingPolicyDocument`). A local broker that enforces the same documents with the same rules cannot drift
 * from the cloud the way a second, hand-written encoding can.
 *
 * Emulated (IAM policy language as IoT Core uses it):
 * - explicit `Deny` wins over `Allow`; nothing allowed is denied (default deny);
 * - `Action`/`NotAction` (string or array; `*` and `?` wildcards, case-insensitive), `Resource`/`NotResource`
 *   (string or array; `*` matches any run of characters including `/` and `:`, `?` exactly one, case-sensitive;
 *   MQTT's `+` and `#` are plain characters, so the filter `devices/d1/#` is matched by `topicfilter/devices/d1/*`);
 * - policy variables (version `2012-10-17` only; older versions treat `${...}` as text): `${iot:ClientId}`,
 *   `${iot:Connection.Thing.ThingName}`, `${iot:Connection.Thing.IsAttached}`,
 *   `${iot:Connection.Thing.ThingTypeName}`, any extra key the caller gives, and the escapes `${*}`, `${?}`,
 *   `${$}` (a literal `*`, `?`, `$`). A substituted value is literal text: a client id `a*` matches only `a*`.
 *   A variable without a value makes the statement not apply (IoT Core: the resource does not match);
 * - `Condition` with `StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`, `StringNotEqualsIgnoreCase`,
 *   `StringLike`, `StringNotLike`, `Bool`, `Null`, and their `...IfExists` forms (IAM semantics: a missing key
 *   fails a positive operator and passes a negated one). Any other operator (dates, numbers, IP addresses,
 *   `ForAnyValue:`...) makes its statement never apply; {@link CompiledPolicy.warnings} lists each.
 *
 * Not emulated: policy size and count limits, `Principal` (identity policies have none), multi-valued keys,
 * default values of variables (`${key, 'x'}` counts as a variable without a value).
 *
 * Speed: a document set is parsed once ({@link compilePolicies}); binding it to a connection's context
 * ({@link CompiledPolicy.forContext}) substitutes the variables and builds one RegExp per statement, once; a
 * check is then a few RegExp tests. Keep the {@link ContextPolicy} per connection.
 */
import { ValidationError } from '../functions/core/errors.ts';
import type { PolicyTarget } from '../functions/core/identity/policy.ts';

/** The IoT Core data-plane actions the broker checks. */
export type IotAction = 'iot:Connect' | 'iot:Publish' | 'iot:RetainPublish' | 'iot:Subscribe' | 'iot:Receive';

/**
 * What IoT Core knows about a connection when it evaluates a policy: the values of the policy variables and
 * condition keys. Leave a field out when IoT Core would have no value for it (no thing attached: no
 * `thingName`), so that statements using it do not apply.
 */
export interface PolicyContext {
  /** `iot:ClientId`: the MQTT client id. */
  readonly clientId?: string | undefined;
  /**
   * `iot:Connection.Thing.ThingName`: the thing the connection's certificate is attached to, named by the
   * client id (IoT Core resolves it only when a thing of the client id's name is attached to the principal).
   */
  readonly thingName?: string | undefined;
  /** `iot:Connection.Thing.IsAttached`: whether that thing is attached to the certificate. */
  readonly isAttached?: boolean | undefined;
  /** `iot:Connection.Thing.ThingTypeName`, when the thing has a type. */
  readonly thingTypeName?: string | undefined;
  /** Any further keys (`iot:Certificate.Subject.CommonName`, ...), by their full name. */
  readonly extra?: Readonly<Record<string, string>> | undefined;
}

/** The answer to one check. */
export interface PolicyDecision {
  /** Whether IoT Core would allow the action. */
  readonly allowed: boolean;
  /** Why: the deciding statement (`document 1, statement 2 (Sid 'x')`), or that no statement allows it. */
  readonly reason: string;
}

/** A document set bound to one connection's context: what the broker keeps per connection. */
export interface ContextPolicy {
  /**
   * Whether the connection may perform `action` on `resourceArn` (see {@link clientArn}, {@link topicArn},
   * {@link topicFilterArn}, {@link resourceArnFor}).
   */
  authorize(action: IotAction, resourceArn: string): PolicyDecision;
}

/** A parsed, checked document set (see {@link compilePolicies}). */
export interface CompiledPolicy {
  /** Statements that can never apply (an unsupported condition operator), one sentence each. */
  readonly warnings: readonly string[];
  /** The documents bound to a context; variables and conditions are resolved here, once. */
  forContext(context: PolicyContext): ContextPolicy;
  /**
   * {@link ContextPolicy.authorize} for `context`; the binding is cached per context object, so pass the same
   * object for the same connection.
   */
  authorize(action: IotAction, resourceArn: string, context: PolicyContext): PolicyDecision;
}

/** `arn:{partition}:iot:{region}:{account}`: the prefix of every IoT data-plane resource. */
export function iotArnPrefix(target: PolicyTarget): string {
  return `arn:${target.partition}:iot:${target.region}:${target.account}`;
}

/** The resource IoT Core checks `iot:Connect` against: `...:client/{clientId}`. */
export function clientArn(target: PolicyTarget, clientId: string): string {
  return `${iotArnPrefix(target)}:client/${clientId}`;
}

/** The resource IoT Core checks `iot:Publish` and `iot:Receive` against: `...:topic/{topic}`. */
export function topicArn(target: PolicyTarget, topic: string): string {
  return `${iotArnPrefix(target)}:topic/${topic}`;
}

/**
 * The resource IoT Core checks `iot:Subscribe` against: `...:topicfilter/{filter}`, the filter as the client
 * wrote it (its `+` and `#` are plain characters to the policy).
 */
export function topicFilterArn(target: PolicyTarget, filter: string): string {
  return `${iotArnPrefix(target)}:topicfilter/${filter}`;
}

/**
 * The resource of `action` on `name` (a client id for connect, a topic for publish and receive, a topic
 * filter for subscribe), so a caller need not remember which ARN kind each action uses.
 */
export function resourceArnFor(action: IotAction, target: PolicyTarget, name: string): string {
  switch (action) {
    case 'iot:Connect':
      return clientArn(target, name);
    case 'iot:Subscribe':
      return topicFilterArn(target, name);
    case 'iot:Publish':
    case 'iot:RetainPublish':
    case 'iot:Receive':
      return topicArn(target, name);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Patterns: a resource or condition value, split into literal text, wildcards and variables.

type Part =
  | { readonly kind: 'text'; readonly text: string }
  | { readonly kind: 'any' }
  | { readonly kind: 'one' }
  | { readonly kind: 'variable'; readonly key: string };

const ESCAPED_VARIABLES: Readonly<Record<string, string>> = { '*': '*', '?': '?', $: '$' };

/** Splits a policy string; `variables` false (version 2008-10-17) leaves `${...}` as text. */
function parsePattern(source: string, variables: boolean): Part[] {
  const parts: Part[] = [];
  let text = '';
  const flush = () => {
    if (text !== '') parts.push({ kind: 'text', text });
    text = '';
  };
  for (let i = 0; i < source.length; i++) {
    const c = source.charAt(i);
    if (variables && c === '$' && source.charAt(i + 1) === '{') {
      const end = source.indexOf('}', i + 2);
      if (end !== -1) {
        const name = source.slice(i + 2, end).trim();
        const escaped = ESCAPED_VARIABLES[name];
        if (escaped !== undefined) {
          text += escaped;
        } else {
          flush();
          parts.push({ kind: 'variable', key: name.toLowerCase() });
        }
        i = end;
        continue;
      }
    }
    if (c === '*' || c === '?') {
      flush();
      parts.push({ kind: c === '*' ? 'any' : 'one' });
      continue;
    }
    text += c;
  }
  flush();
  return parts;
}

const hasVariables = (parts: readonly Part[]) => parts.some((p) => p.kind === 'variable');

const escapeRegExp = (text: string) => text.replace(/[\\^$.*+?()[\]{}|/]/g, '\\$&');

/** The RegExp source of a pattern, or undefined when one of its variables has no value. */
function patternSource(parts: readonly Part[], values: ReadonlyMap<string, string>): string | undefined {
  let source = '';
  for (const part of parts) {
    switch (part.kind) {
      case 'text':
        source += escapeRegExp(part.text);
        break;
      case 'any':
        source += '[^]*';
        break;
      case 'one':
        source += '[^]';
        break;
      case 'variable': {
        const value = values.get(part.key);
        if (value === undefined) return undefined;
        source += escapeRegExp(value);
        break;
      }
    }
  }
  return source;
}

/** The context as condition keys and variable values, keys lowercased (IAM key names are case-insensitive). */
function contextValues(context: PolicyContext): Map<string, string> {
  const values = new Map<string, string>();
  const put = (key: string, value: string | boolean | undefined) => {
    if (value !== undefined) values.set(key.toLowerCase(), String(value));
  };
  for (const [key, value] of Object.entries(context.extra ?? {})) put(key, value);
  put('iot:ClientId', context.clientId);
  put('iot:Connection.Thing.ThingName', context.thingName);
  put('iot:Connection.Thing.IsAttached', context.isAttached);
  put('iot:Connection.Thing.ThingTypeName', context.thingTypeName);
  return values;
}

// ---------------------------------------------------------------------------------------------------------
// Conditions.

interface CompiledCondition {
  /** Whether the condition holds for the context; undefined values of variables make it false. */
  holds(values: ReadonlyMap<string, string>): boolean;
}

/** A pattern as plain text (its `*` and `?` literal), or undefined when one of its variables has no value. */
function literalValue(parts: readonly Part[], values: ReadonlyMap<string, string>): string | undefined {
  let text = '';
  for (const part of parts) {
    if (part.kind === 'text') text += part.text;
    else if (part.kind === 'any') text += '*';
    else if (part.kind === 'one') text += '?';
    else {
      const value = values.get(part.key);
      if (value === undefined) return undefined;
      text += value;
    }
  }
  return text;
}

type StringTest = (actual: string, expected: readonly Part[], values: ReadonlyMap<string, string>) => boolean;

const equals: StringTest = (actual, expected, values) => literalValue(expected, values) === actual;
const equalsIgnoringCase: StringTest = (actual, expected, values) =>
  literalValue(expected, values)?.toLowerCase() === actual.toLowerCase();
const like: StringTest = (actual, expected, values) => {
  const source = patternSource(expected, values);
  return source !== undefined && new RegExp(`^${source}$`).test(actual);
};

const STRING_OPERATORS: Readonly<Record<string, { test: StringTest; negated: boolean }>> = {
  stringequals: { test: equals, negated: false },
  stringnotequals: { test: equals, negated: true },
  stringequalsignorecase: { test: equalsIgnoringCase, negated: false },
  stringnotequalsignorecase: { test: equalsIgnoringCase, negated: true },
  stringlike: { test: like, negated: false },
  stringnotlike: { test: like, negated: true },
  bool: { test: equalsIgnoringCase, negated: false },
};

/** One operator block (`"StringEquals": { key: value(s), ... }`); undefined when the operator is unsupported. */
function compileOperator(
  operator: string,
  body: unknown,
  where: string,
  variables: boolean,
): CompiledCondition | undefined {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw malformed(where, `condition operator '${operator}' must map condition keys to values`);
  }
  const entries = Object.entries(body).map(([key, raw]) => {
    const list = Array.isArray(raw) ? raw : [raw];
    if (list.length === 0 || list.some((v) => !['string', 'boolean', 'number'].includes(typeof v))) {
      throw malformed(
        where,
        `condition '${operator}' key '${key}' must have a string, boolean or number value or a non-empty list of them`,
      );
    }
    return { key: key.toLowerCase(), expected: list.map((v) => parsePattern(String(v), variables)) };
  });
  let name = operator.toLowerCase();
  if (name === 'null') {
    return {
      holds: (values) =>
        entries.every(({ key, expected }) => {
          const wantAbsent = expected.some((parts) => literalValue(parts, values)?.toLowerCase() === 'true');
          return values.has(key) === !wantAbsent;
        }),
    };
  }
  const ifExists = name.endsWith('ifexists');
  if (ifExists) name = name.slice(0, -'ifexists'.length);
  const op = STRING_OPERATORS[name];
  if (op === undefined) return undefined;
  return {
    holds: (values) =>
      entries.every(({ key, expected }) => {
        const actual = values.get(key);
        if (actual === undefined) return ifExists || op.negated;
        const any = expected.some((parts) => op.test(actual, parts, values));
        return op.negated ? !any : any;
      }),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Statements.

interface CompiledStatement {
  readonly label: string;
  readonly effect: 'Allow' | 'Deny';
  /** Whether the statement names the action (with `NotAction`: does not name it). */
  appliesTo(action: string): boolean;
  readonly notResource: boolean;
  readonly resources: readonly Part[][];
  /** Fixed resources compiled once for every context; undefined when some use variables. */
  readonly fixed: RegExp | undefined;
  readonly conditions: readonly CompiledCondition[];
  /** An unsupported condition operator: the statement never applies. */
  readonly inert: boolean;
}

function malformed(where: string, problem: string): ValidationError {
  return new ValidationError('MalformedPolicy', `${where}: ${problem}`, { where });
}

const STATEMENT_KEYS = new Set([
  'Sid',
  'Effect',
  'Action',
  'NotAction',
  'Resource',
  'NotResource',
  'Condition',
]);

function stringList(value: unknown, field: string, where: string): string[] {
  const list = Array.isArray(value) ? value : [value];
  if (list.length === 0) throw malformed(where, `'${field}' must not be empty`);
  for (const item of list) {
    if (typeof item !== 'string' || item === '') {
      throw malformed(
        where,
        `'${field}' must be a non-empty string or a list of them, got ${JSON.stringify(item)}`,
      );
    }
  }
  return list as string[];
}

const ACTION = /^(?:\*|[a-zA-Z0-9*?-]+:[a-zA-Z0-9*?]*)$/;

function compileActions(list: readonly string[], where: string, field: string): RegExp {
  for (const action of list) {
    if (!ACTION.test(action)) {
      throw malformed(where, `'${field}' entry '${action}' is not an action ('iot:Publish', 'iot:*', '*')`);
    }
  }
  const alternatives = list.map((a) => patternSource(parsePattern(a, false), new Map()));
  return new RegExp(`^(?:${alternatives.join('|')})$`, 'i');
}

function compileStatement(
  raw: unknown,
  where: string,
  variables: boolean,
  warnings: string[],
): CompiledStatement {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw malformed(where, 'a statement must be an object');
  }
  const statement = raw as Record<string, unknown>;
  for (const key of Object.keys(statement)) {
    if (!STATEMENT_KEYS.has(key)) {
      throw malformed(where, `unknown element '${key}' (expected ${[...STATEMENT_KEYS].join(', ')})`);
    }
  }
  const sid = statement.Sid;
  if (sid !== undefined && typeof sid !== 'string') throw malformed(where, "'Sid' must be a string");
  const label = sid === undefined ? where : `${where} (Sid '${sid}')`;
  const effect = statement.Effect;
  if (effect !== 'Allow' && effect !== 'Deny') {
    throw malformed(label, `'Effect' must be 'Allow' or 'Deny', got ${JSON.stringify(effect)}`);
  }
  const pick = (a: string, b: string): [string, unknown, boolean] => {
    const hasA = statement[a] !== undefined;
    const hasB = statement[b] !== undefined;
    if (hasA === hasB) throw malformed(label, `needs exactly one of '${a}' and '${b}'`);
    return hasA ? [a, statement[a], false] : [b, statement[b], true];
  };
  const [actionField, actionValue, notAction] = pick('Action', 'NotAction');
  const actions = compileActions(stringList(actionValue, actionField, label), label, actionField);
  const [resourceField, resourceValue, notResource] = pick('Resource', 'NotResource');
  const resources = stringList(resourceValue, resourceField, label).map((r) => parsePattern(r, variables));
  const fixed = resources.some(hasVariables)
    ? undefined
    : new RegExp(`^(?:${resources.map((r) => patternSource(r, new Map())).join('|')})$`);

  const conditions: CompiledCondition[] = [];
  let inert = false;
  const condition = statement.Condition;
  if (condition !== undefined) {
    if (typeof condition !== 'object' || condition === null || Array.isArray(condition)) {
      throw malformed(label, "'Condition' must map condition operators to keys and values");
    }
    for (const [operator, body] of Object.entries(condition)) {
      const compiled = compileOperator(operator, body, label, variables);
      if (compiled === undefined) {
        inert = true;
        warnings.push(
          `${label}: condition operator '${operator}' is not supported; the statement never applies`,
        );
      } else {
        conditions.push(compiled);
      }
    }
  }
  return {
    label,
    effect,
    appliesTo: (action) => actions.test(action) !== notAction,
    notResource,
    resources,
    fixed,
    conditions,
    inert,
  };
}

function parseDocument(document: string | object, index: number): Record<string, unknown> {
  const where = `document ${index + 1}`;
  let value: unknown = document;
  if (typeof document === 'string') {
    try {
      value = JSON.parse(document);
    } catch (error) {
      throw malformed(where, `not JSON (${(error as Error).message})`);
    }
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw malformed(where, 'a policy document must be a JSON object');
  }
  return value as Record<string, unknown>;
}

/** A statement bound to a context: a RegExp over resources, or nothing when it cannot apply. */
interface BoundStatement {
  readonly statement: CompiledStatement;
  readonly resources: RegExp;
}

function bind(statement: CompiledStatement, values: ReadonlyMap<string, string>): BoundStatement | undefined {
  if (statement.inert) return undefined;
  if (!statement.conditions.every((c) => c.holds(values))) return undefined;
  if (statement.fixed !== undefined) return { statement, resources: statement.fixed };
  const sources = statement.resources.map((r) => patternSource(r, values));
  if (sources.some((s) => s === undefined)) return undefined;
  return { statement, resources: new RegExp(`^(?:${sources.join('|')})$`) };
}

const matches = (bound: BoundStatement, resourceArn: string) =>
  bound.resources.test(resourceArn) !== bound.statement.notResource;

/**
 * Parses and checks a set of IoT policy documents (JSON strings, as a custom authorizer returns them, or
 * objects), evaluated together as IoT Core evaluates every policy of a principal.
 *
 * @throws ValidationError (`MalformedPolicy`) naming the document and statement (`document 2, statement 1
 * (Sid 'x'): ...`) for JSON that is no policy, an unknown version or element, an Effect other than
 * Allow/Deny, a missing or empty Action/Resource, or a malformed Condition. An unsupported condition operator
 * is no error: the statement never applies and {@link CompiledPolicy.warnings} says so.
 *
 * @example
 * const policy = compilePolicies(devicePolicyDocuments({ deviceId: 'd1', ...target }));
 * const connection = policy.forContext({ clientId: 'd1' });
 * connection.authorize('iot:Publish', topicArn(target, 'devices/d1/messages/events')).allowed; // true
 */
export function compilePolicies(documents: readonly (string | object)[]): CompiledPolicy {
  const warnings: string[] = [];
  const statements: CompiledStatement[] = [];
  documents.forEach((document, d) => {
    const parsed = parseDocument(document, d);
    const where = `document ${d + 1}`;
    const version = parsed.Version ?? '2008-10-17';
    if (version !== '2012-10-17' && version !== '2008-10-17') {
      throw malformed(
        where,
        `'Version' must be '2012-10-17' or '2008-10-17', got ${JSON.stringify(version)}`,
      );
    }
    for (const key of Object.keys(parsed)) {
      if (key !== 'Version' && key !== 'Statement' && key !== 'Id') {
        throw malformed(where, `unknown element '${key}' (expected Version, Id, Statement)`);
      }
    }
    if (parsed.Statement === undefined) throw malformed(where, "no 'Statement'");
    const list = Array.isArray(parsed.Statement) ? parsed.Statement : [parsed.Statement];
    list.forEach((raw: unknown, s) => {
      statements.push(
        compileStatement(raw, `${where}, statement ${s + 1}`, version === '2012-10-17', warnings),
      );
    });
  });

  const forContext = (context: PolicyContext): ContextPolicy => {
    const values = contextValues(context);
    const byAction = new Map<string, { deny: BoundStatement[]; allow: BoundStatement[] }>();
    const boundFor = (action: string) => {
      let bound = byAction.get(action);
      if (bound === undefined) {
        const applicable = statements
          .filter((s) => s.appliesTo(action))
          .map((s) => bind(s, values))
          .filter((b): b is BoundStatement => b !== undefined);
        bound = {
          deny: applicable.filter((b) => b.statement.effect === 'Deny'),
          allow: applicable.filter((b) => b.statement.effect === 'Allow'),
        };
        byAction.set(action, bound);
      }
      return bound;
    };
    return {
      authorize(action, resourceArn) {
        const { deny, allow } = boundFor(action);
        for (const b of deny) {
          if (matches(b, resourceArn)) {
            return { allowed: false, reason: `${action} on '${resourceArn}' denied by ${b.statement.label}` };
          }
        }
        for (const b of allow) {
          if (matches(b, resourceArn)) {
            return { allowed: true, reason: `${action} on '${resourceArn}' allowed by ${b.statement.label}` };
          }
        }
        return { allowed: false, reason: `no statement allows ${action} on '${resourceArn}'` };
      },
    };
  };

  const cache = new WeakMap<PolicyContext, ContextPolicy>();
  return {
    warnings,
    forContext,
    authorize(action, resourceArn, context) {
      let bound = cache.get(context);
      if (bound === undefined) {
        bound = forContext(context);
        cache.set(context, bound);
      }
      return bound.authorize(action, resourceArn);
    },
  };
}

/**
 * A connection's policy as the broker asks it: by action and plain name (a client id for connect, a topic
 * for publish and receive, a filter for subscribe), the resource ARN built for the hub's account and region.
 * What the broker keeps per connection, so no caller builds ARNs by hand.
 */
export interface ConnectionPolicy {
  authorize(action: IotAction, name: string): PolicyDecision;
}

/**
 * `policy` bound to one connection's `context` (variables and conditions resolved once) and to `target`,
 * the partition, region and account the documents' ARNs name.
 */
export function connectionPolicy(
  policy: CompiledPolicy,
  context: PolicyContext,
  target: PolicyTarget,
): ConnectionPolicy {
  const bound = policy.forContext(context);
  return { authorize: (action, name) => bound.authorize(action, resourceArnFor(action, target, name)) };
}
