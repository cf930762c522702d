-- Score parts (issue 24, part 3, "Why this contractor"): each recommendation keeps the four parts its score
-- is made of, so that the console can show why a contractor ranks where they do. score = Σ weight × part,
-- with the weights of the set's algorithm (weighted-v1: 0.45 proximity, 0.20 skills, 0.20 rating,
-- 0.15 capacity; see src/recommendations/scoring.rs).
--
-- Rows stored before this migration keep NULL in all four: the API returns "scoreParts": null for them and
-- the console shows only their score. Nothing is backfilled: the inputs (bookings, ratings) have changed
-- since, so a recomputed part would not explain the stored score.
--
-- Nullable columns without a default are a catalogue change only (no table rewrite). The CHECKs are added
-- NOT VALID so that the migration does not scan the whole table while it holds the ACCESS EXCLUSIVE lock
-- of ALTER TABLE (generations would wait for it): every new or updated row is checked all the same, and
-- the existing rows are all NULL, which the checks accept. A DBA may run, at any time and without blocking
-- writes, ALTER TABLE recommendations VALIDATE CONSTRAINT <name> for each of the five.

ALTER TABLE recommendations
    ADD COLUMN score_proximity double precision,
    ADD COLUMN score_skills    double precision,
    ADD COLUMN score_rating    double precision,
    ADD COLUMN score_capacity  double precision;

-- BETWEEN refuses NaN and ±Infinity too (PostgreSQL orders NaN above every number); NULL passes.
ALTER TABLE recommendations
    ADD CONSTRAINT recommendations_score_proximity_range CHECK (score_proximity BETWEEN 0 AND 1) NOT VALID,
    ADD CONSTRAINT recommendations_score_skills_range CHECK (score_skills BETWEEN 0 AND 1) NOT VALID,
    ADD CONSTRAINT recommendations_score_rating_range CHECK (score_rating BETWEEN 0 AND 1) NOT VALID,
    ADD CONSTRAINT recommendations_score_capacity_range CHECK (score_capacity BETWEEN 0 AND 1) NOT VALID,
    ADD CONSTRAINT recommendations_score_parts_all_or_none
        CHECK (num_nulls(score_proximity, score_skills, score_rating, score_capacity) IN (0, 4)) NOT VALID;

COMMENT ON COLUMN recommendations.score_proximity IS
    'Score part 0 to 1: 1 / (1 + km / 15) (weight 0.45 in weighted-v1). NULL on rows stored before migration 0016.';
COMMENT ON COLUMN recommendations.score_skills IS
    'Score part 0 to 1: share of the contractor''s skills the job uses (weight 0.20 in weighted-v1). NULL on rows stored before migration 0016.';
COMMENT ON COLUMN recommendations.score_rating IS
    'Score part 0 to 1: rating / 5 (weight 0.20 in weighted-v1). NULL on rows stored before migration 0016.';
COMMENT ON COLUMN recommendations.score_capacity IS
    'Score part 0 to 1: 1 - bookings that day / max_daily_jobs (weight 0.15 in weighted-v1). NULL on rows stored before migration 0016.';
COMMENT ON COLUMN recommendations.score IS
    'Weighted score 0 to 1: the sum of weight × part over the score_* columns (within 0.0001; 4 decimals), with the weights of recommendation_sets.algorithm.';
