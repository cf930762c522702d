import type { Job } from '../api';
import { byTimeWindow, formatWindow } from '../format';

interface Props {
  jobs: Job[];
  selectedJobId: string | null;
  badges: Record<string, number>;
  /** Starred job ids. */
  watched: ReadonlySet<string>;
  onSelect: (jobId: string) => void;
  onToggleWatch: (jobId: string) => void;
}

export function JobList({ jobs, selectedJobId, badges, watched, onSelect, onToggleWatch }: Props) {
  if (jobs.length === 0) {
    return (
      <p className="muted" data-testid="job-list">
        No open jobs in your regions.
      </p>
    );
  }
  return (
    <ul className="jobs" data-testid="job-list">
      {[...jobs].sort(byTimeWindow).map((job) => {
        const count = badges[job.id] ?? 0;
        const selected = job.id === selectedJobId;
        const starred = watched.has(job.id);
        return (
          <li key={job.id} className="jobs__item">
            <button
              type="button"
              className={`job${selected ? ' job--selected' : ''}`}
              aria-pressed={selected}
              data-testid={`job-row-${job.id}`}
              onClick={() => onSelect(job.id)}
            >
              <span className="job__title">
                {job.title}
                {count > 0 && (
                  <span
                    className="badge"
                    data-testid={`job-badge-${job.id}`}
                    title={`${count} recommendation update${count === 1 ? '' : 's'}`}
                  >
                    {count === 1 ? 'new' : `${count} new`}
                  </span>
                )}
              </span>
              <span className="job__meta">
                <span className="tag">{job.region}</span>
                <span>{formatWindow(job.windowStart, job.windowEnd)}</span>
              </span>
              {job.requiredSkills.length > 0 && (
                <span className="job__skills">{job.requiredSkills.join(' · ')}</span>
              )}
            </button>
            {/* A sibling of the row's button, not inside it: a button may not hold another. */}
            <button
              type="button"
              className={`star${starred ? ' star--on' : ''}`}
              aria-pressed={starred}
              aria-label={starred ? `Stop watching ${job.title}` : `Watch ${job.title}`}
              title={starred ? 'Watched: new recommendations notify you while the console is hidden' : 'Watch this job'}
              data-testid={`job-star-${job.id}`}
              onClick={() => onToggleWatch(job.id)}
            >
              {starred ? '★' : '☆'}
            </button>
          </li>
        );
      })}
    </ul>
  );
}
