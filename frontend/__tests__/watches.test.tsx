import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { act, cleanup, fireEvent, render, screen, waitFor } from '@testing-library/react';
import { Console } from '../src/components/Console';
import type { Api, Job, Me, RecommendationSet } from '../src/api';
import { ApiError } from '../src/api';
import { createRealtimeClient, type RealtimeClient, type RealtimeRole } from '../src/realtime';
import { connectionView } from '../src/connectionView';
import { WatchNotifier, type NotificationRequest, type NotifierDeps } from '../src/notifications';
import { FakeEventSource, recEvent } from './fakeEventSource';

const WATCHED = '11111111-1111-4111-8111-111111111111';
const OTHER = '11111111-1111-4111-8111-222222222222';
const E = '0badcafe';
const alice: Me = { dispatcherId: 'alice', name: 'Alice', groups: ['region:north'] };

function job(id: string, title: string): Job {
  return {
    id,
    title,
    region: 'north',
    requiredSkills: ['hvac'],
    location: { lat: 59.9, lon: 10.7 },
    windowStart: '2026-01-01T08:00:00Z',
    windowEnd: '2026-01-01T12:00:00Z',
    createdAt: '2026-01-01T07:00:00Z',
  };
}

const emptySet = (jobId: string): RecommendationSet => ({
  recommendationSetId: 'set-1',
  jobId,
  generatedAt: '2026-01-01T09:00:00Z',
  recommendations: [],
});

function fakeApi(watched: string[]) {
  return {
    jobs: vi.fn(async () => [job(WATCHED, 'Boiler repair'), job(OTHER, 'Heat pump service')]),
    recommendations: vi.fn(async (jobId: string) => emptySet(jobId)),
    watches: vi.fn(async () => ({ jobIds: watched })),
    watch: vi.fn(async () => undefined),
    unwatch: vi.fn(async () => undefined),
  };
}

/** A notifier whose browser parts the test sets. */
function notifier(over: Partial<NotifierDeps> = {}) {
  const shown: NotificationRequest[] = [];
  const deps: NotifierDeps = {
    role: () => 'leader',
    permission: () => 'granted',
    anyTabVisible: async () => false,
    show: (request) => shown.push(request),
    ...over,
  };
  return { notifier: new WatchNotifier(deps), shown };
}

let client: RealtimeClient;

beforeEach(() => {
  FakeEventSource.reset();
  client = createRealtimeClient({ EventSource: FakeEventSource, online: null, random: () => 0 });
  client.start();
});

afterEach(() => {
  client.stop();
  cleanup();
  vi.unstubAllGlobals();
});

function renderConsole(api: ReturnType<typeof fakeApi>, n: WatchNotifier) {
  render(
    <Console
      me={alice}
      api={api as unknown as Api}
      client={client}
      connection={connectionView('live', false)}
      notifier={n}
    />,
  );
}

describe('WatchNotifier', () => {
  const request = { title: 't', body: 'b', tag: 'e1', onClick: () => {} };
  const cases: [string, Partial<NotifierDeps>, boolean][] = [
    ['the leader, hidden, permitted', {}, true],
    ['a tab that has the stream to itself', { role: () => 'solo' as RealtimeRole }, true],
    ['a follower (the leader notifies)', { role: () => 'follower' as RealtimeRole }, false],
    ['while a tab is visible', { anyTabVisible: async () => true }, false],
    ['without permission', { permission: () => 'denied' }, false],
    ['before permission was asked', { permission: () => 'default' }, false],
    ['without a Notification API', { permission: () => 'unsupported' }, false],
  ];
  for (const [name, over, expected] of cases) {
    it(`${expected ? 'notifies' : 'does not notify'}: ${name}`, async () => {
      const { notifier: n, shown } = notifier(over);
      expect(await n.notify(request)).toBe(expected);
      expect(shown).toHaveLength(expected ? 1 : 0);
    });
  }
});

describe('watched jobs in the console', () => {
  it('shows the stored stars and toggles one on the server, asking for permission on the first star only', async () => {
    const requestPermission = vi.fn(async () => 'granted');
    vi.stubGlobal('Notification', Object.assign(function () {}, { permission: 'default', requestPermission }));
    const api = fakeApi([WATCHED]);
    renderConsole(api, notifier().notifier);
    await waitFor(() => expect(screen.getByTestId(`job-star-${WATCHED}`).getAttribute('aria-pressed')).toBe('true'));
    const other = screen.getByTestId(`job-star-${OTHER}`);
    expect(other.getAttribute('aria-pressed')).toBe('false');

    fireEvent.click(other);
    expect(other.getAttribute('aria-pressed')).toBe('true');
    await waitFor(() => expect(api.watch).toHaveBeenCalledWith(OTHER));
    expect(requestPermission).toHaveBeenCalledTimes(1);

    fireEvent.click(screen.getByTestId(`job-star-${WATCHED}`));
    await waitFor(() => expect(api.unwatch).toHaveBeenCalledWith(WATCHED));
    expect(screen.getByTestId(`job-star-${WATCHED}`).getAttribute('aria-pressed')).toBe('false');
    expect(requestPermission).toHaveBeenCalledTimes(1);
    expect(screen.queryByTestId(`job-row-${OTHER}`)?.getAttribute('aria-pressed')).toBe('false');
  });

  it('puts a star back as it was, and says why, when the server refuses it', async () => {
    const api = fakeApi([]);
    api.watch.mockRejectedValueOnce(new ApiError(403, 'forbidden', 'not your region'));
    renderConsole(api, notifier().notifier);
    const star = await screen.findByTestId(`job-star-${WATCHED}`);
    fireEvent.click(star);
    await waitFor(() => expect(screen.getByTestId('error').textContent).toContain('not your region'));
    expect(star.getAttribute('aria-pressed')).toBe('false');
  });

  it('notifies once per event of a watched job, titled with the job, and a click opens that job', async () => {
    const api = fakeApi([WATCHED]);
    const { notifier: n, shown } = notifier();
    renderConsole(api, n);
    await waitFor(() => expect(screen.getByTestId(`job-star-${WATCHED}`).getAttribute('aria-pressed')).toBe('true'));
    act(() => FakeEventSource.last.open());

    const first = recEvent(`${E}-1`, { jobId: WATCHED, count: 4 });
    act(() => FakeEventSource.last.emit('RecommendationReady', first));
    act(() => FakeEventSource.last.emit('RecommendationReady', first)); // a repeat is dropped by the client
    act(() => FakeEventSource.last.emit('RecommendationReady', recEvent(`${E}-2`, { jobId: OTHER })));
    await waitFor(() => expect(shown).toHaveLength(1));
    expect(shown[0].tag).toBe(first.eventId);
    expect(shown[0].title).toBe('New recommendations: Boiler repair');
    expect(shown[0].body).toBe('4 contractors recommended, best: Ada');

    act(() => shown[0].onClick());
    await waitFor(() => expect(screen.getByTestId(`job-row-${WATCHED}`).getAttribute('aria-pressed')).toBe('true'));
    expect(api.recommendations).toHaveBeenCalledWith(WATCHED);
  });

  it('does not notify while a tab of the console is visible', async () => {
    const api = fakeApi([WATCHED]);
    const visible = vi.fn(async () => true);
    const { notifier: n, shown } = notifier({ anyTabVisible: visible });
    renderConsole(api, n);
    await waitFor(() => expect(screen.getByTestId(`job-star-${WATCHED}`).getAttribute('aria-pressed')).toBe('true'));
    act(() => FakeEventSource.last.open());
    act(() => FakeEventSource.last.emit('RecommendationReady', recEvent(`${E}-1`, { jobId: WATCHED })));
    await waitFor(() => expect(visible).toHaveBeenCalled());
    expect(shown).toHaveLength(0);
  });
});
