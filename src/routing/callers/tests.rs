//! The local store's limits, under the paused clock on a wall clock anchored at a minute's
//! first second.

use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;
use crate::config::auth::BudgetPeriod;
use crate::proto::Usage;
use crate::routing::health::WallClock;

/// 2026-12-03T13:00:00Z.
const T0: u64 = 1_796_302_800;

fn store() -> LocalCallers {
    LocalCallers::with_clock(WallClock::anchored(Instant::now(), Duration::from_secs(T0)))
}

fn limits() -> Limits {
    Limits {
        rpm: None,
        tpm: None,
        parallel: None,
        budget: None,
    }
}

#[tokio::test(start_paused = true)]
async fn rpm_refuses_until_the_wall_clock_minute_ends() {
    let s = store();
    let c = s.caller("a");
    let l = Limits {
        rpm: Some(2),
        ..limits()
    };
    let now = Instant::now();
    c.admit(now, &l, 10).unwrap();
    c.admit(now, &l, 10).unwrap();
    advance(Duration::from_secs(20)).await;
    let refused = c.admit(Instant::now(), &l, 10).unwrap_err();
    assert_eq!(refused.limit, Limit::Rpm(2));
    assert_eq!(refused.retry_after, Duration::from_secs(40));
    assert!(
        refused
            .message("a")
            .contains("rpm_limit (2 calls a minute)")
    );
    advance(Duration::from_secs(40)).await;
    c.admit(Instant::now(), &l, 10).unwrap();
    // Another caller's minute is its own.
    s.caller("b").admit(Instant::now(), &l, 10).unwrap();
}

#[tokio::test(start_paused = true)]
async fn tokens_are_estimated_then_settled() {
    let s = store();
    let c = s.caller("a");
    let l = Limits {
        tpm: Some(1000),
        ..limits()
    };
    let mut lease = CallerLease::new(c.clone(), 900, None);
    c.admit(Instant::now(), &l, 900).unwrap();
    // Under the limit after the estimate: one more is let in.
    c.admit(Instant::now(), &l, 50).unwrap();
    c.release();
    // The real usage was smaller than the estimate: room again below the limit...
    lease.settle(&Usage {
        prompt_tokens: 100,
        completion_tokens: 100,
        ..Default::default()
    });
    c.admit(Instant::now(), &l, 10).unwrap();
    c.release();
    // ...then larger: the minute is full.
    let mut big = CallerLease::new(c.clone(), 10, None);
    big.settle(&Usage {
        prompt_tokens: 10,
        completion_tokens: 5000,
        ..Default::default()
    });
    // Settling twice counts once.
    big.settle(&Usage {
        prompt_tokens: 10,
        completion_tokens: 5000,
        ..Default::default()
    });
    let refused = c.admit(Instant::now(), &l, 10).unwrap_err();
    assert_eq!(refused.limit, Limit::Tpm(1000));
    assert_eq!(refused.retry_after, Duration::from_secs(60));
    drop((lease, big));
}

#[tokio::test(start_paused = true)]
async fn concurrency_frees_when_a_lease_drops() {
    let s = store();
    let c = s.caller("a");
    let l = Limits {
        parallel: Some(1),
        ..limits()
    };
    c.admit(Instant::now(), &l, 0).unwrap();
    let lease = CallerLease::new(c.clone(), 0, None);
    let refused = c.admit(Instant::now(), &l, 0).unwrap_err();
    assert_eq!(refused.limit, Limit::Parallel(1));
    assert_eq!(refused.retry_after, PARALLEL_RETRY_DELAY);
    drop(lease);
    c.admit(Instant::now(), &l, 0).unwrap();
}

#[tokio::test(start_paused = true)]
async fn budgets_refuse_until_their_period_ends() {
    let s = store();
    let c = s.caller("a");
    let budget = Budget {
        max_usd: 1.0,
        period: BudgetPeriod::parse("1h").unwrap(),
    };
    let l = Limits {
        budget: Some(budget),
        ..limits()
    };
    c.admit(Instant::now(), &l, 0).unwrap();
    let mut lease = CallerLease::new(c.clone(), 0, Some(budget));
    lease.settle(&Usage {
        cost_usd: Some(0.75),
        ..Default::default()
    });
    drop(lease);
    // Under the budget: admitted, and this call takes it over.
    c.admit(Instant::now(), &l, 0).unwrap();
    c.spend(Instant::now(), &budget, 0.5);
    c.release();
    assert!((c.spent(Instant::now(), &budget) - 1.25).abs() < 1e-9);
    advance(Duration::from_secs(600)).await;
    let refused = c.admit(Instant::now(), &l, 0).unwrap_err();
    assert_eq!(refused.retry_after, Duration::from_secs(3000));
    assert!(
        refused
            .message("a")
            .contains("the period ends at 2026-12-03T14:00:00Z"),
        "{}",
        refused.message("a")
    );
    advance(Duration::from_secs(3000)).await;
    c.admit(Instant::now(), &l, 0).unwrap();
    assert_eq!(c.spent(Instant::now(), &budget), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_what_was_counted_for_callers_that_stay() {
    let s = store();
    let l = Limits {
        rpm: Some(1),
        ..limits()
    };
    s.caller("a").admit(Instant::now(), &l, 0).unwrap();
    s.caller("b").admit(Instant::now(), &l, 0).unwrap();
    s.retain(&["a"]);
    assert!(s.caller("a").admit(Instant::now(), &l, 0).is_err());
    s.caller("b").admit(Instant::now(), &l, 0).unwrap();
}
