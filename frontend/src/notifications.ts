/**
 * Desktop notifications for watched jobs (the stars of the job list).
 *
 * Every tab of a browser applies every event (one tab leads the shared stream and relays it), so without care
 * each tab would raise its own notification. The rule, decided here in the page because only the page knows:
 * - only the tab that owns the stream (`leader`, or `solo` where the browser cannot share) notifies;
 * - not while any tab of the console is visible: each visible tab holds a shared Web Lock named
 *   `VISIBLE_LOCK`, and the notifying tab asks the lock manager who holds it;
 * - the notification's `tag` is the event id, so if two tabs ever both think they lead (a stolen lock, for a
 *   moment), the system shows the event once: a notification with the same tag replaces the first.
 */
import type { RealtimeRole } from './realtime';

/** Name of the shared lock each visible console tab holds. */
export const VISIBLE_LOCK = 'smartscheduler-visible';

/** What a notification shows; `onClick` brings its tab and job forward. */
export interface NotificationRequest {
  title: string;
  body: string;
  tag: string;
  onClick: () => void;
}

/** The browser parts the notifier uses (injected, so that tests drive them). */
export interface NotifierDeps {
  role: () => RealtimeRole;
  /** Whether this tab or any other tab of the console is visible now. */
  anyTabVisible: () => Promise<boolean>;
  /** `granted`, `denied`, `default`, or `unsupported` when the browser has no Notification API. */
  permission: () => NotificationPermission | 'unsupported';
  show: (request: NotificationRequest) => void;
}

/** Decides whether an event for a watched job raises a notification, and raises it. */
export class WatchNotifier {
  constructor(private readonly deps: NotifierDeps) {}

  /** Resolves to whether a notification was shown. */
  async notify(request: NotificationRequest): Promise<boolean> {
    const { role, permission, anyTabVisible, show } = this.deps;
    if (permission() !== 'granted') return false;
    if (role() === 'follower') return false;
    if (await anyTabVisible()) return false;
    show(request);
    return true;
  }
}

/** Asks for permission when it was never asked (call from the click that sets the first star). */
export async function askPermissionOnce(): Promise<void> {
  if (typeof Notification === 'undefined' || Notification.permission !== 'default') return;
  try {
    await Notification.requestPermission();
  } catch {
    /* an old browser's callback-only API, or a refusal: no notifications, nothing else changes */
  }
}

interface LockQuery {
  query(): Promise<{ held?: { name?: string }[] }>;
  request(name: string, options: { mode: 'shared' }, callback: () => Promise<void>): Promise<void>;
}

function lockManager(): LockQuery | null {
  const locks = (globalThis.navigator as { locks?: LockQuery } | undefined)?.locks;
  return locks ?? null;
}

/**
 * Holds `VISIBLE_LOCK` while this tab is visible. Returns a function that stops doing so.
 * Without Web Locks, only this tab's own visibility counts (`browserNotifierDeps` falls back to it).
 */
export function holdVisibleLockWhileVisible(doc: Document = document): () => void {
  const locks = lockManager();
  if (!locks) return () => {};
  let release: (() => void) | null = null;
  const update = () => {
    const visible = doc.visibilityState === 'visible';
    if (visible && !release) {
      const held = new Promise<void>((resolve) => (release = resolve));
      void locks.request(VISIBLE_LOCK, { mode: 'shared' }, () => held).catch(() => {});
    } else if (!visible && release) {
      release();
      release = null;
    }
  };
  update();
  doc.addEventListener('visibilitychange', update);
  return () => {
    doc.removeEventListener('visibilitychange', update);
    release?.();
    release = null;
  };
}

/** The notifier's parts in a real browser. */
export function browserNotifierDeps(role: () => RealtimeRole, doc: Document = document): NotifierDeps {
  return {
    role,
    permission: () => (typeof Notification === 'undefined' ? 'unsupported' : Notification.permission),
    anyTabVisible: async () => {
      if (doc.visibilityState === 'visible') return true;
      const locks = lockManager();
      if (!locks) return false;
      try {
        const state = await locks.query();
        return (state.held ?? []).some((lock) => lock.name === VISIBLE_LOCK);
      } catch {
        return false;
      }
    },
    show: ({ title, body, tag, onClick }) => {
      const notification = new Notification(title, { body, tag });
      notification.onclick = () => {
        window.focus();
        onClick();
        notification.close();
      };
    },
  };
}
