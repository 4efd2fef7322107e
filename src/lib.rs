//! llm-router: a gRPC service that routes LLM calls across provider deployments, with one total
//! deadline per call, retries, and a fallback chain, in the manner of the LiteLLM Router.
//!
//! A request follows the modules in order:
//!
//! - [`server`]: the tonic server, health, reflection and graceful shutdown; [`server::run`] is
//!   the entry point that `main` and the integration tests both call.
//! - [`api`]: the `llmrouter.v1.RouterService` surface: request validation, responses, and the
//!   mapping of failures to gRPC statuses with rich details.
//! - [`routing`]: the call's plan and deadlines, the walk over deployments, retries and
//!   fallbacks, and committed streams.
//! - [`providers`]: one module per wire format (`mock`, OpenAI-compatible).
//! - [`config`]: the LiteLLM-shaped YAML config, parsed then validated into an immutable
//!   routing table; [`reload`] swaps in a new one when the file changes or on SIGHUP.
//! - [`telemetry`]: Prometheus metrics recorded along the way, the admin HTTP port that serves
//!   them, and the log format.

pub mod api;
pub mod codec;
pub mod config;
pub mod providers;
pub mod reload;
pub mod routing;
pub mod server;
pub mod telemetry;

/// Types generated from `proto/llmrouter/v1/router.proto`.
pub mod proto {
    #![allow(warnings, clippy::all, clippy::pedantic)]
    tonic::include_proto!("llmrouter.v1");
}

pub use server::{Listeners, run, run_with_reload};
