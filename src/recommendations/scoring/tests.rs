//! Tests of the scoring: the formula's parts, their bounds, ranking and the published weights.

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
    let cs: Vec<_> = [(1, 30.0), (2, 0.5), (3, 8.0), (4, 15.0)].into_iter().map(|(n, km)| contractor(n, km)).collect();
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
