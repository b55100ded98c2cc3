import { LimitExceededError, ValidationError } from '../errors.ts';
import { describeDeviceIdProblem } from './device-id.ts';
import {
  basicIngestEventsTopic,
  deviceTopicPrefixes,
  IOT_RULE_NAME,
  isThingName,
  shadowRequestTopics,
} from './topics.ts';

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
  /**
   * The ingest rule's name when Basic Ingest is on (`hub.basicIngest`, the authorizer's
   * `BASIC_INGEST_RULE_NAME`). @default no Basic Ingest permission
   */
  readonly basicIngestRule?: string | undefined;
}

/** One IoT policy statement. Actions are always named; the builder never emits an `iot:*` action. */
export interface IotPolicyStatement {
  /** `Allow` (the builder writes no `Deny`; the type allows one for documents read back). */
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
 * only its own topics, the same families the local broker allows (`deviceTopicPrefixes` and
 * `publishRefusal` in `topics.ts`):
 *
 * | action | resources (under `arn:{partition}:iot:{region}:{account}:`) |
 * | --- | --- |
 * | `iot:Connect` | `client/{id}` |
 * | `iot:Publish` | `topic/devices/{id}/*` (with `iot:RetainPublish`), and its shadow requests `topic/$aws/things/{id}/shadow/{get,update,delete}` and `topic/$aws/things/{id}/shadow/name/{any one name}/{get,update,delete}` (`shadowRequestTopics`) |
 * | `iot:Subscribe` | `topicfilter/devices/{id}/*`, `topicfilter/$aws/things/{id}/shadow/*` |
 * | `iot:Receive` | `topic/devices/{id}/*`, `topic/$aws/things/{id}/shadow/*` |
 * | `iot:Publish` (Basic Ingest on; a statement of its own) | `topic/$aws/rules/{rule}/devices/{id}/messages/events`, and the same followed by a slash and any suffix |
 *
 * IoT matches publish and receive against `topic/` ARNs and subscribe against `topicfilter/` ARNs (the
 * filter as written: `devices/{id}/messages/devicebound/#` matches `topicfilter/devices/{id}/*` because `#`
 * is literal in a policy). Basic Ingest names the one ingest rule (`{rule}`, letters, digits and `_`), not a
 * wildcard: a `*` in the rule level would also match `/`, so `$aws/rules/x/devices/other/...` hidden
 * behind it could pass as this device's topic while the rule sees another device's. HTTPS publishes are
 * authorized by the same `iot:Publish` statement (IoT Core checks no `iot:Connect` for them).
 *
 * The device id is escaped with {@link escapePolicyValue}. Throws a {@link ValidationError} for an id the
 * hub could not register, a malformed partition, region or account, or a rule name IoT would not accept.
 *
 * @example
 * const policy = devicePolicyDocument({ deviceId: 'dev1', partition: 'aws', region: 'eu-west-1', account: '123456789012' });
 */
export function devicePolicyDocument(input: DevicePolicyInput): IotPolicyDocument {
  checkTarget(input);
  const arn = `arn:${input.partition}:iot:${input.region}:${input.account}`;
  const id = escapePolicyValue(input.deviceId);
  const ownTopics = deviceTopicPrefixes(id).map((prefix) => `${prefix}*`);
  const rule = input.basicIngestRule;
  if (rule !== undefined && !IOT_RULE_NAME.test(rule)) {
    throw new ValidationError(
      'InvalidPolicyTarget',
      `basicIngestRule: expected an IoT rule name ([a-zA-Z0-9_]{1,128}), got '${rule}'`,
      { field: 'basicIngestRule', value: rule },
    );
  }
  const basicIngest =
    rule === undefined ? [] : [basicIngestEventsTopic(rule, id), `${basicIngestEventsTopic(rule, id)}/*`];
  return {
    Version: '2012-10-17',
    Statement: [
      { Effect: 'Allow', Action: ['iot:Connect'], Resource: [`${arn}:client/${id}`] },
      // Retained messages on its own topics too (IoT Core needs iot:RetainPublish for a retained publish; it
      // keeps them up to 128 KB, and the registry clears them when the device is deleted).
      {
        Effect: 'Allow',
        Action: ['iot:Publish', 'iot:RetainPublish'],
        Resource: [`${arn}:topic/devices/${id}/*`],
      },
      {
        Effect: 'Allow',
        Action: ['iot:Subscribe'],
        Resource: ownTopics.map((t) => `${arn}:topicfilter/${t}`),
      },
      { Effect: 'Allow', Action: ['iot:Receive'], Resource: ownTopics.map((t) => `${arn}:topic/${t}`) },
      // Shadow requests in a statement of their own, so a 128-character id still fits one document each
      // (thing names need no escaping; an id that is no thing name has no shadow and no statement).
      ...(!isThingName(input.deviceId)
        ? []
        : [
            {
              Effect: 'Allow' as const,
              Action: ['iot:Publish'],
              Resource: shadowRequestTopics(input.deviceId).map((t) => `${arn}:topic/${t}`),
            },
          ]),
      // A statement of its own, so that a long escaped id and rule name still fit one document each.
      ...(basicIngest.length === 0
        ? []
        : [
            {
              Effect: 'Allow' as const,
              Action: ['iot:Publish'],
              Resource: basicIngest.map((t) => `${arn}:topic/${t}`),
            },
          ]),
    ],
  };
}

/**
 * {@link devicePolicyDocument} as the JSON strings a custom authorizer returns in `policyDocuments`: one
 * compact document when it fits {@link POLICY_DOCUMENT_MAX_CHARS}, else one document per statement (IoT
 * evaluates all documents together). Long ids with many escaped characters need
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
