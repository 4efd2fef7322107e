//! The shared store with its Redis away behaves exactly as the local store: it passes the
//! same suite, under the paused clock, while every sync fails. (With Redis there, the
//! integration tests in `tests/it/shared.rs` run two router processes on a real server.)

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::SharedStore;
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
