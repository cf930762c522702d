//! Operations: outbox status, replay after outages, retention.

pub mod replay;
pub mod replay_report;
pub mod retention;
pub mod status;
