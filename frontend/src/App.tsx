import { useCallback, useEffect, useRef, useState } from 'react';
import { api as defaultApi, ApiError, type Api, type Me } from './api';
import { getRealtimeClient, type RealtimeClient } from './realtime';
import { useConnectionView, useRealtimeEvents } from './useRealtime';
import { ConnectionBadge } from './components/ConnectionBadge';
import { Console } from './components/Console';
import { SignIn } from './components/SignIn';

interface Props {
  api?: Api;
  client?: RealtimeClient;
}

type Auth = { kind: 'loading' } | { kind: 'signedOut' } | { kind: 'signedIn'; me: Me } | { kind: 'error'; message: string };

/** `region:north` → North; other group keys as they are. */
function groupNames(groups: string[]): string {
  const names = groups.map((g) => (g.startsWith('region:') ? g.charAt(7).toUpperCase() + g.slice(8) : g));
  return names.length === 1 ? names[0] : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}

export function App({ api = defaultApi, client = getRealtimeClient() }: Props) {
  const [auth, setAuth] = useState<Auth>({ kind: 'loading' });
  const [notice, setNotice] = useState<string | null>(null);
  // Why the server refuses this console's stream (too many streams), while it does.
  const [refusal, setRefusal] = useState<string | null>(null);
  // Why the server withdrew access (`access-revoked`), said on the page instead of an endless "reconnecting".
  const [revoked, setRevoked] = useState<string | null>(null);
  const groupsRef = useRef<string[]>([]);
  groupsRef.current = auth.kind === 'signedIn' ? auth.me.groups : groupsRef.current;
  const view = useConnectionView(client);
  const live = view.status === 'live';
  useEffect(() => {
    if (live) setRefusal(null);
  }, [live]);

  const checkSession = useCallback(async () => {
    setAuth({ kind: 'loading' });
    try {
      setAuth({ kind: 'signedIn', me: await api.me() });
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) setAuth({ kind: 'signedOut' });
      else setAuth({ kind: 'error', message: err instanceof ApiError ? err.message : String(err) });
    }
  }, [api]);

  useEffect(() => {
    void checkSession();
  }, [checkSession]);

  const signedInAs = auth.kind === 'signedIn' ? auth.me.dispatcherId : null;
  useEffect(() => {
    if (signedInAs === null) return;
    if (client.authExpired) client.resume();
    else client.start(signedInAs);
  }, [client, signedInAs]);

  const sessionExpired = useCallback(() => {
    setNotice('Session expired, sign in again');
    setAuth({ kind: 'signedOut' });
  }, []);

  /** Learns what is left (the server says why, not which groups) and says so; reconnects if some group is. */
  const accessWithdrawn = useCallback(async () => {
    const before = groupsRef.current;
    try {
      const me = await api.me();
      const lost = before.filter((g) => !me.groups.includes(g));
      const what = lost.length > 0 ? groupNames(lost) : 'the groups of this stream';
      setAuth({ kind: 'signedIn', me });
      if (me.groups.length === 0) {
        setRevoked(`You no longer belong to ${what}. Ask an administrator to add you to a group, then reload.`);
      } else {
        setRevoked(`You no longer belong to ${what}.`);
        client.resume();
      }
    } catch (err) {
      const disabled = err instanceof ApiError && err.code === 'dispatcher_disabled';
      if (err instanceof ApiError && (err.status === 401 || disabled)) {
        setNotice(disabled ? 'Your access was disabled by an administrator.' : 'Your sign-in was withdrawn: sign in again.');
        setAuth({ kind: 'signedOut' });
      } else {
        setRevoked('The server withdrew this console\'s access. Reload to try again.');
      }
    }
  }, [api, client]);

  useRealtimeEvents(client, {
    onAuthExpired: sessionExpired,
    onAccessRevoked: () => void accessWithdrawn(),
    // The stream was refused (EventSource hides the status): if it is our session,
    // stop retrying and ask for a new sign-in; otherwise the client keeps backing off.
    // A refusal that is not about the session (too many streams) is said on the page while the client
    // keeps backing off, so that the dispatcher knows to close other tabs or devices.
    onClosed: () => {
      api
        .me()
        .then(async () => {
          const why = await api.streamRefusal();
          if (why && (why.code === 'too_many_streams' || why.code === 'server_busy')) setRefusal(why.message);
        })
        .catch((err: unknown) => {
          if (err instanceof ApiError && err.status === 401 && !client.authExpired) {
            client.stop();
            sessionExpired();
          }
        });
    },
  });

  async function signOut() {
    try {
      await api.signOut();
    } catch {
      /* signed out locally anyway */
    }
    client.stop();
    setNotice(null);
    setAuth({ kind: 'signedOut' });
  }

  if (auth.kind === 'loading') return <p className="placeholder muted">Loading…</p>;
  if (auth.kind === 'error') {
    return (
      <main className="signin">
        <p className="error" role="alert" data-testid="error">
          {auth.message}
        </p>
        <button type="button" onClick={() => void checkSession()}>
          Retry
        </button>
      </main>
    );
  }
  if (auth.kind === 'signedOut') {
    return (
      <SignIn
        api={api}
        notice={notice}
        onSignedIn={(me) => {
          setNotice(null);
          setRevoked(null);
          setAuth({ kind: 'signedIn', me });
        }}
      />
    );
  }

  const { me } = auth;
  return (
    <div className="app">
      <header className="topbar">
        <span className="brand">SmartScheduler</span>
        <ConnectionBadge view={view} />
        <span className="topbar__spacer" />
        <span className="who">
          <span data-testid="whoami" title={me.dispatcherId}>
            {me.name} <span className="muted">({me.dispatcherId})</span>
          </span>
          <span className="groups" data-testid="groups">
            {me.groups.map((g) => (
              <span key={g} className="tag">
                {g}
              </span>
            ))}
          </span>
        </span>
        <button type="button" className="link" data-testid="signout" onClick={() => void signOut()}>
          Sign out
        </button>
      </header>
      {revoked && (
        <p className="notice notice--offline access-revoked" role="alert" data-testid="access-revoked">
          {revoked}
        </p>
      )}
      {refusal && (
        <p className="notice notice--offline stream-refused" role="alert" data-testid="stream-refused">
          {refusal} · retrying
        </p>
      )}
      <Console key={me.dispatcherId} me={me} api={api} client={client} connection={view} />
    </div>
  );
}
