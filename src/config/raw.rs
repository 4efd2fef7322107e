//! The config file as written: LiteLLM's proxy config shape plus llm-router's own keys.
//! Everything is optional here; `validate` decides what is required and fills defaults, so
//! that every error can name the key it is about.

use serde::Deserialize;
use std::{collections::BTreeMap, time::Duration};

use super::duration::deserialize_opt as dur;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    #[serde(default)]
    pub model_list: Vec<RawDeployment>,
    #[serde(default)]
    pub router_settings: RawRouterSettings,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// LiteLLM's module-level settings. The routing keys among them are read, under
    /// `router_settings` in precedence; the rest are listed as not supported here.
    #[serde(default)]
    pub litellm_settings: RawLitellmSettings,
    /// How callers are recognised (llm-router's own).
    #[serde(default)]
    pub auth: RawAuth,
    /// Who may call and how much: LiteLLM's virtual-key fields, kept in the config.
    #[serde(default)]
    pub callers: Vec<RawCaller>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAuth {
    /// Refuse calls without a recognised caller (default false).
    pub required: Option<bool>,
    /// `open` (default) or `authenticated`: who may use server reflection.
    pub reflection: Option<String>,
    /// A header set by a proxy in front of the router that names the caller.
    pub trusted_header: Option<RawTrustedHeader>,
    /// The policy of proven identities that no caller lists.
    pub default: Option<RawCaller>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTrustedHeader {
    /// `x-forwarded-client-cert`, `l5d-client-id`, or another header's name.
    pub name: Option<String>,
    /// Addresses or CIDR ranges of the peers whose header is believed.
    pub trusted_peers: Option<Vec<String>>,
}

/// One caller (or, under `auth.default`, the policy without `name`, `identities`, `keys`).
#[derive(Debug, Default, Deserialize)]
pub struct RawCaller {
    pub name: Option<String>,
    /// SPIFFE ids, certificate names or trusted-header values that are this caller.
    pub identities: Option<Vec<String>>,
    /// `os.environ/NAME`, `file:PATH` or `sha256:HEX`.
    pub keys: Option<Vec<String>>,
    /// Model groups (or aliases) it may call; unset or empty for all.
    pub models: Option<Vec<String>>,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u32>,
    /// USD per `budget_duration`.
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    /// Request switches it may use.
    pub allow: Option<RawKnobs>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawKnobs {
    pub mock: Option<bool>,
    pub fallbacks: Option<bool>,
    pub max_num_retries: Option<u32>,
    pub stream_recovery: Option<bool>,
    pub hedging: Option<bool>,
}

/// The routing keys of LiteLLM's `litellm_settings`: each is the default for its
/// `router_settings` namesake (LiteLLM's Router reads `router_setting or litellm.setting`).
#[derive(Debug, Default, Deserialize)]
pub struct RawLitellmSettings {
    /// LiteLLM's per-attempt timeout (`litellm.request_timeout`): here too the default attempt
    /// limit of every deployment without `litellm_params.timeout`.
    #[serde(default, deserialize_with = "dur")]
    pub request_timeout: Option<Duration>,
    pub num_retries: Option<u32>,
    pub fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    pub context_window_fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    pub content_policy_fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    pub default_fallbacks: Option<Vec<String>>,
    pub allowed_fails: Option<u32>,
    #[serde(default, deserialize_with = "dur")]
    pub cooldown_time: Option<Duration>,
    /// LiteLLM's TLS settings toward every provider: `ssl_verify` (false, or a CA bundle),
    /// `ssl_certificate` (a client certificate), and llm-router's own `ssl_certificate_key`.
    pub ssl_verify: Option<RawSslVerify>,
    pub ssl_certificate: Option<String>,
    pub ssl_certificate_key: Option<String>,
}

/// `ssl_verify`: a switch, or the path of a PEM CA bundle. Text `true`/`false` (as an
/// environment override gives it) is the switch.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSslVerify {
    Switch(bool),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTelemetry {
    /// OTLP/gRPC endpoint for traces; the standard OTEL_EXPORTER_OTLP_* variables win over it.
    pub otlp_endpoint: Option<String>,
    /// Log filter when RUST_LOG is unset, e.g. `info` or `info,llm_router=debug`.
    pub log_level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawDeployment {
    pub model_name: Option<String>,
    pub litellm_params: Option<RawLitellmParams>,
    #[serde(default)]
    pub model_info: RawModelInfo,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLitellmParams {
    /// `provider/upstream-model`, e.g. `openai/gpt-4o-mini` or `mock/fast`.
    pub model: Option<String>,
    pub api_base: Option<String>,
    /// A literal key or `os.environ/NAME`.
    pub api_key: Option<String>,
    #[serde(default, deserialize_with = "dur")]
    pub timeout: Option<Duration>,
    #[serde(default, deserialize_with = "dur")]
    pub stream_timeout: Option<Duration>,
    pub max_retries: Option<u32>,
    /// LiteLLM's per-deployment retries: read as `max_retries` when that is unset.
    pub num_retries: Option<u32>,
    pub weight: Option<u32>,
    /// Azure OpenAI's `api-version` query parameter.
    pub api_version: Option<String>,
    /// OpenAI's `OpenAI-Organization` header.
    pub organization: Option<String>,
    /// Extra HTTP headers sent to the provider; values may be `os.environ/NAME`.
    pub extra_headers: Option<BTreeMap<String, String>>,
    /// Default `max_tokens` when the request gives none.
    pub max_tokens: Option<u32>,
    /// Behaviour of a `mock/` deployment.
    pub mock: Option<RawMock>,
    /// Requests per minute this deployment may take: a weight for simple-shuffle, a limit for
    /// usage-based-routing.
    pub rpm: Option<u32>,
    /// Tokens per minute, as `rpm`.
    pub tpm: Option<u64>,
    /// Attempts this deployment may have in flight at once; beyond it, it is skipped.
    pub max_parallel_requests: Option<u32>,
    /// This deployment's cooldown, overriding `router_settings.cooldown_time`.
    #[serde(default, deserialize_with = "dur")]
    pub cooldown_time: Option<Duration>,
    /// USD per prompt token (LiteLLM accepts the price here or under `model_info`).
    pub input_cost_per_token: Option<f64>,
    /// USD per completion token.
    pub output_cost_per_token: Option<f64>,
    /// TLS toward this deployment's provider, over `litellm_settings`' (see there).
    pub ssl_verify: Option<RawSslVerify>,
    pub ssl_certificate: Option<String>,
    pub ssl_certificate_key: Option<String>,
    /// Every other key: LiteLLM passes them to the provider (`extra_body`, `reasoning_effort`,
    /// `stop`, `thinking`, ...). Filled after parsing (see `config::parse_raw`, which keeps
    /// every other key's error path exact); sorted out by `validate`: sent where the wire
    /// format has the field, else listed as ignored.
    #[serde(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawModelInfo {
    pub id: Option<String>,
    /// LiteLLM's flag: the model continues an answer from a final assistant message (a
    /// prefill). Decides which deployments may continue a broken stream.
    pub supports_assistant_prefill: Option<bool>,
    /// LiteLLM's capability flags: a request that needs one skips deployments without it.
    pub supports_function_calling: Option<bool>,
    pub supports_vision: Option<bool>,
    pub supports_response_schema: Option<bool>,
    pub supports_reasoning: Option<bool>,
    /// The model's context window in prompt tokens: with `enable_pre_call_checks`, a prompt
    /// estimated larger skips the deployment.
    pub max_input_tokens: Option<u64>,
    /// USD per prompt token: the cost reported per call.
    pub input_cost_per_token: Option<f64>,
    /// USD per completion token.
    pub output_cost_per_token: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMock {
    /// Delay before the first chunk (streaming) or before the whole answer starts (unary).
    #[serde(default, deserialize_with = "dur")]
    pub time_to_first_chunk: Option<Duration>,
    /// Generation speed after the first chunk; one word counts as one token.
    pub tokens_per_second: Option<f64>,
    /// The text the mock answers with.
    pub text: Option<String>,
    /// A failure to simulate on every call: see `MockFailure`.
    pub failure: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRouterSettings {
    #[serde(default, deserialize_with = "dur")]
    pub timeout: Option<Duration>,
    #[serde(default, deserialize_with = "dur")]
    pub stream_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "dur")]
    pub stream_idle_timeout: Option<Duration>,
    /// Unreadable stream events skipped before a stream counts as broken (llm-router's own).
    pub stream_max_malformed_events: Option<u32>,
    /// How a committed stream that breaks recovers: `none`, `continue` or `restart`
    /// (llm-router's own).
    pub stream_recovery: Option<String>,
    /// The most text, in bytes, a `continue` recovery keeps of what a stream delivered, to
    /// send back as its prefill (llm-router's own).
    pub stream_recovery_max_bytes: Option<u64>,
    /// The slow-stream guard (llm-router's own): see `SlowStream`.
    pub stream_min_tokens_per_s: Option<f64>,
    #[serde(default, deserialize_with = "dur")]
    pub stream_min_tokens_window: Option<Duration>,
    #[serde(default, deserialize_with = "dur")]
    pub stream_min_tokens_grace: Option<Duration>,
    /// Fallback groups one call may try (LiteLLM's key and default, 5).
    pub max_fallbacks: Option<u32>,
    pub num_retries: Option<u32>,
    /// `[{group: [fallback, ...]}, ...]`, LiteLLM's list-of-single-key-maps shape.
    pub fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    pub default_fallbacks: Option<Vec<String>>,
    pub context_window_fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    pub content_policy_fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    /// Shortest wait before retrying the same deployment (LiteLLM's `retry_after`).
    #[serde(default, deserialize_with = "dur")]
    pub retry_after: Option<Duration>,
    /// First exponential backoff step; doubles per retry up to `retry_backoff_max`.
    #[serde(default, deserialize_with = "dur")]
    pub retry_backoff_initial: Option<Duration>,
    #[serde(default, deserialize_with = "dur")]
    pub retry_backoff_max: Option<Duration>,
    pub allow_mock_timeout: Option<bool>,
    /// Honour a request's `mock_response` (llm-router's own gate; default false).
    pub allow_mock_response: Option<bool>,
    pub routing_strategy: Option<String>,
    pub routing_strategy_args: Option<RawStrategyArgs>,
    /// Failures a deployment may have within a minute before it cools down.
    pub allowed_fails: Option<u32>,
    pub allowed_fails_policy: Option<RawAllowedFailsPolicy>,
    #[serde(default, deserialize_with = "dur")]
    pub cooldown_time: Option<Duration>,
    /// The longest a provider's wait hint (Retry-After, a rate limit reset) may cool a
    /// deployment (llm-router's own; default 5m).
    #[serde(default, deserialize_with = "dur")]
    pub max_cooldown_from_hint: Option<Duration>,
    pub disable_cooldowns: Option<bool>,
    /// Start a hedge when an attempt has no first chunk after this long. Off when unset.
    #[serde(default, deserialize_with = "dur")]
    pub hedge_after: Option<Duration>,
    pub max_hedges: Option<u32>,
    pub retry_budget: Option<RawRetryBudget>,
    /// Per model group overrides of the routing strategy and hedging.
    pub model_group_settings: Option<BTreeMap<String, RawGroupSettings>>,
    /// LiteLLM's retries per kind of failure, over `num_retries`.
    pub retry_policy: Option<RawRetryPolicy>,
    /// `retry_policy` per model group, over the router's.
    pub model_group_retry_policy: Option<BTreeMap<String, RawRetryPolicy>>,
    /// Other names a request may use for a group: `{alias: group}` or
    /// `{alias: {model: group, hidden: bool}}`.
    pub model_group_alias: Option<BTreeMap<String, RawAlias>>,
    /// The in-flight cap of deployments that set no `max_parallel_requests`, `rpm` or `tpm`.
    pub default_max_parallel_requests: Option<u32>,
    /// Skip deployments whose `model_info.max_input_tokens` the prompt exceeds.
    pub enable_pre_call_checks: Option<bool>,
    /// Time allowed to open a TCP/TLS connection to a provider, apart from the request deadline.
    #[serde(default, deserialize_with = "dur")]
    pub connect_timeout: Option<Duration>,
    /// llm-router's own: connections per origin (HTTP/1.1, and HTTP/2), and how long an idle
    /// one is kept.
    pub pool_max_connections: Option<u32>,
    pub pool_max_http2_connections: Option<u32>,
    #[serde(default, deserialize_with = "dur")]
    pub pool_idle_timeout: Option<Duration>,
    /// LiteLLM's Redis keys: where state shared by every replica is kept.
    pub redis_url: Option<String>,
    pub redis_host: Option<String>,
    /// A number, or text such as `os.environ/REDIS_PORT`.
    pub redis_port: Option<RawPort>,
    pub redis_password: Option<String>,
    /// llm-router's own: the key prefix, how often replicas sync, how long one exchange may
    /// take, and a CA bundle for `rediss://`.
    pub redis_namespace: Option<String>,
    #[serde(default, deserialize_with = "dur")]
    pub redis_sync_interval: Option<Duration>,
    #[serde(default, deserialize_with = "dur")]
    pub redis_timeout: Option<Duration>,
    pub redis_ca_file: Option<String>,
}

/// LiteLLM's `routing_strategy_args` (for latency-based-routing).
#[derive(Debug, Default, Deserialize)]
pub struct RawStrategyArgs {
    /// Pick at random among deployments within this fraction of the lowest latency.
    pub lowest_latency_buffer: Option<f64>,
    /// How long a latency sample counts.
    #[serde(default, deserialize_with = "dur")]
    pub ttl: Option<Duration>,
}

/// LiteLLM's `AllowedFailsPolicy`: failures allowed per minute, by kind of failure.
#[derive(Debug, Default, Deserialize)]
#[allow(non_snake_case)]
pub struct RawAllowedFailsPolicy {
    pub BadRequestErrorAllowedFails: Option<u32>,
    pub AuthenticationErrorAllowedFails: Option<u32>,
    pub TimeoutErrorAllowedFails: Option<u32>,
    pub RateLimitErrorAllowedFails: Option<u32>,
    pub ContentPolicyViolationErrorAllowedFails: Option<u32>,
    pub InternalServerErrorAllowedFails: Option<u32>,
}

/// LiteLLM's `RetryPolicy`: retries per kind of failure.
#[derive(Debug, Default, Deserialize, Clone)]
#[allow(non_snake_case)]
pub struct RawRetryPolicy {
    pub BadRequestErrorRetries: Option<u32>,
    pub AuthenticationErrorRetries: Option<u32>,
    pub TimeoutErrorRetries: Option<u32>,
    pub RateLimitErrorRetries: Option<u32>,
    pub ContentPolicyViolationErrorRetries: Option<u32>,
    pub InternalServerErrorRetries: Option<u32>,
}

/// One `model_group_alias` entry, in either of LiteLLM's two shapes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawAlias {
    Group(String),
    Entry {
        model: String,
        /// LiteLLM's: leave the alias out of model lists (ListModels' `aliases`).
        #[serde(default)]
        hidden: bool,
    },
}

/// Retry throttling per deployment in the manner of gRPC's (gRFC A6).
#[derive(Debug, Default, Deserialize)]
pub struct RawRetryBudget {
    pub max_tokens: Option<f64>,
    pub token_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawGroupSettings {
    pub routing_strategy: Option<String>,
    pub stream_recovery: Option<String>,
    /// The slow-stream guard (llm-router's own): see `SlowStream`.
    pub stream_min_tokens_per_s: Option<f64>,
    #[serde(default, deserialize_with = "dur")]
    pub stream_min_tokens_window: Option<Duration>,
    #[serde(default, deserialize_with = "dur")]
    pub stream_min_tokens_grace: Option<Duration>,
    #[serde(default, deserialize_with = "dur")]
    pub hedge_after: Option<Duration>,
    pub max_hedges: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    pub listen: Option<String>,
    /// The admin HTTP address, or `none` to turn the admin port off.
    pub admin_listen: Option<String>,
    #[serde(default, deserialize_with = "dur")]
    pub deadline_margin: Option<Duration>,
    #[serde(default, deserialize_with = "dur")]
    pub drain_period: Option<Duration>,
    #[serde(default, deserialize_with = "dur")]
    pub shutdown_grace: Option<Duration>,
    /// Calls in flight beyond which new calls are refused with RESOURCE_EXHAUSTED.
    pub max_concurrent_calls: Option<u32>,
    /// HTTP/2 concurrent streams per client connection.
    pub max_concurrent_streams: Option<u32>,
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: Option<u64>,
    /// Request bytes being received and not yet handed to a call, across all connections.
    pub max_pending_request_bytes: Option<u64>,
    /// How often the config file is checked for changes.
    #[serde(default, deserialize_with = "dur")]
    pub config_watch_interval: Option<Duration>,
    /// TLS on the gRPC port (llm-router's own).
    pub tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTls {
    /// PEM certificate chain, the server's first.
    pub cert_file: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
    /// PEM bundle of the CAs that sign client certificates: mTLS.
    pub client_ca_file: Option<String>,
    /// `required` (default with a client CA) or `optional`.
    pub client_auth: Option<String>,
    /// Serve the admin port over HTTPS with the same certificate.
    pub admin: Option<bool>,
}

/// A port as LiteLLM configs write it: a number, or text (`"6379"`, `os.environ/REDIS_PORT`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPort {
    Number(u64),
    Text(String),
}
