//! The broker between the relay and edge SSE nodes: NATS JetStream.
//!
//! A deployment that outgrows one database puts JetStream between the relay and the SSE nodes: the relay
//! publishes each committed event once more, to JetStream, and broker-fed SSE nodes read events from there
//! instead of from `event_log`, so that adding nodes costs PostgreSQL nothing per event.
//!
//! # The stream
//! One JetStream stream per epoch of the log, `SS_EVENTS_<epoch>`, with one subject `ss.events.<epoch>`.
//! Each event is one message whose JetStream sequence equals its `seq`: the relay publishes with
//! `Nats-Expected-Last-Sequence = seq - 1`, so a stale or second relay cannot publish out of order, and with
//! `Nats-Msg-Id = <epoch>-<seq>`, so a retry inside the duplicate window is dropped by the server. A new
//! epoch (a recreated or restored log) gets a new stream: its seqs name other events.
//!
//! The wire format of a message is [`wire`]; everything else knows the broker only through this module.

pub mod wire;
