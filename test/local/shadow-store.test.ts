import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IotShadowStore } from '../../functions/adapters/shadow-iot.ts';
import {
  ShadowRejectedError,
  ShadowTooLargeError,
  ShadowVersionConflictError,
} from '../../functions/core/twins/errors.ts';
import { startDataPlane } from '../../local/data-plane.ts';
import { localIoTDataPlaneClient } from '../../local/emulators.ts';
import type { RunningServer } from '../../local/net.ts';
import { ShadowService } from '../../local/shadow.ts';
import { tempDataDir } from '../support/hub-process.ts';

// The twins' shadow adapter against the local shadow service over the real data-plane REST API: each
// answer of the shadow service becomes the error the twin API maps to a status.

describe('IotShadowStore against the shadow service', () => {
  let server: RunningServer;
  let store: IotShadowStore;

  beforeAll(async () => {
    const shadows = new ShadowService({ dataDir: tempDataDir('shadow-store-'), log: () => undefined });
    server = await startDataPlane('127.0.0.1', 0, {
      shadows,
      maxMessageBytes: 128 * 1024,
      log: () => undefined,
      disconnect: () => false,
      retainedTopics: () => [],
      publish: async () => undefined,
    });
    store = new IotShadowStore(localIoTDataPlaneClient(server.url));
  });

  afterAll(async () => {
    await server?.close();
  });

  it('reads no shadow as undefined, then merges desired and returns the new document', async () => {
    expect(await store.get('s1')).toBeUndefined();
    const first = await store.updateDesired('s1', { a: 1, b: { c: 2 } });
    expect(first.state.desired).toEqual({ a: 1, b: { c: 2 } });
    const second = await store.updateDesired('s1', { a: null, b: { d: 3 } }, first.version);
    expect(second.version).toBe(first.version + 1);
    expect((await store.get('s1'))?.state.desired).toEqual({ b: { c: 2, d: 3 } });
  });

  it('a stale expected version is a ShadowVersionConflictError (412), and nothing changes', async () => {
    const doc = await store.updateDesired('s2', { a: 1 });
    await store.updateDesired('s2', { a: 2 });
    await expect(store.updateDesired('s2', { a: 3 }, doc.version)).rejects.toBeInstanceOf(
      ShadowVersionConflictError,
    );
    expect((await store.get('s2'))?.state.desired).toEqual({ a: 2 });
  });

  it('more than 8 KB of state is a ShadowTooLargeError; too deep a ShadowRejectedError', async () => {
    await expect(store.updateDesired('s3', { big: 'x'.repeat(9000) })).rejects.toBeInstanceOf(
      ShadowTooLargeError,
    );
    await expect(
      store.updateDesired('s3', { a: { b: { c: { d: { e: { f: { g: 1 } } } } } } }),
    ).rejects.toBeInstanceOf(ShadowRejectedError);
    expect(await store.get('s3')).toBeUndefined();
  });

  it('deletes a shadow, and deleting none succeeds', async () => {
    await store.updateDesired('s4', { a: 1 });
    await store.delete('s4');
    expect(await store.get('s4')).toBeUndefined();
    await store.delete('s4');
  });
});
