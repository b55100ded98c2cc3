import { X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  checkChain,
  commonNameOf,
  MAX_CHAIN_DEPTH,
  parseChain,
  type TrustAnchor,
} from '../../functions/core/identity/x509-chain.ts';
import { makeCa, makeLeaf, type TestCertificate } from '../support/x509.ts';

const DAY = 24 * 3600_000;
let root: TestCertificate;
let intermediate: TestCertificate;
let otherRoot: TestCertificate;
let anchors: TrustAnchor[];

const anchor = (name: string, c: TestCertificate): TrustAnchor => ({ name, certificate: c.x509 });

beforeAll(async () => {
  root = await makeCa('Test Root');
  intermediate = await makeCa('Test Intermediate', { issuer: root });
  otherRoot = await makeCa('Other Root');
  anchors = [anchor('root', root)];
});

describe('checkChain', () => {
  it('accepts a leaf issued directly by a trusted CA', async () => {
    const leaf = await makeLeaf('dev-1', { issuer: root });
    expect(checkChain([leaf.x509], anchors, new Date())).toEqual({ ok: true, ca: 'root', intermediates: 0 });
  });

  it('accepts a leaf through an intermediate the client sent, and refuses it without the intermediate', async () => {
    const leaf = await makeLeaf('dev-1', { issuer: intermediate });
    expect(checkChain([leaf.x509, intermediate.x509], anchors, new Date())).toEqual({
      ok: true,
      ca: 'root',
      intermediates: 1,
    });
    expect(checkChain([leaf.x509], anchors, new Date())).toMatchObject({
      ok: false,
      reason: expect.stringContaining('Test Intermediate'),
    });
  });

  it('accepts a registered intermediate as the anchor itself', async () => {
    const leaf = await makeLeaf('dev-1', { issuer: intermediate });
    expect(checkChain([leaf.x509], [anchor('mid', intermediate)], new Date())).toMatchObject({
      ok: true,
      ca: 'mid',
    });
  });

  it('takes intermediates in any order, and ignores extra certificates', async () => {
    const second = await makeCa('Second Intermediate', { issuer: intermediate });
    const leaf = await makeLeaf('dev-1', { issuer: second });
    const unrelated = await makeCa('Unrelated');
    expect(
      checkChain([leaf.x509, unrelated.x509, intermediate.x509, second.x509], anchors, new Date()),
    ).toEqual({ ok: true, ca: 'root', intermediates: 2 });
  });

  it('refuses a leaf issued by a CA that is not trusted', async () => {
    const leaf = await makeLeaf('dev-1', { issuer: otherRoot });
    expect(checkChain([leaf.x509], anchors, new Date()).ok).toBe(false);
    expect(checkChain([leaf.x509, otherRoot.x509], anchors, new Date()).ok).toBe(false);
  });

  it('refuses a forged leaf: right issuer name, signed by another key', async () => {
    // Same subject as the trusted root, different key pair.
    const impostor = await makeCa('Test Root');
    const leaf = await makeLeaf('dev-1', { issuer: impostor });
    expect(leaf.x509.issuer).toBe(root.x509.subject);
    expect(checkChain([leaf.x509], anchors, new Date()).ok).toBe(false);
    expect(checkChain([leaf.x509, impostor.x509], anchors, new Date()).ok).toBe(false);
  });

  it('refuses an intermediate that is not a CA (a device certificate cannot issue others)', async () => {
    const device = await makeLeaf('dev-1', { issuer: root });
    const child = await makeLeaf('dev-2', { issuer: device });
    expect(checkChain([child.x509, device.x509], anchors, new Date()).ok).toBe(false);
  });

  it('refuses an expired or not yet valid leaf', async () => {
    const expired = await makeLeaf('dev-1', {
      issuer: root,
      notBefore: new Date(Date.now() - 10 * DAY),
      notAfter: new Date(Date.now() - DAY),
    });
    expect(checkChain([expired.x509], anchors, new Date())).toMatchObject({
      ok: false,
      reason: expect.stringContaining('not valid now'),
    });
    const future = await makeLeaf('dev-1', { issuer: root, notBefore: new Date(Date.now() + DAY) });
    expect(checkChain([future.x509], anchors, new Date()).ok).toBe(false);
  });

  it('refuses a chain through an expired CA or intermediate', async () => {
    const expiredRoot = await makeCa('Old Root', {
      notBefore: new Date(Date.now() - 10 * DAY),
      notAfter: new Date(Date.now() + DAY),
    });
    const leaf = await makeLeaf('dev-1', { issuer: expiredRoot });
    const later = new Date(Date.now() + 2 * DAY);
    const longLeaf = await makeLeaf('dev-1', {
      issuer: expiredRoot,
      notAfter: new Date(Date.now() + 5 * DAY),
    });
    expect(checkChain([leaf.x509], [anchor('old', expiredRoot)], new Date()).ok).toBe(true);
    expect(checkChain([longLeaf.x509], [anchor('old', expiredRoot)], later)).toMatchObject({
      ok: false,
      reason: expect.stringContaining("'old' is not valid now"),
    });
    const shortMid = await makeCa('Short Intermediate', {
      issuer: root,
      notAfter: new Date(Date.now() + DAY),
    });
    const viaShort = await makeLeaf('dev-1', { issuer: shortMid, notAfter: new Date(Date.now() + 5 * DAY) });
    expect(checkChain([viaShort.x509, shortMid.x509], anchors, later).ok).toBe(false);
  });

  it('refuses the CA certificate itself presented as a device certificate', () => {
    expect(checkChain([root.x509], anchors, new Date())).toMatchObject({
      ok: false,
      reason: expect.stringContaining('registered CA certificate'),
    });
  });

  it('refuses everything when no CA is trusted, and an empty chain', async () => {
    const leaf = await makeLeaf('dev-1', { issuer: root });
    expect(checkChain([leaf.x509], [], new Date()).ok).toBe(false);
    expect(checkChain([], anchors, new Date()).ok).toBe(false);
  });

  it(`stops after ${MAX_CHAIN_DEPTH} intermediates`, async () => {
    const mids: TestCertificate[] = [];
    let issuer = root;
    for (let i = 0; i <= MAX_CHAIN_DEPTH; i++) {
      issuer = await makeCa(`Mid ${i}`, { issuer });
      mids.push(issuer);
    }
    const leaf = await makeLeaf('dev-1', { issuer });
    const all = [leaf.x509, ...mids.map((m) => m.x509)];
    expect(checkChain(all, anchors, new Date())).toMatchObject({
      ok: false,
      reason: expect.stringContaining('longer'),
    });
    // One intermediate fewer fits.
    expect(
      checkChain([leaf.x509, ...mids.slice(1).map((m) => m.x509)], [anchor('mid0', mids[0]!)], new Date()),
    ).toMatchObject({ ok: true, intermediates: MAX_CHAIN_DEPTH });
  });
});

describe('parseChain and commonNameOf', () => {
  it('parses DER, drops unparsable intermediates, and gives nothing for an unparsable leaf', async () => {
    const leaf = await makeLeaf('dev-1', { issuer: root });
    expect(parseChain([leaf.x509.raw, Buffer.from('junk'), root.x509.raw]).map(commonNameOf)).toEqual([
      'dev-1',
      'Test Root',
    ]);
    expect(parseChain([Buffer.from('junk'), root.x509.raw])).toEqual([]);
  });

  it('reads the subject CN', async () => {
    expect(commonNameOf(new X509Certificate((await makeLeaf('a-b.c')).cert))).toBe('a-b.c');
  });
});
