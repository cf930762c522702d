import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { leaseLocks, type StorageLike } from '../src/realtime/leaseLocks';
import { FakeLifecycle } from './fakeTabs';

function memoryStorage(): StorageLike & { map: Map<string, string> } {
  const map = new Map<string, string>();
  return {
    map,
    getItem: (k) => map.get(k) ?? null,
    setItem: (k, v) => void map.set(k, v),
    removeItem: (k) => void map.delete(k),
  };
}

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

/** Hold the lease until `release()`; records when the callback ran and how the request ended. */
function hold(locks: ReturnType<typeof leaseLocks>, opts: { signal?: AbortSignal; steal?: boolean } = {}) {
  const h = { granted: false, ended: null as null | 'released' | 'aborted', release: () => {} };
  locks
    .request('x', opts, () => {
      h.granted = true;
      return new Promise<void>((r) => (h.release = r));
    })
    .then(
      () => (h.ended = 'released'),
      (e: Error) => (h.ended = e.name === 'AbortError' ? 'aborted' : 'released'),
    );
  return h;
}

describe('localStorage lease (election outside a secure context)', () => {
  it('one holder at a time; the next one takes over when it releases', async () => {
    const storage = memoryStorage();
    const a = hold(leaseLocks({ storage, id: 'a', window: null }));
    const b = hold(leaseLocks({ storage, id: 'b', window: null }));
    await vi.advanceTimersByTimeAsync(5000);
    expect([a.granted, b.granted].filter(Boolean)).toHaveLength(1);
    const [first, second] = a.granted ? [a, b] : [b, a];
    first.release();
    await vi.advanceTimersByTimeAsync(1600);
    expect(first.ended).toBe('released');
    expect(second.granted).toBe(true);
  });

  it('a closed tab that never cleaned up loses the lease after leaseMs; a closed tab with pagehide hands over at once', async () => {
    const storage = memoryStorage();
    const pageA = new FakeLifecycle();
    const a = hold(leaseLocks({ storage, id: 'a', window: pageA, leaseMs: 6000, renewMs: 1500 }));
    await vi.advanceTimersByTimeAsync(100);
    expect(a.granted).toBe(true);
    const b = hold(leaseLocks({ storage, id: 'b', window: null, leaseMs: 6000, renewMs: 1500 }));
    await vi.advanceTimersByTimeAsync(10_000);
    expect(b.granted).toBe(false);
    pageA.fire('pagehide'); // the tab closes: its lease is cleared at once
    vi.clearAllTimers(); // and its timers die with it (b's too here; restart b's wait below)
    const b2 = hold(leaseLocks({ storage, id: 'b', window: null }));
    await vi.advanceTimersByTimeAsync(100);
    expect(b2.granted).toBe(true);
  });

  it('a holder whose lease was taken (it stopped renewing) learns it and ends with AbortError', async () => {
    const storage = memoryStorage();
    const a = hold(leaseLocks({ storage, id: 'a', window: null }));
    await vi.advanceTimersByTimeAsync(100);
    expect(a.granted).toBe(true);
    const b = hold(leaseLocks({ storage, id: 'b', window: null }), { steal: true });
    await vi.advanceTimersByTimeAsync(100);
    expect(b.granted).toBe(true);
    await vi.advanceTimersByTimeAsync(1500);
    expect(a.ended).toBe('aborted');
    expect(JSON.parse(storage.map.get('smartscheduler-lease:x')!).id).toBe('b');
  });

  it('an aborted wait ends without holding', async () => {
    const storage = memoryStorage();
    hold(leaseLocks({ storage, id: 'a', window: null }));
    await vi.advanceTimersByTimeAsync(100);
    const ac = new AbortController();
    const b = hold(leaseLocks({ storage, id: 'b', window: null }), { signal: ac.signal });
    ac.abort();
    await vi.advanceTimersByTimeAsync(10);
    expect(b.ended).toBe('aborted');
    expect(b.granted).toBe(false);
  });
});
