//! Prometheus metrics. Label values come only from the config (model groups, deployment ids)
//! and from fixed sets (RPC names, outcomes, gRPC codes), never from what a caller sends, so the
//! number of series stays bounded: a request for an unknown model counts under `unknown`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use std::borrow::Cow;

use crate::proto::{AttemptOutcome, Usage};

/// The model group label for requests naming no configured group.
pub const UNKNOWN_GROUP: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    rpc: &'static str,
    model_group: String,
    /// The caller's config name, `unauthenticated` or `unknown`: bounded by the config.
    caller: Cow<'static, str>,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallDurationLabels {
    rpc: &'static str,
    model_group: String,
    /// The deployment that answered, `none` when the call failed.
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    model_group: String,
    deployment: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    model_group: String,
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    model_group: String,
    deployment: String,
    caller: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    deployment: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecoveryLabels {
    model_group: String,
    mode: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 5ms to about 80s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Output rate buckets from a quarter of a token a second to about 1000, doubling.
fn rate_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.25, 2.0, 13))
}

/// Every metric llm-router exports. One per server; tests get their own.
pub struct Metrics {
    registry: Registry,
    /// The connections to providers.
    pub upstream: super::upstream::UpstreamMetrics,
    calls: Family<CallLabels, Counter>,
    call_duration: HistogramFamily<CallDurationLabels>,
    attempts: Family<AttemptLabels, Counter>,
    retries: Family<DeploymentLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
    time_to_first_chunk: HistogramFamily<DeploymentLabels>,
    stream_rate: HistogramFamily<AttemptLabels>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<CostLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    in_flight: Family<RpcLabels, Gauge>,
    streams_open: Gauge,
    hedges: Family<DeploymentLabels, Counter>,
    stream_events_skipped: Family<DeploymentLabels, Counter>,
    stream_recoveries: Family<RecoveryLabels, Counter>,
    cooldowns: Family<DeploymentLabels, Counter>,
    cooldown_until: Family<DeploymentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    shed: Family<RpcLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    accept_errors: Family<PortLabels, Counter>,
    shared_state_errors: Family<SharedErrorLabels, Counter>,
    shared_state_up: Gauge,
    shared_state_syncs: Counter,
    /// What /healthz says of the shared store: `None` when there is none.
    shared_state_detail: std::sync::Mutex<Option<String>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SharedErrorLabels {
    /// `timeout`, `connection` or `reply`.
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("llmrouter");
        let calls = Family::default();
        registry.register(
            "calls",
            "Finished calls by RPC, model group and final gRPC code",
            calls.clone(),
        );
        let call_duration: HistogramFamily<CallDurationLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "call_duration_seconds",
            "Whole-call latency, from request to last message, by model group and answering deployment",
            call_duration.clone(),
        );
        let attempts = Family::default();
        registry.register(
            "attempts",
            "Attempts by deployment and outcome",
            attempts.clone(),
        );
        let retries = Family::default();
        registry.register(
            "retries",
            "Attempts after the first in a model group",
            retries.clone(),
        );
        let fallbacks = Family::default();
        registry.register(
            "fallbacks",
            "Moves along a fallback chain, from one model group to the next",
            fallbacks.clone(),
        );
        let time_to_first_chunk: HistogramFamily<DeploymentLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "time_to_first_chunk_seconds",
            "Streamed attempts' time from start to first content chunk",
            time_to_first_chunk.clone(),
        );
        let stream_rate: HistogramFamily<AttemptLabels> =
            Family::new_with_constructor(rate_histogram);
        registry.register(
            "stream_tokens_per_second",
            "Committed streams' output rate when their attempt ended (estimated at 4 bytes a token, over the slow-stream guard's window where there is one, else since commit), by how the attempt ended; streams committed for less than a second are not counted",
            stream_rate.clone(),
        );
        let tokens = Family::default();
        registry.register(
            "tokens",
            "Tokens in (prompt) and out (completion) by deployment, as providers report them",
            tokens.clone(),
        );
        let cost = Family::default();
        registry.register(
            "cost_usd",
            "What answers cost in US dollars, by model group and deployment: the tokens providers reported at the deployment's input_cost_per_token and output_cost_per_token (deployments without a price are not counted)",
            cost.clone(),
        );
        let in_flight = Family::default();
        registry.register(
            "calls_in_flight",
            "Calls being served, streams included",
            in_flight.clone(),
        );
        let streams_open = Gauge::default();
        registry.register(
            "streams_open",
            "Committed streams being forwarded to clients",
            streams_open.clone(),
        );
        let hedges = Family::default();
        registry.register(
            "hedges",
            "Hedged attempts started, by the deployment they went to",
            hedges.clone(),
        );
        let stream_events_skipped = Family::default();
        registry.register(
            "stream_events_skipped",
            "Unreadable events in providers' streams, skipped (up to router_settings.stream_max_malformed_events per attempt)",
            stream_events_skipped.clone(),
        );
        let stream_recoveries = Family::default();
        registry.register(
            "stream_recoveries",
            "Committed streams that broke and were recovered through their chain, by the group whose stream broke, mode (continue, restart) and result (recovered, failed)",
            stream_recoveries.clone(),
        );
        let cooldowns = Family::default();
        registry.register(
            "cooldowns",
            "Times a deployment entered (or extended) a cooldown",
            cooldowns.clone(),
        );
        let cooldown_until = Family::default();
        registry.register(
            "deployment_cooldown_until_seconds",
            "When the deployment's latest cooldown ends, as a Unix time: it is cooling while this is later than time()",
            cooldown_until.clone(),
        );
        let shed = Family::default();
        registry.register(
            "calls_shed",
            "Calls refused at server.max_concurrent_calls",
            shed.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "config_reloads",
            "Config reloads by result: applied, or rejected (the previous config kept serving)",
            reloads.clone(),
        );
        let accept_errors = Family::default();
        registry.register(
            "accept_errors",
            "Connections a port failed to accept (out of file descriptors, buffers or memory), by port: grpc or admin",
            accept_errors.clone(),
        );
        let shared_state_errors = Family::default();
        registry.register(
            "shared_state_errors",
            "Exchanges with the shared store (router_settings.redis_*) that failed, by kind (timeout, connection, reply): the replica went on with its own state for that interval",
            shared_state_errors.clone(),
        );
        let shared_state_up = Gauge::default();
        registry.register(
            "shared_state_up",
            "1 while the last exchange with the shared store succeeded, 0 while this replica counts alone (and when no store is configured)",
            shared_state_up.clone(),
        );
        let shared_state_syncs = Counter::default();
        registry.register(
            "shared_state_syncs",
            "Exchanges with the shared store that succeeded",
            shared_state_syncs.clone(),
        );
        let upstream = super::upstream::UpstreamMetrics::register(&mut registry);
        Metrics {
            upstream,
            shared_state_errors,
            shared_state_up,
            shared_state_syncs,
            shared_state_detail: std::sync::Mutex::new(None),
            accept_errors,
            hedges,
            stream_events_skipped,
            stream_recoveries,
            cooldowns,
            cooldown_until,
            shed,
            reloads,
            registry,
            calls,
            call_duration,
            attempts,
            retries,
            fallbacks,
            time_to_first_chunk,
            stream_rate,
            tokens,
            cost,
            in_flight,
            streams_open,
        }
    }

    /// An exchange with the shared store succeeded.
    pub fn shared_state_synced(&self) {
        self.shared_state_syncs.inc();
        self.shared_state_up.set(1);
    }

    /// An exchange with the shared store failed: `kind` is `timeout`, `connection` or `reply`.
    pub fn shared_state_error(&self, kind: &'static str) {
        self.shared_state_errors
            .get_or_create(&SharedErrorLabels { kind })
            .inc();
        self.shared_state_up.set(0);
    }

    /// What /healthz says of the shared store (one line, no credentials).
    pub fn set_shared_state_detail(&self, detail: String) {
        *self
            .shared_state_detail
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(detail);
    }

    pub fn shared_state_detail(&self) -> Option<String> {
        self.shared_state_detail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn call_finished(
        &self,
        rpc: &'static str,
        group: &str,
        caller: Cow<'static, str>,
        deployment: Option<&str>,
        code: tonic::Code,
        secs: f64,
    ) {
        self.calls
            .get_or_create(&CallLabels {
                rpc,
                model_group: group.to_string(),
                caller,
                code: code_name(code),
            })
            .inc();
        self.call_duration
            .get_or_create(&CallDurationLabels {
                rpc,
                model_group: group.to_string(),
                deployment: deployment.unwrap_or("none").to_string(),
            })
            .observe(secs);
    }

    pub fn attempt(&self, group: &str, deployment: &str, outcome: AttemptOutcome) {
        self.attempts
            .get_or_create(&AttemptLabels {
                model_group: group.to_string(),
                deployment: deployment.to_string(),
                outcome: outcome_name(outcome),
            })
            .inc();
    }

    pub fn retry(&self, group: &str, deployment: &str) {
        self.retries
            .get_or_create(&deployment_labels(group, deployment))
            .inc();
    }

    pub fn fallback(&self, from: &str, to: &str) {
        self.fallbacks
            .get_or_create(&FallbackLabels {
                from: from.to_string(),
                to: to.to_string(),
            })
            .inc();
    }

    pub fn first_chunk(&self, group: &str, deployment: &str, secs: f64) {
        self.time_to_first_chunk
            .get_or_create(&deployment_labels(group, deployment))
            .observe(secs);
    }

    /// A committed stream's output rate, in tokens a second, when its attempt ended `outcome`.
    pub fn stream_rate(&self, group: &str, deployment: &str, outcome: AttemptOutcome, rate: f64) {
        self.stream_rate
            .get_or_create(&AttemptLabels {
                model_group: group.to_string(),
                deployment: deployment.to_string(),
                outcome: outcome_name(outcome),
            })
            .observe(rate);
    }

    /// Counts an answer's tokens, and its cost (by caller) when it has one.
    pub fn tokens(&self, group: &str, deployment: &str, caller: Cow<'static, str>, usage: &Usage) {
        if let Some(cost) = usage.cost_usd {
            self.cost
                .get_or_create(&CostLabels {
                    model_group: group.to_string(),
                    deployment: deployment.to_string(),
                    caller,
                })
                .inc_by(cost);
        }
        for (direction, n) in [
            ("input", usage.prompt_tokens),
            ("output", usage.completion_tokens),
        ] {
            self.tokens
                .get_or_create(&TokenLabels {
                    deployment: deployment.to_string(),
                    direction,
                })
                .inc_by(u64::from(n));
        }
    }

    /// Counts a call as in flight until the guard drops.
    pub fn in_flight(&self, rpc: &'static str) -> GaugeGuard {
        GaugeGuard::new(self.in_flight.get_or_create(&RpcLabels { rpc }).clone())
    }

    pub fn hedge(&self, group: &str, deployment: &str) {
        self.hedges
            .get_or_create(&deployment_labels(group, deployment))
            .inc();
    }

    /// Counts unreadable stream events a deployment sent, skipped.
    pub fn stream_events_skipped(&self, group: &str, deployment: &str, n: u32) {
        self.stream_events_skipped
            .get_or_create(&deployment_labels(group, deployment))
            .inc_by(u64::from(n));
    }

    /// Counts a committed stream's recovery by its result.
    pub fn stream_recovery(&self, group: &str, mode: &'static str, result: &'static str) {
        self.stream_recoveries
            .get_or_create(&RecoveryLabels {
                model_group: group.to_string(),
                mode,
                result,
            })
            .inc();
    }

    /// Counts a cooldown and records when it ends.
    pub fn cooldown(&self, group: &str, deployment: &str, until: std::time::SystemTime) {
        let labels = deployment_labels(group, deployment);
        self.cooldowns.get_or_create(&labels).inc();
        let unix = until
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.cooldown_until.get_or_create(&labels).set(unix);
    }

    /// A port failed to accept a connection for want of resources.
    pub fn accept_error(&self, port: &'static str) {
        self.accept_errors.get_or_create(&PortLabels { port }).inc();
    }

    pub fn shed(&self, rpc: &'static str) {
        self.shed.get_or_create(&RpcLabels { rpc }).inc();
    }

    /// Counts a reload: `applied` or `rejected`.
    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Counts a committed stream as open until the guard drops.
    pub fn stream_open(&self) -> GaugeGuard {
        GaugeGuard::new(self.streams_open.clone())
    }
}

fn deployment_labels(group: &str, deployment: &str) -> DeploymentLabels {
    DeploymentLabels {
        model_group: group.to_string(),
        deployment: deployment.to_string(),
    }
}

/// Decrements its gauge when dropped, however the call ends (cancellation included).
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An outcome's lower-case name, as metric labels and span attributes show it.
pub fn outcome_name(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Unspecified => "unspecified",
        AttemptOutcome::Ok => "ok",
        AttemptOutcome::Timeout => "timeout",
        AttemptOutcome::FirstChunkTimeout => "first_chunk_timeout",
        AttemptOutcome::IdleTimeout => "idle_timeout",
        AttemptOutcome::TooSlow => "too_slow",
        AttemptOutcome::MockTimeout => "mock_timeout",
        AttemptOutcome::RateLimited => "rate_limited",
        AttemptOutcome::UpstreamError => "upstream_error",
        AttemptOutcome::ConnectError => "connect_error",
        AttemptOutcome::Rejected => "rejected",
        AttemptOutcome::Cancelled => "cancelled",
        AttemptOutcome::CoolingDown => "cooling_down",
        AttemptOutcome::AtCapacity => "at_capacity",
        AttemptOutcome::RetryThrottled => "retry_throttled",
        AttemptOutcome::CallerTimeout => "caller_timeout",
        AttemptOutcome::PromptTooLong => "prompt_too_long",
        AttemptOutcome::Unsupported => "unsupported",
        AttemptOutcome::PoolSaturated => "pool_saturated",
    }
}

/// gRPC's canonical code names, as other gRPC metrics label them.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::new();
        m.call_finished(
            "Complete",
            "chat",
            "search".into(),
            Some("chat-1"),
            tonic::Code::Ok,
            0.2,
        );
        m.attempt("chat", "chat-1", AttemptOutcome::FirstChunkTimeout);
        m.fallback("chat", "backup");
        m.tokens(
            "chat",
            "chat-1",
            "search".into(),
            &Usage {
                prompt_tokens: 3,
                completion_tokens: 5,
                total_tokens: 8,
                cost_usd: Some(0.25),
                ..Default::default()
            },
        );
        {
            let _g = m.in_flight("StreamComplete");
            assert!(
                m.encode()
                    .contains("llmrouter_calls_in_flight{rpc=\"StreamComplete\"} 1")
            );
        }
        let text = m.encode();
        assert!(
            text.contains(
                "llmrouter_calls_total{rpc=\"Complete\",model_group=\"chat\",caller=\"search\",code=\"OK\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("llmrouter_attempts_total{model_group=\"chat\",deployment=\"chat-1\",outcome=\"first_chunk_timeout\"} 1"));
        assert!(text.contains("llmrouter_fallbacks_total{from=\"chat\",to=\"backup\"} 1"));
        assert!(
            text.contains(
                "llmrouter_cost_usd_total{model_group=\"chat\",deployment=\"chat-1\",caller=\"search\"} 0.25"
            ),
            "{text}"
        );
        assert!(
            text.contains("llmrouter_tokens_total{deployment=\"chat-1\",direction=\"output\"} 5")
        );
        assert!(text.contains("llmrouter_calls_in_flight{rpc=\"StreamComplete\"} 0"));
        assert!(text.contains("llmrouter_call_duration_seconds_bucket{le=\"0.32\",rpc=\"Complete\",model_group=\"chat\",deployment=\"chat-1\"} 1")
            || text.contains("llmrouter_call_duration_seconds_count{rpc=\"Complete\",model_group=\"chat\",deployment=\"chat-1\"} 1"), "{text}");
    }
}
