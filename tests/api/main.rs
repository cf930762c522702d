//! Integration tests against a real PostgreSQL. Each test creates its own database, so they run in parallel.
//! One binary (this file declares the modules) links once.

mod app;
mod helpers;
mod private_cluster;
mod relay;
mod stream;
