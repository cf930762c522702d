import { useEffect, useState, type FormEvent } from 'react';
import { ApiError, type Api, type Me } from '../api';

interface Props {
  api: Api;
  notice: string | null;
  onSignedIn: (me: Me) => void;
}

export function SignIn({ api, notice, onSignedIn }: Props) {
  const [dispatchers, setDispatchers] = useState<Me[] | null>(null);
  const [token, setToken] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let cancelled = false;
    api
      .devDispatchers()
      .then((list) => !cancelled && setDispatchers(list))
      .catch(() => !cancelled && setDispatchers([])); // 404 without --dev: no picker
    return () => {
      cancelled = true;
    };
  }, [api]);

  async function run(action: () => Promise<Me>) {
    setBusy(true);
    setError(null);
    try {
      onSignedIn(await action());
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  function submitToken(e: FormEvent) {
    e.preventDefault();
    const t = token.trim();
    if (t) void run(() => api.signIn(t));
  }

  return (
    <main className="signin" data-testid="signin">
      <h1>SmartScheduler</h1>
      <p className="signin__lead">Sign in to the dispatch console.</p>
      {notice && (
        <p className="notice" role="status" data-testid="signin-notice">
          {notice}
        </p>
      )}
      {error && (
        <p className="error" role="alert" data-testid="error">
          {error}
        </p>
      )}
      {dispatchers && dispatchers.length > 0 && (
        <section className="card">
          <h2>Demo dispatchers</h2>
          <div className="signin__picker">
            {dispatchers.map((d) => (
              <button
                key={d.dispatcherId}
                type="button"
                disabled={busy}
                data-testid={`signin-${d.dispatcherId}`}
                onClick={() => void run(() => api.devSignIn(d.dispatcherId))}
              >
                <strong>{d.name}</strong>
                <span className="muted">{d.groups.join(', ')}</span>
              </button>
            ))}
          </div>
        </section>
      )}
      <section className="card">
        <h2>Sign in with a token</h2>
        <form onSubmit={submitToken}>
          <label htmlFor="token">Dispatcher token</label>
          <textarea
            id="token"
            data-testid="token-input"
            rows={4}
            value={token}
            placeholder="Paste the token printed by `smartscheduler token --dispatcher ID`"
            onChange={(e) => setToken(e.target.value)}
          />
          <button type="submit" disabled={busy || !token.trim()} data-testid="token-submit">
            Sign in
          </button>
        </form>
      </section>
    </main>
  );
}
