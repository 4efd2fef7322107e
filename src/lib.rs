//! llm-router: a gRPC service that routes LLM calls across provider deployments, with one total
//! deadline per call, retries, and a fallback chain, in the manner of the LiteLLM Router.
//!
//! A request follows the modules in order:
//!
//! - [`listen`]: accepting connections on both ports, TLS on the gRPC port (rotated from disk)
//!   and what each connection proved.
//! - [`server`]: the tonic server, health, reflection and graceful shutdown; [`server::run`] is
//!   the entry point that `main` and the integration tests both call. It chooses where
//!   deployments' health is kept ([`routing::health::HealthStore`]) and hands it to the router,
//!   as it does the metrics.
//! - [`api`]: the `llmrouter.v1.RouterService` surface: one admission point per call
//!   (counted, shed at the cap, validated, given its [`routing::CallContext`]), responses,
//!   committed streams as messages, and the one place that maps failures (routing's and the
//!   API's own) to gRPC statuses with rich details. The only layer that knows gRPC.
//! - [`routing`]: the call's plan and deadlines, the walk over its chain of model groups, and
//!   the retry policy that decides each step (retry, wait, try another deployment, fall back,
//!   switch to a special fallback list, stop); the routing strategies; per-deployment health;
//!   committed streams' timers; usage settled once per answer. Its module docs give the tour,
//!   file by file.
//! - [`providers`]: the provider-neutral request (messages with parts, tools, formats,
//!   reasoning); the transport (an endpoint with its auth step, and streamed responses cut into
//!   events by a framing), apart from any wire format; then one module per wire format: the
//!   mock, OpenAI-compatible (OpenAI, Azure and the compatible hosts), Anthropic Messages and
//!   Gemini, each mapping it both ways.
//! - [`config`]: the LiteLLM-shaped YAML config (`litellm_settings` and provider parameters
//!   included), parsed then validated into an immutable routing table; [`reload`] swaps in a
//!   new one when the file changes or on SIGHUP.
//! - [`telemetry`]: Prometheus metrics recorded along the way, the admin HTTP port that serves
//!   them, and the log format.
//!
//! Each layer imports only the ones below it (server, reload, api, routing, providers,
//! config; telemetry and the generated [`proto`] types below them all), with no import cycle:
//! `tests/layers.rs` checks both.
//!
//! Where the platform's next pieces go:
//!
//! - **Who is calling** is worked out in one place (`api::auth`: the connection's client
//!   certificate, read once per connection by [`listen`], a trusted proxy's header, or an API
//!   key), into the call's [`routing::CallContext`] with its caller's policy; what a caller may
//!   reach is decided in [`routing::Reach`] alone, its switches in
//!   [`routing::CallContext::permit`], and its limits in [`routing::Router::admit`], against a
//!   [`routing::callers::CallerStore`] (the local one is [`routing::callers::LocalCallers`]).
//! - **State shared across replicas**: a second implementation of
//!   [`routing::health::HealthStore`] (the local one is [`routing::health::LocalStore`]), which
//!   passes the same suite (`routing/health/suite.rs`) and is chosen in [`server`], and of
//!   [`routing::callers::CallerStore`]. Usage counts in wall-clock minutes and budgets in
//!   epoch-aligned periods, which replicas agree on.
//! - **Signed providers** (Bedrock, Vertex AI): an auth step on the endpoint
//!   (`providers::transport::auth`: a signer over the final bytes, or a refreshing token
//!   source), a framing for AWS's event-stream beside SSE (`providers::transport::framed`),
//!   and the Anthropic and Gemini bodies and event parsers reused as they are; the family's
//!   settings get their own type in `config::Family`.
//!
//! Routing keeps the generated proto types for what it hands the API as plain data (the
//! attempt log's `Attempt` and `AttemptOutcome`, `Usage`, the messages of a `ChatRequest`):
//! they are prost structs with no gRPC in them, the provider-neutral request is built on the
//! request's own messages, and converting every message and attempt at the boundary would copy
//! each request's conversation once more per call for no change in meaning. What is gRPC's
//! (statuses, metadata, codes) stays in the API.

pub mod api;
pub mod codec;
pub mod config;
pub mod listen;
pub mod providers;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shared;
pub mod telemetry;

/// Types generated from `proto/llmrouter/v1/router.proto`.
pub mod proto {
    #![allow(warnings, clippy::all, clippy::pedantic)]
    tonic::include_proto!("llmrouter.v1");
}

pub use server::{Listeners, run, run_with_reload};
