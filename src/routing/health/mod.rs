//! What the router remembers about each deployment across calls: attempts in flight, failures
//! and cooldowns, recent latency, usage this minute, and the retry budget.
//!
//! The state sits behind [`HealthStore`], which hands out one [`DeploymentHealth`] per
//! deployment; [`LocalStore`] keeps it in this process (what every replica does today), and a
//! store shared across replicas implements the same two traits and passes the same suite
//! (`suite.rs`). Their operations never wait: the hot path (a pick, an attempt's end inside a
//! stream's poll, a lease dropped) runs them synchronously, so a store that lives elsewhere
//! answers from a local view it keeps up to date in the background, and when that store is
//! away each replica goes on with its own view (fail-open: routing never stops for want of
//! shared state).
//!
//! The files: [`counters`] the plain counters of one deployment and how an attempt's end
//! changes them, [`cooldown`] the rules that start a cooldown, [`window`] the wall-clock
//! minutes usage counts in, [`local`] the in-process store. What a pick decides from a
//! deployment's [`Snapshot`] is decided here, once, for every store ([`Health::check`]).

pub mod cooldown;
pub mod counters;
pub mod local;
pub mod window;

use std::{fmt, sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::config::{CooldownPolicy, Deployment, FailKind, RetryBudget, RouterSettings, Strategy};
use crate::telemetry::Metrics;
pub use counters::TIMEOUT_PENALTY_SECS;
pub use local::LocalStore;
pub use window::{MINUTE, WallClock};

/// Where deployments' health is kept.
pub trait HealthStore: Send + Sync + fmt::Debug {
    /// The state of the deployment `key` names: the one it had when a config with the same
    /// key was last built (a reload keeps a cooling deployment cooling), else a new one with a
    /// full retry budget. `budget` is the config's `retry_budget`, which a kept state follows.
    fn deployment(
        &self,
        key: &DeploymentKey,
        budget: Option<RetryBudget>,
    ) -> Arc<dyn DeploymentHealth>;

    /// Forgets deployments other than `live`, after a reload built its table.
    fn retain(&self, live: &[DeploymentKey]);
}

/// One deployment's health, as the router reads and changes it. Every operation is quick and
/// never waits (see the module docs).
pub trait DeploymentHealth: Send + Sync + fmt::Debug {
    /// What a pick reads at `now`; `latency` is the time to first chunk when `streaming`, else
    /// the time per output token, over samples younger than `latency_ttl`.
    fn snapshot(&self, now: Instant, streaming: bool, latency_ttl: Duration) -> Snapshot;

    fn in_flight(&self) -> u32;

    /// When the deployment's cooldown ends, if it is cooling at `now`.
    fn cooling_until(&self, now: Instant) -> Option<Instant>;

    /// The retry budget's tokens, when there is a budget.
    fn budget_tokens(&self) -> Option<f64>;

    /// Counts an attempt starting: in flight until [`release`](Self::release), and one request
    /// with its estimated prompt tokens in this minute's usage. Called through [`lease`].
    fn begin(&self, now: Instant, request_tokens: u64);

    /// Ends an attempt's in-flight count (a [`Lease`] dropped).
    fn release(&self);

    /// Adds tokens a provider reported after the attempt began (a stream's output tokens).
    fn add_tokens(&self, now: Instant, tokens: u64);

    /// Takes in how an attempt ended. Returns the end of the cooldown it started (or
    /// extended), if it did.
    fn report(&self, now: Instant, end: AttemptEnd, settings: &HealthSettings) -> Option<Instant>;

    /// Follows a reloaded `retry_budget`: a new budget starts full, a smaller one caps the
    /// tokens, and none removes the bucket.
    fn configure_budget(&self, budget: Option<RetryBudget>);
}

/// What names a deployment's state: its id and what it points at. A reload that changes the
/// provider, the base URL or the upstream model starts it afresh: it is another deployment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeploymentKey {
    pub id: String,
    pub provider: &'static str,
    pub api_base: String,
    pub upstream_model: String,
}

impl DeploymentKey {
    pub fn of(d: &Deployment) -> Self {
        DeploymentKey {
            id: d.id.clone(),
            provider: d.provider.name(),
            api_base: d.provider.api_base().to_string(),
            upstream_model: d.upstream_model.clone(),
        }
    }
}

/// What a deployment's health is judged by in one config snapshot: fixed when the routing
/// table is built, not passed with every report.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub cooldowns: CooldownPolicy,
    /// The deployment's `cooldown_time`.
    pub cooldown_time: Duration,
    pub budget: Option<RetryBudget>,
    pub latency_ttl: Duration,
    /// The deployment is its group's only one (the failure-rate rule spares it).
    pub alone: bool,
    pub max_parallel: Option<u32>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    /// Only usage-based-routing holds a deployment to its rpm/tpm.
    pub enforce_usage: bool,
}

impl HealthSettings {
    pub fn of(d: &Deployment, strategy: Strategy, r: &RouterSettings) -> Self {
        HealthSettings {
            cooldowns: r.cooldowns,
            cooldown_time: d.cooldown_time,
            budget: r.retry_budget,
            latency_ttl: r.latency_ttl,
            alone: d.alone_in_group,
            max_parallel: d.max_parallel_requests,
            rpm: d.rpm,
            tpm: d.tpm,
            enforce_usage: strategy == Strategy::UsageBased,
        }
    }
}

/// A deployment's state as a pick reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub in_flight: u32,
    pub cooling_until: Option<Instant>,
    /// Requests and tokens in the current usage minute, which ends at `usage_until`.
    pub requests: u32,
    pub tokens: u64,
    pub usage_until: Instant,
    pub budget_tokens: Option<f64>,
    /// Moving average latency in seconds; `None` when unmeasured.
    pub latency: Option<f64>,
}

/// How an attempt ended, as the deployment's health sees it.
#[derive(Debug, Clone, Copy)]
pub enum AttemptEnd {
    Ok {
        elapsed: Duration,
        /// Output tokens of a unary answer; `None` for a stream's first chunk.
        output_tokens: Option<u32>,
    },
    Failed {
        kind: FailKind,
        /// How long the provider asked us to wait: a cooldown lasts at least this long.
        wait_hint: Option<Duration>,
    },
}

/// Why a deployment cannot take an attempt now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Cooling down: back at `until`.
    CoolingDown { until: Instant },
    /// At `max_parallel_requests`, or over `rpm`/`tpm` this minute: capacity back at `until`
    /// (a guess for in-flight limits).
    AtCapacity { until: Instant },
    /// Its retry budget is at or below half: only a call's first attempt may use it.
    Throttled,
    /// The prompt is estimated longer than its `model_info.max_input_tokens` (pre-call checks).
    PromptTooLong { max_input_tokens: u64 },
}

/// What a strategy compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub in_flight: u32,
    pub requests: u32,
    pub tokens: u64,
    /// Moving average latency in seconds (first chunk or per token); `None` when unmeasured.
    pub latency: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    Available(Load),
    Unavailable(Unavailable),
}

/// The call's facts a check needs.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// The call's estimated prompt tokens.
    pub request_tokens: u64,
    pub streaming: bool,
    /// The group's first attempt in the call, which a retry budget never throttles.
    pub first_attempt: bool,
}

/// One deployment's health in one config snapshot: its state in the store, the settings it is
/// judged by, and where a cooldown is reported. Shared by the routing table's slot and every
/// attempt's [`Tracker`].
#[derive(Debug)]
pub struct Health {
    pub state: Arc<dyn DeploymentHealth>,
    pub settings: HealthSettings,
    /// The labels a cooldown is reported by.
    pub deployment: Arc<Deployment>,
    pub metrics: Arc<Metrics>,
}

impl Health {
    /// Whether the deployment can take an attempt at `now`, and the load it would have.
    pub fn check(&self, now: Instant, ask: Ask) -> Check {
        let s = &self.settings;
        judge(
            &self.state.snapshot(now, ask.streaming, s.latency_ttl),
            s,
            ask,
            now,
        )
    }

    /// Reports how an attempt (or its committed stream) ended. A cooldown this starts (or
    /// extends) is counted, logged and given to the cooldown gauge here, whoever ended it.
    pub fn report(&self, end: AttemptEnd) {
        let Some(until) = self.state.report(Instant::now(), end, &self.settings) else {
            return;
        };
        let d = &self.deployment;
        self.metrics
            .cooldown(&d.group, &d.id, super::wall_clock(until));
        tracing::warn!(
            model_group = %d.group,
            deployment = %d.id,
            cooldown_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
            "deployment failed too often this minute (router_settings.allowed_fails, or the failure rate): cooling down"
        );
    }
}

/// Whether a deployment in the state `snap` can take the call's attempt at `now`: the one
/// place that decides it, whatever store the state came from.
pub fn judge(snap: &Snapshot, s: &HealthSettings, ask: Ask, now: Instant) -> Check {
    if let Some(until) = snap.cooling_until {
        return Check::Unavailable(Unavailable::CoolingDown { until });
    }
    if let Some(max) = s.max_parallel
        && snap.in_flight >= max
    {
        // In-flight attempts end within their deadlines; a second is a fair guess.
        return Check::Unavailable(Unavailable::AtCapacity {
            until: now + Duration::from_secs(1),
        });
    }
    if s.enforce_usage {
        let over_rpm = s.rpm.is_some_and(|rpm| snap.requests >= rpm);
        let over_tpm = s
            .tpm
            .is_some_and(|tpm| snap.tokens.saturating_add(ask.request_tokens) > tpm);
        if over_rpm || over_tpm {
            return Check::Unavailable(Unavailable::AtCapacity {
                until: snap.usage_until,
            });
        }
    }
    if !ask.first_attempt
        && let (Some(tokens), Some(b)) = (snap.budget_tokens, s.budget)
        && tokens <= b.max_tokens / 2.0
    {
        return Check::Unavailable(Unavailable::Throttled);
    }
    Check::Available(Load {
        in_flight: snap.in_flight,
        requests: snap.requests,
        tokens: snap.tokens,
        latency: snap.latency,
    })
}

/// Starts an attempt on a deployment: in flight until the lease is dropped.
pub fn lease(state: &Arc<dyn DeploymentHealth>, now: Instant, request_tokens: u64) -> Lease {
    state.begin(now, request_tokens);
    Lease(state.clone())
}

/// An attempt in flight on a deployment: dropping it ends the count.
#[derive(Debug)]
pub struct Lease(Arc<dyn DeploymentHealth>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// An attempt's lease with the health it reports to, so that a committed stream can report how
/// it ended long after the walk is done.
#[derive(Debug)]
pub struct Tracker {
    pub health: Arc<Health>,
    /// The attempt's place in the deployment's in-flight count and usage; `None` for a
    /// `mock_timeout` attempt, which never reaches the deployment and so holds no capacity.
    pub lease: Option<Lease>,
    /// Whose call the attempt is: its cost is counted by caller.
    pub caller: crate::routing::CallerName,
}

impl Tracker {
    pub fn report(&self, end: AttemptEnd) {
        self.health.report(end);
    }

    pub fn add_tokens(&self, tokens: u64) {
        self.health.state.add_tokens(Instant::now(), tokens);
    }

    /// The attempt's deployment.
    pub fn deployment(&self) -> &Arc<Deployment> {
        &self.health.deployment
    }
}

#[cfg(test)]
#[macro_use]
pub(crate) mod suite;
#[cfg(test)]
mod tests;
