//! Himmel as a service: OpenAI's Videos API over a durable job queue ([`store::JobStore`],
//! SQLite by default), worked off by [`worker::Worker`]s that keep their model loaded.
#![deny(missing_docs)]

pub mod api;
pub mod artifacts;
pub mod engine;
pub mod job;
pub mod postgres_store;
pub mod sqlite;
pub mod store;
pub mod worker;
