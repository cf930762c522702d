//! Real-time delivery: one hub per process LISTENs for published batches, reads each batch from
//! `event_log` once, encodes each event once and fans it out in memory to the open streams of its groups.
//! Each stream resumes from a position by reading the backlog from the database, then joins the live
//! fan-out with no gap and no duplicate at the seam.

mod catchup;
mod event;
mod frame;
mod hub;
mod limits;
mod receipt_frame;
mod registry;
mod revocation;
mod session;
mod window;

pub use event::{StreamEvent, fetch_for_groups};
pub use frame::Frame;
pub use hub::{Hub, HubConfig, MembershipSource, Memberships, Revocation};
pub use limits::{DEFAULT_STREAMS_PER_DISPATCHER, StreamLimitError, StreamLimits, StreamPermit};
pub use session::{ResetReason, StreamRequest, open_stream};
