//! Routing: from a validated call to an answer. Builds the call's plan (the chain of model
//! groups and its total deadline), then walks it: choose a deployment, run an attempt under its
//! deadline, decide from the failure whether to retry, skip the deployment, fall back or stop.
//!
//! - [`deadline`]: the arithmetic of total, attempt and first-chunk deadlines, and backoff.
//! - [`retry`]: what a failure means for the call.
//! - [`error`]: how a call fails, and which gRPC code each failure gets.
//! - [`stream`]: a committed stream's idle and total timers.

pub mod deadline;
pub mod error;
pub mod retry;
pub mod stream;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::config::{Config, Deployment, ModelGroup};
use crate::proto::{Attempt, AttemptOutcome, FinishReason};
use crate::providers::{
    ChatRequest, Chunk, ChunkStream, Completion, ErrorKind, Provider, ProviderError,
};
use crate::telemetry::{Metrics, metrics::outcome_name, traces::TARGET};
use deadline::{AttemptDeadlines, Backoff};
pub use error::CallError;
use retry::{Failure, Next};
use tracing::{Instrument as _, field::Empty};

/// A call as the API layer hands it over: shape-validated, not yet resolved against the config.
#[derive(Debug, Clone, Default)]
pub struct CallRequest {
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
}

/// A failed call: the error and every attempt made before it.
#[derive(Debug)]
pub struct CallFailure {
    pub error: CallError,
    pub attempts: Vec<Attempt>,
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
}

/// A committed stream: its first chunk and the rest.
pub struct Committed {
    pub first: Chunk,
    pub rest: ChunkStream,
}

/// The routing table of one config snapshot with a provider client per deployment. Immutable:
/// calls share it through an `Arc` without locking.
#[derive(Debug)]
pub struct Router {
    config: Arc<Config>,
    providers: HashMap<String, Arc<Provider>>,
    metrics: Arc<Metrics>,
}

/// What one call will do, fixed before its first attempt.
struct Plan {
    /// The requested group first, then its fallbacks.
    chain: Vec<Arc<ModelGroup>>,
    deadline: Instant,
    num_retries: Option<u32>,
    mock_timeout: bool,
    /// First-chunk deadline override (streaming only).
    stream_timeout: Option<Duration>,
    streaming: bool,
}

impl Router {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Router, String> {
        // One pooled client for every deployment: connections are shared per host. The connect
        // timeout is separate from, and much shorter than, any request deadline.
        let http = reqwest::Client::builder()
            .connect_timeout(config.router.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("llm-router/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let providers = config
            .groups
            .values()
            .flat_map(|g| g.deployments.iter())
            .map(|d| (d.id.clone(), Provider::new(d, &http)))
            .collect();
        Ok(Router {
            config,
            providers,
            metrics,
        })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn plan(&self, req: &CallRequest, streaming: bool) -> Result<Plan, CallError> {
        let cfg = &self.config;
        let known = || cfg.group_names().into_iter().map(String::from).collect();
        let Some(requested) = cfg.group(&req.model) else {
            return Err(CallError::ModelNotFound {
                model: req.model.clone(),
                known: known(),
            });
        };
        if req.mock_timeout && !cfg.router.allow_mock_timeout {
            return Err(CallError::MockTimeoutDisabled);
        }
        let fallback_names = if req.fallbacks.is_empty() {
            &requested.fallbacks
        } else {
            &req.fallbacks
        };
        let mut chain = vec![requested.clone()];
        for (i, name) in fallback_names.iter().enumerate() {
            let group = cfg.group(name).ok_or_else(|| CallError::InvalidArgument {
                field: format!("fallbacks[{i}]"),
                message: format!(
                    "names unknown model group `{name}`; known model groups: {}",
                    cfg.group_names().join(", ")
                ),
            })?;
            chain.push(group.clone());
        }
        Ok(Plan {
            chain,
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
        })
    }

    /// Answers a unary call.
    pub async fn complete(&self, req: &CallRequest) -> Result<Answered<Completion>, CallFailure> {
        let plan = self.plan(req, false).map_err(no_attempts)?;
        if let Some(text) = &req.mock_response {
            return Ok(mock_answer(&plan, text, mock_completion(text)));
        }
        let chat = &req.chat;
        self.walk(&plan, |provider, d| async move {
            match timeout_at(d.attempt, provider.complete(chat)).await {
                Ok(result) => result.map_err(Failure::Provider),
                Err(_) => Err(Failure::Timeout { first_chunk: false }),
            }
        })
        .await
    }

    /// Walks the chain until an attempt delivers its first chunk: the commit point.
    pub async fn stream(&self, req: &CallRequest) -> Result<Answered<Committed>, CallFailure> {
        let plan = self.plan(req, true).map_err(no_attempts)?;
        if let Some(text) = &req.mock_response {
            return Ok(mock_answer(&plan, text, mock_committed(text)));
        }
        let chat = &req.chat;
        self.walk(&plan, |provider, d| async move {
            let first = async {
                let mut rest = provider.stream(chat).await?;
                loop {
                    match rest.next().await {
                        Some(Ok(chunk)) if chunk.commits() => {
                            return Ok(Committed { first: chunk, rest });
                        }
                        // Usage-only or empty chunks before any content commit nothing.
                        Some(Ok(_)) => continue,
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
            };
            match timeout_at(d.until_first_chunk(), first).await {
                Ok(result) => result.map_err(Failure::Provider),
                Err(_) => Err(Failure::Timeout {
                    first_chunk: d.first_chunk_is_binding(),
                }),
            }
        })
        .await
    }

    /// The chain walk shared by both RPCs. `attempt` runs one attempt on one provider and must
    /// end by the given deadlines (the walk does not enforce them a second time).
    async fn walk<T, F, Fut>(&self, plan: &Plan, mut attempt: F) -> Result<Answered<T>, CallFailure>
    where
        F: FnMut(Arc<Provider>, AttemptDeadlines) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let settings = &self.config.router;
        let backoff = Backoff {
            initial: settings.retry_backoff_initial,
            max: settings.retry_backoff_max,
            min: settings.retry_after,
        };
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut last_failure: Option<Failure> = None;
        let mut chain: std::collections::VecDeque<(Arc<ModelGroup>, bool)> = plan
            .chain
            .iter()
            .enumerate()
            .map(|(i, g)| (g.clone(), i == 0))
            .collect();
        let mut special_fallback_taken = false;
        let fail = |error, attempts| Err(CallFailure { error, attempts });

        tracing::Span::current().record(
            "llmrouter.deadline_ms",
            plan.deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
        );
        let mut previous_group: Option<String> = None;
        // 0 for the requested group, then 1, 2, ... along the fallback chain.
        let mut fallback_index = 0usize;
        'groups: while let Some((group, is_requested)) = chain.pop_front() {
            if let Some(from) = previous_group.replace(group.name.clone()) {
                fallback_index += 1;
                self.metrics.fallback(&from, &group.name);
            }
            let mut pick = DeploymentPicker::new(&group);
            // Retries after the group's first attempt; fixed by that attempt's deployment.
            let mut retries_allowed: Option<u32> = None;
            let mut retries_done = 0u32;
            // The group's latest failure, which the next retry's backoff reads.
            let mut group_last: Option<Failure> = None;

            while let Some((idx, is_retry_of_same)) = pick.next() {
                let deployment = &group.deployments[idx];
                let allowed = *retries_allowed
                    .get_or_insert_with(|| plan.num_retries.unwrap_or(deployment.max_retries));
                if is_retry_of_same {
                    let wait = backoff.wait(
                        retries_done,
                        group_last.as_ref().and_then(Failure::retry_after),
                        fastrand::f64(),
                    );
                    if wait >= plan.deadline.saturating_duration_since(Instant::now()) {
                        // Waiting would eat the rest of the call's time: fall back instead.
                        break;
                    }
                    tokio::time::sleep(wait)
                        .instrument(tracing::info_span!(
                            target: TARGET,
                            "backoff",
                            otel.name = "llmrouter.backoff",
                            llmrouter.backoff_ms = wait.as_millis() as u64,
                        ))
                        .await;
                }
                let start = Instant::now();
                if start >= plan.deadline {
                    break 'groups;
                }
                if pick.has_failures() {
                    self.metrics.retry(&group.name, &deployment.id);
                }
                let stream_timeout = plan
                    .streaming
                    .then(|| plan.stream_timeout.or(deployment.stream_timeout))
                    .flatten();
                let deadlines =
                    AttemptDeadlines::new(start, plan.deadline, deployment.timeout, stream_timeout);
                let span = tracing::info_span!(
                    target: TARGET,
                    "attempt",
                    otel.name = %format_args!("chat {}", deployment.upstream_model),
                    otel.kind = "client",
                    otel.status_code = Empty,
                    gen_ai.operation.name = "chat",
                    gen_ai.provider.name = crate::config::providers::semconv_name(deployment.provider.name()),
                    gen_ai.request.model = %deployment.upstream_model,
                    llmrouter.model_group = %group.name,
                    llmrouter.deployment = %deployment.id,
                    llmrouter.fallback.index = fallback_index,
                    llmrouter.attempt.outcome = Empty,
                    llmrouter.time_to_first_chunk_ms = Empty,
                    http.response.status_code = Empty,
                    error.type = Empty,
                );
                let result = if plan.mock_timeout && is_requested {
                    sleep_until(deadlines.until_first_chunk())
                        .instrument(span.clone())
                        .await;
                    Err(Failure::MockTimeout)
                } else {
                    let provider = self.providers[&deployment.id].clone();
                    attempt(provider, deadlines).instrument(span.clone()).await
                };
                let elapsed = start.elapsed();
                let outcome = match &result {
                    Ok(_) => AttemptOutcome::Ok,
                    Err(f) => f.outcome(),
                };
                self.metrics.attempt(&group.name, &deployment.id, outcome);
                span.record("llmrouter.attempt.outcome", outcome_name(outcome));
                if let Err(f) = &result {
                    span.record("error.type", outcome_name(outcome));
                    span.record("otel.status_code", "ERROR");
                    if f.upstream_status() != 0 {
                        span.record("http.response.status_code", f.upstream_status());
                    }
                } else if plan.streaming {
                    span.record(
                        "llmrouter.time_to_first_chunk_ms",
                        elapsed.as_millis() as u64,
                    );
                    self.metrics
                        .first_chunk(&group.name, &deployment.id, elapsed.as_secs_f64());
                }
                drop(span);
                match result {
                    Ok(value) => {
                        attempts.push(record(
                            deployment,
                            AttemptOutcome::Ok,
                            elapsed,
                            0,
                            String::new(),
                        ));
                        return Ok(Answered {
                            value,
                            group: group.name.clone(),
                            deployment: deployment.id.clone(),
                            attempts,
                            deadline: plan.deadline,
                            attempt_started: start,
                        });
                    }
                    Err(failure) => {
                        attempts.push(record(
                            deployment,
                            failure.outcome(),
                            elapsed,
                            failure.upstream_status(),
                            failure.detail(),
                        ));
                        tracing::debug!(
                            group = %group.name,
                            deployment = %deployment.id,
                            outcome = ?failure.outcome(),
                            elapsed_ms = elapsed.as_millis() as u64,
                            "attempt failed"
                        );
                        match failure.next() {
                            Next::Retry => {
                                pick.failed(idx);
                                if retries_done >= allowed {
                                    group_last = Some(failure);
                                    break;
                                }
                                retries_done += 1;
                            }
                            Next::SkipDeployment => pick.exclude(idx),
                            Next::Fatal => {
                                return fail(CallError::UpstreamRejected(failure), attempts);
                            }
                            Next::ContextWindow | Next::ContentPolicy => {
                                let (special, error): (&[String], fn(Failure) -> CallError) =
                                    if failure.next() == Next::ContextWindow {
                                        (
                                            &group.context_window_fallbacks,
                                            CallError::ContextWindowExceeded,
                                        )
                                    } else {
                                        (
                                            &group.content_policy_fallbacks,
                                            CallError::ContentPolicyViolation,
                                        )
                                    };
                                if special.is_empty() || special_fallback_taken {
                                    return fail(error(failure), attempts);
                                }
                                // The request will fare no better anywhere in the ordinary chain:
                                // the special fallbacks replace it, once per call.
                                special_fallback_taken = true;
                                chain = special
                                    .iter()
                                    .filter_map(|name| self.config.group(name))
                                    .map(|g| (g.clone(), false))
                                    .collect();
                                last_failure = Some(failure);
                                continue 'groups;
                            }
                        }
                        group_last = Some(failure);
                    }
                }
            }
            if group_last.is_some() {
                last_failure = group_last;
            }
        }

        if Instant::now() >= plan.deadline {
            return fail(CallError::DeadlineExceeded, attempts);
        }
        match last_failure {
            Some(f) => fail(CallError::FallbacksExhausted(f), attempts),
            None => fail(CallError::DeadlineExceeded, attempts),
        }
    }
}

/// Chooses deployments within one group for one call: weighted random first, then deployments
/// that have not failed yet, then retries of ones that have.
struct DeploymentPicker<'a> {
    group: &'a ModelGroup,
    failed: Vec<bool>,
    excluded: Vec<bool>,
    last: Option<usize>,
}

impl<'a> DeploymentPicker<'a> {
    fn new(group: &'a ModelGroup) -> Self {
        let n = group.deployments.len();
        DeploymentPicker {
            group,
            failed: vec![false; n],
            excluded: vec![false; n],
            last: None,
        }
    }

    fn failed(&mut self, idx: usize) {
        self.failed[idx] = true;
    }

    fn exclude(&mut self, idx: usize) {
        self.excluded[idx] = true;
    }

    /// Whether an attempt in this group has already failed: the next one is a retry.
    fn has_failures(&self) -> bool {
        self.failed.iter().chain(&self.excluded).any(|&f| f)
    }

    /// The next deployment, and whether it is a retry of one that already failed (which waits
    /// a backoff first). `None` when every deployment is excluded.
    fn next(&mut self) -> Option<(usize, bool)> {
        let fresh: Vec<usize> = (0..self.failed.len())
            .filter(|&i| !self.excluded[i] && !self.failed[i])
            .collect();
        let choice = if !fresh.is_empty() {
            (self.weighted(&fresh), false)
        } else {
            let usable: Vec<usize> = (0..self.failed.len())
                .filter(|&i| !self.excluded[i])
                .collect();
            // Among failed deployments, move away from the one that failed last when possible.
            let others: Vec<usize> = usable
                .iter()
                .copied()
                .filter(|&i| Some(i) != self.last)
                .collect();
            match (others.is_empty(), usable.is_empty()) {
                (_, true) => return None,
                (true, false) => (usable[0], true),
                (false, false) => (self.weighted(&others), true),
            }
        };
        self.last = Some(choice.0);
        Some(choice)
    }

    fn weighted(&self, candidates: &[usize]) -> usize {
        let weight = |i: usize| u64::from(self.group.deployments[i].weight);
        let total: u64 = candidates.iter().map(|&i| weight(i)).sum();
        let mut roll = fastrand::u64(0..total.max(1));
        for &i in candidates {
            if roll < weight(i) {
                return i;
            }
            roll -= weight(i);
        }
        candidates[candidates.len() - 1]
    }
}

fn record(
    d: &Deployment,
    outcome: AttemptOutcome,
    elapsed: Duration,
    status: u16,
    detail: String,
) -> Attempt {
    Attempt {
        model: d.group.clone(),
        deployment: d.id.clone(),
        outcome: outcome as i32,
        elapsed: Some(to_proto_duration(elapsed)),
        upstream_status: i32::from(status),
        detail,
    }
}

pub fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn no_attempts(error: CallError) -> CallFailure {
    CallFailure {
        error,
        attempts: Vec::new(),
    }
}

/// The deployment id reported for answers made up from the request's `mock_response`.
pub const MOCK_RESPONSE_DEPLOYMENT: &str = "mock_response";

fn mock_answer<T>(plan: &Plan, text: &str, value: T) -> Answered<T> {
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
        }],
        group,
        deployment: MOCK_RESPONSE_DEPLOYMENT.into(),
        deadline: plan.deadline,
        attempt_started: now,
    }
}

fn mock_completion(text: &str) -> Completion {
    Completion {
        text: text.to_string(),
        finish_reason: FinishReason::Stop,
        usage: None,
    }
}

fn mock_committed(text: &str) -> Committed {
    let mut pieces: Vec<Chunk> = text
        .split_inclusive(' ')
        .map(|p| Chunk {
            delta: p.to_string(),
            ..Chunk::default()
        })
        .collect();
    pieces.push(Chunk {
        finish_reason: Some(FinishReason::Stop),
        ..Chunk::default()
    });
    let mut it = pieces.into_iter();
    let first = it.next().unwrap_or_default();
    Committed {
        first,
        rest: Box::pin(futures_util::stream::iter(it.map(Ok))),
    }
}

#[cfg(test)]
mod tests;
