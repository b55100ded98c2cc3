import { randomUUID } from 'node:crypto';
import { type DynamoDBClient, PutItemCommand } from '@aws-sdk/client-dynamodb';
import type { KinesisClient } from '@aws-sdk/client-kinesis';
import { marshall } from '@aws-sdk/util-dynamodb';
import {
  type CompiledIotSql,
  type CompiledSubstitutionTemplate,
  compileIotSql,
  compileSubstitutionTemplate,
  type IotSqlContext,
  type Mqtt5Properties,
} from './iot-sql.ts';
import { KinesisGroupCommit } from './kinesis-group-commit.ts';
import type { LocalRule, LocalRuleAction } from './template.ts';

/** One message as the front door took it. */
export interface IngestInput {
  readonly topic: string;
  readonly payload: Buffer;
  /** MQTT client id, '' for data-plane publishes. */
  readonly clientId: string;
  readonly principal: string;
  /** The MQTT 5 properties of the publish, if it had any (see `IotSqlContext.mqtt5`). */
  readonly mqtt5?: Mqtt5Properties | undefined;
}

/** What rule actions reach. */
export interface RuleActionDeps {
  readonly kinesis: KinesisClient;
  readonly dynamo: DynamoDBClient;
  /** Asynchronous (Event) invocation, as IoT's Lambda action does it. */
  readonly invokeAsync: (functionLogicalId: string, event: unknown) => void;
  readonly republish: (topic: string, payload: Buffer, qos: number) => Promise<void>;
  readonly log: (line: string) => void;
  /** Called after records were written to a stream (wakes its event source mappings at once). */
  readonly onStreamWrite?: (streamName: string) => void;
}

/** Neither a rule's action nor its error action could take a message. The publisher must not get a PUBACK. */
export class RuleDeliveryError extends Error {
  constructor(ruleId: string, cause: unknown) {
    super(`rule ${ruleId}: action and error action both failed: ${String(cause)}`, { cause });
    this.name = 'RuleDeliveryError';
  }
}

/**
 * A Basic Ingest publish named a rule that does not exist or is disabled. IoT Core logs `RuleNotFound`
 * and drops the message; locally the publisher gets no PUBACK instead, so nothing is lost silently.
 */
export class RuleNotFoundError extends Error {
  constructor(ruleName: string, topic: string) {
    super(`Basic Ingest topic '${topic}' names rule '${ruleName}', which does not exist or is disabled`);
    this.name = 'RuleNotFoundError';
  }
}

// Basic Ingest: `$aws/rules/{rule name}[/{topic}]`.
const BASIC_INGEST = /^\$aws\/rules\/([^/]+)(?:\/(.*))?$/s;

interface CompiledAction {
  readonly action: LocalRuleAction;
  readonly run: (ctx: IotSqlContext, output: Buffer) => Promise<void>;
  readonly resource: string;
  /** The action retries by itself (the Kinesis group commit, which must keep each key's order). */
  readonly retriesItself?: boolean;
}

interface CompiledRule {
  readonly rule: LocalRule;
  readonly sql: CompiledIotSql;
  readonly actions: readonly CompiledAction[];
  readonly errorAction?: CompiledAction;
}

const ATTEMPTS = 3;

/**
 * The local IoT rules engine: evaluates every enabled rule's SQL on each publish and runs its
 * actions. Unlike IoT Core, it finishes the actions before the broker acknowledges the publish
 * (see `local/broker.ts`), so a message that got a PUBACK is already on the ingest stream or in
 * the dead-letter table, even if the hub is killed right after.
 */
export class RulesEngine {
  private readonly rules: CompiledRule[];
  private readonly groupCommit: KinesisGroupCommit;

  constructor(
    rules: readonly LocalRule[],
    private readonly deps: RuleActionDeps,
  ) {
    this.groupCommit = new KinesisGroupCommit(deps.kinesis, { maxAttempts: ATTEMPTS, log: deps.log });
    this.rules = rules
      .filter((r) => !r.disabled)
      .map((rule) => {
        const errorAction = rule.errorAction ? this.compileAction(rule.errorAction) : undefined;
        return {
          rule,
          sql: compileIotSql(rule.sql),
          actions: rule.actions.map((a) => this.compileAction(a)),
          ...(errorAction ? { errorAction } : {}),
        };
      });
  }

  /** Topic filters of all enabled rules (for the start-up banner). */
  get topicFilters(): string[] {
    return this.rules.map((r) => r.sql.topicFilter);
  }

  /**
   * Runs every rule whose FROM matches. Resolves once each matching action (or, when it fails,
   * its rule's error action) has taken the message; rejects with {@link RuleDeliveryError} otherwise.
   *
   * A Basic Ingest topic, `$aws/rules/{rule}/{topic}`, runs only the rule of that name, as IoT Core does,
   * which presents the topic without the `$aws/rules/{rule}/` prefix to it (`topic()`); an unknown or
   * disabled rule rejects with {@link RuleNotFoundError}.
   *
   * Everything up to handing a record to the Kinesis group commit happens synchronously in this
   * call, so calls made in a device's publish order write that device's records in that order,
   * even with several of them in flight.
   */
  async ingest(input: IngestInput): Promise<number> {
    const basicIngest = BASIC_INGEST.exec(input.topic);
    const topic = basicIngest ? (basicIngest[2] ?? '') : input.topic;
    let candidates = this.rules;
    if (basicIngest) {
      const name = basicIngest[1] ?? '';
      const rule = this.rules.find((r) => (r.rule.name ?? r.rule.logicalId) === name);
      if (rule === undefined) throw new RuleNotFoundError(name, input.topic);
      candidates = [rule];
    }
    const ctx: IotSqlContext = {
      topic,
      payload: input.payload,
      clientId: input.clientId,
      principal: input.principal,
      timestamp: Date.now(),
      newuuid: randomUUID,
      ...(input.mqtt5 ? { mqtt5: input.mqtt5 } : {}),
    };
    let matched = 0;
    const runs: Promise<void>[] = [];
    for (const rule of candidates) {
      // Basic Ingest invokes its rule directly; the FROM filter selects broker traffic.
      if (!basicIngest && !rule.sql.matchesTopic(topic)) continue;
      const output = rule.sql.evaluatePayload(ctx);
      if (output === undefined) continue;
      matched += 1;
      // Rules, and the actions of a rule, run independently; each failure goes to its error action.
      for (const action of rule.actions) runs.push(this.runAction(rule, action, ctx, output));
    }
    const failed = (await Promise.allSettled(runs)).find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    return matched;
  }

  private async runAction(rule: CompiledRule, action: CompiledAction, ctx: IotSqlContext, output: Buffer) {
    let lastError: unknown;
    for (let attempt = 0; attempt < (action.retriesItself ? 1 : ATTEMPTS); attempt++) {
      try {
        await action.run(ctx, output);
        return;
      } catch (error) {
        lastError = error;
        if (action.retriesItself) break;
        await new Promise((r) => setTimeout(r, 50 * 2 ** attempt));
      }
    }
    this.deps.log(`rule ${rule.rule.logicalId}: ${action.action.kind} action failed: ${String(lastError)}`);
    if (!rule.errorAction) throw new RuleDeliveryError(rule.rule.logicalId, lastError);
    const errorMessage = Buffer.from(
      JSON.stringify({
        ruleName: rule.rule.logicalId,
        topic: ctx.topic,
        cloudwatchTraceId: randomUUID(),
        clientId: ctx.clientId,
        base64OriginalPayload: ctx.payload.toString('base64'),
        failures: [
          {
            failedAction: action.action.kind,
            failedResource: action.resource,
            errorMessage: String(lastError),
          },
        ],
      }),
    );
    try {
      await rule.errorAction.run(ctx, errorMessage);
    } catch (error) {
      throw new RuleDeliveryError(rule.rule.logicalId, error);
    }
  }

  private compileAction(action: LocalRuleAction): CompiledAction {
    const { deps } = this;
    switch (action.kind) {
      case 'kinesis': {
        const key: CompiledSubstitutionTemplate = compileSubstitutionTemplate(action.partitionKey);
        return {
          action,
          resource: action.streamName,
          retriesItself: true,
          run: async (ctx, output) => {
            await this.groupCommit.put(action.streamName, key(ctx) || 'none', output);
            deps.onStreamWrite?.(action.streamName);
          },
        };
      }
      case 'dynamoDb': {
        const hash = compileSubstitutionTemplate(action.hashKeyValue);
        const range =
          action.rangeKeyValue === undefined ? undefined : compileSubstitutionTemplate(action.rangeKeyValue);
        return {
          action,
          resource: action.tableName,
          run: async (ctx, output) => {
            let payload: unknown = output.toString('utf8');
            try {
              payload = JSON.parse(payload as string);
            } catch {
              // not JSON: stored as a string, as IoT does
            }
            const item: Record<string, unknown> = {
              [action.hashKeyField]: hash(ctx),
              [action.payloadField]: payload,
            };
            if (action.rangeKeyField && range) item[action.rangeKeyField] = range(ctx);
            await deps.dynamo.send(
              new PutItemCommand({
                TableName: action.tableName,
                Item: marshall(item, { removeUndefinedValues: true, convertClassInstanceToMap: true }),
              }),
            );
          },
        };
      }
      case 'lambda':
        return {
          action,
          resource: action.functionLogicalId,
          run: async (_ctx, output) => {
            let event: unknown = output.toString('utf8');
            try {
              event = JSON.parse(event as string);
            } catch {
              // the Lambda action passes non-JSON payloads base64-encoded in a wrapper
              event = { base64OriginalPayload: output.toString('base64') };
            }
            deps.invokeAsync(action.functionLogicalId, event);
          },
        };
      case 'republish': {
        const topic = compileSubstitutionTemplate(action.topic);
        return {
          action,
          resource: action.topic,
          run: (ctx, output) => deps.republish(topic(ctx), output, action.qos),
        };
      }
    }
  }
}
