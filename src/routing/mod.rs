//! Routing: from a validated call to an answer. Builds the call's plan (the chain of model
//! groups and its total deadline), then walks it: choose a deployment by the group's strategy,
//! skipping those cooling down, at capacity or out of retry budget; run an attempt under its
//! deadline (racing hedges against it when the group hedges); decide from the failure whether
//! to retry, skip the deployment, fall back or stop.
//!
//! - [`deadline`]: the arithmetic of total, attempt and first-chunk deadlines, and backoff.
//! - [`health`]: what is remembered of each deployment across calls: in-flight attempts,
//!   cooldowns, latency, usage and the retry budget.
//! - [`retry`]: what a failure means for the call.
//! - [`error`]: how a call fails, and which gRPC code each failure gets.
//! - [`stream`]: a committed stream's idle and total timers.

pub mod deadline;
pub mod error;
pub mod health;
mod race;
pub mod retry;
pub mod stream;

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::config::{Config, Deployment, ModelGroup, Strategy};
use crate::proto::{Attempt, AttemptOutcome, FinishReason};
use crate::providers::{
    ChatRequest, Chunk, ChunkStream, Completion, ErrorKind, Provider, ProviderError,
};
use crate::telemetry::{Metrics, metrics::outcome_name, traces::TARGET};
use deadline::{AttemptDeadlines, Backoff};
pub use error::CallError;
use health::{AttemptEnd, Check, DeploymentState, Limits, Load, Tracker, Unavailable};
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
    /// The answering deployment's lease (it stays in flight while a stream runs), through
    /// which a committed stream reports how it ended. `None` for `mock_response`.
    pub tracker: Option<Tracker>,
}

/// A committed stream: its first chunk and the rest.
pub struct Committed {
    pub first: Chunk,
    pub rest: ChunkStream,
}

/// A deployment's provider client and shared state.
#[derive(Debug, Clone)]
struct Slot {
    provider: Arc<Provider>,
    state: Arc<DeploymentState>,
}

/// The routing table of one config snapshot, with a provider client and shared state per
/// deployment. Immutable: calls share it through an `Arc` without locking. A reload builds a
/// new one that keeps each deployment's state (cooldowns, latency, budget) by id.
#[derive(Debug)]
pub struct Router {
    config: Arc<Config>,
    http: reqwest::Client,
    /// Per model group, in the order of the group's deployments.
    slots: HashMap<String, Arc<[Slot]>>,
    /// By deployment id.
    states: HashMap<String, Arc<DeploymentState>>,
    metrics: Arc<Metrics>,
}

/// The router of the current config snapshot. A reload swaps in a new one; each call takes
/// the current one when it starts and keeps it to its end.
#[derive(Debug)]
pub struct SharedRouter {
    current: std::sync::RwLock<Arc<Router>>,
}

impl SharedRouter {
    pub fn new(router: Router) -> Self {
        SharedRouter {
            current: std::sync::RwLock::new(Arc::new(router)),
        }
    }

    pub fn current(&self) -> Arc<Router> {
        // Only a swap writes, and it cannot panic midway: a poisoned lock still holds a router.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Builds the router for `config` on the current one's state and swaps it in.
    pub fn reload(&self, config: Arc<Config>) -> Result<(), String> {
        let next = Arc::new(self.current().reload(config)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }
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
    /// The prompt's size in tokens, estimated, for `tpm` limits.
    request_tokens: u64,
}

/// What an attempt's answer tells the deployment's latency record.
pub trait AttemptValue {
    /// Output tokens of a whole answer; `None` for a stream's first chunk, whose latency is
    /// the time to it.
    fn output_tokens(&self) -> Option<u32>;
}

impl AttemptValue for Completion {
    fn output_tokens(&self) -> Option<u32> {
        Some(match &self.usage {
            Some(u) if u.completion_tokens > 0 => u.completion_tokens,
            _ => u32::try_from(estimate_tokens(self.text.len())).unwrap_or(u32::MAX),
        })
    }
}

impl AttemptValue for Committed {
    fn output_tokens(&self) -> Option<u32> {
        None
    }
}

/// Tokens in `chars` characters of text, at about four a token: close enough for per-minute
/// limits and latency per token.
fn estimate_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

impl Router {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Router, String> {
        Self::build(config, metrics, None)
    }

    /// The router for a reloaded config. Deployments that kept their id and still point at the
    /// same provider, model and base URL keep their state: a cooling deployment stays cooling.
    pub fn reload(&self, config: Arc<Config>) -> Result<Router, String> {
        Self::build(config, self.metrics.clone(), Some(self))
    }

    fn build(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        previous: Option<&Router>,
    ) -> Result<Router, String> {
        let http = match previous {
            Some(p) if p.config.router.connect_timeout == config.router.connect_timeout => {
                p.http.clone()
            }
            // One pooled client for every deployment: connections are shared per host. The
            // connect timeout is separate from, and much shorter than, any request deadline.
            _ => reqwest::Client::builder()
                .connect_timeout(config.router.connect_timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                // No provider redirects an API call, and a followed redirect would carry the
                // vendor key headers (x-api-key, api-key, x-goog-api-key) to the new host.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("llm-router/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
        };
        let now = Instant::now();
        let budget = config.router.retry_budget;
        let mut states = HashMap::new();
        let mut slots = HashMap::new();
        for group in config.groups.values() {
            let group_slots: Vec<Slot> = group
                .deployments
                .iter()
                .map(|d| {
                    let state = match previous.and_then(|p| p.kept_state(d)) {
                        Some(state) => {
                            state.configure_budget(budget);
                            state
                        }
                        None => Arc::new(DeploymentState::new(now, budget)),
                    };
                    states.insert(d.id.clone(), state.clone());
                    Slot {
                        provider: Provider::new(d, &http),
                        state,
                    }
                })
                .collect();
            slots.insert(group.name.clone(), group_slots.into());
        }
        Ok(Router {
            config,
            http,
            slots,
            states,
            metrics,
        })
    }

    /// This router's state for a deployment of a new config, if it is the same deployment.
    fn kept_state(&self, d: &Deployment) -> Option<Arc<DeploymentState>> {
        let old = self
            .config
            .groups
            .values()
            .flat_map(|g| g.deployments.iter())
            .find(|o| o.id == d.id)?;
        let same = old.provider.name() == d.provider.name()
            && old.provider.api_base() == d.provider.api_base()
            && old.upstream_model == d.upstream_model;
        same.then(|| self.states.get(&d.id).cloned()).flatten()
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A deployment's shared state, for ListModels and metrics.
    pub fn deployment_state(&self, id: &str) -> Option<&Arc<DeploymentState>> {
        self.states.get(id)
    }

    fn picker(&self, group: &Arc<ModelGroup>) -> Picker {
        let slots = self
            .slots
            .get(&group.name)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()));
        Picker::new(group.clone(), slots)
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
        let prompt_chars: usize = req.chat.messages.iter().map(|m| m.content.len()).sum();
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
            request_tokens: estimate_tokens(prompt_chars),
        })
    }

    /// Answers a unary call.
    pub async fn complete(&self, req: &CallRequest) -> Result<Answered<Completion>, CallFailure> {
        let plan = self.plan(req, false).map_err(CallFailure::from)?;
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
        let plan = self.plan(req, true).map_err(CallFailure::from)?;
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
        T: AttemptValue,
        F: FnMut(Arc<Provider>, AttemptDeadlines) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let settings = &self.config.router;
        let backoff = Backoff {
            initial: settings.retry_backoff_initial,
            max: settings.retry_backoff_max,
            min: settings.retry_after,
        };
        let mut call = CallLog::default();
        let mut last_failure: Option<Failure> = None;
        let mut chain: VecDeque<(Arc<ModelGroup>, bool)> = plan
            .chain
            .iter()
            .enumerate()
            .map(|(i, g)| (g.clone(), i == 0))
            .collect();
        let mut special_fallback_taken = false;
        // The next group's picker when this group's hedges already ran attempts there.
        let mut carried: Option<Picker> = None;

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
            let mut pick = match carried.take() {
                Some(p) if Arc::ptr_eq(&p.group, &group) => p,
                _ => self.picker(&group),
            };
            // Retries after the group's first attempt; fixed by that attempt's deployment.
            let mut retries_allowed: Option<u32> = None;
            let mut retries_done = 0u32;
            // The group's latest failure, which the next retry's backoff reads.
            let mut group_last: Option<Failure> = None;

            loop {
                let facts = self.facts(plan, call.started == 0, false);
                let (idx, is_retry_of_same) = match pick.next(&facts) {
                    Pick::Go { idx, retry_of_same } => (idx, retry_of_same),
                    Pick::None { skipped } => {
                        // Every deployment left is unavailable: the group fails at once.
                        call.skipped(&group, &skipped);
                        break;
                    }
                };
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
                if Instant::now() >= plan.deadline {
                    break 'groups;
                }
                if pick.has_failures() {
                    self.metrics.retry(&group.name, &deployment.id);
                }
                let round = Round {
                    is_requested,
                    fallback_index,
                    next_group: chain.front().map(|(g, _)| g.clone()),
                };
                let failure = match self
                    .round(
                        plan,
                        &round,
                        &mut pick,
                        idx,
                        &mut carried,
                        &mut attempt,
                        &mut call,
                    )
                    .await
                {
                    Ok(won) => {
                        return Ok(Answered {
                            value: won.value,
                            group: won.group.name.clone(),
                            deployment: won.group.deployments[won.idx].id.clone(),
                            attempts: call.attempts,
                            deadline: plan.deadline,
                            attempt_started: won.start,
                            tracker: Some(won.tracker),
                        });
                    }
                    Err(failure) => failure,
                };
                tracing::debug!(
                    group = %group.name,
                    deployment = %deployment.id,
                    outcome = ?failure.outcome(),
                    "attempt failed"
                );
                match failure.next() {
                    Next::Retry => {
                        if retries_done >= allowed {
                            group_last = Some(failure);
                            break;
                        }
                        retries_done += 1;
                    }
                    Next::SkipDeployment => {}
                    Next::Fatal => {
                        return fail(CallError::UpstreamRejected(failure), call.attempts);
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
                            return fail(error(failure), call.attempts);
                        }
                        // The request will fare no better anywhere in the ordinary chain: the
                        // special fallbacks replace it, once per call.
                        special_fallback_taken = true;
                        carried = None;
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
            if group_last.is_some() {
                last_failure = group_last;
            }
        }

        if Instant::now() >= plan.deadline {
            return fail(CallError::DeadlineExceeded, call.attempts);
        }
        let error = match (last_failure, call.unavailable) {
            (Some(f), _) => CallError::FallbacksExhausted(f),
            (None, Some((until, cooling))) => CallError::NoDeploymentAvailable {
                retry_after: until.saturating_duration_since(Instant::now()),
                cooling,
            },
            (None, None) => CallError::DeadlineExceeded,
        };
        fail(error, call.attempts)
    }

    /// What a pick needs to know of the router's settings and the call.
    fn facts(&self, plan: &Plan, first_attempt: bool, fresh_only: bool) -> Facts {
        let r = &self.config.router;
        Facts {
            streaming: plan.streaming,
            request_tokens: plan.request_tokens,
            first_attempt,
            fresh_only,
            budget: r.retry_budget,
            latency_ttl: r.latency_ttl,
            latency_buffer: r.lowest_latency_buffer,
        }
    }

    /// Runs an attempt, with its hedges when the group hedges, until one answers or all have
    /// failed. The losers of a race are cancelled (their upstream requests closed) and logged.
    #[allow(clippy::too_many_arguments)]
    async fn round<T, F, Fut>(
        &self,
        plan: &Plan,
        round: &Round,
        pick: &mut Picker,
        idx: usize,
        carried: &mut Option<Picker>,
        attempt: &mut F,
        call: &mut CallLog,
    ) -> Result<Won<T>, Failure>
    where
        T: AttemptValue,
        F: FnMut(Arc<Provider>, AttemptDeadlines) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut running: Vec<Option<Running>> = Vec::with_capacity(1);
        let mut pending = race::Race::new();
        let mock = plan.mock_timeout && round.is_requested;
        let (first, fut) = self.launch(
            plan,
            pick,
            idx,
            mock,
            round.fallback_index,
            false,
            0,
            attempt,
        );
        call.started += 1;
        running.push(Some(first));
        pending.push(fut);
        let hedge = pick.group.hedge;
        let mut hedges = 0u32;
        let mut hedge_at = hedge.map(|h| Instant::now() + h.after);
        loop {
            let timer = async {
                match hedge_at {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                ended = pending.next() => {
                    // The round returns once its last attempt ends, so one is always pending.
                    let Some((no, result)) = ended else {
                        return Err(Failure::Timeout { first_chunk: plan.streaming });
                    };
                    let Some(mut r) = running.get_mut(no).and_then(Option::take) else {
                        continue;
                    };
                    let owner = if r.in_next_group { carried.as_mut() } else { Some(&mut *pick) };
                    if let Some(p) = owner {
                        p.running[r.idx] = false;
                        if let Err(f) = &result {
                            match f.next() {
                                Next::Retry => p.failed[r.idx] = true,
                                Next::SkipDeployment => p.excluded[r.idx] = true,
                                _ => {}
                            }
                        }
                    }
                    // The round ends with an answer, with its last attempt failing, or with a
                    // failure no other deployment can mend (a bad request). Attempts still
                    // running are cancelled and logged first, so that the attempt that decided
                    // the call is the last in the log, as the API promises.
                    let ends_round = match &result {
                        Ok(_) => true,
                        Err(f) => {
                            pending.is_empty()
                                || !matches!(f.next(), Next::Retry | Next::SkipDeployment)
                        }
                    };
                    if ends_round && running.iter().any(Option::is_some) {
                        let why = match &result {
                            Ok(_) => format!(
                                "lost the hedge race to `{}`",
                                r.group.deployments[r.idx].id
                            ),
                            Err(_) => "another attempt of the call failed for good".to_string(),
                        };
                        for other in running.iter_mut().filter_map(Option::take) {
                            self.cancel(other, &why, call);
                        }
                    }
                    self.settle(plan, &mut r, result.as_ref(), call);
                    match result {
                        Ok(value) => {
                            return Ok(Won {
                                value,
                                group: r.group,
                                idx: r.idx,
                                start: r.start,
                                tracker: r.tracker,
                            });
                        }
                        Err(failure) if ends_round => return Err(failure),
                        // Others are still running: wait for them.
                        Err(_) => {}
                    }
                }
                () = timer => {
                    hedge_at = None;
                    let Some(h) = hedge else { continue };
                    if hedges >= h.max || Instant::now() >= plan.deadline {
                        continue;
                    }
                    let Some((in_next_group, target)) =
                        self.hedge_target(plan, pick, round.next_group.as_ref(), carried)
                    else {
                        continue;
                    };
                    let (owner, mock, index) = match (in_next_group, carried.as_mut()) {
                        (true, Some(p)) => (p, false, round.fallback_index + 1),
                        _ => (&mut *pick, mock, round.fallback_index),
                    };
                    let (r, fut) = self.launch(plan, owner, target, mock, index, true, running.len(), attempt);
                    self.metrics.hedge(&r.group.name, &r.group.deployments[target].id);
                    let r = Running { in_next_group, ..r };
                    call.started += 1;
                    running.push(Some(r));
                    pending.push(fut);
                    hedges += 1;
                    hedge_at = Some(Instant::now() + h.after);
                }
            }
        }
    }

    /// Where a hedge goes: a deployment of the group not yet tried in this call, else one of
    /// the next group in the chain. Hedges are retries for the retry budget.
    fn hedge_target(
        &self,
        plan: &Plan,
        pick: &mut Picker,
        next_group: Option<&Arc<ModelGroup>>,
        carried: &mut Option<Picker>,
    ) -> Option<(bool, usize)> {
        let facts = self.facts(plan, false, true);
        if let Pick::Go { idx, .. } = pick.next(&facts) {
            return Some((false, idx));
        }
        let next = next_group?;
        let p = carried.get_or_insert_with(|| self.picker(next));
        match p.next(&facts) {
            Pick::Go { idx, .. } => Some((true, idx)),
            Pick::None { .. } => None,
        }
    }

    /// Starts an attempt on `pick`'s deployment `idx`: its span, its lease on the deployment,
    /// and the future that runs it and yields `(no, result)`.
    #[allow(clippy::too_many_arguments)]
    fn launch<T, F, Fut>(
        &self,
        plan: &Plan,
        pick: &mut Picker,
        idx: usize,
        mock: bool,
        fallback_index: usize,
        hedge: bool,
        no: usize,
        attempt: &mut F,
    ) -> (
        Running,
        impl Future<Output = (usize, Result<T, Failure>)> + use<T, F, Fut>,
    )
    where
        F: FnMut(Arc<Provider>, AttemptDeadlines) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let group = pick.group.clone();
        let deployment = &group.deployments[idx];
        let slot = &pick.slots[idx];
        pick.running[idx] = true;
        pick.attempted = true;
        let start = Instant::now();
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
            llmrouter.hedge = hedge,
            llmrouter.attempt.outcome = Empty,
            llmrouter.time_to_first_chunk_ms = Empty,
            http.response.status_code = Empty,
            error.type = Empty,
        );
        let r = &self.config.router;
        let tracker = Tracker {
            lease: slot.state.begin(start, plan.request_tokens),
            deployment: deployment.clone(),
            policy: r.cooldowns,
            budget: r.retry_budget,
            latency_ttl: r.latency_ttl,
            metrics: self.metrics.clone(),
        };
        let until = deadlines.until_first_chunk();
        let fut = attempt(slot.provider.clone(), deadlines);
        let run = async move {
            let result = if mock {
                drop(fut);
                sleep_until(until).await;
                Err(Failure::MockTimeout)
            } else {
                fut.await
            };
            (no, result)
        }
        .instrument(span.clone());
        let running = Running {
            group,
            idx,
            in_next_group: false,
            hedge,
            start,
            span,
            tracker,
        };
        (running, run)
    }

    /// Records an attempt's end: its log entry, metrics, span, and the deployment's health.
    fn settle<T: AttemptValue>(
        &self,
        plan: &Plan,
        r: &mut Running,
        result: Result<&T, &Failure>,
        call: &mut CallLog,
    ) {
        let deployment = &r.group.deployments[r.idx];
        let elapsed = r.start.elapsed();
        let outcome = match result {
            Ok(_) => AttemptOutcome::Ok,
            Err(f) => f.outcome(),
        };
        self.metrics.attempt(&r.group.name, &deployment.id, outcome);
        let span = &r.span;
        span.record("llmrouter.attempt.outcome", outcome_name(outcome));
        let end = match result {
            Ok(value) => {
                if plan.streaming {
                    span.record(
                        "llmrouter.time_to_first_chunk_ms",
                        elapsed.as_millis() as u64,
                    );
                    self.metrics
                        .first_chunk(&r.group.name, &deployment.id, elapsed.as_secs_f64());
                }
                call.attempts.push(record(
                    deployment,
                    outcome,
                    elapsed,
                    0,
                    String::new(),
                    r.hedge,
                ));
                Some(AttemptEnd::Ok {
                    elapsed,
                    output_tokens: value.output_tokens(),
                })
            }
            Err(f) => {
                span.record("error.type", outcome_name(outcome));
                span.record("otel.status_code", "ERROR");
                if f.upstream_status() != 0 {
                    span.record("http.response.status_code", f.upstream_status());
                }
                call.attempts.push(record(
                    deployment,
                    outcome,
                    elapsed,
                    f.upstream_status(),
                    f.detail(),
                    r.hedge,
                ));
                f.kind().map(|kind| AttemptEnd::Failed {
                    kind,
                    retry_after: f.retry_after(),
                })
            }
        };
        if let Some(end) = end {
            r.tracker.record(end);
        }
    }

    /// Abandons a running attempt: its future is dropped by the caller, which closes the
    /// upstream request.
    fn cancel(&self, r: Running, why: &str, call: &mut CallLog) {
        let deployment = &r.group.deployments[r.idx];
        let outcome = AttemptOutcome::Cancelled;
        self.metrics.attempt(&r.group.name, &deployment.id, outcome);
        r.span
            .record("llmrouter.attempt.outcome", outcome_name(outcome));
        call.attempts.push(record(
            deployment,
            outcome,
            r.start.elapsed(),
            0,
            why.to_string(),
            r.hedge,
        ));
    }
}

fn fail<T>(error: CallError, attempts: Vec<Attempt>) -> Result<T, CallFailure> {
    Err(CallFailure { error, attempts })
}

/// A round's place in the call.
struct Round {
    is_requested: bool,
    fallback_index: usize,
    /// The next group in the chain, where hedges go when the group has no fresh deployment.
    next_group: Option<Arc<ModelGroup>>,
}

/// An attempt in flight within a round.
struct Running {
    group: Arc<ModelGroup>,
    idx: usize,
    /// Whether the attempt is a hedge in the next group of the chain.
    in_next_group: bool,
    hedge: bool,
    start: Instant,
    span: tracing::Span,
    tracker: Tracker,
}

/// The attempt that answered.
struct Won<T> {
    value: T,
    group: Arc<ModelGroup>,
    idx: usize,
    start: Instant,
    tracker: Tracker,
}

/// What a call has done so far.
#[derive(Default)]
struct CallLog {
    attempts: Vec<Attempt>,
    /// Attempts started, hedges included.
    started: usize,
    /// When the first skipped deployment is back, and whether any was skipped for cooling
    /// (else for capacity): the answer when no attempt could be made at all.
    unavailable: Option<(Instant, bool)>,
}

impl CallLog {
    /// Logs the deployments a group could not use, each as a not-an-attempt entry.
    fn skipped(&mut self, group: &ModelGroup, skipped: &[(usize, Unavailable)]) {
        let now = Instant::now();
        for &(idx, why) in skipped {
            let d = &group.deployments[idx];
            let secs = |until: Instant| until.saturating_duration_since(now).as_secs_f64();
            let (outcome, detail, back) = match why {
                Unavailable::CoolingDown { until } => (
                    AttemptOutcome::CoolingDown,
                    format!(
                        "skipped: cooling down for another {:.1}s after failing more than allowed_fails times within a minute",
                        secs(until)
                    ),
                    Some((until, true)),
                ),
                Unavailable::AtCapacity { until } => (
                    AttemptOutcome::AtCapacity,
                    "skipped: at max_parallel_requests, or at its rpm/tpm for this minute".to_string(),
                    Some((until, false)),
                ),
                Unavailable::Throttled => (
                    AttemptOutcome::RetryThrottled,
                    "skipped: its retry budget is at or below half, so only first attempts may use it".to_string(),
                    None,
                ),
            };
            self.attempts
                .push(record(d, outcome, Duration::ZERO, 0, detail, false));
            if let Some((until, cooling)) = back {
                self.unavailable = Some(match self.unavailable {
                    Some((u, c)) if u <= until => (u, c || cooling),
                    Some((_, c)) => (until, c || cooling),
                    None => (until, cooling),
                });
            }
        }
    }
}

/// What a pick compares, from the router's settings and the call.
struct Facts {
    streaming: bool,
    request_tokens: u64,
    /// The call's first attempt is never throttled by a retry budget.
    first_attempt: bool,
    /// Only deployments not yet tried in this call (for hedges).
    fresh_only: bool,
    budget: Option<crate::config::RetryBudget>,
    latency_ttl: Duration,
    latency_buffer: f64,
}

/// Chooses deployments within one group for one call, by the group's strategy: first among
/// deployments not yet tried, then among retries of ones that failed. Deployments that are
/// cooling down, at capacity, or (for retries) out of retry budget are skipped.
struct Picker {
    group: Arc<ModelGroup>,
    slots: Arc<[Slot]>,
    failed: Vec<bool>,
    excluded: Vec<bool>,
    running: Vec<bool>,
    last: Option<usize>,
    attempted: bool,
}

enum Pick {
    /// Run an attempt on deployment `idx`; `retry_of_same` when it already failed in this
    /// call (the attempt waits a backoff first).
    Go { idx: usize, retry_of_same: bool },
    /// No deployment can take an attempt; those skipped for being unavailable, and why.
    None { skipped: Vec<(usize, Unavailable)> },
}

impl Picker {
    fn new(group: Arc<ModelGroup>, slots: Arc<[Slot]>) -> Self {
        let n = group.deployments.len();
        Picker {
            group,
            slots,
            failed: vec![false; n],
            excluded: vec![false; n],
            running: vec![false; n],
            last: None,
            attempted: false,
        }
    }

    /// Whether an attempt in this group has already failed: the next one is a retry.
    fn has_failures(&self) -> bool {
        self.failed.iter().chain(&self.excluded).any(|&f| f)
    }

    fn next(&mut self, facts: &Facts) -> Pick {
        let now = Instant::now();
        let mut fresh = Vec::new();
        let mut again = Vec::new();
        let mut skipped = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if self.excluded[i] || self.running[i] || (facts.fresh_only && self.failed[i]) {
                continue;
            }
            let d = &self.group.deployments[i];
            let limits = Limits {
                max_parallel: d.max_parallel_requests,
                rpm: d.rpm,
                tpm: d.tpm,
                enforce_usage: self.group.strategy == Strategy::UsageBased,
                request_tokens: facts.request_tokens,
                budget: facts.budget,
                streaming: facts.streaming,
                latency_ttl: facts.latency_ttl,
            };
            // A group's own retries are never a call's first attempt.
            let first = facts.first_attempt && !self.attempted;
            match slot.state.check(now, &limits, first) {
                Check::Available(load) if self.failed[i] => again.push((i, load)),
                Check::Available(load) => fresh.push((i, load)),
                Check::Unavailable(why) => skipped.push((i, why)),
            }
        }
        let (mut pool, retry_of_same) = if fresh.is_empty() {
            (again, true)
        } else {
            (fresh, false)
        };
        if retry_of_same && pool.len() > 1 {
            // Among failed deployments, move away from the one that failed last.
            pool.retain(|&(i, _)| Some(i) != self.last);
        }
        if pool.is_empty() {
            return Pick::None { skipped };
        }
        let idx = choose(&self.group, &pool, facts.latency_buffer);
        self.last = Some(idx);
        Pick::Go { idx, retry_of_same }
    }
}

/// The group's strategy's choice among available deployments.
fn choose(group: &ModelGroup, pool: &[(usize, Load)], latency_buffer: f64) -> usize {
    let at_random = |keep: &dyn Fn(&Load) -> bool| {
        let kept: Vec<usize> = pool
            .iter()
            .filter(|(_, l)| keep(l))
            .map(|&(i, _)| i)
            .collect();
        kept.get(fastrand::usize(..kept.len().max(1)))
            .copied()
            .unwrap_or(pool[0].0)
    };
    match group.strategy {
        Strategy::SimpleShuffle => {
            let weight = |i: usize| u64::from(group.deployments[i].weight);
            let total: u64 = pool.iter().map(|&(i, _)| weight(i)).sum();
            let mut roll = fastrand::u64(0..total.max(1));
            for &(i, _) in pool {
                if roll < weight(i) {
                    return i;
                }
                roll -= weight(i);
            }
            pool[pool.len() - 1].0
        }
        Strategy::LeastBusy => {
            let least = pool.iter().map(|(_, l)| l.in_flight).min().unwrap_or(0);
            at_random(&|l| l.in_flight == least)
        }
        Strategy::LatencyBased => {
            // Unmeasured deployments first, so that each gets measured (again, once a
            // timeout's penalty has expired).
            if pool.iter().any(|(_, l)| l.latency.is_none()) {
                return at_random(&|l| l.latency.is_none());
            }
            let best = pool
                .iter()
                .filter_map(|(_, l)| l.latency)
                .fold(f64::INFINITY, f64::min);
            let limit = best * (1.0 + latency_buffer);
            at_random(&|l| l.latency.is_some_and(|v| v <= limit))
        }
        Strategy::UsageBased => {
            let least = pool
                .iter()
                .map(|(_, l)| (l.tokens, l.requests))
                .min()
                .unwrap_or_default();
            at_random(&|l| (l.tokens, l.requests) == least)
        }
    }
}

fn record(
    d: &Deployment,
    outcome: AttemptOutcome,
    elapsed: Duration,
    status: u16,
    detail: String,
    hedge: bool,
) -> Attempt {
    Attempt {
        model: d.group.clone(),
        deployment: d.id.clone(),
        outcome: outcome as i32,
        elapsed: Some(to_proto_duration(elapsed)),
        upstream_status: i32::from(status),
        detail,
        hedge,
    }
}

/// A monotonic instant as wall-clock time, for what clients and dashboards read.
pub fn wall_clock(at: Instant) -> std::time::SystemTime {
    let now = Instant::now();
    let wall = std::time::SystemTime::now();
    if at >= now {
        wall + (at - now)
    } else {
        wall - (now - at)
    }
}

pub fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
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
            hedge: false,
        }],
        group,
        deployment: MOCK_RESPONSE_DEPLOYMENT.into(),
        deadline: plan.deadline,
        attempt_started: now,
        tracker: None,
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
