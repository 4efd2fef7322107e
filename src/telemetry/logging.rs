//! Log output, and the subscriber that also carries traces when they are on. Logs: JSON lines
//! for collectors, a human format on a terminal; `LLMROUTER_LOG_FORMAT` (`json` or `text`)
//! overrides the choice and `RUST_LOG` sets the level (else the config's `telemetry.log_level`,
//! default `info`). Logs never carry
//! provider keys or prompt text.

use std::io::IsTerminal;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};

use super::traces;

/// Installs the global subscriber: logs filtered by `RUST_LOG`, else `default_filter`, plus
/// traces exported by `tracer` when given.
pub fn init(tracer: Option<&SdkTracerProvider>, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // Trace spans are for the exporter, never for the log.
        .add_directive(
            format!("{}=off", traces::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    let terminal = std::io::stderr().is_terminal();
    let json = match std::env::var("LLMROUTER_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !terminal,
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_ansi(terminal).with_filter(filter).boxed()
    };
    let otel = tracer.map(traces::layer);
    tracing_subscriber::registry().with(logs).with(otel).init();
}
