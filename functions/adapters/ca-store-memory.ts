import type { CaCertificate, CaCertificateStore } from '../core/identity/ca-certificates.ts';

/**
 * The CA certificate store in a Map, for unit tests and tools. Each method runs without an `await` between
 * its read and its write, so it is atomic the way a conditional write is; records are copied in and out.
 */
export class MemoryCaCertificateStore implements CaCertificateStore {
  private readonly records = new Map<string, CaCertificate>();

  /** {@inheritDoc CaCertificateStore.find} */
  async find(name: string): Promise<CaCertificate | undefined> {
    const record = this.records.get(name);
    return record === undefined ? undefined : structuredClone(record);
  }

  /** {@inheritDoc CaCertificateStore.list} */
  async list(): Promise<CaCertificate[]> {
    return [...this.records.keys()].sort().map((name) => structuredClone(this.records.get(name)!));
  }

  /** {@inheritDoc CaCertificateStore.put} */
  async put(record: CaCertificate, expect: 'absent' | { readonly etag: string }): Promise<boolean> {
    const stored = this.records.get(record.name);
    const ok = expect === 'absent' ? stored === undefined : stored?.etag === expect.etag;
    if (ok) this.records.set(record.name, structuredClone(record));
    return ok;
  }

  /** {@inheritDoc CaCertificateStore.delete} */
  async delete(name: string, etag: string): Promise<boolean> {
    if (this.records.get(name)?.etag !== etag) return false;
    this.records.delete(name);
    return true;
  }
}
