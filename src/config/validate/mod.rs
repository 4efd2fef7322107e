//! Turns the raw config into a [`Config`]: fills defaults, resolves `os.environ/` secrets and
//! checks every reference. All problems are collected, so one run reports them all.
//!
//! This file holds the defaults, the error collector, the whole config's assembly and server
//! settings; [`router`] the router's and groups' settings; [`chain`] where a group's calls go
//! next (fallback lists, retry policies, aliases); [`deployment`] each `model_list` entry and
//! its provider.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use super::{
    AzureSettings, Capabilities, Config, ConfigError, CooldownPolicy, CooldownRule, Cost,
    Deployment, FailKind, Family, Hedge, HttpProvider, IgnoredKey, KeyError, MockFailure, MockSpec,
    ModelGroup, OpenAiSettings, ProviderConfig, RetryBudget, RetryPolicy, RouterSettings, Secret,
    ServerSettings, SlowStream, Strategy, StreamRecovery, params,
    providers::{self, Api, DEFAULT_AZURE_API_VERSION, ProviderSpec, WireFormat},
    raw::{RawConfig, RawDeployment, RawLitellmParams, RawMock, RawRetryPolicy},
    why_ignored,
};

mod auth;
mod chain;
mod deployment;
mod router;
mod shared;
mod upstream;

use chain::{
    aliases, chosen, fallback_map, no_time_for_fallbacks, retry_policies, transitive_fallbacks,
};
use deployment::{Skipped, deployment};
use router::{GroupSettings, group_settings, router_divergences, router_settings};

const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// One or two unreadable events are a provider's hiccup; more are a broken stream.
const DEFAULT_MAX_MALFORMED_EVENTS: u32 = 3;
/// Request bytes in flight before their calls start, by default: four requests of the default
/// largest size, far under the chart's memory limit whatever the number of connections.
const DEFAULT_MAX_PENDING_REQUEST_BYTES: usize = 16 << 20;
const MAX_PENDING_REQUEST_BYTES_LIMIT: u64 = 1 << 30;
/// What a `continue` recovery keeps of a stream's text by default, and at most: a prefill well
/// under a request's default size, so that a continuation is a request like any other.
const DEFAULT_RECOVERY_MAX_BYTES: usize = 1 << 20;
const RECOVERY_MAX_BYTES_LIMIT: u64 = 16 << 20;
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
/// LiteLLM's defaults (`litellm.allowed_fails`, `DEFAULT_COOLDOWN_TIME_SECONDS`).
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

/// Problems (which reject the config), warnings (which do not), each naming its key, and the
/// keys accepted with no effect.
#[derive(Default)]
struct Errors(Vec<KeyError>, Vec<String>, Vec<IgnoredKey>);

impl Errors {
    fn warn(&mut self, message: String) {
        self.1.push(message);
    }

    fn ignore(&mut self, key: impl Into<String>, why: impl Into<String>) {
        self.2.push(IgnoredKey {
            key: key.into(),
            why: why.into(),
        });
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

/// A literal value, or `os.environ/NAME` read from the environment; an unset variable is an
/// error naming `key`.
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

/// The `litellm_params` keys llm-router reads.
const LITELLM_PARAMS: &[&str] = &[
    "model",
    "api_base",
    "api_key",
    "api_version",
    "organization",
    "timeout",
    "stream_timeout",
    "max_retries",
    "weight",
    "rpm",
    "tpm",
    "max_parallel_requests",
    "cooldown_time",
    "num_retries",
    "input_cost_per_token",
    "output_cost_per_token",
    "extra_headers",
    "max_tokens",
    "mock",
    "ssl_verify",
    "ssl_certificate",
    "ssl_certificate_key",
];

/// The known `litellm_params` key an unknown one is a typo of (at most two edits away).
fn litellm_param_typo(name: &str) -> Option<&'static str> {
    LITELLM_PARAMS
        .iter()
        .copied()
        .find(|known| edit_distance(name, known) <= 2)
}

/// Levenshtein distance, for short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

pub(super) fn validate(
    raw: RawConfig,
    unused_keys: Vec<String>,
    lookup_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut errs = Errors::default();

    for key in unused_keys {
        match why_ignored(&key) {
            Some(why) => errs.ignore(key, why),
            None => errs.add(key, "unknown key"),
        }
    }

    let server = server_settings(&raw, &mut errs);
    let router = router_settings(&raw, lookup_env, &mut errs);
    let members = model_list(&raw, &router, lookup_env, &mut errs);
    let lists = FallbackLists::read(&raw, &members, &mut errs);
    let group_settings = group_settings(&raw, &router, &members, &mut errs);
    let (every_group_retry_policy, retry_policies) = retry_policies(&raw, &members, &mut errs);
    let (aliases, hidden_aliases) = aliases(&raw, &members, &mut errs);
    let auth = auth::auth(&raw, &members, &aliases, lookup_env, &mut errs);
    let (otlp_endpoint, log_level) = telemetry(&raw, &mut errs);
    let shared_state = shared::shared_state(&raw, lookup_env, &mut errs);

    if !errs.0.is_empty() {
        return Err(ConfigError::Invalid(errs.0));
    }

    let mut refusals_end = Vec::new();
    let groups = members
        .into_iter()
        .map(|(name, deps)| {
            let settings = group_settings.get(&name).copied().unwrap_or(GroupSettings {
                strategy: router.routing_strategy,
                hedge: router.hedge,
                stream_recovery: router.stream_recovery,
                slow_stream: router.slow_stream,
            });
            let retry_policy = retry_policies
                .get(&name)
                .copied()
                .unwrap_or(every_group_retry_policy);
            let group = model_group(
                name,
                deps,
                settings,
                retry_policy,
                &lists,
                &router,
                &mut errs,
            );
            if group.content_policy_fallbacks.is_empty() && !group.fallbacks.is_empty() {
                refusals_end.push(group.name.clone());
            }
            (group.name.clone(), Arc::new(group))
        })
        .collect();
    let mut divergences = router_divergences(&router);
    if !refusals_end.is_empty() {
        divergences.push(format!(
            "a content-policy refusal in {} ends the call (CONTENT_POLICY_VIOLATION) instead of going to the group's fallbacks, which would likely refuse the same content; content_policy_fallbacks change that",
            refusals_end
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    Ok(Config {
        server,
        router,
        groups,
        ignored_keys: errs.2,
        divergences,
        aliases,
        hidden_aliases,
        warnings: errs.1,
        otlp_endpoint,
        log_level,
        auth,
        shared_state,
    })
}

/// `model_list`: each deployment validated, grouped by `model_name` in file order. Deployments
/// on providers llm-router cannot reach are refused, or skipped when their group has others.
fn model_list(
    raw: &RawConfig,
    router: &RouterSettings,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> BTreeMap<String, Vec<Deployment>> {
    let mut members: BTreeMap<String, Vec<Deployment>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let mut skipped = Vec::new();
    if raw.model_list.is_empty() {
        errs.add("model_list", "must list at least one deployment");
    }
    for (i, d) in raw.model_list.iter().enumerate() {
        let position = members
            .get(d.model_name.as_deref().unwrap_or(""))
            .map_or(0, Vec::len);
        if let Some(mut dep) = deployment(i, d, position, router, lookup_env, errs, &mut skipped) {
            if let Some(p) = &d.litellm_params {
                let keys = upstream::TlsKeys {
                    prefix: format!("model_list[{i}].litellm_params"),
                    verify: p.ssl_verify.as_ref(),
                    certificate: p.ssl_certificate.as_deref(),
                    certificate_key: p.ssl_certificate_key.as_deref(),
                };
                dep.tls = upstream::tls(keys, &router.tls, lookup_env, errs);
            }
            if !ids.insert(dep.id.clone()) {
                errs.add(
                    format!("model_list[{i}].model_info.id"),
                    format!("duplicate deployment id `{}`", dep.id),
                );
            }
            members.entry(dep.group.clone()).or_default().push(dep);
        }
    }
    for Skipped {
        index,
        group,
        reason,
    } in skipped
    {
        let at = format!("model_list[{index}].litellm_params.model");
        if members.contains_key(&group) {
            errs.warn(format!(
                "`{at}`: skipped, its group `{group}` has other deployments: {reason}"
            ));
        } else {
            errs.add(at, reason);
        }
    }
    members
}

/// The fallback lists, each from `router_settings`, else `litellm_settings`, as LiteLLM's
/// Router takes them.
struct FallbackLists {
    fallbacks: BTreeMap<String, Vec<String>>,
    context_window: BTreeMap<String, Vec<String>>,
    content_policy: BTreeMap<String, Vec<String>>,
    default: Vec<String>,
}

impl FallbackLists {
    fn read(
        raw: &RawConfig,
        members: &BTreeMap<String, Vec<Deployment>>,
        errs: &mut Errors,
    ) -> FallbackLists {
        let rs = &raw.router_settings;
        let ls = &raw.litellm_settings;
        let mut list = |router, litellm, name: &str| {
            let (list, key): (Option<&Vec<_>>, _) = chosen(router, litellm, name);
            fallback_map(list.map(Vec::as_slice), &key, members, errs)
        };
        let fallbacks = list(&rs.fallbacks, &ls.fallbacks, "fallbacks");
        let context_window = list(
            &rs.context_window_fallbacks,
            &ls.context_window_fallbacks,
            "context_window_fallbacks",
        );
        let content_policy = list(
            &rs.content_policy_fallbacks,
            &ls.content_policy_fallbacks,
            "content_policy_fallbacks",
        );
        let (default, default_key) = chosen(
            &rs.default_fallbacks,
            &ls.default_fallbacks,
            "default_fallbacks",
        );
        let default = default.cloned().unwrap_or_default();
        for (j, name) in default.iter().enumerate() {
            if !members.contains_key(name) {
                errs.add(format!("{default_key}[{j}]"), unknown_group(name, members));
            }
        }
        FallbackLists {
            fallbacks,
            context_window,
            content_policy,
            default,
        }
    }

    /// A group's own fallbacks: its entry in `fallbacks`, else `default_fallbacks` (less
    /// itself).
    fn own(&self, name: &str) -> Vec<String> {
        self.fallbacks.get(name).cloned().unwrap_or_else(|| {
            self.default
                .iter()
                .filter(|g| *g != name)
                .cloned()
                .collect()
        })
    }
}

/// One model group from its validated deployments and settings, with the warnings its
/// combination of them deserves.
fn model_group(
    name: String,
    mut deps: Vec<Deployment>,
    settings: GroupSettings,
    retry_policy: RetryPolicy,
    lists: &FallbackLists,
    router: &RouterSettings,
    errs: &mut Errors,
) -> ModelGroup {
    shuffle_weights(&mut deps);
    let alone = deps.len() == 1;
    for d in deps.iter_mut() {
        d.alone_in_group = alone;
    }
    let GroupSettings {
        strategy,
        hedge,
        stream_recovery,
        slow_stream,
    } = settings;
    if strategy == Strategy::UsageBased && deps.iter().all(|d| d.rpm.is_none() && d.tpm.is_none()) {
        errs.warn(format!(
            "model group `{name}` uses usage-based-routing but none of its deployments sets rpm or tpm: usage is balanced, no limit is enforced"
        ));
    }
    if strategy == Strategy::CostBased && deps.iter().any(|d| d.cost.is_none()) {
        errs.warn(format!(
            "model group `{name}` uses cost-based-routing but not all its deployments have a price (model_info.input_cost_per_token, output_cost_per_token): those without one are picked last"
        ));
    }
    let max = router.max_fallbacks as usize;
    let (chain, cut) = transitive_fallbacks(&name, &|n: &str| lists.own(n), max);
    if let Some(after) = cut {
        errs.warn(format!(
            "model group `{name}` has more fallbacks (its own and theirs) than router_settings.max_fallbacks ({max}): its chain is cut after `{after}`"
        ));
    }
    no_time_for_fallbacks(&name, &deps, &chain, &retry_policy, router, errs);
    ModelGroup {
        context_window_fallbacks: lists.context_window.get(&name).cloned().unwrap_or_default(),
        content_policy_fallbacks: lists.content_policy.get(&name).cloned().unwrap_or_default(),
        fallbacks: chain,
        deployments: deps.into_iter().map(Arc::new).collect(),
        name,
        strategy,
        hedge,
        retry_policy,
        stream_recovery,
        slow_stream,
    }
}

/// `telemetry`: the OTLP endpoint (http only) and the log filter.
fn telemetry(raw: &RawConfig, errs: &mut Errors) -> (Option<String>, String) {
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
    (otlp_endpoint, log_level)
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
    let max_pending_request_bytes = match s.max_pending_request_bytes {
        None => DEFAULT_MAX_PENDING_REQUEST_BYTES.max(max_request_bytes),
        Some(n) if n >= max_request_bytes as u64 && n <= MAX_PENDING_REQUEST_BYTES_LIMIT => {
            n as usize
        }
        Some(_) => {
            errs.add(
                "server.max_pending_request_bytes",
                format!(
                    "must be from server.max_request_bytes ({max_request_bytes}) to {MAX_PENDING_REQUEST_BYTES_LIMIT} (1 GiB): no request could arrive under less"
                ),
            );
            DEFAULT_MAX_PENDING_REQUEST_BYTES.max(max_request_bytes)
        }
    };
    let tls = s.tls.as_ref().and_then(|t| tls_settings(t, errs));
    ServerSettings {
        tls,
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
        max_pending_request_bytes,
        config_watch_interval: errs
            .positive("server.config_watch_interval", s.config_watch_interval)
            .unwrap_or(DEFAULT_CONFIG_WATCH_INTERVAL),
    }
}

/// `server.tls`: the files must be there and hold what they should; the server reads them
/// again whenever they change.
fn tls_settings(t: &super::raw::RawTls, errs: &mut Errors) -> Option<super::TlsSettings> {
    let path = |errs: &mut Errors, key: &str, v: &Option<String>, required: bool| match v
        .as_deref()
        .map(str::trim)
    {
        None | Some("") => {
            if required {
                errs.add(key, "is required with server.tls");
            }
            None
        }
        Some(p) => Some(std::path::PathBuf::from(p)),
    };
    let cert_file = path(errs, "server.tls.cert_file", &t.cert_file, true);
    let key_file = path(errs, "server.tls.key_file", &t.key_file, true);
    let client_ca_file = path(errs, "server.tls.client_ca_file", &t.client_ca_file, false);
    let client_auth_required = match t.client_auth.as_deref() {
        None | Some("required") => true,
        Some("optional") => false,
        Some(other) => {
            errs.add(
                "server.tls.client_auth",
                format!("`{other}` is not one of: required, optional"),
            );
            true
        }
    };
    if t.client_auth.is_some() && client_ca_file.is_none() {
        errs.add(
            "server.tls.client_auth",
            "needs server.tls.client_ca_file: client certificates are checked against it",
        );
    }
    let settings = super::TlsSettings {
        cert_file: cert_file?,
        key_file: key_file?,
        client_ca_file,
        client_auth_required,
        admin: t.admin.unwrap_or(false),
    };
    if let Err(e) = crate::listen::tls::ServerTls::load(&settings) {
        errs.add(e.key, e.message);
    }
    Some(settings)
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

fn unknown_group(name: &str, groups: &BTreeMap<String, Vec<Deployment>>) -> String {
    let known: Vec<&str> = groups.keys().map(String::as_str).collect();
    format!(
        "unknown model group `{name}`; known groups: {}",
        known.join(", ")
    )
}
