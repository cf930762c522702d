/**
 * Delivery receipts, the reporting side: each console tab tells the server how far it has APPLIED the log
 * (`POST /api/receipts {"position"}`: "this console has rendered every event of its groups up to and
 * including this position"), so that the other dispatchers of a job's region see who has seen its latest
 * recommendations ("Seen by 3 of 4 north dispatchers").
 *
 * Two parts, both framework-free:
 *  - `AppliedTracker`: the events (and resets) this tab is applying, in the order they arrived; an entry is
 *    finished once the page rendered it, and the tracker says how far everything before is finished. A
 *    position is reported only once the page shows it, never when its bytes arrived: the Console feeds the
 *    tracker's answer into React state and hands it to the reporter from an effect, after the commit.
 *  - `ReceiptReporter`: throttles the reports: at once when nothing was sent in the last interval (leading
 *    edge), then at most one per interval with the latest position (trailing edge); at once with
 *    `navigator.sendBeacon` when the tab is hidden (`visibilitychange`) or closed (`pagehide`), a keepalive
 *    fetch where a beacon cannot be queued. It never reports a position below one it already reported, nor
 *    anything when nothing new was applied. A failed report is retried on the next tick with whatever is
 *    latest then: only the latest position matters, so nothing queues up.
 */
import { ApiError, type Api } from './api';
import { comparePositions, parsePosition } from './realtime/order';

/** Default interval between two reports of one tab (ms). */
export const RECEIPT_INTERVAL_MS = 5000;

/** Whether position `a` comes after `b` (anything comes after null). A position of another epoch counts as
 * after: the log was recreated and the old positions mean nothing any more. */
export function isAfter(a: string, b: string | null): boolean {
  if (b === null) return parsePosition(a) !== null;
  const c = comparePositions(a, b);
  if (c !== null) return c > 0;
  return parsePosition(a) !== null && parsePosition(b) !== null;
}

/**
 * What this tab is applying, in arrival order. `begin` when an event (or a reset) arrives, `finish` once the
 * page has been brought up to date with it (the sheet reloaded, the badge set). `finish` answers the highest
 * position such that every entry begun before it is finished, when that moved, else null: an event applied
 * quickly is not claimed while an earlier one still waits for its sheet to load.
 */
export class AppliedTracker {
  private readonly entries: { position: string | null; done: boolean }[] = [];
  private through: string | null = null;

  /** Starts an entry; `position` null for a reset that knows none (it still holds back later entries). */
  begin(position: string | null): () => string | null {
    const entry = { position: parsePosition(position) ? position : null, done: false };
    this.entries.push(entry);
    let finished = false;
    return () => {
      if (finished) return null;
      finished = true;
      entry.done = true;
      return this.advance();
    };
  }

  /** The position everything has been applied through, as last answered. */
  get position(): string | null {
    return this.through;
  }

  private advance(): string | null {
    let moved = false;
    while (this.entries.length > 0 && this.entries[0].done) {
      const { position } = this.entries.shift()!;
      if (position !== null && isAfter(position, this.through)) {
        this.through = position;
        moved = true;
      }
    }
    return moved ? this.through : null;
  }
}

/** How reports leave the page. */
export interface ReceiptTransport {
  /** `POST /api/receipts`; rejects when the report did not get through. */
  post(position: string, opts: { keepalive: boolean }): Promise<void>;
  /** `navigator.sendBeacon`: true when the browser queued it. Absent or false: a keepalive `post`. */
  beacon?: (position: string) => boolean;
}

/** The page's transport: the API client for the fetches, the browser's beacon for the last word. */
export function browserReceiptTransport(api: Pick<Api, 'reportReceipt'>): ReceiptTransport {
  const nav = typeof navigator !== 'undefined' ? navigator : undefined;
  return {
    post: (position, { keepalive }) => api.reportReceipt(position, { keepalive }),
    beacon:
      nav && typeof nav.sendBeacon === 'function'
        ? (position) => nav.sendBeacon('/api/receipts', JSON.stringify({ position }))
        : undefined,
  };
}

/** What the reporter listens to: `visibilitychange` on the document, `pagehide` on the window. */
export interface ReporterEventTarget {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

export interface ReceiptReporterOptions {
  transport: ReceiptTransport;
  /** Minimum time between two reports (ms). Default RECEIPT_INTERVAL_MS. */
  intervalMs?: number;
  /** Clock (ms). Default Date.now. */
  now?: () => number;
  /** Where `visibilitychange` comes from and `visibilityState` is read; default `document` (null: none). */
  document?: (ReporterEventTarget & { readonly visibilityState: string }) | null;
  /** Where `pagehide` comes from; default `window` (null: none). */
  window?: ReporterEventTarget | null;
}

/** Throttled reports of the position this tab has applied (see the module's comment). */
export class ReceiptReporter {
  private readonly transport: ReceiptTransport;
  private readonly intervalMs: number;
  private readonly now: () => number;
  private readonly doc: ReceiptReporterOptions['document'];
  private readonly win: ReporterEventTarget | null;
  /** The highest position applied. */
  private latest: string | null = null;
  /** The highest position that needs no more sending: reported (or beaconed), or refused as malformed. */
  private done: string | null = null;
  private inFlight = 0;
  private lastSentAt = Number.NEGATIVE_INFINITY;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private disposed = false;
  private readonly onVisibility = () => {
    if (this.doc?.visibilityState === 'hidden') this.flush();
  };
  private readonly onPageHide = () => this.flush();

  constructor(options: ReceiptReporterOptions) {
    this.transport = options.transport;
    this.intervalMs = options.intervalMs ?? RECEIPT_INTERVAL_MS;
    this.now = options.now ?? Date.now;
    this.doc = options.document !== undefined ? options.document : typeof document !== 'undefined' ? document : null;
    this.win = options.window !== undefined ? options.window : typeof window !== 'undefined' ? window : null;
    this.doc?.addEventListener('visibilitychange', this.onVisibility);
    this.win?.addEventListener('pagehide', this.onPageHide);
  }

  /** The page has rendered every event of this tab's groups through `position`. */
  applied(position: string): void {
    if (this.disposed || !parsePosition(position)) return;
    if (this.latest !== null && !isAfter(position, this.latest)) return; // never backwards
    this.latest = position;
    this.pump();
  }

  /** The highest position reported (or beaconed) so far. */
  get reported(): string | null {
    return this.done;
  }

  /** Report the latest position now, with a beacon (the page is being hidden or closed). */
  flush(): void {
    if (this.disposed || !this.pending()) return;
    const position = this.latest!;
    this.clearTimer();
    this.lastSentAt = this.now();
    let queued = false;
    try {
      queued = this.transport.beacon?.(position) ?? false;
    } catch {
      queued = false;
    }
    if (queued) this.markDone(position);
    else this.send(position, true);
  }

  /** Stop: no more reports, timers or listeners. */
  dispose(): void {
    this.disposed = true;
    this.clearTimer();
    this.doc?.removeEventListener('visibilitychange', this.onVisibility);
    this.win?.removeEventListener('pagehide', this.onPageHide);
  }

  private pending(): boolean {
    return this.latest !== null && isAfter(this.latest, this.done);
  }

  /** Send now if the interval allows, else make sure the trailing tick is set. */
  private pump(): void {
    if (this.disposed || !this.pending() || this.inFlight > 0) return; // a report in flight pumps when it ends
    const wait = this.lastSentAt + this.intervalMs - this.now();
    if (wait <= 0) {
      this.clearTimer();
      this.lastSentAt = this.now();
      this.send(this.latest!, false);
    } else if (this.timer === null) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.pump();
      }, wait);
    }
  }

  private send(position: string, keepalive: boolean): void {
    this.inFlight += 1;
    let request: Promise<void>;
    try {
      request = this.transport.post(position, { keepalive });
    } catch (err) {
      request = Promise.reject(err);
    }
    request
      .then(
        () => this.markDone(position),
        (err: unknown) => {
          // Malformed (400): sending it again cannot help; a later position will be sent. Anything else
          // (network, 5xx, 401 until the next sign-in) is retried on the next tick, with the latest position.
          if (err instanceof ApiError && err.status === 400) this.markDone(position);
        },
      )
      .finally(() => {
        this.inFlight -= 1;
        this.pump();
      });
  }

  private markDone(position: string): void {
    if (isAfter(position, this.done)) this.done = position;
  }

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}
