//! One deployment's health as plain counters, with no lock and no clock of their own: failures
//! this minute and the cooldown they start, latency samples, usage this wall-clock minute, and
//! the retry budget. The local store keeps them behind a lock; a store shared across replicas
//! keeps them as its local view.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

use super::cooldown::{Minute, Tally};
use super::window::WallClock;
use super::{AttemptEnd, HealthSettings, Snapshot};
use crate::config::{FailKind, RetryBudget};

/// Latency samples kept per deployment and kind; the moving average is over these.
const LATENCY_SAMPLES: usize = 10;

/// The latency sample a timeout counts as: far above any real answer, so that a deployment
/// that timed out is chosen last until its sample expires.
pub const TIMEOUT_PENALTY_SECS: f64 = 1000.0;

#[derive(Debug)]
pub struct Counters {
    /// This minute's attempts, which decide when the deployment cools down.
    minute: Minute,
    cooling_until: Option<Instant>,
    /// Time to first chunk of streamed attempts, in seconds.
    first_chunk: VecDeque<(Instant, f64)>,
    /// Seconds per output token of unary attempts.
    per_token: VecDeque<(Instant, f64)>,
    /// The wall-clock minute `requests` and `tokens` count in.
    usage_minute: u64,
    requests: u32,
    tokens: u64,
    /// gRFC A6 token bucket; `None` while no budget is configured.
    budget: Option<f64>,
}

impl Counters {
    pub fn new(now: Instant, clock: &WallClock, budget: Option<RetryBudget>) -> Self {
        Counters {
            minute: Minute::new(now),
            cooling_until: None,
            first_chunk: VecDeque::with_capacity(LATENCY_SAMPLES),
            per_token: VecDeque::with_capacity(LATENCY_SAMPLES),
            usage_minute: clock.minute(now),
            requests: 0,
            tokens: 0,
            budget: budget.map(|b| b.max_tokens),
        }
    }

    pub fn cooling_until(&self, now: Instant) -> Option<Instant> {
        self.cooling_until.filter(|&u| u > now)
    }

    pub fn budget_tokens(&self) -> Option<f64> {
        self.budget
    }

    /// What a pick reads, at `now`; `in_flight` is kept apart from the counters.
    pub fn snapshot(
        &mut self,
        now: Instant,
        clock: &WallClock,
        in_flight: u32,
        streaming: bool,
        latency_ttl: Duration,
    ) -> Snapshot {
        self.roll_usage(now, clock);
        Snapshot {
            in_flight,
            cooling_until: self.cooling_until(now),
            requests: self.requests,
            tokens: self.tokens,
            usage_until: clock.minute_end(self.usage_minute),
            budget_tokens: self.budget,
            latency: if streaming {
                average(&self.first_chunk, now, latency_ttl)
            } else {
                average(&self.per_token, now, latency_ttl)
            },
        }
    }

    /// Counts an attempt starting: one request, with its estimated prompt tokens, this minute.
    pub fn begin(&mut self, now: Instant, clock: &WallClock, request_tokens: u64) {
        self.roll_usage(now, clock);
        self.requests = self.requests.saturating_add(1);
        self.tokens = self.tokens.saturating_add(request_tokens);
    }

    /// Adds tokens a provider reported after the attempt began (a stream's output tokens).
    pub fn add_tokens(&mut self, now: Instant, clock: &WallClock, tokens: u64) {
        self.roll_usage(now, clock);
        self.tokens = self.tokens.saturating_add(tokens);
    }

    /// Follows a reloaded `retry_budget`: a new budget starts full, a smaller one caps the
    /// tokens, and none removes the bucket.
    pub fn configure_budget(&mut self, budget: Option<RetryBudget>) {
        self.budget = match (self.budget, budget) {
            (_, None) => None,
            (None, Some(b)) => Some(b.max_tokens),
            (Some(t), Some(b)) => Some(t.min(b.max_tokens)),
        };
    }

    /// Takes in how an attempt ended, with `others` (other replicas' attempts this minute)
    /// counting towards a cooldown. Returns the end of the cooldown it started (or extended),
    /// if it did.
    pub fn report(
        &mut self,
        now: Instant,
        end: AttemptEnd,
        s: &HealthSettings,
        others: &Tally,
    ) -> Option<Instant> {
        match end {
            AttemptEnd::Ok {
                elapsed,
                output_tokens,
            } => {
                self.minute.answered(now);
                if let (Some(tokens), Some(b)) = (self.budget.as_mut(), s.budget) {
                    *tokens = (*tokens + b.token_ratio).min(b.max_tokens);
                }
                let secs = elapsed.as_secs_f64();
                match output_tokens {
                    None => push_sample(&mut self.first_chunk, now, secs, s.latency_ttl),
                    Some(n) => push_sample(
                        &mut self.per_token,
                        now,
                        secs / f64::from(n.max(1)),
                        s.latency_ttl,
                    ),
                }
                None
            }
            AttemptEnd::Failed { kind, wait_hint } => {
                if !kind.is_request_fault()
                    && let Some(tokens) = self.budget.as_mut()
                {
                    *tokens = (*tokens - 1.0).max(0.0);
                }
                if kind == FailKind::Timeout {
                    // Either kind of latency: a timeout may be a stream's or a unary call's.
                    push_sample(
                        &mut self.first_chunk,
                        now,
                        TIMEOUT_PENALTY_SECS,
                        s.latency_ttl,
                    );
                    push_sample(
                        &mut self.per_token,
                        now,
                        TIMEOUT_PENALTY_SECS,
                        s.latency_ttl,
                    );
                }
                if !self.minute.failed(now, kind, &s.cooldowns, s.alone, others) {
                    return None;
                }
                // Cooled again while cooling: the later end wins, never the earlier.
                let hint = wait_hint.unwrap_or_default().min(s.cooldowns.max_hint);
                let until = now + s.cooldown_time.max(hint);
                let until = self.cooling_until.map_or(until, |u| u.max(until));
                self.cooling_until = Some(until);
                // The count starts again once the deployment is back.
                self.minute.restart(now);
                Some(until)
            }
        }
    }

    /// Honours a cooldown another replica entered, ending at `until`: the later end wins, and
    /// the count starts again as it does for a cooldown entered here. Whether it was new.
    pub fn adopt_cooldown(&mut self, now: Instant, until: Instant) -> bool {
        if until <= now || self.cooling_until.is_some_and(|u| u >= until) {
            return false;
        }
        self.cooling_until = Some(until);
        self.minute.restart(now);
        true
    }

    fn roll_usage(&mut self, now: Instant, clock: &WallClock) {
        let minute = clock.minute(now);
        if minute != self.usage_minute {
            self.usage_minute = minute;
            self.requests = 0;
            self.tokens = 0;
        }
    }
}

fn push_sample(samples: &mut VecDeque<(Instant, f64)>, now: Instant, value: f64, ttl: Duration) {
    while samples
        .front()
        .is_some_and(|&(t, _)| now.duration_since(t) >= ttl)
    {
        samples.pop_front();
    }
    if samples.len() == LATENCY_SAMPLES {
        samples.pop_front();
    }
    samples.push_back((now, value));
}

fn average(samples: &VecDeque<(Instant, f64)>, now: Instant, ttl: Duration) -> Option<f64> {
    let (sum, n) = samples
        .iter()
        .filter(|&&(t, _)| now.duration_since(t) < ttl)
        .fold((0.0, 0u32), |(sum, n), &(_, v)| (sum + v, n + 1));
    (n > 0).then(|| sum / f64::from(n))
}
