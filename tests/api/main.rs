//! Integration tests against a real PostgreSQL. Each test creates its own database, so they run in parallel.
//! One binary (this file declares the modules) links once.

mod access;
mod admission;
mod app;
mod broker;
mod broker_node;
mod browser;
mod cli;
mod deploy;
mod faults;
mod foreign_writer;
mod helpers;
mod http;
mod identity;
mod input;
mod nats;
mod openapi;
mod ops;
mod outage;
mod private_cluster;
mod receipts;
mod recommendations;
mod recommendations_db;
mod relay;
mod schema;
mod seed;
mod storm;
mod stream;
mod transport;
mod watches;
