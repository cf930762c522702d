/**
 * Realtime client for the SmartScheduler SSE stream (`GET /api/events`).
 *
 * Framework-free: no React in here. One instance per browser tab (see
 * `getRealtimeClient` in ./index.ts). Responsibilities:
 *  - open a native EventSource (constructor injectable for tests);
 *  - let the browser do its own retries (readyState CONNECTING after an error),
 *    and recreate the EventSource with exponential backoff + jitter, passing
 *    `?lastEventId=<position>`, when it is closed for good (readyState CLOSED);
 *  - drop out-of-order / duplicate events (by position seq and by eventId);
 *  - surface `reset` and `auth-expired` to the app;
 *  - expose a connection status (`live` | `reconnecting` | `offline`) and a
 *    "degraded" flag (stream down for a while) that drives REST polling.
 */
import type { RecommendationReadyEvent } from './generated/recommendation-ready';

export type { RecommendationReadyEvent } from './generated/recommendation-ready';

export type ConnectionStatus = 'live' | 'reconnecting' | 'offline';

/** Why the app must reload its state over REST. `epoch`/`expired` come from the
 * server's `reset` event; `epoch-changed` is an epoch change the client noticed
 * on an event; `unknown-position` is a recreated stream with no known position. */
export type ResetReason = 'epoch' | 'expired' | 'epoch-changed' | 'unknown-position';

export interface ResetInfo {
  reason: ResetReason;
  /** Position the client continues from (null if unknown). */
  position: string | null;
}

/** The subset of the DOM EventSource that the client uses. */
export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (ev: Event) => void): void;
  close(): void;
}

export type EventSourceCtor = new (
  url: string,
  init?: { withCredentials?: boolean },
) => EventSourceLike;

export interface BackoffOptions {
  /** First delay before recreating a closed stream (ms). Default 1000. */
  initialMs: number;
  /** Upper bound of the delay (ms). Default 30000. */
  maxMs: number;
  /** Growth factor per failed attempt. Default 2. */
  factor: number;
}

/** Source of the browser's online/offline state (navigator.onLine + window events). */
export interface OnlineSource {
  isOnline(): boolean;
  subscribe(cb: (online: boolean) => void): () => void;
}

export interface RealtimeClientOptions {
  /** Stream URL (relative, same origin). Default `/api/events`. */
  url?: string;
  /** Narrow the subscription to these groups (`?groups=a,b`). Default: all of the caller's. */
  groups?: string[];
  /** EventSource constructor; defaults to the global one. */
  EventSource?: EventSourceCtor;
  /** Position to start from (e.g. restored by the app). */
  initialPosition?: string | null;
  backoff?: Partial<BackoffOptions>;
  /** Random source in [0,1) for the jitter (tests pass a fixed one). */
  random?: () => number;
  /** After the stream has been down this long, status becomes `offline`. Default 30000. */
  offlineAfterMs?: number;
  /** After the stream has been down this long, the client is `degraded` and
   * runs the REST pollers registered with `whileDegraded`. Default 10000. */
  degradedAfterMs?: number;
  /** How many recent eventIds to remember for de-duplication. Default 1000. */
  dedupeWindow?: number;
  /** Online/offline source; defaults to navigator/window when present. */
  online?: OnlineSource | null;
}

export type Unsubscribe = () => void;

export interface RealtimeClient {
  /** Open the stream (idempotent). */
  start(): void;
  /** Close the stream and all timers; `start()` may be called again later. */
  stop(): void;
  /** After `auth-expired` (and a new session): reconnect from the last position. */
  resume(): void;
  readonly status: ConnectionStatus;
  readonly degraded: boolean;
  readonly authExpired: boolean;
  readonly lastPosition: string | null;
  onStatus(cb: (status: ConnectionStatus) => void): Unsubscribe;
  onDegraded(cb: (degraded: boolean) => void): Unsubscribe;
  onRecommendationReady(cb: (ev: RecommendationReadyEvent) => void): Unsubscribe;
  onReset(cb: (info: ResetInfo) => void): Unsubscribe;
  onAuthExpired(cb: () => void): Unsubscribe;
  /** The EventSource was closed for good (e.g. a non-200 answer such as 401); the
   * client will recreate it after a backoff. The app may check its session here. */
  onClosed(cb: () => void): Unsubscribe;
  /** Run `poll` now and then every `intervalMs` while the client is degraded;
   * stops as soon as the stream is live again. Returns an unsubscribe. */
  whileDegraded(poll: () => void, intervalMs?: number): Unsubscribe;
}

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 2;

const POSITION_RE = /^([0-9a-f]{8})-([0-9]+)$/;

export interface Position {
  epoch: string;
  seq: bigint;
}

/** Parse `<epoch>-<seq>`; null if malformed. */
export function parsePosition(pos: unknown): Position | null {
  if (typeof pos !== 'string') return null;
  const m = POSITION_RE.exec(pos);
  if (!m) return null;
  return { epoch: m[1], seq: BigInt(m[2]) };
}

/** Delay before the `attempt`-th (0-based) recreate: exponential, capped, with
 * "equal jitter" (uniform in [d/2, d]). */
export function backoffDelay(attempt: number, opts: BackoffOptions, random: () => number): number {
  const base = Math.min(opts.maxMs, opts.initialMs * Math.pow(opts.factor, attempt));
  return Math.round(base / 2 + (base / 2) * random());
}

function browserOnlineSource(): OnlineSource | null {
  if (typeof window === 'undefined' || typeof navigator === 'undefined') return null;
  return {
    isOnline: () => navigator.onLine !== false,
    subscribe(cb) {
      const on = () => cb(true);
      const off = () => cb(false);
      window.addEventListener('online', on);
      window.addEventListener('offline', off);
      return () => {
        window.removeEventListener('online', on);
        window.removeEventListener('offline', off);
      };
    },
  };
}

class Emitter<T> {
  private readonly subs = new Set<(v: T) => void>();
  on(cb: (v: T) => void): Unsubscribe {
    this.subs.add(cb);
    return () => {
      this.subs.delete(cb);
    };
  }
  emit(v: T): void {
    for (const cb of [...this.subs]) {
      try {
        cb(v);
      } catch (err) {
        console.error('realtime listener failed', err);
      }
    }
  }
}

type Timer = ReturnType<typeof setTimeout>;

export function createRealtimeClient(options: RealtimeClientOptions = {}): RealtimeClient {
  const url = options.url ?? '/api/events';
  const ES: EventSourceCtor | undefined =
    options.EventSource ??
    (typeof EventSource !== 'undefined' ? (EventSource as unknown as EventSourceCtor) : undefined);
  const backoff: BackoffOptions = { initialMs: 1000, maxMs: 30000, factor: 2, ...options.backoff };
  const random = options.random ?? Math.random;
  const offlineAfterMs = options.offlineAfterMs ?? 30000;
  const degradedAfterMs = options.degradedAfterMs ?? 10000;
  const dedupeWindow = options.dedupeWindow ?? 1000;
  const online = options.online === undefined ? browserOnlineSource() : options.online;

  const statusEm = new Emitter<ConnectionStatus>();
  const degradedEm = new Emitter<boolean>();
  const recEm = new Emitter<RecommendationReadyEvent>();
  const resetEm = new Emitter<ResetInfo>();
  const authEm = new Emitter<void>();
  const closedEm = new Emitter<void>();

  let es: EventSourceLike | null = null;
  let running = false;
  let authExpired = false;
  let status: ConnectionStatus = 'reconnecting';
  let degraded = false;
  let lastPosition: string | null = options.initialPosition ?? null;
  let last: Position | null = parsePosition(lastPosition);
  const recentIds = new Set<string>();
  let attempt = 0;
  let downSince: number | null = null;
  let recreateTimer: Timer | null = null;
  let offlineTimer: Timer | null = null;
  let degradedTimer: Timer | null = null;
  let unsubscribeOnline: (() => void) | null = null;

  interface Poller {
    poll: () => void;
    intervalMs: number;
    timer: ReturnType<typeof setInterval> | null;
  }
  const pollers = new Set<Poller>();

  // ---- status -------------------------------------------------------------

  function isBrowserOffline(): boolean {
    return online ? !online.isOnline() : false;
  }

  function setStatus(next: ConnectionStatus): void {
    if (next === status) return;
    status = next;
    statusEm.emit(status);
  }

  function startPoller(p: Poller): void {
    if (p.timer !== null) return;
    safeCall(p.poll);
    p.timer = setInterval(() => safeCall(p.poll), p.intervalMs);
  }

  function stopPoller(p: Poller): void {
    if (p.timer !== null) clearInterval(p.timer);
    p.timer = null;
  }

  function setDegraded(next: boolean): void {
    if (next === degraded) return;
    degraded = next;
    for (const p of pollers) (degraded ? startPoller : stopPoller)(p);
    degradedEm.emit(degraded);
  }

  function clearDownTimers(): void {
    if (offlineTimer !== null) clearTimeout(offlineTimer);
    if (degradedTimer !== null) clearTimeout(degradedTimer);
    offlineTimer = degradedTimer = null;
  }

  /** The stream is not delivering: start (or keep) the down clock. */
  function markDown(): void {
    if (downSince === null) {
      downSince = Date.now();
      clearDownTimers();
      offlineTimer = setTimeout(() => {
        offlineTimer = null;
        if (downSince !== null) setStatus('offline');
      }, offlineAfterMs);
      if (!authExpired) {
        degradedTimer = setTimeout(() => {
          degradedTimer = null;
          if (downSince !== null && !authExpired) setDegraded(true);
        }, degradedAfterMs);
      }
    }
    const longDown = Date.now() - downSince >= offlineAfterMs;
    setStatus(isBrowserOffline() || longDown || authExpired ? 'offline' : 'reconnecting');
  }

  function markLive(): void {
    downSince = null;
    clearDownTimers();
    attempt = 0;
    setStatus('live');
    setDegraded(false);
  }

  // ---- connection ---------------------------------------------------------

  function buildUrl(): string {
    const params = new URLSearchParams();
    if (options.groups && options.groups.length > 0) params.set('groups', options.groups.join(','));
    if (lastPosition) params.set('lastEventId', lastPosition);
    const q = params.toString();
    return q ? `${url}${url.includes('?') ? '&' : '?'}${q}` : url;
  }

  function closeSource(): void {
    if (es) {
      const old = es;
      es = null;
      old.close();
    }
  }

  function clearRecreate(): void {
    if (recreateTimer !== null) clearTimeout(recreateTimer);
    recreateTimer = null;
  }

  function connect(): void {
    clearRecreate();
    closeSource();
    if (!running || authExpired) return;
    if (!ES) throw new Error('EventSource is not available in this environment');
    if (lastPosition === null && attempt > 0) {
      // We lost the stream without ever learning a position: whatever happened
      // in between is unknown, so the app must reload over REST.
      resetEm.emit({ reason: 'unknown-position', position: null });
    }
    const source = new ES(buildUrl(), { withCredentials: true });
    es = source;
    const mine = (fn: (ev: Event) => void) => (ev: Event) => {
      if (es === source) fn(ev);
    };
    source.addEventListener('open', mine(() => markLive()));
    source.addEventListener('error', mine(() => onError(source)));
    source.addEventListener('RecommendationReady', mine((ev) => onRecommendation(ev as MessageEvent)));
    source.addEventListener('reset', mine((ev) => onResetEvent(ev as MessageEvent)));
    source.addEventListener('auth-expired', mine(() => onAuthExpiredEvent()));
  }

  function scheduleRecreate(): void {
    clearRecreate();
    const delay = backoffDelay(attempt, backoff, random);
    attempt += 1;
    recreateTimer = setTimeout(() => {
      recreateTimer = null;
      connect();
    }, delay);
  }

  function onError(source: EventSourceLike): void {
    markDown();
    if (source.readyState === CLOSED) {
      // Closed for good (non-200, wrong content type, ...): the browser will not retry.
      closeSource();
      if (!authExpired) scheduleRecreate();
      closedEm.emit();
    }
    // readyState CONNECTING: the browser retries by itself (with Last-Event-ID).
  }

  // ---- events -------------------------------------------------------------

  function parseData(ev: MessageEvent): Record<string, unknown> | null {
    try {
      const v: unknown = JSON.parse(String(ev.data));
      return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
    } catch {
      return null;
    }
  }

  function rememberId(id: string): void {
    recentIds.add(id);
    if (recentIds.size > dedupeWindow) {
      const oldest = recentIds.values().next().value;
      if (oldest !== undefined) recentIds.delete(oldest);
    }
  }

  function onRecommendation(ev: MessageEvent): void {
    if (status !== 'live' && es?.readyState === OPEN) markLive();
    const data = parseData(ev);
    if (!data) return;
    const posStr = typeof data.position === 'string' ? data.position : ev.lastEventId;
    const pos = parsePosition(posStr);
    const eventId = typeof data.eventId === 'string' ? data.eventId : null;
    if (!pos) return; // cannot order it: ignore rather than risk a duplicate
    let epochChanged = false;
    if (last) {
      if (pos.epoch !== last.epoch) epochChanged = true;
      else if (pos.seq <= last.seq) return; // older or same position: duplicate
    }
    if (eventId !== null && recentIds.has(eventId)) return;
    if (eventId !== null) rememberId(eventId);
    last = pos;
    lastPosition = posStr;
    if (epochChanged) {
      recentIds.clear();
      if (eventId !== null) rememberId(eventId);
      resetEm.emit({ reason: 'epoch-changed', position: lastPosition });
    }
    recEm.emit(data as unknown as RecommendationReadyEvent);
  }

  function onResetEvent(ev: MessageEvent): void {
    if (status !== 'live' && es?.readyState === OPEN) markLive();
    const data = parseData(ev) ?? {};
    const posStr = typeof data.position === 'string' ? data.position : ev.lastEventId;
    const pos = parsePosition(posStr);
    if (pos) {
      if (last && pos.epoch !== last.epoch) recentIds.clear();
      last = pos;
      lastPosition = posStr;
    }
    const reason: ResetReason = data.reason === 'expired' ? 'expired' : 'epoch';
    resetEm.emit({ reason, position: lastPosition });
  }

  function onAuthExpiredEvent(): void {
    authExpired = true;
    clearRecreate();
    closeSource();
    // Not reconnecting until resume(): the stream is down, say so, but do not
    // poll (REST would answer 401 too).
    markDown();
    setDegraded(false);
    if (degradedTimer !== null) clearTimeout(degradedTimer);
    degradedTimer = null;
    setStatus('offline');
    authEm.emit();
  }

  function onOnlineChange(isOnline: boolean): void {
    if (!running) return;
    if (!isOnline) {
      if (status !== 'live') setStatus('offline');
      else {
        // The browser will notice the dead connection on its own; reflect the
        // network state right away.
        markDown();
        setStatus('offline');
      }
    } else {
      if (recreateTimer !== null) {
        // Back online while waiting for a backoff: try now.
        attempt = 0;
        connect();
      }
      if (downSince !== null) markDown(); // recompute: reconnecting unless down for long
    }
  }

  function safeCall(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      console.error('realtime poller failed', err);
    }
  }

  function start(): void {
    if (running) return;
    running = true;
    if (online && !unsubscribeOnline) unsubscribeOnline = online.subscribe(onOnlineChange);
    markDown();
    connect();
  }

  // ---- public API ---------------------------------------------------------

  return {
    start,
    stop() {
      running = false;
      clearRecreate();
      closeSource();
      clearDownTimers();
      downSince = null;
      attempt = 0;
      setDegraded(false);
      if (unsubscribeOnline) unsubscribeOnline();
      unsubscribeOnline = null;
      setStatus('offline');
    },
    resume() {
      authExpired = false;
      if (!running) {
        start();
        return;
      }
      attempt = 0;
      downSince = null;
      markDown();
      connect();
    },
    get status() {
      return status;
    },
    get degraded() {
      return degraded;
    },
    get authExpired() {
      return authExpired;
    },
    get lastPosition() {
      return lastPosition;
    },
    onStatus: (cb) => statusEm.on(cb),
    onDegraded: (cb) => degradedEm.on(cb),
    onRecommendationReady: (cb) => recEm.on(cb),
    onReset: (cb) => resetEm.on(cb),
    onAuthExpired: (cb) => authEm.on(() => cb()),
    onClosed: (cb) => closedEm.on(() => cb()),
    whileDegraded(poll, intervalMs = 5000) {
      const p: Poller = { poll, intervalMs, timer: null };
      pollers.add(p);
      if (degraded) startPoller(p);
      return () => {
        stopPoller(p);
        pollers.delete(p);
      };
    },
  };
}

export const READY_STATE = { CONNECTING, OPEN, CLOSED } as const;
