//! What each caller has used: calls this minute, tokens this minute, calls in flight, and
//! spend this budget period, held against its policy's `rpm_limit`, `tpm_limit`,
//! `max_parallel_requests` and `max_budget`.
//!
//! The state sits behind [`CallerStore`], one [`CallerState`] per caller name, so that a
//! reload keeps what was counted and a store shared across replicas can take the local one's
//! place ([`LocalCallers`] keeps it in this process). Its operations never wait: admission is
//! on every call's path.
//!
//! A call is admitted or refused at once, never queued, so a caller at its limit slows nobody
//! else. Tokens are counted twice over: the prompt's estimate when the call is admitted, then
//! the difference to the real usage (prompt and completion) when it settles. Spend is counted
//! when an answer's cost is known; a call admitted under the budget may take it over by its own
//! cost, as LiteLLM's budgets do.

pub mod local;

use std::{fmt, sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::config::auth::{Budget, CallerPolicy, utc};
pub use local::{LocalCallers, Usage};

/// Where callers' usage is kept.
pub trait CallerStore: Send + Sync + fmt::Debug {
    /// The state of caller `name`: the one it had before a reload, else a new one.
    fn caller(&self, name: &str) -> Arc<dyn CallerState>;

    /// Forgets callers other than `live`, after a reload.
    fn retain(&self, live: &[&str]);
}

/// One caller's usage. Every operation is quick and never waits.
pub trait CallerState: Send + Sync + fmt::Debug {
    /// Counts a call in (one request, `tokens` estimated, one in flight) if `limits` allow
    /// it at `now`; else says which limit it is at and when it frees.
    fn admit(&self, now: Instant, limits: &Limits, tokens: u64) -> Result<(), Refusal>;

    /// A call admitted earlier ended.
    fn release(&self);

    /// Corrects this minute's tokens by `delta` (the real usage minus the estimate).
    fn add_tokens(&self, now: Instant, delta: i64);

    /// Adds an answer's cost to the budget period `now` is in.
    fn spend(&self, now: Instant, budget: &Budget, usd: f64);

    /// Spend in the current budget period, for check-config and tests.
    fn spent(&self, now: Instant, budget: &Budget) -> f64;
}

/// A policy's limits, as admission reads them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub parallel: Option<u32>,
    pub budget: Option<Budget>,
}

impl Limits {
    pub fn of(p: &CallerPolicy) -> Limits {
        Limits {
            rpm: p.rpm_limit,
            tpm: p.tpm_limit,
            parallel: p.max_parallel_requests,
            budget: p.budget,
        }
    }

    pub fn any(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.parallel.is_some() || self.budget.is_some()
    }
}

/// What other replicas counted for a caller, as a shared store last read it: the minute its
/// requests and tokens are of, and the budget period its spend is of, so that counts of a
/// minute or period that has ended are never held against the current one.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Others {
    pub minute: u64,
    pub requests: u64,
    pub tokens: u64,
    pub in_flight: u32,
    pub period: u64,
    pub spent: f64,
}

impl Others {
    /// Nothing counted elsewhere (minute and period that never match: epoch 0 is long past).
    pub const NONE: Others = Others {
        minute: u64::MAX,
        requests: 0,
        tokens: 0,
        in_flight: 0,
        period: u64::MAX,
        spent: 0.0,
    };
}

/// How long a caller at its concurrency limit is told to wait: calls end all the time.
pub const PARALLEL_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The limit a call was refused at.
#[derive(Debug, Clone, PartialEq)]
pub enum Limit {
    Rpm(u64),
    Tpm(u64),
    Parallel(u32),
    /// The budget and the end of its period (seconds since the epoch).
    Budget {
        budget: Budget,
        ends: u64,
    },
}

/// A refused call: the limit, and when it frees.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub limit: Limit,
    pub retry_after: Duration,
}

impl Refusal {
    /// What the status says: the limit by its config key, and when it frees.
    pub fn message(&self, caller: &str) -> String {
        match &self.limit {
            Limit::Rpm(n) => format!(
                "caller `{caller}` is at its rpm_limit ({n} calls a minute); the minute ends in {}ms",
                self.retry_after.as_millis()
            ),
            Limit::Tpm(n) => format!(
                "caller `{caller}` is at its tpm_limit ({n} tokens a minute); the minute ends in {}ms",
                self.retry_after.as_millis()
            ),
            Limit::Parallel(n) => {
                format!("caller `{caller}` is at its max_parallel_requests ({n} calls in flight)")
            }
            Limit::Budget { budget, ends } => format!(
                "caller `{caller}` has spent its max_budget ({} USD per {}); the period ends at {}",
                budget.max_usd,
                budget.period.name(),
                utc(*ends)
            ),
        }
    }

    /// The limit's config key, for ErrorInfo metadata.
    pub fn key(&self) -> &'static str {
        match self.limit {
            Limit::Rpm(_) => "rpm_limit",
            Limit::Tpm(_) => "tpm_limit",
            Limit::Parallel(_) => "max_parallel_requests",
            Limit::Budget { .. } => "max_budget",
        }
    }
}

/// An admitted call's place in its caller's usage: in flight until dropped; its estimate
/// corrected and its cost spent when it [settles](CallerLease::settle).
#[derive(Debug)]
pub struct CallerLease {
    state: Arc<dyn CallerState>,
    estimated: u64,
    budget: Option<Budget>,
    settled: bool,
}

impl CallerLease {
    pub(super) fn new(state: Arc<dyn CallerState>, estimated: u64, budget: Option<Budget>) -> Self {
        CallerLease {
            state,
            estimated,
            budget,
            settled: false,
        }
    }

    /// The call's real usage: tokens replace the estimate, the cost (if priced) is spent.
    /// Once per call; later calls do nothing.
    pub fn settle(&mut self, usage: &crate::proto::Usage) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let now = Instant::now();
        let real = u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens);
        let delta = i64::try_from(real).unwrap_or(i64::MAX)
            - i64::try_from(self.estimated).unwrap_or(i64::MAX);
        if delta != 0 {
            self.state.add_tokens(now, delta);
        }
        if let (Some(budget), Some(cost)) = (&self.budget, usage.cost_usd)
            && cost > 0.0
        {
            self.state.spend(now, budget, cost);
        }
    }
}

impl Drop for CallerLease {
    fn drop(&mut self) {
        self.state.release();
    }
}

#[cfg(test)]
mod tests;
