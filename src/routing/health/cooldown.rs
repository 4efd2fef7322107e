//! When a failing deployment is stepped away from: the failures and successes of the current
//! minute, and the two rules that read them, as in LiteLLM: the failure count when the config
//! sets `allowed_fails` or `allowed_fails_policy`, else the failure rate. A deployment's
//! [`super::counters::Counters`] keep one, and decide what a cooldown lasts.

use tokio::time::Instant;

use super::window::MINUTE;
use crate::config::{
    ALL_FAILED_MIN_ATTEMPTS, CooldownPolicy, CooldownRule, FAILURE_RATE_MIN_ATTEMPTS,
    FAILURE_RATE_THRESHOLD, FailKind,
};

/// Attempts other replicas made on a deployment this minute, by how they ended, as a shared
/// store reports them: a rule counts them with this replica's own. Raw counts by kind,
/// whatever the policy, so that every replica can read them by its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub fails: [u32; FailKind::COUNT],
    pub oks: u32,
}

impl Tally {
    /// No other replica's attempts: what a store that shares nothing counts with.
    pub const NONE: Tally = Tally {
        fails: [0; FailKind::COUNT],
        oks: 0,
    };

    /// The failures that count against `kind`'s allowance under `policy`: its own kind's when
    /// `allowed_fails_policy` names it, else every kind's that shares `allowed_fails` (every
    /// kind that counts, under the failure-rate rule).
    fn counted_with(&self, kind: FailKind, policy: &CooldownPolicy) -> u32 {
        if policy.rule == CooldownRule::FailureCount && policy.per_kind[kind.index()].is_some() {
            return self.fails[kind.index()];
        }
        FailKind::ALL
            .iter()
            .filter(|&&k| {
                policy.allowed(k).is_some()
                    && (policy.rule == CooldownRule::FailureRate
                        || policy.per_kind[k.index()].is_none())
            })
            .map(|k| self.fails[k.index()])
            .fold(0u32, u32::saturating_add)
    }
}

/// One deployment's attempts in the current minute, as the cooldown rules count them.
#[derive(Debug)]
pub struct Minute {
    /// Start of the minute being counted.
    since: Instant,
    /// Failures by kind, for kinds `allowed_fails_policy` names, and the shared count of the
    /// others (every failure, under the failure-rate rule).
    per_kind: [u32; FailKind::COUNT],
    shared: u32,
    /// Attempts that answered, which the failure-rate rule weighs failures by.
    oks: u32,
}

impl Minute {
    pub fn new(now: Instant) -> Self {
        Minute {
            since: now,
            per_kind: [0; FailKind::COUNT],
            shared: 0,
            oks: 0,
        }
    }

    /// Counts from nothing again, from `now`: when the minute is over, or the deployment
    /// cooled down.
    pub fn restart(&mut self, now: Instant) {
        *self = Minute::new(now);
    }

    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.since) >= MINUTE {
            self.restart(now);
        }
    }

    /// Counts an attempt that answered.
    pub fn answered(&mut self, now: Instant) {
        self.roll(now);
        self.oks = self.oks.saturating_add(1);
    }

    /// Counts a failure of `kind`; whether it cools the deployment down, counting `others`
    /// (other replicas' attempts this minute) with this replica's. `alone`: the deployment is
    /// its group's only one.
    pub fn failed(
        &mut self,
        now: Instant,
        kind: FailKind,
        policy: &CooldownPolicy,
        alone: bool,
        others: &Tally,
    ) -> bool {
        self.roll(now);
        if !policy.enabled {
            return false;
        }
        let Some(allowed) = policy.allowed(kind) else {
            return false;
        };
        match policy.rule {
            CooldownRule::FailureCount => {
                let count = if policy.per_kind[kind.index()].is_some() {
                    &mut self.per_kind[kind.index()]
                } else {
                    &mut self.shared
                };
                *count += 1;
                count.saturating_add(others.counted_with(kind, policy)) > allowed
            }
            CooldownRule::FailureRate => {
                self.shared += 1;
                failure_rate_cools(
                    kind,
                    self.shared
                        .saturating_add(others.counted_with(kind, policy)),
                    self.oks.saturating_add(others.oks),
                    alone,
                )
            }
        }
    }
}

/// LiteLLM's default cooldown rule (see [`CooldownRule::FailureRate`]), given this minute's
/// failures (this one included) and successes.
fn failure_rate_cools(kind: FailKind, fails: u32, oks: u32, alone: bool) -> bool {
    let total = fails + oks;
    match kind {
        // Others in the group can take the load while the limit resets.
        FailKind::RateLimit if !alone => return true,
        // Credentials that do not work will not start working in a few seconds.
        FailKind::Authentication => return true,
        _ => {}
    }
    if oks == 0 && total >= ALL_FAILED_MIN_ATTEMPTS {
        return true;
    }
    !alone
        && total >= FAILURE_RATE_MIN_ATTEMPTS
        && f64::from(fails) / f64::from(total) > FAILURE_RATE_THRESHOLD
}
