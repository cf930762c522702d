//! SmartScheduler realtime: recommendations for dispatch, delivered to dispatchers' browsers at once.
//!
//! Data flows one way, and each module knows only what is upstream of it:
//!
//! ```text
//! writer ──► outbox ──► relay ──► event_log ──► stream (hub) ──► SSE ──► browser
//! (recommendations)   (fence, dense seq)     (LISTEN once, fan out by group)
//! ```
//!
//! The relay and the stream never name each other: they meet in PostgreSQL, and what both need of the log
//! (the published row, `stream_meta`, the channel) is [`event_log`]. In one process the relay hands its batches
//! to a callback that [`server`] wires to the hub. `tests/architecture.rs` checks these rules.

pub mod auth;
pub mod broker;
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
pub mod receipts;
pub mod recommendations;
pub mod relay;
pub mod server;
pub mod stream;
pub mod supervisor;
pub mod telemetry;
pub mod validate;
pub mod watches;
