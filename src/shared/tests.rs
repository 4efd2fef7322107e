//! The shared store with its Redis away behaves exactly as the local store: it passes the
//! same suite, under the paused clock, while every sync fails. (With Redis there, the
//! integration tests in `tests/it/shared.rs` run two router processes on a real server.)

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::SharedStore;
use super::deployment::{DeploymentReply, FAIL_FIELDS, SharedDeployment};
use crate::config::{Config, CooldownPolicy, CooldownRule, FailKind, RetryBudget, Source};
use crate::routing::health::suite::*;
use crate::routing::health::*;
use crate::telemetry::Metrics;

/// A store whose Redis is a loopback port nobody listens on, and whose wall clock starts a
/// minute now, as the suite needs.
fn shared_store_without_redis() -> Arc<SharedStore> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "model_list:\n  - model_name: m\n    litellm_params: {{ model: mock/m }}\nrouter_settings:\n  redis_url: redis://127.0.0.1:{port}\n  redis_sync_interval: 10ms\n  redis_timeout: 5ms\n  redis_namespace: suite\n"
    );
    let config = Config::load(Source::Yaml(&yaml)).unwrap();
    SharedStore::start_with_clock(
        config.shared_state.unwrap(),
        Arc::new(Metrics::new()),
        WallClock::anchored(Instant::now(), Duration::from_secs(29_000_000 * 60)),
    )
}

/// The store as the suite takes it (a `&dyn HealthStore` of a value it owns).
#[derive(Debug)]
struct Store(Arc<SharedStore>);

impl HealthStore for Store {
    fn deployment(
        &self,
        key: &DeploymentKey,
        budget: Option<RetryBudget>,
    ) -> Arc<dyn DeploymentHealth> {
        self.0.deployment(key, budget)
    }

    fn retain(&self, live: &[DeploymentKey]) {
        HealthStore::retain(self.0.as_ref(), live)
    }
}

health_store_suite!(Store(shared_store_without_redis()));

#[tokio::test]
async fn with_redis_away_every_sync_fails_fast_is_counted_and_shown() {
    let store = shared_store_without_redis();
    let metrics = store.inner.metrics.clone();
    let key = DeploymentKey {
        id: "d".into(),
        provider: "openai",
        api_base: "http://127.0.0.1:1".into(),
        upstream_model: "m".into(),
    };
    let d = store.deployment(&key, None);
    HealthStore::retain(store.as_ref(), &[key]);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics.encode();
        if text.contains("llmrouter_shared_state_errors_total{kind=\"connection\"} 3") {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "{:?} {text}",
            metrics.shared_state_detail()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let detail = metrics.shared_state_detail().unwrap_or_default();
    assert!(detail.starts_with("unreachable since"), "{detail}");
    assert!(detail.ends_with("this replica counts alone"), "{detail}");
    // The entry goes on with its own counts.
    let now = Instant::now();
    let _lease = lease(&d, now, 10);
    assert_eq!(d.in_flight(), 1);
    assert_eq!(d.snapshot(now, false, TTL).requests, 1);
    assert_eq!(store.namespace().as_deref(), Some("suite"));
}

/// A deployment entry of a store with Redis away (only `settle` brings the others' counts).
fn entry(store: &SharedStore) -> Arc<SharedDeployment> {
    Arc::new(SharedDeployment::new(store.inner.clock, None))
}

fn reply(
    requests: f64,
    tokens: f64,
    fails: [f64; FAIL_FIELDS],
    cooling_until_ms: u64,
    in_flight: u32,
) -> DeploymentReply {
    DeploymentReply {
        usage: ("29000000:0:e".into(), [requests, tokens], [0.0, 0.0]),
        fails: ("29000000:0:e".into(), fails, [0.0; FAIL_FIELDS]),
        cooling_until_ms,
        others_in_flight: in_flight,
    }
}

#[tokio::test(start_paused = true)]
async fn what_other_replicas_counted_is_read_with_this_replicas_own() {
    let store = shared_store_without_redis();
    let d = entry(&store);
    let t0 = Instant::now();
    let _lease = lease(&(d.clone() as Arc<dyn DeploymentHealth>), t0, 7);
    let mut args = String::new();
    let sent = d.take(t0, &mut args);
    // Usage: window, seen, own requests and tokens, this replica's delta since the last sync.
    assert!(args.starts_with(" 29000000 - 0 0 1 7 "), "{args}");
    d.settle(t0, sent, reply(4.0, 40.0, [0.0; FAIL_FIELDS], 0, 2));
    let s = d.snapshot(t0, false, TTL);
    assert_eq!((s.requests, s.tokens, s.in_flight), (5, 47, 3));
    // The others' counts are of their minute only.
    tokio::time::advance(Duration::from_secs(60)).await;
    let s = d.snapshot(Instant::now(), false, TTL);
    assert_eq!((s.requests, s.tokens), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_cooldown_from_the_store_ends_at_the_instant_it_names_and_failures_count_together() {
    let store = shared_store_without_redis();
    let d = entry(&store);
    let t0 = Instant::now();
    let clock = store.inner.clock;
    // Another replica cooled the deployment until 3.5 s from now.
    let until_ms = clock.unix_ms(t0) + 3_500;
    let mut args = String::new();
    let sent = d.take(t0, &mut args);
    d.settle(t0, sent, reply(0.0, 0.0, [0.0; FAIL_FIELDS], until_ms, 0));
    assert_eq!(d.cooling_until(t0), Some(t0 + Duration::from_millis(3_500)));
    tokio::time::advance(Duration::from_millis(3_500)).await;
    assert_eq!(d.cooling_until(Instant::now()), None);

    // allowed_fails 2: two timeouts elsewhere this minute, one here, cools it here.
    let now = Instant::now();
    let mut fails = [0.0; FAIL_FIELDS];
    fails[FailKind::Timeout.index()] = 2.0;
    let mut args = String::new();
    let sent = d.take(now, &mut args);
    d.settle(now, sent, reply(0.0, 0.0, fails, until_ms, 0));
    let settings = HealthSettings {
        cooldowns: CooldownPolicy {
            rule: CooldownRule::FailureCount,
            ..policy(2)
        },
        cooldown_time: COOL,
        budget: None,
        latency_ttl: TTL,
        alone: false,
        max_parallel: None,
        rpm: None,
        tpm: None,
        enforce_usage: false,
    };
    let end = d.report(now, fail(FailKind::Timeout), &settings);
    assert_eq!(end, Some(now + COOL));
    // The store is told: the end of the cooldown, as a Unix time, goes with the next sync.
    let mut args = String::new();
    d.take(now, &mut args);
    assert!(
        args.contains(&format!(" {} ", clock.unix_ms(now + COOL))),
        "{args}"
    );
}
