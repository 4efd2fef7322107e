//! One round of a call: an attempt on the deployment the chain chose and, when the group
//! hedges, more attempts raced against it, until one answers or all have failed. Each attempt
//! gets its deadlines, its span, its lease on the deployment, and an entry in the call's log.

use std::{future::Future, sync::Arc};

use tokio::time::{Instant, sleep_until};
use tracing::{Instrument as _, field::Empty};

use super::{
    Router,
    deadline::{AttemptDeadlines, ClientLimits},
    failure::Failure,
    health::{self, AttemptEnd, Tracker},
    log::{CallLog, entry},
    pick::{Facts, Pick, Picker},
    plan::Plan,
    policy,
    race::Race,
};
use crate::config::{Deployment, ModelGroup};
use crate::proto::AttemptOutcome;
use crate::providers::{Completion, Provider, estimate_tokens};
use crate::telemetry::{metrics::outcome_name, traces::TARGET};

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

/// One call's attempts: what stays fixed for the call, and its log.
pub struct Call<'a, F> {
    pub router: &'a Router,
    pub plan: &'a Plan,
    /// Runs one attempt on one provider. It must end by the deadlines it is given: nothing
    /// enforces them a second time.
    pub attempt: F,
    pub log: CallLog,
}

/// Where a round stands in the call's chain.
pub struct RoundAt<'c> {
    /// The current group's picker.
    pub pick: &'c mut Picker,
    /// The next group's picker, once hedges have run there.
    pub carried: &'c mut Option<Picker>,
    /// The next group in the chain, where hedges go when the group has no fresh deployment.
    pub next_group: Option<&'c Arc<ModelGroup>>,
    /// 0 for the requested group, then 1, 2, ... along the chain.
    pub fallback_index: usize,
    /// Whether the current group is the requested one (`mock_timeout` applies to it only).
    pub requested: bool,
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
pub struct Won<T> {
    pub value: T,
    pub group: Arc<ModelGroup>,
    pub idx: usize,
    pub start: Instant,
    pub tracker: Tracker,
}

/// How an attempt is started.
#[derive(Clone, Copy)]
struct Launch {
    mock: bool,
    fallback_index: usize,
    hedge: bool,
    /// Its place among the round's attempts.
    no: usize,
}

impl<T, F, Fut> Call<'_, F>
where
    T: AttemptValue,
    F: FnMut(&Deployment, Arc<Provider>, AttemptDeadlines) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    /// What a pick needs to know of the router's settings and the call.
    pub fn facts(&self, fresh_only: bool) -> Facts {
        let r = &self.router.config().router;
        Facts {
            streaming: self.plan.streaming,
            request_tokens: self.plan.request_tokens,
            // A recovery's attempts are retries of the stream's.
            first_attempt: !self.plan.recovery,
            fresh_only,
            needs_prefill: self.plan.continuation,
            pre_call_checks: r.pre_call_checks,
            needs: self.plan.needs,
            latency_buffer: r.lowest_latency_buffer,
            // Hedges never go to a broken deployment; the walk sets it for its own picks.
            broken_ok: false,
        }
    }

    /// Runs an attempt on deployment `idx` of the current group, with its hedges when the
    /// group hedges, until one answers or all have failed. The losers of a race are cancelled
    /// (their upstream requests closed) and logged. The error is the failure that ended the
    /// round: its last attempt's, or one no other deployment can mend.
    pub async fn round(&mut self, at: RoundAt<'_>, idx: usize) -> Result<Won<T>, Failure> {
        let RoundAt {
            pick,
            carried,
            next_group,
            fallback_index,
            requested,
        } = at;
        let mut running: Vec<Option<Running>> = Vec::with_capacity(1);
        let mut pending = Race::new();
        let mock = self.plan.mock_timeout && requested;
        let first = Launch {
            mock,
            fallback_index,
            hedge: false,
            no: 0,
        };
        let (r, fut) = self.launch(pick, idx, first);
        running.push(Some(r));
        pending.push(fut);
        // A caller without hedging runs one attempt at a time whatever its groups say.
        let hedge = pick.group.hedge.filter(|_| self.plan.context.hedging());
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
                        return Err(Failure::Timeout {
                            first_chunk: self.plan.streaming,
                            by_client: false,
                        });
                    };
                    let Some(mut r) = running.get_mut(no).and_then(Option::take) else {
                        continue;
                    };
                    let continuation = self.plan.continuation;
                    let fault = result.as_ref().err().map(|f| policy::fault(f, continuation));
                    let owner = if r.in_next_group { carried.as_mut() } else { Some(&mut *pick) };
                    if let Some(p) = owner {
                        p.ended(r.idx, fault);
                    }
                    // The round ends with an answer, with its last attempt failing, or with a
                    // failure no other deployment can mend (a bad request). Attempts still
                    // running are cancelled and logged first, so that the attempt that decided
                    // the call is the last in the log, as the API promises.
                    let ends_round = match fault {
                        None => true,
                        Some(f) => pending.is_empty() || !f.another_deployment_may_answer(),
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
                            self.cancel(other, &why);
                        }
                    }
                    self.settle(&mut r, result.as_ref());
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
                    if hedges >= h.max || Instant::now() >= self.plan.deadline {
                        continue;
                    }
                    let Some((in_next_group, target)) =
                        self.hedge_target(pick, next_group, carried)
                    else {
                        continue;
                    };
                    let how = Launch { hedge: true, no: running.len(), ..first };
                    let (owner, how) = match (in_next_group, carried.as_mut()) {
                        (true, Some(p)) => (p, Launch { mock: false, fallback_index: fallback_index + 1, ..how }),
                        _ => (&mut *pick, how),
                    };
                    let (r, fut) = self.launch(owner, target, how);
                    self.router.metrics().hedge(&r.group.name, &r.group.deployments[target].id);
                    running.push(Some(Running { in_next_group, ..r }));
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
        pick: &mut Picker,
        next_group: Option<&Arc<ModelGroup>>,
        carried: &mut Option<Picker>,
    ) -> Option<(bool, usize)> {
        let facts = Facts {
            first_attempt: false,
            ..self.facts(true)
        };
        if let Pick::Go { idx, .. } = pick.pick(&facts) {
            return Some((false, idx));
        }
        let next = next_group?;
        let p = carried.get_or_insert_with(|| self.router.picker(next));
        match p.pick(&facts) {
            Pick::Go { idx, .. } => Some((true, idx)),
            Pick::Nothing { .. } => None,
        }
    }

    /// Starts an attempt on `pick`'s deployment `idx`: its span, its lease on the deployment,
    /// and the future that runs it and yields `(no, result)`.
    fn launch(
        &mut self,
        pick: &mut Picker,
        idx: usize,
        how: Launch,
    ) -> (
        Running,
        impl Future<Output = (usize, Result<T, Failure>)> + use<T, F, Fut>,
    ) {
        let plan = self.plan;
        pick.started(idx);
        let group = pick.group.clone();
        let deployment = &group.deployments[idx];
        let slot = &pick.slots[idx];
        self.log.started += 1;
        let start = Instant::now();
        let stream_timeout = plan
            .streaming
            .then(|| plan.stream_timeout.or(deployment.stream_timeout))
            .flatten();
        let client = ClientLimits {
            total: plan.client_deadline,
            stream_timeout: plan.stream_timeout.is_some(),
        };
        let deadlines = AttemptDeadlines::new(
            start,
            plan.deadline,
            deployment.timeout,
            stream_timeout,
            client,
        );
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
            llmrouter.fallback.index = how.fallback_index,
            llmrouter.hedge = how.hedge,
            llmrouter.attempt.outcome = Empty,
            llmrouter.time_to_first_chunk_ms = Empty,
            http.response.status_code = Empty,
            error.type = Empty,
        );
        let tracker = Tracker {
            lease: (!how.mock)
                .then(|| health::lease(&slot.health.state, start, plan.request_tokens)),
            health: slot.health.clone(),
            caller: plan.context.caller.clone(),
        };
        let until = deadlines.until_first_chunk();
        let fut = (self.attempt)(deployment, slot.provider.clone(), deadlines);
        let Launch { mock, no, .. } = how;
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
            hedge: how.hedge,
            start,
            span,
            tracker,
        };
        (running, run)
    }

    /// Records an attempt's end: its log entry, metrics, span, and the deployment's health.
    fn settle(&mut self, r: &mut Running, result: Result<&T, &Failure>) {
        let metrics = self.router.metrics();
        let deployment = &r.group.deployments[r.idx];
        let elapsed = r.start.elapsed();
        let outcome = match result {
            Ok(_) => AttemptOutcome::Ok,
            Err(f) => f.outcome(),
        };
        // A committed stream's attempt is counted when its stream ends, by what ended it
        // (`stream::CommittedStream`): a stream that commits and then breaks is not an `ok`.
        if !(self.plan.streaming && result.is_ok()) {
            metrics.attempt(&r.group.name, &deployment.id, outcome);
        }
        let span = &r.span;
        span.record("llmrouter.attempt.outcome", outcome_name(outcome));
        match result {
            Ok(value) => {
                if self.plan.streaming {
                    span.record(
                        "llmrouter.time_to_first_chunk_ms",
                        elapsed.as_millis() as u64,
                    );
                    metrics.first_chunk(&r.group.name, &deployment.id, elapsed.as_secs_f64());
                }
                self.log.push(entry(
                    deployment,
                    outcome,
                    elapsed,
                    0,
                    String::new(),
                    r.hedge,
                ));
                r.tracker.report(AttemptEnd::Ok {
                    elapsed,
                    output_tokens: value.output_tokens(),
                });
            }
            Err(f) => {
                span.record("error.type", outcome_name(outcome));
                span.record("otel.status_code", "ERROR");
                if f.upstream_status() != 0 {
                    span.record("http.response.status_code", f.upstream_status());
                }
                self.log.push(entry(
                    deployment,
                    outcome,
                    elapsed,
                    f.upstream_status(),
                    f.detail(),
                    r.hedge,
                ));
                if f.counts_against_deployment() {
                    r.tracker.report(AttemptEnd::Failed {
                        kind: f.class().kind,
                        wait_hint: f.provider_wait_hint(),
                    });
                }
            }
        }
    }

    /// Abandons a running attempt: its future is dropped by the caller, which closes the
    /// upstream request. A cancelled attempt says nothing of its deployment's health.
    fn cancel(&mut self, r: Running, why: &str) {
        let deployment = &r.group.deployments[r.idx];
        let outcome = AttemptOutcome::Cancelled;
        self.router
            .metrics()
            .attempt(&r.group.name, &deployment.id, outcome);
        r.span
            .record("llmrouter.attempt.outcome", outcome_name(outcome));
        self.log.push(entry(
            deployment,
            outcome,
            r.start.elapsed(),
            0,
            why.to_string(),
            r.hedge,
        ));
    }
}
