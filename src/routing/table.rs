//! The routing table of one config snapshot: a provider client and shared state per
//! deployment, built once and shared by every call; and the current snapshot, which a reload
//! swaps.

use std::{collections::HashMap, sync::Arc};

use super::callers::{CallerLease, CallerState, CallerStore, Limits, LocalCallers};
use super::health::{
    DeploymentHealth, DeploymentKey, Health, HealthSettings, HealthStore, LocalStore,
};
use super::pick::{Picker, Slot};
use super::{CallError, CallRequest, Reach};
use crate::config::{Config, ModelGroup};
use crate::providers::{Provider, transport::pool::Client};
use crate::telemetry::Metrics;

/// The routing table of one config snapshot, with a provider client and shared state per
/// deployment. Immutable: calls share it through an `Arc` without locking. A reload builds a
/// new one that keeps each deployment's state (cooldowns, latency, budget) by id.
#[derive(Debug)]
pub struct Router {
    config: Arc<Config>,
    http: Client,
    /// Per model group, in the order of the group's deployments.
    slots: HashMap<String, Arc<[Slot]>>,
    /// By deployment id.
    states: HashMap<String, Arc<Health>>,
    /// Where deployments' health is kept, across reloads.
    store: Arc<dyn HealthStore>,
    /// Where callers' usage is kept, across reloads; and each configured caller's, by name.
    caller_store: Arc<dyn CallerStore>,
    callers: HashMap<String, Arc<dyn CallerState>>,
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
    /// A router whose deployments' health is kept in this process.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Router, String> {
        Self::with_store(config, metrics, Arc::new(LocalStore::new()))
    }

    /// A router whose deployments' health is kept in `store`, and callers' usage in this
    /// process.
    pub fn with_store(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        store: Arc<dyn HealthStore>,
    ) -> Result<Router, String> {
        Self::with_stores(config, metrics, store, Arc::new(LocalCallers::new()))
    }

    /// A router whose deployments' health is kept in `store` and callers' usage in `callers`.
    pub fn with_stores(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        store: Arc<dyn HealthStore>,
        callers: Arc<dyn CallerStore>,
    ) -> Result<Router, String> {
        Self::build(config, metrics, store, callers, None)
    }

    /// The router for a reloaded config, on the same store. Deployments that kept their id and
    /// still point at the same provider, model and base URL keep their state
    /// ([`DeploymentKey`]): a cooling deployment stays cooling.
    pub fn reload(&self, config: Arc<Config>) -> Result<Router, String> {
        Self::build(
            config,
            self.metrics.clone(),
            self.store.clone(),
            self.caller_store.clone(),
            Some(self),
        )
    }

    fn build(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        store: Arc<dyn HealthStore>,
        caller_store: Arc<dyn CallerStore>,
        previous: Option<&Router>,
    ) -> Result<Router, String> {
        let r = &config.router;
        // One pooled client for every deployment: connections are shared per origin, and kept
        // across a reload that leaves the pool's settings alone. It never follows a redirect
        // (no provider redirects an API call, and a followed one would carry the vendor key
        // headers to the new host). The connect timeout is separate from, and much shorter
        // than, any request deadline.
        let http = match previous {
            Some(p) if p.http.built_with(&r.pool, r.connect_timeout) => p.http.clone(),
            _ => Client::new(r.pool, r.connect_timeout, metrics.clone()),
        };
        let budget = config.router.retry_budget;
        let mut states = HashMap::new();
        let mut slots = HashMap::new();
        let mut live = Vec::new();
        for group in config.groups.values() {
            let group_slots: Vec<Slot> = group
                .deployments
                .iter()
                .map(|d| {
                    let key = DeploymentKey::of(d);
                    let health = Arc::new(Health {
                        state: store.deployment(&key, budget),
                        settings: HealthSettings::of(d, group.strategy, &config.router),
                        deployment: d.clone(),
                        metrics: metrics.clone(),
                    });
                    live.push(key);
                    states.insert(d.id.clone(), health.clone());
                    Slot {
                        provider: Provider::new(
                            d,
                            &http,
                            config.router.stream_max_malformed_events,
                        ),
                        health,
                    }
                })
                .collect();
            slots.insert(group.name.clone(), group_slots.into());
        }
        store.retain(&live);
        // Usage counted so far stays with callers that keep their name.
        let auth = &config.auth;
        let policies = auth.callers.iter().chain(&auth.default);
        let callers: HashMap<String, Arc<dyn CallerState>> = policies
            .map(|p| (p.name.to_string(), caller_store.caller(&p.name)))
            .collect();
        caller_store.retain(&callers.keys().map(String::as_str).collect::<Vec<_>>());
        Ok(Router {
            config,
            http,
            slots,
            states,
            store,
            caller_store,
            callers,
            metrics,
        })
    }

    /// The one place a call is held to its caller's policy before any work: the switches it
    /// may use, the group it asks for, and its limits. Admitted, it gets a lease that counts
    /// it in flight until dropped and settles its usage; `None` when its caller has no limits.
    pub fn admit(&self, call: &CallRequest) -> Result<Option<CallerLease>, CallError> {
        let context = &call.context;
        let Some(policy) = &context.policy else {
            return Ok(None);
        };
        context.permit(call)?;
        Reach::new(&self.config, context).requested(&call.model)?;
        let limits = Limits::of(policy);
        let Some(state) = self.callers.get(&*policy.name).filter(|_| limits.any()) else {
            return Ok(None);
        };
        let tokens = crate::providers::estimate_tokens(call.chat.prompt_chars());
        state
            .admit(tokio::time::Instant::now(), &limits, tokens)
            .map_err(|refusal| CallError::CallerLimited {
                caller: context.caller.as_str().to_string(),
                refusal,
            })?;
        Ok(Some(CallerLease::new(state.clone(), tokens, policy.budget)))
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A deployment's shared state, for ListModels and metrics.
    pub fn deployment_state(&self, id: &str) -> Option<&Arc<dyn DeploymentHealth>> {
        self.states.get(id).map(|h| &h.state)
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
