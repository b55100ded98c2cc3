import type { APIGatewayProxyEventV2 } from 'aws-lambda';

/** Options of {@link urlEvent}. */
export interface EventOptions {
  body?: string;
  headers?: Record<string, string>;
  query?: Record<string, string>;
  base64?: boolean;
}

/** A Lambda Function URL event (payload format 2.0), as the service sends it. */
export function urlEvent(
  method: string,
  rawPath: string,
  options: EventOptions = {},
): APIGatewayProxyEventV2 {
  const query = options.query ?? {};
  const rawQueryString = new URLSearchParams(query).toString();
  return {
    version: '2.0',
    routeKey: '$default',
    rawPath,
    rawQueryString,
    headers: { host: 'abc.lambda-url.eu-west-1.on.aws', ...options.headers },
    ...(rawQueryString === '' ? {} : { queryStringParameters: query }),
    requestContext: {
      accountId: '123456789012',
      apiId: 'abc',
      domainName: 'abc.lambda-url.eu-west-1.on.aws',
      domainPrefix: 'abc',
      http: { method, path: rawPath, protocol: 'HTTP/1.1', sourceIp: '10.0.0.1', userAgent: 'vitest' },
      requestId: 'req-1',
      routeKey: '$default',
      stage: '$default',
      time: '01/Jan/2030:00:00:00 +0000',
      timeEpoch: 1_893_456_000_000,
    },
    ...(options.body === undefined
      ? {}
      : {
          body: options.base64 ? Buffer.from(options.body, 'utf8').toString('base64') : options.body,
        }),
    isBase64Encoded: options.base64 ?? false,
  };
}
