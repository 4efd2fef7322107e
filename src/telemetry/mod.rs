//! What operators see: Prometheus metrics ([`metrics`]), served with health endpoints by the
//! admin HTTP server ([`admin`]); OpenTelemetry traces ([`traces`]); and the log format
//! ([`logging`]).

pub mod admin;
pub mod logging;
pub mod metrics;
pub mod traces;
pub mod upstream;

pub use metrics::Metrics;
