import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { startSchedules } from '../../local/hub.ts';

describe('local schedules (EventBridge rate rules)', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  const schedules = [
    { logicalId: 'Sweep', everyMs: 60_000, functionLogicalIds: ['Delivery', 'Expiry'] },
    { logicalId: 'Hourly', everyMs: 3_600_000, functionLogicalIds: ['Report'] },
  ];

  it('fires every schedule at once after start, then every interval', async () => {
    const calls: [string, unknown][] = [];
    const running = startSchedules(
      schedules,
      async (fn, event) => calls.push([fn, event]),
      () => undefined,
    );
    expect(calls).toEqual([]); // not inside the start call itself
    await vi.advanceTimersByTimeAsync(0);
    expect(calls.map(([fn]) => fn)).toEqual(['Delivery', 'Expiry', 'Report']);
    expect(calls[0]![1]).toMatchObject({
      'detail-type': 'Scheduled Event',
      source: 'aws.events',
      resources: ['Sweep'],
      detail: {},
    });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(calls.map(([fn]) => fn)).toEqual(['Delivery', 'Expiry', 'Report', 'Delivery', 'Expiry']);
    running.stop();
  });

  it('stops: nothing fires after stop, not even the first run', async () => {
    const calls: string[] = [];
    const running = startSchedules(
      schedules,
      async (fn) => calls.push(fn),
      () => undefined,
    );
    running.stop();
    await vi.advanceTimersByTimeAsync(7_200_000);
    expect(calls).toEqual([]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('logs a failed run and keeps the schedule going', async () => {
    const lines: string[] = [];
    let n = 0;
    const running = startSchedules(
      [schedules[0]!],
      async () => {
        n++;
        throw new Error('boom');
      },
      (line) => lines.push(line),
    );
    await vi.advanceTimersByTimeAsync(60_000);
    expect(n).toBe(4);
    expect(lines).toContain('schedule Sweep: Error: boom');
    running.stop();
  });
});
