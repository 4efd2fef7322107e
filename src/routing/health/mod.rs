//! What the router remembers about each deployment across calls: attempts in flight, failures
//! and cooldowns (when one starts is the [`super::cooldown`] rules'), recent latency, usage
//! this minute, and the retry budget. Shared by every call
//! (and kept across config reloads, by deployment id), so each operation holds its lock only
//! for a few field updates and never across an await.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::cooldown::Minute;
use crate::config::{CooldownPolicy, Deployment, FailKind, RetryBudget};
use crate::telemetry::Metrics;

/// Length of the windows that `allowed_fails`, `rpm` and `tpm` count in.
pub const MINUTE: Duration = Duration::from_secs(60);

/// Latency samples kept per deployment and kind; the moving average is over these.
const LATENCY_SAMPLES: usize = 10;

/// The latency sample a timeout counts as: far above any real answer, so that a deployment
/// that timed out is chosen last until its sample expires.
pub const TIMEOUT_PENALTY_SECS: f64 = 1000.0;

/// One deployment's shared state.
#[derive(Debug)]
pub struct DeploymentState {
    in_flight: AtomicU32,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// This minute's attempts, which decide when the deployment cools down.
    minute: Minute,
    cooling_until: Option<Instant>,
    /// Time to first chunk of streamed attempts, in seconds.
    first_chunk: VecDeque<(Instant, f64)>,
    /// Seconds per output token of unary attempts.
    per_token: VecDeque<(Instant, f64)>,
    usage_since: Instant,
    requests: u32,
    tokens: u64,
    /// gRFC A6 token bucket; `None` while no budget is configured.
    budget: Option<f64>,
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

impl DeploymentState {
    pub fn new(now: Instant, budget: Option<RetryBudget>) -> DeploymentState {
        DeploymentState {
            in_flight: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                minute: Minute::new(now),
                cooling_until: None,
                first_chunk: VecDeque::with_capacity(LATENCY_SAMPLES),
                per_token: VecDeque::with_capacity(LATENCY_SAMPLES),
                usage_since: now,
                requests: 0,
                tokens: 0,
                budget: budget.map(|b| b.max_tokens),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is plain counters: one a panicking thread left half-updated is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When the deployment's cooldown ends, if it is cooling at `now`.
    pub fn cooling_until(&self, now: Instant) -> Option<Instant> {
        self.lock().cooling_until.filter(|&u| u > now)
    }

    /// The retry budget's tokens, when there is a budget.
    pub fn budget_tokens(&self) -> Option<f64> {
        self.lock().budget
    }

    /// Whether the deployment can take an attempt at `now`, and the usage it would have.
    pub fn check(&self, now: Instant, limits: &Limits, first_attempt: bool) -> Check {
        let in_flight = self.in_flight();
        let mut s = self.lock();
        if let Some(until) = s.cooling_until.filter(|&u| u > now) {
            return Check::Unavailable(Unavailable::CoolingDown { until });
        }
        if let Some(max) = limits.max_parallel
            && in_flight >= max
        {
            // In-flight attempts end within their deadlines; a second is a fair guess.
            return Check::Unavailable(Unavailable::AtCapacity {
                until: now + Duration::from_secs(1),
            });
        }
        s.roll_usage(now);
        if limits.enforce_usage {
            let over_rpm = limits.rpm.is_some_and(|rpm| s.requests >= rpm);
            let over_tpm = limits
                .tpm
                .is_some_and(|tpm| s.tokens.saturating_add(limits.request_tokens) > tpm);
            if over_rpm || over_tpm {
                return Check::Unavailable(Unavailable::AtCapacity {
                    until: s.usage_since + MINUTE,
                });
            }
        }
        if !first_attempt
            && let (Some(tokens), Some(b)) = (s.budget, limits.budget)
            && tokens <= b.max_tokens / 2.0
        {
            return Check::Unavailable(Unavailable::Throttled);
        }
        Check::Available(Load {
            in_flight,
            requests: s.requests,
            tokens: s.tokens,
            latency: if limits.streaming {
                average(&s.first_chunk, now, limits.latency_ttl)
            } else {
                average(&s.per_token, now, limits.latency_ttl)
            },
        })
    }

    /// Counts an attempt starting: in flight until the returned lease is dropped, and one
    /// request (with its estimated prompt tokens) in this minute's usage.
    pub fn begin(self: &Arc<Self>, now: Instant, request_tokens: u64) -> Lease {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        s.roll_usage(now);
        s.requests = s.requests.saturating_add(1);
        s.tokens = s.tokens.saturating_add(request_tokens);
        drop(s);
        Lease(self.clone())
    }

    /// Follows a reloaded `retry_budget`: a new budget starts full, a smaller one caps the
    /// tokens, and none removes the bucket.
    pub fn configure_budget(&self, budget: Option<RetryBudget>) {
        let mut s = self.lock();
        s.budget = match (s.budget, budget) {
            (_, None) => None,
            (None, Some(b)) => Some(b.max_tokens),
            (Some(t), Some(b)) => Some(t.min(b.max_tokens)),
        };
    }

    /// Adds tokens a provider reported after the attempt began (a stream's output tokens).
    pub fn add_tokens(&self, now: Instant, tokens: u64) {
        let mut s = self.lock();
        s.roll_usage(now);
        s.tokens = s.tokens.saturating_add(tokens);
    }

    /// Takes in how an attempt ended. Returns the end of the cooldown it started (or
    /// extended), if it did. `alone`: the deployment is its group's only one.
    #[allow(clippy::too_many_arguments)]
    pub fn report(
        &self,
        now: Instant,
        end: AttemptEnd,
        policy: &CooldownPolicy,
        cooldown_time: Duration,
        budget: Option<RetryBudget>,
        latency_ttl: Duration,
        alone: bool,
    ) -> Option<Instant> {
        let mut s = self.lock();
        match end {
            AttemptEnd::Ok {
                elapsed,
                output_tokens,
            } => {
                s.minute.answered(now);
                if let (Some(tokens), Some(b)) = (s.budget.as_mut(), budget) {
                    *tokens = (*tokens + b.token_ratio).min(b.max_tokens);
                }
                let secs = elapsed.as_secs_f64();
                match output_tokens {
                    None => push_sample(&mut s.first_chunk, now, secs, latency_ttl),
                    Some(n) => push_sample(
                        &mut s.per_token,
                        now,
                        secs / f64::from(n.max(1)),
                        latency_ttl,
                    ),
                }
                None
            }
            AttemptEnd::Failed { kind, wait_hint } => {
                if !kind.is_request_fault()
                    && let Some(tokens) = s.budget.as_mut()
                {
                    *tokens = (*tokens - 1.0).max(0.0);
                }
                if kind == FailKind::Timeout {
                    // Either kind of latency: a timeout may be a stream's or a unary call's.
                    push_sample(&mut s.first_chunk, now, TIMEOUT_PENALTY_SECS, latency_ttl);
                    push_sample(&mut s.per_token, now, TIMEOUT_PENALTY_SECS, latency_ttl);
                }
                if !s.minute.failed(now, kind, policy, alone) {
                    return None;
                }
                // Cooled again while cooling: the later end wins, never the earlier.
                let hint = wait_hint.unwrap_or_default().min(policy.max_hint);
                let until = now + cooldown_time.max(hint);
                let until = s.cooling_until.map_or(until, |u| u.max(until));
                s.cooling_until = Some(until);
                // The count starts again once the deployment is back.
                s.minute.restart(now);
                Some(until)
            }
        }
    }
}

/// A deployment's limits and the call's facts that a check needs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_parallel: Option<u32>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    /// Only usage-based-routing holds a deployment to its rpm/tpm.
    pub enforce_usage: bool,
    /// The call's estimated prompt tokens.
    pub request_tokens: u64,
    pub budget: Option<RetryBudget>,
    pub streaming: bool,
    pub latency_ttl: Duration,
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

/// An attempt in flight on a deployment: dropping it ends the count.
#[derive(Debug)]
pub struct Lease(Arc<DeploymentState>);

/// An attempt's lease with the settings its end is recorded under, so that a committed stream
/// can report how it ended long after the walk is done.
#[derive(Debug)]
pub struct Tracker {
    pub state: Arc<DeploymentState>,
    /// The attempt's place in the deployment's in-flight count and usage; `None` for a
    /// `mock_timeout` attempt, which never reaches the deployment and so holds no capacity.
    pub lease: Option<Lease>,
    /// The attempt's deployment: its `cooldown_time`, and the labels a cooldown is reported by.
    pub deployment: Arc<Deployment>,
    pub policy: CooldownPolicy,
    pub budget: Option<RetryBudget>,
    pub latency_ttl: Duration,
    pub metrics: Arc<Metrics>,
}

impl Tracker {
    /// Reports how the attempt (or its committed stream) ended. A cooldown this starts (or
    /// extends) is counted, logged and given to the cooldown gauge here, whoever ended it.
    pub fn report(&self, end: AttemptEnd) {
        let d = &self.deployment;
        let Some(until) = self.state.report(
            Instant::now(),
            end,
            &self.policy,
            d.cooldown_time,
            self.budget,
            self.latency_ttl,
            d.alone_in_group,
        ) else {
            return;
        };
        self.metrics
            .cooldown(&d.group, &d.id, super::wall_clock(until));
        tracing::warn!(
            model_group = %d.group,
            deployment = %d.id,
            cooldown_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
            "deployment failed too often this minute (router_settings.allowed_fails, or the failure rate): cooling down"
        );
    }

    pub fn add_tokens(&self, tokens: u64) {
        self.state.add_tokens(Instant::now(), tokens);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    fn roll_usage(&mut self, now: Instant) {
        if now.duration_since(self.usage_since) >= MINUTE {
            // Whole minutes since the window began, so windows stay aligned.
            let minutes = now.duration_since(self.usage_since).as_secs() / 60;
            self.usage_since += MINUTE * u32::try_from(minutes).unwrap_or(u32::MAX);
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

#[cfg(test)]
mod tests;
