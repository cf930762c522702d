import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import { ApiError, type Api, type Job, type JobReceipts, type Me } from '../api';
import type { RealtimeClient, RecommendationReadyEvent } from '../realtime';
import { POLL_MS, type ConnectionView } from '../connectionView';
import { usePollWhileDegraded, useRealtimeEvents, useStreamEvent } from '../useRealtime';
import { JobList } from './JobList';
import { askPermissionOnce, browserNotifierDeps, holdVisibleLockWhileVisible, WatchNotifier } from '../notifications';
import { RecommendationsSheet, type SheetState } from './RecommendationsSheet';
import { AppliedTracker, browserReceiptTransport, ReceiptReporter, type ReceiptTransport } from '../receipts';
import { applyHint, HintBuffer, mergeReceipts } from '../seenBy';

interface Props {
  me: Me;
  api: Api;
  client: RealtimeClient;
  /** The page's view of the connection (derived once, in App). */
  connection: ConnectionView;
  /** Desktop notifications for watched jobs (tests inject one; by default the browser's). */
  notifier?: WatchNotifier;
  /** How this tab reports what it applied (delivery receipts; tests inject one). Default: the API + beacon. */
  receiptTransport?: ReceiptTransport;
  /** Minimum time between two receipt reports (ms). Default 5000. */
  receiptIntervalMs?: number;
}

function message(err: unknown): string {
  return err instanceof ApiError ? err.message : String(err);
}

/** Jobs list + recommendations sheet, kept current by the realtime client. */
export function Console({ me, api, client, connection, notifier: injected, receiptTransport, receiptIntervalMs }: Props) {
  const regions = me.groups.filter((g) => g.startsWith('region:')).map((g) => g.slice(7));
  const [region, setRegion] = useState<string>('');
  const [jobs, setJobs] = useState<Job[] | null>(null);
  const [jobsError, setJobsError] = useState<string | null>(null);
  const [selectedJobId, setSelectedJobId] = useState<string | null>(null);
  const [badges, setBadges] = useState<Record<string, number>>({});
  const [sheet, setSheet] = useState<SheetState>({ kind: 'loading' });
  const [updatedAt, setUpdatedAt] = useState<number | null>(null);
  const [flashKey, setFlashKey] = useState(0);
  const [generating, setGenerating] = useState(false);
  const [generateError, setGenerateError] = useState<string | null>(null);
  const [watched, setWatched] = useState<ReadonlySet<string>>(new Set());
  const [receipts, setReceipts] = useState<JobReceipts | null>(null);
  /** How far this page has rendered the stream (see receipts.ts): set after the render of what it applied. */
  const [appliedThrough, setAppliedThrough] = useState<string | null>(null);
  const [tracker] = useState(() => new AppliedTracker());
  const [hints] = useState(() => new HintBuffer());
  const reporterRef = useRef<ReceiptReporter | null>(null);
  const receiptsAsked = useRef(0);
  const receiptsShown = useRef(0);
  const notifier = useMemo(() => injected ?? new WatchNotifier(browserNotifierDeps(() => client.role)), [injected, client]);

  const selectedRef = useRef<string | null>(null);
  selectedRef.current = selectedJobId;
  const jobsRef = useRef<Job[] | null>(null);
  jobsRef.current = jobs;
  const watchedRef = useRef(watched);
  watchedRef.current = watched;
  const shownSetRef = useRef<string | null>(null);
  shownSetRef.current = sheet.kind === 'loaded' ? sheet.set.recommendationSetId : null;

  const loadJobs = useCallback(async () => {
    try {
      const list = await api.jobs(region || undefined);
      setJobs(list);
      setJobsError(null);
    } catch (err) {
      setJobsError(message(err));
    }
  }, [api, region]);

  useEffect(() => {
    void loadJobs();
  }, [loadJobs]);

  const loadWatches = useCallback(async () => {
    try {
      setWatched(new Set((await api.watches()).jobIds));
    } catch {
      /* the stars are a convenience: the list works without them, and the next reset reloads them */
    }
  }, [api]);

  useEffect(() => {
    void loadWatches();
  }, [loadWatches]);

  // Other tabs ask whether any console tab is visible before they notify (see notifications.ts).
  useEffect(() => holdVisibleLockWhileVisible(), []);

  // Delivery receipts: this tab reports how far it has applied the stream, throttled (see receipts.ts).
  useEffect(() => {
    const reporter = new ReceiptReporter({
      transport: receiptTransport ?? browserReceiptTransport(api),
      intervalMs: receiptIntervalMs,
    });
    reporterRef.current = reporter;
    if (tracker.position) reporter.applied(tracker.position);
    return () => {
      reporter.dispose();
      if (reporterRef.current === reporter) reporterRef.current = null;
    };
  }, [api, receiptTransport, receiptIntervalMs, tracker]);

  // An effect runs after the commit: the page already shows everything through `appliedThrough`.
  useEffect(() => {
    if (appliedThrough) reporterRef.current?.applied(appliedThrough);
  }, [appliedThrough]);

  /** An event (or reset) begun with `tracker.begin` is on the page now. */
  function finishApplied(finish: () => string | null) {
    const through = finish();
    if (through) setAppliedThrough(through);
  }

  /** (Re)load who has seen the job's latest set; an answer overtaken by a later one is dropped. */
  const loadReceipts = useCallback(
    async (jobId: string) => {
      const ask = ++receiptsAsked.current;
      try {
        const fetched = await api.receipts(jobId);
        if (selectedRef.current !== jobId || ask < receiptsShown.current) return;
        receiptsShown.current = ask;
        setReceipts((prev) => mergeReceipts(prev && prev.jobId === jobId ? prev : null, fetched, hints.values()));
      } catch {
        /* a convenience: the sheet works without it, and the next set, reopen or stale hint fetches again */
      }
    },
    [api, hints],
  );

  async function toggleWatch(jobId: string) {
    const on = !watchedRef.current.has(jobId);
    const flip = (set: ReadonlySet<string>, add: boolean) => {
      const next = new Set(set);
      if (add) next.add(jobId);
      else next.delete(jobId);
      return next;
    };
    setWatched((w) => flip(w, on));
    // Asked only here, from the click that sets a star: a page may not ask unprompted.
    if (on) void askPermissionOnce();
    try {
      await (on ? api.watch(jobId) : api.unwatch(jobId));
    } catch (err) {
      setWatched((w) => flip(w, !on));
      setJobsError(`Could not ${on ? 'watch' : 'stop watching'} the job: ${message(err)}`);
    }
  }

  function notifyIfWatched(ev: RecommendationReadyEvent) {
    if (!watchedRef.current.has(ev.jobId)) return;
    const title = jobsRef.current?.find((j) => j.id === ev.jobId)?.title ?? 'a watched job';
    const best = ev.summary.top[0];
    const count = ev.summary.count;
    const body =
      count === 0
        ? 'No contractor is available.'
        : `${count} contractor${count === 1 ? '' : 's'} recommended${best ? `, best: ${best.name}` : ''}`;
    void notifier.notify({
      title: `New recommendations: ${title}`,
      body,
      tag: ev.eventId,
      onClick: () => select(ev.jobId),
    });
  }

  /** (Re)load the sheet of `jobId`; ignores the answer if another job was selected meanwhile. */
  const loadSheet = useCallback(
    async (jobId: string, opts: { quiet?: boolean } = {}): Promise<boolean> => {
      if (!opts.quiet) setSheet({ kind: 'loading' });
      try {
        const set = await api.recommendations(jobId);
        if (selectedRef.current !== jobId) return false;
        setSheet({ kind: 'loaded', set });
        return true;
      } catch (err) {
        if (selectedRef.current !== jobId) return false;
        if (err instanceof ApiError && err.status === 404) setSheet({ kind: 'none' });
        else if (!opts.quiet) setSheet({ kind: 'error', message: message(err) });
        return false;
      }
    },
    [api],
  );

  function select(jobId: string) {
    setSelectedJobId(jobId);
    selectedRef.current = jobId;
    setUpdatedAt(null);
    setFlashKey(0);
    setGenerateError(null);
    setBadges(({ [jobId]: _seen, ...rest }) => rest);
    setReceipts(null);
    void loadSheet(jobId);
    void loadReceipts(jobId);
  }

  async function generate() {
    const jobId = selectedJobId;
    if (!jobId) return;
    setGenerating(true);
    setGenerateError(null);
    try {
      const set = await api.generate(jobId);
      if (selectedRef.current === jobId) setSheet({ kind: 'loaded', set });
    } catch (err) {
      setGenerateError(message(err));
    } finally {
      setGenerating(false);
    }
  }

  function markUpdated() {
    setUpdatedAt(Date.now());
    setFlashKey((k) => k + 1);
  }

  async function onRecommendationReady(ev: RecommendationReadyEvent) {
    const jobId = ev.jobId;
    notifyIfWatched(ev);
    if (jobId === selectedRef.current) {
      if (ev.summary.recommendationSetId !== shownSetRef.current) {
        await loadSheet(jobId, { quiet: true });
      }
      if (selectedRef.current === jobId) {
        markUpdated();
        // A new set: who has seen it starts over.
        void loadReceipts(jobId);
      }
      return;
    }
    setBadges((b) => ({ ...b, [jobId]: (b[jobId] ?? 0) + 1 }));
    if (jobsRef.current && !jobsRef.current.some((j) => j.id === jobId)) await loadJobs();
  }

  useStreamEvent(client, 'RecommendationReady', (ev) => {
    // Begun in arrival order, finished once the page shows it (the sheet may first reload over REST).
    const finish = tracker.begin(ev.position);
    void onRecommendationReady(ev).finally(() => finishApplied(finish));
  });
  // A heartbeat's position is one the client has every event of its groups up to: applied once whatever
  // came before it is on the page (after an `unknown-position` reset, the reload plus the stream since).
  useEffect(
    () =>
      client.onHeartbeat((position) => {
        if (position) finishApplied(tracker.begin(position));
      }),
    [client, tracker],
  );
  useRealtimeEvents(client, {
    onReset: (info) => {
      // Our view may be stale: reload everything over REST; the reset's position is applied once it is.
      const finish = tracker.begin(info.position);
      const jobId = selectedRef.current;
      void Promise.allSettled([loadJobs(), loadWatches(), jobId ? loadSheet(jobId, { quiet: true }) : null]).then(() =>
        finishApplied(finish),
      );
      if (jobId) void loadReceipts(jobId);
    },
    onReceipt: (hint) => {
      if (hint.kind === 'stale') {
        const jobId = selectedRef.current;
        if (jobId) void loadReceipts(jobId);
        return;
      }
      hints.add(hint);
      setReceipts((r) => (r ? applyHint(r, hint) : r));
    },
  });

  // Receipt hints sent while the stream was down are lost: fetch again whenever it is live again.
  const live = connection.status === 'live';
  useEffect(() => {
    const jobId = selectedRef.current;
    if (live && jobId) void loadReceipts(jobId);
  }, [live, loadReceipts]);

  usePollWhileDegraded(
    client,
    selectedJobId
      ? () => {
          void loadSheet(selectedJobId, { quiet: true });
          void loadReceipts(selectedJobId);
        }
      : null,
    POLL_MS,
  );

  const selectedJob = jobs?.find((j) => j.id === selectedJobId) ?? null;

  return (
    <div className="console">
      <aside className="console__jobs">
        <div className="console__jobs-head">
          <h2>Open jobs</h2>
          {regions.length > 1 && (
            <select
              aria-label="Region"
              data-testid="region-filter"
              value={region}
              onChange={(e) => setRegion(e.target.value)}
            >
              <option value="">All my regions</option>
              {regions.map((r) => (
                <option key={r} value={r}>
                  {r}
                </option>
              ))}
            </select>
          )}
        </div>
        {jobsError && (
          <p className="error" role="alert" data-testid="error">
            {jobsError}
          </p>
        )}
        {jobs === null && !jobsError && <p className="muted">Loading jobs…</p>}
        {jobs !== null && (
          <JobList
            jobs={jobs}
            selectedJobId={selectedJobId}
            badges={badges}
            watched={watched}
            onSelect={select}
            onToggleWatch={(jobId) => void toggleWatch(jobId)}
          />
        )}
      </aside>
      <div className="console__sheet">
        {selectedJob ? (
          <RecommendationsSheet
            job={selectedJob}
            state={sheet}
            updatedAt={updatedAt}
            flashKey={flashKey}
            generating={generating}
            generateError={generateError}
            connection={connection}
            onGenerate={() => void generate()}
            receipts={receipts}
          />
        ) : (
          <p className="placeholder muted">Select a job to see its recommended contractors.</p>
        )}
      </div>
    </div>
  );
}
