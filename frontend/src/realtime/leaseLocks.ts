/**
 * Leader election without the Web Locks API, for pages that are not a secure context (plain HTTP
 * on a host other than localhost, where browsers hide `navigator.locks`): a lease in localStorage
 * that the holder renews. It offers the small part of the LockManager interface that
 * ./shared.ts uses, so the sharing logic is the same either way.
 *
 * - A tab claims the lease when it is free or expired, then checks a moment later that its claim
 *   survived (two tabs may write at once; the last write wins, and only that tab holds it).
 * - The holder renews every `renewMs`; a lease not renewed for `leaseMs` (tab closed without
 *   cleanup, hung, or throttled in the background) is free for another tab.
 * - A holder that finds someone else's claim has lost it: its request rejects with AbortError,
 *   as a stolen Web Lock does. `steal: true` claims at once.
 * - On `pagehide` the holder clears the lease, so that a closed tab hands over at once.
 */
import type { LockManagerLike } from './shared';

/** The part of localStorage used here. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface LeaseOptions {
  storage: StorageLike;
  /** This tab's id. */
  id?: string;
  /** A lease not renewed for this long is free. Default 6000 ms. */
  leaseMs?: number;
  /** The holder renews, and a waiting tab looks, this often. Default 1500 ms. */
  renewMs?: number;
  /** How long a claim must survive before it holds. Default 60 ms. */
  confirmMs?: number;
  /** Where `pagehide` comes from; default `window`. */
  window?: { addEventListener(type: string, l: () => void): void; removeEventListener(type: string, l: () => void): void } | null;
}

interface Lease {
  id: string;
  until: number;
}

function abortError(): Error {
  return typeof DOMException !== 'undefined'
    ? new DOMException('The lease was lost or the request aborted', 'AbortError')
    : Object.assign(new Error('aborted'), { name: 'AbortError' });
}

export function leaseLocks(options: LeaseOptions): LockManagerLike {
  const { storage } = options;
  const me = options.id ?? Math.random().toString(36).slice(2) + Date.now().toString(36);
  const leaseMs = options.leaseMs ?? 6000;
  const renewMs = options.renewMs ?? 1500;
  const confirmMs = options.confirmMs ?? 60;
  const win = options.window !== undefined ? options.window : typeof window !== 'undefined' ? window : null;

  function read(key: string): Lease | null {
    try {
      const v = JSON.parse(storage.getItem(key) ?? 'null') as Lease | null;
      return v && typeof v.id === 'string' && typeof v.until === 'number' ? v : null;
    } catch {
      return null;
    }
  }

  return {
    request(name, opts, callback) {
      const key = `smartscheduler-lease:${name}`;
      return new Promise<void>((resolve, reject) => {
        let holding = false;
        let confirming = false;
        let done = false;
        const write = () => storage.setItem(key, JSON.stringify({ id: me, until: Date.now() + leaseMs }));
        const clear = () => {
          if (read(key)?.id === me) storage.removeItem(key);
        };
        const onPageHide = () => {
          if (holding) clear();
        };
        const finish = (err?: unknown) => {
          if (done) return;
          done = true;
          clearInterval(timer);
          win?.removeEventListener('pagehide', onPageHide);
          if (holding) clear();
          holding = false;
          if (err) reject(err);
          else resolve();
        };
        const claim = (force: boolean) => {
          const cur = read(key);
          if (!force && cur && cur.id !== me && cur.until > Date.now()) return;
          write();
          confirming = true;
          setTimeout(() => {
            confirming = false;
            if (done || read(key)?.id !== me) return;
            holding = true;
            Promise.resolve()
              .then(() => callback({ name }))
              .then(
                () => finish(),
                (err: unknown) => finish(err),
              );
          }, confirmMs);
        };
        const tick = () => {
          if (done) return;
          if (holding) {
            if (read(key)?.id !== me) {
              holding = false; // someone else holds it now: do not clear their claim
              finish(abortError());
            } else write();
          } else if (!confirming) claim(false);
        };
        const timer = setInterval(tick, renewMs);
        win?.addEventListener('pagehide', onPageHide);
        opts.signal?.addEventListener('abort', () => {
          if (!holding) finish(abortError());
        });
        if (opts.signal?.aborted) {
          finish(abortError());
          return;
        }
        claim(opts.steal === true);
      });
    },
  };
}
