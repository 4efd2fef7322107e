//! Traces end to end: an in-process OTLP collector (a tonic server implementing the OTLP trace
//! service) receives the spans of a call whose primary times out and whose fallback answers,
//! and the span tree and its attributes are checked. One test in this file: the tracing
//! subscriber is global to the process.

#[path = "it/common/mod.rs"]
mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::upstream::{Behaviour, Upstream};
use common::*;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attrs(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const CALLER_KEY: &str = "sk-otel-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_call_exports_its_span_tree() {
    // The collector.
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    // llm-router, exporting to it.
    let provider =
        llm_router::telemetry::traces::provider(&format!("http://{collector_addr}")).unwrap();
    llm_router::telemetry::logging::init(Some(&provider), "info");
    let up = Upstream::start().await;
    up.set("primary", Behaviour::Hang);
    up.set("backup", Behaviour::ok("from the fallback"));
    up.set("cuts", Behaviour::ResetAfter { after: 2 });
    let yaml = format!(
        r#"
model_list:
  - model_name: primary
    litellm_params: {{ model: openai/primary, api_base: "{base}", timeout: 200ms, max_retries: 0 }}
    model_info: {{ id: primary-1 }}
  - model_name: backup
    litellm_params: {{ model: openai/backup, api_base: "{base}" }}
    model_info: {{ id: backup-1, supports_assistant_prefill: true }}
  - model_name: cuts
    litellm_params: {{ model: openai/cuts, api_base: "{base}", max_retries: 0 }}
    model_info: {{ id: cuts-1 }}
router_settings:
  stream_recovery: continue
  fallbacks:
    - primary: [backup]
    - cuts: [backup]
callers:
  - {{ name: search, keys: ["sha256:{digest}"] }}
"#,
        base = up.base(),
        digest = ring::digest::digest(&ring::digest::SHA256, CALLER_KEY.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    );
    let r = TestRouter::start(&yaml).await;

    // A call that carries the caller's trace context.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(complete("primary"));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {CALLER_KEY}").parse().unwrap(),
    );
    let resp = r.client().complete(req).await.unwrap().into_inner();
    assert_eq!(resp.model, "backup");

    provider.force_flush().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = collector.spans.lock().unwrap().clone();
        if spans
            .iter()
            .any(|s| attrs(s).get("rpc.method").map(String::as_str) == Some("Complete"))
        {
            break spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no RPC span arrived; got {spans:?}"
        );
        tokio::time::sleep(ms(50)).await;
        provider.force_flush().unwrap();
    };

    // One RPC span, a child of the caller's span, in the caller's trace.
    let rpc = spans
        .iter()
        .find(|s| attrs(s).get("rpc.method").map(String::as_str) == Some("Complete"))
        .expect("the RPC span");
    assert_eq!(rpc.name, "chat primary");
    assert_eq!(hex(&rpc.trace_id), trace_id);
    assert_eq!(hex(&rpc.parent_span_id), caller_span);
    let a = attrs(rpc);
    assert_eq!(a["gen_ai.operation.name"], "chat");
    assert_eq!(a["gen_ai.request.model"], "primary");
    assert_eq!(a["gen_ai.response.model"], "backup");
    assert_eq!(a["gen_ai.usage.input_tokens"], "5");
    assert_eq!(a["gen_ai.usage.output_tokens"], "3");
    assert_eq!(a["rpc.grpc.status_code"], "0");
    assert_eq!(a["llmrouter.attempts"], "2");
    // Who called, by the config's name for the caller: never its key.
    assert_eq!(a["enduser.id"], "search");
    assert!(a.values().all(|v| !v.contains(CALLER_KEY)));
    assert!(
        a["llmrouter.deadline_ms"].parse::<u64>().unwrap() > 500_000,
        "router timeout 600s"
    );

    // Two attempt spans under it: the primary timed out, the fallback answered.
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == rpc.span_id)
        .collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let first = attrs(attempts[0]);
    assert_eq!(attempts[0].name, "chat primary");
    assert_eq!(first["gen_ai.provider.name"], "openai");
    assert_eq!(first["llmrouter.deployment"], "primary-1");
    assert_eq!(first["llmrouter.fallback.index"], "0");
    assert_eq!(first["llmrouter.attempt.outcome"], "timeout");
    assert_eq!(first["error.type"], "timeout");
    let second = attrs(attempts[1]);
    assert_eq!(attempts[1].name, "chat backup");
    assert_eq!(second["llmrouter.fallback.index"], "1");
    assert_eq!(second["llmrouter.attempt.outcome"], "ok");
    assert!(!second.contains_key("error.type"));
    let took = attempts[0].end_time_unix_nano - attempts[0].start_time_unix_nano;
    assert!(
        took >= 200_000_000,
        "the primary's attempt lasted its 200ms timeout: {took}ns"
    );

    // The provider request carried the trace on, its parent the attempt span.
    let traceparent = up
        .counts("backup")
        .header("traceparent")
        .map(str::to_string)
        .expect("traceparent sent upstream");
    assert_eq!(
        traceparent,
        format!("00-{trace_id}-{}-01", hex(&attempts[1].span_id))
    );

    // A stream that broke after commit and recovered: both attempts are spans of its RPC.
    let mut s = r
        .client()
        .stream_complete(stream_req("cuts"))
        .await
        .unwrap()
        .into_inner();
    let mut resumed = false;
    while let Some(m) = s.message().await.unwrap() {
        resumed |= m.resumed;
    }
    assert!(resumed, "the stream recovered");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let spans = loop {
        provider.force_flush().unwrap();
        let spans = collector.spans.lock().unwrap().clone();
        let rpc = spans
            .iter()
            .find(|s| attrs(s).get("rpc.method").map(String::as_str) == Some("StreamComplete"));
        if let Some(rpc) = rpc {
            let children = spans
                .iter()
                .filter(|s| s.parent_span_id == rpc.span_id)
                .count();
            if children >= 2 {
                break spans;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovered stream's spans arrived; got {spans:?}"
        );
        tokio::time::sleep(ms(50)).await;
    };
    let rpc = spans
        .iter()
        .find(|s| attrs(s).get("rpc.method").map(String::as_str) == Some("StreamComplete"))
        .unwrap();
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == rpc.span_id)
        .collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    let deployments: Vec<_> = attempts
        .iter()
        .map(|s| attrs(s)["llmrouter.deployment"].clone())
        .collect();
    assert_eq!(deployments, ["cuts-1", "backup-1"]);

    // No prompt text anywhere.
    assert!(
        !format!("{spans:?}").contains("hello"),
        "prompt text must not be recorded"
    );
    provider.shutdown().unwrap();
}
