//! Configuration: loaded from YAML (the built-in default, or `--config FILE`) with
//! `LLMROUTER__SECTION__KEY` environment overrides, parsed into [`raw`] structs, then validated
//! into an immutable [`Config`] whose every reference has been checked.
//!
//! Errors name the key path (`model_list[2].litellm_params.timeout`) so a user can find it.
//!
//! This file holds the validated config's types. `load` reads and layers the text,
//! `validate` checks it, `ignored` lists the LiteLLM keys with no effect here, [`params`]
//! sorts a deployment's provider parameters, [`providers`] is the catalogue of prefixes, and
//! `table` prints the result for check-config.

pub mod auth;
pub mod duration;
mod ignored;
mod load;
pub mod params;
pub mod providers;
mod raw;
mod secret;
pub mod shared;
mod table;
pub mod upstream;
mod validate;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use ignored::why_ignored;
pub use ignored::{IGNORED_LITELLM_KEYS, IgnoredKey};
pub use load::{ConfigError, KeyError, Source};
pub use providers::OpenAiRules;
pub use secret::Secret;

/// The embedded default config, served by `llm-router` with no flags.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../../config/default.yaml");

/// Prefix of environment overrides: `LLMROUTER__ROUTER_SETTINGS__TIMEOUT=30s`.
pub const ENV_PREFIX: &str = "LLMROUTER";

/// A validated configuration. Immutable: the server holds it behind an `Arc` and never locks it.
#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub router: RouterSettings,
    /// Model groups by name.
    pub groups: BTreeMap<String, Arc<ModelGroup>>,
    /// Keys from the LiteLLM compatibility list that were present and ignored.
    pub ignored_keys: Vec<IgnoredKey>,
    /// Where this config means something other than it would in LiteLLM, one line each.
    pub divergences: Vec<String>,
    /// Other names for groups (`model_group_alias`), resolved by [`Config::group`].
    pub aliases: BTreeMap<String, String>,
    /// Aliases given with LiteLLM's `hidden: true`: usable, but not listed by ListModels.
    pub hidden_aliases: BTreeSet<String>,
    /// Settings that are valid but probably not what was meant, each naming its key.
    pub warnings: Vec<String>,
    /// OTLP endpoint for traces from the config (`telemetry.otlp_endpoint`).
    pub otlp_endpoint: Option<String>,
    /// Log filter when RUST_LOG is unset (`telemetry.log_level`, default `info`).
    pub log_level: String,
    /// Who may call and what each caller may use (`auth`, `callers`).
    pub auth: auth::Auth,
    /// Where state shared by every replica is kept (`router_settings.redis_*`); `None` when
    /// each replica keeps its own.
    pub shared_state: Option<shared::SharedState>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// TLS on the gRPC port (`server.tls`); plaintext when `None`.
    pub tls: Option<TlsSettings>,
    /// gRPC listen address. Default `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// Admin HTTP address (`/metrics`, `/healthz`, `/readyz`). Default `127.0.0.1:9090`;
    /// `none` turns it off.
    pub admin_listen: Option<SocketAddr>,
    /// Subtracted from the call's deadline so that our DEADLINE_EXCEEDED reaches the client
    /// before tonic's own grpc-timeout layer answers CANCELLED. Default 20ms.
    pub deadline_margin: Duration,
    /// After SIGTERM, how long new calls are still served (with health NOT_SERVING) before the
    /// server stops accepting. Default 0s; set it to cover the time a load balancer or mesh takes
    /// to stop routing to a draining instance.
    pub drain_period: Duration,
    /// After the drain period, how long in-flight calls may run before the server exits.
    /// Default 30s.
    pub shutdown_grace: Duration,
    /// Calls in flight (committed streams included) beyond which a new call is refused at once
    /// with RESOURCE_EXHAUSTED, never queued. Default 4096; validation always sets it.
    pub max_concurrent_calls: Option<u32>,
    /// HTTP/2 streams one client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// a client over it queues on its side. Default 1000.
    pub max_concurrent_streams: u32,
    /// Largest request message accepted; a larger one is answered RESOURCE_EXHAUSTED.
    /// Default 4 MiB.
    pub max_request_bytes: usize,
    /// Request bytes being received and not yet handed to a call, summed over every stream of
    /// every connection: a request whose bytes would go past it is answered
    /// RESOURCE_EXHAUSTED at once. Default 16 MiB; never below `max_request_bytes`.
    pub max_pending_request_bytes: usize,
    /// How often the config file is read to see whether it changed (SIGHUP reloads at once).
    /// Default 2s.
    pub config_watch_interval: Duration,
}

/// `server.tls`, defined beside the TLS code that reads it.
pub use crate::listen::tls::TlsSettings;

/// How a group chooses among its deployments (`routing_strategy`, LiteLLM's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Weighted random by `weight`, else `rpm`, else `tpm`.
    SimpleShuffle,
    /// Fewest attempts in flight; ties broken at random.
    LeastBusy,
    /// Lowest recent time to first chunk (streaming) or time per output token (unary).
    LatencyBased,
    /// Lowest usage this minute, never over a deployment's `rpm`/`tpm`.
    UsageBased,
    /// Lowest configured price per token (`input_cost_per_token` + `output_cost_per_token`).
    CostBased,
}

impl Strategy {
    pub const NAMES: &'static [&'static str] = &[
        "simple-shuffle",
        "least-busy",
        "latency-based-routing",
        "usage-based-routing",
        "cost-based-routing",
    ];

    pub fn parse(s: &str) -> Option<Strategy> {
        Some(match s {
            "simple-shuffle" => Strategy::SimpleShuffle,
            "least-busy" => Strategy::LeastBusy,
            "latency-based-routing" => Strategy::LatencyBased,
            // LiteLLM's v2 differs from v1 only in how it shares counts through Redis.
            "usage-based-routing" | "usage-based-routing-v2" => Strategy::UsageBased,
            "cost-based-routing" => Strategy::CostBased,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::SimpleShuffle => "simple-shuffle",
            Strategy::LeastBusy => "least-busy",
            Strategy::LatencyBased => "latency-based-routing",
            Strategy::UsageBased => "usage-based-routing",
            Strategy::CostBased => "cost-based-routing",
        }
    }
}

/// Kinds of failure as LiteLLM's `allowed_fails_policy` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    BadRequest,
    Authentication,
    Timeout,
    RateLimit,
    ContentPolicy,
    InternalServer,
}

impl FailKind {
    pub const COUNT: usize = 6;

    /// Every kind, in [`index`](Self::index) order.
    pub const ALL: [FailKind; FailKind::COUNT] = [
        FailKind::BadRequest,
        FailKind::Authentication,
        FailKind::Timeout,
        FailKind::RateLimit,
        FailKind::ContentPolicy,
        FailKind::InternalServer,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the request, not the deployment, is at fault: such failures only count towards
    /// a cooldown when `allowed_fails_policy` names them.
    pub fn is_request_fault(self) -> bool {
        matches!(self, FailKind::BadRequest | FailKind::ContentPolicy)
    }
}

/// When a failing deployment is stepped away from.
#[derive(Debug, Clone, Copy)]
pub struct CooldownPolicy {
    /// `disable_cooldowns: true` turns them off.
    pub enabled: bool,
    pub rule: CooldownRule,
    /// Under [`CooldownRule::FailureCount`]: failures allowed within a minute; one more cools
    /// the deployment. Default 3.
    pub allowed_fails: u32,
    /// Per-kind overrides from `allowed_fails_policy`, indexed by [`FailKind::index`].
    pub per_kind: [Option<u32>; FailKind::COUNT],
    /// Default 5s; a deployment's `cooldown_time` overrides it.
    pub cooldown_time: Duration,
    /// The longest a provider's wait hint may stretch a cooldown (`max_cooldown_from_hint`,
    /// default 5m): a `Retry-After` of a day must not take a deployment away for a day.
    pub max_hint: Duration,
}

/// Which rule cools a deployment, as in LiteLLM: a count when the config sets `allowed_fails`
/// or `allowed_fails_policy`, else the failure rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CooldownRule {
    /// More than `allowed_fails` (per kind: `allowed_fails_policy`) failures within a minute.
    FailureCount,
    /// LiteLLM's default: a rate limit in a group with other deployments; more than half of
    /// this minute's attempts failed, of at least 5 (never in a group of one); every one of
    /// at least 1000 failed; or a failure that says the deployment will not work (credentials).
    FailureRate,
}

/// [`CooldownRule::FailureRate`]'s thresholds, LiteLLM's constants.
pub const FAILURE_RATE_THRESHOLD: f64 = 0.5;
pub const FAILURE_RATE_MIN_ATTEMPTS: u32 = 5;
pub const ALL_FAILED_MIN_ATTEMPTS: u32 = 1000;

impl CooldownPolicy {
    /// Failures of this kind allowed per minute, or `None` when the kind never counts.
    /// Kinds without an override share one count against `allowed_fails`.
    pub fn allowed(&self, kind: FailKind) -> Option<u32> {
        match self.per_kind[kind.index()] {
            Some(n) => Some(n),
            None if kind.is_request_fault() => None,
            None => Some(self.allowed_fails),
        }
    }
}

/// How a committed stream that breaks recovers through the rest of its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRecovery {
    /// It does not: the stream ends with a status, as before commit it never would.
    None,
    /// The next deployment that can take an assistant prefill receives the conversation plus
    /// the text already delivered, and its deltas follow on.
    Continue,
    /// For callers that ask for it: a restart marker, then another deployment's whole answer;
    /// for the others, as `Continue`.
    Restart,
    /// For callers that ask for it: `Continue` where the deployment the walk reaches takes a
    /// prefill (and accepts it), else `Restart` on it; for the others, as `Continue`.
    ContinueOrRestart,
}

impl StreamRecovery {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => StreamRecovery::None,
            "continue" => StreamRecovery::Continue,
            "restart" => StreamRecovery::Restart,
            "continue_or_restart" => StreamRecovery::ContinueOrRestart,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            StreamRecovery::None => "none",
            StreamRecovery::Continue => "continue",
            StreamRecovery::Restart => "restart",
            StreamRecovery::ContinueOrRestart => "continue_or_restart",
        }
    }
}

/// The slow-stream guard: a committed stream that delivers fewer than `per_s` tokens a second
/// over `window` breaks (`ATTEMPT_OUTCOME_TOO_SLOW`), so that recovery can move it on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStream {
    /// `stream_min_tokens_per_s`: `None` (the default) or 0 when the guard is off.
    pub per_s: Option<f64>,
    /// `stream_min_tokens_window`: what the rate is measured over. Default 10s.
    pub window: Duration,
    /// `stream_min_tokens_grace`: how long after commit the stream is exempt, before its first
    /// window starts. Default 5s.
    pub grace: Duration,
}

impl SlowStream {
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
    /// Bounds of each key.
    pub const MAX_PER_S: f64 = 100_000.0;
    pub const MIN_WINDOW: Duration = Duration::from_secs(1);
    pub const MAX_WINDOW: Duration = Duration::from_secs(600);
    pub const MAX_GRACE: Duration = Duration::from_secs(600);

    pub const OFF: SlowStream = SlowStream {
        per_s: None,
        window: Self::DEFAULT_WINDOW,
        grace: Self::DEFAULT_GRACE,
    };

    /// The minimum rate, when the guard is on.
    pub fn min(&self) -> Option<f64> {
        self.per_s.filter(|r| *r > 0.0)
    }

    /// For check-config: "off", or the rule in its keys' words.
    pub fn describe(&self) -> String {
        match self.min() {
            None => "off".into(),
            Some(r) => format!(
                "at least {r} tokens/s over {} from {} after commit",
                duration::display(self.window),
                duration::display(self.grace)
            ),
        }
    }
}

/// Hedged attempts: a race against the tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hedge {
    /// Start another attempt when the running ones have no first chunk after this long.
    pub after: Duration,
    /// Extra attempts at most.
    pub max: u32,
}

/// gRFC A6 retry throttling, one bucket per deployment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub max_tokens: f64,
    pub token_ratio: f64,
}

#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Upper bound on a whole call (`router_settings.timeout`). Default 600s. LiteLLM gives
    /// each attempt this long; here it bounds the whole chain.
    pub timeout: Duration,
    /// The attempt limit of deployments without `litellm_params.timeout`
    /// (`litellm_settings.request_timeout`, LiteLLM's per-attempt timeout); else `timeout`.
    pub attempt_timeout: Option<Duration>,
    /// The in-flight cap of deployments with neither `max_parallel_requests`, `rpm` nor `tpm`
    /// (LiteLLM's `default_max_parallel_requests`). Default none.
    pub default_max_parallel_requests: Option<u32>,
    /// `enable_pre_call_checks`: skip a deployment whose `model_info.max_input_tokens` is
    /// below the prompt's estimated size. Default false.
    pub pre_call_checks: bool,
    /// First-chunk deadline for streamed attempts when neither request nor deployment set one.
    pub stream_timeout: Option<Duration>,
    /// Longest silence between chunks once a stream has committed. Default 30s.
    pub stream_idle_timeout: Duration,
    /// Unreadable events a provider stream may send (each skipped and counted) before the
    /// stream counts as broken. Default 3.
    pub stream_max_malformed_events: u32,
    /// How committed streams recover when they break; groups may override it. Default none.
    pub stream_recovery: StreamRecovery,
    /// The most delivered text a `continue` recovery keeps, in bytes, to send back as the
    /// continuation's prefill: past it a stream recovers only by restart. Default 1 MiB.
    pub stream_recovery_max_bytes: usize,
    /// The slow-stream guard for groups that set none; off by default.
    pub slow_stream: SlowStream,
    /// Fallback groups one call may try after the requested one (LiteLLM's `max_fallbacks`,
    /// default 5): a request's `fallbacks` may name no more, a configured chain is cut there.
    pub max_fallbacks: u32,
    /// Retries per group after the first attempt, when neither request nor deployment set one.
    pub num_retries: u32,
    /// Shortest wait before retrying a deployment that just failed (the YAML key
    /// `retry_after`). Default 0.
    pub min_retry_wait: Duration,
    pub retry_backoff_initial: Duration,
    pub retry_backoff_max: Duration,
    /// Honour a request's `mock_timeout` (default false: a test switch, off in production).
    pub allow_mock_timeout: bool,
    /// Honour a request's `mock_response` (default false, likewise).
    pub allow_mock_response: bool,
    pub connect_timeout: Duration,
    /// Connections to providers per origin, and how long an idle one is kept
    /// (`router_settings.pool_*`).
    pub pool: upstream::PoolSettings,
    /// TLS toward providers of deployments that set none of their own (`litellm_settings`'
    /// `ssl_verify`, `ssl_certificate`, `ssl_certificate_key`).
    pub tls: Arc<upstream::UpstreamTls>,
    /// The default strategy; `model_group_settings` may override it per group.
    pub routing_strategy: Strategy,
    /// latency-based-routing picks at random among deployments within this fraction of the
    /// lowest latency (`routing_strategy_args.lowest_latency_buffer`). Default 0.
    pub lowest_latency_buffer: f64,
    /// How long a latency sample counts (`routing_strategy_args.ttl`). Default 5m.
    pub latency_ttl: Duration,
    pub cooldowns: CooldownPolicy,
    /// Default hedging for groups; off unless `hedge_after` is set.
    pub hedge: Option<Hedge>,
    /// `None` when `retry_budget.max_tokens` is 0.
    pub retry_budget: Option<RetryBudget>,
}

/// A named set of interchangeable deployments, with where to go when they all fail.
#[derive(Debug)]
pub struct ModelGroup {
    pub name: String,
    pub deployments: Vec<Arc<Deployment>>,
    /// `router_settings.fallbacks` for this group, else `default_fallbacks` (minus itself).
    pub fallbacks: Vec<String>,
    pub context_window_fallbacks: Vec<String>,
    /// Groups tried when a provider refuses the content on policy grounds.
    pub content_policy_fallbacks: Vec<String>,
    pub strategy: Strategy,
    pub hedge: Option<Hedge>,
    /// Retries per kind of failure (`model_group_retry_policy.<group>`, else `retry_policy`),
    /// over the deployments' `max_retries`.
    pub retry_policy: RetryPolicy,
    /// How a committed stream of this group recovers when it breaks
    /// (`model_group_settings.<group>.stream_recovery`, else `router_settings.stream_recovery`).
    pub stream_recovery: StreamRecovery,
    /// The slow-stream guard of this group's committed streams
    /// (`model_group_settings.<group>.stream_min_tokens_*`, else `router_settings`'s).
    pub slow_stream: SlowStream,
}

/// One provider endpoint of a model group.
#[derive(Debug)]
pub struct Deployment {
    pub id: String,
    pub group: String,
    pub provider: ProviderConfig,
    /// The model name sent to the provider (the part after `provider/`).
    pub upstream_model: String,
    /// Per-attempt deadline (`litellm_params.timeout`, else the router's timeout).
    pub timeout: Duration,
    /// First-chunk deadline for streamed attempts, if any applies.
    pub stream_timeout: Option<Duration>,
    /// Retries after the first attempt in this deployment's group.
    pub max_retries: u32,
    /// Weight for simple-shuffle: `weight`, else (when no deployment of the group sets one and
    /// all set it) `rpm`, else `tpm`, else 1.
    pub weight: u32,
    /// Requests per minute: a limit under usage-based-routing.
    pub rpm: Option<u32>,
    /// Tokens per minute: a limit under usage-based-routing.
    pub tpm: Option<u64>,
    /// Attempts in flight at once; at the limit the deployment is skipped.
    pub max_parallel_requests: Option<u32>,
    /// How long the deployment is skipped once it has failed too often.
    pub cooldown_time: Duration,
    /// Whether it continues an answer from a final assistant message
    /// (`model_info.supports_assistant_prefill`, else its provider family's default).
    pub supports_assistant_prefill: bool,
    /// The model's context window in prompt tokens (`model_info.max_input_tokens`), checked
    /// before an attempt when `enable_pre_call_checks` is on.
    pub max_input_tokens: Option<u64>,
    /// Its price, when the config gives one: the cost reported per call.
    pub cost: Option<Cost>,
    /// It is its group's only deployment: the failure-rate cooldown rule spares it, as
    /// LiteLLM does (cooling it would fail every call the group gets).
    pub alone_in_group: bool,
    /// What it can be asked beyond plain chat (`model_info.supports_*`, else its provider's
    /// and model's defaults).
    pub capabilities: Capabilities,
    /// TLS toward its provider (`litellm_params.ssl_*`, else `litellm_settings`').
    pub tls: Arc<upstream::UpstreamTls>,
}

/// A deployment's capabilities, by LiteLLM's `model_info` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `supports_function_calling`: tools.
    pub function_calling: bool,
    /// `supports_vision`: images in messages.
    pub vision: bool,
    /// `supports_response_schema`: JSON answers (a JSON object, or JSON matching a schema).
    pub response_schema: bool,
    /// `supports_reasoning`: a reasoning effort or thinking budget.
    pub reasoning: bool,
    /// Images given by URL, which the provider fetches: not Gemini, which takes only its own
    /// file URIs (llm-router never fetches a URL for it). Not a config key.
    pub image_urls: bool,
}

/// A deployment's price in USD per token (LiteLLM's `input_cost_per_token` and
/// `output_cost_per_token`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub input: f64,
    pub output: f64,
}

impl Cost {
    pub fn of(&self, prompt_tokens: u32, completion_tokens: u32) -> f64 {
        self.input * f64::from(prompt_tokens) + self.output * f64::from(completion_tokens)
    }
}

/// LiteLLM's `RetryPolicy`: how many retries a group makes after a failure of each kind,
/// indexed by [`FailKind::index`]; `None` leaves it to `max_retries`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryPolicy(pub [Option<u32>; FailKind::COUNT]);

impl RetryPolicy {
    pub fn retries(&self, kind: FailKind) -> Option<u32> {
        self.0[kind.index()]
    }
}

#[derive(Debug, Clone)]
pub enum ProviderConfig {
    Mock(MockSpec),
    Http(HttpProvider),
}

/// A provider reached over HTTP.
#[derive(Debug, Clone)]
pub struct HttpProvider {
    /// The prefix as configured (`groq`, `azure`, ...).
    pub prefix: &'static str,
    /// The API's own settings, which say where requests go and how they are proven.
    pub family: Family,
    /// Base URL without a trailing slash.
    pub api_base: String,
    pub api_key: Option<Secret>,
    /// Sent on every request, after (and so replacing) the provider's own headers. Values are
    /// secrets: they often carry credentials.
    pub extra_headers: Vec<(String, Secret)>,
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: Option<u32>,
    /// Fields every request body starts from, where the request left them out: the
    /// deployment's extra `litellm_params` in the wire format's names (see [`params`]).
    pub body_defaults: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// The settings one provider API takes and no other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Family {
    OpenAi(OpenAiSettings),
    Azure(AzureSettings),
    Anthropic,
    Gemini,
}

/// OpenAI and the OpenAI-compatible hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenAiSettings {
    /// Sent as the `openai-organization` header.
    pub organization: Option<String>,
}

/// Azure OpenAI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSettings {
    /// The `api-version` query parameter.
    pub api_version: String,
}

impl Family {
    pub fn api(&self) -> providers::Api {
        match self {
            Family::OpenAi(_) => providers::Api::OpenAi,
            Family::Azure(_) => providers::Api::Azure,
            Family::Anthropic => providers::Api::Anthropic,
            Family::Gemini => providers::Api::Gemini,
        }
    }

    pub fn wire(&self) -> providers::WireFormat {
        self.api().wire()
    }
}

impl ProviderConfig {
    pub fn name(&self) -> &'static str {
        match self {
            ProviderConfig::Mock(_) => "mock",
            ProviderConfig::Http(h) => h.prefix,
        }
    }

    pub fn api_base(&self) -> &str {
        match self {
            ProviderConfig::Mock(_) => "",
            ProviderConfig::Http(h) => &h.api_base,
        }
    }
}

/// Behaviour of a built-in `mock/` deployment.
#[derive(Debug, Clone)]
pub struct MockSpec {
    pub time_to_first_chunk: Duration,
    pub tokens_per_second: f64,
    pub text: String,
    pub failure: Option<MockFailure>,
}

/// Failures a mock deployment can simulate on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockFailure {
    /// Never answers.
    Hang,
    /// Answers as a 429 with a 1s Retry-After.
    RateLimit,
    /// Answers as a 503.
    ServerError,
    /// Fails as if the host refused the connection.
    ConnectError,
    /// Answers as a 401.
    AuthError,
    /// Answers as a 400.
    BadRequest,
    /// Answers as a 400 context-window error.
    ContextWindow,
    /// Sends one chunk, then goes silent (streaming) or never finishes (unary).
    StallAfterFirstChunk,
}

impl MockFailure {
    pub const NAMES: &'static [&'static str] = &[
        "hang",
        "rate_limit",
        "server_error",
        "connect_error",
        "auth_error",
        "bad_request",
        "context_window",
        "stall_after_first_chunk",
    ];

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "hang" => MockFailure::Hang,
            "rate_limit" => MockFailure::RateLimit,
            "server_error" => MockFailure::ServerError,
            "connect_error" => MockFailure::ConnectError,
            "auth_error" => MockFailure::AuthError,
            "bad_request" => MockFailure::BadRequest,
            "context_window" => MockFailure::ContextWindow,
            "stall_after_first_chunk" => MockFailure::StallAfterFirstChunk,
            _ => return None,
        })
    }
}

impl Config {
    /// The group a request's `model` (or fallback) names: a group, or an alias of one.
    pub fn group(&self, name: &str) -> Option<&Arc<ModelGroup>> {
        self.groups
            .get(name)
            .or_else(|| self.groups.get(self.aliases.get(name)?))
    }

    /// Group names, sorted, for error messages.
    pub fn group_names(&self) -> Vec<&str> {
        self.groups.keys().map(String::as_str).collect()
    }
}
