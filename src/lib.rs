//! SmartScheduler realtime: recommendations for dispatch, delivered to dispatchers' browsers at once.
//!
//! Data flows one way, and each module knows only what is upstream of it:
//!
//! ```text
//! writer ──► outbox ──► relay ──► event_log ──► stream (hub) ──► SSE ──► browser
//! (recommendations)   (fence, dense seq)     (LISTEN once, fan out by group)
//! ```
//!
//! The relay and the stream meet only in PostgreSQL.

pub mod auth;
pub mod cli;
pub mod coalesce;
pub mod commands;
pub mod console;
pub mod db;
pub mod event_log;
pub mod http;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod outbox;
pub mod position;
pub mod recommendations;
pub mod relay;
pub mod server;
pub mod stream;
pub mod supervisor;
pub mod telemetry;
pub mod validate;
