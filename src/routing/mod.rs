//! Routing: from a validated call to an answer, with no knowledge of gRPC. The modules follow
//! the path of a call:
//!
//! - [`table`]: the [`Router`], the routing table of one config snapshot with a provider client
//!   and shared state per deployment; [`SharedRouter`] swaps it on reload.
//! - [`context`]: what a call may use, built by the API layer; [`reach`] the one place that
//!   resolves the model groups a call may reach (requested, aliases, fallbacks, special lists);
//!   [`callers`] what each caller has used against its limits, behind a store trait with an
//!   in-process implementation, and [`Router::admit`] the one place a call is held to them.
//! - [`plan`]: the call's plan: its chain of model groups, total deadline and overrides.
//! - [`chain`]: the walk over the chain, carrying out what [`policy`] decides.
//! - [`policy`]: the one place that decides what the call does next after a failure: retry
//!   now, wait then retry, try another deployment, fall back, switch to a special fallback
//!   list, or stop. [`failure`] classifies each failure for it.
//! - [`pick`]: which deployment of a group runs the next attempt, by the group's strategy;
//!   [`capability`] what a request needs of a deployment, and how a lack is named.
//! - [`round`]: one attempt and its hedges, raced ([`race`]), each logged ([`log`]).
//! - [`deadline`]: the arithmetic of total, attempt and first-chunk deadlines, and backoff.
//! - [`health`]: what is remembered of each deployment across calls (in-flight attempts,
//!   cooldowns, latency, usage and the retry budget), behind a store trait with an in-process
//!   implementation; the rules that say when a deployment cools down, and the wall-clock
//!   minutes usage counts in.
//! - [`stream`]: a committed stream's idle and total timers, and the watchdog that ends it at
//!   its deadline even when nobody reads it.
//! - [`recovery`]: a committed stream that breaks, recovered through the rest of its chain.
//! - [`usage`]: the one place an answer's usage is settled (cost, token metrics, `tpm`).
//! - [`error`]: how a call fails, in routing's terms (the API layer picks gRPC codes).

pub mod callers;
mod capability;
mod chain;
pub mod context;
pub mod deadline;
pub mod error;
pub mod failure;
pub mod health;
mod log;
mod pace;
mod pick;
mod plan;
pub mod policy;
mod race;
pub mod reach;
pub mod recovery;
mod round;
pub mod stream;
mod table;
pub mod usage;

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, timeout_at};

use crate::config::StreamRecovery;
use crate::proto::Attempt;
use crate::providers::{
    ChatRequest, Chunk, ChunkStream, Completion, ErrorKind, Provider, ProviderError,
    transport::pool::Probe,
};
use chain::{Resume, Seed};
pub use context::{CallContext, CallerName, Denied, Identity};
pub use deadline::wall_clock;
pub use error::CallError;
pub use failure::Failure;
use health::Tracker;
pub use log::to_proto_duration;
pub use plan::MOCK_RESPONSE_DEPLOYMENT;
use plan::{Plan, mock_answer, mock_committed, mock_completion};
pub use reach::Reach;
pub use table::{Router, SharedRouter};

/// A call as the API layer hands it over: shape-validated, not yet resolved against the config.
#[derive(Debug, Clone, Default)]
pub struct CallRequest {
    /// What the call may use, from the API layer.
    pub context: CallContext,
    pub model: String,
    pub chat: ChatRequest,
    /// The request's `timeout`.
    pub timeout: Option<Duration>,
    /// The client's gRPC deadline, from `grpc-timeout`.
    pub client_timeout: Option<Duration>,
    pub stream_timeout: Option<Duration>,
    pub mock_timeout: bool,
    pub mock_response: Option<String>,
    /// Replaces the configured fallback chain when non-empty.
    pub fallbacks: Vec<String>,
    pub num_retries: Option<u32>,
    /// How a committed stream recovers, when the caller said; else the group's setting.
    /// `Restart` says the caller handles restart markers.
    pub stream_recovery: Option<StreamRecovery>,
    /// The request's own slow-stream guard, over the answering group's.
    pub slow_stream: policy::SlowStreamRequest,
}

/// A failed call: the error and every attempt made before it.
#[derive(Debug)]
pub struct CallFailure {
    pub error: CallError,
    pub attempts: Vec<Attempt>,
}

/// A call that failed before any attempt: a bad request, or a call refused at the door.
impl From<CallError> for CallFailure {
    fn from(error: CallError) -> Self {
        CallFailure {
            error,
            attempts: Vec::new(),
        }
    }
}

/// A call's answer, from the deployment that gave it.
#[derive(Debug)]
pub struct Answered<T> {
    pub value: T,
    /// The group that answered (a fallback group when the chain moved on).
    pub group: String,
    pub deployment: String,
    pub attempts: Vec<Attempt>,
    /// The call's total deadline, which still bounds a committed stream.
    pub deadline: Instant,
    /// When the answering attempt started, for the attempt's final elapsed time.
    pub attempt_started: Instant,
    /// The answering deployment's lease (it stays in flight while a stream runs), through
    /// which a committed stream reports how it ended. `None` for `mock_response`.
    pub tracker: Option<Tracker>,
    /// What a committed stream needs to recover if it breaks; `None` when it will not try.
    pub resume: Option<Resume>,
    /// The slow-stream guard a committed stream runs under, when it has one.
    pub pace: Option<policy::Pace>,
}

/// A committed stream as the walk hands it over: its first chunk and the rest. Watch it with
/// [`stream::CommittedStream`].
pub struct Committed {
    pub first: Chunk,
    pub rest: ChunkStream,
    /// A recovery's answer that starts over (the caller is sent a restart marker), not one
    /// that continues the text already delivered.
    pub restart: bool,
    /// A recovery by continue-or-restart whose deployment rejected the prefill: what it said.
    /// The same attempt then restarted.
    pub prefill_rejected: Option<String>,
}

/// What a stream's attempts send.
#[derive(Clone, Copy)]
pub(crate) enum Sends<'a> {
    /// The request as the caller sent it: a call's first walk.
    Request(&'a ChatRequest),
    /// A recovery's continuation (the conversation plus the text delivered, as an assistant
    /// prefill); the plan picks only deployments that take one.
    Continue(&'a ChatRequest),
    /// A recovery's restart: the request again, the caller told to start over.
    Restart(&'a ChatRequest),
    /// The continuation to a deployment that takes a prefill, and the request again (a restart)
    /// to one that does not or that rejects the prefill.
    Either {
        continued: &'a ChatRequest,
        whole: &'a ChatRequest,
    },
}

impl round::AttemptValue for Committed {
    fn output_tokens(&self) -> Option<u32> {
        None
    }
}

impl Router {
    /// Answers a unary call.
    pub async fn complete(&self, req: &CallRequest) -> Result<Answered<Completion>, CallFailure> {
        let plan = self.plan(req, false)?;
        if let Some(text) = &req.mock_response {
            return Ok(mock_answer(&plan, text, mock_completion(text)));
        }
        let chat = &req.chat;
        let mut answered = self
            .walk(&plan, None, |_, provider, d| async move {
                let probe = Probe::default();
                match timeout_at(d.attempt, probe.watch(provider.complete(chat))).await {
                    Ok(result) => result.map_err(Failure::Provider),
                    Err(_) => Err(expired(&probe, &d, false)),
                }
            })
            .await?;
        if let (Some(t), Some(u)) = (&answered.tracker, &mut answered.value.usage) {
            usage::answered(t, u);
        }
        Ok(answered)
    }

    /// Walks the chain until an attempt delivers its first chunk: the commit point.
    pub async fn stream(&self, req: &CallRequest) -> Result<Answered<Committed>, CallFailure> {
        let plan = self.plan(req, true)?;
        if let Some(text) = &req.mock_response {
            return Ok(mock_answer(&plan, text, mock_committed(text)));
        }
        self.walk_to_commit(&plan, None, Sends::Request(&req.chat))
            .await
    }

    /// The chain walk of a stream, to its first chunk; `seed` starts a recovery.
    async fn walk_to_commit(
        &self,
        plan: &Plan,
        seed: Option<Seed>,
        sends: Sends<'_>,
    ) -> Result<Answered<Committed>, CallFailure> {
        self.walk(plan, seed, |deployment, provider, d| {
            // What this deployment is sent, whether that is a restart, and what it is sent
            // instead, in the same attempt, if it rejects a continuation.
            let (chat, restart, instead) = match sends {
                Sends::Request(chat) | Sends::Continue(chat) => (chat, false, None),
                Sends::Restart(chat) => (chat, true, None),
                Sends::Either { continued, whole } if deployment.supports_assistant_prefill => {
                    (continued, false, Some(whole))
                }
                Sends::Either { whole, .. } => (whole, true, None),
            };
            async move {
                let first = async {
                    match commit(&provider, chat).await {
                        Ok((first, rest)) => Ok(Committed {
                            first,
                            rest,
                            restart,
                            prefill_rejected: None,
                        }),
                        // A deployment that does not take the prefill after all: the request
                        // again, as a restart, on the same deployment.
                        Err(e) if e.kind == ErrorKind::BadRequest && instead.is_some() => {
                            let whole = instead.unwrap_or(chat);
                            let (first, rest) = commit(&provider, whole).await?;
                            Ok(Committed {
                                first,
                                rest,
                                restart: true,
                                prefill_rejected: Some(e.detail),
                            })
                        }
                        Err(e) => Err(e),
                    }
                };
                let probe = Probe::default();
                match timeout_at(d.until_first_chunk(), probe.watch(first)).await {
                    Ok(result) => result.map_err(Failure::Provider),
                    Err(_) => Err(expired(&probe, &d, true)),
                }
            }
        })
        .await
    }
}

/// Opens a stream on `provider` and reads it to its first chunk with content: the commit point.
async fn commit(
    provider: &Provider,
    chat: &ChatRequest,
) -> Result<(Chunk, ChunkStream), ProviderError> {
    let mut rest = provider.stream(chat).await?;
    let mut skipped = 0;
    loop {
        match rest.next().await {
            Some(Ok(mut chunk)) if chunk.commits() => {
                chunk.skipped_events += skipped;
                return Ok((chunk, rest));
            }
            // Usage-only or empty chunks before any content commit nothing.
            Some(Ok(chunk)) => skipped += chunk.skipped_events,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(ProviderError::new(
                    ErrorKind::Upstream,
                    200,
                    "stream ended before any content",
                ));
            }
        }
    }
}

/// The failure of an attempt whose deadline passed: the router's own saturation when it was
/// waiting for a connection to the provider, else a timeout of the deployment (or the caller's).
fn expired(probe: &Probe, d: &deadline::AttemptDeadlines, streaming: bool) -> Failure {
    match probe.saturated_for() {
        Some(waited) => Failure::Saturated {
            first_chunk: streaming && d.first_chunk_is_binding(),
            waited,
        },
        None => d.expired(streaming),
    }
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
