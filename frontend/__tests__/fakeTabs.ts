/**
 * A stand-in for one browser profile's Web Locks and BroadcastChannel, with tabs that can be
 * closed: enough to test the election and hand-over of the shared stream deterministically.
 */
import type { ChannelLike, LifecycleTarget, LockManagerLike } from '../src/realtime';

interface Request {
  tab: string;
  name: string;
  callback: (lock: unknown) => Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
}

function abortError(): DOMException {
  return new DOMException('The lock request was aborted', 'AbortError');
}

/** Web Locks of one profile (exclusive mode, FIFO), per tab. */
export class FakeLocks {
  held = new Map<string, Request>();
  queue: Request[] = [];

  forTab(tab: string): LockManagerLike {
    return {
      request: (name, options, callback) =>
        new Promise<void>((resolve, reject) => {
          const req: Request = { tab, name, callback, resolve, reject };
          if (options.signal?.aborted) {
            reject(abortError());
            return;
          }
          options.signal?.addEventListener('abort', () => {
            const i = this.queue.indexOf(req);
            if (i >= 0) {
              this.queue.splice(i, 1);
              reject(abortError());
            }
          });
          if (options.steal) {
            const old = this.held.get(name);
            if (old) {
              this.held.delete(name);
              old.reject(abortError());
            }
            this.grant(req);
            return;
          }
          this.queue.push(req);
          queueMicrotask(() => this.next(name));
        }),
      query: async () => ({
        held: [...this.held.values()].map((r) => ({ name: r.name, clientId: r.tab })),
        pending: this.queue.map((r) => ({ name: r.name, clientId: r.tab })),
      }),
    };
  }

  holder(name: string): string | null {
    return this.held.get(name)?.tab ?? null;
  }

  /** The tab is gone: its lock is released and its waiting requests dropped. */
  closeTab(tab: string): void {
    this.queue = this.queue.filter((r) => r.tab !== tab);
    for (const [name, r] of this.held) {
      if (r.tab === tab) {
        this.held.delete(name);
        queueMicrotask(() => this.next(name));
      }
    }
  }

  private next(name: string): void {
    if (this.held.has(name)) return;
    const i = this.queue.findIndex((r) => r.name === name);
    if (i < 0) return;
    const [req] = this.queue.splice(i, 1);
    this.grant(req);
  }

  private grant(req: Request): void {
    this.held.set(req.name, req);
    Promise.resolve()
      .then(() => req.callback({ name: req.name }))
      .then(
        () => {
          if (this.held.get(req.name) === req) {
            this.held.delete(req.name);
            req.resolve();
            this.next(req.name);
          }
        },
        (err) => {
          if (this.held.get(req.name) === req) {
            this.held.delete(req.name);
            req.reject(err);
            this.next(req.name);
          }
        },
      );
  }
}

/** BroadcastChannels of one profile: a message reaches every other open channel of that name,
 * as a separate task (setTimeout 0), like the real one. */
export class FakeChannels {
  private readonly open = new Set<{ tab: string; name: string; listeners: Set<(ev: MessageEvent) => void>; closed: boolean }>();
  /** Tabs whose messages are dropped (a hung tab). */
  readonly muted = new Set<string>();
  readonly log: { tab: string; msg: unknown }[] = [];

  forTab(tab: string): (name: string) => ChannelLike {
    return (name) => {
      const me = { tab, name, listeners: new Set<(ev: MessageEvent) => void>(), closed: false };
      this.open.add(me);
      return {
        postMessage: (msg) => {
          if (me.closed || this.muted.has(tab)) return;
          const data = structuredClone(msg);
          this.log.push({ tab, msg: data });
          for (const other of this.open) {
            if (other === me || other.name !== name) continue;
            setTimeout(() => {
              if (other.closed) return;
              for (const l of other.listeners) l(new MessageEvent('message', { data }));
            }, 0);
          }
        },
        addEventListener: (_type, l) => me.listeners.add(l),
        removeEventListener: (_type, l) => me.listeners.delete(l),
        close: () => {
          me.closed = true;
          this.open.delete(me);
        },
      };
    };
  }

  closeTab(tab: string): void {
    for (const c of [...this.open]) {
      if (c.tab === tab) {
        c.closed = true;
        this.open.delete(c);
      }
    }
  }
}

/** A document/window stand-in that the test can fire Page Lifecycle events on. */
export class FakeLifecycle implements LifecycleTarget {
  private readonly listeners = new Map<string, Set<(ev: Event) => void>>();
  addEventListener(type: string, l: (ev: Event) => void): void {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type)!.add(l);
  }
  removeEventListener(type: string, l: (ev: Event) => void): void {
    this.listeners.get(type)?.delete(l);
  }
  fire(type: string, ev: Event = new Event(type)): void {
    for (const l of this.listeners.get(type) ?? []) l(ev);
  }
}
