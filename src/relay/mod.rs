//! The relay: moves committed outbox rows into `event_log`, numbering them under a fence.
//!
//! # The invariant
//! Positions are assigned in commit order and are dense. Application transactions commit in any order, so
//! an outbox id is not a safe resume point: a row with a lower id can commit after a reader has moved past
//! it. The relay therefore numbers rows only once they are committed and visible, and it does so while
//! holding the row lock on `stream_meta` (the fence). Two relays can never number concurrently, each batch
//! takes `last_seq + 1 ..` from the previous committed batch, and a batch that rolls back releases its
//! numbers with it. So the set of visible `seq` is always a gapless prefix, and `seq > N` misses nothing.

mod publish;
mod worker;

pub use publish::{
    BatchOutcome, publish_all_pending, publish_batch, publish_batch_now, publish_batch_parking,
    publish_batch_uncommitted,
};
pub use worker::{PublishedSink, Relay, RelayConfig};
/// Channel external writers may NOTIFY (no payload needed) to wake relays at once instead of at the next poll.
pub const WAKE_CHANNEL: &str = "ss_wake";
