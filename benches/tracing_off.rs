//! What the trace instrumentation costs when tracing is off (the default): calls through the
//! real router to the built-in mock provider, with the production subscriber (logs on, traces
//! off), against the same number of disabled trace spans made on their own.
//!
//!   cargo bench --bench tracing_off
//!
//! Under `cargo test` (no `--bench` flag) it runs a tiny configuration, to show it still works.

use std::{hint::black_box, sync::Arc, time::Instant};

use llm_router::{
    config::{Config, Source},
    proto::{ChatMessage, Role},
    providers::ChatRequest,
    routing::{CallRequest, Router},
    telemetry::{Metrics, traces::TARGET},
};

const CONFIG: &str = r#"
model_list:
  - model_name: fast
    litellm_params: { model: mock/fast, mock: { time_to_first_chunk: 0s, tokens_per_second: 1000000, text: "ok" } }
"#;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let calls: u32 = if full { 200_000 } else { 200 };
    // The production subscriber, traces off; logs only at warn so the bench measures routing,
    // not writing a line per call to the terminal.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: no other thread exists yet to read the environment concurrently.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    llm_router::telemetry::logging::init(None, "warn");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = Config::load_with_env(Source::Yaml(CONFIG), Vec::new(), |_| None).unwrap();
    let router = Router::new(Arc::new(config), Arc::new(Metrics::new())).unwrap();
    let req = CallRequest {
        model: "fast".into(),
        chat: ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User as i32,
                content: "hi".into(),
                name: None,
                ..Default::default()
            }],
            ..ChatRequest::default()
        },
        ..CallRequest::default()
    };

    let per_call = runtime.block_on(async {
        for _ in 0..calls / 10 {
            router.complete(&req).await.unwrap();
        }
        let start = Instant::now();
        for _ in 0..calls {
            black_box(router.complete(&req).await.unwrap());
        }
        start.elapsed() / calls
    });

    // The spans one call makes (an RPC span and an attempt span, with their records), disabled.
    let start = Instant::now();
    for i in 0..calls {
        let rpc = tracing::info_span!(target: TARGET, "rpc", gen_ai.request.model = %"fast", llmrouter.attempts = tracing::field::Empty);
        let attempt = tracing::info_span!(target: TARGET, "attempt", llmrouter.fallback.index = i, llmrouter.attempt.outcome = tracing::field::Empty);
        attempt.record("llmrouter.attempt.outcome", "ok");
        rpc.record("llmrouter.attempts", 1);
        black_box((rpc.is_disabled(), attempt.is_disabled()));
    }
    let spans = start.elapsed() / calls;

    println!("tracing off: {calls} calls through the router to the mock provider");
    println!("  per call, all included:          {per_call:?}");
    println!("  per call, trace spans (disabled): {spans:?}");
    println!(
        "  trace instrumentation share:      {:.3}%",
        100.0 * spans.as_secs_f64() / per_call.as_secs_f64()
    );
}
