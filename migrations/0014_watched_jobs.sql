-- Watched jobs (issue 24, part 2): a dispatcher stars a job in the console, and while the console is hidden
-- new recommendations for it raise a desktop notification. Stored per dispatcher, not per browser, so the
-- star follows the dispatcher to every device. The events themselves are not touched: which jobs are watched
-- is the console's business, decided when it applies an event.

CREATE TABLE watched_jobs (
    dispatcher_id text NOT NULL REFERENCES dispatchers (id) ON DELETE CASCADE,
    job_id        uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    watched_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dispatcher_id, job_id)
);
CREATE INDEX watched_jobs_job ON watched_jobs (job_id);

COMMENT ON TABLE watched_jobs IS
    'Jobs a dispatcher watches (the star in the console''s job list): PUT/DELETE /api/jobs/{id}/watch, listed by '
    'GET /api/watches (only jobs of regions the dispatcher holds now). Removing the dispatcher or the job '
    'removes the watch.';
COMMENT ON COLUMN watched_jobs.watched_at IS 'When the star was set; for people, nothing is ordered by it.';
