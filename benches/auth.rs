//! What telling a caller apart and holding it to its policy costs one call, on its own: the
//! API's identification (an API key hashed and compared with every caller's digest), the
//! policy's checks and the caller's limits at admission, the usage settled, the lease dropped,
//! and the caller's name made into metric labels, as a unary call does them, in a loop.
//!
//!   cargo bench --bench auth
//!
//! Under `cargo test` it runs a few iterations to show it still works.

use std::{sync::Arc, time::Instant};

use llm_router::config::{Config, Source};
use llm_router::proto::{ChatMessage, Role, Usage};
use llm_router::routing::{CallRequest, Router};

const KEY: &str = "sk-bench-0123456789abcdef0123456789";

fn config(callers: usize) -> Config {
    let mut yaml = String::from(
        "model_list:\n  - model_name: chat\n    litellm_params: { model: mock/chat, timeout: 10s, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002 }\nauth: { required: true }\ncallers:\n",
    );
    for i in 0..callers {
        // Digests of other keys, so that the presented key is compared with every one.
        let key = if i == callers - 1 {
            KEY.to_string()
        } else {
            format!("{KEY}-{i}")
        };
        let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        yaml.push_str(&format!(
            "  - {{ name: team-{i}, keys: [\"sha256:{hex}\"], models: [chat], rpm_limit: 1000000000, tpm_limit: 100000000000, max_parallel_requests: 100000, max_budget: 1000000, budget_duration: 30d }}\n"
        ));
    }
    Config::load_with_env(Source::Yaml(&yaml), Vec::new(), |_| None).unwrap()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let iterations = if full { 1_000_000 } else { 100 };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    println!("| callers in the config | ns per call (identify, admit, settle, release, labels) |");
    println!("|---|---|");
    for callers in [1, 10, 100] {
        let router = Router::new(
            Arc::new(config(callers)),
            Arc::new(llm_router::telemetry::Metrics::new()),
        )
        .unwrap();
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
        let call = |context| CallRequest {
            context,
            model: "chat".into(),
            chat: llm_router::providers::ChatRequest {
                messages: vec![ChatMessage {
                    role: Role::User as i32,
                    content: "Say hello.".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..CallRequest::default()
        };
        let usage = Usage {
            prompt_tokens: 5,
            completion_tokens: 20,
            total_tokens: 25,
            cost_usd: Some(0.000045),
            ..Default::default()
        };
        // The request is built once; a call's own fields are not what is measured.
        let mut calls: Vec<CallRequest> = (0..iterations.min(10_000))
            .map(|_| call(Default::default()))
            .collect();
        let n = calls.len();
        let start = Instant::now();
        for i in 0..iterations {
            let context = llm_router::api::auth::call_context(&router.config().auth, &request)
                .expect("the key is a caller's");
            let c = &mut calls[i % n];
            c.context = context;
            let mut lease = router.admit(c).unwrap().expect("a caller with limits");
            lease.settle(&usage);
            drop(lease);
            // As call_finished and the cost metric label the call.
            std::hint::black_box((c.context.caller.label(), c.context.caller.label()));
        }
        let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
        println!("| {callers} | {ns:.0} |");
    }
}
