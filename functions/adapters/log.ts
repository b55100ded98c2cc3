import { Logger } from '@aws-lambda-powertools/logger';
import type { Log } from '../core/ports.ts';

/** A {@link Log} over Powertools Logger: JSON lines to stdout, which Lambda ships to CloudWatch. */
export function powertoolsLog(serviceName: string): Log {
  const logger = new Logger({ serviceName });
  return {
    info: (message, context) => logger.info(message, { ...context }),
    warn: (message, context) => logger.warn(message, { ...context }),
    error: (message, context) => logger.error(message, { ...context }),
  };
}
