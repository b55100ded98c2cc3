import { LimitExceededError, ValidationError } from '../errors.ts';
import { describeDeviceIdProblem } from './device-id.ts';
import { deviceTopicPrefixes } from './topics.ts';

/** Where the policy applies: the partition, region and account of the IoT Core endpoint. */
export interface PolicyTarget {
  /** ARN partition: `aws`, `aws-cn`, `aws-us-gov`. */
  readonly partition: string;
  /** Region of the IoT endpoint, e.g. `eu-west-1`. */
  readonly region: string;
  /** 12-digit account id. */
  readonly account: string;
}

/** Input of {@link devicePolicyDocument}. */
export interface DevicePolicyInput extends PolicyTarget {
  /** The authenticated device; the only id the policy grants anything for. */
  readonly deviceId: string;
}

/** One IoT policy statement. Actions are always named; the builder never emits an `iot:*` action. */
export interface IotPolicyStatement {
  /** `Allow`, or `Deny` for the carve-out that closes the Basic Ingest wildcard. */
  readonly Effect: 'Allow' | 'Deny';
  /** IoT actions (`iot:Connect`, `iot:Publish`, `iot:Subscribe`, `iot:Receive`). */
  readonly Action: readonly string[];
  /** ARNs; each names the device. */
  readonly Resource: readonly string[];
}

/** An IoT Core policy document (version `2012-10-17`, which policy variables and escapes require). */
export interface IotPolicyDocument {
  /** Policy language version. */
  readonly Version: '2012-10-17';
  /** The statements. */
  readonly Statement: readonly IotPolicyStatement[];
}

/**
 * Longest policy document IoT Core takes, in characters without white space; it applies to each document
 * a custom authorizer returns as well as to stored policies.
 */
export const POLICY_DOCUMENT_MAX_CHARS = 2048;

const PARTITION = /^aws(?:-[a-z]+)*$/;
const REGION = /^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$/;
const ACCOUNT = /^\d{12}$/;

const ESCAPES: Readonly<Record<string, string>> = { '*': '${*}', '?': '${?}', $: '${$}' };

/**
 * Escapes a literal value for an IoT (IAM-language) policy `Resource`: `*` → `${*}`, `?` → `${?}`,
 * `$` → `${$}`. These are the predefined policy variables IAM (and so IoT Core) defines for characters
 * that otherwise mean "any characters", "any one character" and "start of a policy variable".
 *
 * Why: IoT Hub device ids may contain `*`, `?` and `$`. Unescaped, a device named `a*` would get a policy
 * that matches the topics of every device whose id starts with `a`. Policy variables cannot be injected
 * through an id: the device id charset has no `{` or `}` (so {@link devicePolicyDocument} refuses
 * `x${iot:ClientId}` outright), and escaping `$` as well would turn any `${...}` into literal text anyway.
 * Should IoT Core not expand an escape, the resource only fails to match and the device is denied: the
 * failure narrows, never widens. `+` and `#` are literal in IoT policies, and the hub refuses them in
 * device ids anyway.
 */
export function escapePolicyValue(value: string): string {
  return value.replace(/[*?$]/g, (c) => ESCAPES[c] ?? c);
}

function checkTarget(input: DevicePolicyInput): void {
  const problem = describeDeviceIdProblem(input.deviceId, true);
  if (problem !== undefined) {
    throw new ValidationError('InvalidDeviceId', `deviceId: ${problem}`, {
      field: 'deviceId',
      deviceId: input.deviceId,
    });
  }
  const fields: [keyof PolicyTarget, RegExp, string][] = [
    ['partition', PARTITION, "an ARN partition such as 'aws'"],
    ['region', REGION, "a region such as 'eu-west-1'"],
    ['account', ACCOUNT, 'a 12-digit account id'],
  ];
  for (const [field, pattern, expected] of fields) {
    const value = input[field];
    if (typeof value !== 'string' || !pattern.test(value)) {
      throw new ValidationError('InvalidPolicyTarget', `${field}: expected ${expected}, got '${value}'`, {
        field,
        value,
      });
    }
  }
}

/**
 * The IoT Core policy for one authenticated device: it may connect only with its own client id and use
 * only its own topics, the same families the local broker allows (`deviceTopicPrefixes` in `topics.ts`):
 *
 * | action | resources (under `arn:{partition}:iot:{region}:{account}:`) |
 * | --- | --- |
 * | `iot:Connect` | `client/{id}` |
 * | `iot:Publish` | `topic/devices/{id}/*`, `topic/$aws/things/{id}/shadow/*`, `topic/$aws/rules/{R}/devices/{id}/*` |
 * | `iot:Subscribe` | `topicfilter/devices/{id}/*`, `topicfilter/$aws/things/{id}/shadow/*` |
 * | `iot:Receive` | `topic/devices/{id}/*`, `topic/$aws/things/{id}/shadow/*` |
 * | `iot:Publish` **Deny** | `topic/$aws/rules/{R}/{R}/devices/{id}/*` |
 *
 * where `{R}` stands for the wildcard `*` (written so here only because this is a comment).
 * IoT matches publish and receive against `topic/` ARNs and subscribe against `topicfilter/` ARNs (the
 * filter as written: `devices/{id}/messages/devicebound/#` matches `topicfilter/devices/{id}/*` because `#`
 * is literal in a policy). The Deny closes a hole in the Basic Ingest allow: its `*` (the rule name) also
 * matches `/`, so `$aws/rules/r/devices/other/x/devices/{id}/y` would pass as this device's topic while the
 * rule sees topic `devices/other/...`. Rule names have no `/`, so every legitimate Basic Ingest topic has
 * exactly one level between `rules/` and `devices/{id}/`, and the Deny matches only the spoofing form.
 *
 * The device id is escaped with {@link escapePolicyValue}. Throws a {@link ValidationError} for an id the
 * hub could not register or a malformed partition, region or account.
 *
 * @example
 * const policy = devicePolicyDocument({ deviceId: 'dev1', partition: 'aws', region: 'eu-west-1', account: '123456789012' });
 */
export function devicePolicyDocument(input: DevicePolicyInput): IotPolicyDocument {
  checkTarget(input);
  const arn = `arn:${input.partition}:iot:${input.region}:${input.account}`;
  const id = escapePolicyValue(input.deviceId);
  const ownTopics = deviceTopicPrefixes(id).map((prefix) => `${prefix}*`);
  return {
    Version: '2012-10-17',
    Statement: [
      { Effect: 'Allow', Action: ['iot:Connect'], Resource: [`${arn}:client/${id}`] },
      {
        Effect: 'Allow',
        Action: ['iot:Publish'],
        Resource: [...ownTopics, `$aws/rules/*/devices/${id}/*`].map((t) => `${arn}:topic/${t}`),
      },
      {
        Effect: 'Allow',
        Action: ['iot:Subscribe'],
        Resource: ownTopics.map((t) => `${arn}:topicfilter/${t}`),
      },
      { Effect: 'Allow', Action: ['iot:Receive'], Resource: ownTopics.map((t) => `${arn}:topic/${t}`) },
      { Effect: 'Deny', Action: ['iot:Publish'], Resource: [`${arn}:topic/$aws/rules/*/*/devices/${id}/*`] },
    ],
  };
}

/**
 * {@link devicePolicyDocument} as the JSON strings a custom authorizer returns in `policyDocuments`: one
 * compact document when it fits {@link POLICY_DOCUMENT_MAX_CHARS}, else one document per statement (IoT
 * evaluates all documents together, so the Deny still applies). Long ids with many escaped characters need
 * the split; the longest possible id still fits per statement, which a unit test pins.
 */
export function devicePolicyDocuments(input: DevicePolicyInput): string[] {
  const document = devicePolicyDocument(input);
  const whole = JSON.stringify(document);
  if (whole.length <= POLICY_DOCUMENT_MAX_CHARS) return [whole];
  const parts = document.Statement.map((statement) =>
    JSON.stringify({ Version: document.Version, Statement: [statement] }),
  );
  const tooLong = parts.find((p) => p.length > POLICY_DOCUMENT_MAX_CHARS);
  if (tooLong !== undefined) {
    throw new LimitExceededError(
      'PolicyTooLarge',
      `policy statement for device '${input.deviceId}' is ${tooLong.length} characters; the limit is ${POLICY_DOCUMENT_MAX_CHARS}`,
      { deviceId: input.deviceId },
    );
  }
  return parts;
}
