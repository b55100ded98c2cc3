import type * as kinesis from 'aws-cdk-lib/aws-kinesis';
import { Construct } from 'constructs';
import { BUILT_IN_ENDPOINT, type RoutingConfig } from '../functions/core/routing/config.ts';
import { BuiltInEndpoint } from './built-in-endpoint.ts';

/** Props of {@link CustomEndpoints}. */
export interface CustomEndpointsProps {
  /** The custom endpoints of the routing configuration (`hub.routing.endpoints`). */
  readonly endpoints: RoutingConfig['endpoints'];
}

/**
 * The routing configuration's custom endpoints. Each endpoint of type `kinesis` gets a Kinesis
 * data stream made like the built-in endpoint's: on-demand, encrypted with the AWS-managed Kinesis
 * key, keeping records for the endpoint's `retentionDays`; the router writes envelopes keyed by
 * device id to it.
 *
 * Stateful: a stream's construct id is its endpoint's name, so renaming an endpoint in
 * `hub.routing.endpoints` replaces its stream (the old one, with the records it holds, is deleted);
 * changing its retention updates the stream in place.
 */
export class CustomEndpoints extends Construct {
  /** Endpoint name → its stream, in configuration order. */
  readonly streams: ReadonlyMap<string, kinesis.Stream>;

  constructor(scope: Construct, id: string, props: CustomEndpointsProps) {
    super(scope, id);
    const streams = new Map<string, kinesis.Stream>();
    for (const endpoint of props.endpoints) {
      // `type` is `kinesis` only, so far; a new type is a compile error in the default branch.
      switch (endpoint.type) {
        case 'kinesis': {
          const built = new BuiltInEndpoint(this, endpoint.name, {
            config: { retentionDays: endpoint.retentionDays, mode: 'on-demand' },
          });
          streams.set(endpoint.name, built.stream);
          break;
        }
        default: {
          const unknown: never = endpoint.type;
          throw new Error(`custom endpoint type '${String(unknown)}' is not supported`);
        }
      }
    }
    this.streams = streams;
  }

  /** The stream of the named endpoint. @throws when there is no such custom endpoint. */
  stream(name: string): kinesis.Stream {
    const stream = this.streams.get(name);
    if (stream === undefined) throw new Error(`no custom endpoint '${name}'`);
    return stream;
  }
}

/**
 * Custom endpoints that some enabled route sends to, in configuration order. Only these are written
 * by the router, so only these get a write grant and a place in `ENDPOINT_STREAMS`; the built-in
 * endpoint (`events`) is not among them.
 */
export function routedEndpointNames(routing: RoutingConfig): string[] {
  const routed = new Set(
    routing.routes.filter((route) => route.isEnabled).flatMap((route) => route.endpointNames),
  );
  return routing.endpoints.map((e) => e.name).filter((n) => n !== BUILT_IN_ENDPOINT && routed.has(n));
}
