//! State shared by every replica through Redis (or Valkey): deployments' usage minutes,
//! in-flight counts, failure counts and cooldowns, and callers' calls, tokens, in-flight counts
//! and spend. Configured by `router_settings.redis_*`; without them nothing here runs.
//!
//! [`SharedStore`] is both a [`HealthStore`] and a [`CallerStore`]. The hot path never waits
//! for Redis: each deployment and caller keeps this replica's own counts exactly as the local
//! stores do, plus what the other replicas counted as the last sync read it, and a check reads
//! the two together. A background task syncs every `redis_sync_interval` in one round trip
//! (one Lua script over every key: `sync.lua`), so a limit may be overshot by what the other
//! replicas admit within one interval. When Redis is slow or away, the exchange times out
//! after `redis_timeout`, the replica counts alone (what it counted is sent when Redis is
//! back), and the episode is logged once, counted and shown on /healthz.
//!
//! The files: [`group`] the bookkeeping of one counter group, [`deployment`] and [`caller`]
//! the two kinds of entry, [`sync`] the task and the exchange.
//!
//! Not shared: latency samples and the retry budget. Latency is what this replica measured
//! on its own path to the provider, and the retry budget bounds this replica's own retries
//! (gRFC A6 keeps it per client): sharing either would let one replica's view steer another.

pub mod caller;
pub mod deployment;
mod group;
mod sync;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use ring::digest;

use crate::config::{RetryBudget, shared::SharedState};
use crate::routing::callers::{CallerState, CallerStore};
use crate::routing::health::{DeploymentHealth, DeploymentKey, HealthStore, WallClock};
use crate::telemetry::Metrics;
use caller::SharedCaller;
use deployment::SharedDeployment;

/// Every key starts with this; the namespace follows in braces (a Redis Cluster hash tag, so
/// that one script may touch every key of a namespace).
const KEY_PREFIX: &str = "llmrouter";

/// The store replicas share. Dropping it stops its sync task.
#[derive(Debug)]
pub struct SharedStore {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    settings: SharedState,
    /// Names this replica's in-flight counts in the store; random per process.
    replica: String,
    clock: WallClock,
    /// `redis_namespace`, else derived from the running config's deployments.
    namespace: Mutex<Option<String>>,
    deployments: Mutex<HashMap<DeploymentKey, (String, Arc<SharedDeployment>)>>,
    callers: Mutex<HashMap<String, (String, Arc<SharedCaller>)>>,
    metrics: Arc<Metrics>,
}

impl SharedStore {
    /// Starts the store and its sync task. Never waits for Redis: the first connection is
    /// made by the first sync.
    pub fn start(settings: SharedState, metrics: Arc<Metrics>) -> Arc<SharedStore> {
        Self::start_with_clock(settings, metrics, WallClock::now())
    }

    /// A store that reads wall-clock time off `clock` (tests anchor it on a minute).
    pub fn start_with_clock(
        settings: SharedState,
        metrics: Arc<Metrics>,
        clock: WallClock,
    ) -> Arc<SharedStore> {
        let inner = Arc::new(Inner {
            namespace: Mutex::new(settings.namespace.clone()),
            replica: format!("{:016x}", fastrand::u64(..)),
            clock,
            deployments: Mutex::new(HashMap::new()),
            callers: Mutex::new(HashMap::new()),
            metrics,
            settings,
        });
        inner
            .metrics
            .set_shared_state_detail(format!("connecting to {}", inner.settings.shown));
        let task = tokio::spawn(sync::run(Arc::downgrade(&inner)));
        Arc::new(SharedStore { inner, task })
    }

    /// The namespace keys are in now (`None` until the first config is built).
    pub fn namespace(&self) -> Option<String> {
        lock(&self.inner.namespace).clone()
    }
}

impl Drop for SharedStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first 16 hex digits of the SHA-256 of `parts`, each ended by a NUL: names without the
/// characters, length or (for base URLs) contents of what they name.
fn short_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p.as_bytes());
        ctx.update(&[0]);
    }
    ctx.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn deployment_hash(key: &DeploymentKey) -> String {
    short_hash([
        key.id.as_str(),
        key.provider,
        key.api_base.as_str(),
        key.upstream_model.as_str(),
    ])
}

impl HealthStore for SharedStore {
    fn deployment(
        &self,
        key: &DeploymentKey,
        budget: Option<RetryBudget>,
    ) -> Arc<dyn DeploymentHealth> {
        let mut map = lock(&self.inner.deployments);
        if let Some((_, kept)) = map.get(key) {
            kept.configure_budget(budget);
            return kept.clone();
        }
        let made = Arc::new(SharedDeployment::new(self.inner.clock, budget));
        map.insert(key.clone(), (deployment_hash(key), made.clone()));
        made
    }

    /// Also where a derived namespace follows the config: it names the set of deployments
    /// the config routes to, so replicas of one config share and routers of two do not.
    fn retain(&self, live: &[DeploymentKey]) {
        let live_set: HashSet<&DeploymentKey> = live.iter().collect();
        let mut map = lock(&self.inner.deployments);
        map.retain(|k, _| live_set.contains(k));
        if self.inner.settings.namespace.is_none() {
            // The entries' hashes, made when each was first asked for: the live deployments'.
            let mut hashes: Vec<&str> = map.values().map(|(h, _)| h.as_str()).collect();
            hashes.sort_unstable();
            hashes.dedup();
            let derived = short_hash(hashes);
            *lock(&self.inner.namespace) = Some(derived[..12].to_string());
        }
    }
}

impl CallerStore for SharedStore {
    fn caller(&self, name: &str) -> Arc<dyn CallerState> {
        let mut map = lock(&self.inner.callers);
        map.entry(name.to_string())
            .or_insert_with(|| {
                (
                    short_hash([name]),
                    Arc::new(SharedCaller::new(self.inner.clock)),
                )
            })
            .1
            .clone()
    }

    fn retain(&self, live: &[&str]) {
        lock(&self.inner.callers).retain(|name, _| live.contains(&name.as_str()));
    }
}

#[cfg(test)]
mod tests;
