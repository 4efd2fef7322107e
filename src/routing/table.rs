//! The routing table of one config snapshot: a provider client and shared state per
//! deployment, built once and shared by every call; and the current snapshot, which a reload
//! swaps.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::health::DeploymentState;
use super::pick::{Picker, Slot};
use crate::config::{Config, Deployment, ModelGroup};
use crate::providers::Provider;
use crate::telemetry::Metrics;

/// The routing table of one config snapshot, with a provider client and shared state per
/// deployment. Immutable: calls share it through an `Arc` without locking. A reload builds a
/// new one that keeps each deployment's state (cooldowns, latency, budget) by id.
#[derive(Debug)]
pub struct Router {
    config: Arc<Config>,
    http: reqwest::Client,
    /// Per model group, in the order of the group's deployments.
    slots: HashMap<String, Arc<[Slot]>>,
    /// By deployment id.
    states: HashMap<String, Arc<DeploymentState>>,
    metrics: Arc<Metrics>,
}

/// The router of the current config snapshot. A reload swaps in a new one; each call takes
/// the current one when it starts and keeps it to its end.
#[derive(Debug)]
pub struct SharedRouter {
    current: std::sync::RwLock<Arc<Router>>,
}

impl SharedRouter {
    pub fn new(router: Router) -> Self {
        SharedRouter {
            current: std::sync::RwLock::new(Arc::new(router)),
        }
    }

    pub fn current(&self) -> Arc<Router> {
        // Only a swap writes, and it cannot panic midway: a poisoned lock still holds a router.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Builds the router for `config` on the current one's state and swaps it in.
    pub fn reload(&self, config: Arc<Config>) -> Result<(), String> {
        let next = Arc::new(self.current().reload(config)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }
}

impl Router {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Router, String> {
        Self::build(config, metrics, None)
    }

    /// The router for a reloaded config. Deployments that kept their id and still point at the
    /// same provider, model and base URL keep their state: a cooling deployment stays cooling.
    pub fn reload(&self, config: Arc<Config>) -> Result<Router, String> {
        Self::build(config, self.metrics.clone(), Some(self))
    }

    fn build(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        previous: Option<&Router>,
    ) -> Result<Router, String> {
        let http = match previous {
            Some(p) if p.config.router.connect_timeout == config.router.connect_timeout => {
                p.http.clone()
            }
            // One pooled client for every deployment: connections are shared per host. The
            // connect timeout is separate from, and much shorter than, any request deadline.
            _ => reqwest::Client::builder()
                .connect_timeout(config.router.connect_timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                // No provider redirects an API call, and a followed redirect would carry the
                // vendor key headers (x-api-key, api-key, x-goog-api-key) to the new host.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("llm-router/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
        };
        let now = Instant::now();
        let budget = config.router.retry_budget;
        let mut states = HashMap::new();
        let mut slots = HashMap::new();
        for group in config.groups.values() {
            let group_slots: Vec<Slot> = group
                .deployments
                .iter()
                .map(|d| {
                    let state = match previous.and_then(|p| p.kept_state(d)) {
                        Some(state) => {
                            state.configure_budget(budget);
                            state
                        }
                        None => Arc::new(DeploymentState::new(now, budget)),
                    };
                    states.insert(d.id.clone(), state.clone());
                    Slot {
                        provider: Provider::new(
                            d,
                            &http,
                            config.router.stream_max_malformed_events,
                        ),
                        state,
                    }
                })
                .collect();
            slots.insert(group.name.clone(), group_slots.into());
        }
        Ok(Router {
            config,
            http,
            slots,
            states,
            metrics,
        })
    }

    /// This router's state for a deployment of a new config, if it is the same deployment.
    fn kept_state(&self, d: &Deployment) -> Option<Arc<DeploymentState>> {
        let old = self
            .config
            .groups
            .values()
            .flat_map(|g| g.deployments.iter())
            .find(|o| o.id == d.id)?;
        let same = old.provider.name() == d.provider.name()
            && old.provider.api_base() == d.provider.api_base()
            && old.upstream_model == d.upstream_model;
        same.then(|| self.states.get(&d.id).cloned()).flatten()
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A deployment's shared state, for ListModels and metrics.
    pub fn deployment_state(&self, id: &str) -> Option<&Arc<DeploymentState>> {
        self.states.get(id)
    }

    /// A picker for one call in `group`.
    pub(super) fn picker(&self, group: &Arc<ModelGroup>) -> Picker {
        let slots = self
            .slots
            .get(&group.name)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()));
        Picker::new(group.clone(), slots)
    }
}
