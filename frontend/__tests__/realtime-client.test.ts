import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  backoffDelay,
  createRealtimeClient,
  parsePosition,
  type ConnectionStatus,
  type OnlineSource,
  type RealtimeClientOptions,
  type RecommendationReadyEvent,
  type ResetInfo,
  type StreamEvent,
} from '../src/realtime';
import { FakeEventSource, recEvent } from './fakeEventSource';

const E = 'a1b2c3d4';

function fakeOnline() {
  let online = true;
  const subs = new Set<(o: boolean) => void>();
  const source: OnlineSource = {
    isOnline: () => online,
    subscribe(cb) {
      subs.add(cb);
      return () => subs.delete(cb);
    },
  };
  return {
    source,
    set(v: boolean) {
      online = v;
      subs.forEach((cb) => cb(v));
    },
  };
}

function setup(opts: RealtimeClientOptions = {}) {
  const client = createRealtimeClient({
    EventSource: FakeEventSource,
    random: () => 0.5,
    online: null,
    ...opts,
  });
  const statuses: ConnectionStatus[] = [];
  const events: RecommendationReadyEvent[] = [];
  const resets: ResetInfo[] = [];
  const degraded: boolean[] = [];
  let authExpired = 0;
  client.onStatus((s) => statuses.push(s));
  client.on('RecommendationReady', (e) => events.push(e));
  client.onReset((r) => resets.push(r));
  client.onDegraded((d) => degraded.push(d));
  client.onAuthExpired(() => (authExpired += 1));
  return { client, statuses, events, resets, degraded, authExpired: () => authExpired };
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeEventSource.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

describe('positions and backoff', () => {
  it('parses <epoch>-<seq> and rejects malformed positions', () => {
    expect(parsePosition('7f3a9c21-1042')).toEqual({ epoch: '7f3a9c21', seq: 1042n });
    expect(parsePosition('7f3a9c21-99999999999999999999')?.seq).toBe(99999999999999999999n);
    for (const bad of ['', '7f3a9c2-1', '7F3A9C21-1', '7f3a9c21-', '7f3a9c21-1x', null, 5]) {
      expect(parsePosition(bad)).toBeNull();
    }
  });

  it('grows exponentially from 1 s, caps at 30 s and jitters within [d/2, d]', () => {
    const o = { initialMs: 1000, maxMs: 30000, factor: 2 };
    expect([0, 1, 2, 3, 4, 5, 6, 10].map((a) => backoffDelay(a, o, () => 1))).toEqual([
      1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000,
    ]);
    expect(backoffDelay(0, o, () => 0)).toBe(500);
    expect(backoffDelay(5, o, () => 0)).toBe(15000);
    expect(backoffDelay(3, o, () => 0.5)).toBe(6000);
  });
});

describe('connection', () => {
  it('opens one EventSource with credentials on /api/events and goes live on open', () => {
    const { client, statuses } = setup();
    expect(client.status).toBe('reconnecting');
    client.start();
    client.start(); // idempotent: still one stream
    expect(FakeEventSource.instances).toHaveLength(1);
    const es = FakeEventSource.last;
    expect(es.url).toBe('/api/events');
    expect(es.init).toEqual({ withCredentials: true });
    es.open();
    expect(client.status).toBe('live');
    expect(statuses).toEqual(['live']);
    client.stop();
    expect(es.closed).toBe(true);
  });

  it('passes groups and the initial position in the URL', () => {
    const { client } = setup({ groups: ['region:north', 'team:hvac'], initialPosition: `${E}-7` });
    client.start();
    const p = FakeEventSource.last.searchParams;
    expect(p.get('groups')).toBe('region:north,team:hvac');
    expect(p.get('lastEventId')).toBe(`${E}-7`);
  });

  it('leaves reconnection to the browser while readyState is CONNECTING', () => {
    const { client, statuses } = setup();
    client.start();
    const es = FakeEventSource.last;
    es.open();
    es.dropAndRetry();
    expect(client.status).toBe('reconnecting');
    vi.advanceTimersByTime(5000);
    expect(FakeEventSource.instances).toHaveLength(1); // no second stream
    expect(es.closed).toBe(false);
    es.open(); // the browser's own retry succeeded
    expect(client.status).toBe('live');
    expect(statuses).toEqual(['live', 'reconnecting', 'live']);
  });

  it('recreates a closed-for-good stream with exponential backoff + jitter and lastEventId', () => {
    const { client } = setup();
    client.start();
    const first = FakeEventSource.last;
    first.open();
    first.emit('RecommendationReady', recEvent(`${E}-5`));
    first.failForGood();
    expect(first.closed).toBe(true);
    expect(client.status).toBe('reconnecting');

    // attempt 0: base 1000, jitter 0.5 -> 750 ms
    vi.advanceTimersByTime(749);
    expect(FakeEventSource.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeEventSource.instances).toHaveLength(2);
    const second = FakeEventSource.last;
    expect(second.url).toBe(`/api/events?lastEventId=${E}-5`);
    expect(second.init).toEqual({ withCredentials: true });

    // attempt 1: base 2000 -> 1500 ms
    second.failForGood();
    vi.advanceTimersByTime(1499);
    expect(FakeEventSource.instances).toHaveLength(2);
    vi.advanceTimersByTime(1);
    expect(FakeEventSource.instances).toHaveLength(3);

    // attempt 2: base 4000 -> 3000 ms
    FakeEventSource.last.failForGood();
    vi.advanceTimersByTime(2999);
    expect(FakeEventSource.instances).toHaveLength(3);
    vi.advanceTimersByTime(1);
    expect(FakeEventSource.instances).toHaveLength(4);

    // success resets the backoff
    FakeEventSource.last.open();
    expect(client.status).toBe('live');
    FakeEventSource.last.failForGood();
    vi.advanceTimersByTime(750);
    expect(FakeEventSource.instances).toHaveLength(5);
    expect(FakeEventSource.last.searchParams.get('lastEventId')).toBe(`${E}-5`);
  });

  it('caps the backoff at 30 s', () => {
    // (a long heartbeat keeps the watchdog out of this test of the backoff alone)
    const { client } = setup({ random: () => 1, heartbeatMs: 60_000 });
    client.start();
    for (let i = 0; i < 8; i++) {
      FakeEventSource.last.failForGood();
      vi.advanceTimersByTime(30000);
    }
    const n = FakeEventSource.instances.length;
    expect(n).toBe(9);
    FakeEventSource.last.failForGood();
    vi.advanceTimersByTime(29999);
    expect(FakeEventSource.instances).toHaveLength(n);
    vi.advanceTimersByTime(1);
    expect(FakeEventSource.instances).toHaveLength(n + 1);
  });

  it('ignores events from a stream it already replaced', () => {
    const { client, events } = setup();
    client.start();
    const first = FakeEventSource.last;
    first.open();
    first.failForGood();
    vi.advanceTimersByTime(1000);
    first.emit('RecommendationReady', recEvent(`${E}-1`));
    expect(events).toHaveLength(0);
    FakeEventSource.last.emit('RecommendationReady', recEvent(`${E}-1`));
    expect(events).toHaveLength(1);
  });

  it('asks the app to resync when it recreates a stream without a known position', () => {
    const { client, resets } = setup();
    client.start();
    FakeEventSource.last.failForGood();
    vi.advanceTimersByTime(1000);
    expect(resets).toEqual([{ reason: 'unknown-position', position: null }]);
    expect(FakeEventSource.last.searchParams.has('lastEventId')).toBe(false);
  });
});

describe('order and duplicates', () => {
  it('delivers increasing positions and drops older or equal seq (numeric compare)', () => {
    const { client, events } = setup();
    client.start();
    const es = FakeEventSource.last;
    es.open();
    es.emit('RecommendationReady', recEvent(`${E}-9`));
    es.emit('RecommendationReady', recEvent(`${E}-10`)); // 10 > 9 numerically
    es.emit('RecommendationReady', recEvent(`${E}-10`)); // same position again
    es.emit('RecommendationReady', recEvent(`${E}-8`)); // older
    es.emit('RecommendationReady', recEvent(`${E}-11`));
    expect(events.map((e) => e.position)).toEqual([`${E}-9`, `${E}-10`, `${E}-11`]);
    expect(client.lastPosition).toBe(`${E}-11`);
  });

  it('drops a repeated eventId', () => {
    const { client, events } = setup();
    client.start();
    const es = FakeEventSource.last;
    es.open();
    const a = recEvent(`${E}-1`, { eventId: 'aaaaaaaa-0000-4000-8000-000000000001' });
    es.emit('RecommendationReady', a);
    es.emit('RecommendationReady', { ...a, position: `${E}-2` });
    es.emit('RecommendationReady', recEvent(`${E}-3`));
    expect(events.map((e) => e.position)).toEqual([`${E}-1`, `${E}-3`]);
  });

  it('keeps the dedupe set bounded', () => {
    const { client, events } = setup({ dedupeWindow: 2 });
    client.start();
    const es = FakeEventSource.last;
    const ids = ['a', 'b', 'c'].map((c) => `${c.repeat(8)}-0000-4000-8000-000000000000`);
    es.emit('RecommendationReady', recEvent(`${E}-1`, { eventId: ids[0] }));
    es.emit('RecommendationReady', recEvent(`${E}-2`, { eventId: ids[1] }));
    es.emit('RecommendationReady', recEvent(`${E}-3`, { eventId: ids[2] }));
    // ids[0] fell out of the window, so only its position protects against it now
    es.emit('RecommendationReady', recEvent(`${E}-4`, { eventId: ids[0] }));
    es.emit('RecommendationReady', recEvent(`${E}-5`, { eventId: ids[2] }));
    expect(events.map((e) => e.position)).toEqual([`${E}-1`, `${E}-2`, `${E}-3`, `${E}-4`]);
  });

  it('treats a new epoch as a reset and continues from it', () => {
    const { client, events, resets } = setup();
    client.start();
    const es = FakeEventSource.last;
    es.open();
    es.emit('RecommendationReady', recEvent(`${E}-50`));
    es.emit('RecommendationReady', recEvent('0000beef-3'));
    expect(events.map((e) => e.position)).toEqual([`${E}-50`, '0000beef-3']);
    expect(resets).toEqual([{ reason: 'epoch-changed', position: '0000beef-3' }]);
    es.emit('RecommendationReady', recEvent('0000beef-2'));
    expect(events).toHaveLength(2);
  });

  it('ignores malformed data and events without a usable position', () => {
    const { client, events } = setup();
    client.start();
    const es = FakeEventSource.last;
    es.emit('RecommendationReady', 'not json');
    es.emit('RecommendationReady', { ...recEvent('nope'), position: 'nope' }, 'nope');
    expect(events).toHaveLength(0);
  });
});

describe('event types', () => {
  it('delivers each type to its own listeners, in one order, including a type asked for after start', () => {
    const { client, events } = setup();
    client.start();
    const es = FakeEventSource.last;
    es.open();
    const jobs: StreamEvent[] = [];
    const all: string[] = [];
    client.onEvent((e, eventType) => all.push(`${eventType} ${e.position}`));
    es.emit('JobUpdated', { ...recEvent(`${E}-1`), type: 'JobUpdated' }); // nobody listens for it yet
    client.on('JobUpdated', (e) => jobs.push(e));
    es.emit('RecommendationReady', recEvent(`${E}-2`));
    es.emit('JobUpdated', { ...recEvent(`${E}-3`), type: 'JobUpdated' });
    es.emit('JobUpdated', { ...recEvent(`${E}-2`), type: 'JobUpdated' }); // older than what was applied
    expect(events.map((e) => e.position)).toEqual([`${E}-2`]);
    expect(jobs.map((e) => e.position)).toEqual([`${E}-3`]);
    expect(all).toEqual([`RecommendationReady ${E}-2`, `JobUpdated ${E}-3`]);
    expect(() => client.on('heartbeat', () => {})).toThrow();
  });
});

describe('reset and auth-expired', () => {
  it('reset notifies the app and continues from the given position', () => {
    const { client, events, resets } = setup({ initialPosition: 'deadbeef-900' });
    client.start();
    const es = FakeEventSource.last;
    es.open();
    es.emit('reset', { reason: 'epoch', position: `${E}-4` }, `${E}-4`);
    expect(resets).toEqual([{ reason: 'epoch', position: `${E}-4` }]);
    expect(client.lastPosition).toBe(`${E}-4`);
    es.emit('RecommendationReady', recEvent(`${E}-4`));
    es.emit('RecommendationReady', recEvent(`${E}-5`));
    expect(events.map((e) => e.position)).toEqual([`${E}-5`]);

    es.emit('reset', { reason: 'expired', position: `${E}-90` });
    expect(resets.at(-1)).toEqual({ reason: 'expired', position: `${E}-90` });
    es.failForGood();
    vi.advanceTimersByTime(1000);
    expect(FakeEventSource.last.searchParams.get('lastEventId')).toBe(`${E}-90`);
  });

  it('auth-expired notifies the app and does not reconnect until resume()', () => {
    const s = setup();
    s.client.start();
    const es = FakeEventSource.last;
    es.open();
    es.emit('RecommendationReady', recEvent(`${E}-12`));
    es.emit('auth-expired', {});
    expect(s.authExpired()).toBe(1);
    expect(s.client.authExpired).toBe(true);
    expect(es.closed).toBe(true);
    expect(s.client.status).toBe('offline');
    es.failForGood(); // the server ends the stream afterwards: ignored
    vi.advanceTimersByTime(120_000);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(s.degraded).toEqual([]); // no REST polling with an expired session

    s.client.resume();
    expect(s.client.authExpired).toBe(false);
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(FakeEventSource.last.searchParams.get('lastEventId')).toBe(`${E}-12`);
    FakeEventSource.last.open();
    expect(s.client.status).toBe('live');
  });
});

describe('status', () => {
  it('stays reconnecting (not offline) through a long outage while the browser is online, and back to live', () => {
    const { client, statuses } = setup();
    client.start();
    const es = FakeEventSource.last;
    es.open();
    es.dropAndRetry();
    vi.advanceTimersByTime(20_000);
    expect(client.status).toBe('reconnecting');
    es.open();
    expect(statuses).toEqual(['live', 'reconnecting', 'live']);
  });

  it('an offline blip while the stream stayed open returns to live without an event', () => {
    const net = fakeOnline();
    const { client, statuses } = setup({ online: net.source });
    client.start();
    FakeEventSource.last.open();
    net.set(false);
    expect(client.status).toBe('offline');
    vi.advanceTimersByTime(3000);
    net.set(true);
    expect(client.status).toBe('live');
    expect(statuses).toEqual(['live', 'offline', 'live']);
    expect(FakeEventSource.instances).toHaveLength(1);
    vi.advanceTimersByTime(60_000); // and it does not decay to offline later
    expect(client.status).not.toBe('offline');
  });

  it('is offline while the browser is offline and retries at once when it comes back', () => {
    const net = fakeOnline();
    const { client } = setup({ online: net.source });
    client.start();
    FakeEventSource.last.open();
    net.set(false);
    expect(client.status).toBe('offline');
    FakeEventSource.last.failForGood();
    expect(client.status).toBe('offline');
    vi.advanceTimersByTime(100);
    net.set(true); // back online during the backoff wait
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(client.status).toBe('reconnecting');
    FakeEventSource.last.open();
    expect(client.status).toBe('live');
  });

  it('an event on an open stream counts as live', () => {
    const { client } = setup();
    client.start();
    const es = FakeEventSource.last;
    es.readyState = 1;
    es.emit('RecommendationReady', recEvent(`${E}-1`));
    expect(client.status).toBe('live');
  });
});

describe('degraded REST polling', () => {
  it('polls every 5 s once the stream is down > 10 s and stops when live again', () => {
    const { client, degraded } = setup();
    const poll = vi.fn();
    client.whileDegraded(poll, 5000);
    client.start();
    const es = FakeEventSource.last;
    es.open();
    for (let i = 0; i < 6; i++) {
      vi.advanceTimersByTime(10_000);
      es.emit('heartbeat', { position: `${E}-1` }, '');
    }
    expect(poll).not.toHaveBeenCalled(); // live: no polling

    es.dropAndRetry();
    vi.advanceTimersByTime(9999);
    expect(poll).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(client.degraded).toBe(true);
    expect(poll).toHaveBeenCalledTimes(1); // immediately on degrading
    vi.advanceTimersByTime(5000);
    expect(poll).toHaveBeenCalledTimes(2);
    vi.advanceTimersByTime(10000);
    expect(poll).toHaveBeenCalledTimes(4);

    // 25 s of silence: the watchdog replaced the retrying stream; the new one opens.
    vi.advanceTimersByTime(1000);
    expect(FakeEventSource.instances).toHaveLength(2);
    FakeEventSource.last.open();
    expect(client.degraded).toBe(false);
    for (let i = 0; i < 6; i++) {
      vi.advanceTimersByTime(10_000);
      FakeEventSource.last.emit('heartbeat', { position: `${E}-1` }, '');
    }
    expect(poll).toHaveBeenCalledTimes(4);
    expect(degraded).toEqual([true, false]);
  });

  it('also polls when the stream never connects, and through closed-for-good recreates', () => {
    const { client } = setup();
    const poll = vi.fn();
    client.start();
    client.whileDegraded(poll);
    FakeEventSource.last.failForGood();
    vi.advanceTimersByTime(10_000);
    expect(poll).toHaveBeenCalledTimes(1);
    FakeEventSource.last.failForGood();
    vi.advanceTimersByTime(5_000);
    expect(poll).toHaveBeenCalledTimes(2);
    FakeEventSource.last.open();
    vi.advanceTimersByTime(20_000);
    expect(poll).toHaveBeenCalledTimes(2);
  });

  it('a poller registered while degraded starts at once; unsubscribe stops it', () => {
    const { client } = setup();
    client.start();
    vi.advanceTimersByTime(10_000);
    expect(client.degraded).toBe(true);
    const poll = vi.fn();
    const off = client.whileDegraded(poll, 5000);
    expect(poll).toHaveBeenCalledTimes(1);
    off();
    vi.advanceTimersByTime(20_000);
    expect(poll).toHaveBeenCalledTimes(1);
  });

  it('stop() ends polling and closes the stream', () => {
    const { client } = setup();
    const poll = vi.fn();
    client.whileDegraded(poll);
    client.start();
    vi.advanceTimersByTime(10_000);
    expect(poll).toHaveBeenCalledTimes(1);
    client.stop();
    vi.advanceTimersByTime(60_000);
    expect(poll).toHaveBeenCalledTimes(1);
    expect(FakeEventSource.last.closed).toBe(true);
    expect(client.status).toBe('offline');
  });
});

describe('watchdog', () => {
  it('a silent open stream is closed after 2.5 heartbeat intervals and reopened from the last position', () => {
    const { client, statuses } = setup({ heartbeatMs: 10_000 });
    client.start();
    const es = FakeEventSource.last;
    es.open();
    es.emit('RecommendationReady', recEvent(`${E}-7`));
    vi.advanceTimersByTime(10_000);
    es.emit('heartbeat', { position: `${E}-9` }, '');
    // Quiet but alive: heartbeats keep it live.
    vi.advanceTimersByTime(10_000);
    es.emit('heartbeat', { position: `${E}-9` }, '');
    expect(client.status).toBe('live');
    // Silence: 24.9 s is still within the window, 25 s is not.
    vi.advanceTimersByTime(24_900);
    expect(client.status).toBe('live');
    expect(es.closed).toBe(false);
    vi.advanceTimersByTime(100);
    expect(client.status).toBe('reconnecting');
    expect(es.closed).toBe(true);
    // Reopened after the first (jittered) backoff step, from the heartbeat's position.
    vi.advanceTimersByTime(1000);
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(FakeEventSource.last.searchParams.get('lastEventId')).toBe(`${E}-9`);
    FakeEventSource.last.open();
    expect(statuses).toEqual(['live', 'reconnecting', 'live']);
  });

  it('learns the server heartbeat interval from the gap between two heartbeats', () => {
    const { client } = setup({ heartbeatMs: 10_000 });
    client.start();
    const es = FakeEventSource.last;
    es.open();
    vi.advanceTimersByTime(2_000);
    es.emit('heartbeat', { position: `${E}-1` }, '');
    vi.advanceTimersByTime(2_000);
    es.emit('heartbeat', { position: `${E}-1` }, '');
    vi.advanceTimersByTime(4_900); // 2.5 x 2 s = 5 s
    expect(client.status).toBe('live');
    vi.advanceTimersByTime(100);
    expect(client.status).toBe('reconnecting');
    expect(es.closed).toBe(true);
  });

  it('a browser retry that never opens is replaced by a new stream after the window', () => {
    const { client } = setup({ heartbeatMs: 4_000 });
    client.start();
    const es = FakeEventSource.last;
    es.open();
    es.dropAndRetry();
    vi.advanceTimersByTime(9_999);
    expect(FakeEventSource.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(es.closed).toBe(true);
    vi.advanceTimersByTime(1000);
    expect(FakeEventSource.instances).toHaveLength(2);
  });

  it('a heartbeat position is adopted only forward and within the epoch', () => {
    const { client } = setup();
    client.start();
    const es = FakeEventSource.last;
    es.open();
    es.emit('RecommendationReady', recEvent(`${E}-10`));
    es.emit('heartbeat', { position: `${E}-8` }, '');
    expect(client.lastPosition).toBe(`${E}-10`);
    es.emit('heartbeat', { position: `ffffffff-99` }, '');
    expect(client.lastPosition).toBe(`${E}-10`);
    es.emit('heartbeat', { position: `${E}-12` }, `${E}-12`);
    expect(client.lastPosition).toBe(`${E}-12`);
    // An event up to the heartbeat's position is one we already have.
    const events: unknown[] = [];
    client.on('RecommendationReady', (e) => events.push(e));
    es.emit('RecommendationReady', recEvent(`${E}-11`));
    expect(events).toHaveLength(0);
  });
});
