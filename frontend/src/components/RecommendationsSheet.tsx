import { useEffect, useState } from 'react';
import type { Job, JobReceipts, Recommendation, RecommendationSet, ScoreParts, ScoreWeights } from '../api';
import type { ConnectionView } from '../connectionView';
import {
  formatAgo,
  formatDateTime,
  formatKm,
  formatMoment,
  formatScore,
  formatScoreFormula,
  scoreParts,
  SCORE_PART_KEYS,
  SCORE_WEIGHTS,
} from '../format';
import { seenBySummary } from '../seenBy';

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
  /** Who of the job's group has seen its latest set (delivery receipts); shown when it is the set on the
   * sheet. */
  receipts?: JobReceipts | null;
}

const FRESHNESS_TITLE: Record<ConnectionView['freshness'], string> = {
  live: 'Live: changes appear as they happen',
  stale: 'Live updates are interrupted: this may be out of date',
  paused: 'Offline: updates are paused',
};

/** The hover text of a score: the exact formula when the set carries parts, else what the distance tells. */
function explainScore(r: Recommendation, weights: ScoreWeights): string {
  if (r.scoreParts) return formatScoreFormula(r.score, r.scoreParts, weights);
  const { proximity, others } = scoreParts(r.score, r.distanceKm);
  return `${formatScore(proximity)} proximity (${formatKm(r.distanceKm)} km) + ${formatScore(others)} skill fit, rating and free capacity`;
}

const pct = (w: number) => `${Math.round(w * 100)}%`;

/** "Why this contractor": the four parts of one score, each a small bar of its 0..1 value with the value
 * beside it; the bar's title gives the part's weight. */
function ScorePartsBars({ parts, weights }: { parts: ScoreParts; weights: ScoreWeights }) {
  return (
    <ul className="score-parts" data-testid="score-parts" aria-label="Why this contractor">
      {SCORE_PART_KEYS.map((key) => (
        <li
          key={key}
          className="score-part"
          data-testid="score-part"
          data-part={key}
          title={`${key}: ${formatScore(parts[key])} of 1, weighs ${pct(weights[key])} of the score`}
        >
          {/* One space in the text ("proximity 0.92", as copied or read aloud); the bar sits in it. */}
          <span className="score-part__name">{key}</span>{' '}
          <span className="score-part__bar" aria-hidden="true">
            <span style={{ width: `${Math.round(parts[key] * 100)}%` }} />
          </span>
          <span className="score-part__value">{formatScore(parts[key])}</span>
        </li>
      ))}
    </ul>
  );
}

/** What the score is made of (the set's algorithm, weighted-v1), with the best contractor's score worked
 * out: exactly from its parts, or, for a set stored without parts, its proximity part from the distance. */
function ScoreExplanation({ best, weights }: { best: Recommendation; weights: ScoreWeights }) {
  return (
    <details className="score-explain" data-testid="score-explain">
      <summary>What the score is made of</summary>
      <p>
        A score from 0 to 1 among the contractors who hold every required skill, work during the window and are free
        then. It weighs:
      </p>
      <ul>
        <li>
          <strong>{pct(weights.proximity)} proximity</strong>: 1 at the job site, half at 15 km, a quarter at 45 km
        </li>
        <li>
          <strong>{pct(weights.skills)} skill fit</strong>: the share of the contractor's skills this job uses
          (specialists first)
        </li>
        <li>
          <strong>{pct(weights.rating)} rating</strong>: customer rating out of 5
        </li>
        <li>
          <strong>{pct(weights.capacity)} free capacity</strong>: jobs still free that day out of the daily maximum
        </li>
      </ul>
      <p data-testid="score-explain-best">{explainBest(best, weights)}</p>
    </details>
  );
}

function explainBest(best: Recommendation, weights: ScoreWeights): string {
  if (best.scoreParts) return `${best.name}: ${formatScoreFormula(best.score, best.scoreParts, weights)}.`;
  const { proximity, others } = scoreParts(best.score, best.distanceKm);
  return (
    `${best.name}: ${formatScore(proximity)} from proximity (${formatKm(best.distanceKm)} km) + ` +
    `${formatScore(others)} from skill fit, rating and free capacity = ${formatScore(best.score)}.`
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
  const { job, state, updatedAt, flashKey, generating, generateError, connection, onGenerate, receipts } = props;
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
      {state.kind === 'loaded' && <LoadedSet set={state.set} receipts={receipts ?? null} />}
    </section>
  );
}

/** "Seen by 2 of 3 north dispatchers · Dana not yet", then each member with the time a console of theirs
 * first showed the set. */
export function SeenBy({ receipts }: { receipts: JobReceipts }) {
  const seenCount = receipts.dispatchers.filter((d) => d.seenAt !== null).length;
  return (
    <div className="seen-by">
      <p
        className="muted seen-by__summary"
        data-testid="seen-by"
        data-seen-count={seenCount}
        data-total={receipts.dispatchers.length}
      >
        {seenBySummary(receipts)}
      </p>
      {receipts.dispatchers.length > 0 && (
        <ul className="seen-by__list" data-testid="seen-by-list" aria-label="Seen by">
          {receipts.dispatchers.map((d) => (
            <li
              key={d.dispatcherId}
              className={`seen-by__entry seen-by__entry--${d.seenAt ? 'seen' : 'not-yet'}`}
              data-testid="seen-by-entry"
              data-dispatcher-id={d.dispatcherId}
              data-seen-at={d.seenAt ?? ''}
              title={d.seenAt ? `${d.name} (${d.dispatcherId}) first saw this set ${formatDateTime(d.seenAt)}` : `${d.name} (${d.dispatcherId}) has not seen this set yet`}
            >
              <span className="seen-by__name">{d.name}</span>{' '}
              <span className="seen-by__when">{d.seenAt ? `seen ${formatMoment(d.seenAt)}` : 'not yet'}</span>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

function LoadedSet({ set, receipts }: { set: RecommendationSet; receipts: JobReceipts | null }) {
  // A set carries the weights of its own algorithm; one from an older server does not.
  const weights = set.scoreWeights ?? SCORE_WEIGHTS;
  // Receipts of another set (the sheet or the receipts are about to catch up) would say the wrong thing.
  const seenBy = receipts && receipts.position !== null && receipts.recommendationSetId === set.recommendationSetId ? receipts : null;
  return (
    <>
      <p className="muted sheet__generated" data-testid="sheet-generated">
        Generated {formatDateTime(set.generatedAt)} · set <code>{set.recommendationSetId.slice(0, 8)}</code>
      </p>
      {seenBy && <SeenBy receipts={seenBy} />}
      {set.recommendations.length === 0 ? (
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
            {set.recommendations.map((r) => (
              <tr key={r.contractorId} data-testid="sheet-row">
                <td>{r.rank}</td>
                <td>
                  {r.name}
                  {r.scoreParts && <ScorePartsBars parts={r.scoreParts} weights={weights} />}
                </td>
                <td className="num" data-testid="sheet-score" title={explainScore(r, weights)}>
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
      {set.recommendations.length > 0 && <ScoreExplanation best={set.recommendations[0]} weights={weights} />}
    </>
  );
}
