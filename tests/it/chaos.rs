//! Chaos: a few thousand calls through the real binary against upstreams that, at random,
//! answer, answer slowly, hang, reset, stall mid-stream, send malformed SSE, end without
//! `[DONE]`, or answer 429 and 503. Every call must end by its deadline with a status that
//! matches what happened; afterwards no upstream request may be left open and the server's
//! memory must be back near where it started.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::common::process::{sigterm, spawn_with_env, wait_exit};
use crate::common::upstream::{Behaviour, Upstream};
use crate::common::*;
use llm_router::proto::{AttemptOutcome, FinishReason, router_service_client::RouterServiceClient};
use tokio::sync::Semaphore;
use tonic::{Code, transport::Channel};

/// Each call's own deadline (the request's `timeout`).
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
const CONCURRENCY: usize = 48;
const WARMUP_CALLS: usize = 400;
const CHAOS_CALLS: usize = 2400;

/// About half the requests are answered; the rest misbehave, one way or another.
fn misbehaviours() -> Behaviour {
    let mut choices = vec![Behaviour::ok("a healthy answer in a few words"); 8];
    choices.extend([
        Behaviour::slow_first_chunk("slow but fine", ms(300)),
        Behaviour::Hang,
        Behaviour::ResetAfter { after: 0 },
        Behaviour::ResetAfter { after: 2 },
        Behaviour::StallAfter { after: 1 },
        Behaviour::MalformedSse { count: 4 },
        Behaviour::EndWithoutDone { after: 1 },
        Behaviour::Status {
            code: 429,
            body: r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#.into(),
            retry_after: None,
        },
        Behaviour::status(503, r#"{"error":{"message":"overloaded"}}"#),
    ]);
    Behaviour::Random(choices)
}

fn config(up: &Upstream) -> String {
    let base = up.base();
    let dep = |group: &str, id: &str| {
        format!(
            "  - model_name: {group}\n    litellm_params: {{ model: openai/{id}, api_base: \"{base}\", api_key: sk-chaos, timeout: 400ms, stream_timeout: 250ms }}\n    model_info: {{ id: {id} }}\n"
        )
    };
    format!(
        "model_list:\n{}{}{}router_settings:\n  num_retries: 1\n  retry_backoff_initial: 10ms\n  retry_backoff_max: 50ms\n  stream_idle_timeout: 300ms\n  allowed_fails: 20\n  cooldown_time: 200ms\n  hedge_after: 200ms\n  fallbacks:\n    - chaos: [chaos-backup]\nserver:\n  shutdown_grace: 5s\n",
        dep("chaos", "c0"),
        dep("chaos", "c1"),
        dep("chaos-backup", "c2"),
    )
}

/// How one call ended, as the client saw it.
struct Ended {
    elapsed: Duration,
    code: Code,
    /// The error's reason, or "" when the call succeeded.
    reason: String,
    /// For failures: the outcome of the last real attempt (skips aside), if any.
    last_outcome: Option<AttemptOutcome>,
}

async fn one_call(mut client: RouterServiceClient<Channel>, streaming: bool) -> Ended {
    let started = Instant::now();
    let failed = |status: tonic::Status| {
        let log = llm_router::api::status::attempt_log(&status)
            .map(|l| l.attempts)
            .unwrap_or_default();
        let last_outcome = log
            .iter()
            .rev()
            .map(|a| AttemptOutcome::try_from(a.outcome).unwrap())
            .find(|o| {
                !matches!(
                    o,
                    AttemptOutcome::CoolingDown
                        | AttemptOutcome::AtCapacity
                        | AttemptOutcome::RetryThrottled
                        | AttemptOutcome::Cancelled
                )
            });
        Ended {
            elapsed: started.elapsed(),
            code: status.code(),
            reason: reason(&status),
            last_outcome,
        }
    };
    let ok = |elapsed| Ended {
        elapsed,
        code: Code::Ok,
        reason: String::new(),
        last_outcome: None,
    };
    if streaming {
        let req = llm_router::proto::StreamCompleteRequest {
            timeout: Some(dur(CALL_TIMEOUT)),
            ..stream_req("chaos")
        };
        let mut stream = match client.stream_complete(req).await {
            Ok(s) => s.into_inner(),
            Err(status) => return failed(status),
        };
        let mut last = None;
        loop {
            match stream.message().await {
                Ok(Some(m)) => last = Some(m),
                Ok(None) => break,
                Err(status) => return failed(status),
            }
        }
        let last = last.expect("a committed stream sends at least its first chunk");
        assert_ne!(last.finish_reason, FinishReason::Unspecified as i32);
        ok(started.elapsed())
    } else {
        let req = llm_router::proto::CompleteRequest {
            timeout: Some(dur(CALL_TIMEOUT)),
            ..complete("chaos")
        };
        match client.complete(req).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                assert!(!resp.message.unwrap().content.is_empty());
                assert_eq!(
                    resp.attempts.last().map(|a| a.outcome),
                    Some(AttemptOutcome::Ok as i32)
                );
                ok(started.elapsed())
            }
            Err(status) => failed(status),
        }
    }
}

/// Checks that the status matches what the attempts say happened.
fn check(e: &Ended) {
    assert!(
        e.elapsed <= CALL_TIMEOUT + SLACK,
        "a call ended {:?} after it started, past its {CALL_TIMEOUT:?} deadline",
        e.elapsed
    );
    use AttemptOutcome as O;
    let fits = match (e.code, e.reason.as_str()) {
        (Code::Ok, _) => true,
        (Code::DeadlineExceeded, "DEADLINE_EXCEEDED" | "FALLBACKS_EXHAUSTED") => true,
        (Code::DeadlineExceeded, "STREAM_IDLE_TIMEOUT") => true,
        (Code::Unavailable, "STREAM_INTERRUPTED") => true,
        (Code::Unavailable, "ALL_DEPLOYMENTS_COOLING_DOWN") => e.last_outcome.is_none(),
        (Code::Unavailable, "FALLBACKS_EXHAUSTED") => {
            matches!(e.last_outcome, Some(O::UpstreamError | O::ConnectError))
        }
        (Code::ResourceExhausted, "FALLBACKS_EXHAUSTED") => e.last_outcome == Some(O::RateLimited),
        _ => false,
    };
    assert!(
        fits,
        "status {:?} ({}) does not match the last attempt {:?}",
        e.code, e.reason, e.last_outcome
    );
    if e.code == Code::DeadlineExceeded && e.reason == "FALLBACKS_EXHAUSTED" {
        assert!(matches!(
            e.last_outcome,
            Some(O::Timeout | O::FirstChunkTimeout)
        ));
    }
}

async fn run_calls(client: &RouterServiceClient<Channel>, n: usize) -> Vec<Ended> {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let ended = one_call(client, i % 2 == 0).await;
            drop(permit);
            ended
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

pub(crate) async fn metric(admin: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_ends_by_its_deadline_with_a_fitting_status_and_nothing_leaks() {
    let up = Upstream::start().await;
    for id in ["c0", "c1", "c2"] {
        up.set(id, misbehaviours());
    }
    let dir = std::env::temp_dir().join(format!("llm-router-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chaos.yaml");
    std::fs::write(&path, config(&up)).unwrap();
    let (mut child, addr, admin) = spawn_with_env(
        &["serve", "--config", path.to_str().unwrap()],
        &[("RUST_LOG", "warn")],
    );
    let client = RouterServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    // Warm-up: the same workload, so that allocator arenas and pools reach their working size.
    for e in run_calls(&client, WARMUP_CALLS).await {
        check(&e);
    }
    let settle = || async {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let open: u32 = ["c0", "c1", "c2"].iter().map(|m| up.counts(m).open).sum();
            let in_flight = metric(&admin, "llmrouter_calls_in_flight").await;
            if open == 0 && in_flight == 0.0 {
                return;
            }
            assert!(
                Instant::now() < until,
                "{open} upstream requests and {in_flight} calls still open"
            );
            tokio::time::sleep(ms(20)).await;
        }
    };
    settle().await;
    let rss_before = rss_kib(child.id());

    let ended = run_calls(&client, CHAOS_CALLS).await;
    let mut by_code = std::collections::BTreeMap::new();
    for e in &ended {
        check(e);
        *by_code
            .entry(format!("{:?} {}", e.code, e.reason))
            .or_insert(0) += 1;
    }
    // The mix really happened: answers and each kind of failure.
    println!("chaos results: {by_code:?}");
    let count = |prefix: &str| -> usize {
        by_code
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    };
    assert!(count("Ok") > CHAOS_CALLS / 10, "{by_code:?}");
    for code in ["DeadlineExceeded", "Unavailable", "ResourceExhausted"] {
        assert!(count(code) > 0, "no {code} in {by_code:?}");
    }

    // Nothing left open, upstream or in the server.
    settle().await;
    assert_eq!(metric(&admin, "llmrouter_streams_open").await, 0.0);

    // Memory is back near its level after the warm-up: six times more calls left at most a
    // little allocator slack behind.
    let rss_after = rss_kib(child.id());
    println!("server RSS: {rss_before} KiB after warm-up, {rss_after} KiB after chaos");
    assert!(
        rss_after <= rss_before + rss_before / 4 + 8 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    let _ = std::fs::remove_dir_all(&dir);
}
