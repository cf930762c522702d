import { useEffect, useState } from 'react';
import type { Job, RecommendationSet } from '../api';
import { formatAgo, formatDateTime, formatKm, formatScore } from '../format';

export type SheetState =
  | { kind: 'loading' }
  | { kind: 'none' }
  | { kind: 'loaded'; set: RecommendationSet }
  | { kind: 'error'; message: string };

interface Props {
  job: Job;
  state: SheetState;
  /** Time (ms) of the last realtime update of this sheet, or null. */
  updatedAt: number | null;
  /** Changes on every realtime update, to replay the highlight. */
  flashKey: number;
  generating: boolean;
  generateError: string | null;
  degraded: boolean;
  onGenerate: () => void;
}

function useNow(intervalMs: number, enabled: boolean): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!enabled) return;
    setNow(Date.now());
    const t = setInterval(() => setNow(Date.now()), intervalMs);
    return () => clearInterval(t);
  }, [intervalMs, enabled]);
  return now;
}

export function RecommendationsSheet(props: Props) {
  const { job, state, updatedAt, flashKey, generating, generateError, degraded, onGenerate } = props;
  const now = useNow(5000, updatedAt !== null);

  return (
    <section
      key={flashKey}
      className={`sheet${updatedAt !== null && flashKey > 0 ? ' sheet--flash' : ''}`}
      data-testid="sheet"
      data-set-id={state.kind === 'loaded' ? state.set.recommendationSetId : ''}
      aria-live="polite"
    >
      <header className="sheet__head">
        <div>
          <h2>{job.title}</h2>
          <p className="muted">
            {job.region} · needs {job.requiredSkills.join(', ') || 'no particular skill'}
          </p>
        </div>
        <div className="sheet__actions">
          {updatedAt !== null && (
            <span className="updated" data-testid="sheet-updated" data-updated-at={updatedAt}>
              Updated {formatAgo(updatedAt, Math.max(now, updatedAt))}
            </span>
          )}
          <button type="button" data-testid="generate" disabled={generating} onClick={onGenerate}>
            {generating ? 'Generating…' : 'Generate recommendations'}
          </button>
        </div>
      </header>
      {degraded && (
        <p className="notice notice--small" data-testid="degraded">
          Live updates are interrupted; refreshing every few seconds.
        </p>
      )}
      {generateError && (
        <p className="error" role="alert" data-testid="error">
          {generateError}
        </p>
      )}
      {state.kind === 'loading' && <p className="muted">Loading recommendations…</p>}
      {state.kind === 'none' && (
        <p className="muted" data-testid="sheet-empty">
          No recommendations yet
        </p>
      )}
      {state.kind === 'error' && (
        <p className="error" role="alert" data-testid="error">
          {state.message}
        </p>
      )}
      {state.kind === 'loaded' && (
        <>
          <p className="muted sheet__generated" data-testid="sheet-generated">
            Generated {formatDateTime(state.set.generatedAt)} · set{' '}
            <code>{state.set.recommendationSetId.slice(0, 8)}</code>
          </p>
          {state.set.recommendations.length === 0 ? (
            <p className="muted">No suitable contractor found.</p>
          ) : (
            <table className="table">
              <thead>
                <tr>
                  <th scope="col">#</th>
                  <th scope="col">Contractor</th>
                  <th scope="col" className="num">
                    Score
                  </th>
                  <th scope="col" className="num">
                    ETA (min)
                  </th>
                  <th scope="col" className="num">
                    Distance (km)
                  </th>
                  <th scope="col">Matched skills</th>
                </tr>
              </thead>
              <tbody>
                {state.set.recommendations.map((r) => (
                  <tr key={r.contractorId} data-testid="sheet-row">
                    <td>{r.rank}</td>
                    <td>{r.name}</td>
                    <td className="num">{formatScore(r.score)}</td>
                    <td className="num">{r.etaMinutes}</td>
                    <td className="num">{formatKm(r.distanceKm)}</td>
                    <td>
                      {r.matchedSkills.map((s) => (
                        <span key={s} className="tag">
                          {s}
                        </span>
                      ))}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}
    </section>
  );
}
