//! ListModels: the routing table as one caller may see it, with each deployment's live state
//! (cooldown, attempts in flight, retry budget), and the aliases of its groups. Upstream
//! topology stays inside.

use tokio::time::Instant;

use crate::proto::{self, ListModelsResponse};
use crate::routing::{self, CallContext, Reach, Router};

/// The groups `context` may use, with their deployments' settings and state.
pub fn list(router: &Router, context: &CallContext) -> ListModelsResponse {
    let config = router.config();
    let now = Instant::now();
    let reach = Reach::new(config, context);
    let groups = reach
        .visible()
        .map(|g| proto::ModelGroup {
            name: g.name.clone(),
            deployments: g
                .deployments
                .iter()
                .map(|d| {
                    let state = router.deployment_state(&d.id);
                    proto::Deployment {
                        id: d.id.clone(),
                        provider: d.provider.name().to_string(),
                        upstream_model: d.upstream_model.clone(),
                        // Upstream topology stays inside: callers see groups and
                        // limits; check-config on the host shows the bases.
                        api_base: String::new(),
                        timeout: Some(routing::to_proto_duration(d.timeout)),
                        stream_timeout: d.stream_timeout.map(routing::to_proto_duration),
                        max_retries: d.max_retries,
                        weight: d.weight,
                        rpm: d.rpm.unwrap_or(0),
                        tpm: d.tpm.unwrap_or(0),
                        max_parallel_requests: d.max_parallel_requests.unwrap_or(0),
                        cooldown_until: state
                            .and_then(|s| s.cooling_until(now))
                            .map(|until| routing::wall_clock(until).into()),
                        in_flight: state.map_or(0, |s| s.in_flight()),
                        retry_budget_tokens: state.and_then(|s| s.budget_tokens()),
                        supports_function_calling: d.capabilities.function_calling,
                        supports_vision: d.capabilities.vision,
                        supports_response_schema: d.capabilities.response_schema,
                        supports_reasoning: d.capabilities.reasoning,
                    }
                })
                .collect(),
            fallbacks: g.fallbacks.clone(),
            context_window_fallbacks: g.context_window_fallbacks.clone(),
            content_policy_fallbacks: g.content_policy_fallbacks.clone(),
            routing_strategy: g.strategy.name().to_string(),
            hedge_after: g.hedge.map(|h| routing::to_proto_duration(h.after)),
            max_hedges: g.hedge.map_or(0, |h| h.max),
        })
        .collect();
    let aliases = reach
        .visible_aliases()
        .map(|(name, group)| proto::ModelAlias {
            name: name.to_string(),
            group: group.name.clone(),
        })
        .collect();
    ListModelsResponse { groups, aliases }
}
