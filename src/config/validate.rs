//! Turns the raw config into a [`Config`]: fills defaults, resolves `os.environ/` secrets and
//! checks every reference. All problems are collected, so one run reports them all.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use super::{
    Config, ConfigError, CooldownPolicy, Deployment, FailKind, Hedge, HttpProvider, KeyError,
    MockFailure, MockSpec, ModelGroup, ProviderConfig, RetryBudget, RouterSettings, Secret,
    ServerSettings, Strategy, StreamRecovery, is_ignored_litellm_key,
    providers::{self, DEFAULT_AZURE_API_VERSION, ProviderSpec, WireFormat},
    raw::{RawConfig, RawDeployment, RawLitellmParams, RawMock},
};

const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// One or two unreadable events are a provider's hiccup; more are a broken stream.
const DEFAULT_MAX_MALFORMED_EVENTS: u32 = 3;
/// LiteLLM's default.
const DEFAULT_MAX_FALLBACKS: u32 = 5;
const DEFAULT_MAX_CONCURRENT_CALLS: u32 = 4096;
const DEFAULT_MAX_COOLDOWN_FROM_HINT: Duration = Duration::from_secs(300);
const MAX_FALLBACKS_LIMIT: u32 = 100;
const MAX_MALFORMED_EVENTS_LIMIT: u32 = 1000;
const DEFAULT_NUM_RETRIES: u32 = 2;
const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_millis(20);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(2);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// LiteLLM's defaults.
const DEFAULT_ALLOWED_FAILS: u32 = 3;
const DEFAULT_COOLDOWN_TIME: Duration = Duration::from_secs(5);
const DEFAULT_LATENCY_TTL: Duration = Duration::from_secs(300);
/// gRFC A6's example values: ten failures in a row halve the bucket and stop retries.
const DEFAULT_BUDGET_MAX_TOKENS: f64 = 10.0;
const DEFAULT_BUDGET_TOKEN_RATIO: f64 = 0.1;
/// Each hedge multiplies a slow provider's load; more than a few is almost certainly a mistake.
const MAX_HEDGES_LIMIT: u32 = 5;
const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1000;
const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
const MAX_REQUEST_BYTES_LIMIT: u64 = 64 * 1024 * 1024;
const DEFAULT_CONFIG_WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Retries above this are almost certainly a typo, and would multiply load on a failing provider.
const MAX_RETRIES_LIMIT: u32 = 10;
const ENV_SECRET_PREFIX: &str = "os.environ/";

/// Problems (which reject the config) and warnings (which do not), each naming its key.
#[derive(Default)]
struct Errors(Vec<KeyError>, Vec<String>);

impl Errors {
    fn warn(&mut self, message: String) {
        self.1.push(message);
    }

    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(KeyError {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Rejects a zero duration, which would make every call fail at once.
    fn positive(&mut self, key: &str, d: Option<Duration>) -> Option<Duration> {
        if d == Some(Duration::ZERO) {
            self.add(key, "must be greater than zero");
        }
        d
    }
}

pub(super) fn validate(
    raw: RawConfig,
    unused_keys: Vec<String>,
    lookup_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut errs = Errors::default();

    let mut ignored_keys = Vec::new();
    for key in unused_keys {
        if is_ignored_litellm_key(&key) {
            ignored_keys.push(key);
        } else {
            errs.add(key, "unknown key");
        }
    }

    let server = server_settings(&raw, &mut errs);
    let router = router_settings(&raw, &mut errs);

    // Deployments, grouped by model_name in file order.
    let mut members: BTreeMap<String, Vec<Deployment>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    if raw.model_list.is_empty() {
        errs.add("model_list", "must list at least one deployment");
    }
    for (i, d) in raw.model_list.iter().enumerate() {
        let position = members
            .get(d.model_name.as_deref().unwrap_or(""))
            .map_or(0, Vec::len);
        if let Some(dep) = deployment(i, d, position, &router, lookup_env, &mut errs) {
            if !ids.insert(dep.id.clone()) {
                errs.add(
                    format!("model_list[{i}].model_info.id"),
                    format!("duplicate deployment id `{}`", dep.id),
                );
            }
            members.entry(dep.group.clone()).or_default().push(dep);
        }
    }

    let rs = &raw.router_settings;
    let fallbacks = fallback_map(
        rs.fallbacks.as_deref(),
        "router_settings.fallbacks",
        &members,
        &mut errs,
    );
    let cw_fallbacks = fallback_map(
        rs.context_window_fallbacks.as_deref(),
        "router_settings.context_window_fallbacks",
        &members,
        &mut errs,
    );
    let cp_fallbacks = fallback_map(
        rs.content_policy_fallbacks.as_deref(),
        "router_settings.content_policy_fallbacks",
        &members,
        &mut errs,
    );
    let group_settings = group_settings(&raw, &router, &members, &mut errs);
    let default_fallbacks = rs.default_fallbacks.clone().unwrap_or_default();
    for (j, name) in default_fallbacks.iter().enumerate() {
        if !members.contains_key(name) {
            errs.add(
                format!("router_settings.default_fallbacks[{j}]"),
                unknown_group(name, &members),
            );
        }
    }

    let otlp_endpoint = raw
        .telemetry
        .otlp_endpoint
        .clone()
        .filter(|e| !e.trim().is_empty());
    if let Some(e) = &otlp_endpoint {
        if e.starts_with("https://") {
            // The exporter is built without TLS (no second TLS stack for one connection):
            // refused here, rather than failing when the server starts.
            errs.add(
                "telemetry.otlp_endpoint",
                "https:// is not supported: send traces over http:// to a collector beside the pod (or through a mesh that adds TLS)",
            );
        } else if !e.starts_with("http://") {
            errs.add(
                "telemetry.otlp_endpoint",
                format!("`{e}` is not an http URL such as http://otel-collector:4317"),
            );
        }
    }

    let log_level = raw
        .telemetry
        .log_level
        .clone()
        .unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        errs.add(
            "telemetry.log_level",
            format!("`{log_level}` is not a log filter such as `info` or `info,llm_router=debug`"),
        );
    }

    if !errs.0.is_empty() {
        return Err(ConfigError::Invalid(errs.0));
    }

    let groups = members
        .into_iter()
        .map(|(name, mut deps)| {
            shuffle_weights(&mut deps);
            let GroupSettings {
                strategy,
                hedge,
                stream_recovery,
            } = group_settings.get(&name).copied().unwrap_or(GroupSettings {
                strategy: router.routing_strategy,
                hedge: router.hedge,
                stream_recovery: router.stream_recovery,
            });
            if strategy == Strategy::UsageBased
                && deps.iter().all(|d| d.rpm.is_none() && d.tpm.is_none())
            {
                errs.warn(format!(
                    "model group `{name}` uses usage-based-routing but none of its deployments sets rpm or tpm: usage is balanced, no limit is enforced"
                ));
            }
            let fallbacks: Vec<String> = fallbacks.get(&name).cloned().unwrap_or_else(|| {
                default_fallbacks
                    .iter()
                    .filter(|g| **g != name)
                    .cloned()
                    .collect()
            });
            let max = router.max_fallbacks as usize;
            if fallbacks.len() > max {
                let last_kept = max
                    .checked_sub(1)
                    .map_or(name.as_str(), |i| fallbacks[i].as_str());
                errs.warn(format!(
                    "model group `{name}` has {} fallbacks; router_settings.max_fallbacks ({max}) cuts its chain after `{last_kept}`",
                    fallbacks.len(),
                ));
            }
            let group = ModelGroup {
                context_window_fallbacks: cw_fallbacks.get(&name).cloned().unwrap_or_default(),
                content_policy_fallbacks: cp_fallbacks.get(&name).cloned().unwrap_or_default(),
                fallbacks,
                deployments: deps.into_iter().map(Arc::new).collect(),
                name: name.clone(),
                strategy,
                hedge,
                stream_recovery,
            };
            (name, Arc::new(group))
        })
        .collect();

    Ok(Config {
        server,
        router,
        groups,
        ignored_keys,
        warnings: errs.1,
        otlp_endpoint,
        log_level,
    })
}

fn server_settings(raw: &RawConfig, errs: &mut Errors) -> ServerSettings {
    let s = &raw.server;
    let listen_text = s.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        errs.add(
            "server.listen",
            format!("`{listen_text}` is not an address such as 127.0.0.1:50051 or [::]:50051"),
        );
        DEFAULT_LISTEN
            .parse()
            .expect("default listen address parses")
    });
    let admin_listen = match s.admin_listen.as_deref().map(str::trim) {
        Some("none" | "") => None,
        other => {
            let text = other.unwrap_or(DEFAULT_ADMIN_LISTEN);
            match text.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    errs.add(
                        "server.admin_listen",
                        format!("`{text}` is not an address such as 127.0.0.1:9090, or `none`"),
                    );
                    None
                }
            }
        }
    };
    let deadline_margin = s.deadline_margin.unwrap_or(DEFAULT_DEADLINE_MARGIN);
    if deadline_margin > Duration::from_secs(5) {
        errs.add(
            "server.deadline_margin",
            "must be at most 5s: it is taken from every call's deadline",
        );
    }
    if s.max_concurrent_calls == Some(0) {
        errs.add(
            "server.max_concurrent_calls",
            "must be at least 1; leave it out for no limit",
        );
    }
    if s.max_concurrent_streams == Some(0) {
        errs.add("server.max_concurrent_streams", "must be at least 1");
    }
    let max_request_bytes = match s.max_request_bytes {
        None => DEFAULT_MAX_REQUEST_BYTES,
        Some(n) if (1024..=MAX_REQUEST_BYTES_LIMIT).contains(&n) => n as usize,
        Some(_) => {
            errs.add(
                "server.max_request_bytes",
                format!("must be from 1024 to {MAX_REQUEST_BYTES_LIMIT} (64 MiB)"),
            );
            DEFAULT_MAX_REQUEST_BYTES
        }
    };
    ServerSettings {
        listen,
        admin_listen,
        deadline_margin,
        drain_period: s.drain_period.unwrap_or(Duration::ZERO),
        shutdown_grace: s.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        // A bound by default: each open call holds memory (a held stream about 28 KiB, most of
        // it its upstream connection), and a pod must refuse work before its memory limit
        // kills it. 4096 held streams fit well within the chart's default 256Mi.
        max_concurrent_calls: Some(
            s.max_concurrent_calls
                .unwrap_or(DEFAULT_MAX_CONCURRENT_CALLS),
        ),
        max_concurrent_streams: s
            .max_concurrent_streams
            .unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS),
        max_request_bytes,
        config_watch_interval: errs
            .positive("server.config_watch_interval", s.config_watch_interval)
            .unwrap_or(DEFAULT_CONFIG_WATCH_INTERVAL),
    }
}

fn router_settings(raw: &RawConfig, errs: &mut Errors) -> RouterSettings {
    let rs = &raw.router_settings;
    let timeout = errs
        .positive("router_settings.timeout", rs.timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let stream_timeout = errs.positive("router_settings.stream_timeout", rs.stream_timeout);
    let stream_idle_timeout = errs
        .positive(
            "router_settings.stream_idle_timeout",
            rs.stream_idle_timeout,
        )
        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
    let stream_max_malformed_events = rs
        .stream_max_malformed_events
        .unwrap_or(DEFAULT_MAX_MALFORMED_EVENTS);
    if stream_max_malformed_events > MAX_MALFORMED_EVENTS_LIMIT {
        errs.add(
            "router_settings.stream_max_malformed_events",
            format!("must be at most {MAX_MALFORMED_EVENTS_LIMIT}"),
        );
    }
    let stream_recovery = stream_recovery(
        "router_settings.stream_recovery",
        rs.stream_recovery.as_deref(),
        errs,
    )
    .unwrap_or(StreamRecovery::None);
    let max_fallbacks = rs.max_fallbacks.unwrap_or(DEFAULT_MAX_FALLBACKS);
    if max_fallbacks > MAX_FALLBACKS_LIMIT {
        errs.add(
            "router_settings.max_fallbacks",
            format!("must be at most {MAX_FALLBACKS_LIMIT}"),
        );
    }
    let num_retries = rs.num_retries.unwrap_or(DEFAULT_NUM_RETRIES);
    if num_retries > MAX_RETRIES_LIMIT {
        errs.add(
            "router_settings.num_retries",
            format!("must be at most {MAX_RETRIES_LIMIT}"),
        );
    }
    let retry_backoff_initial = errs
        .positive(
            "router_settings.retry_backoff_initial",
            rs.retry_backoff_initial,
        )
        .unwrap_or(DEFAULT_BACKOFF_INITIAL);
    let retry_backoff_max = errs
        .positive("router_settings.retry_backoff_max", rs.retry_backoff_max)
        .unwrap_or(DEFAULT_BACKOFF_MAX);
    if retry_backoff_max < retry_backoff_initial {
        errs.add(
            "router_settings.retry_backoff_max",
            "must not be less than router_settings.retry_backoff_initial",
        );
    }
    let routing_strategy = strategy(
        "router_settings.routing_strategy",
        rs.routing_strategy.as_deref(),
        errs,
    )
    .unwrap_or(Strategy::SimpleShuffle);
    let args = rs.routing_strategy_args.as_ref();
    let lowest_latency_buffer = args.and_then(|a| a.lowest_latency_buffer).unwrap_or(0.0);
    if !(lowest_latency_buffer.is_finite() && (0.0..=10.0).contains(&lowest_latency_buffer)) {
        errs.add(
            "router_settings.routing_strategy_args.lowest_latency_buffer",
            "must be a fraction from 0 to 10 (0.1 means within 10% of the fastest)",
        );
    }
    let latency_ttl = errs
        .positive(
            "router_settings.routing_strategy_args.ttl",
            args.and_then(|a| a.ttl),
        )
        .unwrap_or(DEFAULT_LATENCY_TTL);
    let hedge = hedge("router_settings", rs.hedge_after, rs.max_hedges, None, errs);
    let connect_timeout = errs
        .positive("router_settings.connect_timeout", rs.connect_timeout)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    RouterSettings {
        timeout,
        stream_timeout,
        stream_idle_timeout,
        stream_max_malformed_events,
        stream_recovery,
        max_fallbacks,
        num_retries,
        min_retry_wait: rs.retry_after.unwrap_or(Duration::ZERO),
        retry_backoff_initial,
        retry_backoff_max,
        // Test switches: a caller must not be able to make the router wait or answer for
        // nothing unless the config says so (the built-in demo config does).
        allow_mock_timeout: rs.allow_mock_timeout.unwrap_or(false),
        allow_mock_response: rs.allow_mock_response.unwrap_or(false),
        connect_timeout,
        routing_strategy,
        lowest_latency_buffer,
        latency_ttl,
        cooldowns: cooldown_policy(raw),
        hedge,
        retry_budget: retry_budget(raw, errs),
    }
}

fn stream_recovery(key: &str, value: Option<&str>, errs: &mut Errors) -> Option<StreamRecovery> {
    let value = value?;
    let parsed = StreamRecovery::parse(value);
    if parsed.is_none() {
        errs.add(
            key,
            format!("`{value}` is not a stream recovery; use none, continue or restart"),
        );
    }
    parsed
}

fn strategy(key: &str, value: Option<&str>, errs: &mut Errors) -> Option<Strategy> {
    let value = value?;
    let parsed = Strategy::parse(value);
    if parsed.is_none() {
        errs.add(
            key,
            format!(
                "`{value}` is not a routing strategy; supported: {}",
                Strategy::NAMES.join(", ")
            ),
        );
    }
    parsed
}

/// Hedging from `hedge_after` and `max_hedges` at `prefix`, over `inherited` (a group's
/// settings inherit the router's). `max_hedges: 0` turns hedging off.
fn hedge(
    prefix: &str,
    after: Option<Duration>,
    max: Option<u32>,
    inherited: Option<Hedge>,
    errs: &mut Errors,
) -> Option<Hedge> {
    let after = errs.positive(&format!("{prefix}.hedge_after"), after);
    if let Some(m) = max
        && m > MAX_HEDGES_LIMIT
    {
        errs.add(
            format!("{prefix}.max_hedges"),
            format!("must be at most {MAX_HEDGES_LIMIT}: each hedge adds load on a slow provider"),
        );
    }
    let after = after.or(inherited.map(|h| h.after))?;
    let max = max.or(inherited.map(|h| h.max)).unwrap_or(1);
    (max > 0).then_some(Hedge { after, max })
}

fn cooldown_policy(raw: &RawConfig) -> CooldownPolicy {
    let rs = &raw.router_settings;
    let mut per_kind = [None; FailKind::COUNT];
    if let Some(p) = &rs.allowed_fails_policy {
        for (kind, value) in [
            (FailKind::BadRequest, p.BadRequestErrorAllowedFails),
            (FailKind::Authentication, p.AuthenticationErrorAllowedFails),
            (FailKind::Timeout, p.TimeoutErrorAllowedFails),
            (FailKind::RateLimit, p.RateLimitErrorAllowedFails),
            (
                FailKind::ContentPolicy,
                p.ContentPolicyViolationErrorAllowedFails,
            ),
            (FailKind::InternalServer, p.InternalServerErrorAllowedFails),
        ] {
            per_kind[kind.index()] = value;
        }
    }
    CooldownPolicy {
        enabled: !rs.disable_cooldowns.unwrap_or(false),
        allowed_fails: rs.allowed_fails.unwrap_or(DEFAULT_ALLOWED_FAILS),
        per_kind,
        cooldown_time: rs.cooldown_time.unwrap_or(DEFAULT_COOLDOWN_TIME),
        max_hint: rs
            .max_cooldown_from_hint
            .unwrap_or(DEFAULT_MAX_COOLDOWN_FROM_HINT),
    }
}

fn retry_budget(raw: &RawConfig, errs: &mut Errors) -> Option<RetryBudget> {
    let b = raw.router_settings.retry_budget.as_ref();
    let max_tokens = b
        .and_then(|b| b.max_tokens)
        .unwrap_or(DEFAULT_BUDGET_MAX_TOKENS);
    let token_ratio = b
        .and_then(|b| b.token_ratio)
        .unwrap_or(DEFAULT_BUDGET_TOKEN_RATIO);
    if !(max_tokens.is_finite() && (0.0..=1000.0).contains(&max_tokens)) {
        errs.add(
            "router_settings.retry_budget.max_tokens",
            "must be a number from 0 (no budget) to 1000",
        );
    }
    if !(token_ratio.is_finite() && token_ratio > 0.0 && token_ratio <= 1.0) {
        errs.add(
            "router_settings.retry_budget.token_ratio",
            "must be a number greater than 0 and at most 1",
        );
    }
    (max_tokens > 0.0).then_some(RetryBudget {
        max_tokens,
        token_ratio,
    })
}

/// A group's own settings, over the router's.
#[derive(Clone, Copy)]
struct GroupSettings {
    strategy: Strategy,
    hedge: Option<Hedge>,
    stream_recovery: StreamRecovery,
}

/// `router_settings.model_group_settings`: each group's strategy, hedging and stream recovery,
/// over the router's.
fn group_settings(
    raw: &RawConfig,
    router: &RouterSettings,
    groups: &BTreeMap<String, Vec<Deployment>>,
    errs: &mut Errors,
) -> BTreeMap<String, GroupSettings> {
    let mut out = BTreeMap::new();
    let Some(map) = &raw.router_settings.model_group_settings else {
        return out;
    };
    for (name, settings) in map {
        let prefix = format!("router_settings.model_group_settings.{name}");
        if !groups.contains_key(name) {
            errs.add(&prefix, unknown_group(name, groups));
            continue;
        }
        let strategy = strategy(
            &format!("{prefix}.routing_strategy"),
            settings.routing_strategy.as_deref(),
            errs,
        )
        .unwrap_or(router.routing_strategy);
        let hedge = hedge(
            &prefix,
            settings.hedge_after,
            settings.max_hedges,
            router.hedge,
            errs,
        );
        let stream_recovery = stream_recovery(
            &format!("{prefix}.stream_recovery"),
            settings.stream_recovery.as_deref(),
            errs,
        )
        .unwrap_or(router.stream_recovery);
        out.insert(
            name.clone(),
            GroupSettings {
                strategy,
                hedge,
                stream_recovery,
            },
        );
    }
    out
}

/// simple-shuffle weights: explicit `weight`s, else every deployment's `rpm`, else every one's
/// `tpm` (as LiteLLM does), else equal. `weight` is 0 here when it was not set.
fn shuffle_weights(deps: &mut [Deployment]) {
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX).max(1);
    if deps.iter().all(|d| d.weight == 0) {
        if deps.iter().all(|d| d.rpm.is_some()) {
            for d in deps.iter_mut() {
                d.weight = clamp(u64::from(d.rpm.unwrap_or(1)));
            }
        } else if deps.iter().all(|d| d.tpm.is_some()) {
            for d in deps.iter_mut() {
                d.weight = clamp(d.tpm.unwrap_or(1));
            }
        }
    }
    for d in deps.iter_mut() {
        d.weight = d.weight.max(1);
    }
}

fn deployment(
    i: usize,
    d: &RawDeployment,
    position: usize,
    router: &RouterSettings,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> Option<Deployment> {
    let key = |k: &str| format!("model_list[{i}].{k}");
    let group = match d.model_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => {
            errs.add(
                key("model_name"),
                "is required: the group name clients send as `model`",
            );
            return None;
        }
    };
    let Some(params) = &d.litellm_params else {
        errs.add(key("litellm_params"), "is required");
        return None;
    };
    let Some((provider, upstream_model)) = params
        .model
        .as_deref()
        .and_then(|m| m.split_once('/'))
        .filter(|(p, m)| !p.is_empty() && !m.is_empty())
    else {
        errs.add(
            key("litellm_params.model"),
            "is required as `provider/model`, e.g. `openai/gpt-4o-mini` or `mock/fast`",
        );
        return None;
    };

    let timeout = errs
        .positive(&key("litellm_params.timeout"), params.timeout)
        .unwrap_or(router.timeout);
    if timeout > router.timeout {
        // Not an error: the call's total deadline caps it anyway. Worth saying, though.
        errs.warn(format!(
            "`{}` ({}) is longer than router_settings.timeout ({}), which caps it",
            key("litellm_params.timeout"),
            super::duration::display(timeout),
            super::duration::display(router.timeout)
        ));
    }
    let stream_timeout = errs
        .positive(&key("litellm_params.stream_timeout"), params.stream_timeout)
        .or(router.stream_timeout);
    let max_retries = params.max_retries.unwrap_or(router.num_retries);
    if max_retries > MAX_RETRIES_LIMIT {
        errs.add(
            key("litellm_params.max_retries"),
            format!("must be at most {MAX_RETRIES_LIMIT}"),
        );
    }
    // 0 stands for "not set" until the group's weights are settled (see shuffle_weights).
    let weight = params.weight.unwrap_or(0);
    if params.weight == Some(0) {
        errs.add(key("litellm_params.weight"), "must be at least 1");
    }
    for (value, name) in [
        (params.rpm.map(u64::from), "rpm"),
        (params.tpm, "tpm"),
        (
            params.max_parallel_requests.map(u64::from),
            "max_parallel_requests",
        ),
    ] {
        if value == Some(0) {
            errs.add(key(&format!("litellm_params.{name}")), "must be at least 1");
        }
    }

    // The mock continues any prefix of its own answer (see MockProvider).
    let mut prefill_by_default = true;
    let provider_config = if provider == "mock" {
        for (set, name) in [
            (params.api_base.is_some(), "api_base"),
            (params.api_key.is_some(), "api_key"),
            (params.api_version.is_some(), "api_version"),
            (params.organization.is_some(), "organization"),
            (params.extra_headers.is_some(), "extra_headers"),
        ] {
            if set {
                errs.add(
                    key(&format!("litellm_params.{name}")),
                    "mock deployments take no {name}".replace("{name}", name),
                );
            }
        }
        ProviderConfig::Mock(mock_spec(
            &key("litellm_params.mock"),
            params.mock.as_ref(),
            errs,
        ))
    } else {
        let Some(spec) = providers::lookup(provider) else {
            errs.add(
                key("litellm_params.model"),
                format!(
                    "unknown provider `{provider}`; supported: {}",
                    providers::prefixes()
                ),
            );
            return None;
        };
        if params.mock.is_some() {
            errs.add(
                key("litellm_params.mock"),
                "only mock/ deployments take a mock block",
            );
        }
        prefill_by_default = spec.assistant_prefill;
        ProviderConfig::Http(http_provider(spec, params, &key, lookup_env, errs))
    };

    let id = match d.model_info.id.as_deref().map(str::trim) {
        Some("") => {
            errs.add(key("model_info.id"), "must not be empty");
            return None;
        }
        Some(id) => id.to_string(),
        None => format!("{group}/{position}"),
    };

    Some(Deployment {
        id,
        group,
        provider: provider_config,
        upstream_model: upstream_model.to_string(),
        timeout,
        stream_timeout,
        max_retries,
        weight,
        rpm: params.rpm,
        tpm: params.tpm,
        max_parallel_requests: params.max_parallel_requests,
        cooldown_time: params
            .cooldown_time
            .unwrap_or(router.cooldowns.cooldown_time),
        supports_assistant_prefill: d
            .model_info
            .supports_assistant_prefill
            .unwrap_or(prefill_by_default),
    })
}

/// Resolves an HTTP provider's base URL, key, headers and provider-specific settings.
fn http_provider(
    spec: &'static ProviderSpec,
    params: &RawLitellmParams,
    key: &dyn Fn(&str) -> String,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> HttpProvider {
    let base_key = key("litellm_params.api_base");
    let from_env = || {
        spec.base_env
            .and_then(|var| lookup_env(var).filter(|v| !v.is_empty()))
    };
    let api_base = match params
        .api_base
        .as_deref()
        .map(str::to_string)
        .or_else(from_env)
    {
        Some(base) => base.trim_end_matches('/').to_string(),
        None => match spec.default_base {
            Some(base) => base.to_string(),
            None => {
                let hint = spec
                    .base_env
                    .map(|v| format!(" (or set {v})"))
                    .unwrap_or_default();
                errs.add(
                    &base_key,
                    format!("is required for {}/ deployments{hint}", spec.prefix),
                );
                String::new()
            }
        },
    };
    if !api_base.is_empty() {
        match reqwest::Url::parse(&api_base) {
            // A password in the URL would be shown wherever the base is (check-config, logs,
            // attempt details), and sent to whatever host the URL names.
            Ok(url) if !url.username().is_empty() || url.password().is_some() => errs.add(
                &base_key,
                "must not carry credentials (`user:password@host`): give the key as api_key (or os.environ/NAME), or in extra_headers",
            ),
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host().is_some()
                    && url.query().is_none() => {}
            // Not echoed when it may hold credentials.
            _ if api_base.contains('@') => {
                errs.add(&base_key, "is not an http(s) base URL")
            }
            _ => errs.add(
                &base_key,
                format!("`{api_base}` is not an http(s) base URL"),
            ),
        }
    }

    let key_key = key("litellm_params.api_key");
    let own_host = spec.default_base.is_none_or(|default| api_base == default);
    let api_key = match params.api_key.as_deref() {
        Some(value) => resolve_secret(value, &key_key, lookup_env, errs),
        None if own_host => spec
            .key_env
            .and_then(|var| lookup_env(var).filter(|v| !v.is_empty()))
            .map(Secret::new),
        None => None,
    };
    if api_key.is_none() && params.api_key.is_none() && own_host && spec.key_required {
        let hint = spec
            .key_env
            .map(|v| format!(", and {v} is not set in the environment"))
            .unwrap_or_default();
        errs.add(
            &key_key,
            format!("is required for {}/ deployments{hint}", spec.prefix),
        );
    }

    if params.api_version.is_some() && spec.wire != WireFormat::Azure {
        errs.add(
            key("litellm_params.api_version"),
            "only azure/ deployments take api_version",
        );
    }
    let api_version = (spec.wire == WireFormat::Azure).then(|| {
        params
            .api_version
            .clone()
            .or_else(|| lookup_env("AZURE_API_VERSION").filter(|v| !v.is_empty()))
            .unwrap_or_else(|| DEFAULT_AZURE_API_VERSION.to_string())
    });
    if params.organization.is_some() && spec.wire != WireFormat::OpenAi {
        errs.add(
            key("litellm_params.organization"),
            "only OpenAI-compatible deployments take organization",
        );
    }
    if params.max_tokens == Some(0) {
        errs.add(key("litellm_params.max_tokens"), "must be at least 1");
    }

    let mut extra_headers = Vec::new();
    for (name, value) in params.extra_headers.iter().flatten() {
        let here = key(&format!("litellm_params.extra_headers.{name}"));
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.add(&here, "is not a valid HTTP header name");
            continue;
        }
        if let Some(v) = resolve_secret(value, &here, lookup_env, errs) {
            if reqwest::header::HeaderValue::from_str(v.expose()).is_err() {
                errs.add(&here, "is not a valid HTTP header value");
            } else {
                extra_headers.push((name.to_ascii_lowercase(), v));
            }
        }
    }

    HttpProvider {
        prefix: spec.prefix,
        wire: spec.wire,
        api_base,
        api_key,
        organization: params.organization.clone(),
        api_version,
        extra_headers,
        default_max_tokens: params.max_tokens,
    }
}

/// A literal value, or `os.environ/NAME` read from the environment.
fn resolve_secret(
    value: &str,
    key: &str,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> Option<Secret> {
    match value.strip_prefix(ENV_SECRET_PREFIX) {
        Some(var) => match lookup_env(var) {
            Some(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                errs.add(key, format!("environment variable `{var}` is not set"));
                None
            }
        },
        None => Some(Secret::new(value.to_string())),
    }
}

fn mock_spec(key: &str, raw: Option<&RawMock>, errs: &mut Errors) -> MockSpec {
    let empty = RawMock::default();
    let m = raw.unwrap_or(&empty);
    let tokens_per_second = m.tokens_per_second.unwrap_or(200.0);
    // Bounded so that the per-token interval is a sane Duration.
    if !(tokens_per_second.is_finite() && (0.01..=1_000_000.0).contains(&tokens_per_second)) {
        errs.add(
            format!("{key}.tokens_per_second"),
            "must be a number from 0.01 to 1000000",
        );
    }
    let failure = m.failure.as_deref().and_then(|f| {
        let parsed = MockFailure::parse(f);
        if parsed.is_none() {
            errs.add(
                format!("{key}.failure"),
                format!("`{f}` is not one of: {}", MockFailure::NAMES.join(", ")),
            );
        }
        parsed
    });
    MockSpec {
        time_to_first_chunk: m.time_to_first_chunk.unwrap_or(Duration::from_millis(20)),
        tokens_per_second,
        text: m
            .text
            .clone()
            .unwrap_or_else(|| "This is a mock response from llm-router.".to_string()),
        failure,
    }
}

/// Merges LiteLLM's `[{group: [fallback, ...]}]` list into a map, checking every name.
fn fallback_map(
    list: Option<&[BTreeMap<String, Vec<String>>]>,
    key: &str,
    groups: &BTreeMap<String, Vec<Deployment>>,
    errs: &mut Errors,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (j, entry) in list.unwrap_or_default().iter().enumerate() {
        for (from, to) in entry {
            let here = format!("{key}[{j}].{from}");
            if !groups.contains_key(from) {
                errs.add(&here, unknown_group(from, groups));
            }
            if out.contains_key(from) {
                errs.add(&here, format!("fallbacks for `{from}` are given twice"));
            }
            for (k, name) in to.iter().enumerate() {
                if !groups.contains_key(name) {
                    errs.add(format!("{here}[{k}]"), unknown_group(name, groups));
                } else if name == from {
                    errs.add(format!("{here}[{k}]"), "a group cannot fall back to itself");
                }
            }
            out.insert(from.clone(), to.clone());
        }
    }
    out
}

fn unknown_group(name: &str, groups: &BTreeMap<String, Vec<Deployment>>) -> String {
    let known: Vec<&str> = groups.keys().map(String::as_str).collect();
    format!(
        "unknown model group `{name}`; known groups: {}",
        known.join(", ")
    )
}
