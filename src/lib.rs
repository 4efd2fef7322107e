//! llm-router: a gRPC service that routes LLM calls across provider deployments, with one total
//! deadline per call, retries, and a fallback chain, in the manner of the LiteLLM Router.
//!
//! A request follows the modules in order:
//!
//! - [`server`]: the tonic server, health, reflection and graceful shutdown; [`server::run`] is
//!   the entry point that `main` and the integration tests both call.
//! - [`api`]: the `llmrouter.v1.RouterService` surface: request validation, responses, committed
//!   streams as messages, and the one place that maps failures to gRPC statuses with rich
//!   details. The only layer that knows gRPC.
//! - [`routing`]: the call's plan and deadlines, the walk over its chain of model groups, and
//!   the retry policy that decides each step (retry, wait, try another deployment, fall back,
//!   switch to a special fallback list, stop); the routing strategies; per-deployment health;
//!   committed streams' timers. Its module docs give the tour, file by file.
//! - [`providers`]: the provider-neutral request (messages with parts, tools, formats,
//!   reasoning), then one module per wire format: the mock, OpenAI-compatible (OpenAI, Azure and
//!   the compatible hosts), Anthropic Messages and Gemini, each mapping it both ways.
//! - [`config`]: the LiteLLM-shaped YAML config (`litellm_settings` and provider parameters
//!   included), parsed then validated into an immutable routing table; [`reload`] swaps in a
//!   new one when the file changes or on SIGHUP.
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
