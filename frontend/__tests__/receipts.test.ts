import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AppliedTracker, isAfter, ReceiptReporter, type ReceiptTransport } from '../src/receipts';
import { ApiError } from '../src/api';

const E = '0badcafe';
const p = (seq: number, epoch = E) => `${epoch}-${seq}`;

class FakeTarget {
  visibilityState = 'visible';
  private readonly listeners = new Map<string, Set<() => void>>();
  addEventListener(type: string, l: () => void) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type)!.add(l);
  }
  removeEventListener(type: string, l: () => void) {
    this.listeners.get(type)?.delete(l);
  }
  fire(type: string) {
    for (const l of this.listeners.get(type) ?? []) l();
  }
}

function setup(opts: { beacon?: boolean | null; fail?: () => unknown } = {}) {
  const posts: { position: string; keepalive: boolean; at: number }[] = [];
  const beacons: string[] = [];
  let failWith: (() => unknown) | undefined = opts.fail;
  const transport: ReceiptTransport = {
    post: vi.fn(async (position: string, { keepalive }: { keepalive: boolean }) => {
      posts.push({ position, keepalive, at: Date.now() });
      if (failWith) throw failWith();
    }),
    beacon:
      opts.beacon === null
        ? undefined
        : (position: string) => {
            beacons.push(position);
            return opts.beacon ?? true;
          },
  };
  const doc = new FakeTarget();
  const win = new FakeTarget();
  const reporter = new ReceiptReporter({ transport, intervalMs: 5000, document: doc, window: win });
  return { reporter, posts, beacons, doc, win, setFail: (f?: () => unknown) => (failWith = f) };
}

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(new Date('2026-01-01T10:00:00Z'));
});
afterEach(() => vi.useRealTimers());

describe('isAfter', () => {
  it('orders positions of one epoch by seq, and counts another epoch as after', () => {
    expect(isAfter(p(5), null)).toBe(true);
    expect(isAfter(p(5), p(4))).toBe(true);
    expect(isAfter(p(4), p(4))).toBe(false);
    expect(isAfter(p(3), p(4))).toBe(false);
    expect(isAfter(p(1, 'deadbeef'), p(4))).toBe(true);
    expect(isAfter('nonsense', null)).toBe(false);
  });
});

describe('ReceiptReporter', () => {
  it('reports at once (leading edge), then at most once per interval with the latest position (trailing)', async () => {
    const { reporter, posts } = setup();
    reporter.applied(p(1));
    await vi.advanceTimersByTimeAsync(0);
    expect(posts.map((x) => x.position)).toEqual([p(1)]);
    reporter.applied(p(2));
    reporter.applied(p(3));
    await vi.advanceTimersByTimeAsync(4999);
    expect(posts).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(posts.map((x) => x.position)).toEqual([p(1), p(3)]);
    expect(posts[1].at - posts[0].at).toBe(5000);
    expect(reporter.reported).toBe(p(3));
    // Nothing new: nothing more, however long.
    await vi.advanceTimersByTimeAsync(60_000);
    expect(posts).toHaveLength(2);
    // Quiet for more than an interval: the next one goes at once again.
    reporter.applied(p(4));
    await vi.advanceTimersByTimeAsync(0);
    expect(posts.map((x) => x.position)).toEqual([p(1), p(3), p(4)]);
    expect(posts.every((x) => !x.keepalive)).toBe(true);
    reporter.dispose();
  });

  it('never reports a position below one already reported, nor the same again', async () => {
    const { reporter, posts } = setup();
    reporter.applied(p(7));
    await vi.advanceTimersByTimeAsync(0);
    reporter.applied(p(5));
    reporter.applied(p(7));
    await vi.advanceTimersByTimeAsync(20_000);
    expect(posts.map((x) => x.position)).toEqual([p(7)]);
    reporter.applied('garbage');
    await vi.advanceTimersByTimeAsync(20_000);
    expect(posts).toHaveLength(1);
    // A new epoch (the log was recreated) is reported.
    reporter.applied(p(1, 'deadbeef'));
    await vi.advanceTimersByTimeAsync(0);
    expect(posts.map((x) => x.position)).toEqual([p(7), p(1, 'deadbeef')]);
    reporter.dispose();
  });

  it('retries a failed report on the next tick with the latest position only (no queue)', async () => {
    const { reporter, posts, setFail } = setup({ fail: () => new ApiError(0, 'network_error', 'down') });
    reporter.applied(p(1));
    await vi.advanceTimersByTimeAsync(0);
    reporter.applied(p(2));
    reporter.applied(p(3));
    await vi.advanceTimersByTimeAsync(5000);
    expect(posts.map((x) => x.position)).toEqual([p(1), p(3)]);
    setFail(undefined);
    await vi.advanceTimersByTimeAsync(5000);
    expect(posts.map((x) => x.position)).toEqual([p(1), p(3), p(3)]);
    expect(reporter.reported).toBe(p(3));
    await vi.advanceTimersByTimeAsync(30_000);
    expect(posts).toHaveLength(3);
    reporter.dispose();
  });

  it('does not retry a position the server refused as malformed (400)', async () => {
    const { reporter, posts } = setup({ fail: () => new ApiError(400, 'bad_position', 'no') });
    reporter.applied(p(1));
    await vi.advanceTimersByTimeAsync(30_000);
    expect(posts).toHaveLength(1);
    reporter.dispose();
  });

  it('beacons the latest position at once when the tab is hidden or closed, and only if something is new', async () => {
    const { reporter, posts, beacons, doc, win } = setup();
    reporter.applied(p(1));
    await vi.advanceTimersByTimeAsync(0);
    reporter.applied(p(2));
    doc.visibilityState = 'hidden';
    doc.fire('visibilitychange');
    expect(beacons).toEqual([p(2)]);
    // The trailing report is not needed any more.
    await vi.advanceTimersByTimeAsync(10_000);
    expect(posts.map((x) => x.position)).toEqual([p(1)]);
    // Nothing new: no beacon on pagehide.
    win.fire('pagehide');
    expect(beacons).toEqual([p(2)]);
    reporter.applied(p(3));
    win.fire('pagehide');
    expect(beacons).toEqual([p(2), p(3)]);
    // Becoming visible is no reason to report.
    doc.visibilityState = 'visible';
    doc.fire('visibilitychange');
    expect(beacons).toHaveLength(2);
    reporter.dispose();
  });

  it('falls back to a keepalive fetch where a beacon cannot be queued', async () => {
    for (const beacon of [false, null] as const) {
      const { reporter, posts, win } = setup({ beacon });
      reporter.applied(p(1));
      await vi.advanceTimersByTimeAsync(0);
      reporter.applied(p(2));
      win.fire('pagehide');
      await vi.advanceTimersByTimeAsync(0);
      expect(posts.map((x) => [x.position, x.keepalive])).toEqual([
        [p(1), false],
        [p(2), true],
      ]);
      reporter.dispose();
    }
  });

  it('reports nothing after dispose', async () => {
    const { reporter, posts, win } = setup();
    reporter.applied(p(1));
    await vi.advanceTimersByTimeAsync(0);
    reporter.applied(p(2));
    reporter.dispose();
    win.fire('pagehide');
    reporter.applied(p(3));
    await vi.advanceTimersByTimeAsync(20_000);
    expect(posts).toHaveLength(1);
  });
});

describe('AppliedTracker', () => {
  it('answers how far everything begun is finished, in arrival order', () => {
    const t = new AppliedTracker();
    const a = t.begin(p(1));
    const b = t.begin(p(2));
    const c = t.begin(p(3));
    // The second event rendered first (no REST reload): not claimed while the first still loads.
    expect(b()).toBeNull();
    expect(t.position).toBeNull();
    expect(a()).toBe(p(2));
    expect(a()).toBeNull(); // finishing twice changes nothing
    expect(c()).toBe(p(3));
    expect(t.position).toBe(p(3));
  });

  it('holds later entries back behind a reset without a position, and ignores positions that go back', () => {
    const t = new AppliedTracker();
    const r = t.begin(null);
    const e = t.begin(p(4));
    expect(e()).toBeNull();
    expect(r()).toBe(p(4));
    const old = t.begin(p(2));
    expect(old()).toBeNull();
    expect(t.position).toBe(p(4));
  });
});
