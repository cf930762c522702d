//! Pure, deterministic ranking of contractors for a job. No I/O: the caller loads the candidates
//! (with their bookings near the job window) and gets back the ranked top [`MAX_RECOMMENDATIONS`].
//!
//! # Scoring (`weighted-v1`)
//!
//! A contractor is a **candidate** only if all of these hold:
//!
//! - they are active;
//! - they hold **every** skill the job requires;
//! - their daily working hours `[work_start, work_end)` (UTC) overlap the job window, on at least
//!   one day of the window, by at least 60 minutes, or by the whole window when it is shorter
//!   than that;
//! - they have fewer than `max_daily_jobs` bookings on the UTC day the window starts, and no
//!   booking overlaps the job window itself.
//!
//! Each candidate gets a score in `[0, 1]`, the weighted sum of four parts that are each in `[0, 1]`:
//!
//! | weight | part | formula |
//! |---|---|---|
//! | 0.45 | proximity | `1 / (1 + km / 15)`: 1 at the door, 0.5 at 15 km, 0.25 at 45 km |
//! | 0.20 | skill fit | share of the contractor's skills that the job uses (specialists first); 1 when the job needs no skill |
//! | 0.20 | rating | `rating / 5` |
//! | 0.15 | free capacity | `1 - bookings on the window's first day / max_daily_jobs` |
//!
//! `km` is the great-circle (haversine) distance from the contractor's home to the job site. The
//! ETA is `ceil(km × 1.3 / 40 km/h × 60) + 5` minutes: a road factor of 1.3 over the straight line,
//! 40 km/h on average, plus 5 minutes to park and get to the door.
//!
//! The four parts are kept with each recommendation ([`ScoreParts`], stored in
//! `recommendations.score_*` since migration 0016) so that a dispatcher can see why a contractor ranks
//! where they do: `score = Σ weight × part` ([`WEIGHTS`]), the score computed from the unrounded parts.
//!
//! Scores and parts are rounded to 4 decimals and distances to 2 (so the stored parts recombine to the
//! stored score within 0.0001). Candidates are ordered by score
//! (highest first), then distance (nearest first), then contractor id, so the same inputs always
//! give the same ranking. The best 10 are kept.

use chrono::{DateTime, Duration, NaiveTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::job::Location;

/// Name and version of this algorithm, stored in `recommendation_sets.algorithm`.
pub const ALGORITHM: &str = "weighted-v1";
/// Most recommendations kept per set.
pub const MAX_RECOMMENDATIONS: usize = 10;

/// Weight of proximity, `1 / (1 + km / 15)`.
pub const WEIGHT_PROXIMITY: f64 = 0.45;
/// Weight of skill fit, the share of the contractor's skills that the job uses.
pub const WEIGHT_SKILL_FIT: f64 = 0.20;
/// Weight of the customer rating, `rating / 5`.
pub const WEIGHT_RATING: f64 = 0.20;
/// Weight of free capacity on the window's first day, `1 - bookings / max_daily_jobs`.
pub const WEIGHT_CAPACITY: f64 = 0.15;

/// The four weights of `weighted-v1`, as the API returns them (`scoreWeights`). They sum to 1.
pub const WEIGHTS: ScoreWeights = ScoreWeights {
    proximity: WEIGHT_PROXIMITY,
    skills: WEIGHT_SKILL_FIT,
    rating: WEIGHT_RATING,
    capacity: WEIGHT_CAPACITY,
};

/// The weights of a stored set's algorithm, or `None` for an algorithm this build does not know (a
/// set written by a newer or retired version: its parts still display, their weights are not claimed).
pub fn weights_of(algorithm: &str) -> Option<ScoreWeights> {
    (algorithm == ALGORITHM).then_some(WEIGHTS)
}

/// The weight of each part of the score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreWeights {
    /// Weight of [`ScoreParts::proximity`].
    pub proximity: f64,
    /// Weight of [`ScoreParts::skills`].
    pub skills: f64,
    /// Weight of [`ScoreParts::rating`].
    pub rating: f64,
    /// Weight of [`ScoreParts::capacity`].
    pub capacity: f64,
}

/// What one contractor's score is made of: four parts, each in `[0, 1]` (the module doc gives the
/// formulas). `score = Σ weight × part`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreParts {
    /// `1 / (1 + km / 15)`.
    pub proximity: f64,
    /// Skill fit: the share of the contractor's skills that the job uses.
    pub skills: f64,
    /// `rating / 5`.
    pub rating: f64,
    /// Free capacity on the window's first day, `1 - bookings / max_daily_jobs`.
    pub capacity: f64,
}

impl ScoreParts {
    /// The parts, each forced into `[0, 1]` (a non-finite value counts as 0): the database refuses
    /// anything else (`recommendations.score_*` CHECKs), and a refused row would fail the whole generation.
    pub fn new(proximity: f64, skills: f64, rating: f64, capacity: f64) -> Self {
        Self { proximity: unit(proximity), skills: unit(skills), rating: unit(rating), capacity: unit(capacity) }
    }

    /// `Σ weight × part`, unrounded.
    pub fn weighted_sum(&self, w: &ScoreWeights) -> f64 {
        w.proximity * self.proximity + w.skills * self.skills + w.rating * self.rating + w.capacity * self.capacity
    }

    /// Each part rounded to 4 decimals (still in `[0, 1]`: rounding cannot leave it).
    fn rounded(self) -> Self {
        Self {
            proximity: round_to(self.proximity, 4),
            skills: round_to(self.skills, 4),
            rating: round_to(self.rating, 4),
            capacity: round_to(self.capacity, 4),
        }
    }
}

/// `x` within `[0, 1]`; NaN and infinities (which `clamp` would keep or propagate) become 0.
fn unit(x: f64) -> f64 {
    if x.is_finite() { x.clamp(0.0, 1.0) } else { 0.0 }
}

/// Distance at which proximity is worth half (km).
const PROXIMITY_HALF_KM: f64 = 15.0;
/// Road distance over great-circle distance.
const ROAD_FACTOR: f64 = 1.3;
/// Average travel speed (km/h).
const AVERAGE_SPEED_KMH: f64 = 40.0;
/// Fixed minutes added to every ETA (parking, walking to the door).
const ETA_OVERHEAD_MINUTES: i32 = 5;
/// Minimum overlap of working hours and the job window on one day.
const MIN_OVERLAP: TimeDelta = TimeDelta::minutes(60);
/// Mean Earth radius (km).
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// What scoring needs to know about the job.
#[derive(Debug, Clone)]
pub struct JobNeeds<'a> {
    /// The job site.
    pub location: Location,
    /// Skills a candidate must all hold.
    pub required_skills: &'a [String],
    /// When the work may start.
    pub window_start: DateTime<Utc>,
    /// When it must end.
    pub window_end: DateTime<Utc>,
}

/// Work already booked for a contractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booking {
    /// When the booked work starts.
    pub starts_at: DateTime<Utc>,
    /// When it ends.
    pub ends_at: DateTime<Utc>,
}

/// A contractor as scoring sees it. `bookings` needs to hold at least the bookings that touch the
/// window's first UTC day or the job window; others are ignored.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The contractor's id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Where the contractor sets out from (distance and ETA are measured from here).
    pub home: Location,
    /// Skills held.
    pub skills: Vec<String>,
    /// Customer rating, 0 to 5.
    pub rating: f64,
    /// Start of the working day (UTC).
    pub work_start: NaiveTime,
    /// End of the working day (UTC).
    pub work_end: NaiveTime,
    /// Most jobs per day; a candidate with this many bookings on the window's first day is full.
    pub max_daily_jobs: i32,
    /// Inactive contractors are never recommended.
    pub active: bool,
    /// Booked work (see above for which bookings are needed).
    pub bookings: Vec<Booking>,
}

/// One ranked contractor (rank = position in the returned list + 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The contractor's id.
    pub contractor_id: Uuid,
    /// Display name.
    pub name: String,
    /// Weighted score in `[0, 1]`, 4 decimals.
    pub score: f64,
    /// Great-circle distance from home to the job site, 2 decimals.
    pub distance_km: f64,
    /// Minutes to reach the job site from home (the module doc says how they are estimated).
    pub eta_minutes: i32,
    /// The job's required skills that the contractor holds (all of them, in the job's order).
    pub matched_skills: Vec<String>,
    /// The four parts of `score`, 4 decimals each.
    pub parts: ScoreParts,
}

/// Ranks `candidates` for `job`: filters out those who cannot take it, scores the rest and returns
/// the best [`MAX_RECOMMENDATIONS`], best first.
pub fn rank(job: &JobNeeds<'_>, candidates: &[Candidate]) -> Vec<Scored> {
    let mut scored: Vec<(Scored, f64)> = candidates.iter().filter_map(|c| score_candidate(job, c)).collect();
    scored.sort_by(|(a, a_km), (b, b_km)| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a_km.total_cmp(b_km))
            .then_with(|| a.contractor_id.cmp(&b.contractor_id))
    });
    scored.truncate(MAX_RECOMMENDATIONS);
    scored.into_iter().map(|(s, _)| s).collect()
}

/// Scores one contractor, or `None` when they cannot take the job. The second value is the
/// unrounded distance, used to break ties.
fn score_candidate(job: &JobNeeds<'_>, c: &Candidate) -> Option<(Scored, f64)> {
    if !c.active || c.max_daily_jobs <= 0 {
        return None;
    }
    if !job.required_skills.iter().all(|s| c.skills.contains(s)) {
        return None;
    }
    if !hours_overlap_window(c.work_start, c.work_end, job.window_start, job.window_end) {
        return None;
    }
    let workload = first_day_workload(&c.bookings, job.window_start);
    if workload >= c.max_daily_jobs as usize {
        return None;
    }
    let clashes = c.bookings.iter().any(|b| b.starts_at < job.window_end && b.ends_at > job.window_start);
    if clashes {
        return None;
    }

    let km = haversine_km(c.home, job.location);
    let parts = ScoreParts::new(
        1.0 / (1.0 + km / PROXIMITY_HALF_KM),
        skill_fit(job.required_skills, &c.skills),
        c.rating / 5.0,
        1.0 - workload as f64 / f64::from(c.max_daily_jobs),
    );
    let score = round_to(parts.weighted_sum(&WEIGHTS).clamp(0.0, 1.0), 4);

    Some((
        Scored {
            contractor_id: c.id,
            name: c.name.clone(),
            score,
            distance_km: round_to(km, 2),
            eta_minutes: eta_minutes(km),
            matched_skills: job.required_skills.to_vec(),
            parts: parts.rounded(),
        },
        km,
    ))
}

/// Share of the contractor's skills that the job uses: a specialist whose every skill is needed
/// scores 1, a generalist less. 1 when the job needs no skill.
fn skill_fit(required: &[String], held: &[String]) -> f64 {
    if required.is_empty() || held.is_empty() {
        return 1.0;
    }
    let used = held.iter().filter(|s| required.contains(s)).count();
    (used as f64 / held.len() as f64).clamp(0.0, 1.0)
}

/// Whether daily hours `[work_start, work_end)` overlap `[start, end)` on some UTC day by at least
/// [`MIN_OVERLAP`], or by the whole window when it is shorter than that.
pub fn hours_overlap_window(
    work_start: NaiveTime,
    work_end: NaiveTime,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> bool {
    if end <= start || work_end <= work_start {
        return false;
    }
    let needed = (end - start).min(MIN_OVERLAP);
    let last_day = (end - TimeDelta::nanoseconds(1)).date_naive();
    let mut day = start.date_naive();
    while day <= last_day {
        let shift_start = day.and_time(work_start).and_utc();
        let shift_end = day.and_time(work_end).and_utc();
        let overlap = shift_end.min(end) - shift_start.max(start);
        if overlap >= needed {
            return true;
        }
        match day.succ_opt() {
            Some(next) => day = next,
            None => break,
        }
    }
    false
}

/// Bookings that touch the UTC day on which `window_start` falls.
fn first_day_workload(bookings: &[Booking], window_start: DateTime<Utc>) -> usize {
    let day_start = window_start.date_naive().and_time(NaiveTime::MIN).and_utc();
    let day_end = day_start + Duration::days(1);
    bookings.iter().filter(|b| b.starts_at < day_end && b.ends_at > day_start).count()
}

/// Great-circle distance in km.
pub fn haversine_km(a: Location, b: Location) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let d_lat = lat2 - lat1;
    let d_lon = (b.lon - a.lon).to_radians();
    let h = (d_lat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (d_lon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().clamp(0.0, 1.0).asin()
}

/// `ceil(km × 1.3 / 40 km/h × 60) + 5` minutes.
pub fn eta_minutes(km: f64) -> i32 {
    let minutes = km.max(0.0) * ROAD_FACTOR / AVERAGE_SPEED_KMH * 60.0;
    // The epsilon keeps an exact whole number of minutes from rounding up through float noise.
    let driving = (minutes - 1e-9).ceil().max(0.0);
    // Saturating: a distance on Earth is at most ~20,000 km, far below i32::MAX minutes.
    driving.min(f64::from(i32::MAX - ETA_OVERHEAD_MINUTES)) as i32 + ETA_OVERHEAD_MINUTES
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

#[cfg(test)]
mod tests;
