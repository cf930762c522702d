/**
 * One event stream per browser profile, shared by all its tabs.
 *
 * A browser opens at most six HTTP/1.1 connections per origin; a stream per tab would hold them
 * all with six tabs and starve every REST call. So the tabs elect a leader with the Web Locks API
 * (the tab holding the lock `<name>` is the leader); only the leader runs the connection client
 * (./client.ts) and relays events, heartbeats and its status to the other tabs over a
 * BroadcastChannel. Every tab applies an event at most once (EventOrder: position + eventId). A tab that
 * subscribes to an event type the others may not listen for tells them (`listen`), so that whichever
 * tab leads makes its stream deliver that type too.
 *
 * Hand-over: when the leader tab closes, the browser releases its lock and grants it to the next
 * waiting tab. When it is about to be frozen (Page Lifecycle `freeze`, or `pagehide` into the
 * back/forward cache) it steps down itself. A leader that is silent for `leaderSilenceMs` (hung,
 * or frozen without warning) has its lock stolen. The new leader asks the other tabs for their
 * positions and resumes from the highest one any tab has applied: the server sends everything
 * after it, and a tab drops what it already has.
 *
 * Where Web Locks or BroadcastChannel are missing, `createSharedRealtimeClient` returns a plain
 * per-tab client.
 */
import {
  createRealtimeClient,
  Emitter,
  EventListeners,
  KNOWN_EVENT_TYPES,
  Pollers,
  type AccessRevoked,
  type ConnectionStatus,
  type RealtimeClient,
  type RealtimeClientOptions,
  type RealtimeRole,
  type ReceiptHint,
  type ResetInfo,
  type StreamEvent,
  type StreamEventOf,
  type Unsubscribe,
} from './client';
import { leaseLocks } from './leaseLocks';
import { comparePositions, EventOrder } from './order';

/** The subset of `navigator.locks` used here. */
export interface LockManagerLike {
  request(
    name: string,
    options: { signal?: AbortSignal; steal?: boolean },
    callback: (lock: unknown) => Promise<void>,
  ): Promise<void>;
  query?(): Promise<{ held?: { name?: string; clientId?: string }[]; pending?: { name?: string; clientId?: string }[] }>;
}

/** The subset of BroadcastChannel used here. */
export interface ChannelLike {
  postMessage(msg: unknown): void;
  addEventListener(type: 'message', listener: (ev: MessageEvent) => void): void;
  removeEventListener(type: 'message', listener: (ev: MessageEvent) => void): void;
  close(): void;
}

/** Where the Page Lifecycle events come from (`document` for freeze/resume, `window` for
 * pagehide/pageshow). */
export interface LifecycleTarget {
  addEventListener(type: string, listener: (ev: Event) => void): void;
  removeEventListener(type: string, listener: (ev: Event) => void): void;
}

export interface SharedRealtimeOptions extends RealtimeClientOptions {
  /** Lock and channel name. Default `smartscheduler-realtime`. */
  name?: string;
  /** `navigator.locks`; null to disable sharing. */
  locks?: LockManagerLike | null;
  /** Opens the BroadcastChannel; null to disable sharing. */
  openChannel?: ((name: string) => ChannelLike) | null;
  /** Page Lifecycle event sources; default `document` and `window`. */
  lifecycle?: { document: LifecycleTarget | null; window: LifecycleTarget | null };
  /** Makes the leader's connection client (tests inject one over a fake EventSource). */
  createConnection?: (options: RealtimeClientOptions) => RealtimeClient;
  /** How long a new leader waits for the other tabs' positions. Default 150 ms. */
  positionsWaitMs?: number;
  /** How often the leader tells the others it is alive. Default 5000 ms. */
  beaconMs?: number;
  /** A follower that has heard nothing from the leader this long takes the lead. Default 45000 ms. */
  leaderSilenceMs?: number;
}

/** Messages between tabs. `from` is the sender's tab id. */
type Message =
  | { t: 'hello'; from: string }
  | { t: 'state'; from: string; status: ConnectionStatus; degraded: boolean; authExpired: boolean; position: string | null }
  | { t: 'event'; from: string; eventType: string; event: StreamEvent }
  | { t: 'listen'; from: string; eventTypes: string[] }
  | { t: 'reset'; from: string; info: ResetInfo }
  | { t: 'beat'; from: string; position: string | null }
  | { t: 'receipt'; from: string; hint: ReceiptHint }
  | { t: 'auth-expired'; from: string }
  | { t: 'access-revoked'; from: string; info: AccessRevoked }
  | { t: 'resume'; from: string }
  | { t: 'positions?'; from: string; ask: string }
  | { t: 'position'; from: string; ask: string; position: string | null };

function randomId(): string {
  return Math.random().toString(36).slice(2, 10) + Date.now().toString(36);
}

/** `navigator.locks`; outside a secure context (where browsers hide it) a localStorage lease. */
function browserLocks(): LockManagerLike | null {
  if (typeof navigator !== 'undefined' && 'locks' in navigator && navigator.locks) {
    return navigator.locks as unknown as LockManagerLike;
  }
  try {
    if (typeof localStorage !== 'undefined' && localStorage) return leaseLocks({ storage: localStorage });
  } catch {
    /* storage disabled: no sharing */
  }
  return null;
}

/** The shared client when the browser can share a stream, else a per-tab client. */
export function createSharedRealtimeClient(options: SharedRealtimeOptions = {}): RealtimeClient {
  const locks = options.locks !== undefined ? options.locks : browserLocks();
  const openChannel =
    options.openChannel !== undefined
      ? options.openChannel
      : typeof BroadcastChannel !== 'undefined'
        ? (name: string) => new BroadcastChannel(name) as unknown as ChannelLike
        : null;
  const makeConnection = options.createConnection ?? createRealtimeClient;
  if (!locks || !openChannel) return makeConnection(options); // fallback: a stream per tab
  return sharedClient(options, locks, openChannel, makeConnection);
}

function sharedClient(
  options: SharedRealtimeOptions,
  locks: LockManagerLike,
  openChannel: (name: string) => ChannelLike,
  makeConnection: (options: RealtimeClientOptions) => RealtimeClient,
): RealtimeClient {
  const baseName = options.name ?? 'smartscheduler-realtime';
  /** Lock and channel of the current scope (the signed-in dispatcher): tabs of one profile signed
   * in as different dispatchers (one signed out and in again) never share a stream. */
  let name = baseName;
  const positionsWaitMs = options.positionsWaitMs ?? 150;
  const beaconMs = options.beaconMs ?? 5000;
  const random = options.random ?? Math.random;
  // A little jitter so that the followers of a hung leader do not all steal at once.
  const leaderSilenceMs = (options.leaderSilenceMs ?? 45000) + Math.round(random() * 5000);
  const lifecycle = options.lifecycle ?? {
    document: typeof document !== 'undefined' ? document : null,
    window: typeof window !== 'undefined' ? window : null,
  };
  const me = randomId();

  const statusEm = new Emitter<ConnectionStatus>();
  const degradedEm = new Emitter<boolean>();
  const events = new EventListeners();
  /** Event types this tab or another one listens for: the leader's stream delivers all of them. */
  const eventTypes = new Set<string>(KNOWN_EVENT_TYPES);
  const resetEm = new Emitter<ResetInfo>();
  const authEm = new Emitter<void>();
  const revokedEm = new Emitter<AccessRevoked>();
  const closedEm = new Emitter<void>();
  const beatEm = new Emitter<string | null>();
  const receiptEm = new Emitter<ReceiptHint>();
  const pollers = new Pollers();

  const order = new EventOrder(options.initialPosition ?? null, options.dedupeWindow ?? 1000);
  let running = false;
  let frozen = false;
  let role: RealtimeRole = 'follower';
  let status: ConnectionStatus = 'reconnecting';
  let degraded = false;
  let authExpired = false;
  let accessRevoked: AccessRevoked | null = null;
  let channel: ChannelLike | null = null;
  let inner: RealtimeClient | null = null;
  let innerSubs: (() => void)[] = [];
  let innerStarted = false;
  /** Resolves the promise that holds the lock: releasing it hands the lead over. */
  let releaseLock: (() => void) | null = null;
  /** Aborts the pending (waiting) lock request. */
  let abortWait: AbortController | null = null;
  /** Campaigns are numbered so that a finished old one does not start another. */
  let campaign = 0;
  let leaderSeenAt = Date.now();
  let beaconTimer: ReturnType<typeof setInterval> | null = null;
  let silenceTimer: ReturnType<typeof setInterval> | null = null;
  const positionAnswers = new Map<string, (position: string | null) => void>();

  // ---- shared state -------------------------------------------------------

  function setState(next: { status: ConnectionStatus; degraded: boolean; authExpired: boolean }): void {
    const wasExpired = authExpired;
    authExpired = next.authExpired;
    if (next.status !== status) {
      status = next.status;
      statusEm.emit(status);
    }
    if (next.degraded !== degraded) {
      degraded = next.degraded;
      pollers.setActive(degraded);
      degradedEm.emit(degraded);
    }
    if (!authExpired) accessRevoked = null;
    if (authExpired && !wasExpired && !accessRevoked) authEm.emit();
  }

  function post(msg: Message): void {
    try {
      channel?.postMessage(msg);
    } catch (err) {
      console.error('realtime: cannot post to the other tabs', err);
    }
  }

  function postState(): void {
    post({ t: 'state', from: me, status, degraded, authExpired, position: order.position });
  }

  function applyRevoked(info: AccessRevoked): void {
    if (info.position) order.advanceTo(info.position);
    accessRevoked = info;
    revokedEm.emit(info);
  }

  /** Apply an event to this tab (at most once), whether it came from our stream or a relay. */
  function apply(eventType: string, event: StreamEvent): void {
    const verdict = order.accept(event.position, typeof event.eventId === 'string' ? event.eventId : null);
    if (verdict === 'duplicate' || verdict === 'invalid') return;
    if (verdict === 'new-epoch') resetEm.emit({ reason: 'epoch-changed', position: order.position });
    events.emit(eventType, event);
  }

  /** Have the leader's stream deliver these event types too (from now on). */
  function addEventTypes(types: string[]): void {
    for (const eventType of types) {
      if (eventTypes.has(eventType)) continue;
      eventTypes.add(eventType);
      // The relay is onEvent's (see lead): this subscription only makes the stream deliver the type.
      if (inner) innerSubs.push(inner.on(eventType, () => {}));
    }
  }

  function applyReset(info: ResetInfo): void {
    if (info.position) order.resetTo(info.position);
    resetEm.emit(info);
  }

  // ---- leading ------------------------------------------------------------

  /** Ask the other tabs for their positions; the highest (same epoch) wins. */
  async function bestPosition(): Promise<string | null> {
    let others = true;
    try {
      if (locks.query) {
        const q = await locks.query();
        others = (q.pending ?? []).some((l) => l.name === name);
      }
    } catch {
      others = true;
    }
    if (!others) return order.position;
    const ask = randomId();
    const answers: (string | null)[] = [];
    positionAnswers.set(ask, (p) => answers.push(p));
    post({ t: 'positions?', from: me, ask });
    await new Promise((r) => setTimeout(r, positionsWaitMs));
    positionAnswers.delete(ask);
    let best = order.position;
    for (const p of answers) {
      if (p === null) continue;
      if (best === null) best = p;
      else if (comparePositions(p, best) === 1) best = p;
    }
    return best;
  }

  async function lead(): Promise<void> {
    role = 'leader';
    const start = await bestPosition();
    if (role !== 'leader' || !running) return;
    if (start) order.advanceTo(start);
    const conn = makeConnection({ ...options, initialPosition: order.position, eventTypes: [...eventTypes] });
    inner = conn;
    innerStarted = false;
    const sync = () => {
      if (inner !== conn) return;
      setState({ status: conn.status, degraded: conn.degraded, authExpired: conn.authExpired });
      postState();
    };
    innerSubs = [
      conn.onStatus(sync),
      conn.onDegraded(sync),
      conn.onEvent((event, eventType) => {
        post({ t: 'event', from: me, eventType, event });
        apply(eventType, event);
      }),
      conn.onReset((info) => {
        // An epoch change noticed on an event is detected again by each tab's own order.
        if (info.reason === 'epoch-changed') return;
        post({ t: 'reset', from: me, info });
        applyReset(info);
      }),
      conn.onHeartbeat((position) => {
        if (position) order.advanceTo(position);
        post({ t: 'beat', from: me, position: order.position });
        beatEm.emit(order.position);
      }),
      // Receipt hints go to every tab as they are: they are not events of the log, so no tab's order or
      // position sees them.
      conn.onReceipt((hint) => {
        post({ t: 'receipt', from: me, hint });
        receiptEm.emit(hint);
      }),
      conn.onAuthExpired(() => {
        post({ t: 'auth-expired', from: me });
        sync();
      }),
      // Emitted before the stream's status changes, so the other tabs learn the cause first.
      conn.onAccessRevoked((info) => {
        post({ t: 'access-revoked', from: me, info });
        applyRevoked(info);
      }),
      conn.onClosed(() => closedEm.emit()),
    ];
    beaconTimer = setInterval(postState, beaconMs);
    if (authExpired) {
      // The session expired under the previous leader: wait for resume() like it would have.
      postState();
      return;
    }
    innerStarted = true;
    conn.start();
    sync();
  }

  /** Stop leading: close our stream and let the next tab take the lock. */
  function stepDown(): void {
    if (beaconTimer !== null) clearInterval(beaconTimer);
    beaconTimer = null;
    innerSubs.forEach((off) => off());
    innerSubs = [];
    if (inner) inner.stop();
    inner = null;
    if (role === 'leader') {
      role = 'follower';
      leaderSeenAt = Date.now();
      if (running && !authExpired) setState({ status: 'reconnecting', degraded, authExpired });
    }
    const release = releaseLock;
    releaseLock = null;
    release?.();
  }

  /** Wait for the lock (or take it from a silent leader with `steal`); lead while holding it. */
  function stand(steal = false): void {
    if (!running || frozen) return;
    abortWait?.abort();
    abortWait = null;
    const mine = ++campaign;
    const ac = new AbortController();
    const opts = steal ? { steal: true } : { signal: ac.signal };
    if (!steal) abortWait = ac;
    locks
      .request(name, opts, () => {
        if (mine !== campaign || !running || frozen) return Promise.resolve();
        abortWait = null;
        return new Promise<void>((resolve) => {
          releaseLock = resolve;
          void lead();
        });
      })
      .catch(() => {
        // Aborted while waiting, or our lock was stolen: a stolen leader steps down below.
      })
      .finally(() => {
        if (mine !== campaign) return;
        if (role === 'leader') stepDown();
        if (running && !frozen) stand();
      });
  }

  // ---- messages from the other tabs ---------------------------------------

  function onMessage(ev: MessageEvent): void {
    const msg = ev.data as Message;
    if (!msg || typeof msg !== 'object' || msg.from === me) return;
    switch (msg.t) {
      case 'hello':
        if (role === 'leader') postState();
        return;
      case 'positions?':
        post({ t: 'position', from: me, ask: msg.ask, position: order.position });
        return;
      case 'position':
        positionAnswers.get(msg.ask)?.(msg.position);
        return;
      case 'resume':
        if (role === 'leader') resumeLeader();
        return;
      case 'listen':
        addEventTypes(msg.eventTypes);
        return;
    }
    if (role === 'leader') return; // another tab still thinks it leads (stolen lock): ignore it
    leaderSeenAt = Date.now();
    switch (msg.t) {
      case 'state':
        if (msg.position) order.advanceTo(msg.position);
        setState({ status: msg.status, degraded: msg.degraded, authExpired: msg.authExpired });
        break;
      case 'event':
        apply(msg.eventType, msg.event);
        break;
      case 'reset':
        applyReset(msg.info);
        break;
      case 'beat':
        if (msg.position) order.advanceTo(msg.position);
        beatEm.emit(order.position);
        break;
      case 'receipt':
        receiptEm.emit(msg.hint);
        break;
      case 'auth-expired':
        setState({ status: 'offline', degraded: false, authExpired: true });
        break;
      case 'access-revoked':
        applyRevoked(msg.info);
        setState({ status: 'offline', degraded: false, authExpired: true });
        break;
    }
  }

  function resumeLeader(): void {
    if (!inner) return;
    if (!innerStarted) {
      innerStarted = true;
      inner.start();
    } else if (inner.authExpired) inner.resume(); // from its position

  }

  // ---- page lifecycle -----------------------------------------------------

  function onFreeze(): void {
    // A frozen tab cannot relay: hand the lead over now, and do not wait for it while frozen.
    frozen = true;
    campaign += 1;
    abortWait?.abort();
    abortWait = null;
    stepDown();
  }

  function onThaw(): void {
    if (!frozen) return;
    frozen = false;
    if (!running) return;
    // What the other tabs sent while we were frozen may not have reached us: reload over REST.
    resetEm.emit({ reason: 'unknown-position', position: order.position });
    post({ t: 'hello', from: me });
    stand();
  }

  const onPageHide = (ev: Event) => {
    if ((ev as PageTransitionEvent).persisted) onFreeze();
  };
  const onPageShow = (ev: Event) => {
    if ((ev as PageTransitionEvent).persisted) onThaw();
  };

  function checkLeaderSilence(): void {
    if (!running || frozen || role === 'leader') return;
    if (Date.now() - leaderSeenAt < leaderSilenceMs) return;
    leaderSeenAt = Date.now();
    stand(true);
  }

  // ---- public API ---------------------------------------------------------

  function start(scope?: string): void {
    if (running) return;
    running = true;
    name = scope ? `${baseName}:${scope}` : baseName;
    channel = openChannel(name);
    channel.addEventListener('message', onMessage);
    lifecycle.document?.addEventListener('freeze', onFreeze);
    lifecycle.document?.addEventListener('resume', onThaw);
    lifecycle.window?.addEventListener('pagehide', onPageHide);
    lifecycle.window?.addEventListener('pageshow', onPageShow);
    leaderSeenAt = Date.now();
    silenceTimer = setInterval(checkLeaderSilence, Math.max(1000, Math.round(leaderSilenceMs / 4)));
    setState({ status: 'reconnecting', degraded: false, authExpired: false });
    post({ t: 'hello', from: me });
    const own = events.types().filter((eventType) => !KNOWN_EVENT_TYPES.includes(eventType));
    if (own.length > 0) post({ t: 'listen', from: me, eventTypes: own });
    stand();
  }

  function stop(): void {
    if (!running) return;
    running = false;
    campaign += 1;
    abortWait?.abort();
    abortWait = null;
    stepDown();
    if (silenceTimer !== null) clearInterval(silenceTimer);
    silenceTimer = null;
    lifecycle.document?.removeEventListener('freeze', onFreeze);
    lifecycle.document?.removeEventListener('resume', onThaw);
    lifecycle.window?.removeEventListener('pagehide', onPageHide);
    lifecycle.window?.removeEventListener('pageshow', onPageShow);
    channel?.removeEventListener('message', onMessage);
    channel?.close();
    channel = null;
    setState({ status: 'offline', degraded: false, authExpired });
  }

  return {
    start,
    stop,
    resume() {
      if (!running) {
        authExpired = false;
        accessRevoked = null;
        start(name === baseName ? undefined : name.slice(baseName.length + 1));
        return;
      }
      setState({ status: 'reconnecting', degraded: false, authExpired: false });
      if (role === 'leader') resumeLeader();
      else post({ t: 'resume', from: me });
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
    get role() {
      return role;
    },
    onStatus: (cb) => statusEm.on(cb),
    onDegraded: (cb) => degradedEm.on(cb),
    on<K extends string>(eventType: K, cb: (ev: StreamEventOf<K>) => void): Unsubscribe {
      const { off, isNew } = events.on(eventType, cb as (ev: StreamEvent) => void);
      if (isNew && !eventTypes.has(eventType)) {
        addEventTypes([eventType]);
        post({ t: 'listen', from: me, eventTypes: [eventType] });
      }
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
