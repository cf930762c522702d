//! The recommendations domain: jobs, and the ranked contractors generated for them.
//!
//! [`generate`] is a writer of the event stream: it stores a recommendation set and its
//! `RecommendationReady` outbox event in one transaction, so the event is published if and only if
//! the set exists. The caller wakes the relay after it returns (see [`crate::outbox::RelayWaker`]).
//!
//! Ranking itself is pure and lives in [`scoring`]; its module doc explains the weights.
//!
//! | file | what |
//! |---|---|
//! | `job.rs` | [`Job`], [`NewJob`] and its validation, the job queries |
//! | `generate.rs` | the generation transaction ([`generate`] and its variants for tests and the benchmark) |
//! | `set.rs` | [`RecommendationSet`] and reading the latest one |
//! | `event.rs` | the `RecommendationReady` event: its payload |
//! | `region.rs` | regions and their dispatcher groups (`region:<key>`) |
//! | `scoring.rs` | pure ranking |
//! | `seed.rs` | demo data (`smartscheduler seed --demo`) |
//! | `error.rs` | [`RecommendationError`] |

mod error;
mod event;
mod generate;
mod job;
mod region;
pub mod scoring;
pub mod seed;
mod set;

pub use error::{RecommendationError, Result};
pub use event::{RECOMMENDATION_READY, event_payload};
pub use generate::{
    EventWrite, FailPoint, Generation, PhaseTimings, generate, generate_as, generate_with, generate_writing,
};
pub use job::{
    Job, LIST_LIMIT, Location, MAX_REQUIRED_SKILLS, MAX_TITLE_CHARS, MAX_WINDOW, NewJob, create_job, get_job, list_jobs,
};
pub use region::{region_exists, region_group, region_of_group};
pub use set::{Recommendation, RecommendationSet, latest_set, latest_set_id};
