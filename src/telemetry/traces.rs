//! OpenTelemetry traces: one span per RPC and a child span per attempt (and per backoff wait),
//! named and attributed after the OpenTelemetry GenAI semantic conventions, exported over OTLP
//! (gRPC) when an endpoint is configured. W3C `traceparent` is read from incoming gRPC metadata
//! and sent on outbound provider requests.
//!
//! Trace spans use their own target, [`TARGET`], which the log output never shows: with tracing
//! off no layer is interested in them and their callsites are disabled, so they cost next to
//! nothing. Prompt and completion text are never recorded.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    runtime,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The tracing target of every span exported as a trace.
pub const TARGET: &str = "llm_router::otel";

/// The OTLP endpoint to export to: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, else the config's `telemetry.otlp_endpoint`.
pub fn endpoint_from_env(config: Option<&str>) -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
    .or_else(|| config.map(str::to_string))
}

/// Builds a tracer provider exporting to `endpoint` over OTLP/gRPC. Must run inside a Tokio
/// runtime: the batch processor and the exporter's HTTP/2 connection live on it (the SDK's
/// default thread-based processor cannot drive tonic). Other `OTEL_*` variables (headers,
/// timeout, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) are read by the SDK.
pub fn provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    // The exporter is built without TLS; an https endpoint (from an OTEL_* variable, which
    // check-config cannot see) is refused with the reason rather than failing obscurely.
    if endpoint.starts_with("https://") {
        return Err(format!(
            "OTLP endpoint {endpoint}: https:// is not supported (the exporter has no TLS); send traces over http:// to a collector beside the pod"
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
    let mut resource = Resource::builder();
    // A default that the standard variables can still override.
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("llm-router");
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build())
}

/// The `tracing` layer that turns [`TARGET`] spans into OpenTelemetry spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("llm-router"))
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE),
        )
}

/// Makes `span` a child of the W3C trace context in `metadata`, when there is one.
pub fn set_parent_from(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let cx = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    use opentelemetry::trace::TraceContextExt as _;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Adds the current span's `traceparent` to an outbound request's headers (nothing when
/// tracing is off).
pub fn inject_current(headers: &mut http::header::HeaderMap) {
    let cx: Context = tracing::Span::current().context();
    use opentelemetry::trace::TraceContextExt as _;
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::header::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
