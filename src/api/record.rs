//! Accounting for one call from arrival to end: counted in flight (for shutdown and for
//! `server.max_concurrent_calls`), one log line, its metrics and its trace span's outcome.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{sync::Notify, time::Instant};
use tonic::{Request, Status};
use tracing::field::Empty;

use super::error::{ApiError, Failed};
use super::status::call_status;
use crate::proto;
use crate::providers::cut;
use crate::routing::{CallContext, CallerName, Router, SharedRouter, callers::CallerLease};
use crate::telemetry::{
    metrics::{GaugeGuard, UNKNOWN_GROUP, code_name},
    traces::{self, TARGET},
};

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
    pub(super) fn enter(self: &Arc<Self>) -> (ActiveGuard, usize) {
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

fn new_id() -> String {
    format!("chatcmpl-{:032x}", fastrand::u128(..))
}

/// Accounts for one call: counted in flight while it lives; when it ends, one log line, its
/// metrics and its trace span's outcome. Dropped without an outcome (the client went away and
/// tonic dropped the handler), it reports the call as CANCELLED.
pub(super) struct CallRecord {
    pub(super) router: Arc<Router>,
    pub(super) rpc: &'static str,
    pub(super) id: String,
    pub(super) started: Instant,
    /// The requested model as a metric label: configured names only.
    pub(super) requested: String,
    pub(super) reported: bool,
    /// The call's trace span (disabled when tracing is off).
    pub(super) span: tracing::Span,
    /// Calls in flight when this one arrived, itself included.
    pub(super) in_flight_at_start: usize,
    /// The request's `metadata`, bounded, for the log line; empty when it has none.
    pub(super) labels: String,
    /// Who is calling, once known.
    pub(super) caller: CallerName,
    /// The call's place in its caller's limits, held to its end.
    pub(super) lease: Option<CallerLease>,
    _in_flight: GaugeGuard,
    /// Taken by a committed stream, which holds it until tonic lets go of the stream: that is
    /// after its last message and trailers, so that shutdown never cuts them off.
    pub(super) active: Option<ActiveGuard>,
}

impl CallRecord {
    /// Starts accounting for a call on the current config snapshot, which the call keeps to
    /// its end even if a reload swaps in another.
    pub(super) fn start(
        routers: &SharedRouter,
        active: &Arc<ActiveCalls>,
        rpc: &'static str,
        model: &str,
        metadata: &HashMap<String, String>,
        span: tracing::Span,
    ) -> Self {
        let router = routers.current();
        let requested = if router.config().group(model).is_some() {
            model.to_string()
        } else {
            UNKNOWN_GROUP.to_string()
        };
        let (active, in_flight_at_start) = active.enter();
        CallRecord {
            _in_flight: router.metrics().in_flight(rpc),
            active: Some(active),
            in_flight_at_start,
            labels: labels(metadata),
            caller: CallerName::Unauthenticated,
            lease: None,
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
    pub(super) fn finish(
        &mut self,
        answered: Option<(&str, &str)>,
        attempts: usize,
        code: tonic::Code,
    ) {
        self.reported = true;
        let elapsed = self.started.elapsed();
        let group = answered.map_or(self.requested.as_str(), |(g, _)| g);
        let deployment = answered.map(|(_, d)| d);
        tracing::info!(
            rpc = self.rpc,
            id = %self.id,
            caller = self.caller.as_str(),
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
            self.caller.label(),
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

    /// The call's caller is known: its name labels the call from here on.
    pub(super) fn identified(&mut self, context: &CallContext) {
        if context.caller != CallerName::Unauthenticated {
            self.span.record("enduser.id", context.caller.as_str());
        }
        self.caller = context.caller.clone();
    }

    /// The call's real usage: on its span, and settled with its caller's limits.
    pub(super) fn settle(&mut self, usage: &proto::Usage) {
        self.span
            .record("gen_ai.usage.input_tokens", usage.prompt_tokens);
        self.span
            .record("gen_ai.usage.output_tokens", usage.completion_tokens);
        if let Some(lease) = &mut self.lease {
            lease.settle(usage);
        }
    }

    /// Refuses the call when the server is at `server.max_concurrent_calls`: at once, so that
    /// no call waits in a queue past its deadline.
    pub(super) fn shed_if_overloaded(&mut self) -> Result<(), Status> {
        match self.router.config().server.max_concurrent_calls {
            Some(limit) if self.in_flight_at_start > limit as usize => {
                self.router.metrics().shed(self.rpc);
                Err(self.answer_failure(ApiError::Overloaded { limit }))
            }
            _ => Ok(()),
        }
    }

    /// Reports a failure and turns it into the status to answer with.
    pub(super) fn answer_failure(&mut self, f: impl Into<Failed>) -> Status {
        let f = f.into();
        let cap = self.router.config().router.cooldowns.max_hint;
        let status = call_status(&f.error, &f.attempts, cap);
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
pub(super) fn rpc_span<T>(rpc: &'static str, request: &Request<T>, model: &str) -> tracing::Span {
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
        enduser.id = Empty,
        llmrouter.deadline_ms = Empty,
        llmrouter.attempts = Empty,
    );
    if !span.is_disabled() {
        traces::set_parent_from(&span, request.metadata());
    }
    span
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
