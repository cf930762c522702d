//! `smartscheduler seed --demo`: demo data for the fictional metro area "Cascadia Bay" (around
//! 47.6° N, 122.3° W), idempotent.
//!
//! Every row has a fixed identity: regions and dispatchers by key, contractors and jobs by UUIDs
//! derived from a name (`north/contractor/17`, `north/job/3`) with a stable hash, so running the
//! seed again inserts nothing (`ON CONFLICT DO NOTHING`). Bookings have no key of their own: they
//! are added only together with their newly inserted contractor, in the same statement. The whole
//! seed is one transaction, serialised by an advisory lock, so concurrent seeders cannot interleave.
//!
//! Attributes (names, homes, skills, ratings, hours) come from a seeded RNG, so a fresh database
//! always gets the same data. Times (bookings, job windows) are relative to the first seeding day.

use anyhow::Context;
use chrono::{DateTime, Duration, NaiveTime, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use std::collections::HashSet;
use std::fmt;
use uuid::Uuid;

/// Contractors created per region.
pub const CONTRACTORS_PER_REGION: usize = 60;
/// Open jobs created per region.
pub const JOBS_PER_REGION: usize = 6;
/// Seed of the attribute RNG.
const RNG_SEED: u64 = 0x00C0_FFEE_2026;
/// Key of the advisory lock that serialises seeders.
const SEED_LOCK: i64 = 0x5EED_0001;

/// The skills contractors hold and jobs need.
pub const SKILLS: [&str; 8] =
    ["hvac", "electrical", "plumbing", "roofing", "appliance", "carpentry", "locksmith", "solar"];

/// Regions: key, display name, centre.
const REGIONS: [(&str, &str, f64, f64); 4] = [
    ("north", "North Cascadia Bay", 47.735, -122.315),
    ("south", "South Cascadia Bay", 47.480, -122.285),
    ("east", "East Cascadia Bay", 47.615, -122.150),
    ("west", "West Cascadia Bay", 47.590, -122.395),
];

/// Dispatchers: id, name, groups.
const DISPATCHERS: [(&str, &str, &[&str]); 4] = [
    ("alice", "Alice Anders", &["region:north"]),
    ("bob", "Bob Brown", &["region:south"]),
    ("carol", "Carol Chen", &["region:north", "region:south"]),
    ("dana", "Dana Diaz", &["region:north", "region:south", "region:east", "region:west"]),
];

const FIRST_NAMES: [&str; 32] = [
    "Aaron", "Beatriz", "Carlos", "Deepa", "Elena", "Farid", "Grace", "Hiro", "Imani", "Jonas", "Keisha", "Liam",
    "Maya", "Nikolai", "Olivia", "Priya", "Quinn", "Rosa", "Samir", "Tessa", "Umar", "Vera", "Wen", "Ximena", "Yusuf",
    "Zoe", "Mateo", "Hannah", "Tariq", "Ingrid", "Kofi", "Lucia",
];
const LAST_NAMES: [&str; 32] = [
    "Abbott",
    "Banerjee",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ito",
    "Johansson",
    "Kowalski",
    "Lindqvist",
    "Murphy",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Quintero",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Underwood",
    "Varga",
    "Walsh",
    "Xu",
    "Yilmaz",
    "Zimmerman",
    "Nguyen",
    "Olsen",
    "Park",
    "Reyes",
    "Singh",
    "Moreau",
];

/// Job templates: title and required skills.
const JOB_TEMPLATES: [(&str, &[&str]); 16] = [
    ("No cooling in server closet", &["hvac"]),
    ("Furnace short-cycling", &["hvac"]),
    ("Heat pump fault code E4", &["hvac", "electrical"]),
    ("Breaker trips when oven runs", &["electrical"]),
    ("Install EV charger circuit", &["electrical"]),
    ("Burst pipe under kitchen sink", &["plumbing"]),
    ("Water heater leaking", &["plumbing"]),
    ("Storm damage to shingles", &["roofing"]),
    ("Skylight leak after rain", &["roofing"]),
    ("Dishwasher not draining", &["appliance"]),
    ("Fridge compressor noisy", &["appliance"]),
    ("Rehang sagging shop door", &["carpentry"]),
    ("Rekey office after move-out", &["locksmith"]),
    ("Solar inverter offline", &["solar"]),
    ("Solar panel output low", &["solar", "electrical"]),
    ("Dryer vent and outlet check", &["appliance", "electrical"]),
];

/// What [`seed_demo`] found and added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeedReport {
    /// Demo regions present after the seed (this and the counts below are the same after every run).
    pub regions: u64,
    /// Demo contractors.
    pub contractors: u64,
    /// Bookings of the demo contractors.
    pub assignments: u64,
    /// Demo jobs.
    pub jobs: u64,
    /// Demo dispatchers.
    pub dispatchers: u64,
    /// Group memberships of the demo dispatchers.
    pub dispatcher_groups: u64,
    /// Rows this run inserted (0 when the demo data was already there).
    pub inserted: u64,
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "demo data: {} regions, {} contractors, {} bookings, {} jobs, {} dispatchers ({} group memberships); ",
            self.regions, self.contractors, self.assignments, self.jobs, self.dispatchers, self.dispatcher_groups
        )?;
        if self.inserted == 0 {
            write!(f, "already present, nothing added")
        } else {
            write!(f, "{} rows added", self.inserted)
        }
    }
}

/// A stable UUID for a name: FNV-1a (128-bit) of the name, stamped as version 8 ("custom").
/// Unlike the RNG, it never changes with a library upgrade, which is what makes the seed idempotent.
pub fn demo_uuid(name: &str) -> Uuid {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for b in "smartscheduler-demo/".bytes().chain(name.bytes()) {
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    uuid::Builder::from_custom_bytes(h.to_be_bytes()).into_uuid()
}

struct Contractor {
    id: Uuid,
    name: String,
    region: &'static str,
    lat: f64,
    lon: f64,
    skills: Vec<&'static str>,
    rating: f64,
    work_start: NaiveTime,
    work_end: NaiveTime,
    max_daily_jobs: i32,
    active: bool,
    /// Bookings as (days after the seeding day, start hour, hours).
    bookings: Vec<(i64, u32, i64)>,
}

struct Job {
    id: Uuid,
    title: String,
    region: &'static str,
    skills: Vec<&'static str>,
    lat: f64,
    lon: f64,
    /// Days after the seeding day, start hour, hours.
    window: (i64, u32, i64),
    created_by: &'static str,
}

/// A point about `km` km from `(lat, lon)` in a random direction.
fn scatter(rng: &mut StdRng, lat: f64, lon: f64, max_km: f64) -> (f64, f64) {
    let km = max_km * rng.random::<f64>().sqrt();
    let angle = rng.random_range(0.0..std::f64::consts::TAU);
    let dlat = km * angle.cos() / 111.2;
    let dlon = km * angle.sin() / (111.2 * lat.to_radians().cos());
    (round6(lat + dlat), round6(lon + dlon))
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn hour(h: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, 0, 0).unwrap_or(NaiveTime::MIN)
}

/// The demo data, generated deterministically.
fn plan() -> (Vec<Contractor>, Vec<Job>) {
    let mut rng = StdRng::seed_from_u64(RNG_SEED);
    let hours = [(7, 16), (8, 17), (10, 19)];
    let mut used_names = HashSet::new();
    let mut contractors = Vec::new();
    let mut jobs = Vec::new();
    for (region, _, clat, clon) in REGIONS {
        let first = contractors.len();
        for i in 0..CONTRACTORS_PER_REGION {
            let name = loop {
                let candidate = format!(
                    "{} {}",
                    FIRST_NAMES.choose(&mut rng).unwrap_or(&"Alex"),
                    LAST_NAMES.choose(&mut rng).unwrap_or(&"Smith")
                );
                if used_names.insert(candidate.clone()) {
                    break candidate;
                }
            };
            let (lat, lon) = scatter(&mut rng, clat, clon, 14.0);
            // A primary trade (every trade covered in every region), then often a related one.
            let mut skills = vec![SKILLS[i % SKILLS.len()]];
            let extra = rng.random_range(0..3);
            for _ in 0..extra {
                let s = SKILLS[rng.random_range(0..SKILLS.len())];
                if !skills.contains(&s) {
                    skills.push(s);
                }
            }
            let (ws, we) = hours[rng.random_range(0..hours.len())];
            let max_daily_jobs = rng.random_range(3..=5);
            let mut bookings = Vec::new();
            for day in 0..4 {
                if rng.random_bool(0.35) {
                    let start = rng.random_range(ws..we - 2);
                    bookings.push((day, start, rng.random_range(1..=2)));
                }
            }
            contractors.push(Contractor {
                id: demo_uuid(&format!("{region}/contractor/{i}")),
                name,
                region,
                lat,
                lon,
                skills,
                rating: f64::from(rng.random_range(300..=500)) / 100.0,
                work_start: hour(ws),
                work_end: hour(we),
                max_daily_jobs,
                // Two per region have left: they stay in the data but are never recommended.
                active: i % 30 != 29,
                bookings,
            });
        }
        let region_contractors = &contractors[first..];
        let created_by = match region {
            "north" => "alice",
            "south" => "bob",
            _ => "dana",
        };
        let offset = rng.random_range(0..JOB_TEMPLATES.len());
        for j in 0..JOBS_PER_REGION {
            let (title, skills) = JOB_TEMPLATES[(offset + j * 3) % JOB_TEMPLATES.len()];
            // Keep every job satisfiable: at least 3 active holders of all its skills, else
            // ask only for the first skill (held by ~8 primaries per region).
            let holders =
                region_contractors.iter().filter(|c| c.active && skills.iter().all(|s| c.skills.contains(s))).count();
            let skills = if holders >= 3 { skills.to_vec() } else { skills[..1].to_vec() };
            let (lat, lon) = scatter(&mut rng, clat, clon, 10.0);
            // Windows in the coming days, inside everyone's 10:00-16:00 overlap.
            let window = (1 + (j as i64 % 4), rng.random_range(10..=13), rng.random_range(2..=3));
            jobs.push(Job {
                id: demo_uuid(&format!("{region}/job/{j}")),
                title: title.to_owned(),
                region,
                skills,
                lat,
                lon,
                window,
                created_by,
            });
        }
    }
    (contractors, jobs)
}

fn at(today: DateTime<Utc>, (days, hour, _): (i64, u32, i64)) -> DateTime<Utc> {
    let day = (today + Duration::days(days)).date_naive();
    day.and_time(NaiveTime::from_hms_opt(hour, 0, 0).unwrap_or(NaiveTime::MIN)).and_utc()
}

/// Inserts the demo data where it is missing and reports what is there. Safe to run any number of
/// times, also concurrently. Errors: the database's (then nothing is written: the seed is one transaction).
pub async fn seed_demo(pool: &PgPool) -> anyhow::Result<SeedReport> {
    let (contractors, jobs) = plan();
    let now = Utc::now();
    let mut inserted = 0;
    let mut tx = pool.begin().await.context("begin the seed transaction")?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SEED_LOCK).execute(&mut *tx).await?;

    let (keys, names, lats, lons): (Vec<_>, Vec<_>, Vec<_>, Vec<_>) = (
        REGIONS.map(|r| r.0).to_vec(),
        REGIONS.map(|r| r.1).to_vec(),
        REGIONS.map(|r| r.2).to_vec(),
        REGIONS.map(|r| r.3).to_vec(),
    );
    inserted += sqlx::query(
        "INSERT INTO regions (key, name, center_lat, center_lon)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::float8[], $4::float8[])
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(&keys)
    .bind(&names)
    .bind(&lats)
    .bind(&lons)
    .execute(&mut *tx)
    .await
    .context("insert regions")?
    .rows_affected();

    let ids: Vec<&str> = DISPATCHERS.iter().map(|d| d.0).collect();
    let names: Vec<&str> = DISPATCHERS.iter().map(|d| d.1).collect();
    inserted += sqlx::query(
        "INSERT INTO dispatchers (id, name)
         SELECT * FROM UNNEST($1::text[], $2::text[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&names)
    .execute(&mut *tx)
    .await
    .context("insert dispatchers")?
    .rows_affected();
    let (member, group): (Vec<&str>, Vec<&str>) =
        DISPATCHERS.iter().flat_map(|(id, _, groups)| groups.iter().map(move |g| (*id, *g))).unzip();
    inserted += sqlx::query(
        "INSERT INTO dispatcher_groups (dispatcher_id, group_key)
         SELECT * FROM UNNEST($1::text[], $2::text[])
         ON CONFLICT (dispatcher_id, group_key) DO NOTHING",
    )
    .bind(&member)
    .bind(&group)
    .execute(&mut *tx)
    .await
    .context("insert dispatcher groups")?
    .rows_affected();

    // Contractors, and the bookings of those that this statement inserts (none on a re-run).
    let mut c = ContractorColumns::default();
    for x in &contractors {
        c.ids.push(x.id);
        c.names.push(x.name.clone());
        c.regions.push(x.region);
        c.lats.push(x.lat);
        c.lons.push(x.lon);
        c.skills.push(x.skills.join(","));
        c.ratings.push(x.rating);
        c.starts.push(x.work_start);
        c.ends.push(x.work_end);
        c.max_jobs.push(x.max_daily_jobs);
        c.active.push(x.active);
        for &b in &x.bookings {
            let starts_at = at(now, b);
            c.booking_contractors.push(x.id);
            c.booking_starts.push(starts_at);
            c.booking_ends.push(starts_at + Duration::hours(b.2));
        }
    }
    let (contractors_added, bookings_added): (i64, i64) = sqlx::query_as(
        "WITH added AS (
             INSERT INTO contractors
                 (id, name, region, home_lat, home_lon, skills, rating, work_start, work_end, max_daily_jobs, active)
             SELECT t.id, t.name, t.region, t.lat, t.lon, string_to_array(t.skills, ','), t.rating,
                    t.ws, t.we, t.max_jobs, t.active
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::text[],
                         $7::float8[], $8::time[], $9::time[], $10::int4[], $11::bool[])
                  AS t (id, name, region, lat, lon, skills, rating, ws, we, max_jobs, active)
             ON CONFLICT (id) DO NOTHING
             RETURNING id
         ), booked AS (
             INSERT INTO contractor_assignments (contractor_id, starts_at, ends_at)
             SELECT b.contractor_id, b.starts_at, b.ends_at
             FROM UNNEST($12::uuid[], $13::timestamptz[], $14::timestamptz[])
                  AS b (contractor_id, starts_at, ends_at)
             WHERE b.contractor_id IN (SELECT id FROM added)
             RETURNING 1
         )
         SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM booked)",
    )
    .bind(&c.ids)
    .bind(&c.names)
    .bind(&c.regions)
    .bind(&c.lats)
    .bind(&c.lons)
    .bind(&c.skills)
    .bind(&c.ratings)
    .bind(&c.starts)
    .bind(&c.ends)
    .bind(&c.max_jobs)
    .bind(&c.active)
    .bind(&c.booking_contractors)
    .bind(&c.booking_starts)
    .bind(&c.booking_ends)
    .fetch_one(&mut *tx)
    .await
    .context("insert contractors and their bookings")?;
    inserted += u64::try_from(contractors_added + bookings_added).unwrap_or_default();

    let mut j = JobColumns::default();
    for x in &jobs {
        let start = at(now, x.window);
        j.ids.push(x.id);
        j.titles.push(x.title.clone());
        j.regions.push(x.region);
        j.skills.push(x.skills.join(","));
        j.lats.push(x.lat);
        j.lons.push(x.lon);
        j.starts.push(start);
        j.ends.push(start + Duration::hours(x.window.2));
        j.created_by.push(x.created_by);
    }
    inserted += sqlx::query(
        "INSERT INTO jobs (id, title, region, required_skills, lat, lon, window_start, window_end, created_by)
         SELECT t.id, t.title, t.region, string_to_array(t.skills, ','), t.lat, t.lon, t.ws, t.we, t.by
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::float8[],
                     $7::timestamptz[], $8::timestamptz[], $9::text[])
              AS t (id, title, region, skills, lat, lon, ws, we, by)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&j.ids)
    .bind(&j.titles)
    .bind(&j.regions)
    .bind(&j.skills)
    .bind(&j.lats)
    .bind(&j.lons)
    .bind(&j.starts)
    .bind(&j.ends)
    .bind(&j.created_by)
    .execute(&mut *tx)
    .await
    .context("insert jobs")?
    .rows_affected();

    // Count what of the demo data is present (rows an operator added are not counted).
    let counts: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM regions WHERE key = ANY($1)),
                (SELECT count(*) FROM contractors WHERE id = ANY($2)),
                (SELECT count(*) FROM contractor_assignments WHERE contractor_id = ANY($2)),
                (SELECT count(*) FROM jobs WHERE id = ANY($3)),
                (SELECT count(*) FROM dispatchers WHERE id = ANY($4)),
                (SELECT count(*) FROM dispatcher_groups WHERE dispatcher_id = ANY($4))",
    )
    .bind(&keys)
    .bind(&c.ids)
    .bind(&j.ids)
    .bind(&ids)
    .fetch_one(&mut *tx)
    .await
    .context("count the demo data")?;
    tx.commit().await.context("commit the seed")?;

    let n = |x: i64| u64::try_from(x).unwrap_or_default();
    Ok(SeedReport {
        regions: n(counts.0),
        contractors: n(counts.1),
        assignments: n(counts.2),
        jobs: n(counts.3),
        dispatchers: n(counts.4),
        dispatcher_groups: n(counts.5),
        inserted,
    })
}

#[derive(Default)]
struct ContractorColumns {
    ids: Vec<Uuid>,
    names: Vec<String>,
    regions: Vec<&'static str>,
    lats: Vec<f64>,
    lons: Vec<f64>,
    skills: Vec<String>,
    ratings: Vec<f64>,
    starts: Vec<NaiveTime>,
    ends: Vec<NaiveTime>,
    max_jobs: Vec<i32>,
    active: Vec<bool>,
    booking_contractors: Vec<Uuid>,
    booking_starts: Vec<DateTime<Utc>>,
    booking_ends: Vec<DateTime<Utc>>,
}

#[derive(Default)]
struct JobColumns {
    ids: Vec<Uuid>,
    titles: Vec<String>,
    regions: Vec<&'static str>,
    skills: Vec<String>,
    lats: Vec<f64>,
    lons: Vec<f64>,
    starts: Vec<DateTime<Utc>>,
    ends: Vec<DateTime<Utc>>,
    created_by: Vec<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_deterministic_and_believable() {
        let (c1, j1) = plan();
        let (c2, j2) = plan();
        assert_eq!(c1.len(), 240);
        assert_eq!(j1.len(), 24);
        assert!(c1.iter().zip(&c2).all(|(a, b)| a.id == b.id && a.name == b.name && a.lat == b.lat));
        assert!(j1.iter().zip(&j2).all(|(a, b)| a.id == b.id && a.title == b.title));
        let names: HashSet<_> = c1.iter().map(|c| &c.name).collect();
        assert_eq!(names.len(), 240, "names are unique");
        for c in &c1 {
            assert!((3.0..=5.0).contains(&c.rating));
            assert!(!c.skills.is_empty() && c.skills.iter().all(|s| SKILLS.contains(s)));
            assert!(c.work_start < c.work_end);
        }
        assert_eq!(demo_uuid("north/job/0"), demo_uuid("north/job/0"));
        assert_ne!(demo_uuid("north/job/0"), demo_uuid("north/job/1"));
        assert_eq!(demo_uuid("x").get_version_num(), 8);
    }
}
