import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  createRealtimeClient,
  createSharedRealtimeClient,
  type RealtimeClient,
  type RecommendationReadyEvent,
  type SharedRealtimeOptions,
} from '../src/realtime';
import { FakeEventSource, recEvent } from './fakeEventSource';
import { FakeChannels, FakeLifecycle, FakeLocks } from './fakeTabs';

const E = 'a1b2c3d4';
const LOCK = 'smartscheduler-realtime';

interface Tab {
  id: string;
  client: RealtimeClient;
  applied: RecommendationReadyEvent[];
  statuses: string[];
  doc: FakeLifecycle;
  win: FakeLifecycle;
  sources: FakeEventSource[];
}

let locks: FakeLocks;
let channels: FakeChannels;
let tabs: Tab[];

/** The EventSources a tab's client created (the test attributes each to the tab that made it). */
let creatingTab: Tab | null = null;

function openTab(id: string, extra: Partial<SharedRealtimeOptions> = {}, scope?: string): Tab {
  const doc = new FakeLifecycle();
  const win = new FakeLifecycle();
  const tab: Tab = { id, client: null as never, applied: [], statuses: [], doc, win, sources: [] };
  const client = createSharedRealtimeClient({
    locks: locks.forTab(id),
    openChannel: channels.forTab(id),
    lifecycle: { document: doc, window: win },
    random: () => 0.5,
    online: null,
    EventSource: FakeEventSource,
    createConnection: (opts) => {
      creatingTab = tab;
      const c = createRealtimeClient({
        ...opts,
        EventSource: class extends FakeEventSource {
          constructor(url: string, init?: { withCredentials?: boolean }) {
            super(url, init);
            tab.sources.push(this);
          }
        },
      });
      creatingTab = null;
      return c;
    },
    ...extra,
  });
  tab.client = client;
  client.on('RecommendationReady', (e) => tab.applied.push(e));
  client.onStatus((s) => tab.statuses.push(s));
  client.start(scope);
  tabs.push(tab);
  return tab;
}

function closeTab(tab: Tab): void {
  // The browser drops the tab: its lock, its channel and its connection go with it.
  locks.closeTab(tab.id);
  channels.closeTab(tab.id);
  tab.sources.forEach((s) => s.close());
  tab.client.stop();
  tabs = tabs.filter((t) => t !== tab);
}

const openSources = () => tabs.flatMap((t) => t.sources).filter((s) => !s.closed);
const leaders = () => tabs.filter((t) => t.client.role === 'leader');

async function settle(ms = 200): Promise<void> {
  await vi.advanceTimersByTimeAsync(ms);
}

/** The one open stream, opened and live. */
async function liveStream(): Promise<FakeEventSource> {
  await settle();
  const open = openSources();
  expect(open).toHaveLength(1);
  open[0].open();
  await settle(10);
  return open[0];
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeEventSource.reset();
  locks = new FakeLocks();
  channels = new FakeChannels();
  tabs = [];
  void creatingTab;
});

afterEach(() => {
  for (const t of [...tabs]) t.client.stop();
  vi.useRealTimers();
});

describe('election', () => {
  it('ten tabs: exactly one leader and one EventSource; every tab applies every event once and shows the same status', async () => {
    for (let i = 0; i < 10; i++) openTab(`t${i}`);
    const es = await liveStream();
    expect(leaders()).toHaveLength(1);
    expect(leaders()[0].id).toBe('t0');
    expect(tabs.filter((t) => t.client.role === 'follower')).toHaveLength(9);
    expect(tabs.map((t) => t.client.status)).toEqual(Array(10).fill('live'));

    es.emit('RecommendationReady', recEvent(`${E}-1`, { eventId: 'e1' }));
    es.emit('RecommendationReady', recEvent(`${E}-2`, { eventId: 'e2' }));
    es.emit('RecommendationReady', recEvent(`${E}-2`, { eventId: 'e2' })); // a repeat
    await settle(10);
    for (const t of tabs) expect(t.applied.map((e) => e.eventId)).toEqual(['e1', 'e2']);
    expect(tabs.map((t) => t.client.lastPosition)).toEqual(Array(10).fill(`${E}-2`));

    es.dropAndRetry();
    await settle(10);
    expect(tabs.map((t) => t.client.status)).toEqual(Array(10).fill('reconnecting'));
  });

  it("the leader's stream delivers an event type only a follower asked for, to that follower", async () => {
    const [leader, follower] = [openTab('a'), openTab('b')];
    const es = await liveStream();
    expect(leader.client.role).toBe('leader');
    const seen: Record<string, string[]> = { a: [], b: [] };
    leader.client.onEvent((e, eventType) => seen.a.push(`${eventType} ${e.eventId}`));
    follower.client.on('JobUpdated', (e) => seen.b.push(`JobUpdated ${e.eventId}`));
    await settle(10);
    es.emit('JobUpdated', { ...recEvent(`${E}-1`, { eventId: 'j1' }), type: 'JobUpdated' });
    await settle(10);
    expect(seen).toEqual({ a: ['JobUpdated j1'], b: ['JobUpdated j1'] });
  });

  it('a tab opened later learns the status and position from the leader at once', async () => {
    openTab('a');
    const es = await liveStream();
    es.emit('heartbeat', { position: `${E}-40` }, `${E}-40`);
    await settle(10);
    const late = openTab('b');
    await settle(10);
    expect(late.client.status).toBe('live');
    expect(late.client.lastPosition).toBe(`${E}-40`);
    expect(openSources()).toHaveLength(1);
  });

  it('tabs signed in as different dispatchers do not share a stream', async () => {
    const a = openTab('a', {}, 'alice');
    const b = openTab('b', {}, 'alice');
    const c = openTab('c', {}, 'bob');
    await settle();
    expect([a, b, c].map((t) => t.client.role)).toEqual(['leader', 'follower', 'leader']);
    expect(openSources()).toHaveLength(2);
    const aliceStream = a.sources[0];
    aliceStream.open();
    aliceStream.emit('RecommendationReady', recEvent(`${E}-1`, { eventId: 'north' }));
    await settle(10);
    expect(b.applied.map((e) => e.eventId)).toEqual(['north']);
    expect(c.applied).toEqual([]);
  });

  it('falls back to a stream per tab without Web Locks or BroadcastChannel', () => {
    const solo = createSharedRealtimeClient({ locks: null, EventSource: FakeEventSource, online: null });
    expect(solo.role).toBe('solo');
    solo.start();
    expect(FakeEventSource.instances).toHaveLength(1);
    solo.stop();
    const noChannel = createSharedRealtimeClient({
      locks: locks.forTab('x'),
      openChannel: null,
      EventSource: FakeEventSource,
      online: null,
    });
    expect(noChannel.role).toBe('solo');
  });
});

describe('hand-over', () => {
  it('the leader tab closes: the next tab leads, resumes from the highest position any tab applied, nothing lost or doubled', async () => {
    const a = openTab('a');
    openTab('b');
    const es = await liveStream();
    expect(a.client.role).toBe('leader');
    es.emit('RecommendationReady', recEvent(`${E}-5`, { eventId: 'e5' }));
    await settle(10);
    // c has applied up to 9, more than the others (it came with that position): the new leader
    // must resume from there.
    const c = openTab('c', { initialPosition: `${E}-9` });
    await settle(10);

    closeTab(a);
    await settle();
    expect(leaders().map((t) => t.id)).toEqual(['b']);
    const next = openSources();
    expect(next).toHaveLength(1);
    expect(next[0].searchParams.get('lastEventId')).toBe(`${E}-9`);
    next[0].open();
    // The server sends what follows 9; a repeat of e5 (at-least-once) is dropped everywhere.
    next[0].emit('RecommendationReady', recEvent(`${E}-5`, { eventId: 'e5' }));
    next[0].emit('RecommendationReady', recEvent(`${E}-10`, { eventId: 'e10' }));
    await settle(10);
    const b = tabs.find((t) => t.id === 'b')!;
    expect(b.applied.map((e) => e.eventId)).toEqual(['e5', 'e10']);
    expect(c.applied.map((e) => e.eventId)).toEqual(['e10']); // c had everything up to 9 already
    expect(tabs.map((t) => t.client.status)).toEqual(['live', 'live']);
  });

  it('a leader about to be frozen hands over, and rejoins as a follower when it resumes', async () => {
    const a = openTab('a');
    const b = openTab('b');
    const es = await liveStream();
    es.emit('RecommendationReady', recEvent(`${E}-3`, { eventId: 'e3' }));
    await settle(10);

    a.doc.fire('freeze');
    expect(es.closed).toBe(true);
    await settle();
    expect(b.client.role).toBe('leader');
    const next = openSources();
    expect(next).toHaveLength(1);
    expect(next[0].searchParams.get('lastEventId')).toBe(`${E}-3`);
    next[0].open();
    await settle(10);

    const resets: string[] = [];
    a.client.onReset((r) => resets.push(r.reason));
    a.doc.fire('resume');
    await settle();
    expect(resets).toEqual(['unknown-position']); // it may have missed relays while frozen: reload
    expect(a.client.role).toBe('follower');
    expect(openSources()).toHaveLength(1);
    next[0].emit('RecommendationReady', recEvent(`${E}-4`, { eventId: 'e4' }));
    await settle(10);
    expect(a.applied.map((e) => e.eventId)).toEqual(['e3', 'e4']);
    expect(a.client.status).toBe('live');
  });

  it('a leader that goes silent (hung) has its lock stolen by a follower, and steps down when it wakes', async () => {
    const a = openTab('a', { leaderSilenceMs: 30_000 });
    const b = openTab('b', { leaderSilenceMs: 30_000 });
    const es = await liveStream();
    channels.muted.add('a'); // a's messages no longer reach anyone
    // Still within the silence window (30 s + jitter 2.5 s): b waits.
    await settle(30_000);
    expect(b.client.role).toBe('follower');
    await settle(15_000);
    expect(b.client.role).toBe('leader');
    expect(locks.holder(LOCK)).toBe('b');
    // a learned that its lock was taken: it closed its stream and waits as a follower.
    expect(a.client.role).toBe('follower');
    expect(es.closed).toBe(true);
    expect(openSources()).toHaveLength(1);
  });
});

describe('shared status', () => {
  it('auth-expired reaches every tab; resume() from a follower restarts the leader from its position', async () => {
    const a = openTab('a');
    const b = openTab('b');
    const es = await liveStream();
    es.emit('RecommendationReady', recEvent(`${E}-8`, { eventId: 'e8' }));
    let expired = 0;
    b.client.onAuthExpired(() => (expired += 1));
    es.emit('auth-expired', {});
    await settle(10);
    expect(expired).toBe(1);
    expect(b.client.authExpired).toBe(true);
    expect([a.client.status, b.client.status]).toEqual(['offline', 'offline']);

    b.client.resume();
    await settle(10);
    const next = openSources();
    expect(next).toHaveLength(1);
    expect(next[0].searchParams.get('lastEventId')).toBe(`${E}-8`);
    next[0].open();
    await settle(10);
    expect([a.client.status, b.client.status]).toEqual(['live', 'live']);
  });
});
