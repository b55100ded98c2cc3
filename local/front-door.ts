/**
 * The local IoT Core front door's authentication, as IoT Core does it for this stack:
 *
 * - a client that sends a password (IoT Hub's SAS token) is a custom-authorizer connection: the broker
 *   invokes the stack's own authorizer function (the one the template's `AWS::IoT::Authorizer` names),
 *   with IoT Core's event, and the policy documents it answers decide what the connection may do;
 * - a client that presents a TLS client certificate and no password is an X.509 connection: the
 *   certificate is matched against the registry (`authenticateDevice`, which IoT Core does with the
 *   certificates the service API registered), and the thing policy attached to every device certificate
 *   (`thingPolicyDocument`, the one the stack creates) decides, bound to the thing the client id names.
 *
 * Why: the cloud enforces the documents; a local broker that enforced a second, hand-written encoding
 * could drift from them (and would not follow a changed authorizer). See `local/iot-policy.ts` for the
 * evaluator.
 */
import { randomUUID } from 'node:crypto';
import type { AuthDecision } from '../functions/core/identity/authenticate.ts';
import { connectionRefusal } from '../functions/core/identity/authenticate.ts';
import type { PolicyTarget } from '../functions/core/identity/policy.ts';
import { parseSasToken } from '../functions/core/identity/sas.ts';
import { type AuthenticatedDevice, type Authenticator, ConnectionRefusedError } from './broker.ts';
import {
  type CompiledPolicy,
  type ConnectionPolicy,
  compilePolicies,
  connectionPolicy,
} from './iot-policy.ts';
import type { CfnTemplate } from './template.ts';

/** The template's custom authorizer: the `AWS::IoT::Authorizer` and the function it invokes. */
export interface TemplateAuthorizer {
  /** Logical id of the `AWS::IoT::Authorizer`. */
  readonly authorizerLogicalId: string;
  /** Logical id of its `AWS::Lambda::Function` (what the Lambda runner invokes). */
  readonly functionLogicalId: string;
}

/**
 * The active custom authorizer of `template`, found as IoT Core finds it: the `AWS::IoT::Authorizer`
 * (status not `INACTIVE`) and the function its `AuthorizerFunctionArn` names. undefined when there is none.
 *
 * @throws Error naming the resources when there is more than one active authorizer (the local hub has one
 * endpoint, so it could not tell which one a device means), or when the ARN is not one of the template's
 * functions.
 */
export function findCustomAuthorizer(template: CfnTemplate): TemplateAuthorizer | undefined {
  const found: TemplateAuthorizer[] = [];
  for (const [id, resource] of Object.entries(template.Resources)) {
    if (resource.Type !== 'AWS::IoT::Authorizer') continue;
    if (resource.Properties?.Status === 'INACTIVE') continue;
    const arn = resource.Properties?.AuthorizerFunctionArn as unknown;
    const getAtt = (arn as { 'Fn::GetAtt'?: unknown } | undefined)?.['Fn::GetAtt'];
    const [fnId, attr] = (Array.isArray(getAtt) ? getAtt : String(getAtt ?? '').split('.')) as [
      string?,
      string?,
    ];
    if (fnId === undefined || attr !== 'Arn' || template.Resources[fnId]?.Type !== 'AWS::Lambda::Function') {
      throw new Error(
        `custom authorizer ${id}: AuthorizerFunctionArn must be Fn::GetAtt [<function>, Arn] of a function in the template, got ${JSON.stringify(arn)}`,
      );
    }
    found.push({ authorizerLogicalId: id, functionLogicalId: fnId });
  }
  if (found.length > 1) {
    throw new Error(
      `the local hub runs one custom authorizer; the template has ${found.length} active: ${found.map((f) => f.authorizerLogicalId).join(', ')}`,
    );
  }
  return found[0];
}

/** Partition, region and account from a Lambda function ARN (`arn:{p}:lambda:{r}:{account}:function:...`). */
export function policyTargetOfFunction(functionArn: string): PolicyTarget {
  const match = /^arn:([^:]+):lambda:([^:]+):(\d{12}):function:/.exec(functionArn);
  if (!match) throw new Error(`'${functionArn}' is not a Lambda function ARN`);
  return { partition: match[1]!, region: match[2]!, account: match[3]! };
}

/** What a client sent in CONNECT, as IoT Core hands it to a custom authorizer. */
export interface MqttConnectInput {
  readonly clientId: string;
  readonly username: string | undefined;
  readonly password: Buffer | undefined;
  /** IoT Core's connection id (one per connection; the authorizer logs it). */
  readonly connectionId: string;
}

/**
 * IoT Core's custom authorizer event for an MQTT connect (signing disabled): the user name and client id
 * as sent, the password base64-encoded, `protocols: ['mqtt']`.
 */
export function mqttAuthorizerEvent(input: MqttConnectInput): Record<string, unknown> {
  return {
    signatureVerified: false,
    protocols: ['mqtt'],
    protocolData: {
      mqtt: {
        clientId: input.clientId,
        ...(input.username === undefined ? {} : { username: input.username }),
        ...(input.password === undefined ? {} : { password: input.password.toString('base64') }),
      },
    },
    connectionMetadata: { id: input.connectionId },
  };
}

/** An authorizer's answer, checked (see {@link parseAuthorizerAnswer}). */
export type AuthorizerAnswer =
  | { readonly isAuthenticated: false }
  | {
      readonly isAuthenticated: true;
      readonly principalId: string;
      readonly disconnectAfterInSeconds: number;
      readonly refreshAfterInSeconds: number;
      readonly policyDocuments: readonly string[];
    };

/**
 * Checks an authorizer's response as IoT Core does (an invalid one refuses the connection).
 * @throws Error naming the field that is wrong.
 */
export function parseAuthorizerAnswer(value: unknown): AuthorizerAnswer {
  if (typeof value !== 'object' || value === null) {
    throw new Error(`the authorizer answered ${JSON.stringify(value)}, not an object`);
  }
  const answer = value as Record<string, unknown>;
  if (answer.isAuthenticated === false) return { isAuthenticated: false };
  if (answer.isAuthenticated !== true)
    throw new Error('the authorizer answer has no boolean isAuthenticated');
  const { principalId, disconnectAfterInSeconds, refreshAfterInSeconds, policyDocuments } = answer;
  if (typeof principalId !== 'string' || !/^[a-zA-Z0-9]{1,128}$/.test(principalId)) {
    throw new Error(
      `the authorizer's principalId must be 1-128 letters and digits, got ${JSON.stringify(principalId)}`,
    );
  }
  const seconds = (name: string, v: unknown, min: number, max: number): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      throw new Error(
        `the authorizer's ${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`,
      );
    }
    return v;
  };
  if (
    !Array.isArray(policyDocuments) ||
    policyDocuments.length === 0 ||
    policyDocuments.some((d) => typeof d !== 'string')
  ) {
    throw new Error('the authorizer answer must carry policyDocuments, a non-empty list of JSON strings');
  }
  return {
    isAuthenticated: true,
    principalId,
    disconnectAfterInSeconds: seconds('disconnectAfterInSeconds', disconnectAfterInSeconds, 300, 86_400),
    refreshAfterInSeconds: seconds('refreshAfterInSeconds', refreshAfterInSeconds, 300, 86_400),
    policyDocuments: policyDocuments as string[],
  };
}

/** What {@link frontDoorAuthenticator} needs. */
export interface FrontDoorDeps {
  /** Invokes the template's authorizer function; undefined when the template has none (SAS refused). */
  readonly invokeAuthorizer: ((event: unknown) => Promise<unknown>) | undefined;
  /** The authorizer's name for log lines. */
  readonly authorizerName: string;
  /** Partition, region and account of the hub's IoT resources (the policies' ARNs). */
  readonly target: PolicyTarget;
  /** The thing policy attached to every device certificate, compiled. */
  readonly thingPolicy: CompiledPolicy;
  /**
   * The in-process decision (`authenticateDevice`) with the certificate's registry and CA checks: decides
   * X.509 connections, and explains an authorizer's refusal (its CONNACK code and reason).
   */
  readonly decide: (input: {
    clientId: string;
    username: string | undefined;
    password: Buffer | undefined;
    clientCertificate: Parameters<Authenticator['authenticate']>[0]['clientCertificate'];
  }) => Promise<AuthDecision>;
  readonly log: (line: string) => void;
  /** @default () => Date.now() */
  readonly now?: () => number;
}

/**
 * The broker's authenticate step (see the module comment). A refusal throws {@link ConnectionRefusedError}
 * with the CONNACK code the in-process decision gives for the same credentials (4 bad credentials, 5 not
 * authorized, 2 identifier rejected), or 5 when only the authorizer refused; a failed invocation or an
 * invalid answer is an Error (CONNACK 3, server unavailable: the device retries).
 *
 * A SAS connection lasts until the token's expiry (`se`), as IoT Hub closes it, and at most the
 * authorizer's `disconnectAfterInSeconds`; the authorizer is asked again every `refreshAfterInSeconds`
 * (a refusal then closes the connection, an answer replaces its policy), as IoT Core does.
 */
export function frontDoorAuthenticator(deps: FrontDoorDeps): Authenticator {
  const now = deps.now ?? (() => Date.now());
  const sas = async (input: {
    clientId: string;
    username: string | undefined;
    password: Buffer | undefined;
  }): Promise<AuthenticatedDevice> => {
    const { clientId } = input;
    if (deps.invokeAuthorizer === undefined) {
      throw new ConnectionRefusedError(
        5,
        `client '${clientId}': the template has no custom authorizer (AWS::IoT::Authorizer), so no SAS device can connect`,
      );
    }
    const invoke = deps.invokeAuthorizer;
    const event = mqttAuthorizerEvent({ ...input, connectionId: randomUUID() });
    let answer: AuthorizerAnswer;
    try {
      answer = parseAuthorizerAnswer(await invoke(event));
    } catch (error) {
      throw new Error(`the custom authorizer ${deps.authorizerName} failed: ${(error as Error).message}`);
    }
    if (!answer.isAuthenticated) {
      // The refusal is the authorizer's; the in-process decision on the same credentials only says why.
      const why = await deps.decide({ ...input, clientCertificate: undefined });
      if (!why.ok) {
        const { returnCode, message } = connectionRefusal(why);
        throw new ConnectionRefusedError(returnCode, message);
      }
      throw new ConnectionRefusedError(
        5,
        `not-authorized: the custom authorizer ${deps.authorizerName} refused client '${clientId}'`,
      );
    }
    const compiled = compilePolicies(answer.policyDocuments);
    for (const warning of compiled.warnings) deps.log(`policy of '${clientId}': ${warning}`);
    let expiresAt = now() + answer.disconnectAfterInSeconds * 1000;
    try {
      const se = parseSasToken(input.password?.toString('utf8') ?? '').expiresAt * 1000;
      expiresAt = Math.min(expiresAt, se);
    } catch {
      // Not an IoT Hub token (another authorizer's credential): the authorizer's lifetime alone.
    }
    return {
      deviceId: clientId,
      principal: `sas:${clientId}`,
      expiresAt: new Date(expiresAt),
      policy: connectionPolicy(compiled, { clientId }, deps.target),
      refresh: {
        afterMs: answer.refreshAfterInSeconds * 1000,
        again: async () => {
          const again = await sas(input);
          return again.policy;
        },
      },
    };
  };

  return {
    authenticate: async ({ clientId, username, password, clientCertificate }) => {
      if (password !== undefined || clientCertificate === undefined) {
        return sas({ clientId, username, password });
      }
      const decision = await deps.decide({ clientId, username, password: undefined, clientCertificate });
      if (!decision.ok) {
        const { returnCode, message } = connectionRefusal(decision);
        throw new ConnectionRefusedError(returnCode, message);
      }
      // The certificate is the one registered for the device the client id names: the thing named by the
      // client id is attached to it (the service API attaches a device's certificates to its thing).
      const policy: ConnectionPolicy = connectionPolicy(
        deps.thingPolicy,
        { clientId, thingName: clientId, isAttached: decision.deviceId === clientId },
        deps.target,
      );
      return { deviceId: decision.deviceId, principal: decision.principal, policy };
    },
  };
}
