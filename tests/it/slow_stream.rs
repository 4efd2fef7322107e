//! The slow-stream guard against the real server: an upstream that streams at half a token a
//! second ("ab" every second) is moved to the fallback once the guard judges it, and without
//! the guard runs to the call's deadline. Real timers; the tolerances hold on a loaded machine.

use std::time::{Duration, Instant};

use llm_router::proto::{AttemptOutcome, StreamCompleteRequest};
use tonic::Code;

use crate::common::upstream::{Behaviour, Upstream};
use crate::common::*;
use crate::recovery::{log_of, run, text};

/// `crawl` is guarded at 5 tokens/s over 2s from commit and falls back to `quick`; `unguarded`
/// crawls too, with no guard and no fallback.
fn config(base: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: crawl
    litellm_params: {{ model: openai/crawl, api_base: "{base}", max_retries: 0 }}
    model_info: {{ supports_assistant_prefill: true }}
  - model_name: quick
    litellm_params: {{ model: openai/quick, api_base: "{base}" }}
    model_info: {{ supports_assistant_prefill: true }}
  - model_name: unguarded
    litellm_params: {{ model: openai/crawl, api_base: "{base}", max_retries: 0 }}
router_settings:
  stream_idle_timeout: 3s
  stream_recovery: continue
  disable_cooldowns: true
  model_group_settings:
    crawl: {{ stream_min_tokens_per_s: 5, stream_min_tokens_window: 2s, stream_min_tokens_grace: 0s }}
  fallbacks:
    - crawl: [quick]
"#
    )
}

async fn setup() -> (Upstream, TestRouter) {
    let up = Upstream::start().await;
    up.set(
        "crawl",
        Behaviour::Answer {
            headers_after: Duration::ZERO,
            first_chunk_after: Duration::ZERO,
            chunks: vec!["ab".to_string(); 30],
            chunk_interval: Duration::from_secs(1),
        },
    );
    up.set("quick", Behaviour::ok(" and the rest."));
    let r = TestRouter::start(&config(&up.base())).await;
    (up, r)
}

#[tokio::test]
async fn a_stream_at_half_a_token_a_second_is_moved_to_the_fallback() {
    let (up, r) = setup().await;
    let start = Instant::now();
    let (messages, status) = run(&r, stream_req("crawl")).await;
    let elapsed = start.elapsed();
    assert!(status.is_none(), "{status:?}");
    // Judged from 2s after commit (a whole window, no grace), and cut then.
    assert_between(
        elapsed,
        Duration::from_secs(2),
        Duration::from_secs(2) + SLACK * 3,
    );
    assert!(
        text(&messages).ends_with(" and the rest."),
        "{}",
        text(&messages)
    );
    let resumed = messages.iter().find(|m| m.resumed).expect("recovered");
    assert_eq!(
        log_of(&resumed.attempts),
        [
            ("crawl/0".to_string(), AttemptOutcome::TooSlow, false),
            ("quick/0".to_string(), AttemptOutcome::Ok, true),
        ]
    );
    let detail = &resumed.attempts[0].detail;
    assert!(
        detail.contains("below the configured stream_min_tokens_per_s (5)"),
        "{detail}"
    );
    assert!(detail.contains("tokens/s over the last 2s"), "{detail}");
    assert_eq!(up.counts("crawl").requests, 1);
    assert_eq!(up.counts("quick").requests, 1);

    let (_, metrics) = r.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            r#"llmrouter_attempts_total{model_group="crawl",deployment="crawl/0",outcome="too_slow"} 1"#
        ),
        "{metrics}"
    );
    // The rate the stream was delivering when it was cut: below 1 token a second.
    assert!(
        metrics.contains(
            r#"llmrouter_stream_tokens_per_second_bucket{le="1.0",model_group="crawl",deployment="crawl/0",outcome="too_slow"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_the_guard_the_crawl_runs_to_its_deadline() {
    let (up, r) = setup().await;
    for req in [
        // The group has none.
        StreamCompleteRequest {
            timeout: Some(dur(Duration::from_secs(4))),
            ..stream_req("unguarded")
        },
        // The request turns the group's off.
        StreamCompleteRequest {
            timeout: Some(dur(Duration::from_secs(4))),
            stream_min_tokens_per_s: Some(0.0),
            ..stream_req("crawl")
        },
    ] {
        let model = req.model.clone();
        let start = Instant::now();
        let (messages, status) = run(&r, req).await;
        let status = status.expect("ends at the deadline");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{model}: {status:?}");
        assert_between(
            start.elapsed(),
            Duration::from_secs(4) - SLACK,
            Duration::from_secs(4) + SLACK,
        );
        assert!(messages.iter().all(|m| !m.resumed), "{model}");
        assert!(text(&messages).starts_with("abab"), "{model}");
    }
    assert_eq!(up.counts("crawl").requests, 2);
    assert_eq!(up.counts("quick").requests, 0);
}

#[tokio::test]
async fn a_requests_own_guard_is_validated_and_named() {
    let (up, r) = setup().await;
    let mut c = r.client();
    for (req, field) in [
        (
            StreamCompleteRequest {
                stream_min_tokens_per_s: Some(-1.0),
                ..stream_req("crawl")
            },
            "stream_min_tokens_per_s",
        ),
        (
            StreamCompleteRequest {
                stream_min_tokens_per_s: Some(f32::NAN),
                ..stream_req("crawl")
            },
            "stream_min_tokens_per_s",
        ),
        (
            StreamCompleteRequest {
                stream_min_tokens_window: Some(dur(Duration::from_millis(500))),
                ..stream_req("crawl")
            },
            "stream_min_tokens_window",
        ),
        (
            StreamCompleteRequest {
                stream_min_tokens_window: Some(dur(Duration::from_secs(601))),
                ..stream_req("crawl")
            },
            "stream_min_tokens_window",
        ),
    ] {
        let e = c.stream_complete(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().contains(field), "{}", e.message());
    }
    assert_eq!(up.counts("crawl").requests, 0);

    // A stricter rate of the request's own cuts a stream its group would let run.
    let start = Instant::now();
    let (messages, status) = run(
        &r,
        StreamCompleteRequest {
            stream_min_tokens_per_s: Some(5.0),
            stream_min_tokens_window: Some(dur(Duration::from_secs(1))),
            ..stream_req("unguarded")
        },
    )
    .await;
    let status = status.expect("no fallback to recover on");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "STREAM_TOO_SLOW");
    assert!(
        status
            .message()
            .contains("below the request's stream_min_tokens_per_s (5)"),
        "{}",
        status.message()
    );
    // The group's grace is the default, 5s, then a 1s window.
    assert_between(
        start.elapsed(),
        Duration::from_secs(6),
        Duration::from_secs(6) + SLACK * 3,
    );
    assert!(text(&messages).starts_with("abab"));
}
