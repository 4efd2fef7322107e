//! The health store of one process: each deployment's counters behind a lock of its own, held
//! for a few field updates and never across an await. What every replica keeps when nothing is
//! shared, and the behaviour every other store is measured against (`suite`).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::cooldown::Tally;
use super::counters::Counters;
use super::window::WallClock;
use super::{AttemptEnd, DeploymentHealth, DeploymentKey, HealthSettings, HealthStore, Snapshot};
use crate::config::RetryBudget;

/// Deployments' health in this process, by key. A reload asks again for every deployment of
/// its config: those whose key is unchanged get the state they had.
#[derive(Debug)]
pub struct LocalStore {
    clock: WallClock,
    deployments: Mutex<HashMap<DeploymentKey, Arc<LocalDeployment>>>,
}

impl LocalStore {
    pub fn new() -> Self {
        Self::with_clock(WallClock::now())
    }

    /// A store whose usage minutes are read off `clock` (tests anchor it on a minute).
    pub fn with_clock(clock: WallClock) -> Self {
        LocalStore {
            clock,
            deployments: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthStore for LocalStore {
    fn deployment(
        &self,
        key: &DeploymentKey,
        budget: Option<RetryBudget>,
    ) -> Arc<dyn DeploymentHealth> {
        let mut map = self.deployments.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = map.get(key) {
            kept.configure_budget(budget);
            return kept.clone();
        }
        let made = Arc::new(LocalDeployment {
            clock: self.clock,
            in_flight: AtomicU32::new(0),
            counters: Mutex::new(Counters::new(Instant::now(), &self.clock, budget)),
        });
        map.insert(key.clone(), made.clone());
        made
    }

    fn retain(&self, live: &[DeploymentKey]) {
        let live: HashSet<&DeploymentKey> = live.iter().collect();
        let mut map = self.deployments.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| live.contains(k));
    }
}

/// One deployment's state in this process. In-flight attempts are an atomic apart from the
/// counters: a lease ends without the lock.
#[derive(Debug)]
pub struct LocalDeployment {
    clock: WallClock,
    in_flight: AtomicU32,
    counters: Mutex<Counters>,
}

impl LocalDeployment {
    fn lock(&self) -> MutexGuard<'_, Counters> {
        // Plain counters: ones a panicking thread left half-updated are still usable.
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DeploymentHealth for LocalDeployment {
    fn snapshot(&self, now: Instant, streaming: bool, latency_ttl: Duration) -> Snapshot {
        let in_flight = self.in_flight();
        self.lock()
            .snapshot(now, &self.clock, in_flight, streaming, latency_ttl)
    }

    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn cooling_until(&self, now: Instant) -> Option<Instant> {
        self.lock().cooling_until(now)
    }

    fn budget_tokens(&self) -> Option<f64> {
        self.lock().budget_tokens()
    }

    fn begin(&self, now: Instant, request_tokens: u64) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.lock().begin(now, &self.clock, request_tokens);
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn add_tokens(&self, now: Instant, tokens: u64) {
        self.lock().add_tokens(now, &self.clock, tokens);
    }

    fn report(&self, now: Instant, end: AttemptEnd, settings: &HealthSettings) -> Option<Instant> {
        self.lock().report(now, end, settings, &Tally::NONE)
    }

    fn configure_budget(&self, budget: Option<RetryBudget>) {
        self.lock().configure_budget(budget);
    }
}
