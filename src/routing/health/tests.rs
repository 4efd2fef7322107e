//! The local store passes the health store suite, and its usage minutes are wall-clock ones.

use std::time::Duration;

use tokio::time::Instant;

use super::suite::*;
use super::*;
use crate::config::{CooldownRule, FailKind};

/// A local store whose wall clock starts a minute now (minute 29,000,000 since the epoch, in
/// 2025), so that the suite's minutes start with each test.
fn local_store() -> LocalStore {
    LocalStore::with_clock(WallClock::anchored(
        Instant::now(),
        Duration::from_secs(29_000_000 * 60),
    ))
}

health_store_suite!(local_store());

#[tokio::test(start_paused = true)]
async fn usage_counts_in_wall_clock_minutes_not_from_the_first_request() {
    // 50 s into a minute: the first request's minute ends 10 s later.
    let t0 = Instant::now();
    let store =
        LocalStore::with_clock(WallClock::anchored(t0, Duration::from_secs(60 * 1000 + 50)));
    let s = fresh(&store, None);
    let l = Limits {
        rpm: Some(1),
        enforce_usage: true,
        ..limits()
    };
    drop(lease(&s, t0, 0));
    assert_eq!(
        check(&s, t0, &l, true),
        Check::Unavailable(Unavailable::AtCapacity {
            until: t0 + Duration::from_secs(10)
        })
    );
    assert!(matches!(
        check(&s, t0 + Duration::from_secs(10), &l, true),
        Check::Available(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_a_deployment_by_its_key_and_forgets_the_rest() {
    let store = local_store();
    let key = |base: &str| DeploymentKey {
        id: "d".into(),
        provider: "openai",
        api_base: base.into(),
        upstream_model: "m".into(),
    };
    let t0 = Instant::now();
    let a = store.deployment(&key("http://a"), None);
    let p = CooldownPolicy { ..policy(0) };
    assert!(report(&a, t0, fail(FailKind::Timeout), &p, COOL, None, TTL, false).is_some());
    // The same key: the same state, still cooling.
    let again = store.deployment(&key("http://a"), None);
    assert_eq!(again.cooling_until(t0), Some(t0 + COOL));
    // Another base URL is another deployment.
    assert_eq!(
        store.deployment(&key("http://b"), None).cooling_until(t0),
        None
    );
    store.retain(&[key("http://b")]);
    assert_eq!(
        store.deployment(&key("http://a"), None).cooling_until(t0),
        None
    );
}
