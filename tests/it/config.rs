//! Config loading and validation: every error names its key.

use std::time::Duration;

use llm_router::config::{
    AzureSettings, Config, ConfigError, Family, OpenAiSettings, ProviderConfig, Source,
};

fn load(yaml: &str) -> Result<Config, ConfigError> {
    load_env(yaml, &[], &[])
}

fn load_env(
    yaml: &str,
    overrides: &[(&str, &str)],
    secrets: &[(&str, &str)],
) -> Result<Config, ConfigError> {
    let overrides: Vec<(String, String)> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let secrets: Vec<(String, String)> = secrets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_with_env(Source::Yaml(yaml), overrides, |name| {
        secrets
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

/// The keys named by a validation failure.
fn error_keys(yaml: &str) -> Vec<String> {
    match load(yaml) {
        Err(ConfigError::Invalid(errors)) => errors.into_iter().map(|e| e.key).collect(),
        Err(other) => panic!("expected key errors, got {other}"),
        Ok(_) => panic!("expected the config to be rejected"),
    }
}

const MINIMAL: &str = r#"
model_list:
  - model_name: gpt-3.5-turbo
    litellm_params: { model: openai/gpt-3.5-turbo, api_base: "http://127.0.0.1:9/v1" }
  - model_name: GPT-4o
    litellm_params: { model: mock/big }
router_settings:
  fallbacks:
    - gpt-3.5-turbo: [GPT-4o]
"#;

#[test]
fn the_built_in_default_is_valid() {
    let cfg = Config::load_with_env(Source::BuiltIn, Vec::new(), |_| None).unwrap();
    assert!(cfg.group("chat").is_some());
    assert_eq!(cfg.group("hanging").unwrap().fallbacks, ["chat-backup"]);
    assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:50051");
    // The demo is an example to copy: nothing in it needs a warning.
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn group_names_keep_their_case_and_dots() {
    let cfg = load(MINIMAL).unwrap();
    assert_eq!(cfg.group_names(), ["GPT-4o", "gpt-3.5-turbo"]);
    assert_eq!(cfg.group("gpt-3.5-turbo").unwrap().fallbacks, ["GPT-4o"]);
    // Defaults.
    assert_eq!(cfg.router.timeout, Duration::from_secs(600));
    assert_eq!(cfg.router.stream_idle_timeout, Duration::from_secs(30));
    assert_eq!(cfg.router.num_retries, 2);
    // The request's test switches are off unless the config turns them on.
    assert!(!cfg.router.allow_mock_timeout);
    assert!(!cfg.router.allow_mock_response);
    assert_eq!(cfg.server.deadline_margin, Duration::from_millis(20));
    let d = &cfg.group("gpt-3.5-turbo").unwrap().deployments[0];
    assert_eq!(d.id, "gpt-3.5-turbo/0");
    assert_eq!(
        d.timeout,
        Duration::from_secs(600),
        "deployment timeout defaults to the router's"
    );
}

#[test]
fn durations_accept_litellm_seconds_and_unit_strings() {
    let cfg = load(&format!(
        "{MINIMAL}  timeout: 30\n  stream_timeout: 2.5\n  stream_idle_timeout: 250ms\n  retry_after: 1m\n"
    ))
    .unwrap();
    assert_eq!(cfg.router.timeout, Duration::from_secs(30));
    assert_eq!(cfg.router.stream_timeout, Some(Duration::from_millis(2500)));
    assert_eq!(cfg.router.stream_idle_timeout, Duration::from_millis(250));
    assert_eq!(cfg.router.min_retry_wait, Duration::from_secs(60));
}

#[test]
fn environment_overrides_take_precedence() {
    let cfg = load_env(
        MINIMAL,
        &[
            ("LLMROUTER__ROUTER_SETTINGS__TIMEOUT", "45s"),
            ("LLMROUTER__ROUTER_SETTINGS__NUM_RETRIES", "4"),
            ("LLMROUTER__SERVER__LISTEN", "0.0.0.0:6000"),
            ("UNRELATED", "x"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(cfg.router.timeout, Duration::from_secs(45));
    assert_eq!(cfg.router.num_retries, 4);
    assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:6000");
}

#[test]
fn unknown_keys_are_errors_naming_the_path() {
    let keys = error_keys(&format!("{MINIMAL}  timeot: 5s\nserver:\n  listn: x\n"));
    assert_eq!(keys, ["router_settings.timeot", "server.listn"]);
    // A near miss of a key llm-router reads is a typo: an error, with the likely key.
    let yaml = r#"
model_list:
  - model_name: a
    litellm_params: { model: mock/a, timout: 1s }
"#;
    assert_eq!(error_keys(yaml), ["model_list[0].litellm_params.timout"]);
    let err = load(yaml).unwrap_err().to_string();
    assert!(err.contains("did you mean `timeout`?"), "{err}");
}

#[test]
fn litellm_params_meant_for_the_provider_load_and_are_listed_as_ignored() {
    // LiteLLM passes params it does not know on to the provider; real configs carry them.
    let cfg = load(
        r#"
model_list:
  - model_name: a
    litellm_params:
      model: mock/a
      extra_body: { top_k: 3 }
      reasoning_effort: low
      thinking: { type: enabled, budget_tokens: 1024 }
      stop: ["\n\n"]
      num_ctx: 8192
      stream: true
      max_budget: 10
      budget_duration: 30d
      aws_region_name: us-east-1
"#,
    )
    .unwrap();
    for key in [
        "extra_body",
        "reasoning_effort",
        "thinking",
        "stop",
        "num_ctx",
        "stream",
        "max_budget",
        "budget_duration",
        "aws_region_name",
    ] {
        let full = format!("model_list[0].litellm_params.{key}");
        assert!(
            cfg.ignored_keys.iter().any(|k| k.key == full),
            "{full} not listed in {:?}",
            cfg.ignored_keys
        );
    }
}

#[test]
fn litellm_keys_are_accepted_and_listed_as_ignored() {
    let cfg = load(&format!(
        "{MINIMAL}  routing_strategy: simple-shuffle\n  cache_responses: true\nlitellm_settings:\n  drop_params: true\ngeneral_settings:\n  master_key: sk-1234\n"
    ))
    .unwrap();
    let ignored: Vec<&str> = cfg.ignored_keys.iter().map(|k| k.key.as_str()).collect();
    assert!(
        ignored.contains(&"router_settings.cache_responses"),
        "{ignored:?}"
    );
    assert!(
        ignored.contains(&"litellm_settings.drop_params"),
        "{ignored:?}"
    );
    assert!(ignored.contains(&"general_settings"), "{ignored:?}");
    let table = cfg.routing_table();
    assert!(table.contains("router_settings.cache_responses"));
    assert!(
        !table.contains("sk-1234"),
        "ignored sections are named, never printed"
    );
}

#[test]
fn every_reference_is_checked_with_its_key() {
    let keys = error_keys(
        r#"
model_list:
  - model_name: a
    litellm_params: { model: mock/a, timeout: 0 }
  - model_name: b
    litellm_params: { model: openai/b, api_key: os.environ/NOT_SET_ANYWHERE }
  - model_name: c
    litellm_params: { model: nope/c }
  - litellm_params: { model: mock/d }
  - model_name: e
    litellm_params: { model: no-slash }
  - model_name: f
    litellm_params: { model: openai/f, api_base: "ftp://host" }
router_settings:
  stream_idle_timeout: 0s
  fallbacks:
    - a: [ghost]
    - ghost2: [a]
  default_fallbacks: [ghost3]
  context_window_fallbacks:
    - a: [a]
"#,
    );
    assert_eq!(
        keys,
        [
            "router_settings.stream_idle_timeout",
            "model_list[0].litellm_params.timeout",
            "model_list[1].litellm_params.api_key",
            "model_list[2].litellm_params.model",
            "model_list[3].model_name",
            "model_list[4].litellm_params.model",
            "model_list[5].litellm_params.api_base",
            "router_settings.fallbacks[0].a[0]",
            "router_settings.fallbacks[1].ghost2",
            "router_settings.context_window_fallbacks[0].a[0]",
            "router_settings.default_fallbacks[0]",
        ]
    );
}

#[test]
fn messages_say_what_is_wrong() {
    let err = load(
        r#"
model_list:
  - model_name: b
    litellm_params: { model: openai/b, api_key: os.environ/MY_OPENAI_KEY }
router_settings:
  fallbacks:
    - b: [ghost]
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`model_list[0].litellm_params.api_key`: environment variable `MY_OPENAI_KEY` is not set"), "{err}");
    assert!(
        err.contains("unknown model group `ghost`; known groups: b"),
        "{err}"
    );
}

#[test]
fn type_errors_name_the_key() {
    let err = load(&format!("{MINIMAL}  num_retries: lots\n")).unwrap_err();
    let ConfigError::Invalid(errors) = err else {
        panic!("{err}")
    };
    assert_eq!(errors[0].key, "router_settings.num_retries");
    let err = load(&format!("{MINIMAL}  timeout: 5 parsecs\n")).unwrap_err();
    let ConfigError::Invalid(errors) = err else {
        panic!("{err}")
    };
    assert_eq!(errors[0].key, "router_settings.timeout");
    assert!(errors[0].message.contains("unit"), "{}", errors[0].message);
}

#[test]
fn secrets_resolve_from_the_environment_and_never_print() {
    let yaml = r#"
model_list:
  - model_name: b
    litellm_params: { model: openai/b, api_key: os.environ/MY_KEY }
  - model_name: c
    litellm_params: { model: openai/c, api_key: sk-literal-key }
"#;
    let cfg = load_env(yaml, &[], &[("MY_KEY", "sk-from-env")]).unwrap();
    match &cfg.group("b").unwrap().deployments[0].provider {
        ProviderConfig::Http(h) => assert_eq!(h.api_key.as_ref().unwrap().expose(), "sk-from-env"),
        other => panic!("{other:?}"),
    }
    let shown = format!("{cfg:?}\n{}", cfg.routing_table());
    assert!(
        !shown.contains("sk-from-env") && !shown.contains("sk-literal-key"),
        "{shown}"
    );
}

#[test]
fn duplicate_ids_and_empty_lists_are_rejected() {
    let keys = error_keys(
        r#"
model_list:
  - model_name: a
    litellm_params: { model: mock/a }
    model_info: { id: same }
  - model_name: b
    litellm_params: { model: mock/b }
    model_info: { id: same }
"#,
    );
    assert_eq!(keys, ["model_list[1].model_info.id"]);
    assert_eq!(
        error_keys("router_settings: { timeout: 5s }\n"),
        ["model_list"]
    );
}

#[test]
fn a_missing_file_is_a_load_error_naming_it() {
    let err = Config::load(Source::File(std::path::Path::new(
        "/nonexistent/llm-router.yaml",
    )))
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/llm-router.yaml"),
        "{err}"
    );
}

#[test]
fn absurd_values_are_rejected_not_panicked_on() {
    let keys = error_keys(
        r#"
model_list:
  - model_name: a
    litellm_params: { model: mock/a, timeout: 99999999999, mock: { tokens_per_second: 1e-300 } }
"#,
    );
    assert_eq!(
        keys,
        ["model_list[0].litellm_params.timeout"],
        "type errors stop parsing first"
    );
    let keys = error_keys(
        r#"
model_list:
  - model_name: a
    litellm_params: { model: mock/a, mock: { tokens_per_second: 1e-300 } }
"#,
    );
    assert_eq!(
        keys,
        ["model_list[0].litellm_params.mock.tokens_per_second"]
    );
}

#[test]
fn telemetry_and_admin_settings_are_checked() {
    let cfg = load(&format!(
        "{MINIMAL}telemetry:\n  otlp_endpoint: http://collector:4317\nserver:\n  admin_listen: none\n"
    ))
    .unwrap();
    assert_eq!(cfg.otlp_endpoint.as_deref(), Some("http://collector:4317"));
    assert_eq!(cfg.server.admin_listen, None);
    assert_eq!(
        load(MINIMAL)
            .unwrap()
            .server
            .admin_listen
            .unwrap()
            .to_string(),
        "127.0.0.1:9090"
    );

    let keys = error_keys(&format!(
        "{MINIMAL}telemetry:\n  otlp_endpoint: collector:4317\nserver:\n  admin_listen: nine-thousand\n"
    ));
    assert_eq!(keys, ["server.admin_listen", "telemetry.otlp_endpoint"]);
    assert_eq!(load(MINIMAL).unwrap().log_level, "info");
    let keys = error_keys(&format!("{MINIMAL}telemetry:\n  log_level: \"info,=[\"\n"));
    assert_eq!(keys, ["telemetry.log_level"]);
}

#[test]
fn a_litellm_wildcard_route_loads_with_a_warning_saying_what_it_does_here() {
    let cfg = load(
        r#"
model_list:
  - model_name: "openai/*"
    litellm_params: { model: "openai/*", api_key: sk-test, timeout: 30s }
"#,
    )
    .unwrap();
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    assert!(
        cfg.warnings[0]
            .starts_with("`model_list[0].model_name`: `openai/*` is a LiteLLM wildcard route")
            && cfg.warnings[0].contains("sends the provider the model name `*`"),
        "{}",
        cfg.warnings[0]
    );
}

#[test]
fn suspicious_but_valid_settings_are_warnings_naming_the_key() {
    let cfg = load(
        &format!("{MINIMAL}  timeout: 10s\n")
            .replace("model: mock/big }", "model: mock/big, timeout: 30s }"),
    )
    .unwrap();
    assert_eq!(
        cfg.warnings[0],
        "`model_list[1].litellm_params.timeout` (30s) is longer than router_settings.timeout (10s), which caps it"
    );
    assert!(
        cfg.routing_table()
            .contains("warnings:\n  `model_list[1].litellm_params.timeout` (30s)")
    );
}

#[test]
fn routing_cooldown_hedge_and_limit_settings_use_litellm_names_and_are_checked() {
    let ok = load(
        r#"
model_list:
  - model_name: chat
    litellm_params: { model: mock/a, rpm: 100, tpm: 50000, max_parallel_requests: 8, cooldown_time: 30s }
  - model_name: chat
    litellm_params: { model: mock/b, rpm: 300 }
  - model_name: other
    litellm_params: { model: mock/c }
router_settings:
  routing_strategy: latency-based-routing
  routing_strategy_args: { lowest_latency_buffer: 0.5, ttl: 60 }
  allowed_fails: 2
  allowed_fails_policy: { RateLimitErrorAllowedFails: 10, BadRequestErrorAllowedFails: 5 }
  cooldown_time: 10
  hedge_after: 2s
  retry_budget: { max_tokens: 20, token_ratio: 0.2 }
  model_group_settings:
    other: { routing_strategy: least-busy, max_hedges: 0 }
server: { max_concurrent_calls: 500, max_concurrent_streams: 100, max_request_bytes: 65536 }
"#,
    )
    .unwrap();
    assert!(ok.ignored_keys.is_empty(), "{:?}", ok.ignored_keys);
    let chat = ok.group("chat").unwrap();
    assert_eq!(chat.strategy.name(), "latency-based-routing");
    assert_eq!(chat.hedge.unwrap().after, Duration::from_secs(2));
    assert_eq!(chat.hedge.unwrap().max, 1);
    // No weights set and every deployment has rpm: simple-shuffle would weigh by rpm.
    let weights: Vec<u32> = chat.deployments.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [100, 300]);
    assert_eq!(chat.deployments[0].cooldown_time, Duration::from_secs(30));
    assert_eq!(chat.deployments[1].cooldown_time, Duration::from_secs(10));
    let other = ok.group("other").unwrap();
    assert_eq!(other.strategy.name(), "least-busy");
    assert!(other.hedge.is_none(), "max_hedges: 0 turns hedging off");
    let c = &ok.router.cooldowns;
    use llm_router::config::FailKind;
    assert_eq!(c.allowed(FailKind::RateLimit), Some(10));
    assert_eq!(c.allowed(FailKind::Timeout), Some(2));
    assert_eq!(c.allowed(FailKind::BadRequest), Some(5));
    assert_eq!(c.allowed(FailKind::ContentPolicy), None);
    assert_eq!(ok.server.max_concurrent_calls, Some(500));

    let keys = error_keys(
        r#"
model_list:
  - model_name: chat
    litellm_params: { model: mock/a, rpm: 0, tpm: 0, max_parallel_requests: 0 }
router_settings:
  routing_strategy: fastest
  routing_strategy_args: { lowest_latency_buffer: -1 }
  hedge_after: 0s
  max_hedges: 9
  retry_budget: { max_tokens: 5000, token_ratio: 0 }
  model_group_settings:
    nope: { routing_strategy: least-busy }
    chat: { routing_strategy: cheapest }
server: { max_concurrent_calls: 0, max_concurrent_streams: 0, max_request_bytes: 10, config_watch_interval: 0s }
"#,
    );
    for key in [
        "model_list[0].litellm_params.rpm",
        "model_list[0].litellm_params.tpm",
        "model_list[0].litellm_params.max_parallel_requests",
        "router_settings.routing_strategy",
        "router_settings.routing_strategy_args.lowest_latency_buffer",
        "router_settings.hedge_after",
        "router_settings.max_hedges",
        "router_settings.retry_budget.max_tokens",
        "router_settings.retry_budget.token_ratio",
        "router_settings.model_group_settings.nope",
        "router_settings.model_group_settings.chat.routing_strategy",
        "server.max_concurrent_calls",
        "server.max_concurrent_streams",
        "server.max_request_bytes",
        "server.config_watch_interval",
    ] {
        assert!(
            keys.iter().any(|k| k == key),
            "no error for {key} in {keys:?}"
        );
    }
}

#[test]
fn stream_max_malformed_events_defaults_to_three_and_is_bounded() {
    assert_eq!(load(MINIMAL).unwrap().router.stream_max_malformed_events, 3);
    let cfg = load(&format!("{MINIMAL}  stream_max_malformed_events: 0\n")).unwrap();
    assert_eq!(cfg.router.stream_max_malformed_events, 0);
    let keys = error_keys(&format!("{MINIMAL}  stream_max_malformed_events: 100000\n"));
    assert_eq!(keys, ["router_settings.stream_max_malformed_events"]);
}

#[test]
fn credentials_in_api_base_are_refused_and_never_echoed() {
    let yaml = r#"
model_list:
  - model_name: a
    litellm_params: { model: openai/a, api_base: "https://user:hunter2@llm.internal/v1" }
"#;
    let err = load(yaml).unwrap_err().to_string();
    assert!(
        err.contains("model_list[0].litellm_params.api_base"),
        "{err}"
    );
    assert!(err.contains("must not carry credentials"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let yaml = r#"
model_list:
  - model_name: a
    litellm_params: { model: openai/a, api_base: "not a url with secret@host" }
"#;
    let err = load(yaml).unwrap_err().to_string();
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn an_https_otlp_endpoint_is_refused_at_check_time_not_at_start() {
    let keys = error_keys(&format!(
        "{MINIMAL}telemetry:\n  otlp_endpoint: https://collector:4317\n"
    ));
    assert_eq!(keys, ["telemetry.otlp_endpoint"]);
}

#[test]
fn os_environ_works_in_api_base_api_version_and_organization() {
    let yaml = r#"
model_list:
  - model_name: azure
    litellm_params:
      model: azure/gpt4o-east
      api_base: os.environ/AZURE_API_BASE
      api_version: os.environ/AZURE_VERSION_PIN
      api_key: os.environ/AZURE_KEY
  - model_name: openai
    litellm_params:
      model: openai/gpt-4o
      api_base: os.environ/OPENAI_PROXY
      organization: os.environ/OPENAI_ORG
"#;
    let cfg = load_env(
        yaml,
        &[],
        &[
            ("AZURE_API_BASE", "https://east.openai.azure.com/"),
            ("AZURE_VERSION_PIN", "2024-10-21"),
            ("AZURE_KEY", "k"),
            ("OPENAI_PROXY", "http://proxy.internal:4000/v1"),
            ("OPENAI_ORG", "org-123"),
        ],
    )
    .unwrap();
    let http = |group: &str| match &cfg.group(group).unwrap().deployments[0].provider {
        ProviderConfig::Http(h) => h.clone(),
        other => panic!("{other:?}"),
    };
    let azure = http("azure");
    assert_eq!(azure.api_base, "https://east.openai.azure.com");
    assert_eq!(
        azure.family,
        Family::Azure(AzureSettings {
            api_version: "2024-10-21".into()
        })
    );
    let openai = http("openai");
    assert_eq!(openai.api_base, "http://proxy.internal:4000/v1");
    assert_eq!(
        openai.family,
        Family::OpenAi(OpenAiSettings {
            organization: Some("org-123".into())
        })
    );

    // An unset variable is one error, naming the key and the variable.
    let err = load_env(yaml, &[], &[("AZURE_KEY", "k"), ("OPENAI_ORG", "o")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model_list[0].litellm_params.api_base")
            && err.contains("`AZURE_API_BASE` is not set"),
        "{err}"
    );
    assert!(!err.contains("is required"), "reported once: {err}");
}

/// Every config in the README loads, with no warning: they are examples to copy.
#[test]
fn the_readmes_configs_load_without_warnings() {
    let readme =
        std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let keys: Vec<(&str, &str)> = [
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "GROQ_API_KEY",
        "TOGETHERAI_API_KEY",
        "MISTRAL_API_KEY",
        "DEEPSEEK_API_KEY",
        "AZURE_EU_KEY",
    ]
    .iter()
    .map(|k| (*k, "stand-in"))
    .chain([
        ("SEARCH_KEY", "sk-stand-in-0123456789abcdef"),
        ("REDIS_PASSWORD", "stand-in"),
    ])
    .collect();
    // The files the security examples name, as stand-ins: a CA-signed server certificate, its
    // CA, and caller keys.
    let dir = crate::common::certs::dir("readme-configs");
    let ca = crate::common::certs::Ca::new("stand-in CA");
    let server = ca.server();
    crate::common::certs::write(&dir, "tls.crt", &server.cert_pem);
    crate::common::certs::write(&dir, "tls.key", &server.key_pem);
    crate::common::certs::write(&dir, "ca.crt", &ca.pem());
    for key in ["search", "batch"] {
        crate::common::certs::write(&dir, key, "sk-stand-in-key-0123456789");
    }
    let at = |yaml: &str| {
        yaml.replace("/etc/tls/", &format!("{}/", dir.display()))
            .replace(
                "/etc/llm-router/keys/team-keys/",
                &format!("{}/", dir.display()),
            )
    };
    let mut seen = 0;
    let mut security = 0;
    let mut shared = 0;
    for block in readme.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().unwrap();
        let yaml = if yaml.contains("model_list:") {
            at(yaml)
        } else if yaml.lines().any(|l| l.starts_with("callers:")) {
            // The security model's snippets, on a group they name.
            security += 1;
            format!(
                "model_list:\n  - model_name: chat\n    litellm_params: {{ model: mock/chat, timeout: 10s }}\n{}",
                at(yaml)
            )
        } else if yaml.starts_with("router_settings:") && yaml.contains("redis_url") {
            // Shared state's snippet, on a group of its own.
            shared += 1;
            format!(
                "model_list:\n  - model_name: chat\n    litellm_params: {{ model: mock/chat, timeout: 10s }}\n{yaml}"
            )
        } else {
            continue;
        };
        seen += 1;
        let cfg = load_env(&yaml, &[], &keys).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert!(cfg.warnings.is_empty(), "{:?}\n{yaml}", cfg.warnings);
    }
    assert!(seen >= 2, "the README's configs were found");
    assert_eq!(security, 3, "the security model's three configs were found");
    assert_eq!(shared, 1, "shared state's config was found");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_text_a_continue_keeps_is_bounded_and_defaults_to_1_mib() {
    assert_eq!(
        load(MINIMAL).unwrap().router.stream_recovery_max_bytes,
        1 << 20
    );
    for bad in ["0", "1023", "17000000"] {
        let keys = error_keys(&format!("{MINIMAL}  stream_recovery_max_bytes: {bad}\n"));
        assert_eq!(keys, ["router_settings.stream_recovery_max_bytes"], "{bad}");
    }
}

#[test]
fn stream_recovery_takes_four_modes_and_names_them_when_wrong() {
    use llm_router::config::StreamRecovery as M;
    for (value, mode) in [
        ("none", M::None),
        ("continue", M::Continue),
        ("restart", M::Restart),
        ("continue_or_restart", M::ContinueOrRestart),
    ] {
        let cfg = load(&format!("{MINIMAL}  stream_recovery: {value}\n")).unwrap();
        assert_eq!(cfg.router.stream_recovery, mode);
    }
    match load(&format!("{MINIMAL}  stream_recovery: auto\n")) {
        Err(ConfigError::Invalid(errors)) => {
            assert_eq!(errors[0].key, "router_settings.stream_recovery");
            assert!(
                errors[0].to_string().contains("continue_or_restart"),
                "{}",
                errors[0]
            );
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn the_slow_stream_guard_is_off_by_default_bounded_and_set_per_group_over_the_router() {
    use llm_router::config::SlowStream;
    let cfg = load(MINIMAL).unwrap();
    assert_eq!(cfg.router.slow_stream, SlowStream::OFF);
    assert_eq!(cfg.group("GPT-4o").unwrap().slow_stream.min(), None);
    assert!(
        cfg.routing_table().contains("slow-stream guard off"),
        "{}",
        cfg.routing_table()
    );

    // The router's keys are every group's; a group's own keys override one by one, and a rate
    // of 0 turns the guard off for that group.
    let cfg = load(&format!(
        "{MINIMAL}  stream_min_tokens_per_s: 4\n  stream_min_tokens_window: 20s\n  model_group_settings:\n    GPT-4o: {{ stream_min_tokens_grace: 2s }}\n    gpt-3.5-turbo: {{ stream_min_tokens_per_s: 0 }}\n"
    ))
    .unwrap();
    let big = cfg.group("GPT-4o").unwrap().slow_stream;
    assert_eq!(big.min(), Some(4.0));
    assert_eq!(big.window, Duration::from_secs(20));
    assert_eq!(big.grace, Duration::from_secs(2));
    assert_eq!(cfg.group("gpt-3.5-turbo").unwrap().slow_stream.min(), None);
    let table = cfg.routing_table();
    assert!(
        table.contains("group GPT-4o (simple-shuffle, stream_recovery none, slow-stream guard at least 4 tokens/s over 20s from 2s after commit)"),
        "{table}"
    );

    for (bad, key) in [
        (
            "  stream_min_tokens_per_s: -1\n",
            "router_settings.stream_min_tokens_per_s",
        ),
        (
            "  stream_min_tokens_per_s: 1000001\n",
            "router_settings.stream_min_tokens_per_s",
        ),
        (
            "  stream_min_tokens_window: 500ms\n",
            "router_settings.stream_min_tokens_window",
        ),
        (
            "  stream_min_tokens_window: 11m\n",
            "router_settings.stream_min_tokens_window",
        ),
        (
            "  stream_min_tokens_grace: 11m\n",
            "router_settings.stream_min_tokens_grace",
        ),
        (
            "  model_group_settings:\n    GPT-4o: { stream_min_tokens_window: 0s }\n",
            "router_settings.model_group_settings.GPT-4o.stream_min_tokens_window",
        ),
    ] {
        assert_eq!(error_keys(&format!("{MINIMAL}{bad}")), [key], "{bad}");
    }
}

#[test]
fn redis_settings_are_litellms_keys_and_never_show_a_password() {
    // redis_host / redis_port / redis_password, the port as text from the environment.
    let cfg = load_env(
        &format!(
            "{MINIMAL}  redis_host: os.environ/REDIS_HOST\n  redis_port: os.environ/REDIS_PORT\n  redis_password: os.environ/REDIS_PASSWORD\n"
        ),
        &[],
        &[
            ("REDIS_HOST", "redis.internal"),
            ("REDIS_PORT", "6380"),
            ("REDIS_PASSWORD", "hunter2-redis-secret"),
        ],
    )
    .unwrap();
    let shared = cfg.shared_state.as_ref().unwrap();
    assert_eq!(shared.shown, "redis://redis.internal:6380/0");
    assert_eq!(shared.sync_interval, Duration::from_millis(100));
    assert_eq!(shared.timeout, Duration::from_millis(250));
    let table = cfg.routing_table();
    assert!(
        table.contains("state: shared through redis://redis.internal:6380/0 (namespace derived from the model list, sync every 100ms, timeout 250ms)"),
        "{table}"
    );
    let everything = format!("{cfg:?}\n{table}");
    assert!(!everything.contains("hunter2"), "{everything}");

    // redis_url, with the password in it, overridden from the environment as any key is.
    let cfg = load_env(
        MINIMAL,
        &[
            (
                "LLMROUTER__ROUTER_SETTINGS__REDIS_URL",
                "rediss://:url-secret-pw@cache.example:6390/2",
            ),
            ("LLMROUTER__ROUTER_SETTINGS__REDIS_NAMESPACE", "team-a"),
        ],
        &[],
    )
    .unwrap();
    let shared = cfg.shared_state.as_ref().unwrap();
    assert_eq!(shared.shown, "rediss://cache.example:6390/2");
    assert_eq!(shared.namespace.as_deref(), Some("team-a"));
    let everything = format!("{cfg:?}\n{}", cfg.routing_table());
    assert!(!everything.contains("url-secret-pw"), "{everything}");

    // Without them, every replica counts alone, and check-config says so.
    let table = load(MINIMAL).unwrap().routing_table();
    assert!(table.contains("state: per replica"), "{table}");
}

#[test]
fn bad_redis_settings_name_their_key_and_never_echo_the_url() {
    let bad = |extra: &str| -> Vec<(String, String)> {
        match load(&format!("{MINIMAL}{extra}")) {
            Err(ConfigError::Invalid(errors)) => {
                errors.into_iter().map(|e| (e.key, e.message)).collect()
            }
            Err(other) => panic!("expected key errors, got {other}"),
            Ok(_) => panic!("expected {extra:?} to be rejected"),
        }
    };
    let key = |extra: &str| bad(extra).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let errs = bad("  redis_url: http://:pw-in-url@host:6379\n");
    assert_eq!(errs[0].0, "router_settings.redis_url");
    assert!(!errs[0].1.contains("pw-in-url"), "{errs:?}");
    assert_eq!(
        key("  redis_url: redis://h:1\n  redis_host: h\n"),
        ["router_settings.redis_host"]
    );
    assert_eq!(
        key("  redis_url: redis://h:1\n  redis_port: 2\n"),
        ["router_settings.redis_port"]
    );
    assert_eq!(
        key("  redis_host: h\n  redis_port: 70000\n"),
        ["router_settings.redis_port"]
    );
    assert_eq!(
        key("  redis_host: h\n  redis_port: six\n"),
        ["router_settings.redis_port"]
    );
    assert_eq!(
        key("  redis_host: redis://h\n"),
        ["router_settings.redis_host"]
    );
    assert_eq!(key("  redis_port: 6379\n"), ["router_settings.redis_port"]);
    assert_eq!(
        key("  redis_host: h\n  redis_sync_interval: 1ms\n  redis_timeout: 1m\n"),
        [
            "router_settings.redis_sync_interval",
            "router_settings.redis_timeout"
        ]
    );
    assert_eq!(
        key("  redis_host: h\n  redis_ca_file: /etc/ca.pem\n"),
        ["router_settings.redis_ca_file"]
    );
    assert_eq!(
        key("  redis_url: rediss://h:1/#insecure\n"),
        ["router_settings.redis_url"]
    );
    assert_eq!(
        key("  redis_url: redis://:a-pw@h:1\n  redis_password: another\n"),
        ["router_settings.redis_password"]
    );
    assert_eq!(
        key("  redis_host: h\n  redis_namespace: \"has space\"\n"),
        ["router_settings.redis_namespace"]
    );
    assert_eq!(
        key("  redis_url: os.environ/NOT_SET_ANYWHERE\n"),
        ["router_settings.redis_url"]
    );
}

#[test]
fn upstream_tls_and_pool_settings_are_read_and_checked_with_their_keys() {
    use llm_router::config::upstream::TlsVerify;
    let dir = std::env::temp_dir().join(format!("llm-router-config-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca = write("ca.pem", &cert.pem());
    let both = write(
        "both.pem",
        &format!("{}{}", cert.pem(), key.serialize_pem()),
    );
    let key_only = write("key.pem", &key.serialize_pem());
    let wrong_key = write("other.pem", &other.serialize_pem());
    let not_pem = write("junk.pem", "not a certificate\n");

    let yaml = |litellm: &str, params: &str, router: &str| {
        format!(
            "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/x\n      api_base: https://h/v1\n{params}\n  - model_name: n\n    litellm_params: {{model: openai/y, api_base: https://h/v1}}\nlitellm_settings:\n  num_retries: 0\n{litellm}\nrouter_settings:\n  num_retries: 0\n{router}\n"
        )
    };
    // Globally, then per deployment over it; the CA's certificates are read at load.
    let c = load(&yaml(
        &format!("  ssl_verify: {ca}\n  ssl_certificate: {both}"),
        "      ssl_verify: false",
        "  pool_max_connections: 50\n  pool_max_http2_connections: 4\n  pool_idle_timeout: 30s",
    ))
    .unwrap();
    let m = &c.groups["m"].deployments[0].tls;
    let n = &c.groups["n"].deployments[0].tls;
    assert_eq!(m.verify, TlsVerify::Off);
    assert!(m.identity.is_some(), "the global certificate stays");
    assert!(matches!(&n.verify, TlsVerify::Bundle { certs, .. } if certs.len() == 1));
    assert_eq!(c.router.pool.max_connections, 50);
    assert_eq!(c.router.pool.max_http2_connections, 4);
    assert_eq!(c.router.pool.idle_timeout, Duration::from_secs(30));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("model_list[0].litellm_params: ssl_verify is false"))
    );
    // The key in a file of its own; text switches as an environment override gives them.
    let c = load(&yaml(
        "  ssl_verify: \"False\"",
        &format!("      ssl_certificate: {ca}\n      ssl_certificate_key: {key_only}"),
        "",
    ))
    .unwrap();
    assert_eq!(c.groups["n"].deployments[0].tls.verify, TlsVerify::Off);
    assert!(c.groups["m"].deployments[0].tls.identity.is_some());
    let c = load(&yaml("", "", "")).unwrap();
    assert_eq!(c.groups["m"].deployments[0].tls.verify, TlsVerify::System);
    assert_eq!(c.router.pool.max_http2_connections, 256);
    assert_eq!(c.router.pool.max_connections, 4096);

    let bad =
        |litellm: &str, params: &str, router: &str| error_keys(&yaml(litellm, params, router));
    assert_eq!(
        bad("  ssl_verify: /no/such/ca.pem", "", ""),
        ["litellm_settings.ssl_verify"]
    );
    assert_eq!(
        bad("", &format!("      ssl_verify: {not_pem}"), ""),
        ["model_list[0].litellm_params.ssl_verify"]
    );
    assert_eq!(
        bad("", &format!("      ssl_certificate: {ca}"), ""),
        ["model_list[0].litellm_params.ssl_certificate"],
        "no key in the file and none given"
    );
    assert_eq!(
        bad(
            "",
            &format!("      ssl_certificate: {ca}\n      ssl_certificate_key: {wrong_key}"),
            ""
        ),
        ["model_list[0].litellm_params.ssl_certificate_key"],
        "another certificate's key"
    );
    assert_eq!(
        bad(&format!("  ssl_certificate_key: {key_only}"), "", ""),
        ["litellm_settings.ssl_certificate_key"]
    );
    assert_eq!(
        bad(
            "",
            "",
            "  pool_max_connections: 0\n  pool_max_http2_connections: 5000\n  pool_idle_timeout: 0s"
        ),
        [
            "router_settings.pool_idle_timeout",
            "router_settings.pool_max_connections",
            "router_settings.pool_max_http2_connections"
        ]
    );
    // Provider keys stay out of the body: ssl_* are not passed to the provider.
    let c = load(&yaml("", &format!("      ssl_verify: {ca}"), "")).unwrap();
    assert!(c.ignored_keys.iter().all(|k| !k.key.contains("ssl")));
    let _ = std::fs::remove_dir_all(&dir);
}
