//! The LiteLLM keys llm-router accepts with no effect, each with what that means here: what
//! check-config lists and start-up warns of, so that a LiteLLM config loads as it is and its
//! owner knows what is not carried over.

/// Why keys have no effect, where several share a reason (`params` uses them too).
pub const CHAT_ONLY: &str = "llm-router serves chat completions only";
pub const NO_CACHE: &str = "llm-router has no response cache";
pub const USE_TELEMETRY: &str =
    "logging callbacks: use OpenTelemetry traces (telemetry.otlp_endpoint) and /metrics";
pub const NO_BUDGETS: &str =
    "llm-router keeps no spend budgets; the cost of each call is in llmrouter_cost_usd_total";
pub const USE_LOG_LEVEL: &str = "use telemetry.log_level";
pub const NO_TAGS: &str = "llm-router has no tag-based routing";

/// LiteLLM keys that llm-router accepts for compatibility and ignores, each with what that
/// means here. A `*` segment matches any key or list index; a pattern matches its sub-keys.
pub const IGNORED_LITELLM_KEYS: &[(&str, &str)] = &[
    (
        "litellm_settings.drop_params",
        "llm-router sends each provider only the fields of its wire format, and a litellm_params key as given",
    ),
    ("litellm_settings.cache", NO_CACHE),
    ("litellm_settings.cache_params", NO_CACHE),
    ("litellm_settings.success_callback", USE_TELEMETRY),
    ("litellm_settings.failure_callback", USE_TELEMETRY),
    ("litellm_settings.callbacks", USE_TELEMETRY),
    ("litellm_settings.max_budget", NO_BUDGETS),
    ("litellm_settings.budget_duration", NO_BUDGETS),
    (
        "litellm_settings",
        "a LiteLLM module setting with no routing meaning",
    ),
    (
        "general_settings",
        "the LiteLLM proxy's server settings (master_key, database, alerting): llm-router has no database; callers, their keys and limits are in `callers:` and `auth:`",
    ),
    (
        "environment_variables",
        "set variables in the process environment (the chart's env); os.environ/NAME reads them",
    ),
    ("include", "llm-router reads one config file"),
    (
        "credential_list",
        "named credentials are not supported: give each deployment its api_key (os.environ/NAME works)",
    ),
    ("guardrails", "llm-router has no guardrails"),
    ("mcp_servers", CHAT_ONLY),
    ("vector_store_registry", CHAT_ONLY),
    ("files_settings", CHAT_ONLY),
    ("finetune_settings", CHAT_ONLY),
    ("assistant_settings", CHAT_ONLY),
    ("callback_settings", USE_TELEMETRY),
    ("model_list.*.model_info", "informational only"),
    (
        "router_settings.optional_pre_call_checks",
        "only enable_pre_call_checks (context windows) is supported",
    ),
    ("router_settings.cache_responses", NO_CACHE),
    ("router_settings.cache_kwargs", NO_CACHE),
    ("router_settings.caching_groups", NO_CACHE),
    (
        "router_settings.client_ttl",
        "provider connections are pooled per host for the process's life",
    ),
    (
        "router_settings.polling_interval",
        "llm-router never polls: calls end at their deadline",
    ),
    (
        "router_settings.default_priority",
        "llm-router has no request queue to prioritise",
    ),
    (
        "router_settings.default_litellm_params",
        "give each deployment its litellm_params",
    ),
    ("router_settings.set_verbose", USE_LOG_LEVEL),
    ("router_settings.debug_level", USE_LOG_LEVEL),
    ("router_settings.enable_tag_filtering", NO_TAGS),
    ("router_settings.tag_filtering_match_any", NO_TAGS),
    ("router_settings.provider_budget_config", NO_BUDGETS),
    (
        "router_settings.alerting_config",
        "alert on the /metrics series instead",
    ),
    (
        "router_settings.router_general_settings",
        "a LiteLLM Router setting with no counterpart here",
    ),
    (
        "router_settings.ignore_invalid_deployments",
        "an invalid deployment is an error here (a request-signing one beside others is skipped)",
    ),
    ("router_settings.assistants_config", CHAT_ONLY),
    ("router_settings.search_tools", CHAT_ONLY),
    (
        "router_settings.guardrail_list",
        "llm-router has no guardrails",
    ),
];

/// A key accepted for compatibility with no effect, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredKey {
    pub key: String,
    pub why: String,
}

/// Why `key` (in `a[0].b` form) has no effect, when it is on the LiteLLM compatibility list.
pub(super) fn why_ignored(key: &str) -> Option<&'static str> {
    let segs: Vec<&str> = key
        .split(['.', '['])
        .map(|s| s.trim_end_matches(']'))
        .filter(|s| !s.is_empty())
        .collect();
    IGNORED_LITELLM_KEYS
        .iter()
        .find(|(pattern, _)| {
            let pat: Vec<&str> = pattern.split('.').collect();
            segs.len() >= pat.len() && pat.iter().zip(&segs).all(|(p, s)| *p == "*" || p == s)
        })
        .map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litellm_compat_list_matches_by_pattern() {
        assert!(why_ignored("litellm_settings.set_verbose").is_some());
        assert!(
            why_ignored("litellm_settings.drop_params")
                .is_some_and(|why| why.contains("wire format"))
        );
        assert!(why_ignored("model_list[3].litellm_params.rpm").is_none());
        assert!(why_ignored("model_list[0].model_info.mode").is_some());
        assert!(why_ignored("model_list[0].litellm_params.timeot").is_none());
        assert!(why_ignored("router_settings.timeot").is_none());
    }
}
