//! What the router remembers about each deployment across calls: attempts in flight, failures
//! and cooldowns, recent latency, usage this minute, and the retry budget. Shared by every call
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

use crate::config::{
    ALL_FAILED_MIN_ATTEMPTS, CooldownPolicy, CooldownRule, Deployment, FAILURE_RATE_MIN_ATTEMPTS,
    FAILURE_RATE_THRESHOLD, FailKind, RetryBudget,
};
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
    /// Start of the minute in which failures are being counted.
    fails_since: Instant,
    /// Failures this minute by kind, and the shared count of kinds without their own limit.
    fails: [u32; FailKind::COUNT],
    fails_shared: u32,
    /// Attempts that answered this minute, which the failure-rate rule weighs failures by.
    oks: u32,
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
                fails_since: now,
                fails: [0; FailKind::COUNT],
                fails_shared: 0,
                oks: 0,
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
        s.roll_fails(now);
        match end {
            AttemptEnd::Ok {
                elapsed,
                output_tokens,
            } => {
                s.oks = s.oks.saturating_add(1);
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
                if !policy.enabled {
                    return None;
                }
                let allowed = policy.allowed(kind)?;
                let cool = match policy.rule {
                    CooldownRule::FailureCount => {
                        let count = if policy.per_kind[kind.index()].is_some() {
                            &mut s.fails[kind.index()]
                        } else {
                            &mut s.fails_shared
                        };
                        *count += 1;
                        *count > allowed
                    }
                    CooldownRule::FailureRate => {
                        s.fails_shared += 1;
                        failure_rate_cools(kind, s.fails_shared, s.oks, alone)
                    }
                };
                if !cool {
                    return None;
                }
                // Cooled again while cooling: the later end wins, never the earlier.
                let hint = wait_hint.unwrap_or_default().min(policy.max_hint);
                let until = now + cooldown_time.max(hint);
                let until = s.cooling_until.map_or(until, |u| u.max(until));
                s.cooling_until = Some(until);
                // The count starts again once the deployment is back.
                s.fails_since = now;
                s.fails = [0; FailKind::COUNT];
                s.fails_shared = 0;
                s.oks = 0;
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

impl Inner {
    /// Starts the failure count again once its minute is over.
    fn roll_fails(&mut self, now: Instant) {
        if now.duration_since(self.fails_since) >= MINUTE {
            self.fails_since = now;
            self.fails = [0; FailKind::COUNT];
            self.fails_shared = 0;
            self.oks = 0;
        }
    }

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
mod tests {
    use super::*;

    fn policy(allowed_fails: u32) -> CooldownPolicy {
        CooldownPolicy {
            enabled: true,
            rule: CooldownRule::FailureCount,
            allowed_fails,
            per_kind: [None; FailKind::COUNT],
            cooldown_time: Duration::from_secs(5),
            max_hint: Duration::from_secs(300),
        }
    }

    fn limits() -> Limits {
        Limits {
            max_parallel: None,
            rpm: None,
            tpm: None,
            enforce_usage: false,
            request_tokens: 0,
            budget: None,
            streaming: true,
            latency_ttl: Duration::from_secs(300),
        }
    }

    fn fail(kind: FailKind) -> AttemptEnd {
        AttemptEnd::Failed {
            kind,
            wait_hint: None,
        }
    }

    const COOL: Duration = Duration::from_secs(5);
    const TTL: Duration = Duration::from_secs(300);

    #[tokio::test(start_paused = true)]
    async fn litellms_default_rule_goes_by_the_failure_rate_and_spares_a_group_of_one() {
        let p = CooldownPolicy {
            rule: CooldownRule::FailureRate,
            ..policy(3)
        };
        let ok = AttemptEnd::Ok {
            elapsed: Duration::from_millis(10),
            output_tokens: None,
        };
        let t0 = Instant::now();
        // Half of six failed: not more than half. The seventh failure makes it 4 of 7.
        let s = DeploymentState::new(t0, None);
        for _ in 0..3 {
            s.report(t0, ok, &p, COOL, None, TTL, false);
        }
        for _ in 0..3 {
            assert_eq!(
                s.report(t0, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                None
            );
        }
        assert_eq!(
            s.report(t0, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
            Some(t0 + COOL)
        );
        // Fewer than five attempts in the minute never cool by rate: four failures in a row.
        let s = DeploymentState::new(t0, None);
        for _ in 0..4 {
            assert_eq!(
                s.report(
                    t0,
                    fail(FailKind::InternalServer),
                    &p,
                    COOL,
                    None,
                    TTL,
                    false
                ),
                None
            );
        }
        // The only deployment of its group: every failure of a busy minute, short of 1000.
        let s = DeploymentState::new(t0, None);
        for _ in 0..999 {
            assert_eq!(
                s.report(t0, fail(FailKind::Timeout), &p, COOL, None, TTL, true),
                None
            );
        }
        assert_eq!(
            s.report(t0, fail(FailKind::Timeout), &p, COOL, None, TTL, true),
            Some(t0 + COOL)
        );
        // A rate limit cools at once where the group has others, never alone; bad credentials
        // cool either way; a bad request never.
        let s = DeploymentState::new(t0, None);
        assert_eq!(
            s.report(t0, fail(FailKind::RateLimit), &p, COOL, None, TTL, true),
            None
        );
        assert_eq!(
            s.report(t0, fail(FailKind::BadRequest), &p, COOL, None, TTL, false),
            None
        );
        assert_eq!(
            s.report(t0, fail(FailKind::RateLimit), &p, COOL, None, TTL, false),
            Some(t0 + COOL)
        );
        let s = DeploymentState::new(t0, None);
        assert_eq!(
            s.report(
                t0,
                fail(FailKind::Authentication),
                &p,
                COOL,
                None,
                TTL,
                true
            ),
            Some(t0 + COOL)
        );
        // The minute's counts start again: successes from a minute ago do not dilute.
        let s = DeploymentState::new(t0, None);
        for _ in 0..10 {
            s.report(t0, ok, &p, COOL, None, TTL, false);
        }
        let t1 = t0 + MINUTE;
        for _ in 0..4 {
            assert_eq!(
                s.report(t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                None
            );
        }
        assert_eq!(
            s.report(t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
            Some(t1 + COOL)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cools_after_more_than_allowed_fails_within_a_minute_and_returns() {
        let s = DeploymentState::new(Instant::now(), None);
        let p = policy(2);
        let t0 = Instant::now();
        assert_eq!(
            s.report(t0, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
            None
        );
        assert_eq!(
            s.report(
                t0,
                fail(FailKind::InternalServer),
                &p,
                COOL,
                None,
                TTL,
                false
            ),
            None
        );
        let until = s.report(t0, fail(FailKind::RateLimit), &p, COOL, None, TTL, false);
        assert_eq!(until, Some(t0 + COOL));
        assert!(matches!(
            s.check(t0 + Duration::from_secs(4), &limits(), true),
            Check::Unavailable(Unavailable::CoolingDown { .. })
        ));
        assert!(matches!(
            s.check(t0 + COOL, &limits(), true),
            Check::Available(_)
        ));
        // The count started again: two more failures are allowed.
        let t1 = t0 + COOL;
        assert_eq!(
            s.report(t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_a_minute_apart_do_not_add_up() {
        let s = DeploymentState::new(Instant::now(), None);
        let p = policy(1);
        let t0 = Instant::now();
        assert_eq!(
            s.report(t0, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
            None
        );
        let t1 = t0 + MINUTE;
        assert_eq!(
            s.report(t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
            None
        );
        assert!(
            s.report(t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false)
                .is_some()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cooled_again_keeps_the_later_end_and_a_wait_hint_lengthens_it() {
        let s = DeploymentState::new(Instant::now(), None);
        let p = policy(0);
        let t0 = Instant::now();
        let long = AttemptEnd::Failed {
            kind: FailKind::RateLimit,
            wait_hint: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            s.report(t0, long, &p, COOL, None, TTL, false),
            Some(t0 + Duration::from_secs(30))
        );
        // A later, shorter cooldown does not cut the longer one short.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            s.report(t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
            Some(t0 + Duration::from_secs(30))
        );
        assert_eq!(s.cooling_until(t1), Some(t0 + Duration::from_secs(30)));

        // A provider's hint of a day cools for max_cooldown_from_hint (5m here), no longer.
        let s = DeploymentState::new(t0, None);
        let day = AttemptEnd::Failed {
            kind: FailKind::RateLimit,
            wait_hint: Some(Duration::from_secs(24 * 3600)),
        };
        assert_eq!(
            s.report(t0, day, &p, COOL, None, TTL, false),
            Some(t0 + Duration::from_secs(300))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn request_faults_count_only_when_the_policy_names_them() {
        let s = DeploymentState::new(Instant::now(), None);
        let mut p = policy(0);
        let t0 = Instant::now();
        assert_eq!(
            s.report(t0, fail(FailKind::BadRequest), &p, COOL, None, TTL, false),
            None
        );
        p.per_kind[FailKind::BadRequest.index()] = Some(1);
        assert_eq!(
            s.report(t0, fail(FailKind::BadRequest), &p, COOL, None, TTL, false),
            None
        );
        assert!(
            s.report(t0, fail(FailKind::BadRequest), &p, COOL, None, TTL, false)
                .is_some()
        );
        p.enabled = false;
        let s = DeploymentState::new(t0, None);
        assert_eq!(
            s.report(t0, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn budget_throttles_retries_below_half_and_refills_on_success() {
        let budget = RetryBudget {
            max_tokens: 4.0,
            token_ratio: 0.5,
        };
        let s = DeploymentState::new(Instant::now(), Some(budget));
        let p = CooldownPolicy {
            enabled: false,
            ..policy(0)
        };
        let now = Instant::now();
        let l = Limits {
            budget: Some(budget),
            ..limits()
        };
        for _ in 0..2 {
            s.report(
                now,
                fail(FailKind::InternalServer),
                &p,
                COOL,
                Some(budget),
                TTL,
                false,
            );
        }
        // 2 of 4 tokens: not above half.
        assert_eq!(
            s.check(now, &l, false),
            Check::Unavailable(Unavailable::Throttled)
        );
        // The call's first attempt is never throttled.
        assert!(matches!(s.check(now, &l, true), Check::Available(_)));
        let ok = AttemptEnd::Ok {
            elapsed: Duration::from_millis(10),
            output_tokens: None,
        };
        s.report(now, ok, &p, COOL, Some(budget), TTL, false);
        assert!(matches!(s.check(now, &l, false), Check::Available(_)));
        assert_eq!(s.budget_tokens(), Some(2.5));
        // Never below zero, never above the maximum.
        for _ in 0..10 {
            s.report(
                now,
                fail(FailKind::Timeout),
                &p,
                COOL,
                Some(budget),
                TTL,
                false,
            );
        }
        assert_eq!(s.budget_tokens(), Some(0.0));
        for _ in 0..20 {
            s.report(now, ok, &p, COOL, Some(budget), TTL, false);
        }
        assert_eq!(s.budget_tokens(), Some(4.0));
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_limit_and_usage_limits_make_a_deployment_unavailable() {
        let s = Arc::new(DeploymentState::new(Instant::now(), None));
        let now = Instant::now();
        let l = Limits {
            max_parallel: Some(1),
            ..limits()
        };
        let lease = s.begin(now, 0);
        assert!(matches!(
            s.check(now, &l, true),
            Check::Unavailable(Unavailable::AtCapacity { .. })
        ));
        drop(lease);
        assert!(matches!(s.check(now, &l, true), Check::Available(_)));

        let l = Limits {
            rpm: Some(2),
            tpm: Some(100),
            enforce_usage: true,
            request_tokens: 40,
            ..limits()
        };
        let s = Arc::new(DeploymentState::new(now, None));
        drop(s.begin(now, 40));
        assert!(matches!(s.check(now, &l, true), Check::Available(_)));
        drop(s.begin(now, 40));
        // Two requests this minute: at rpm. Back when the minute ends.
        assert_eq!(
            s.check(now, &l, true),
            Check::Unavailable(Unavailable::AtCapacity {
                until: now + MINUTE
            })
        );
        tokio::time::advance(MINUTE).await;
        assert!(matches!(
            s.check(Instant::now(), &l, true),
            Check::Available(_)
        ));
        // 80 + 40 > 100 tokens.
        let now = Instant::now();
        s.add_tokens(now, 80);
        assert!(matches!(
            s.check(now, &l, true),
            Check::Unavailable(Unavailable::AtCapacity { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_a_moving_average_with_timeouts_as_penalties_that_expire() {
        let s = DeploymentState::new(Instant::now(), None);
        let p = policy(100);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let l = Limits {
            latency_ttl: ttl,
            ..limits()
        };
        let load = |now| match s.check(now, &l, true) {
            Check::Available(load) => load.latency,
            other => panic!("{other:?}"),
        };
        assert_eq!(load(t0), None);
        for ms in [100, 300] {
            let ok = AttemptEnd::Ok {
                elapsed: Duration::from_millis(ms),
                output_tokens: None,
            };
            s.report(t0, ok, &p, COOL, None, ttl, false);
        }
        assert!((load(t0).unwrap() - 0.2).abs() < 1e-9);
        let t1 = t0 + Duration::from_secs(30);
        s.report(t1, fail(FailKind::Timeout), &p, COOL, None, ttl, false);
        assert!(load(t1).unwrap() > 300.0);
        // The two early samples expire first, then the penalty.
        assert!(load(t0 + ttl).unwrap() >= TIMEOUT_PENALTY_SECS);
        assert_eq!(load(t1 + ttl), None);
    }
}
