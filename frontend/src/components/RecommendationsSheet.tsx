import { useEffect, useState } from 'react';
import type { Job, RecommendationSet } from '../api';
import type { ConnectionView } from '../connectionView';
import { formatAgo, formatDateTime, formatKm, formatScore, scoreParts, SCORE_WEIGHTS } from '../format';

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
  /** The page's view of the connection: the notice and the colour of the "Updated" cue. */
  connection: ConnectionView;
  onGenerate: () => void;
}

const FRESHNESS_TITLE: Record<ConnectionView['freshness'], string> = {
  live: 'Live: changes appear as they happen',
  stale: 'Live updates are interrupted: this may be out of date',
  paused: 'Offline: updates are paused',
};

function explainScore(score: number, distanceKm: number): string {
  const { proximity, others } = scoreParts(score, distanceKm);
  return `${formatScore(proximity)} proximity (${formatKm(distanceKm)} km) + ${formatScore(others)} skill fit, rating and free capacity`;
}

const pct = (w: number) => `${Math.round(w * 100)}%`;

/** What the score is made of (the server's weighted-v1 algorithm), with the best contractor's
 * proximity part worked out. */
function ScoreExplanation({ best }: { best: { name: string; score: number; distanceKm: number } }) {
  const { proximity, others } = scoreParts(best.score, best.distanceKm);
  return (
    <details className="score-explain" data-testid="score-explain">
      <summary>What the score is made of</summary>
      <p>
        A score from 0 to 1 among the contractors who hold every required skill, work during the window and are
        free then. It weighs:
      </p>
      <ul>
        <li>
          <strong>{pct(SCORE_WEIGHTS.proximity)} proximity</strong>: 1 at the job site, half at 15 km, a quarter at
          45 km
        </li>
        <li>
          <strong>{pct(SCORE_WEIGHTS.skillFit)} skill fit</strong>: the share of the contractor's skills this job uses
          (specialists first)
        </li>
        <li>
          <strong>{pct(SCORE_WEIGHTS.rating)} rating</strong>: customer rating out of 5
        </li>
        <li>
          <strong>{pct(SCORE_WEIGHTS.capacity)} free capacity</strong>: jobs still free that day out of the daily
          maximum
        </li>
      </ul>
      <p data-testid="score-explain-best">
        {best.name}: {formatScore(proximity)} from proximity ({formatKm(best.distanceKm)} km) +{' '}
        {formatScore(others)} from skill fit, rating and free capacity = {formatScore(best.score)}.
      </p>
    </details>
  );
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
  const { job, state, updatedAt, flashKey, generating, generateError, connection, onGenerate } = props;
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
            <span
              className={`updated updated--${connection.freshness}`}
              data-testid="sheet-updated"
              data-updated-at={updatedAt}
              data-freshness={connection.freshness}
              title={FRESHNESS_TITLE[connection.freshness]}
            >
              Updated {formatAgo(updatedAt, Math.max(now, updatedAt))}
            </span>
          )}
          <button type="button" data-testid="generate" disabled={generating} onClick={onGenerate}>
            {generating ? 'Generating…' : 'Generate recommendations'}
          </button>
        </div>
      </header>
      {connection.notice && (
        <p className={`notice notice--small notice--${connection.status}`} data-testid="connection-notice">
          {connection.notice}
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
                  <th scope="col" className="num col-optional">
                    Distance (km)
                  </th>
                  <th scope="col" className="col-optional">
                    Matched skills
                  </th>
                </tr>
              </thead>
              <tbody>
                {state.set.recommendations.map((r) => (
                  <tr key={r.contractorId} data-testid="sheet-row">
                    <td>{r.rank}</td>
                    <td>{r.name}</td>
                    <td className="num" title={explainScore(r.score, r.distanceKm)}>
                      {formatScore(r.score)}
                    </td>
                    <td className="num">{r.etaMinutes}</td>
                    <td className="num col-optional">{formatKm(r.distanceKm)}</td>
                    <td className="col-optional">
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
          {state.set.recommendations.length > 0 && <ScoreExplanation best={state.set.recommendations[0]} />}
        </>
      )}
    </section>
  );
}
