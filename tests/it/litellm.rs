//! LiteLLM configs load and mean what they mean in LiteLLM: `litellm_settings` and its
//! precedence under `router_settings`, the per-attempt `request_timeout`, retry policies,
//! transitive fallbacks, aliases, pre-call checks, provider prefixes and bare model names,
//! provider parameters sent as given, and the cost of a call. Config tests check the derived
//! routing table key by key; the rest run the real server against an upstream that counts.

use std::time::{Duration, Instant};

use crate::common::upstream::{Behaviour, Upstream};
use crate::common::*;
use llm_router::config::{Config, ConfigError, CooldownRule, FailKind, Source};
use llm_router::proto::AttemptOutcome;
use tonic::Code;

fn load(yaml: &str) -> Config {
    load_env(yaml, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn load_env(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_with_env(Source::Yaml(yaml), Vec::new(), |k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
}

fn errors(yaml: &str) -> Vec<(String, String)> {
    match load_env(yaml, &[]) {
        Err(ConfigError::Invalid(e)) => e.into_iter().map(|e| (e.key, e.message)).collect(),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("expected the config to be rejected"),
    }
}

fn fallbacks(cfg: &Config, group: &str) -> Vec<String> {
    cfg.group(group).unwrap().fallbacks.clone()
}

const TWO_GROUPS: &str = r#"
model_list:
  - model_name: a
    litellm_params: { model: mock/a }
  - model_name: b
    litellm_params: { model: mock/b }
"#;

#[test]
fn litellm_settings_are_the_defaults_under_router_settings() {
    let cfg = load(&format!(
        "{TWO_GROUPS}litellm_settings:\n  request_timeout: 10\n  num_retries: 4\n  fallbacks: [{{a: [b]}}]\n  allowed_fails: 7\n  cooldown_time: 9\n"
    ));
    let a = &cfg.group("a").unwrap().deployments[0];
    assert_eq!(
        a.timeout,
        Duration::from_secs(10),
        "request_timeout is per attempt"
    );
    assert_eq!(
        cfg.router.timeout,
        Duration::from_secs(600),
        "the whole call keeps its bound"
    );
    assert_eq!(a.max_retries, 4);
    assert_eq!(fallbacks(&cfg, "a"), ["b"]);
    assert_eq!(cfg.router.cooldowns.allowed_fails, 7);
    assert_eq!(cfg.router.cooldowns.rule, CooldownRule::FailureCount);
    assert_eq!(cfg.router.cooldowns.cooldown_time, Duration::from_secs(9));

    // router_settings wins key by key (LiteLLM: `router_setting or litellm.setting`), and
    // litellm_params.timeout wins over request_timeout.
    let cfg = load(
        &format!(
            "{TWO_GROUPS}router_settings:\n  num_retries: 1\n  fallbacks: [{{b: [a]}}]\n  timeout: 30s\nlitellm_settings:\n  request_timeout: 10\n  num_retries: 4\n  fallbacks: [{{a: [b]}}]\n"
        )
        .replace("model: mock/b }", "model: mock/b, timeout: 3s }"),
    );
    assert_eq!(cfg.group("a").unwrap().deployments[0].max_retries, 1);
    assert_eq!(
        fallbacks(&cfg, "a"),
        Vec::<String>::new(),
        "the lists are not merged"
    );
    assert_eq!(fallbacks(&cfg, "b"), ["a"]);
    assert_eq!(
        cfg.group("a").unwrap().deployments[0].timeout,
        Duration::from_secs(10)
    );
    assert_eq!(
        cfg.group("b").unwrap().deployments[0].timeout,
        Duration::from_secs(3)
    );

    // A bad name in a litellm_settings list is reported at its own key.
    let errs = errors(&format!(
        "{TWO_GROUPS}litellm_settings:\n  default_fallbacks: [nope]\n  context_window_fallbacks: [{{a: [gone]}}]\n"
    ));
    let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "litellm_settings.context_window_fallbacks[0].a[0]",
            "litellm_settings.default_fallbacks[0]"
        ]
    );
    // Its other keys are listed as having no effect, with why.
    let cfg = load(&format!(
        "{TWO_GROUPS}litellm_settings:\n  drop_params: true\n  success_callback: [langfuse]\n"
    ));
    let why = |key: &str| {
        cfg.ignored_keys
            .iter()
            .find(|k| k.key == key)
            .map(|k| k.why.clone())
            .unwrap_or_else(|| panic!("{key} not listed: {:?}", cfg.ignored_keys))
    };
    assert!(why("litellm_settings.success_callback").contains("OpenTelemetry"));
    assert!(why("litellm_settings.drop_params").contains("wire format"));
    // The proxy's other top-level sections load too.
    let cfg = load(&format!(
        "{TWO_GROUPS}guardrails:\n  - guardrail_name: pii\nmcp_servers:\n  fs: {{ url: x }}\ncredential_list:\n  - credential_name: azure\n"
    ));
    let keys: Vec<&str> = cfg.ignored_keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["credential_list", "guardrails", "mcp_servers"]);
}

#[test]
fn a_global_timeout_alone_is_warned_about_and_request_timeout_silences_it() {
    let yaml = format!("{TWO_GROUPS}router_settings:\n  timeout: 30s\n  fallbacks: [{{a: [b]}}]\n");
    let cfg = load(&yaml);
    let warning = cfg
        .warnings
        .iter()
        .find(|w| w.starts_with("model group `a`"))
        .unwrap_or_else(|| panic!("{:?}", cfg.warnings));
    assert!(
        warning.contains("leaves no time for its retries or fallbacks"),
        "{warning}"
    );
    assert!(
        warning.contains("litellm_settings.request_timeout"),
        "{warning}"
    );
    assert!(cfg.routing_table().contains(warning.as_str()));

    let cfg = load(&format!(
        "{yaml}litellm_settings:\n  request_timeout: 10s\n"
    ));
    assert!(
        !cfg.warnings.iter().any(|w| w.contains("no time")),
        "{:?}",
        cfg.warnings
    );
    // Nor is it said of a group with no retries and no fallbacks.
    let cfg = load(&format!(
        "{TWO_GROUPS}router_settings:\n  timeout: 30s\n  num_retries: 0\n"
    ));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn retry_policies_set_retries_per_kind_of_failure() {
    let cfg = load(&format!(
        "{TWO_GROUPS}router_settings:\n  retry_policy: {{ TimeoutErrorRetries: 0, RateLimitErrorRetries: 5, BadRequestErrorRetries: 1 }}\n  model_group_retry_policy:\n    b: {{ InternalServerErrorRetries: 3 }}\n"
    ));
    let a = cfg.group("a").unwrap().retry_policy;
    assert_eq!(a.retries(FailKind::Timeout), Some(0));
    assert_eq!(a.retries(FailKind::RateLimit), Some(5));
    assert_eq!(a.retries(FailKind::InternalServer), None);
    // A bad request is never retried here: the key is warned about, and has no effect.
    assert_eq!(a.retries(FailKind::BadRequest), None);
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("retry_policy.BadRequestErrorRetries")),
        "{:?}",
        cfg.warnings
    );
    // A group's own policy replaces the router's.
    let b = cfg.group("b").unwrap().retry_policy;
    assert_eq!(b.retries(FailKind::InternalServer), Some(3));
    assert_eq!(b.retries(FailKind::Timeout), None);

    let errs = errors(&format!(
        "{TWO_GROUPS}router_settings:\n  model_group_retry_policy:\n    c: {{ TimeoutErrorRetries: 1 }}\n  retry_policy: {{ TimeoutErrorRetries: 50 }}\n"
    ));
    let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "router_settings.retry_policy.TimeoutErrorRetries",
            "router_settings.model_group_retry_policy.c"
        ]
    );
}

#[test]
fn deployment_num_retries_is_read_as_max_retries() {
    let cfg = load(&TWO_GROUPS.replace("model: mock/a }", "model: mock/a, num_retries: 5 }"));
    assert_eq!(cfg.group("a").unwrap().deployments[0].max_retries, 5);
    let cfg = load(&TWO_GROUPS.replace(
        "model: mock/a }",
        "model: mock/a, num_retries: 5, max_retries: 1 }",
    ));
    assert_eq!(cfg.group("a").unwrap().deployments[0].max_retries, 1);
}

const FOUR_GROUPS: &str = r#"
model_list:
  - model_name: a
    litellm_params: { model: mock/a }
  - model_name: b
    litellm_params: { model: mock/b }
  - model_name: c
    litellm_params: { model: mock/c }
  - model_name: d
    litellm_params: { model: mock/d }
"#;

#[test]
fn fallbacks_are_followed_transitively_once_each_up_to_max_fallbacks() {
    let cfg = load(&format!(
        "{FOUR_GROUPS}router_settings:\n  fallbacks: [{{a: [b, d]}}, {{b: [c, a]}}, {{c: [b]}}]\n"
    ));
    // a's chain: b, then b's own (c, and c's own b is already there), then d.
    assert_eq!(fallbacks(&cfg, "a"), ["b", "c", "d"]);
    assert_eq!(fallbacks(&cfg, "c"), ["b", "a", "d"]);
    assert_eq!(fallbacks(&cfg, "d"), Vec::<String>::new());

    let cfg = load(&format!(
        "{FOUR_GROUPS}router_settings:\n  max_fallbacks: 2\n  fallbacks: [{{a: [b, d]}}, {{b: [c]}}]\n"
    ));
    assert_eq!(fallbacks(&cfg, "a"), ["b", "c"]);
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("model group `a`") && w.contains("cut after `c`")),
        "{:?}",
        cfg.warnings
    );

    // default_fallbacks serve every group without its own entry, along the chain too.
    let cfg = load(&format!(
        "{FOUR_GROUPS}router_settings:\n  fallbacks: [{{a: [b]}}]\n  default_fallbacks: [d]\n"
    ));
    assert_eq!(fallbacks(&cfg, "a"), ["b", "d"]);
    assert_eq!(fallbacks(&cfg, "c"), ["d"]);
    assert_eq!(fallbacks(&cfg, "d"), Vec::<String>::new());
}

#[test]
fn aliases_name_groups_and_are_checked() {
    let cfg = load(&format!(
        "{TWO_GROUPS}router_settings:\n  model_group_alias: {{ gpt-4: a, claude: {{ model: b, hidden: true }} }}\n"
    ));
    assert_eq!(cfg.group("gpt-4").unwrap().name, "a");
    assert_eq!(cfg.group("claude").unwrap().name, "b");
    let errs = errors(&format!(
        "{TWO_GROUPS}router_settings:\n  model_group_alias: {{ a: b, x: nowhere }}\n"
    ));
    assert_eq!(errs[0].0, "router_settings.model_group_alias.a");
    assert!(errs[0].1.contains("own name"));
    assert_eq!(errs[1].0, "router_settings.model_group_alias.x");
}

#[test]
fn provider_prefixes_and_bare_names_resolve_as_litellm_infers_them() {
    let yaml = r#"
model_list:
  - model_name: or
    litellm_params: { model: openrouter/anthropic/claude-3.5-sonnet, api_key: k }
  - model_name: local
    litellm_params: { model: ollama_chat/llama3.1, api_base: "http://ollama:11434" }
  - model_name: x
    litellm_params: { model: xai/grok-2, api_key: k }
  - model_name: p
    litellm_params: { model: perplexity/sonar, api_key: k }
  - model_name: m
    litellm_params: { model: moonshot/kimi-k2, api_key: k }
  - model_name: custom
    litellm_params: { model: custom_openai/my-model, api_base: "http://10.0.0.1:8000/v1" }
  - model_name: bare
    litellm_params: { model: gpt-4o, api_key: k }
  - model_name: bare-claude
    litellm_params: { model: claude-3-5-sonnet-20241022, api_key: k }
"#;
    let cfg = load(yaml);
    let dep = |g: &str| cfg.group(g).unwrap().deployments[0].clone();
    let base = |g: &str| dep(g).provider.api_base().to_string();
    assert_eq!(base("or"), "https://openrouter.ai/api/v1");
    assert_eq!(dep("or").upstream_model, "anthropic/claude-3.5-sonnet");
    assert_eq!(
        base("local"),
        "http://ollama:11434/v1",
        "Ollama's bare host gets /v1"
    );
    assert_eq!(base("x"), "https://api.x.ai/v1");
    assert_eq!(base("p"), "https://api.perplexity.ai");
    assert_eq!(base("m"), "https://api.moonshot.ai/v1");
    assert_eq!(base("custom"), "http://10.0.0.1:8000/v1");
    assert_eq!(dep("bare").provider.name(), "openai");
    assert_eq!(dep("bare").upstream_model, "gpt-4o");
    assert_eq!(dep("bare-claude").provider.name(), "anthropic");

    // Keys come from each provider's variable at its own host.
    let cfg = load_env(
        "model_list:\n  - model_name: or\n    litellm_params: { model: openrouter/meta-llama/llama-3-70b }\n",
        &[("OPENROUTER_API_KEY", "or-key")],
    )
    .unwrap();
    assert!(cfg.routing_table().contains("key set"));
    let errs = errors(
        "model_list:\n  - model_name: or\n    litellm_params: { model: openrouter/meta-llama/llama-3-70b }\n",
    );
    assert!(errs[0].1.contains("OPENROUTER_API_KEY"), "{errs:?}");
}

#[test]
fn request_signing_providers_are_refused_or_skipped_beside_others() {
    let errs = errors(
        "model_list:\n  - model_name: claude\n    litellm_params: { model: bedrock/anthropic.claude-3-sonnet, aws_region_name: us-east-1 }\n",
    );
    assert_eq!(errs[0].0, "model_list[0].litellm_params.model");
    assert!(errs[0].1.contains("request signing"), "{}", errs[0].1);
    // A bare gemini- name is Vertex AI's in LiteLLM.
    let errs =
        errors("model_list:\n  - model_name: g\n    litellm_params: { model: gemini-1.5-pro }\n");
    assert!(errs[0].1.contains("vertex_ai"), "{}", errs[0].1);

    let cfg = load(
        r#"
model_list:
  - model_name: claude
    litellm_params: { model: vertex_ai/claude-3-5-sonnet, vertex_project: p }
  - model_name: claude
    litellm_params: { model: mock/claude }
"#,
    );
    assert_eq!(cfg.group("claude").unwrap().deployments.len(), 1);
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("model_list[0].litellm_params.model") && w.contains("skipped")),
        "{:?}",
        cfg.warnings
    );
    let errs =
        errors("model_list:\n  - model_name: c\n    litellm_params: { model: cohere/command-r }\n");
    assert!(errs[0].1.contains("unknown provider `cohere`"), "{errs:?}");
}

#[test]
fn rpm_and_tpm_cap_attempts_in_flight_when_max_parallel_requests_is_unset() {
    let cfg = load(
        r#"
model_list:
  - model_name: a
    litellm_params: { model: mock/a, rpm: 30 }
  - model_name: a
    litellm_params: { model: mock/b, tpm: 120000 }
  - model_name: a
    litellm_params: { model: mock/c, rpm: 30, max_parallel_requests: 4 }
  - model_name: a
    litellm_params: { model: mock/d, tpm: 100 }
"#,
    );
    let caps: Vec<Option<u32>> = cfg
        .group("a")
        .unwrap()
        .deployments
        .iter()
        .map(|d| d.max_parallel_requests)
        .collect();
    assert_eq!(caps, [Some(30), Some(20), Some(4), Some(1)]);
}

#[test]
fn pre_call_checks_and_prices_are_read_from_model_info() {
    let cfg = load(
        r#"
model_list:
  - model_name: a
    litellm_params: { model: mock/a, input_cost_per_token: 0.000002 }
    model_info: { max_input_tokens: 8192, output_cost_per_token: 0.000008 }
router_settings:
  enable_pre_call_checks: true
"#,
    );
    let d = &cfg.group("a").unwrap().deployments[0];
    assert_eq!(d.max_input_tokens, Some(8192));
    let cost = d.cost.unwrap();
    assert!((cost.of(1000, 100) - 0.0028).abs() < 1e-12);
    assert!(cfg.router.pre_call_checks);
    let errs = errors(
        "model_list:\n  - model_name: a\n    litellm_params: { model: mock/a }\n    model_info: { input_cost_per_token: -1 }\n",
    );
    assert_eq!(errs[0].0, "model_list[0].model_info.input_cost_per_token");
}

#[test]
fn cooldowns_follow_litellms_rule_unless_allowed_fails_is_set() {
    let cfg = load(TWO_GROUPS);
    assert_eq!(cfg.router.cooldowns.rule, CooldownRule::FailureRate);
    assert!(cfg.group("a").unwrap().deployments[0].alone_in_group);
    let cfg = load(&format!(
        "{TWO_GROUPS}router_settings:\n  allowed_fails_policy: {{ TimeoutErrorAllowedFails: 2 }}\n"
    ));
    assert_eq!(cfg.router.cooldowns.rule, CooldownRule::FailureCount);
}

#[test]
fn check_config_prints_the_differences_from_litellm() {
    let cfg = load(&format!(
        "{TWO_GROUPS}router_settings:\n  timeout: 30s\n  fallbacks: [{{a: [b]}}]\n"
    ));
    let table = cfg.routing_table();
    assert!(
        table.contains("differences from LiteLLM in this config:"),
        "{table}"
    );
    assert!(
        table.contains("router_settings.timeout (30s) bounds the whole call"),
        "{table}"
    );
    assert!(
        table.contains("a content-policy refusal in `a` ends the call"),
        "{table}"
    );
    assert!(table.contains("skipped, not waited for"), "{table}");
}

/// A dozen LiteLLM configs in the styles found in the wild: each loads, and derives the
/// routing LiteLLM would, key by key.
#[test]
fn a_corpus_of_litellm_configs_loads_and_means_the_same() {
    let env = [
        ("AZURE_API_BASE", "https://eastus.openai.azure.com"),
        ("AZURE_API_KEY", "az"),
        ("AZURE_API_VERSION", "2024-08-01-preview"),
        ("AZURE_WEST_BASE", "https://westus.openai.azure.com"),
        ("OPENAI_API_KEY", "sk"),
        ("ANTHROPIC_API_KEY", "sk-ant"),
        ("OPENROUTER_API_KEY", "or"),
        ("GROQ_API_KEY", "gsk"),
        ("GEMINI_API_KEY", "g"),
    ];
    let load = |yaml: &str| load_env(yaml, &env).unwrap_or_else(|e| panic!("{e}\n{yaml}"));

    // 1. Azure regions behind one name, bases from the environment, litellm_settings timeout.
    let cfg = load(
        r#"
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-east
      api_base: os.environ/AZURE_API_BASE
      api_key: os.environ/AZURE_API_KEY
      api_version: os.environ/AZURE_API_VERSION
      rpm: 900
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-west
      api_base: os.environ/AZURE_WEST_BASE
      api_key: os.environ/AZURE_API_KEY
      rpm: 300
litellm_settings:
  drop_params: true
  request_timeout: 45
  num_retries: 3
"#,
    );
    let g = cfg.group("gpt-4o").unwrap();
    assert_eq!(
        g.deployments[0].provider.api_base(),
        "https://eastus.openai.azure.com"
    );
    assert_eq!(
        g.deployments[1].provider.api_base(),
        "https://westus.openai.azure.com"
    );
    assert_eq!(g.deployments[0].timeout, Duration::from_secs(45));
    assert_eq!(g.deployments[0].max_retries, 3);
    assert_eq!(
        (g.deployments[0].weight, g.deployments[1].weight),
        (900, 300)
    );
    assert_eq!(g.deployments[0].max_parallel_requests, Some(900));

    // 2. Ollama and OpenRouter mixed, with provider params LiteLLM passes on.
    let cfg = load(
        r#"
model_list:
  - model_name: llama
    litellm_params: { model: ollama_chat/llama3.1, api_base: "http://localhost:11434", num_ctx: 8192, keep_alive: 5m }
  - model_name: llama
    litellm_params: { model: openrouter/meta-llama/llama-3.1-70b-instruct, extra_body: { provider: { order: [groq] } } }
router_settings:
  routing_strategy: least-busy
"#,
    );
    let g = cfg.group("llama").unwrap();
    assert_eq!(
        g.deployments[0].provider.api_base(),
        "http://localhost:11434/v1"
    );
    assert_eq!(g.strategy.name(), "least-busy");
    assert!(cfg.ignored_keys.is_empty(), "{:?}", cfg.ignored_keys);

    // 3. Fallbacks only under litellm_settings, with context-window fallbacks.
    let cfg = load(
        r#"
model_list:
  - model_name: gpt-4o-mini
    litellm_params: { model: openai/gpt-4o-mini }
  - model_name: claude-haiku
    litellm_params: { model: anthropic/claude-3-5-haiku-latest }
  - model_name: gemini-flash
    litellm_params: { model: gemini/gemini-2.0-flash }
litellm_settings:
  fallbacks: [{"gpt-4o-mini": ["claude-haiku"]}, {"claude-haiku": ["gemini-flash"]}]
  context_window_fallbacks: [{"gpt-4o-mini": ["gemini-flash"]}]
  request_timeout: 20
"#,
    );
    assert_eq!(
        fallbacks(&cfg, "gpt-4o-mini"),
        ["claude-haiku", "gemini-flash"]
    );
    assert_eq!(
        cfg.group("gpt-4o-mini").unwrap().context_window_fallbacks,
        ["gemini-flash"]
    );
    assert!(
        !cfg.warnings.iter().any(|w| w.contains("no time")),
        "{:?}",
        cfg.warnings
    );

    // 4. retry_policy and allowed_fails_policy, LiteLLM's docs' example.
    let cfg = load(
        r#"
model_list:
  - model_name: gpt-3.5-turbo
    litellm_params: { model: azure/chatgpt-v-2, api_key: os.environ/AZURE_API_KEY }
router_settings:
  retry_policy: { AuthenticationErrorRetries: 0, TimeoutErrorRetries: 2, RateLimitErrorRetries: 3, ContentPolicyViolationErrorRetries: 0, InternalServerErrorRetries: 1 }
  allowed_fails_policy: { RateLimitErrorAllowedFails: 100, ContentPolicyViolationErrorAllowedFails: 1000 }
"#,
    );
    let p = cfg.group("gpt-3.5-turbo").unwrap().retry_policy;
    assert_eq!(
        (
            p.retries(FailKind::Timeout),
            p.retries(FailKind::RateLimit),
            p.retries(FailKind::InternalServer)
        ),
        (Some(2), Some(3), Some(1))
    );
    assert_eq!(cfg.router.cooldowns.allowed(FailKind::RateLimit), Some(100));
    assert_eq!(cfg.router.cooldowns.rule, CooldownRule::FailureCount);

    // 5. Aliases for old names.
    let cfg = load(
        r#"
model_list:
  - model_name: gpt-4o
    litellm_params: { model: gpt-4o }
router_settings:
  model_group_alias: { "gpt-4": "gpt-4o", "gpt-4-turbo": { model: "gpt-4o", hidden: true } }
"#,
    );
    assert_eq!(cfg.group("gpt-4-turbo").unwrap().name, "gpt-4o");
    assert_eq!(
        cfg.group("gpt-4o").unwrap().deployments[0].provider.name(),
        "openai"
    );

    // 6. A proxy config with general_settings and budgets.
    let cfg = load(
        r#"
model_list:
  - model_name: claude
    litellm_params: { model: anthropic/claude-sonnet-4-5, max_budget: 100, budget_duration: 30d, thinking: { type: enabled, budget_tokens: 2048 } }
general_settings:
  master_key: sk-1234
  database_url: postgres://x
litellm_settings:
  success_callback: [langfuse]
  cache: true
"#,
    );
    let ignored: Vec<&str> = cfg.ignored_keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(
        ignored,
        [
            "general_settings",
            "litellm_settings.cache",
            "litellm_settings.success_callback",
            "model_list[0].litellm_params.budget_duration",
            "model_list[0].litellm_params.max_budget",
        ]
    );
    assert!(!cfg.routing_table().contains("sk-1234"));

    // 7. default_fallbacks and max_fallbacks under router_settings.
    let cfg = load(
        r#"
model_list:
  - model_name: a
    litellm_params: { model: groq/llama-3.1-8b-instant }
  - model_name: b
    litellm_params: { model: gpt-4o-mini }
  - model_name: c
    litellm_params: { model: claude-3-5-haiku-latest }
router_settings:
  default_fallbacks: [b, c]
  max_fallbacks: 1
"#,
    );
    assert_eq!(fallbacks(&cfg, "a"), ["b"]);
    assert_eq!(fallbacks(&cfg, "b"), ["c"]);

    // 8. Per-deployment timeouts and stream timeouts, LiteLLM's seconds.
    let cfg = load(
        r#"
model_list:
  - model_name: fast
    litellm_params: { model: openai/gpt-4o-mini, timeout: 5, stream_timeout: 1.5, max_retries: 1 }
router_settings:
  timeout: 30
  num_retries: 2
"#,
    );
    let d = &cfg.group("fast").unwrap().deployments[0];
    assert_eq!(
        (d.timeout, d.stream_timeout, d.max_retries),
        (Duration::from_secs(5), Some(Duration::from_millis(1500)), 1)
    );

    // 9. usage-based routing v2 with tpm/rpm and Redis keys.
    let cfg = load(
        r#"
model_list:
  - model_name: gpt
    litellm_params: { model: openai/gpt-4o, tpm: 600000, rpm: 1000 }
router_settings:
  routing_strategy: usage-based-routing-v2
  redis_host: redis
  redis_port: 6379
  enable_pre_call_checks: true
"#,
    );
    assert_eq!(
        cfg.group("gpt").unwrap().strategy.name(),
        "usage-based-routing"
    );
    assert!(cfg.router.pre_call_checks);
    // LiteLLM's Redis keys mean what they mean there: usage is shared through Redis.
    let shared = cfg.shared_state.as_ref().expect("redis_host shares state");
    assert_eq!(shared.shown, "redis://redis:6379/0");
    assert!(cfg.ignored_keys.iter().all(|k| !k.key.contains("redis")));

    // 10. Content-policy fallbacks and cooldown settings.
    let cfg = load(
        r#"
model_list:
  - model_name: gpt
    litellm_params: { model: azure/gpt-4o, api_key: os.environ/AZURE_API_KEY }
  - model_name: claude
    litellm_params: { model: anthropic/claude-3-5-sonnet-latest }
router_settings:
  content_policy_fallbacks: [{gpt: [claude]}]
  cooldown_time: 30
  allowed_fails: 1
"#,
    );
    assert_eq!(
        cfg.group("gpt").unwrap().content_policy_fallbacks,
        ["claude"]
    );
    assert_eq!(cfg.router.cooldowns.cooldown_time, Duration::from_secs(30));

    // 11. reasoning_effort and stop given to a Gemini deployment.
    let cfg = load(
        r#"
model_list:
  - model_name: gemini
    litellm_params: { model: gemini/gemini-2.5-flash, reasoning_effort: low, stop: ["END"], top_k: 40 }
"#,
    );
    assert!(cfg.ignored_keys.is_empty(), "{:?}", cfg.ignored_keys);

    // 12. A mock_response deployment (LiteLLM's test trick) loads; the key has no effect.
    let cfg = load(
        r#"
model_list:
  - model_name: fake
    litellm_params: { model: openai/fake, api_key: fake-key, api_base: "https://exampleopenaiendpoint-production.up.railway.app/", mock_response: hi }
"#,
    );
    assert!(
        cfg.ignored_keys
            .iter()
            .any(|k| k.key == "model_list[0].litellm_params.mock_response")
    );
}

/// The integration the issue asks for: only `litellm_settings.request_timeout` limits attempts,
/// and a primary that hangs leaves time for the fallback, which answers.
#[tokio::test]
async fn request_timeout_alone_leaves_time_for_the_fallback_when_the_primary_hangs() {
    let up = Upstream::start().await;
    up.set("primary", Behaviour::Hang);
    up.set("backup", Behaviour::ok("from the backup"));
    let base = up.base();
    let r = TestRouter::start(&format!(
        r#"
model_list:
  - model_name: primary
    litellm_params: {{ model: openai/primary, api_base: "{base}", api_key: k }}
  - model_name: backup
    litellm_params: {{ model: openai/backup, api_base: "{base}", api_key: k }}
router_settings:
  timeout: 20
litellm_settings:
  request_timeout: 0.5
  num_retries: 0
  fallbacks: [{{primary: [backup]}}]
"#
    ))
    .await;
    let start = Instant::now();
    let resp = r
        .client()
        .complete(complete("primary"))
        .await
        .unwrap()
        .into_inner();
    assert_between(start.elapsed(), ms(450), ms(3000));
    assert_eq!(resp.model, "backup");
    assert_eq!(resp.message.unwrap().content, "from the backup");
    assert_eq!(
        outcomes(&resp.attempts),
        [
            ("primary/0".to_string(), AttemptOutcome::Timeout),
            ("backup/0".to_string(), AttemptOutcome::Ok)
        ]
    );
}

#[tokio::test]
async fn a_retry_policy_of_zero_timeouts_falls_back_at_once() {
    let up = Upstream::start().await;
    up.set("primary", Behaviour::Hang);
    up.set("backup", Behaviour::ok("ok"));
    let base = up.base();
    let r = TestRouter::start(&format!(
        r#"
model_list:
  - model_name: primary
    litellm_params: {{ model: openai/primary, api_base: "{base}", api_key: k, timeout: 300ms, max_retries: 3 }}
  - model_name: backup
    litellm_params: {{ model: openai/backup, api_base: "{base}", api_key: k }}
router_settings:
  retry_policy: {{ TimeoutErrorRetries: 0 }}
  fallbacks: [{{primary: [backup]}}]
"#
    ))
    .await;
    let resp = r
        .client()
        .complete(complete("primary"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "backup");
    assert_eq!(up.counts("primary").requests, 1, "no retry of a timeout");

    // Without the policy, the same config retries the silent primary three times first.
    let r = TestRouter::start(&format!(
        r#"
model_list:
  - model_name: primary
    litellm_params: {{ model: openai/primary2, api_base: "{base}", api_key: k, timeout: 200ms, max_retries: 3 }}
  - model_name: backup
    litellm_params: {{ model: openai/backup, api_base: "{base}", api_key: k }}
router_settings:
  retry_backoff_initial: 10ms
  retry_backoff_max: 20ms
  fallbacks: [{{primary: [backup]}}]
"#
    ))
    .await;
    up.set("primary2", Behaviour::Hang);
    let resp = r
        .client()
        .complete(complete("primary"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "backup");
    assert_eq!(up.counts("primary2").requests, 4);
}

#[tokio::test]
async fn aliases_route_and_pre_call_checks_skip_small_windows_without_sending() {
    let up = Upstream::start().await;
    up.set("small", Behaviour::ok("small"));
    up.set("large", Behaviour::ok("large"));
    let base = up.base();
    let r = TestRouter::start(&format!(
        r#"
model_list:
  - model_name: chat
    litellm_params: {{ model: openai/small, api_base: "{base}", api_key: k }}
    model_info: {{ id: small, max_input_tokens: 100 }}
  - model_name: long
    litellm_params: {{ model: openai/large, api_base: "{base}", api_key: k }}
    model_info: {{ id: large, max_input_tokens: 100000 }}
router_settings:
  enable_pre_call_checks: true
  model_group_alias: {{ gpt-4: chat }}
  context_window_fallbacks: [{{chat: [long]}}]
"#
    ))
    .await;
    // A short prompt, through the alias: the small model answers.
    let resp = r
        .client()
        .complete(complete("gpt-4"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (resp.model.as_str(), resp.deployment.as_str()),
        ("chat", "small")
    );

    // A prompt of about 1000 tokens: the small model is skipped, never sent, and the
    // context-window fallback answers.
    let mut req = complete("gpt-4");
    req.messages = user(&"word ".repeat(800));
    let resp = r.client().complete(req).await.unwrap().into_inner();
    assert_eq!(resp.deployment, "large");
    assert_eq!(
        outcomes(&resp.attempts),
        [
            ("small".to_string(), AttemptOutcome::PromptTooLong),
            ("large".to_string(), AttemptOutcome::Ok)
        ]
    );
    assert!(
        resp.attempts[0].detail.contains("max_input_tokens (100)"),
        "{}",
        resp.attempts[0].detail
    );
    assert_eq!(
        up.counts("small").requests,
        1,
        "only the short prompt reached it"
    );

    // With nowhere to go, the caller hears it is the context window.
    let mut req = complete("long");
    req.messages = user(&"word ".repeat(100_000));
    let status = r.client().complete(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "CONTEXT_WINDOW_EXCEEDED");
    assert_eq!(up.counts("large").requests, 1);
}

#[tokio::test]
async fn provider_params_are_sent_as_each_wire_format_names_them_and_the_request_wins() {
    let up = Upstream::start().await;
    up.set("gpt", Behaviour::fixture(200, "openai/completion.json"));
    up.set("claude", Behaviour::fixture(200, "anthropic/message.json"));
    let base = up.base();
    let root = base.trim_end_matches("/v1");
    let r = TestRouter::start(&format!(
        r#"
model_list:
  - model_name: gpt
    litellm_params: {{ model: openai/gpt, api_base: "{base}", api_key: k, reasoning_effort: low, temperature: 0.1, extra_body: {{ top_k: 3 }}, max_budget: 10 }}
  - model_name: claude
    litellm_params: {{ model: anthropic/claude, api_base: "{root}", api_key: k, stop: END, reasoning_effort: high }}
"#
    ))
    .await;
    let mut req = complete("gpt");
    req.temperature = Some(0.7);
    r.client().complete(req).await.unwrap();
    let body = up.counts("gpt").last_body.unwrap();
    assert_eq!(body["reasoning_effort"], "low");
    assert_eq!(body["top_k"], 3);
    assert!(
        (body["temperature"].as_f64().unwrap() - 0.7).abs() < 1e-6,
        "the request wins: {body}"
    );
    assert!(
        body.get("max_budget").is_none(),
        "a proxy feature is never sent: {body}"
    );

    r.client().complete(complete("claude")).await.unwrap();
    let body = up.counts("claude").last_body.unwrap();
    assert_eq!(body["stop_sequences"], serde_json::json!(["END"]));
    assert_eq!(
        body["thinking"],
        serde_json::json!({"type": "enabled", "budget_tokens": 4096})
    );
}

#[tokio::test]
async fn each_answer_says_what_it_cost_and_the_metric_adds_it_up() {
    let up = Upstream::start().await;
    up.set("priced", Behaviour::fixture(200, "openai/completion.json"));
    up.set("free", Behaviour::fixture(200, "openai/completion.json"));
    let base = up.base();
    let r = TestRouter::start(&format!(
        r#"
model_list:
  - model_name: priced
    litellm_params: {{ model: openai/priced, api_base: "{base}", api_key: k }}
    model_info: {{ id: priced-1, input_cost_per_token: 0.001, output_cost_per_token: 0.002 }}
  - model_name: free
    litellm_params: {{ model: openai/free, api_base: "{base}", api_key: k }}
"#
    ))
    .await;
    // The fixture reports 19 prompt and 10 completion tokens.
    let usage = r
        .client()
        .complete(complete("priced"))
        .await
        .unwrap()
        .into_inner()
        .usage
        .unwrap();
    assert!((usage.cost_usd.unwrap() - 0.039).abs() < 1e-9, "{usage:?}");
    let usage = r
        .client()
        .complete(complete("free"))
        .await
        .unwrap()
        .into_inner()
        .usage
        .unwrap();
    assert_eq!(usage.cost_usd, None, "no price, no cost");
    r.client().complete(complete("priced")).await.unwrap();
    // A stream's last message carries its cost: this upstream streams "a b c" and reports 5
    // prompt tokens and one completion token per chunk.
    up.set("priced", Behaviour::ok("a b c"));
    let mut stream = r
        .client()
        .stream_complete(stream_req("priced"))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(m) = stream.message().await.unwrap() {
        last = Some(m);
    }
    let usage = last.unwrap().usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 3));
    assert!((usage.cost_usd.unwrap() - 0.011).abs() < 1e-9, "{usage:?}");
    let (_, metrics) = r.admin_get("/metrics").await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "llmrouter_cost_usd_total{model_group=\"priced\",deployment=\"priced-1\",caller=\"unauthenticated\"}",
            )
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let total: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((total - 0.089).abs() < 1e-9, "{line}");
}
