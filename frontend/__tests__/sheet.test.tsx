import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { act, cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { App } from '../src/App';
import { RecommendationsSheet } from '../src/components/RecommendationsSheet';
import { ApiError, type Api, type Job, type Me, type RecommendationSet } from '../src/api';
import { createRealtimeClient, type RealtimeClient } from '../src/realtime';
import { FakeEventSource, recEvent } from './fakeEventSource';
import { connectionView } from '../src/connectionView';

const NORTH_JOB = '11111111-1111-4111-8111-111111111111';
const OTHER_JOB = '11111111-1111-4111-8111-222222222222';
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

function set(id: string, names: string[]): RecommendationSet {
  return {
    recommendationSetId: id,
    jobId: NORTH_JOB,
    generatedAt: '2026-01-01T09:00:00Z',
    recommendations: names.map((name, i) => ({
      rank: i + 1,
      contractorId: `c-${name}`,
      name,
      score: 0.9 - i * 0.1234,
      distanceKm: 3.14159 + i,
      etaMinutes: 10 + i,
      matchedSkills: ['hvac'],
    })),
  };
}

function fakeApi(overrides: Partial<Api> = {}): Api & { [K in keyof Api]: ReturnType<typeof vi.fn> } {
  return {
    me: vi.fn(async () => alice),
    devDispatchers: vi.fn(async () => [alice, { dispatcherId: 'bob', name: 'Bob', groups: ['region:south'] }]),
    devSignIn: vi.fn(async () => alice),
    signIn: vi.fn(async () => alice),
    signOut: vi.fn(async () => undefined),
    jobs: vi.fn(async () => [job(NORTH_JOB, 'Boiler repair'), job(OTHER_JOB, 'Heat pump service')]),
    recommendations: vi.fn(async () => set('set-1', ['Ada', 'Grace'])),
    generate: vi.fn(async () => set('set-gen', ['Linus'])),
    streamRefusal: vi.fn(async () => null),
    watches: vi.fn(async () => ({ jobIds: [] })),
    watch: vi.fn(async () => undefined),
    unwatch: vi.fn(async () => undefined),
    ...overrides,
  } as never;
}

let client: RealtimeClient;

beforeEach(() => {
  FakeEventSource.reset();
  client = createRealtimeClient({ EventSource: FakeEventSource, online: null, random: () => 0 });
});

afterEach(() => {
  client.stop();
  cleanup();
});

async function openSheet(api: Api) {
  render(<App api={api} client={client} />);
  fireEvent.click(await screen.findByTestId(`job-row-${NORTH_JOB}`));
  await screen.findAllByTestId('sheet-row');
}

describe('RecommendationsSheet', () => {
  it('renders one row per recommendation with score to 2 decimals', () => {
    render(
      <RecommendationsSheet
        job={job(NORTH_JOB, 'Boiler repair')}
        state={{ kind: 'loaded', set: set('s', ['Ada', 'Grace']) }}
        updatedAt={null}
        flashKey={0}
        generating={false}
        generateError={null}
        connection={connectionView('live', false)}
        onGenerate={() => {}}
      />,
    );
    const rows = screen.getAllByTestId('sheet-row');
    expect(rows).toHaveLength(2);
    const cells = within(rows[1]).getAllByRole('cell').map((c) => c.textContent);
    expect(cells).toEqual(['2', 'Grace', '0.78', '11', '4.1', 'hvac']);
    expect(screen.queryByTestId('sheet-updated')).toBeNull();
  });

  it('shows "No recommendations yet" for a job without a set', () => {
    render(
      <RecommendationsSheet
        job={job(NORTH_JOB, 'Boiler repair')}
        state={{ kind: 'none' }}
        updatedAt={null}
        flashKey={0}
        generating={false}
        generateError={null}
        connection={connectionView('live', false)}
        onGenerate={() => {}}
      />,
    );
    expect(screen.getByTestId('sheet-empty').textContent).toBe('No recommendations yet');
  });
});

describe('small things a dispatcher noticed', () => {
  it('lists jobs by time window, not by creation, and every time names its zone', async () => {
    const early = { ...job(OTHER_JOB, 'Early job'), windowStart: '2026-01-01T06:00:00Z', windowEnd: '2026-01-01T07:00:00Z' };
    const late = { ...job(NORTH_JOB, 'Late job'), windowStart: '2026-01-02T06:00:00Z', windowEnd: '2026-01-02T07:00:00Z' };
    const api = fakeApi({ jobs: vi.fn(async () => [late, early]) });
    render(<App api={api} client={client} />);
    await screen.findByTestId(`job-row-${NORTH_JOB}`);
    const rows = screen.getAllByTestId(/^job-row-/).map((r) => r.getAttribute('data-testid'));
    expect(rows).toEqual([`job-row-${OTHER_JOB}`, `job-row-${NORTH_JOB}`]);
    const zone = new Intl.DateTimeFormat(undefined, { timeZoneName: 'short' })
      .formatToParts(new Date('2026-01-01T06:00:00Z'))
      .find((p) => p.type === 'timeZoneName')!.value;
    expect(screen.getByTestId(`job-row-${OTHER_JOB}`).textContent).toContain(zone);
    fireEvent.click(screen.getByTestId(`job-row-${NORTH_JOB}`));
    expect((await screen.findByTestId('sheet-generated')).textContent).toContain(zone);
  });

  it('explains what the score is made of', () => {
    render(
      <RecommendationsSheet
        job={job(NORTH_JOB, 'Boiler repair')}
        state={{ kind: 'loaded', set: set('s', ['Ada']) }}
        updatedAt={null}
        flashKey={0}
        generating={false}
        generateError={null}
        connection={connectionView('live', false)}
        onGenerate={() => {}}
      />,
    );
    const text = screen.getByTestId('score-explain').textContent ?? '';
    for (const part of ['45% proximity', '20% skill fit', '20% rating', '15% free capacity']) expect(text).toContain(part);
    // Ada: 3.14 km -> 0.45 / (1 + 3.14159 / 15) = 0.372; the rest of 0.90 is 0.528.
    expect(screen.getByTestId('score-explain-best').textContent).toBe(
      'Ada: 0.37 from proximity (3.1 km) + 0.53 from skill fit, rating and free capacity = 0.90.',
    );
  });

  it('shows why each contractor ranks where they do: the four parts of its score', async () => {
    // As the server sends it: 0.45 × 0.9231 + 0.20 × 1 + 0.20 × 0.8 + 0.15 × 0.5 = 0.8504.
    const withParts: RecommendationSet = {
      ...set('s-parts', ['Ada', 'Grace']),
      algorithm: 'weighted-v1',
      scoreWeights: { proximity: 0.45, skills: 0.2, rating: 0.2, capacity: 0.15 },
    };
    withParts.recommendations[0] = {
      ...withParts.recommendations[0],
      score: 0.8504,
      scoreParts: { proximity: 0.9231, skills: 1, rating: 0.8, capacity: 0.5 },
    };
    withParts.recommendations[1] = {
      ...withParts.recommendations[1],
      score: 0.5,
      scoreParts: { proximity: 0.4, skills: 0.5, rating: 0.6, capacity: 0.6 },
    };
    const api = fakeApi({ recommendations: vi.fn(async () => withParts) });
    await openSheet(api);
    const [ada, grace] = screen.getAllByTestId('sheet-row');
    const shown = (row: HTMLElement) =>
      within(row)
        .getAllByTestId('score-part')
        .map((li) => li.textContent);
    expect(shown(ada)).toEqual(['proximity 0.92', 'skills 1.00', 'rating 0.80', 'capacity 0.50']);
    expect(shown(grace)).toEqual(['proximity 0.40', 'skills 0.50', 'rating 0.60', 'capacity 0.60']);
    // Each bar is as long as its part; its title names the part's weight.
    const bars = within(ada)
      .getAllByTestId('score-part')
      .map((li) => (li.querySelector('.score-part__bar > span') as HTMLElement).style.width);
    expect(bars).toEqual(['92%', '100%', '80%', '50%']);
    expect(within(ada).getAllByTestId('score-part')[0].title).toBe('proximity: 0.92 of 1, weighs 45% of the score');
    expect(within(ada).getByTestId('sheet-score').title).toBe(
      '0.45 × 0.92 proximity + 0.20 × 1.00 skills + 0.20 × 0.80 rating + 0.15 × 0.50 capacity = 0.85',
    );
    expect(screen.getByTestId('score-explain-best').textContent).toBe(
      'Ada: 0.45 × 0.92 proximity + 0.20 × 1.00 skills + 0.20 × 0.80 rating + 0.15 × 0.50 capacity = 0.85.',
    );
  });

  it('shows a set stored before the server kept score parts with its scores alone, and no error', async () => {
    // As the server sends an old set: the key is there, null.
    const old = set('s-old', ['Ada', 'Grace']);
    old.algorithm = 'weighted-v1';
    old.scoreWeights = { proximity: 0.45, skills: 0.2, rating: 0.2, capacity: 0.15 };
    old.recommendations = old.recommendations.map((r) => ({ ...r, scoreParts: null }));
    const api = fakeApi({ recommendations: vi.fn(async () => old) });
    await openSheet(api);
    const rows = screen.getAllByTestId('sheet-row');
    expect(rows).toHaveLength(2);
    expect(screen.queryAllByTestId('score-parts')).toHaveLength(0);
    expect(rows.map((r) => within(r).getByTestId('sheet-score').textContent)).toEqual(['0.90', '0.78']);
    expect(within(rows[0]).getByTestId('sheet-score').title).toBe(
      '0.37 proximity (3.1 km) + 0.53 skill fit, rating and free capacity',
    );
    expect(screen.queryByRole('alert')).toBeNull();
    // A generation then brings parts, and the sheet shows them.
    api.generate.mockResolvedValueOnce({
      ...old,
      recommendationSetId: 's-new',
      recommendations: [{ ...old.recommendations[0], scoreParts: { proximity: 1, skills: 1, rating: 1, capacity: 0 } }],
    });
    fireEvent.click(screen.getByTestId('generate'));
    await waitFor(() => expect(screen.getAllByTestId('score-parts')).toHaveLength(1));
  });
});

describe('console', () => {
  it('signs in through the dev picker when /api/me is 401', async () => {
    const api = fakeApi({ me: vi.fn(async () => Promise.reject(new ApiError(401, 'unauthorized', 'no session'))) });
    render(<App api={api} client={client} />);
    await screen.findByTestId('signin');
    expect(FakeEventSource.instances).toHaveLength(0); // no stream before sign-in
    fireEvent.click(await screen.findByTestId('signin-alice'));
    expect(await screen.findByTestId('whoami')).toHaveProperty('textContent', 'Alice (alice)');
    expect(screen.getByTestId('groups').textContent).toBe('region:north');
    expect(api.devSignIn).toHaveBeenCalledWith('alice');
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(screen.getByTestId('connection-status').textContent).toBe('reconnecting');
    act(() => FakeEventSource.last.open());
    expect(screen.getByTestId('connection-status').textContent).toBe('live');
  });

  it('shows "No recommendations yet" on 404 and the API error message on failure', async () => {
    const api = fakeApi({
      recommendations: vi.fn(async () => Promise.reject(new ApiError(404, 'not_found', 'no set'))),
      generate: vi.fn(async () => Promise.reject(new ApiError(403, 'forbidden', 'Not your region'))),
    });
    render(<App api={api} client={client} />);
    fireEvent.click(await screen.findByTestId(`job-row-${NORTH_JOB}`));
    expect((await screen.findByTestId('sheet-empty')).textContent).toBe('No recommendations yet');
    fireEvent.click(screen.getByTestId('generate'));
    expect((await screen.findByTestId('error')).textContent).toBe('Not your region');
  });

  it('refetches the open sheet on a RecommendationReady for it and shows the updated cue', async () => {
    const api = fakeApi();
    await openSheet(api);
    act(() => FakeEventSource.last.open());
    expect(screen.getAllByTestId('sheet-row')).toHaveLength(2);
    expect(screen.queryByTestId('sheet-updated')).toBeNull();

    api.recommendations.mockResolvedValueOnce(set('set-2', ['Ada', 'Grace', 'Margaret']));
    act(() =>
      FakeEventSource.last.emit('RecommendationReady', recEvent(`${E}-1`, { jobId: NORTH_JOB, recommendationSetId: 'set-2' })),
    );
    await waitFor(() => expect(screen.getAllByTestId('sheet-row')).toHaveLength(3));
    expect(screen.getByTestId('sheet-updated').textContent).toBe('Updated just now');
    expect(screen.getByTestId('sheet').getAttribute('data-set-id')).toBe('set-2');
    expect(screen.getByTestId('sheet').className).toContain('sheet--flash');
    expect(api.recommendations).toHaveBeenCalledTimes(2);
    // no badge for the selected job
    expect(screen.queryByTestId(`job-badge-${NORTH_JOB}`)).toBeNull();
  });

  it('a duplicate event does not refetch again', async () => {
    const api = fakeApi();
    await openSheet(api);
    const ev = recEvent(`${E}-7`, { jobId: NORTH_JOB, recommendationSetId: 'set-3' });
    api.recommendations.mockResolvedValueOnce(set('set-3', ['Ada']));
    act(() => FakeEventSource.last.emit('RecommendationReady', ev));
    await waitFor(() => expect(screen.getAllByTestId('sheet-row')).toHaveLength(1));
    act(() => FakeEventSource.last.emit('RecommendationReady', ev));
    await act(async () => {
      await Promise.resolve();
    });
    expect(api.recommendations).toHaveBeenCalledTimes(2);
  });

  it('counts events for other jobs on their row badge, cleared when selected', async () => {
    const api = fakeApi();
    await openSheet(api);
    const es = FakeEventSource.last;
    act(() => es.emit('RecommendationReady', recEvent(`${E}-1`, { jobId: OTHER_JOB })));
    expect((await screen.findByTestId(`job-badge-${OTHER_JOB}`)).textContent).toBe('new');
    act(() => es.emit('RecommendationReady', recEvent(`${E}-2`, { jobId: OTHER_JOB })));
    await waitFor(() => expect(screen.getByTestId(`job-badge-${OTHER_JOB}`).textContent).toBe('2 new'));
    expect(screen.queryByTestId('sheet-updated')).toBeNull(); // the open sheet is untouched
    expect(api.recommendations).toHaveBeenCalledTimes(1);

    fireEvent.click(screen.getByTestId(`job-row-${OTHER_JOB}`));
    await waitFor(() => expect(screen.queryByTestId(`job-badge-${OTHER_JOB}`)).toBeNull());
  });

  it('reloads jobs and the sheet over REST on reset', async () => {
    const api = fakeApi();
    await openSheet(api);
    act(() => FakeEventSource.last.emit('reset', { reason: 'expired', position: `${E}-99` }));
    await waitFor(() => expect(api.jobs).toHaveBeenCalledTimes(2));
    await waitFor(() => expect(api.recommendations).toHaveBeenCalledTimes(2));
  });

  it('returns to sign-in with a notice on auth-expired, and resumes after signing in', async () => {
    const api = fakeApi();
    await openSheet(api);
    const es = FakeEventSource.last;
    act(() => es.open());
    act(() => es.emit('RecommendationReady', recEvent(`${E}-5`, { jobId: OTHER_JOB })));
    act(() => es.emit('auth-expired', {}));
    expect((await screen.findByTestId('signin-notice')).textContent).toBe('Session expired, sign in again');
    expect(es.closed).toBe(true);
    fireEvent.click(await screen.findByTestId('signin-alice'));
    await screen.findByTestId('whoami');
    await waitFor(() => expect(FakeEventSource.instances).toHaveLength(2));
    expect(FakeEventSource.last.searchParams.get('lastEventId')).toBe(`${E}-5`);
  });

  it('access-revoked names the group lost, stops reconnecting when none is left, and is not a session expiry', async () => {
    const carol: Me = { dispatcherId: 'carol', name: 'Carol', groups: ['region:north', 'region:south'] };
    const api = fakeApi({ me: vi.fn(async () => carol) });
    await openSheet(api);
    const es = FakeEventSource.last;
    act(() => es.open());
    api.me.mockResolvedValue({ ...carol, groups: [] });
    act(() => es.emit('access-revoked', { reason: 'no_groups', position: `${E}-7` }));
    expect((await screen.findByTestId('access-revoked')).textContent).toBe(
      'You no longer belong to North and South. Ask an administrator to add you to a group, then reload.',
    );
    expect(es.closed).toBe(true);
    expect(screen.queryByTestId('signin-notice')).toBeNull();
    expect(screen.getByTestId('connection-status').textContent).toBe('offline');
    expect(FakeEventSource.instances).toHaveLength(1); // no reconnect loop
  });

  it('access-revoked with a group left says which was lost and reconnects from the position', async () => {
    const carol: Me = { dispatcherId: 'carol', name: 'Carol', groups: ['region:north', 'region:south'] };
    const api = fakeApi({ me: vi.fn(async () => carol) });
    await openSheet(api);
    act(() => FakeEventSource.last.open());
    api.me.mockResolvedValue({ ...carol, groups: ['region:north'] });
    act(() => FakeEventSource.last.emit('access-revoked', { reason: 'no_groups', position: `${E}-9` }));
    expect((await screen.findByTestId('access-revoked')).textContent).toBe('You no longer belong to South.');
    await waitFor(() => expect(FakeEventSource.instances).toHaveLength(2));
    expect(FakeEventSource.last.searchParams.get('lastEventId')).toBe(`${E}-9`);
  });

  it('access-revoked for a disabled dispatcher or a revoked token returns to sign-in and says why', async () => {
    for (const [error, text] of [
      [new ApiError(403, 'dispatcher_disabled', 'disabled'), 'Your access was disabled by an administrator.'],
      [new ApiError(401, 'token_revoked', 'revoked'), 'Your sign-in was withdrawn: sign in again.'],
    ] as const) {
      FakeEventSource.reset();
      const api = fakeApi();
      await openSheet(api);
      act(() => FakeEventSource.last.open());
      api.me.mockRejectedValue(error);
      act(() => FakeEventSource.last.emit('access-revoked', { reason: 'disabled', position: `${E}-3` }));
      expect((await screen.findByTestId('signin-notice')).textContent).toBe(text);
      cleanup();
    }
  });

  it('polls the open sheet over REST while the stream is down for long', async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    try {
      const api = fakeApi();
      await openSheet(api);
      const es = FakeEventSource.last;
      act(() => es.open());
      act(() => es.dropAndRetry());
      expect(screen.getByTestId('connection-status').textContent).toBe('reconnecting');
      await act(async () => {
        await vi.advanceTimersByTimeAsync(10_000);
      });
      expect(screen.getByTestId('connection-notice').textContent).toMatch(/refreshed every 5 s/);
      expect(screen.getByTestId('connection-label').textContent).toMatch(/refreshing every 5 s/);
      expect(api.recommendations).toHaveBeenCalledTimes(2);
      await act(async () => {
        await vi.advanceTimersByTimeAsync(5_000);
      });
      expect(api.recommendations).toHaveBeenCalledTimes(3);
      act(() => es.open());
      await act(async () => {
        await vi.advanceTimersByTimeAsync(20_000);
      });
      expect(api.recommendations).toHaveBeenCalledTimes(3);
      expect(screen.queryByTestId('connection-notice')).toBeNull();
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('one connection status', () => {
  it('badge, header label, sheet notice and the Updated colour agree, and an offline blip returns to live without an event', async () => {
    const net = { online: true, subs: new Set<(o: boolean) => void>() };
    client.stop();
    client = createRealtimeClient({
      EventSource: FakeEventSource,
      random: () => 0,
      online: { isOnline: () => net.online, subscribe: (cb) => (net.subs.add(cb), () => net.subs.delete(cb)) },
    });
    const setOnline = (v: boolean) => {
      net.online = v;
      net.subs.forEach((cb) => cb(v));
    };
    const api = fakeApi();
    await openSheet(api);
    const es = FakeEventSource.last;
    act(() => es.open());
    api.recommendations.mockResolvedValueOnce(set('set-2', ['Ada']));
    act(() => es.emit('RecommendationReady', recEvent(`${E}-1`, { jobId: NORTH_JOB, recommendationSetId: 'set-2' })));
    await waitFor(() => expect(screen.getByTestId('sheet').getAttribute('data-set-id')).toBe('set-2'));
    const look = () => ({
      status: screen.getByTestId('connection-status').textContent,
      label: screen.getByTestId('connection-label').textContent,
      notice: screen.queryByTestId('connection-notice')?.textContent ?? null,
      freshness: screen.getByTestId('sheet-updated').getAttribute('data-freshness'),
    });
    expect(look()).toEqual({ status: 'live', label: 'Live updates on', notice: null, freshness: 'live' });

    act(() => setOnline(false));
    expect(look()).toEqual({
      status: 'offline',
      label: 'Offline — updates paused',
      notice: 'Offline: updates are paused until the connection is back.',
      freshness: 'paused',
    });
    // The stream stayed open through the blip: live again at once, no event needed.
    act(() => setOnline(true));
    expect(look()).toEqual({ status: 'live', label: 'Live updates on', notice: null, freshness: 'live' });
    expect(FakeEventSource.instances).toHaveLength(1);
  });
});

describe('refused stream', () => {
  it('asks for a new sign-in when the stream is refused and the session is gone', async () => {
    const api = fakeApi();
    await openSheet(api);
    const es = FakeEventSource.last;
    act(() => es.open());
    act(() => es.emit('RecommendationReady', recEvent(`${E}-3`, { jobId: OTHER_JOB })));
    api.me.mockRejectedValueOnce(new ApiError(401, 'unauthorized', 'token expired'));
    act(() => es.failForGood());
    expect((await screen.findByTestId('signin-notice')).textContent).toBe('Session expired, sign in again');
    vi.useFakeTimers({ shouldAdvanceTime: true });
    try {
      await act(async () => {
        await vi.advanceTimersByTimeAsync(120_000); // far past any backoff
      });
    } finally {
      vi.useRealTimers();
    }
    expect(FakeEventSource.instances).toHaveLength(1); // stopped: no retry with a dead session
    fireEvent.click(await screen.findByTestId('signin-alice'));
    await screen.findByTestId('whoami');
    await waitFor(() => expect(FakeEventSource.instances).toHaveLength(2));
    expect(FakeEventSource.last.searchParams.get('lastEventId')).toBe(`${E}-3`);
  });

  it('says so on the page when the dispatcher has too many streams open, until the stream is live', async () => {
    const message = 'you have 32 event streams open on this server, the most one dispatcher may; close other tabs or devices';
    const api = fakeApi({ streamRefusal: vi.fn(async () => new ApiError(429, 'too_many_streams', message)) });
    await openSheet(api);
    act(() => FakeEventSource.last.failForGood());
    expect((await screen.findByTestId('stream-refused')).textContent).toContain('close other tabs or devices');
    await waitFor(() => expect(FakeEventSource.instances).toHaveLength(2), { timeout: 2000 });
    act(() => FakeEventSource.last.open());
    await waitFor(() => expect(screen.queryByTestId('stream-refused')).toBeNull());
  });

  it('keeps retrying when the session is still valid', async () => {
    const api = fakeApi();
    await openSheet(api);
    act(() => FakeEventSource.last.failForGood());
    await waitFor(() => expect(FakeEventSource.instances).toHaveLength(2), { timeout: 2000 });
    expect(screen.queryByTestId('signin')).toBeNull();
  });
});
