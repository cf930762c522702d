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
mod tests {
    use super::*;
    use chrono::TimeZone;

    const SITE: Location = Location { lat: 47.60, lon: -122.30 };

    fn at(day: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 6, day, h, m, 0).unwrap()
    }

    fn t(h: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, 0, 0).unwrap()
    }

    fn skills(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    /// A contractor `km_north` km north of the site, 08:00–17:00, rating 4, hvac only.
    fn contractor(n: u128, km_north: f64) -> Candidate {
        Candidate {
            id: Uuid::from_u128(n),
            name: format!("C{n}"),
            home: Location { lat: SITE.lat + km_north / 111.195, lon: SITE.lon },
            skills: skills(&["hvac"]),
            rating: 4.0,
            work_start: t(8),
            work_end: t(17),
            max_daily_jobs: 4,
            active: true,
            bookings: vec![],
        }
    }

    fn job(required: &[String]) -> JobNeeds<'_> {
        JobNeeds { location: SITE, required_skills: required, window_start: at(10, 9, 0), window_end: at(10, 12, 0) }
    }

    fn ids(r: &[Scored]) -> Vec<u128> {
        r.iter().map(|s| s.contractor_id.as_u128()).collect()
    }

    #[test]
    fn only_contractors_with_every_required_skill_are_kept() {
        let req = skills(&["hvac", "electrical"]);
        let mut both = contractor(1, 1.0);
        both.skills = skills(&["electrical", "hvac", "plumbing"]);
        let hvac_only = contractor(2, 1.0);
        let mut elec_only = contractor(3, 1.0);
        elec_only.skills = skills(&["electrical"]);
        let r = rank(&job(&req), &[both, hvac_only, elec_only]);
        assert_eq!(ids(&r), vec![1]);
        assert_eq!(r[0].matched_skills, req);
    }

    #[test]
    fn a_job_without_skills_accepts_everyone_with_full_skill_fit() {
        let mut a = contractor(1, 2.0);
        a.skills = vec![];
        let mut b = contractor(2, 2.0);
        b.skills = skills(&["hvac", "roofing"]);
        let r = rank(&job(&[]), &[a, b]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].score, r[1].score, "skill fit is 1 for both");
    }

    #[test]
    fn inactive_contractors_are_never_recommended() {
        let mut c = contractor(1, 1.0);
        c.active = false;
        assert!(rank(&job(&skills(&["hvac"])), &[c]).is_empty());
    }

    #[test]
    fn working_hours_must_overlap_the_window_by_an_hour() {
        let req = skills(&["hvac"]);
        // Window 09:00-12:00.
        let mut late = contractor(1, 1.0);
        (late.work_start, late.work_end) = (t(11), t(19)); // 60 min overlap: ok
        let mut too_late = contractor(2, 1.0);
        too_late.work_start = NaiveTime::from_hms_opt(11, 30, 0).unwrap(); // 30 min: no
        too_late.work_end = t(20);
        let mut night = contractor(3, 1.0);
        (night.work_start, night.work_end) = (t(18), t(23)); // none
        let r = rank(&job(&req), &[late, too_late, night]);
        assert_eq!(ids(&r), vec![1]);
    }

    #[test]
    fn a_window_shorter_than_an_hour_must_be_covered_whole() {
        let req = skills(&["hvac"]);
        let mut j = job(&req);
        (j.window_start, j.window_end) = (at(10, 16, 30), at(10, 17, 0));
        let inside = contractor(1, 1.0); // 08-17 covers 16:30-17:00
        let mut partial = contractor(2, 1.0);
        partial.work_end = NaiveTime::from_hms_opt(16, 45, 0).unwrap();
        assert_eq!(ids(&rank(&j, &[inside, partial])), vec![1]);
    }

    #[test]
    fn a_multi_day_window_needs_the_overlap_on_one_day() {
        // Window from 20:00 on the 10th to 09:30 on the 11th: only the 11th's 08:00-09:30 overlaps.
        let (start, end) = (at(10, 20, 0), at(11, 9, 30));
        assert!(hours_overlap_window(t(8), t(17), start, end));
        assert!(!hours_overlap_window(t(9), t(17), start, end)); // 30 min only
        assert!(!hours_overlap_window(t(10), t(17), start, end));
    }

    #[test]
    fn a_booking_overlapping_the_window_excludes() {
        let mut busy = contractor(1, 1.0);
        busy.bookings.push(Booking { starts_at: at(10, 11, 0), ends_at: at(10, 13, 0) });
        let mut free = contractor(2, 5.0);
        free.bookings.push(Booking {
            // Ends exactly when the window starts: no overlap.
            starts_at: at(10, 8, 0),
            ends_at: at(10, 9, 0),
        });
        assert_eq!(ids(&rank(&job(&skills(&["hvac"])), &[busy, free])), vec![2]);
    }

    #[test]
    fn a_full_first_day_excludes_and_workload_lowers_the_score() {
        let day_booking = |h| Booking { starts_at: at(10, h, 0), ends_at: at(10, h + 1, 0) };
        let mut full = contractor(1, 1.0);
        full.max_daily_jobs = 2;
        full.bookings = vec![day_booking(13), day_booking(15)];
        let mut one = contractor(2, 1.0);
        one.max_daily_jobs = 2;
        one.bookings = vec![day_booking(13)];
        let mut idle = contractor(3, 1.0);
        idle.max_daily_jobs = 2;
        // A booking on another day does not count.
        idle.bookings = vec![Booking { starts_at: at(11, 13, 0), ends_at: at(11, 14, 0) }];
        let r = rank(&job(&skills(&["hvac"])), &[full, one, idle]);
        assert_eq!(ids(&r), vec![3, 2]);
        let diff = r[0].score - r[1].score;
        assert!((diff - WEIGHT_CAPACITY * 0.5).abs() < 1e-3, "{diff}");
    }

    #[test]
    fn nearer_contractors_rank_higher() {
        let cs: Vec<_> =
            [(1, 30.0), (2, 0.5), (3, 8.0), (4, 15.0)].into_iter().map(|(n, km)| contractor(n, km)).collect();
        let r = rank(&job(&skills(&["hvac"])), &cs);
        assert_eq!(ids(&r), vec![2, 3, 4, 1]);
        assert!((r[2].distance_km - 15.0).abs() < 0.01, "{}", r[2].distance_km);
        assert!(r.windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn specialists_beat_generalists_at_the_same_distance() {
        let spec = contractor(2, 3.0);
        let mut generalist = contractor(1, 3.0);
        generalist.skills = skills(&["hvac", "plumbing", "roofing", "solar"]);
        let r = rank(&job(&skills(&["hvac"])), &[generalist, spec]);
        assert_eq!(ids(&r), vec![2, 1]);
    }

    #[test]
    fn ties_are_broken_by_distance_then_id() {
        // Same place and attributes: equal score and distance, so id decides.
        let cs = vec![contractor(9, 2.0), contractor(3, 2.0), contractor(5, 2.0)];
        let r = rank(&job(&skills(&["hvac"])), &cs);
        assert_eq!(ids(&r), vec![3, 5, 9]);
        // The input order does not matter.
        let mut rev = cs.clone();
        rev.reverse();
        assert_eq!(rank(&job(&skills(&["hvac"])), &rev), r);
    }

    #[test]
    fn equal_rounded_scores_go_to_the_nearer_one() {
        // 1 cm apart: the same score to 4 decimals, so the distance decides before the id.
        let near = contractor(2, 2.0);
        let far = contractor(1, 2.00001);
        let r = rank(&job(&skills(&["hvac"])), &[far, near]);
        assert_eq!(r[0].score, r[1].score);
        assert_eq!(ids(&r), vec![2, 1]);
    }

    #[test]
    fn no_candidates_gives_no_recommendations() {
        assert!(rank(&job(&[]), &[]).is_empty());
    }

    #[test]
    fn at_most_ten_are_kept() {
        let cs: Vec<_> = (1..=25).map(|n| contractor(n, n as f64)).collect();
        let r = rank(&job(&skills(&["hvac"])), &cs);
        assert_eq!(r.len(), MAX_RECOMMENDATIONS);
        assert_eq!(ids(&r), (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn eta_is_road_factor_at_forty_kmh_plus_five() {
        assert_eq!(eta_minutes(0.0), 5);
        // 20 km * 1.3 = 26 km at 40 km/h = 39 min, + 5.
        assert_eq!(eta_minutes(20.0), 44);
        // 1 km * 1.3 = 1.3 km = 1.95 min -> 2, + 5.
        assert_eq!(eta_minutes(1.0), 7);
        // 10 km -> 19.5 min -> 20, + 5.
        assert_eq!(eta_minutes(10.0), 25);
        assert_eq!(eta_minutes(-3.0), 5);
    }

    #[test]
    fn haversine_matches_a_known_distance() {
        // One degree of latitude is about 111.2 km.
        let d = haversine_km(Location { lat: 47.0, lon: -122.0 }, Location { lat: 48.0, lon: -122.0 });
        assert!((d - 111.195).abs() < 0.01, "{d}");
        assert_eq!(haversine_km(SITE, SITE), 0.0);
    }

    #[test]
    fn scores_stay_within_zero_and_one() {
        let mut cs = Vec::new();
        for (n, km) in [0.0, 0.001, 1.0, 50.0, 500.0, 19_000.0].into_iter().enumerate() {
            for rating in [0.0, 2.5, 5.0, 7.0, -1.0] {
                let mut c = contractor((n * 10) as u128 + rating as u128, km);
                c.rating = rating;
                c.skills = skills(&["hvac", "solar"]);
                cs.push(c);
            }
        }
        for c in &cs {
            for req in [skills(&[]), skills(&["hvac"]), skills(&["hvac", "solar"])] {
                let r = rank(&job(&req), std::slice::from_ref(c));
                assert_eq!(r.len(), 1);
                assert!((0.0..=1.0).contains(&r[0].score), "{:?}", r[0]);
                let p = r[0].parts;
                for part in [p.proximity, p.skills, p.rating, p.capacity] {
                    assert!((0.0..=1.0).contains(&part), "{:?}", r[0]);
                }
            }
        }
        // A perfect contractor at the door scores 1.
        let mut best = contractor(1, 0.0);
        best.rating = 5.0;
        assert_eq!(rank(&job(&skills(&["hvac"])), &[best])[0].score, 1.0);
    }

    #[test]
    fn each_recommendation_carries_its_four_parts_and_they_recombine_to_the_score() {
        let day_booking = |h| Booking { starts_at: at(10, h, 0), ends_at: at(10, h + 1, 0) };
        // 15 km away (proximity 0.5), rating 4 (0.8), half of its skills used (0.5), 1 of 4 jobs booked (0.75).
        let mut c = contractor(1, 15.0);
        c.skills = skills(&["hvac", "solar"]);
        c.bookings = vec![day_booking(14)];
        let r = rank(&job(&skills(&["hvac"])), &[c]);
        let p = r[0].parts;
        assert!((p.proximity - 0.5).abs() < 1e-3, "{p:?}");
        assert_eq!((p.skills, p.rating, p.capacity), (0.5, 0.8, 0.75));
        let expected = 0.45 * p.proximity + 0.20 * 0.5 + 0.20 * 0.8 + 0.15 * 0.75;
        assert!((r[0].score - expected).abs() <= 1e-4, "{} vs {expected}", r[0].score);

        // Over many distances and ratings, the rounded parts give back the rounded score within 0.0001.
        let cs: Vec<_> = (1..=40)
            .map(|n| {
                let mut c = contractor(n, n as f64 * 0.77);
                c.rating = (n % 11) as f64 * 0.47;
                c
            })
            .collect();
        for req in [skills(&[]), skills(&["hvac"])] {
            let ranked = rank(&job(&req), &cs);
            for s in ranked {
                let sum = s.parts.weighted_sum(&WEIGHTS);
                assert!((s.score - sum).abs() <= 1e-4, "{s:?}: {sum}");
            }
        }
    }

    #[test]
    fn parts_are_forced_into_zero_and_one_so_the_database_accepts_them() {
        let p = ScoreParts::new(f64::NAN, f64::INFINITY, -0.5, 1.5);
        assert_eq!((p.proximity, p.skills, p.rating, p.capacity), (0.0, 0.0, 0.0, 1.0));
        assert_eq!(ScoreParts::new(0.25, 0.5, 0.75, 1.0).weighted_sum(&WEIGHTS), 0.45 * 0.25 + 0.1 + 0.15 + 0.15);
    }

    #[test]
    fn the_weights_sum_to_one_and_belong_to_weighted_v1() {
        let w = WEIGHTS;
        assert!((w.proximity + w.skills + w.rating + w.capacity - 1.0).abs() < 1e-12);
        assert_eq!(weights_of("weighted-v1"), Some(WEIGHTS));
        assert_eq!(weights_of("weighted-v2"), None);
    }
}
