//! What operators see: Prometheus metrics ([`metrics`]), served with health endpoints by the
//! admin HTTP server ([`admin`]), and the log format ([`logging`]).

pub mod admin;
pub mod logging;
pub mod metrics;

pub use metrics::Metrics;
