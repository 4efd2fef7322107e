//! The deployment state's unit tests, under tokio's paused clock.

use super::*;
use crate::config::CooldownRule;

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
