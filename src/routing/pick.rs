//! Choosing a deployment within one model group for one call: the group's routing strategy
//! among the deployments that can take an attempt now, and what the call has already done
//! with each deployment of the group.

use std::sync::Arc;

use tokio::time::Instant;

use super::capability::missing;
use super::failure::Fault;
use super::health::{Ask, Check, Health, Load, Unavailable};
use super::policy::Candidate;
use crate::config::{ModelGroup, Strategy};
use crate::providers::{Needs, Provider};

/// A deployment's provider client and health.
#[derive(Debug, Clone)]
pub struct Slot {
    pub provider: Arc<Provider>,
    pub health: Arc<Health>,
}

/// What a pick compares, from the router's settings and the call.
pub struct Facts {
    pub streaming: bool,
    pub request_tokens: u64,
    /// A group's first attempt in the call is never throttled by a retry budget (false for
    /// hedges and for a recovery's attempts, which are retries).
    pub first_attempt: bool,
    /// Only deployments not yet tried in this call (for hedges).
    pub fresh_only: bool,
    /// Only deployments that continue an answer from an assistant prefill (a stream's
    /// continuation).
    pub needs_prefill: bool,
    /// `enable_pre_call_checks`: skip deployments whose context window the prompt exceeds.
    pub pre_call_checks: bool,
    /// What the request needs: deployments without it are never picked.
    pub needs: Needs,
    pub latency_buffer: f64,
    /// Whether a deployment that broke one of the call's committed streams may be picked
    /// (when no other deployment of the group can be): only where it is the last option left
    /// in the chain and the call has retries on broken deployments left.
    pub broken_ok: bool,
}

/// What this call has done with one deployment of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tried {
    /// Not yet: first choice for the next attempt.
    No,
    /// An attempt is running on it now; `failed_before` when it is a retry.
    Running { failed_before: bool },
    /// It failed in a way a retry may mend.
    Failed,
    /// It will not work for this call (bad credentials, a refusal): never tried again.
    Excluded,
}

/// Chooses deployments within one group for one call, by the group's strategy: first among
/// deployments not yet tried, then among retries of ones that failed. Deployments that are
/// cooling down, at capacity, or (for retries) out of retry budget are skipped.
pub struct Picker {
    pub group: Arc<ModelGroup>,
    pub slots: Arc<[Slot]>,
    /// By deployment, in the group's order.
    tried: Vec<Tried>,
    /// The deployment picked last: a retry moves away from it when it can.
    last: Option<usize>,
    /// Whether any attempt of the call ran on this group.
    attempted: bool,
    /// By deployment: it broke a stream of this call after committing (see
    /// [`Picker::broke`]).
    broken: Vec<bool>,
}

/// The picker's choice.
pub enum Pick {
    /// Run an attempt on deployment `idx`; `retry_of_failed` when it already failed in this
    /// call (the attempt waits a backoff first).
    Go { idx: usize, retry_of_failed: bool },
    /// No deployment can take an attempt; those skipped for being unavailable, and why.
    Nothing { skipped: Vec<(usize, Unavailable)> },
}

impl Pick {
    /// The pick as the retry policy sees it.
    pub fn candidate(&self) -> Candidate {
        match self {
            Pick::Go {
                retry_of_failed: false,
                ..
            } => Candidate::Untried,
            Pick::Go {
                retry_of_failed: true,
                ..
            } => Candidate::Failed,
            Pick::Nothing { .. } => Candidate::Nothing,
        }
    }
}

impl Picker {
    pub fn new(group: Arc<ModelGroup>, slots: Arc<[Slot]>) -> Self {
        let n = group.deployments.len();
        Picker {
            group,
            slots,
            tried: vec![Tried::No; n],
            last: None,
            attempted: false,
            broken: vec![false; n],
        }
    }

    /// Marks deployment `idx` as having broken a committed stream of this call: it is picked
    /// again only when nothing else in the group can be, and only if `Facts::broken_ok`.
    pub fn broke(&mut self, idx: usize) {
        let Some(b) = self.broken.get_mut(idx) else {
            return;
        };
        *b = true;
        if self.tried[idx] != Tried::Excluded {
            self.tried[idx] = Tried::Failed;
        }
    }

    /// Whether deployment `idx` broke a committed stream of this call.
    pub fn is_broken(&self, idx: usize) -> bool {
        self.broken.get(idx).copied().unwrap_or(false)
    }

    /// Whether an attempt in this group has already failed: the next one is a retry.
    pub fn has_failures(&self) -> bool {
        self.tried.iter().any(|t| {
            matches!(
                t,
                Tried::Failed
                    | Tried::Excluded
                    | Tried::Running {
                        failed_before: true
                    }
            )
        })
    }

    /// Marks deployment `idx` as running an attempt.
    pub fn started(&mut self, idx: usize) {
        let failed_before = self.tried[idx] == Tried::Failed;
        self.tried[idx] = Tried::Running { failed_before };
        self.attempted = true;
    }

    /// Marks the end of deployment `idx`'s attempt, with the fault when it failed. Only
    /// failures that are the deployment's (or nobody's) change what the call does with it.
    pub fn ended(&mut self, idx: usize, failed: Option<Fault>) {
        let Tried::Running { failed_before } = self.tried[idx] else {
            return;
        };
        self.tried[idx] = match failed {
            Some(Fault::Transient) => Tried::Failed,
            Some(Fault::Deployment) => Tried::Excluded,
            Some(Fault::Request | Fault::ContextWindow | Fault::ContentPolicy) | None
                if failed_before =>
            {
                Tried::Failed
            }
            Some(Fault::Request | Fault::ContextWindow | Fault::ContentPolicy) | None => Tried::No,
        };
    }

    /// The next deployment to run an attempt on, if any can take one now.
    pub fn pick(&mut self, facts: &Facts) -> Pick {
        let now = Instant::now();
        let mut fresh = Vec::new();
        let mut again = Vec::new();
        let mut broken = Vec::new();
        let mut skipped = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let failed = match self.tried[i] {
                Tried::Excluded | Tried::Running { .. } => continue,
                Tried::Failed if facts.fresh_only => continue,
                Tried::Failed if self.broken[i] && !facts.broken_ok => continue,
                Tried::Failed => true,
                Tried::No => false,
            };
            let d = &self.group.deployments[i];
            if facts.needs_prefill && !d.supports_assistant_prefill {
                continue;
            }
            // Logged once, when the group is entered (see `missing`).
            if missing(facts.needs, d.capabilities).is_some() {
                continue;
            }
            if let Some(max) = d.max_input_tokens
                && facts.pre_call_checks
                && facts.request_tokens > max
            {
                skipped.push((
                    i,
                    Unavailable::PromptTooLong {
                        max_input_tokens: max,
                    },
                ));
                continue;
            }
            let ask = Ask {
                request_tokens: facts.request_tokens,
                streaming: facts.streaming,
                // The group's first attempt is an original request, never a retry: a
                // deployment reached only through fallbacks must get one, or a budget drained
                // there would never refill (successes refill it).
                first_attempt: facts.first_attempt && !self.attempted,
            };
            match slot.health.check(now, ask) {
                Check::Available(load) if self.broken[i] => broken.push((i, load)),
                Check::Available(load) if failed => again.push((i, load)),
                Check::Available(load) => fresh.push((i, load)),
                Check::Unavailable(why) => skipped.push((i, why)),
            }
        }
        let (mut pool, retry_of_failed) = if !fresh.is_empty() {
            (fresh, false)
        } else if !again.is_empty() {
            (again, true)
        } else {
            // The last resort: deployments that broke one of this call's streams.
            (broken, true)
        };
        if retry_of_failed && pool.len() > 1 {
            // Among failed deployments, move away from the one that failed last.
            pool.retain(|&(i, _)| Some(i) != self.last);
        }
        if pool.is_empty() {
            return Pick::Nothing { skipped };
        }
        let idx = by_strategy(&self.group, &pool, facts.latency_buffer);
        self.last = Some(idx);
        Pick::Go {
            idx,
            retry_of_failed,
        }
    }
}

/// The group's strategy's choice among available deployments.
fn by_strategy(group: &ModelGroup, pool: &[(usize, Load)], latency_buffer: f64) -> usize {
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
        Strategy::CostBased => {
            // The lowest price per token (input and output together); a deployment with no
            // price counts as the dearest. Ties at random.
            let price = |i: usize| {
                group.deployments[i]
                    .cost
                    .map_or(f64::INFINITY, |c| c.input + c.output)
            };
            let cheapest = pool
                .iter()
                .map(|&(i, _)| price(i))
                .fold(f64::INFINITY, f64::min);
            let kept: Vec<usize> = pool
                .iter()
                .map(|&(i, _)| i)
                .filter(|&i| price(i) == cheapest)
                .collect();
            kept.get(fastrand::usize(..kept.len().max(1)))
                .copied()
                .unwrap_or(pool[0].0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::routing::health::{AttemptEnd, lease};
    use crate::routing::testkit::router;

    /// Three deployments per group, one group per strategy.
    const GROUPS: &str = r#"
model_list:
  - { model_name: shuffle, litellm_params: { model: mock/a, weight: 8 }, model_info: { id: s-heavy } }
  - { model_name: shuffle, litellm_params: { model: mock/b, weight: 1 }, model_info: { id: s-light } }
  - { model_name: shuffle, litellm_params: { model: mock/c, weight: 1 }, model_info: { id: s-other } }
  - { model_name: busy, litellm_params: { model: mock/a }, model_info: { id: b-0 } }
  - { model_name: busy, litellm_params: { model: mock/b }, model_info: { id: b-1 } }
  - { model_name: busy, litellm_params: { model: mock/c }, model_info: { id: b-2 } }
  - { model_name: fastest, litellm_params: { model: mock/a }, model_info: { id: l-0 } }
  - { model_name: fastest, litellm_params: { model: mock/b }, model_info: { id: l-1 } }
  - { model_name: fastest, litellm_params: { model: mock/c }, model_info: { id: l-2 } }
  - { model_name: usage, litellm_params: { model: mock/a, max_parallel_requests: 1 }, model_info: { id: u-0 } }
  - { model_name: usage, litellm_params: { model: mock/b }, model_info: { id: u-1 } }
  - { model_name: usage, litellm_params: { model: mock/c }, model_info: { id: u-2 } }
router_settings:
  routing_strategy_args: { lowest_latency_buffer: 0.5 }
  model_group_settings:
    busy: { routing_strategy: least-busy }
    fastest: { routing_strategy: latency-based-routing }
    usage: { routing_strategy: usage-based-routing }
"#;

    fn facts() -> Facts {
        Facts {
            streaming: true,
            request_tokens: 10,
            first_attempt: true,
            fresh_only: false,
            needs_prefill: false,
            pre_call_checks: false,
            needs: Needs::default(),
            latency_buffer: 0.5,
            broken_ok: false,
        }
    }

    fn picker(r: &crate::routing::Router, group: &str) -> Picker {
        r.picker(r.config().group(group).unwrap())
    }

    fn go(p: &Pick) -> (usize, bool) {
        match p {
            Pick::Go {
                idx,
                retry_of_failed,
            } => (*idx, *retry_of_failed),
            Pick::Nothing { .. } => panic!("nothing picked"),
        }
    }

    /// Reports a first-chunk latency sample on a deployment.
    fn measured(p: &Picker, idx: usize, ms: u64) {
        p.slots[idx].health.report(AttemptEnd::Ok {
            elapsed: Duration::from_millis(ms),
            output_tokens: None,
        });
    }

    #[tokio::test(start_paused = true)]
    async fn untried_deployments_come_first_then_failed_ones_away_from_the_last() {
        let r = router(GROUPS);
        let mut p = picker(&r, "busy");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (idx, again) = go(&p.pick(&facts()));
            assert!(!again, "an untried deployment is no retry");
            p.started(idx);
            p.ended(idx, Some(Fault::Transient));
            seen.push(idx);
        }
        let failed_last = seen[2];
        seen.sort();
        assert_eq!(seen, [0, 1, 2], "each deployment once before any retry");
        assert!(p.has_failures());
        let (idx, again) = go(&p.pick(&facts()));
        assert!(again);
        assert_ne!(
            idx, failed_last,
            "a retry moves away from the deployment that failed last"
        );
        // Nor do two picks of failed deployments in a row choose the same one.
        let (next, _) = go(&p.pick(&facts()));
        assert_ne!(next, idx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deployment_that_broke_a_stream_is_the_last_resort_and_only_when_allowed() {
        let r = router(GROUPS);
        let mut p = picker(&r, "busy");
        p.broke(0);
        assert!(p.is_broken(0) && !p.is_broken(1));
        p.started(1);
        p.ended(1, Some(Fault::Transient));
        // A failed deployment is retried before the broken one, even when broken ones may go.
        let mut allowed = facts();
        allowed.broken_ok = true;
        for _ in 0..10 {
            let (idx, again) = go(&p.pick(&allowed));
            assert_ne!(idx, 0);
            assert!(idx != 2 || !again, "the untried one first");
        }
        p.started(2);
        p.ended(2, Some(Fault::Transient));
        let (idx, again) = go(&p.pick(&allowed));
        assert!(again && idx != 0, "failed ones before the broken one");
        // With the others gone, the broken one only when allowed.
        for idx in [1, 2] {
            p.started(idx);
            p.ended(idx, Some(Fault::Deployment));
        }
        assert!(matches!(p.pick(&facts()), Pick::Nothing { .. }));
        assert_eq!(go(&p.pick(&allowed)), (0, true));
    }

    #[tokio::test(start_paused = true)]
    async fn excluded_and_running_deployments_are_never_picked_and_hedges_take_only_fresh_ones() {
        let r = router(GROUPS);
        let mut p = picker(&r, "busy");
        p.started(0);
        p.ended(0, Some(Fault::Deployment));
        p.started(1);
        for _ in 0..10 {
            assert_eq!(go(&p.pick(&facts())), (2, false));
        }
        p.started(2);
        p.ended(2, Some(Fault::Transient));
        let hedge = Facts {
            fresh_only: true,
            ..facts()
        };
        assert_eq!(p.pick(&hedge).candidate(), Candidate::Nothing);
        assert_eq!(go(&p.pick(&facts())), (2, true));
        // A request fault leaves a deployment as it was: untried stays untried.
        let mut q = picker(&r, "busy");
        q.started(1);
        q.ended(1, Some(Fault::Request));
        assert!(!q.has_failures());
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_deployments_are_skipped_and_reported() {
        let r = router(GROUPS);
        let mut p = picker(&r, "usage");
        let _lease = lease(&p.slots[0].health.state, Instant::now(), 0);
        for _ in 0..10 {
            assert_ne!(
                go(&p.pick(&facts())).0,
                0,
                "u-0 is at max_parallel_requests"
            );
        }
        p.started(1);
        p.started(2);
        match p.pick(&facts()) {
            Pick::Nothing { skipped } => {
                assert!(matches!(
                    skipped.as_slice(),
                    [(0, Unavailable::AtCapacity { .. })]
                ));
            }
            Pick::Go { idx, .. } => panic!("picked {idx}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn simple_shuffle_follows_the_weights() {
        fastrand::seed(11);
        let r = router(GROUPS);
        let mut counts = [0; 3];
        for _ in 0..1000 {
            counts[go(&picker(&r, "shuffle").pick(&facts())).0] += 1;
        }
        // Weights 8, 1, 1: about 800, 100, 100.
        assert!((740..=860).contains(&counts[0]), "{counts:?}");
        assert!((60..=140).contains(&counts[1]), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn least_busy_picks_the_fewest_attempts_in_flight() {
        let r = router(GROUPS);
        let p = picker(&r, "busy");
        let _a = lease(&p.slots[0].health.state, Instant::now(), 0);
        let _b = lease(&p.slots[1].health.state, Instant::now(), 0);
        let _c = lease(&p.slots[1].health.state, Instant::now(), 0);
        let _d = lease(&p.slots[2].health.state, Instant::now(), 0);
        for _ in 0..10 {
            let (idx, _) = go(&picker(&r, "busy").pick(&facts()));
            assert!(idx == 0 || idx == 2, "b-1 has two in flight: {idx}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn latency_based_measures_each_deployment_then_keeps_within_the_buffer() {
        let r = router(GROUPS);
        let p = picker(&r, "fastest");
        measured(&p, 0, 100);
        measured(&p, 1, 140);
        for _ in 0..10 {
            assert_eq!(
                go(&picker(&r, "fastest").pick(&facts())).0,
                2,
                "the unmeasured deployment first"
            );
        }
        measured(&p, 2, 400);
        let mut seen = [false; 3];
        for _ in 0..100 {
            seen[go(&picker(&r, "fastest").pick(&facts())).0] = true;
        }
        // 140ms is within 50% of 100ms; 400ms is not.
        assert_eq!(seen, [true, true, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn cost_based_picks_the_cheapest_priced_deployment_that_can_take_the_call() {
        let r = router(
            r#"
model_list:
  - { model_name: c, litellm_params: { model: mock/a }, model_info: { id: unpriced } }
  - { model_name: c, litellm_params: { model: mock/b }, model_info: { id: dear, input_cost_per_token: 0.00001, output_cost_per_token: 0.00003 } }
  - { model_name: c, litellm_params: { model: mock/c }, model_info: { id: cheap, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002 } }
router_settings: { routing_strategy: cost-based-routing }
"#,
        );
        let mut p = picker(&r, "c");
        let order: Vec<String> = (0..3)
            .map(|_| {
                let (idx, _) = go(&p.pick(&facts()));
                p.started(idx);
                p.ended(idx, Some(Fault::Transient));
                p.group.deployments[idx].id.clone()
            })
            .collect();
        // Once the cheapest failed, untried ones come first: the next cheapest, then the
        // unpriced one.
        assert_eq!(order, ["cheap", "dear", "unpriced"]);
    }

    #[tokio::test(start_paused = true)]
    async fn usage_based_picks_the_fewest_tokens_this_minute() {
        let r = router(GROUPS);
        let p = picker(&r, "usage");
        drop(lease(&p.slots[0].health.state, Instant::now(), 500));
        drop(lease(&p.slots[1].health.state, Instant::now(), 20));
        drop(lease(&p.slots[2].health.state, Instant::now(), 300));
        for _ in 0..10 {
            assert_eq!(go(&picker(&r, "usage").pick(&facts())).0, 1);
        }
    }
}
