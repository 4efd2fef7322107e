//! The gRPC surface: `llmrouter.v1.RouterService`. Validates requests, hands them to the
//! router, and turns answers and failures into messages and statuses.

mod content;
pub mod request;
pub mod status;
pub mod stream;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tonic::{Request, Response, Status};

use crate::proto::{
    self, ChatMessage, CompleteRequest, CompleteResponse, ListModelsRequest, ListModelsResponse,
    Role, StreamCompleteRequest, router_service_server::RouterService,
};
use crate::providers::cut;
use crate::routing::{
    self, CallError, CallFailure, Router, SharedRouter, deadline::parse_grpc_timeout,
    recovery::Recovery,
};
use crate::telemetry::{
    metrics::{GaugeGuard, UNKNOWN_GROUP, code_name},
    traces::{self, TARGET},
};
use status::call_status;
use stream::{OnEnd, ResponseStream, StreamEnd};
use tracing::{Instrument as _, field::Empty};

pub struct RouterApi {
    routers: Arc<SharedRouter>,
    active: Arc<ActiveCalls>,
}

impl RouterApi {
    pub fn new(routers: Arc<SharedRouter>, active: Arc<ActiveCalls>) -> Self {
        RouterApi { routers, active }
    }
}

/// Counts the router's calls in flight, committed streams included, so that shutdown can end
/// as soon as none is left: idle client connections must not hold a pod for its whole grace
/// period (tonic waits for every connection to close, and gRPC clients keep theirs open).
#[derive(Debug, Default)]
pub struct ActiveCalls {
    count: AtomicUsize,
    idle: Notify,
}

impl ActiveCalls {
    /// Counts a call in; also returns how many are in flight with it.
    fn enter(self: &Arc<Self>) -> (ActiveGuard, usize) {
        let count = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        (ActiveGuard(self.clone()), count)
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Completes when no call is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a call ending in between still wakes us.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A call counted in flight, until dropped.
pub struct ActiveGuard(Arc<ActiveCalls>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn client_timeout<T>(req: &Request<T>) -> Option<Duration> {
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

fn new_id() -> String {
    format!("chatcmpl-{:032x}", fastrand::u128(..))
}

/// Accounts for one call: counted in flight while it lives; when it ends, one log line, its
/// metrics and its trace span's outcome. Dropped without an outcome (the client went away and
/// tonic dropped the handler), it reports the call as CANCELLED.
struct CallRecord {
    router: Arc<Router>,
    rpc: &'static str,
    id: String,
    started: Instant,
    /// The requested model as a metric label: configured names only.
    requested: String,
    reported: bool,
    /// The call's trace span (disabled when tracing is off).
    span: tracing::Span,
    /// Calls in flight when this one arrived, itself included.
    in_flight_at_start: usize,
    /// The request's `metadata`, bounded, for the log line; empty when it has none.
    labels: String,
    _in_flight: GaugeGuard,
    /// Taken by a committed stream, which holds it until tonic lets go of the stream: that is
    /// after its last message and trailers, so that shutdown never cuts them off.
    active: Option<ActiveGuard>,
}

impl CallRecord {
    /// Starts accounting for a call on the current config snapshot, which the call keeps to
    /// its end even if a reload swaps in another.
    fn start(
        api: &RouterApi,
        rpc: &'static str,
        model: &str,
        metadata: &HashMap<String, String>,
        span: tracing::Span,
    ) -> Self {
        let router = api.routers.current();
        let requested = if router.config().group(model).is_some() {
            model.to_string()
        } else {
            UNKNOWN_GROUP.to_string()
        };
        let (active, in_flight_at_start) = api.active.enter();
        CallRecord {
            _in_flight: router.metrics().in_flight(rpc),
            active: Some(active),
            in_flight_at_start,
            labels: labels(metadata),
            router,
            rpc,
            id: new_id(),
            started: Instant::now(),
            requested,
            reported: false,
            span,
        }
    }

    /// Reports the outcome. `answered` is the group and deployment that answered, if any.
    fn finish(&mut self, answered: Option<(&str, &str)>, attempts: usize, code: tonic::Code) {
        self.reported = true;
        let elapsed = self.started.elapsed();
        let group = answered.map_or(self.requested.as_str(), |(g, _)| g);
        let deployment = answered.map(|(_, d)| d);
        tracing::info!(
            rpc = self.rpc,
            id = %self.id,
            model = group,
            deployment = deployment.unwrap_or(""),
            attempts,
            code = ?code,
            elapsed_ms = elapsed.as_millis() as u64,
            metadata = self.labels.as_str(),
            "call finished"
        );
        self.router.metrics().call_finished(
            self.rpc,
            group,
            deployment,
            code,
            elapsed.as_secs_f64(),
        );
        let span = &self.span;
        span.record("rpc.grpc.status_code", code as i32);
        span.record("llmrouter.attempts", attempts);
        if answered.is_some() {
            span.record("gen_ai.response.model", group);
        }
        if code != tonic::Code::Ok {
            span.record("error.type", code_name(code));
            span.record("otel.status_code", "ERROR");
        }
    }

    /// Refuses the call when the server is at `server.max_concurrent_calls`: at once, so that
    /// no call waits in a queue past its deadline.
    fn shed_if_overloaded(&mut self) -> Result<(), Status> {
        match self.router.config().server.max_concurrent_calls {
            Some(limit) if self.in_flight_at_start > limit as usize => {
                self.router.metrics().shed(self.rpc);
                Err(self.answer_failure(CallError::Overloaded { limit }.into()))
            }
            _ => Ok(()),
        }
    }

    /// Reports a failure and turns it into the status to answer with.
    fn answer_failure(&mut self, f: CallFailure) -> Status {
        let status = call_status(&f.error, &f.attempts);
        self.finish(None, f.attempts.len(), status.code());
        status
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if !self.reported {
            self.finish(None, 0, tonic::Code::Cancelled);
        }
    }
}

/// Bounds on the caller's `metadata` as logged: whatever a caller sends, its log line stays short.
const LABEL_PART_MAX: usize = 128;
const LABELS_MAX: usize = 1024;

/// A request's `metadata` for the call's log line: `key=value` pairs sorted by key, each key and
/// value cut at [`LABEL_PART_MAX`] bytes, the whole at [`LABELS_MAX`]. Empty (and free) when the
/// request has none.
fn labels(metadata: &HashMap<String, String>) -> String {
    if metadata.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<_> = metadata.iter().collect();
    pairs.sort();
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(cut(k, LABEL_PART_MAX));
        out.push('=');
        out.push_str(cut(v, LABEL_PART_MAX));
        if out.len() >= LABELS_MAX {
            let end = cut(&out, LABELS_MAX).len();
            out.truncate(end);
            out.push('…');
            break;
        }
    }
    out
}

/// The span of one RPC, a child of the caller's `traceparent` when it sent one.
fn rpc_span<T>(rpc: &'static str, request: &Request<T>, model: &str) -> tracing::Span {
    // The caller's text, bounded before it reaches a trace.
    let model = cut(model, LABEL_PART_MAX);
    let span = tracing::info_span!(
        target: TARGET,
        "rpc",
        otel.name = %format_args!("chat {model}"),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = "llmrouter.v1.RouterService",
        rpc.method = rpc,
        rpc.grpc.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.request.model = %model,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        error.type = Empty,
        llmrouter.deadline_ms = Empty,
        llmrouter.attempts = Empty,
    );
    if !span.is_disabled() {
        traces::set_parent_from(&span, request.metadata());
    }
    span
}

/// Records a provider's token counts on an RPC span.
fn record_usage(span: &tracing::Span, usage: &proto::Usage) {
    span.record("gen_ai.usage.input_tokens", usage.prompt_tokens);
    span.record("gen_ai.usage.output_tokens", usage.completion_tokens);
}

impl RouterApi {
    async fn complete_in(
        &self,
        request: Request<CompleteRequest>,
        span: tracing::Span,
    ) -> Result<Response<CompleteResponse>, Status> {
        let r = request.get_ref();
        let mut record = CallRecord::start(self, "Complete", &r.model, &r.metadata, span);
        record.shed_if_overloaded()?;
        let client_timeout = client_timeout(&request);
        let call = request::call_from_complete(request.into_inner(), client_timeout)
            .map_err(|e| record.answer_failure(e.into()))?;
        let router = record.router.clone();
        let answered = router
            .complete(&call)
            .await
            .map_err(|f| record.answer_failure(f))?;
        let completion = answered.value;
        if let Some(usage) = &completion.usage {
            router
                .metrics()
                .tokens(&answered.group, &answered.deployment, usage);
            record_usage(&record.span, usage);
        }
        record.finish(
            Some((&answered.group, &answered.deployment)),
            answered.attempts.len(),
            tonic::Code::Ok,
        );
        Ok(Response::new(CompleteResponse {
            id: record.id.clone(),
            model: answered.group,
            deployment: answered.deployment,
            message: Some(ChatMessage {
                role: Role::Assistant as i32,
                content: completion.text,
                tool_calls: completion.tool_calls,
                thinking: completion.thinking,
                ..Default::default()
            }),
            finish_reason: completion.finish_reason as i32,
            usage: completion.usage,
            attempts: answered.attempts,
        }))
    }

    async fn stream_complete_in(
        &self,
        request: Request<StreamCompleteRequest>,
        span: tracing::Span,
    ) -> Result<Response<ResponseStream>, Status> {
        let r = request.get_ref();
        let mut record = CallRecord::start(self, "StreamComplete", &r.model, &r.metadata, span);
        record.shed_if_overloaded()?;
        let client_timeout = client_timeout(&request);
        let call = request::call_from_stream(request.into_inner(), client_timeout)
            .map_err(|e| record.answer_failure(e.into()))?;
        let router = record.router.clone();
        // Everything before the first chunk, retries and fallbacks included, is answered as a
        // status: the response stream is only returned once the call has committed.
        let mut answered = router
            .stream(&call)
            .await
            .map_err(|f| record.answer_failure(f))?;
        let idle = router.config().router.stream_idle_timeout;
        let id = record.id.clone();
        let active = record.active.take();
        let metrics = router.metrics().clone();
        // The record (and with it the RPC's span) lives until the stream ends.
        let on_end: OnEnd = Box::new(move |end| {
            if let Some(u) = &end.usage {
                // Token counts of answers that finished, as for unary calls.
                if end.how == StreamEnd::Finished {
                    metrics.tokens(end.group, end.deployment, u);
                }
                record_usage(&record.span, u);
            }
            let code = match end.how {
                StreamEnd::Finished => tonic::Code::Ok,
                StreamEnd::ClientGone => tonic::Code::Cancelled,
                StreamEnd::Failed(code) => code,
            };
            record.finish(Some((end.group, end.deployment)), end.attempts, code);
        });
        // The call's request is kept only by a stream that may recover.
        let recovery = Recovery::arm(router.clone(), call, &mut answered);
        Ok(Response::new(stream::forward(
            answered,
            recovery,
            id,
            idle,
            router.metrics(),
            on_end,
            active,
        )))
    }
}

#[tonic::async_trait]
impl RouterService for RouterApi {
    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let span = rpc_span("Complete", &request, &request.get_ref().model);
        self.complete_in(request, span.clone())
            .instrument(span)
            .await
    }

    type StreamCompleteStream = ResponseStream;

    async fn stream_complete(
        &self,
        request: Request<StreamCompleteRequest>,
    ) -> Result<Response<Self::StreamCompleteStream>, Status> {
        let span = rpc_span("StreamComplete", &request, &request.get_ref().model);
        self.stream_complete_in(request, span.clone())
            .instrument(span)
            .await
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let router = self.routers.current();
        let config = router.config();
        let now = Instant::now();
        let groups = config
            .groups
            .values()
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
        Ok(Response::new(ListModelsResponse { groups }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_logged_sorted_and_bounded() {
        assert_eq!(labels(&HashMap::new()), "");
        let m: HashMap<String, String> = [("team", "search"), ("caller", "ranker")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(labels(&m), "caller=ranker team=search");
        let big: HashMap<String, String> = (0..64)
            .map(|i| (format!("k{i:02}{}", "é".repeat(100)), "v".repeat(1000)))
            .collect();
        let line = labels(&big);
        assert!(line.len() <= LABELS_MAX + '…'.len_utf8(), "{}", line.len());
        assert!(line.ends_with('…'));
        assert!(line.starts_with("k00"));
    }
}
