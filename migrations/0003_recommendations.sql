-- The dispatch domain: regions, contractors, jobs, and the recommendation sets generated for jobs.

CREATE TABLE regions (
    key         text PRIMARY KEY CHECK (key ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    name        text NOT NULL,
    center_lat  double precision NOT NULL CHECK (center_lat BETWEEN -90 AND 90),
    center_lon  double precision NOT NULL CHECK (center_lon BETWEEN -180 AND 180)
);
COMMENT ON TABLE regions IS 'Service regions. Events about a job of region R go to the group region:R.';
COMMENT ON COLUMN regions.key IS 'Short key, for example north.';
COMMENT ON COLUMN regions.name IS 'Display name.';
COMMENT ON COLUMN regions.center_lat IS 'Latitude of the region centre (degrees).';
COMMENT ON COLUMN regions.center_lon IS 'Longitude of the region centre (degrees).';

CREATE TABLE contractors (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                 text NOT NULL,
    region               text NOT NULL REFERENCES regions (key),
    home_lat             double precision NOT NULL CHECK (home_lat BETWEEN -90 AND 90),
    home_lon             double precision NOT NULL CHECK (home_lon BETWEEN -180 AND 180),
    skills               text[] NOT NULL DEFAULT '{}',
    rating               numeric(3, 2) NOT NULL DEFAULT 4.0 CHECK (rating BETWEEN 0 AND 5),
    work_start           time NOT NULL DEFAULT '08:00',
    work_end             time NOT NULL DEFAULT '17:00',
    max_daily_jobs       integer NOT NULL DEFAULT 4 CHECK (max_daily_jobs > 0),
    active               boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (work_start < work_end)
);
CREATE INDEX contractors_region_active ON contractors (region) WHERE active;
COMMENT ON TABLE contractors IS 'Field technicians that recommendations rank.';
COMMENT ON COLUMN contractors.name IS 'Display name.';
COMMENT ON COLUMN contractors.region IS 'Home region; only contractors of the job''s region are considered.';
COMMENT ON COLUMN contractors.home_lat IS 'Latitude of the start location (degrees).';
COMMENT ON COLUMN contractors.home_lon IS 'Longitude of the start location (degrees).';
COMMENT ON COLUMN contractors.skills IS 'Skills held, for example {hvac,electrical}.';
COMMENT ON COLUMN contractors.rating IS 'Customer rating 0 to 5.';
COMMENT ON COLUMN contractors.work_start IS 'Start of daily working hours (UTC).';
COMMENT ON COLUMN contractors.work_end IS 'End of daily working hours (UTC).';
COMMENT ON COLUMN contractors.max_daily_jobs IS 'Most assignments the contractor takes in one day.';
COMMENT ON COLUMN contractors.active IS 'False for contractors who left; they are never recommended.';
COMMENT ON COLUMN contractors.created_at IS 'When the row was added.';

CREATE TABLE jobs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title            text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    region           text NOT NULL REFERENCES regions (key),
    required_skills  text[] NOT NULL DEFAULT '{}',
    lat              double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon              double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    window_start     timestamptz NOT NULL,
    window_end       timestamptz NOT NULL,
    status           text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'assigned', 'done', 'cancelled')),
    created_by       text REFERENCES dispatchers (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (window_end > window_start)
);
CREATE INDEX jobs_region_created ON jobs (region, created_at DESC);
COMMENT ON TABLE jobs IS 'Work to dispatch. Recommendations rank contractors for a job.';
COMMENT ON COLUMN jobs.title IS 'Short description.';
COMMENT ON COLUMN jobs.region IS 'Region of the job; its events go to group region:<region>.';
COMMENT ON COLUMN jobs.required_skills IS 'Skills a contractor must all hold to be recommended.';
COMMENT ON COLUMN jobs.lat IS 'Latitude of the job site (degrees).';
COMMENT ON COLUMN jobs.lon IS 'Longitude of the job site (degrees).';
COMMENT ON COLUMN jobs.window_start IS 'Earliest start of the work.';
COMMENT ON COLUMN jobs.window_end IS 'Latest end of the work.';
COMMENT ON COLUMN jobs.status IS 'open, assigned, done or cancelled.';
COMMENT ON COLUMN jobs.created_by IS 'Dispatcher who created the job.';
COMMENT ON COLUMN jobs.created_at IS 'When the job was created.';

CREATE TABLE contractor_assignments (
    contractor_id  uuid NOT NULL REFERENCES contractors (id) ON DELETE CASCADE,
    job_id         uuid REFERENCES jobs (id) ON DELETE SET NULL,
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz NOT NULL,
    CHECK (ends_at > starts_at)
);
CREATE INDEX contractor_assignments_contractor ON contractor_assignments (contractor_id, starts_at);
COMMENT ON TABLE contractor_assignments IS 'Work already booked for a contractor (their current workload).';
COMMENT ON COLUMN contractor_assignments.contractor_id IS 'The contractor.';
COMMENT ON COLUMN contractor_assignments.job_id IS 'The job, when it is one of ours.';
COMMENT ON COLUMN contractor_assignments.starts_at IS 'Start of the booking.';
COMMENT ON COLUMN contractor_assignments.ends_at IS 'End of the booking.';

CREATE TABLE recommendation_sets (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id           uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    generated_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    generated_by     text REFERENCES dispatchers (id) ON DELETE SET NULL,
    algorithm        text NOT NULL,
    candidates       integer NOT NULL CHECK (candidates >= 0)
);
CREATE INDEX recommendation_sets_job_latest ON recommendation_sets (job_id, generated_at DESC);
COMMENT ON TABLE recommendation_sets IS
    'One generation of recommendations for a job. Its RecommendationReady outbox row commits in the same transaction.';
COMMENT ON COLUMN recommendation_sets.job_id IS 'The job.';
COMMENT ON COLUMN recommendation_sets.generated_at IS 'When it was generated; the latest set is the job''s current one.';
COMMENT ON COLUMN recommendation_sets.generated_by IS 'Dispatcher who asked for it.';
COMMENT ON COLUMN recommendation_sets.algorithm IS 'Scoring algorithm and weights version, for example weighted-v1.';
COMMENT ON COLUMN recommendation_sets.candidates IS 'Contractors of the region that were considered.';

CREATE TABLE recommendations (
    set_id          uuid NOT NULL REFERENCES recommendation_sets (id) ON DELETE CASCADE,
    rank            integer NOT NULL CHECK (rank >= 1),
    contractor_id   uuid NOT NULL REFERENCES contractors (id),
    score           double precision NOT NULL CHECK (score BETWEEN 0 AND 1),
    distance_km     double precision NOT NULL CHECK (distance_km >= 0),
    eta_minutes     integer NOT NULL CHECK (eta_minutes >= 0),
    matched_skills  text[] NOT NULL,
    PRIMARY KEY (set_id, rank)
);
COMMENT ON TABLE recommendations IS 'The ranked contractors of one recommendation set.';
COMMENT ON COLUMN recommendations.set_id IS 'The recommendation set.';
COMMENT ON COLUMN recommendations.rank IS '1 is the best match.';
COMMENT ON COLUMN recommendations.contractor_id IS 'The recommended contractor.';
COMMENT ON COLUMN recommendations.score IS 'Weighted score 0 to 1 (see README, Scoring).';
COMMENT ON COLUMN recommendations.distance_km IS 'Great-circle distance from the contractor''s home to the job.';
COMMENT ON COLUMN recommendations.eta_minutes IS 'Estimated travel time.';
COMMENT ON COLUMN recommendations.matched_skills IS 'The job''s required skills that the contractor holds.';
