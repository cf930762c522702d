import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { act, cleanup, fireEvent, render, screen, waitFor } from '@testing-library/react';
import type { JobReceipts } from '../src/api';
import { applyHint, covers, HintBuffer, listNames, mergeReceipts, seenBySummary } from '../src/seenBy';
import { Console } from '../src/components/Console';
import { connectionView } from '../src/connectionView';
import { createRealtimeClient, createSharedRealtimeClient, type RealtimeClient, type ReceiptHint } from '../src/realtime';
import { FakeEventSource, recEvent } from './fakeEventSource';
import { FakeChannels, FakeLifecycle, FakeLocks } from './fakeTabs';

const E = '0badcafe';
const JOB = '11111111-1111-4111-8111-111111111111';

function receipts(over: Partial<JobReceipts> = {}, seen: Record<string, string | null> = {}): JobReceipts {
  const people: [string, string][] = [
    ['alice', 'Alice'],
    ['bob', 'Bob'],
    ['carol', 'Carol'],
    ['dana', 'Dana'],
  ];
  const dispatchers = people.map(([dispatcherId, name]) => ({ dispatcherId, name, seenAt: seen[dispatcherId] ?? null }));
  return {
    jobId: JOB,
    recommendationSetId: 'set-1',
    position: `${E}-10`,
    group: 'region:north',
    dispatchers,
    seenCount: dispatchers.filter((d) => d.seenAt).length,
    total: dispatchers.length,
    ...over,
  };
}

const T = '2026-01-01T10:00:05Z';

describe('seen-by logic', () => {
  it('words the line: how many of the group, and who not yet', () => {
    expect(seenBySummary(receipts({}, { alice: T, carol: T, dana: T }))).toBe('Seen by 3 of 4 north dispatchers · Bob not yet');
    expect(seenBySummary(receipts({}, { alice: T }))).toBe('Seen by 1 of 4 north dispatchers · Bob, Carol and Dana not yet');
    expect(seenBySummary(receipts({}, { alice: T, bob: T, carol: T, dana: T }))).toBe('Seen by all 4 north dispatchers');
    expect(seenBySummary(receipts({ dispatchers: [] }))).toBe('No north dispatcher to see it');
    expect(listNames(['A', 'B', 'C', 'D', 'E'])).toBe('A, B, C and 2 others');
    expect(listNames(['A', 'B'])).toBe('A and B');
  });

  it('a hint marks its dispatcher seen when it reaches the set (same epoch, seq >=), once', () => {
    const r = receipts();
    expect(covers(`${E}-10`, `${E}-10`)).toBe(true);
    expect(covers(`${E}-9`, `${E}-10`)).toBe(false);
    expect(covers(`deadbeef-99`, `${E}-10`)).toBe(false);
    expect(applyHint(r, { dispatcherId: 'bob', position: `${E}-9`, seenAt: T })).toBe(r);
    expect(applyHint(r, { dispatcherId: 'bob', position: `deadbeef-50`, seenAt: T })).toBe(r);
    expect(applyHint(r, { dispatcherId: 'zed', position: `${E}-50`, seenAt: T })).toBe(r);
    const seen = applyHint(r, { dispatcherId: 'bob', position: `${E}-10`, seenAt: T });
    expect(seen.dispatchers.find((d) => d.dispatcherId === 'bob')!.seenAt).toBe(T);
    expect(seen.seenCount).toBe(1);
    // First seen stays first seen.
    const again = applyHint(seen, { dispatcherId: 'bob', position: `${E}-12`, seenAt: '2026-01-01T11:00:00Z' });
    expect(again).toBe(seen);
    expect(applyHint(receipts({ position: null }), { dispatcherId: 'bob', position: `${E}-12`, seenAt: T }).seenCount).toBe(0);
  });

  it('a fetch answered late does not undo a hint, and takes in the hints buffered before it', () => {
    const shown = applyHint(receipts(), { dispatcherId: 'bob', position: `${E}-11`, seenAt: T });
    const merged = mergeReceipts(shown, receipts({}, { alice: T }));
    expect(merged.dispatchers.filter((d) => d.seenAt).map((d) => d.dispatcherId)).toEqual(['alice', 'bob']);
    expect(merged.seenCount).toBe(2);
    // A new set: what was seen of the old one does not count.
    const next = mergeReceipts(shown, receipts({ recommendationSetId: 'set-2', position: `${E}-20` }));
    expect(next.seenCount).toBe(0);
    const buffer = new HintBuffer();
    buffer.add({ dispatcherId: 'carol', position: `${E}-25`, seenAt: T });
    buffer.add({ dispatcherId: 'carol', position: `${E}-21`, seenAt: 'later-but-lower' });
    buffer.add({ dispatcherId: 'dana', position: `${E}-19`, seenAt: T });
    const withHints = mergeReceipts(null, receipts({ recommendationSetId: 'set-2', position: `${E}-20` }), buffer.values());
    expect(withHints.dispatchers.filter((d) => d.seenAt).map((d) => [d.dispatcherId, d.seenAt])).toEqual([['carol', T]]);
  });
});

describe('receipt hints in the realtime client', () => {
  beforeEach(() => FakeEventSource.reset());

  it('delivers hints without moving the position or Last-Event-ID, and refuses on("receipt")', () => {
    const client = createRealtimeClient({ EventSource: FakeEventSource, online: null, random: () => 0 });
    const hints: ReceiptHint[] = [];
    client.onReceipt((h) => hints.push(h));
    client.start();
    const es = FakeEventSource.last;
    es.open();
    es.emit('RecommendationReady', recEvent(`${E}-5`));
    es.emit('receipt', { dispatcherId: 'bob', position: `${E}-9`, seenAt: T }, `${E}-5`);
    es.emit('receipt', { stale: true }, `${E}-5`);
    es.emit('receipt', { nonsense: 1 }, '');
    expect(hints).toEqual([{ kind: 'seen', dispatcherId: 'bob', position: `${E}-9`, seenAt: T }, { kind: 'stale' }]);
    expect(client.lastPosition).toBe(`${E}-5`);
    // The next event after the hint's position is still applied.
    const applied: string[] = [];
    client.on('RecommendationReady', (e) => applied.push(e.position));
    es.emit('RecommendationReady', recEvent(`${E}-6`));
    expect(applied).toEqual([`${E}-6`]);
    expect(() => client.on('receipt', () => {})).toThrow();
    client.stop();
  });

  it('the leader relays hints to every tab', async () => {
    vi.useFakeTimers();
    try {
      const locks = new FakeLocks();
      const channels = new FakeChannels();
      const tabs = ['a', 'b', 'c'].map((id) => {
        const sources: FakeEventSource[] = [];
        const client = createSharedRealtimeClient({
          locks: locks.forTab(id),
          openChannel: channels.forTab(id),
          lifecycle: { document: new FakeLifecycle(), window: new FakeLifecycle() },
          random: () => 0.5,
          online: null,
          createConnection: (opts) =>
            createRealtimeClient({
              ...opts,
              EventSource: class extends FakeEventSource {
                constructor(url: string, init?: { withCredentials?: boolean }) {
                  super(url, init);
                  sources.push(this);
                }
              },
            }),
        });
        const hints: ReceiptHint[] = [];
        client.onReceipt((h) => hints.push(h));
        client.start('alice');
        return { client, hints, sources };
      });
      await vi.advanceTimersByTimeAsync(500);
      const leader = tabs.find((t) => t.client.role === 'leader')!;
      const es = leader.sources.at(-1)!;
      es.open();
      es.emit('RecommendationReady', recEvent(`${E}-3`));
      es.emit('receipt', { dispatcherId: 'carol', position: `${E}-40`, seenAt: T }, `${E}-3`);
      await vi.advanceTimersByTimeAsync(10);
      for (const t of tabs) {
        expect(t.hints).toEqual([{ kind: 'seen', dispatcherId: 'carol', position: `${E}-40`, seenAt: T }]);
        expect(t.client.lastPosition).toBe(`${E}-3`);
      }
      tabs.forEach((t) => t.client.stop());
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('Console: reports what it rendered, shows who has seen the set', () => {
  let client: RealtimeClient;
  beforeEach(() => {
    FakeEventSource.reset();
    client = createRealtimeClient({ EventSource: FakeEventSource, online: null, random: () => 0 });
  });
  afterEach(() => {
    client.stop();
    cleanup();
  });

  it('fetches receipts for the open job, updates them from hints, refetches on a new set and on stale', async () => {
    let current = receipts({}, { alice: T });
    let sheetSet = 'set-1';
    let resolveSheet: (() => void) | null = null;
    const api = {
      jobs: vi.fn(async () => [
        {
          id: JOB,
          title: 'Boiler repair',
          region: 'north',
          requiredSkills: [],
          location: { lat: 0, lon: 0 },
          windowStart: '2026-01-01T08:00:00Z',
          windowEnd: '2026-01-01T12:00:00Z',
          createdAt: '2026-01-01T07:00:00Z',
        },
      ]),
      recommendations: vi.fn(async () => {
        if (sheetSet === 'set-2') await new Promise<void>((r) => (resolveSheet = r));
        return { recommendationSetId: sheetSet, jobId: JOB, generatedAt: '2026-01-01T09:00:00Z', recommendations: [] };
      }),
      watches: vi.fn(async () => ({ jobIds: [] })),
      receipts: vi.fn(async () => current),
    };
    const reported: string[] = [];
    const transport = { post: vi.fn(async (position: string) => void reported.push(position)) };
    const me = { dispatcherId: 'alice', name: 'Alice', groups: ['region:north'] };
    render(
      <Console
        me={me}
        api={api as never}
        client={client}
        connection={connectionView('live', false)}
        receiptTransport={transport}
        receiptIntervalMs={0}
      />,
    );
    client.start();
    const es = FakeEventSource.last;
    es.open();
    fireEvent.click(await screen.findByTestId(`job-row-${JOB}`));
    const line = await screen.findByTestId('seen-by');
    expect(line.textContent).toBe('Seen by 1 of 4 north dispatchers · Bob, Carol and Dana not yet');
    const entry = (id: string) => screen.getAllByTestId('seen-by-entry').find((e) => e.getAttribute('data-dispatcher-id') === id)!;
    expect(entry('bob').getAttribute('data-seen-at')).toBe('');
    expect(entry('bob').textContent).toMatch(/not yet/);

    // A hint: bob is seen, live, with no fetch.
    const fetches = api.receipts.mock.calls.length;
    act(() => es.emit('receipt', { dispatcherId: 'bob', position: `${E}-12`, seenAt: T }, ''));
    await waitFor(() => expect(entry('bob').getAttribute('data-seen-at')).toBe(T));
    expect(entry('bob').textContent).toMatch(/seen .*\d\d:\d\d:\d\d/);
    expect(screen.getByTestId('seen-by').textContent).toBe('Seen by 2 of 4 north dispatchers · Carol and Dana not yet');
    expect(api.receipts.mock.calls.length).toBe(fetches);

    // A new set of the job: reported only once the sheet shows it, then receipts fetched again.
    sheetSet = 'set-2';
    current = receipts({ recommendationSetId: 'set-2', position: `${E}-20` });
    act(() => es.emit('RecommendationReady', recEvent(`${E}-20`, { jobId: JOB, recommendationSetId: 'set-2' })));
    await waitFor(() => expect(resolveSheet).not.toBeNull());
    await act(async () => new Promise((r) => setTimeout(r, 20)));
    expect(reported).toEqual([]);
    await act(async () => resolveSheet!());
    await waitFor(() => expect(reported).toEqual([`${E}-20`]));
    expect(screen.getByTestId('sheet').getAttribute('data-set-id')).toBe('set-2');
    await waitFor(() => expect(screen.getByTestId('seen-by').getAttribute('data-seen-count')).toBe('0'));

    // Stale: fetch again.
    current = receipts({ recommendationSetId: 'set-2', position: `${E}-20` }, { dana: T });
    act(() => es.emit('receipt', { stale: true }, ''));
    await waitFor(() => expect(screen.getByTestId('seen-by').getAttribute('data-seen-count')).toBe('1'));
    // The hint never moved the stream position.
    expect(client.lastPosition).toBe(`${E}-20`);
    // A heartbeat's position (everything before it on the page) is reported too; the same one again is not.
    act(() => es.emit('heartbeat', { position: `${E}-25` }, ''));
    await waitFor(() => expect(reported).toEqual([`${E}-20`, `${E}-25`]));
    act(() => es.emit('heartbeat', { position: `${E}-25` }, ''));
    await act(async () => new Promise((r) => setTimeout(r, 20)));
    expect(reported).toEqual([`${E}-20`, `${E}-25`]);
  });
});
