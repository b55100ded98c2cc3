import { HubError } from './errors.ts';

/** A handler started without an environment variable its stack should have given it. */
export class MissingEnvironmentError extends HubError {
  constructor(key: string) {
    super(
      'MissingEnvironment',
      `environment variable ${key} is not set; the stack gives it to this function`,
      {
        key,
      },
    );
  }
}

/** Reads a required variable once, at cold start, failing loudly with its name. */
export function requireEnv(env: NodeJS.ProcessEnv, key: string): string {
  const value = env[key];
  if (value === undefined || value === '') throw new MissingEnvironmentError(key);
  return value;
}

/** Reads a required positive integer variable. */
export function requireIntEnv(env: NodeJS.ProcessEnv, key: string): number {
  const raw = requireEnv(env, key);
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) {
    throw new HubError(
      'InvalidEnvironment',
      `environment variable ${key}='${raw}' is not a positive integer`,
      {
        key,
      },
    );
  }
  return value;
}
