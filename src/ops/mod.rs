//! Operations: outbox status, replay after outages, retention.

pub mod replay;
pub mod retention;
pub mod status;
