//! The integration tests, in one binary so that the crate is linked once, not once per file:
//! the real server on port 0 (or the real binary), real gRPC clients, and in-process upstreams
//! that misbehave on purpose and count what reached them. Each module is one area.
//!
//! `tests/otel.rs` stays a binary of its own: it installs the process's global trace
//! subscriber, which would reach every other test here.

mod common;

mod abuse;
mod api;
mod binary;
mod callers;
mod chaos;
mod config;
mod deadlines;
mod litellm;
mod metrics;
mod pool;
mod providers;
mod recovery;
mod recovery_chain;
mod routing;
mod shared;
mod slow_stream;
mod tools;
