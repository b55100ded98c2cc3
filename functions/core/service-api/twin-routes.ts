import type { TwinService } from '../twins/service.ts';
import type { TwinJson } from '../twins/twin.ts';
import { type ApiRequest, jsonResponse, parseJsonBody, type RouteEntry } from './http.ts';
import { quoteEtag } from './registry-routes.ts';

function twinResponse(twin: TwinJson) {
  return jsonResponse(200, twin, { etag: quoteEtag(twin.etag) });
}

const ifMatchOf = (request: ApiRequest): string | undefined => request.headers['if-match'];

/**
 * IoT Hub's twin resources: `GET /twins/{id}`, `PATCH /twins/{id}` (merge tags and desired properties;
 * `null` removes a key) and `PUT /twins/{id}` (replace them). Each answers 200 with the whole twin and
 * its etag; `If-Match` makes a write conditional (412 when the twin changed). See `TwinService`.
 */
export function twinRoutes(twins: TwinService): RouteEntry[] {
  return [
    {
      method: 'GET',
      pattern: '/twins/{id}',
      handle: async (_request, { id = '' }) => twinResponse(await twins.get(id)),
    },
    {
      method: 'PATCH',
      pattern: '/twins/{id}',
      handle: async (request, { id = '' }) =>
        twinResponse(await twins.update(id, parseJsonBody(request), ifMatchOf(request))),
    },
    {
      method: 'PUT',
      pattern: '/twins/{id}',
      handle: async (request, { id = '' }) =>
        twinResponse(await twins.replace(id, parseJsonBody(request), ifMatchOf(request))),
    },
  ];
}
