//! The behaviour every health store must have, as a suite any implementation runs under
//! tokio's paused clock: `health_store_suite!(make)` expands to one test per rule, each on a
//! store `make` returns. The store's usage minutes must start when the test does (anchor its
//! wall clock on a minute: see `tests.rs`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::*;
use crate::config::{CooldownRule, FailKind};

pub fn policy(allowed_fails: u32) -> CooldownPolicy {
    CooldownPolicy {
        enabled: true,
        rule: CooldownRule::FailureCount,
        allowed_fails,
        per_kind: [None; FailKind::COUNT],
        cooldown_time: Duration::from_secs(5),
        max_hint: Duration::from_secs(300),
    }
}

pub fn limits() -> Limits {
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

pub fn fail(kind: FailKind) -> AttemptEnd {
    AttemptEnd::Failed {
        kind,
        wait_hint: None,
    }
}

pub const COOL: Duration = Duration::from_secs(5);
pub const TTL: Duration = Duration::from_secs(300);

/// A deployment's limits as the tests set them (in the table they come from its config).
#[derive(Clone, Copy)]
pub struct Limits {
    pub max_parallel: Option<u32>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub enforce_usage: bool,
    pub request_tokens: u64,
    pub budget: Option<RetryBudget>,
    pub streaming: bool,
    pub latency_ttl: Duration,
}

/// A new deployment in `store`, under a key no other test uses.
pub fn fresh(store: &dyn HealthStore, budget: Option<RetryBudget>) -> Arc<dyn DeploymentHealth> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let key = DeploymentKey {
        id: format!("suite-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
        provider: "mock",
        api_base: String::new(),
        upstream_model: "m".into(),
    };
    store.deployment(&key, budget)
}

fn settings(
    cooldowns: &CooldownPolicy,
    cooldown_time: Duration,
    budget: Option<RetryBudget>,
    latency_ttl: Duration,
    alone: bool,
) -> HealthSettings {
    HealthSettings {
        cooldowns: *cooldowns,
        cooldown_time,
        budget,
        latency_ttl,
        alone,
        max_parallel: None,
        rpm: None,
        tpm: None,
        enforce_usage: false,
    }
}

/// Reports an attempt's end under these settings.
#[allow(clippy::too_many_arguments)]
pub fn report(
    s: &Arc<dyn DeploymentHealth>,
    now: Instant,
    end: AttemptEnd,
    cooldowns: &CooldownPolicy,
    cooldown_time: Duration,
    budget: Option<RetryBudget>,
    latency_ttl: Duration,
    alone: bool,
) -> Option<Instant> {
    s.report(
        now,
        end,
        &settings(cooldowns, cooldown_time, budget, latency_ttl, alone),
    )
}

/// What a pick decides of the deployment at `now`.
pub fn check(
    s: &Arc<dyn DeploymentHealth>,
    now: Instant,
    l: &Limits,
    first_attempt: bool,
) -> Check {
    let settings = HealthSettings {
        max_parallel: l.max_parallel,
        rpm: l.rpm,
        tpm: l.tpm,
        enforce_usage: l.enforce_usage,
        ..settings(&policy(0), Duration::ZERO, l.budget, l.latency_ttl, false)
    };
    let ask = Ask {
        request_tokens: l.request_tokens,
        streaming: l.streaming,
        first_attempt,
    };
    judge(
        &s.snapshot(now, l.streaming, l.latency_ttl),
        &settings,
        ask,
        now,
    )
}

macro_rules! health_store_suite {
    ($make:expr) => {
        #[tokio::test(start_paused = true)]
        async fn litellms_default_rule_goes_by_the_failure_rate_and_spares_a_group_of_one() {
            let store = $make;
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
            let s = fresh(&store, None);
            for _ in 0..3 {
                report(&s, t0, ok, &p, COOL, None, TTL, false);
            }
            for _ in 0..3 {
                assert_eq!(
                    report(&s, t0, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                    None
                );
            }
            assert_eq!(
                report(&s, t0, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                Some(t0 + COOL)
            );
            // Fewer than five attempts in the minute never cool by rate: four failures in a row.
            let s = fresh(&store, None);
            for _ in 0..4 {
                assert_eq!(
                    report(
                        &s,
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
            let s = fresh(&store, None);
            for _ in 0..999 {
                assert_eq!(
                    report(&s, t0, fail(FailKind::Timeout), &p, COOL, None, TTL, true),
                    None
                );
            }
            assert_eq!(
                report(&s, t0, fail(FailKind::Timeout), &p, COOL, None, TTL, true),
                Some(t0 + COOL)
            );
            // A rate limit cools at once where the group has others, never alone; bad credentials
            // cool either way; a bad request never.
            let s = fresh(&store, None);
            assert_eq!(
                report(&s, t0, fail(FailKind::RateLimit), &p, COOL, None, TTL, true),
                None
            );
            assert_eq!(
                report(
                    &s,
                    t0,
                    fail(FailKind::BadRequest),
                    &p,
                    COOL,
                    None,
                    TTL,
                    false
                ),
                None
            );
            assert_eq!(
                report(
                    &s,
                    t0,
                    fail(FailKind::RateLimit),
                    &p,
                    COOL,
                    None,
                    TTL,
                    false
                ),
                Some(t0 + COOL)
            );
            let s = fresh(&store, None);
            assert_eq!(
                report(
                    &s,
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
            let s = fresh(&store, None);
            for _ in 0..10 {
                report(&s, t0, ok, &p, COOL, None, TTL, false);
            }
            let t1 = t0 + MINUTE;
            for _ in 0..4 {
                assert_eq!(
                    report(&s, t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                    None
                );
            }
            assert_eq!(
                report(&s, t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                Some(t1 + COOL)
            );
        }

        #[tokio::test(start_paused = true)]
        async fn cools_after_more_than_allowed_fails_within_a_minute_and_returns() {
            let store = $make;
            let s = fresh(&store, None);
            let p = policy(2);
            let t0 = Instant::now();
            assert_eq!(
                report(&s, t0, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                None
            );
            assert_eq!(
                report(
                    &s,
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
            let until = report(
                &s,
                t0,
                fail(FailKind::RateLimit),
                &p,
                COOL,
                None,
                TTL,
                false,
            );
            assert_eq!(until, Some(t0 + COOL));
            assert!(matches!(
                check(&s, t0 + Duration::from_secs(4), &limits(), true),
                Check::Unavailable(Unavailable::CoolingDown { .. })
            ));
            assert!(matches!(
                check(&s, t0 + COOL, &limits(), true),
                Check::Available(_)
            ));
            // The count started again: two more failures are allowed.
            let t1 = t0 + COOL;
            assert_eq!(
                report(&s, t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                None
            );
        }

        #[tokio::test(start_paused = true)]
        async fn failures_a_minute_apart_do_not_add_up() {
            let store = $make;
            let s = fresh(&store, None);
            let p = policy(1);
            let t0 = Instant::now();
            assert_eq!(
                report(&s, t0, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                None
            );
            let t1 = t0 + MINUTE;
            assert_eq!(
                report(&s, t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                None
            );
            assert!(report(&s, t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false).is_some());
        }

        #[tokio::test(start_paused = true)]
        async fn cooled_again_keeps_the_later_end_and_a_wait_hint_lengthens_it() {
            let store = $make;
            let s = fresh(&store, None);
            let p = policy(0);
            let t0 = Instant::now();
            let long = AttemptEnd::Failed {
                kind: FailKind::RateLimit,
                wait_hint: Some(Duration::from_secs(30)),
            };
            assert_eq!(
                report(&s, t0, long, &p, COOL, None, TTL, false),
                Some(t0 + Duration::from_secs(30))
            );
            // A later, shorter cooldown does not cut the longer one short.
            let t1 = t0 + Duration::from_secs(1);
            assert_eq!(
                report(&s, t1, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                Some(t0 + Duration::from_secs(30))
            );
            assert_eq!(s.cooling_until(t1), Some(t0 + Duration::from_secs(30)));

            // A provider's hint of a day cools for max_cooldown_from_hint (5m here), no longer.
            let s = fresh(&store, None);
            let day = AttemptEnd::Failed {
                kind: FailKind::RateLimit,
                wait_hint: Some(Duration::from_secs(24 * 3600)),
            };
            assert_eq!(
                report(&s, t0, day, &p, COOL, None, TTL, false),
                Some(t0 + Duration::from_secs(300))
            );
        }

        #[tokio::test(start_paused = true)]
        async fn request_faults_count_only_when_the_policy_names_them() {
            let store = $make;
            let s = fresh(&store, None);
            let mut p = policy(0);
            let t0 = Instant::now();
            assert_eq!(
                report(
                    &s,
                    t0,
                    fail(FailKind::BadRequest),
                    &p,
                    COOL,
                    None,
                    TTL,
                    false
                ),
                None
            );
            p.per_kind[FailKind::BadRequest.index()] = Some(1);
            assert_eq!(
                report(
                    &s,
                    t0,
                    fail(FailKind::BadRequest),
                    &p,
                    COOL,
                    None,
                    TTL,
                    false
                ),
                None
            );
            assert!(
                report(
                    &s,
                    t0,
                    fail(FailKind::BadRequest),
                    &p,
                    COOL,
                    None,
                    TTL,
                    false
                )
                .is_some()
            );
            p.enabled = false;
            let s = fresh(&store, None);
            assert_eq!(
                report(&s, t0, fail(FailKind::Timeout), &p, COOL, None, TTL, false),
                None
            );
        }

        #[tokio::test(start_paused = true)]
        async fn budget_throttles_retries_below_half_and_refills_on_success() {
            let store = $make;
            let budget = RetryBudget {
                max_tokens: 4.0,
                token_ratio: 0.5,
            };
            let s = fresh(&store, Some(budget));
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
                report(
                    &s,
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
                check(&s, now, &l, false),
                Check::Unavailable(Unavailable::Throttled)
            );
            // The call's first attempt is never throttled.
            assert!(matches!(check(&s, now, &l, true), Check::Available(_)));
            let ok = AttemptEnd::Ok {
                elapsed: Duration::from_millis(10),
                output_tokens: None,
            };
            report(&s, now, ok, &p, COOL, Some(budget), TTL, false);
            assert!(matches!(check(&s, now, &l, false), Check::Available(_)));
            assert_eq!(s.budget_tokens(), Some(2.5));
            // Never below zero, never above the maximum.
            for _ in 0..10 {
                report(
                    &s,
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
                report(&s, now, ok, &p, COOL, Some(budget), TTL, false);
            }
            assert_eq!(s.budget_tokens(), Some(4.0));
        }

        #[tokio::test(start_paused = true)]
        async fn in_flight_limit_and_usage_limits_make_a_deployment_unavailable() {
            let store = $make;
            let s = fresh(&store, None);
            let now = Instant::now();
            let l = Limits {
                max_parallel: Some(1),
                ..limits()
            };
            let held = lease(&s, now, 0);
            assert!(matches!(
                check(&s, now, &l, true),
                Check::Unavailable(Unavailable::AtCapacity { .. })
            ));
            drop(held);
            assert!(matches!(check(&s, now, &l, true), Check::Available(_)));

            let l = Limits {
                rpm: Some(2),
                tpm: Some(100),
                enforce_usage: true,
                request_tokens: 40,
                ..limits()
            };
            let s = fresh(&store, None);
            drop(lease(&s, now, 40));
            assert!(matches!(check(&s, now, &l, true), Check::Available(_)));
            drop(lease(&s, now, 40));
            // Two requests this minute: at rpm. Back when the minute ends.
            assert_eq!(
                check(&s, now, &l, true),
                Check::Unavailable(Unavailable::AtCapacity {
                    until: now + MINUTE
                })
            );
            tokio::time::advance(MINUTE).await;
            assert!(matches!(
                check(&s, Instant::now(), &l, true),
                Check::Available(_)
            ));
            // 80 + 40 > 100 tokens.
            let now = Instant::now();
            s.add_tokens(now, 80);
            assert!(matches!(
                check(&s, now, &l, true),
                Check::Unavailable(Unavailable::AtCapacity { .. })
            ));
        }

        #[tokio::test(start_paused = true)]
        async fn latency_is_a_moving_average_with_timeouts_as_penalties_that_expire() {
            let store = $make;
            let s = fresh(&store, None);
            let p = policy(100);
            let t0 = Instant::now();
            let ttl = Duration::from_secs(60);
            let l = Limits {
                latency_ttl: ttl,
                ..limits()
            };
            let load = |now| match check(&s, now, &l, true) {
                Check::Available(load) => load.latency,
                other => panic!("{other:?}"),
            };
            assert_eq!(load(t0), None);
            for ms in [100, 300] {
                let ok = AttemptEnd::Ok {
                    elapsed: Duration::from_millis(ms),
                    output_tokens: None,
                };
                report(&s, t0, ok, &p, COOL, None, ttl, false);
            }
            assert!((load(t0).unwrap() - 0.2).abs() < 1e-9);
            let t1 = t0 + Duration::from_secs(30);
            report(&s, t1, fail(FailKind::Timeout), &p, COOL, None, ttl, false);
            assert!(load(t1).unwrap() > 300.0);
            // The two early samples expire first, then the penalty.
            assert!(load(t0 + ttl).unwrap() >= TIMEOUT_PENALTY_SECS);
            assert_eq!(load(t1 + ttl), None);
        }
    };
}

/// For the stores of other modules (the shared store runs the suite too).
pub(crate) use health_store_suite;
