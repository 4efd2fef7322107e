//! A call's plan, fixed before its first attempt: the chain of model groups, the total
//! deadline, the request's overrides and the prompt's estimated size. Also the answers made up
//! from a request's `mock_response`, which need a plan and nothing else.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    Answered, CallError, CallRequest, Committed, Router, context::CallContext, deadline,
    log::to_proto_duration, policy::SlowStreamRequest, reach::Reach,
};
use crate::config::{ModelGroup, StreamRecovery};
use crate::proto::{Attempt, AttemptOutcome, FinishReason};
use crate::providers::{ChatRequest, Chunk, Completion, Needs, estimate_tokens};

/// What one call will do, fixed before its first attempt.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The requested group first, then its fallbacks.
    pub chain: Vec<Arc<ModelGroup>>,
    /// What the call may use: a switch to a special fallback list keeps to it.
    pub context: CallContext,
    pub deadline: Instant,
    pub num_retries: Option<u32>,
    pub mock_timeout: bool,
    /// First-chunk deadline override (streaming only).
    pub stream_timeout: Option<Duration>,
    pub streaming: bool,
    /// The prompt's size in tokens, estimated, for `tpm` limits.
    pub request_tokens: u64,
    /// Whether `deadline` is the client's own (its grpc-timeout or the request's timeout),
    /// shorter than the router's: an attempt it cuts does not count against its deployment.
    pub client_deadline: bool,
    /// Whether an answer keeps what a recovery of its stream needs (the rest of its chain).
    pub resumable: bool,
    /// The call recovers a broken stream: its attempts are marked as such.
    pub recovery: bool,
    /// The call continues a broken stream from an assistant prefill: only deployments that
    /// take one are picked.
    pub continuation: bool,
    /// What the request needs of a deployment (tools, images, JSON, reasoning): deployments
    /// without it are skipped, never sent.
    pub needs: Needs,
    /// The request's own slow-stream guard (streaming only), over the answering group's.
    pub slow_stream: SlowStreamRequest,
}

impl Router {
    /// Resolves a call against the config: its groups must exist and be the call's to use
    /// ([`Reach`]), and its switches be allowed. The one constructor of a call's plan: a
    /// recovery's is derived from it ([`Plan::for_recovery`]).
    pub(super) fn plan(&self, req: &CallRequest, streaming: bool) -> Result<Plan, CallError> {
        let cfg = self.config();
        let chain = Reach::new(cfg, &req.context).chain(&req.model, &req.fallbacks)?;
        if req.mock_timeout && !cfg.router.allow_mock_timeout {
            return Err(CallError::MockTimeoutDisabled);
        }
        if req.mock_response.is_some() && !cfg.router.allow_mock_response {
            return Err(CallError::MockResponseDisabled);
        }
        let prompt_chars = req.chat.prompt_chars();
        let client_deadline = client_deadline(req, cfg.router.timeout);
        // Streams only, and only when the caller or a group of the chain wants recovery.
        let resumable = streaming
            && match req.stream_recovery {
                Some(mode) => mode != StreamRecovery::None,
                None => chain
                    .iter()
                    .any(|g| g.stream_recovery != StreamRecovery::None),
            };
        Ok(Plan {
            chain,
            context: req.context.clone(),
            deadline: deadline::total_deadline(
                Instant::now(),
                req.client_timeout,
                req.timeout,
                cfg.router.timeout,
                cfg.server.deadline_margin,
            ),
            num_retries: req.num_retries,
            mock_timeout: req.mock_timeout,
            stream_timeout: req.stream_timeout,
            streaming,
            request_tokens: estimate_tokens(prompt_chars),
            client_deadline,
            resumable,
            recovery: false,
            continuation: false,
            needs: req.chat.needs(),
            slow_stream: req.slow_stream,
        })
    }
}

impl Plan {
    /// The plan of a recovery of this call's committed stream: the rest of its chain
    /// (`chain`, already resolved for the call), within the same deadline and request limits,
    /// for `chat` (the request, or its continuation with an assistant prefill).
    pub fn for_recovery(
        &self,
        chain: Vec<Arc<ModelGroup>>,
        chat: &ChatRequest,
        continuation: bool,
    ) -> Plan {
        Plan {
            chain,
            context: self.context.clone(),
            deadline: self.deadline,
            num_retries: self.num_retries,
            // The requested group's switch: a recovery never runs in it as such.
            mock_timeout: false,
            stream_timeout: self.stream_timeout,
            streaming: true,
            request_tokens: estimate_tokens(chat.prompt_chars()),
            client_deadline: self.client_deadline,
            // A recovered stream may break and recover again.
            resumable: true,
            recovery: true,
            continuation,
            needs: chat.needs(),
            slow_stream: self.slow_stream,
        }
    }
}

/// Whether the call's total deadline is the client's own: its grpc-timeout or the request's
/// `timeout`, shorter than the router's.
pub fn client_deadline(req: &CallRequest, router_timeout: Duration) -> bool {
    [req.client_timeout, req.timeout]
        .into_iter()
        .flatten()
        .any(|t| t < router_timeout)
}

/// The deployment id reported for answers made up from the request's `mock_response`.
pub const MOCK_RESPONSE_DEPLOYMENT: &str = "mock_response";

/// An answer made up from `mock_response`, as if the requested group had given it.
pub fn mock_answer<T>(plan: &Plan, text: &str, value: T) -> Answered<T> {
    let group = plan.chain[0].name.clone();
    let now = Instant::now();
    Answered {
        value,
        attempts: vec![Attempt {
            model: group.clone(),
            deployment: MOCK_RESPONSE_DEPLOYMENT.into(),
            outcome: AttemptOutcome::Ok as i32,
            elapsed: Some(to_proto_duration(Duration::ZERO)),
            upstream_status: 0,
            detail: format!("mock_response ({} bytes)", text.len()),
            hedge: false,
            recovery: false,
        }],
        group,
        deployment: MOCK_RESPONSE_DEPLOYMENT.into(),
        deadline: plan.deadline,
        attempt_started: now,
        tracker: None,
        resume: None,
        pace: None,
    }
}

pub fn mock_completion(text: &str) -> Completion {
    Completion {
        text: text.to_string(),
        tool_calls: Vec::new(),
        thinking: Vec::new(),
        finish_reason: FinishReason::Stop,
        usage: None,
    }
}

/// `text` as a stream of word-sized chunks, then a last chunk with the finish reason. The
/// chunks are cut from the text as the stream is read, not all at once: a long text (the request
/// may carry megabytes of it) is not copied into a chunk per word up front.
pub fn mock_committed(text: &str) -> Committed {
    fn next_piece(text: &str, at: usize) -> (String, usize) {
        let rest = &text[at..];
        let end = rest.find(' ').map_or(rest.len(), |i| i + 1);
        (rest[..end].to_string(), at + end)
    }
    let text = text.to_string();
    let (first, at) = next_piece(&text, 0);
    let first = if first.is_empty() {
        Chunk {
            finish_reason: Some(FinishReason::Stop),
            ..Chunk::default()
        }
    } else {
        Chunk {
            delta: first,
            ..Chunk::default()
        }
    };
    let finished = first.finish_reason.is_some();
    let rest =
        futures_util::stream::unfold((text, at, finished), |(text, at, finished)| async move {
            if finished {
                return None;
            }
            if at >= text.len() {
                let last = Chunk {
                    finish_reason: Some(FinishReason::Stop),
                    ..Chunk::default()
                };
                return Some((Ok(last), (text, at, true)));
            }
            let (delta, at) = next_piece(&text, at);
            let chunk = Chunk {
                delta,
                ..Chunk::default()
            };
            Some((Ok(chunk), (text, at, false)))
        });
    Committed {
        first,
        rest: Box::pin(rest),
        restart: false,
        prefill_rejected: None,
    }
}
