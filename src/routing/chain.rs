//! The walk over a call's fallback chain: enter each model group in turn, ask the retry policy
//! what to do at each step, and carry the decision out (attempt, wait, move on, switch to a
//! special fallback list, or stop), until an attempt answers or the chain is exhausted.

use std::{collections::VecDeque, future::Future, sync::Arc};

use tokio::time::Instant;
use tracing::Instrument as _;

use super::{
    Answered, CallError, CallFailure, Router,
    capability::missing,
    deadline::{AttemptDeadlines, Backoff},
    failure::{Failure, Fault},
    health::Unavailable,
    log::CallLog,
    pick::{Facts, Pick, Picker},
    plan::Plan,
    policy::{self, Decision, Leave, Position, Special},
    reach::Reach,
    round::{AttemptValue, Call, RoundAt, Won},
};
use crate::config::{Deployment, ModelGroup};
use crate::providers::Provider;
use crate::telemetry::traces::TARGET;

/// Where a recovery's walk starts: in the first group of its chain, the deployment whose
/// committed stream broke, counted as that group's first failure.
pub struct Seed {
    pub deployment: usize,
    pub failure: Failure,
    /// Whether the call had already switched to a special fallback list (once per call).
    pub switched: bool,
    /// What the call's earlier breaks left (the stream's own deployment included).
    pub broken: Broken,
}

/// The deployments that broke one of a call's committed streams, kept across its recoveries:
/// a deployment that broke is tried again only as the chain's last option, and then at most
/// its group's retries in total for the call (not afresh at each recovery).
#[derive(Debug, Clone, Default)]
pub struct Broken {
    /// (group name, deployment index in the group).
    pub deployments: Vec<(String, usize)>,
    /// Attempts the call has made on broken deployments.
    pub retries: u32,
}

impl Broken {
    /// Adds deployment `idx` of `group`, once.
    pub fn add(&mut self, group: &str, idx: usize) {
        if !self
            .deployments
            .iter()
            .any(|(g, i)| g == group && *i == idx)
        {
            self.deployments.push((group.to_string(), idx));
        }
    }
}

/// What a committed stream keeps so that it can recover if it breaks: the rest of its chain.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The call's plan, which a recovery's is derived from.
    pub plan: Plan,
    /// The answering group first, then the groups after it.
    pub chain: Vec<Arc<ModelGroup>>,
    /// The answering deployment, in the first group.
    pub deployment: usize,
    pub switched: bool,
    /// The deployments that broke the call's earlier streams.
    pub broken: Broken,
}

/// What the walk does next, as the current group's picker and the retry policy decided.
enum Next {
    /// Run an attempt on deployment `idx` of the current group, after `wait`.
    Attempt {
        idx: usize,
        wait: Option<std::time::Duration>,
    },
    /// Leave the current group for the next one in the chain.
    Leave,
    SwitchTo(Special),
    Stop(CallError),
    /// No group is current, or nothing can be picked: the chain is done.
    Exhausted,
}

/// Sleeps a retry's backoff, in its own span.
async fn backoff_sleep(wait: std::time::Duration) {
    tokio::time::sleep(wait)
        .instrument(tracing::info_span!(
            target: TARGET,
            "backoff",
            otel.name = "llmrouter.backoff",
            llmrouter.backoff_ms = wait.as_millis() as u64,
        ))
        .await;
}

/// Where a call stands in its chain of model groups.
struct Chain {
    /// Groups still to enter, in order.
    ahead: VecDeque<Arc<ModelGroup>>,
    /// The group the call is in, once it has entered one.
    current: Option<InGroup>,
    /// Whether the current group is the requested one, not a fallback.
    requested: bool,
    /// 0 for the requested group, then 1, 2, ... along the chain (special fallbacks included).
    fallback_index: usize,
    /// Whether the call switched to a special fallback list: it does so once at most.
    switched: bool,
    /// The failure of the last group that made an attempt: the call's error if the chain runs
    /// out.
    last_failure: Option<Failure>,
    /// The next group's picker, when the current group's hedges already ran attempts there.
    carried: Option<Picker>,
    /// For a recovery: the broken deployment, marked failed when the first group is entered.
    seed: Option<Seed>,
    /// For a recovery: the deployments that broke the call's streams so far.
    broken: Broken,
}

/// The call's state within one group.
struct InGroup {
    pick: Picker,
    /// Retries made in the group, not counting its first attempt.
    retries_done: u32,
    /// Fixed by the group's first attempt: that deployment's `max_retries`, or the request's
    /// `num_retries` when lower (a caller may ask for fewer retries, never more).
    retries_allowed: Option<u32>,
    /// The group's latest failure; `None` until one of its attempts fails.
    failure: Option<Failure>,
}

impl InGroup {
    /// Where the call stands in this group, for the retry policy; `pick` is what the group's
    /// picker would run next. The group's first attempt fixes how many retries it may make.
    fn position(&mut self, pick: &Pick, plan: &Plan, switched: bool, backoff: Backoff) -> Position {
        let group = &self.pick.group;
        if let (None, Pick::Go { idx, .. }) = (self.retries_allowed, pick) {
            let first = &group.deployments[*idx];
            let configured = first.max_retries;
            self.retries_allowed = Some(plan.num_retries.map_or(configured, |n| n.min(configured)));
        }
        // Unset only while no deployment of the group can be picked, when it does not matter.
        let mut retries_allowed = self.retries_allowed.unwrap_or(0);
        // LiteLLM's retry_policy: the failure's kind sets the count, over max_retries (and a
        // request's num_retries still only lowers it).
        if let Some(n) = self
            .failure
            .as_ref()
            .and_then(|f| group.retry_policy.retries(f.class().kind))
        {
            retries_allowed = plan.num_retries.map_or(n, |r| r.min(n));
        }
        Position {
            retries_done: self.retries_done,
            retries_allowed,
            candidate: pick.candidate(),
            context_window_fallbacks: !switched && !group.context_window_fallbacks.is_empty(),
            content_policy_fallbacks: !switched && !group.content_policy_fallbacks.is_empty(),
            time_left: plan.deadline.saturating_duration_since(Instant::now()),
            backoff,
            provider_hint: self.failure.as_ref().and_then(Failure::provider_wait_hint),
            jitter: fastrand::f64(),
        }
    }
}

impl Chain {
    fn new(plan: &Plan, seed: Option<Seed>) -> Self {
        Chain {
            ahead: plan.chain.iter().cloned().collect(),
            current: None,
            // A recovery's first group is where the stream broke, not the caller's request.
            requested: !plan.recovery,
            fallback_index: 0,
            switched: seed.as_ref().is_some_and(|s| s.switched),
            last_failure: None,
            carried: None,
            broken: seed.as_ref().map(|s| s.broken.clone()).unwrap_or_default(),
            seed,
        }
    }

    /// Whether the current group may pick a deployment that broke one of the call's streams:
    /// only as the chain's last option, within its group's retries for the whole call.
    fn broken_ok(&self, plan: &Plan) -> bool {
        let Some(group) = &self.current else {
            return false;
        };
        if !self.ahead.is_empty() {
            return false;
        }
        let group = &group.pick.group;
        let retries = self
            .broken
            .deployments
            .iter()
            .filter(|(g, _)| *g == group.name)
            .filter_map(|&(_, i)| group.deployments.get(i))
            .map(|d| {
                plan.num_retries
                    .map_or(d.max_retries, |n| n.min(d.max_retries))
            })
            .max()
            .unwrap_or(0);
        self.broken.retries < retries
    }

    /// What the answer's stream needs to recover: the chain from the answering group on.
    fn resume(&self, plan: &Plan, won: &Won<impl Sized>) -> Resume {
        let mut chain: Vec<_> = self.ahead.iter().cloned().collect();
        let in_current = self
            .current
            .as_ref()
            .filter(|c| Arc::ptr_eq(&c.pick.group, &won.group));
        if let Some(current) = in_current {
            chain.insert(0, current.pick.group.clone());
        }
        // Else a hedge won in the next group, which heads `ahead`.
        Resume {
            plan: plan.clone(),
            chain,
            deployment: won.idx,
            switched: self.switched,
            broken: self.broken.clone(),
        }
    }

    /// Leaves the current group, if any, and enters the next one. `None` when the chain is
    /// exhausted.
    fn enter_next(
        &mut self,
        router: &Router,
        plan: &Plan,
        log: &mut CallLog,
    ) -> Option<&mut InGroup> {
        let group = self.ahead.pop_front()?;
        if let Some(left) = self.current.take() {
            self.requested = false;
            self.fallback_index += 1;
            router
                .metrics()
                .fallback(&left.pick.group.name, &group.name);
            if left.failure.is_some() {
                self.last_failure = left.failure;
            }
        }
        let pick = match self.carried.take() {
            Some(p) if Arc::ptr_eq(&p.group, &group) => p,
            _ => router.picker(&group),
        };
        // Deployments that lack what the request needs are never picked: said once, here.
        for d in &group.deployments {
            if let Some(capability) = missing(plan.needs, d.capabilities) {
                log.unsupported(d, capability);
            }
        }
        let mut entered = InGroup {
            pick,
            retries_done: 0,
            retries_allowed: None,
            failure: None,
        };
        if let Some(seed) = self.seed.take()
            && seed.deployment < group.deployments.len()
        {
            entered.pick.started(seed.deployment);
            entered
                .pick
                .ended(seed.deployment, Some(seed.failure.fault()));
            entered.failure = Some(seed.failure);
        }
        for (_, idx) in self
            .broken
            .deployments
            .iter()
            .filter(|(g, _)| *g == group.name)
        {
            entered.pick.broke(*idx);
        }
        Some(self.current.insert(entered))
    }

    /// What the call does next in the current group: the picker's choice, read by the retry
    /// policy. Logs the deployments a move to the next group skipped.
    fn next_step(
        &mut self,
        facts: &Facts,
        plan: &Plan,
        backoff: Backoff,
        log: &mut CallLog,
    ) -> Next {
        let switched = self.switched;
        let Some(group) = self.current.as_mut() else {
            return Next::Exhausted;
        };
        let pick = group.pick.pick(facts);
        if group.failure.is_none()
            && let Pick::Nothing { skipped } = &pick
            && !skipped.is_empty()
            && skipped
                .iter()
                .all(|(_, why)| matches!(why, Unavailable::PromptTooLong { .. }))
        {
            // No model of the group can take the prompt: as LiteLLM's pre-call checks, the
            // group fails on a context-window error, never sent; the policy decides next.
            log.skipped(&group.pick.group, skipped);
            group.failure = Some(Failure::prompt_too_long(plan.request_tokens));
            return self.next_step(facts, plan, backoff, log);
        }
        let position = group.position(&pick, plan, switched, backoff);
        // Nothing has failed yet in a group just entered.
        let failed = group
            .failure
            .as_ref()
            .map(|f| policy::fault(f, plan.continuation));
        let (wait, counted) = match policy::decide(failed, &position) {
            Decision::AttemptNow { counted } => (None, counted),
            Decision::WaitThenRetry { wait, counted } => (Some(wait), counted),
            Decision::NextGroup(why) => {
                if let (Leave::NoDeploymentLeft, Pick::Nothing { skipped }) = (why, &pick) {
                    log.skipped(&group.pick.group, skipped);
                }
                return Next::Leave;
            }
            Decision::SwitchTo(special) => return Next::SwitchTo(special),
            Decision::Stop(end) => {
                // Only a failure stops a call, so the group has one.
                let error = group
                    .failure
                    .take()
                    .map_or(CallError::DeadlineExceeded, |f| end.error(f));
                return Next::Stop(error);
            }
        };
        let Pick::Go { idx, .. } = pick else {
            return Next::Exhausted;
        };
        if counted {
            group.retries_done += 1;
        }
        Next::Attempt { idx, wait }
    }

    /// Replaces the rest of the chain with the current group's special fallback list.
    fn switch_to(&mut self, special: Special, router: &Router, plan: &Plan) {
        let Some(current) = &self.current else {
            return;
        };
        let reach = Reach::new(router.config(), &plan.context);
        self.ahead = reach.special(&current.pick.group, special).into();
        self.switched = true;
        self.carried = None;
    }

    /// The failure that ended the chain, when it ran out without an answer.
    fn exhausted(mut self, log: &CallLog, deadline: Instant) -> CallError {
        if let Some(f) = self.current.take().and_then(|g| g.failure) {
            self.last_failure = Some(f);
        }
        if Instant::now() >= deadline {
            return CallError::DeadlineExceeded;
        }
        match (self.last_failure, log.unavailable) {
            // The chain ran out on a prompt too long for its last model: say so.
            (Some(f), _) if f.fault() == Fault::ContextWindow => {
                CallError::ContextWindowExceeded(f)
            }
            (Some(f), _) => CallError::FallbacksExhausted(f),
            (None, Some((until, cooling))) => CallError::NoDeploymentAvailable {
                back_in: until.saturating_duration_since(Instant::now()),
                cooling,
            },
            (None, None) => match log.unsupported {
                // Nothing in the chain could take the request at all.
                Some(capability) => CallError::CapabilityUnsupported { capability },
                None => CallError::DeadlineExceeded,
            },
        }
    }
}

impl Router {
    /// The chain walk shared by both RPCs. `attempt` runs one attempt on one provider and must
    /// end by the given deadlines (the walk does not enforce them a second time).
    pub(super) async fn walk<T, F, Fut>(
        &self,
        plan: &Plan,
        seed: Option<Seed>,
        attempt: F,
    ) -> Result<Answered<T>, CallFailure>
    where
        T: AttemptValue,
        F: FnMut(&Deployment, Arc<Provider>, AttemptDeadlines) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let settings = &self.config().router;
        let backoff = Backoff {
            initial: settings.retry_backoff_initial,
            max: settings.retry_backoff_max,
            floor: settings.min_retry_wait,
        };
        let mut call = Call {
            router: self,
            plan,
            attempt,
            log: CallLog {
                recovery: plan.recovery,
                request_tokens: plan.request_tokens,
                ..CallLog::default()
            },
        };
        let mut chain = Chain::new(plan, seed);
        tracing::Span::current().record(
            "llmrouter.deadline_ms",
            plan.deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
        );

        'groups: while chain.enter_next(self, plan, &mut call.log).is_some() {
            loop {
                let mut facts = call.facts(false);
                facts.broken_ok = chain.broken_ok(plan);
                let (idx, wait) = match chain.next_step(&facts, plan, backoff, &mut call.log) {
                    Next::Attempt { idx, wait } => (idx, wait),
                    Next::Leave => continue 'groups,
                    Next::SwitchTo(special) => {
                        chain.switch_to(special, self, plan);
                        continue 'groups;
                    }
                    Next::Stop(error) => {
                        return Err(CallFailure {
                            error,
                            attempts: call.log.attempts,
                        });
                    }
                    Next::Exhausted => break 'groups,
                };
                if let Some(wait) = wait {
                    backoff_sleep(wait).await;
                }
                if Instant::now() >= plan.deadline {
                    break 'groups;
                }
                let Some(group) = chain.current.as_mut() else {
                    break 'groups;
                };
                if group.pick.has_failures() {
                    let d = &group.pick.group.deployments[idx];
                    self.metrics().retry(&group.pick.group.name, &d.id);
                }
                if group.pick.is_broken(idx) {
                    chain.broken.retries += 1;
                }
                let at = RoundAt {
                    pick: &mut group.pick,
                    carried: &mut chain.carried,
                    next_group: chain.ahead.front(),
                    fallback_index: chain.fallback_index,
                    requested: chain.requested,
                };
                match call.round(at, idx).await {
                    Ok(won) => {
                        let resume = plan.resumable.then(|| chain.resume(plan, &won));
                        let pace = plan
                            .streaming
                            .then(|| policy::pace(plan.slow_stream, &won.group.slow_stream))
                            .flatten();
                        return Ok(Answered {
                            value: won.value,
                            group: won.group.name.clone(),
                            deployment: won.group.deployments[won.idx].id.clone(),
                            attempts: call.log.attempts,
                            deadline: plan.deadline,
                            attempt_started: won.start,
                            tracker: Some(won.tracker),
                            resume,
                            pace,
                        });
                    }
                    Err(failure) => {
                        tracing::debug!(
                            group = %group.pick.group.name,
                            deployment = %group.pick.group.deployments[idx].id,
                            outcome = ?failure.outcome(),
                            "attempt failed"
                        );
                        group.failure = Some(failure);
                    }
                }
            }
        }
        let error = chain.exhausted(&call.log, plan.deadline);
        Err(CallFailure {
            error,
            attempts: call.log.attempts,
        })
    }
}
