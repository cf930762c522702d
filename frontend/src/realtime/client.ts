/**
 * Connection client for the SmartScheduler SSE stream (`GET /api/events`): one EventSource.
 *
 * Framework-free: no React in here. In a browser the tabs of one profile share one such
 * connection (see ./shared.ts, which runs this client in the leader tab); where that is not
 * possible, each tab runs its own. Responsibilities:
 *  - open a native EventSource (constructor injectable for tests);
 *  - let the browser do its own retries (readyState CONNECTING after an error), and recreate the
 *    EventSource with exponential backoff + jitter, passing `?lastEventId=<position>`, when it is
 *    closed for good (readyState CLOSED) or has gone silent;
 *  - a watchdog: the server sends a named `heartbeat` event every ~10 s, so a connection that
 *    delivered nothing (no event, no heartbeat) for 2.5 heartbeat intervals is dead even if TCP
 *    has not noticed: close it and reopen from the last position;
 *  - deliver the stream's events by type to typed listeners (`on('RecommendationReady', cb)`);
 *  - drop out-of-order / duplicate events (by position seq and by eventId);
 *  - surface `reset` and `auth-expired` to the app;
 *  - one connection status (`live` | `reconnecting` | `offline`) and a "degraded" flag (the stream
 *    has been down for a while and the browser is online) that drives REST polling.
 */
import type { RecommendationReadyEvent } from './generated/recommendation-ready';
import { EventOrder, parsePosition } from './order';

export type { RecommendationReadyEvent } from './generated/recommendation-ready';
export { parsePosition, type Position } from './order';

/** The envelope every event of the stream carries in its `data` (the event's payload fields are merged
 * into it; see schemas/). */
export interface StreamEvent {
  /** Unique id of the event; a client drops repeats by it. */
  eventId: string;
  /** The event type, equal to the SSE `event:` name. */
  type: string;
  /** `<epoch>-<seq>`: where the event is in the log. */
  position: string;
  /** The groups the event targets, e.g. `region:north`. */
  groups: string[];
  /** RFC 3339 time the event was written. */
  occurredAt: string;
  /** Position of the original when this is a replayed copy, else null. */
  replayOf: string | null;
}

/** The `data` type of each event type the console knows, by SSE event name. */
export interface StreamEventMap {
  RecommendationReady: RecommendationReadyEvent;
}

/** The `data` of an event of type `K`: its declared type when the console knows it, else the envelope. */
export type StreamEventOf<K extends string> = K extends keyof StreamEventMap ? StreamEventMap[K] : StreamEvent;

/** Event types a client listens for from the start, whether or not anyone has subscribed yet (so that
 * their positions advance the resume point). `on()` adds any other type when it is first asked for. */
export const KNOWN_EVENT_TYPES: readonly string[] = ['RecommendationReady'] satisfies (keyof StreamEventMap)[];

/** SSE event names the connection itself uses; they are not events of the log and `on()` refuses them. */
export const CONTROL_EVENT_TYPES: readonly string[] = [
  'open',
  'error',
  'message',
  'heartbeat',
  'reset',
  'auth-expired',
  'access-revoked',
  'receipt',
];

/**
 * `event: receipt` (no `id:`: it is not an event of the log and never moves the stream position):
 * dispatcher `dispatcherId`'s consoles have applied every event of their groups through `position`,
 * first reached at `seenAt`. Or `{stale: true}`: hints may have been missed, refetch the receipts.
 * Best-effort hints: the console also refetches when its stream (re)opens.
 */
export type ReceiptHint = { kind: 'seen'; dispatcherId: string; position: string; seenAt: string } | { kind: 'stale' };

/** The hint in a `receipt` event's data, or null when it is neither form. */
export function parseReceiptHint(data: unknown): ReceiptHint | null {
  if (!data || typeof data !== 'object' || Array.isArray(data)) return null;
  const d = data as Record<string, unknown>;
  if (d.stale === true) return { kind: 'stale' };
  if (typeof d.dispatcherId !== 'string' || typeof d.seenAt !== 'string' || !parsePosition(d.position)) return null;
  return { kind: 'seen', dispatcherId: d.dispatcherId, position: d.position as string, seenAt: d.seenAt };
}

/**
 * `live`: the stream is open and has spoken within the watchdog window.
 * `reconnecting`: the browser is online and the stream is not delivering; the client is
 * reconnecting (and, after `degradedAfterMs`, the page refreshes over REST).
 * `offline`: nothing can arrive: the browser is offline, the session expired, or the client is stopped.
 */
export type ConnectionStatus = 'live' | 'reconnecting' | 'offline';

/** Which part a tab plays in sharing one stream: `solo` holds its own stream (no sharing),
 * `leader` holds the stream for all tabs, `follower` gets events from the leader. */
export type RealtimeRole = 'solo' | 'leader' | 'follower';

/** Why the app must reload its state over REST. `epoch`/`expired` come from the
 * server's `reset` event; `epoch-changed` is an epoch change the client noticed
 * on an event; `unknown-position` is a recreated stream with no known position. */
export type ResetReason = 'epoch' | 'expired' | 'epoch-changed' | 'unknown-position';

export interface ResetInfo {
  reason: ResetReason;
  /** Position the client continues from (null if unknown). */
  position: string | null;
}

/** `event: access-revoked`: the server withdrew this stream's access and ended it. `reason` is `no_groups`
 * (no group of the stream is the dispatcher's any more), `disabled` or `token_revoked` (docs/event-stream.md);
 * `position` is what the client has every event of its former groups up to. */
export interface AccessRevoked {
  reason: string;
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
  /** Position to start from (e.g. the highest any tab has applied). */
  initialPosition?: string | null;
  backoff?: Partial<BackoffOptions>;
  /** Random source in [0,1) for the jitter (tests pass a fixed one). */
  random?: () => number;
  /** The server's heartbeat interval until the client has measured it. Default 10000 (the
   * server's default). The client measures the gap between two heartbeats and uses that. */
  heartbeatMs?: number;
  /** Silence (no event, no heartbeat) of this many heartbeat intervals = dead connection. Default 2.5. */
  watchdogFactor?: number;
  /** After the stream has been down this long (browser online), the client is `degraded` and
   * runs the REST pollers registered with `whileDegraded`. Default 10000. */
  degradedAfterMs?: number;
  /** How many recent eventIds to remember for de-duplication. Default 1000. */
  dedupeWindow?: number;
  /** Online/offline source; defaults to navigator/window when present. */
  online?: OnlineSource | null;
  /** Event types to listen for from the start besides KNOWN_EVENT_TYPES (e.g. those the other tabs asked
   * the leader for). */
  eventTypes?: string[];
}

export type Unsubscribe = () => void;

export interface RealtimeClient {
  /** Open the stream (idempotent). `scope` (the signed-in dispatcher) keeps tabs signed in as
   * different dispatchers from sharing a stream; a client that does not share ignores it. */
  start(scope?: string): void;
  /** Close the stream and all timers; `start()` may be called again later. */
  stop(): void;
  /** After `auth-expired` (and a new session): reconnect from the last position. */
  resume(): void;
  readonly status: ConnectionStatus;
  readonly degraded: boolean;
  readonly authExpired: boolean;
  /** Set while the stream is stopped because the server withdrew access (`access-revoked`): like
   * `authExpired`, the client does not reconnect until `resume()`. */
  readonly accessRevoked: AccessRevoked | null;
  readonly lastPosition: string | null;
  readonly role: RealtimeRole;
  onStatus(cb: (status: ConnectionStatus) => void): Unsubscribe;
  onDegraded(cb: (degraded: boolean) => void): Unsubscribe;
  /** Events of one type (the SSE `event:` name, e.g. `RecommendationReady`), each at most once and in
   * position order. Throws for the connection's own event names (CONTROL_EVENT_TYPES). */
  on<K extends string>(eventType: K, cb: (ev: StreamEventOf<K>) => void): Unsubscribe;
  /** Every event of the stream, of whichever type `on()` or KNOWN_EVENT_TYPES made the client listen for
   * (the shared client relays them to the other tabs with this). */
  onEvent(cb: (ev: StreamEvent, eventType: string) => void): Unsubscribe;
  onReset(cb: (info: ResetInfo) => void): Unsubscribe;
  onAuthExpired(cb: () => void): Unsubscribe;
  /** The server withdrew access (`access-revoked`); the stream stays closed until `resume()`. */
  onAccessRevoked(cb: (info: AccessRevoked) => void): Unsubscribe;
  /** A heartbeat arrived; `position` is the one the client now has everything up to. */
  onHeartbeat(cb: (position: string | null) => void): Unsubscribe;
  /** A `receipt` hint arrived (in every tab: the leader relays it). It never moves `lastPosition`. */
  onReceipt(cb: (hint: ReceiptHint) => void): Unsubscribe;
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

/** The heartbeat interval the contract allows at most; a measured gap is clamped to [1 s, this]. */
const MAX_HEARTBEAT_MS = 15000;
const MIN_HEARTBEAT_MS = 1000;

/** Delay before the `attempt`-th (0-based) recreate: exponential, capped, with
 * "equal jitter" (uniform in [d/2, d]) so that clients that lost their server together do not
 * come back together. */
export function backoffDelay(attempt: number, opts: BackoffOptions, random: () => number): number {
  const base = Math.min(opts.maxMs, opts.initialMs * Math.pow(opts.factor, attempt));
  return Math.round(base / 2 + (base / 2) * random());
}

/** navigator.onLine + window online/offline events, or null outside a browser. */
export function browserOnlineSource(): OnlineSource | null {
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

/** Refuses the connection's own event names as data event types. */
export function checkEventType(eventType: string): void {
  if (CONTROL_EVENT_TYPES.includes(eventType)) {
    throw new Error(`"${eventType}" is the connection's own event, not an event type of the stream`);
  }
}

/** Listeners of the stream's events by type, plus listeners of all of them. */
export class EventListeners {
  private readonly byType = new Map<string, Emitter<StreamEvent>>();
  private readonly all = new Emitter<[string, StreamEvent]>();

  /** Subscribes `cb` to `eventType`; `isNew` is true when this is the first time the type is asked for. */
  on(eventType: string, cb: (ev: StreamEvent) => void): { off: Unsubscribe; isNew: boolean } {
    checkEventType(eventType);
    let em = this.byType.get(eventType);
    const isNew = em === undefined;
    if (!em) {
      em = new Emitter<StreamEvent>();
      this.byType.set(eventType, em);
    }
    return { off: em.on(cb), isNew };
  }

  /** Subscribes `cb` to every event, with its type. */
  onAll(cb: (ev: StreamEvent, eventType: string) => void): Unsubscribe {
    return this.all.on(([eventType, ev]) => cb(ev, eventType));
  }

  /** Event types someone has asked for. */
  types(): string[] {
    return [...this.byType.keys()];
  }

  emit(eventType: string, ev: StreamEvent): void {
    this.byType.get(eventType)?.emit(ev);
    this.all.emit([eventType, ev]);
  }
}

/** A tiny typed event emitter; a failing listener does not stop the others. */
export class Emitter<T> {
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

/** REST pollers that run while a client is degraded. */
export class Pollers {
  private readonly set = new Set<{ poll: () => void; intervalMs: number; timer: ReturnType<typeof setInterval> | null }>();
  private active = false;

  add(poll: () => void, intervalMs: number): Unsubscribe {
    const p = { poll, intervalMs, timer: null as ReturnType<typeof setInterval> | null };
    this.set.add(p);
    if (this.active) this.run(p);
    return () => {
      this.halt(p);
      this.set.delete(p);
    };
  }

  setActive(active: boolean): void {
    if (active === this.active) return;
    this.active = active;
    for (const p of this.set) (active ? this.run(p) : this.halt(p));
  }

  private run(p: { poll: () => void; intervalMs: number; timer: ReturnType<typeof setInterval> | null }): void {
    if (p.timer !== null) return;
    safeCall(p.poll);
    p.timer = setInterval(() => safeCall(p.poll), p.intervalMs);
  }

  private halt(p: { timer: ReturnType<typeof setInterval> | null }): void {
    if (p.timer !== null) clearInterval(p.timer);
    p.timer = null;
  }
}

function safeCall(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    console.error('realtime poller failed', err);
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
  const watchdogFactor = options.watchdogFactor ?? 2.5;
  const degradedAfterMs = options.degradedAfterMs ?? 10000;
  const online = options.online === undefined ? browserOnlineSource() : options.online;

  const statusEm = new Emitter<ConnectionStatus>();
  const degradedEm = new Emitter<boolean>();
  const events = new EventListeners();
  /** The event types every EventSource of this client listens for. */
  const listening = new Set<string>([...KNOWN_EVENT_TYPES, ...(options.eventTypes ?? [])]);
  const resetEm = new Emitter<ResetInfo>();
  const authEm = new Emitter<void>();
  const revokedEm = new Emitter<AccessRevoked>();
  const closedEm = new Emitter<void>();
  const beatEm = new Emitter<string | null>();
  const receiptEm = new Emitter<ReceiptHint>();
  const pollers = new Pollers();

  const order = new EventOrder(options.initialPosition ?? null, options.dedupeWindow ?? 1000);
  let es: EventSourceLike | null = null;
  let running = false;
  let authExpired = false;
  let accessRevoked: AccessRevoked | null = null;
  /** The stream is open and not stale. The status is derived from this and the browser's state. */
  let connected = false;
  let status: ConnectionStatus = 'reconnecting';
  let degraded = false;
  let attempt = 0;
  let downSince: number | null = null;
  let heartbeatMs = options.heartbeatMs ?? 10000;
  let lastActivity = 0;
  let lastBeatAt: number | null = null;
  let recreateTimer: Timer | null = null;
  let degradedTimer: Timer | null = null;
  let watchdogTimer: Timer | null = null;
  let unsubscribeOnline: (() => void) | null = null;

  // ---- status: derived in one place ---------------------------------------

  function browserOnline(): boolean {
    return online ? online.isOnline() : true;
  }

  /** Recompute status and degraded from the facts (running, session, browser, stream). */
  function refresh(): void {
    let next: ConnectionStatus;
    if (!running || authExpired || !browserOnline()) next = 'offline';
    else next = connected ? 'live' : 'reconnecting';
    const nextDegraded =
      next === 'reconnecting' && downSince !== null && Date.now() - downSince >= degradedAfterMs;
    if (next !== status) {
      status = next;
      statusEm.emit(status);
    }
    if (nextDegraded !== degraded) {
      degraded = nextDegraded;
      pollers.setActive(degraded);
      degradedEm.emit(degraded);
    }
  }

  function setConnected(next: boolean): void {
    connected = next;
    if (connected) {
      downSince = null;
      attempt = 0;
      if (degradedTimer !== null) clearTimeout(degradedTimer);
      degradedTimer = null;
    } else if (downSince === null) {
      downSince = Date.now();
      degradedTimer = setTimeout(() => {
        degradedTimer = null;
        refresh();
      }, degradedAfterMs);
    }
    refresh();
  }

  // ---- watchdog -----------------------------------------------------------

  function watchdogMs(): number {
    return Math.round(heartbeatMs * watchdogFactor);
  }

  /** Something arrived (or a new attempt began): the connection has a full window again. */
  function touch(): void {
    lastActivity = Date.now();
    if (watchdogTimer === null && running && !authExpired) armWatchdog(watchdogMs());
  }

  function armWatchdog(ms: number): void {
    if (watchdogTimer !== null) clearTimeout(watchdogTimer);
    watchdogTimer = setTimeout(checkWatchdog, ms);
  }

  /** Timers in background tabs may fire late; judge by the time since the last activity, not by
   * the timer having fired. */
  function checkWatchdog(): void {
    watchdogTimer = null;
    if (!running || authExpired) return;
    const silent = Date.now() - lastActivity;
    if (es === null || silent < watchdogMs()) {
      // Nothing to judge while a recreate waits for its backoff; it touches when it connects.
      armWatchdog(es === null ? watchdogMs() : watchdogMs() - silent);
      return;
    }
    // Dead without a close (proxy/NAT dropped it, laptop slept, Wi-Fi changed): reopen from the
    // last position after a short jittered delay.
    closeSource();
    setConnected(false);
    scheduleRecreate();
    lastActivity = Date.now();
    armWatchdog(watchdogMs());
  }

  // ---- connection ---------------------------------------------------------

  function buildUrl(): string {
    const params = new URLSearchParams();
    if (options.groups && options.groups.length > 0) params.set('groups', options.groups.join(','));
    if (order.position) params.set('lastEventId', order.position);
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
    if (order.position === null && attempt > 0) {
      // We lost the stream without ever learning a position: whatever happened
      // in between is unknown, so the app must reload over REST.
      resetEm.emit({ reason: 'unknown-position', position: null });
    }
    const source = new ES(buildUrl(), { withCredentials: true });
    es = source;
    lastBeatAt = null;
    touch();
    const mine = (fn: (ev: Event) => void) => (ev: Event) => {
      if (es === source) fn(ev);
    };
    source.addEventListener('open', mine(() => onActivity()));
    source.addEventListener('error', mine(() => onError(source)));
    source.addEventListener('heartbeat', mine((ev) => onHeartbeatEvent(ev as MessageEvent)));
    for (const eventType of listening) listenFor(source, eventType);
    source.addEventListener('reset', mine((ev) => onResetEvent(ev as MessageEvent)));
    source.addEventListener('auth-expired', mine(() => onAuthExpiredEvent()));
    source.addEventListener('access-revoked', mine((ev) => onAccessRevokedEvent(ev as MessageEvent)));
    source.addEventListener('receipt', mine((ev) => onReceiptEvent(ev as MessageEvent)));
  }

  /** Makes `source` deliver events of `eventType` (while it is the current source). */
  function listenFor(source: EventSourceLike, eventType: string): void {
    source.addEventListener(eventType, (ev) => {
      if (es === source) onStreamEvent(eventType, ev as MessageEvent);
    });
  }

  /** From now on, listen for `eventType` too (on the open stream and every later one). */
  function listen(eventType: string): void {
    if (listening.has(eventType)) return;
    listening.add(eventType);
    if (es) listenFor(es, eventType);
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
    setConnected(false);
    if (source.readyState === CLOSED) {
      // Closed for good (non-200, wrong content type, ...): the browser will not retry.
      closeSource();
      if (!authExpired) scheduleRecreate();
      closedEm.emit();
    }
    // readyState CONNECTING: the browser retries by itself (with Last-Event-ID); the watchdog
    // steps in if that retry hangs.
  }

  // ---- events -------------------------------------------------------------

  /** Anything from the server proves the connection alive. */
  function onActivity(): void {
    touch();
    if (es?.readyState === OPEN && !connected) setConnected(true);
  }

  function parseData(ev: MessageEvent): Record<string, unknown> | null {
    try {
      const v: unknown = JSON.parse(String(ev.data));
      return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
    } catch {
      return null;
    }
  }

  function onHeartbeatEvent(ev: MessageEvent): void {
    const now = Date.now();
    if (lastBeatAt !== null) {
      // Learn the server's interval so that a slower (or faster) server is judged fairly.
      const gap = now - lastBeatAt;
      heartbeatMs = Math.min(MAX_HEARTBEAT_MS, Math.max(MIN_HEARTBEAT_MS, gap));
    }
    lastBeatAt = now;
    onActivity();
    if (running && !authExpired) armWatchdog(watchdogMs()); // the window may have shrunk
    // The heartbeat's position is one we have every event of our groups up to: resume from it.
    const data = parseData(ev);
    const pos = data && typeof data.position === 'string' ? data.position : null;
    if (pos) order.advanceTo(pos);
    beatEm.emit(order.position);
  }

  function onStreamEvent(eventType: string, ev: MessageEvent): void {
    onActivity();
    const data = parseData(ev);
    if (!data) return;
    const posStr = typeof data.position === 'string' ? data.position : ev.lastEventId;
    const eventId = typeof data.eventId === 'string' ? data.eventId : null;
    const verdict = order.accept(posStr, eventId);
    if (verdict === 'duplicate' || verdict === 'invalid') return;
    if (verdict === 'new-epoch') resetEm.emit({ reason: 'epoch-changed', position: order.position });
    events.emit(eventType, data as unknown as StreamEvent);
  }

  /** A receipt hint: proof the stream is alive, but no position of the log (it has no `id:`, and its
   * `position` is another dispatcher's): the order and the resume point stay as they are. */
  function onReceiptEvent(ev: MessageEvent): void {
    onActivity();
    const hint = parseReceiptHint(parseData(ev));
    if (hint) receiptEm.emit(hint);
  }

  function onResetEvent(ev: MessageEvent): void {
    onActivity();
    const data = parseData(ev) ?? {};
    const posStr = typeof data.position === 'string' ? data.position : ev.lastEventId;
    order.resetTo(posStr);
    const reason: ResetReason = data.reason === 'expired' ? 'expired' : 'epoch';
    resetEm.emit({ reason, position: order.position });
  }

  /** Reconnecting would be refused (403, or 401 with this token): stop, like `auth-expired`, and say why
   * before the status changes, so that whoever watches the status already knows the cause. */
  function onAccessRevokedEvent(ev: MessageEvent): void {
    let data: { reason?: unknown; position?: unknown } = {};
    try {
      data = JSON.parse(String(ev.data)) as typeof data;
    } catch {
      /* a malformed body still ends the stream */
    }
    const position = typeof data.position === 'string' ? data.position : null;
    if (position) order.advanceTo(position);
    accessRevoked = { reason: typeof data.reason === 'string' ? data.reason : 'unknown', position: order.position };
    stopUntilResume();
    revokedEm.emit(accessRevoked);
  }

  function onAuthExpiredEvent(): void {
    stopUntilResume();
    authEm.emit();
  }

  function stopUntilResume(): void {
    authExpired = true;
    clearRecreate();
    closeSource();
    if (watchdogTimer !== null) clearTimeout(watchdogTimer);
    watchdogTimer = null;
    // Not reconnecting until resume(): offline, and no polling (REST would answer 401 too).
    setConnected(false);
  }

  function onOnlineChange(isOnline: boolean): void {
    if (!running) return;
    if (isOnline && !connected && !authExpired && es?.readyState !== OPEN) {
      // Back online while waiting (backoff, or a browser retry): try now.
      attempt = 0;
      connect();
    }
    // A stream that stayed open through the blip is live again at once; if it died meanwhile
    // the watchdog will say so within its window.
    refresh();
  }

  function start(): void {
    if (running) return;
    running = true;
    if (online && !unsubscribeOnline) unsubscribeOnline = online.subscribe(onOnlineChange);
    setConnected(false);
    connect();
  }

  // ---- public API ---------------------------------------------------------

  return {
    start,
    stop() {
      running = false;
      clearRecreate();
      closeSource();
      if (watchdogTimer !== null) clearTimeout(watchdogTimer);
      if (degradedTimer !== null) clearTimeout(degradedTimer);
      watchdogTimer = degradedTimer = null;
      connected = false;
      downSince = null;
      attempt = 0;
      if (unsubscribeOnline) unsubscribeOnline();
      unsubscribeOnline = null;
      refresh();
    },
    resume() {
      authExpired = false;
      accessRevoked = null;
      if (!running) {
        start();
        return;
      }
      attempt = 0;
      setConnected(false);
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
    get accessRevoked() {
      return accessRevoked;
    },
    get lastPosition() {
      return order.position;
    },
    role: 'solo',
    onStatus: (cb) => statusEm.on(cb),
    onDegraded: (cb) => degradedEm.on(cb),
    on<K extends string>(eventType: K, cb: (ev: StreamEventOf<K>) => void): Unsubscribe {
      const { off } = events.on(eventType, cb as (ev: StreamEvent) => void);
      listen(eventType);
      return off;
    },
    onEvent: (cb) => events.onAll(cb),
    onReset: (cb) => resetEm.on(cb),
    onAuthExpired: (cb) => authEm.on(() => cb()),
    onAccessRevoked: (cb) => revokedEm.on(cb),
    onHeartbeat: (cb) => beatEm.on(cb),
    onReceipt: (cb) => receiptEm.on(cb),
    onClosed: (cb) => closedEm.on(() => cb()),
    whileDegraded(poll, intervalMs = 5000) {
      return pollers.add(poll, intervalMs);
    },
  };
}

export const READY_STATE = { CONNECTING, OPEN, CLOSED } as const;
