//! Deadline semantics end to end: the real server on port 0, a real OpenAI-compatible upstream
//! in-process that misbehaves on purpose, and the generated tonic client. Real timers, with
//! tolerances that hold on a loaded 2-core machine.

use std::time::{Duration, Instant};

use crate::common::upstream::{Behaviour, Upstream};
use crate::common::*;
use llm_router::proto::{AttemptOutcome, FinishReason};
use tonic::Code;
use tonic_types::StatusExt;

/// Each group has one deployment on the test upstream; the upstream model name is the
/// deployment id, so the upstream's counts are per deployment.
fn config(up: &Upstream, extra_router_settings: &str) -> String {
    let base = up.base();
    format!(
        r#"
model_list:
  - model_name: primary
    litellm_params: {{ model: openai/primary, api_base: "{base}", api_key: os.environ/TEST_KEY, timeout: 300ms, max_retries: 0 }}
    model_info: {{ id: primary }}
  - model_name: second
    litellm_params: {{ model: openai/second, api_base: "{base}", timeout: 300ms, max_retries: 0 }}
    model_info: {{ id: second }}
  - model_name: backup
    litellm_params: {{ model: openai/backup, api_base: "{base}", timeout: 5s, max_retries: 0 }}
    model_info: {{ id: backup }}
  - model_name: retried
    litellm_params: {{ model: openai/retried, api_base: "{base}", timeout: 5s, max_retries: 3 }}
    model_info: {{ id: retried }}
  - model_name: streamy
    litellm_params: {{ model: openai/streamy, api_base: "{base}", timeout: 10s, stream_timeout: 300ms, max_retries: 0 }}
    model_info: {{ id: streamy }}
  - model_name: mocked
    litellm_params: {{ model: mock/fast, timeout: 300ms, mock: {{ time_to_first_chunk: 10ms, text: "mocked answer" }} }}
    model_info: {{ id: mocked }}
router_settings:
  timeout: 60s
  num_retries: 0
  retry_backoff_initial: 20ms
  retry_backoff_max: 100ms
  stream_idle_timeout: 400ms
  fallbacks:
    - primary: [backup]
    - streamy: [backup]
    - mocked: [backup]
{extra_router_settings}
"#
    )
}

async fn setup() -> (Upstream, TestRouter) {
    let up = Upstream::start().await;
    up.set("backup", Behaviour::ok("backup answered"));
    let r = TestRouter::start_with_env(
        &config(&up, "  allow_mock_timeout: true"),
        &[("TEST_KEY", "sk-test-secret-123")],
    )
    .await;
    (up, r)
}

#[tokio::test]
async fn unary_answers_with_message_usage_and_attempts() {
    let (up, r) = setup().await;
    up.set("primary", Behaviour::ok("hello from primary"));
    let resp = r
        .client()
        .complete(complete("primary"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.message.unwrap().content, "hello from primary");
    assert_eq!(resp.model, "primary");
    assert_eq!(resp.deployment, "primary");
    assert_eq!(resp.finish_reason, FinishReason::Stop as i32);
    assert_eq!(resp.usage.unwrap().total_tokens, 8);
    assert_eq!(
        outcomes(&resp.attempts),
        [("primary".into(), AttemptOutcome::Ok)]
    );
    assert!(resp.id.starts_with("chatcmpl-"));
    let seen = up.counts("primary");
    assert_eq!(
        seen.last_authorization.as_deref(),
        Some("Bearer sk-test-secret-123")
    );
    assert_eq!(seen.last_body.unwrap()["messages"][0]["role"], "user");
}

#[tokio::test]
async fn a_hanging_primary_falls_back_within_its_timeout_and_is_abandoned() {
    let (up, r) = setup().await;
    up.set("primary", Behaviour::Hang);
    let start = Instant::now();
    let resp = r
        .client()
        .complete(complete("primary"))
        .await
        .unwrap()
        .into_inner();
    assert_between(start.elapsed(), ms(300), ms(300) + SLACK);
    assert_eq!(resp.model, "backup");
    assert_eq!(resp.message.unwrap().content, "backup answered");
    assert_eq!(
        outcomes(&resp.attempts),
        [
            ("primary".into(), AttemptOutcome::Timeout),
            ("backup".into(), AttemptOutcome::Ok)
        ]
    );
    // The timed-out attempt's connection was closed, not left running upstream.
    assert_eq!(up.wait_abandoned("primary", 1).await.abandoned, 1);
}

#[tokio::test]
async fn all_hanging_gives_deadline_exceeded_only_after_the_last_fallback() {
    let (up, r) = setup().await;
    up.set("primary", Behaviour::Hang);
    up.set("second", Behaviour::Hang);
    let mut req = complete("primary");
    req.fallbacks = vec!["second".into()];
    let start = Instant::now();
    let status = r.client().complete(req).await.unwrap_err();
    assert_between(start.elapsed(), ms(600), ms(600) + SLACK);
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(reason(&status), "FALLBACKS_EXHAUSTED");
    assert_eq!(
        outcomes(&attempt_log(&status).attempts),
        [
            ("primary".into(), AttemptOutcome::Timeout),
            ("second".into(), AttemptOutcome::Timeout)
        ]
    );
}

#[tokio::test]
async fn a_client_deadline_shorter_than_the_chain_gives_deadline_exceeded_not_cancelled() {
    let (up, r) = setup().await;
    up.set("primary", Behaviour::Hang);
    up.set("backup", Behaviour::Hang);
    let mut req = tonic::Request::new(complete("primary"));
    req.set_timeout(ms(450));
    let start = Instant::now();
    let status = r.client().complete(req).await.unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_between(elapsed, ms(400), ms(450) + SLACK);
    let log = attempt_log(&status);
    assert_eq!(
        outcomes(&log.attempts),
        [
            // The primary's own 300ms timeout; then the client's deadline cut the fallback,
            // which is not the fallback's failure.
            ("primary".into(), AttemptOutcome::Timeout),
            ("backup".into(), AttemptOutcome::CallerTimeout)
        ]
    );
    assert_eq!(
        up.wait_abandoned("backup", 1).await.abandoned,
        1,
        "the fallback's request was dropped"
    );
}

#[tokio::test]
async fn the_request_timeout_bounds_the_whole_chain() {
    let (up, r) = setup().await;
    up.set("primary", Behaviour::Hang);
    up.set("backup", Behaviour::Hang);
    let mut req = complete("primary");
    req.timeout = Some(dur(ms(500)));
    let start = Instant::now();
    let status = r.client().complete(req).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(reason(&status), "DEADLINE_EXCEEDED");
    assert_between(start.elapsed(), ms(480), ms(480) + SLACK);
}

#[tokio::test]
async fn retries_are_counted_by_the_upstream() {
    let (up, r) = setup().await;
    up.set("retried", Behaviour::ok("third time lucky"));
    up.fail_first(
        "retried",
        2,
        Behaviour::status(503, r#"{"error":{"message":"overloaded"}}"#),
    );
    let resp = r
        .client()
        .complete(complete("retried"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.message.unwrap().content, "third time lucky");
    assert_eq!(
        outcomes(&resp.attempts),
        [
            ("retried".into(), AttemptOutcome::UpstreamError),
            ("retried".into(), AttemptOutcome::UpstreamError),
            ("retried".into(), AttemptOutcome::Ok)
        ]
    );
    assert_eq!(resp.attempts[0].upstream_status, 503);
    assert!(resp.attempts[0].detail.contains("overloaded"));
    assert_eq!(up.counts("retried").requests, 3);
}

#[tokio::test]
async fn exhausted_retries_on_5xx_answer_unavailable() {
    let (up, r) = setup().await;
    up.set("retried", Behaviour::status(502, "bad gateway"));
    let status = r.client().complete(complete("retried")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "FALLBACKS_EXHAUSTED");
    assert_eq!(
        up.counts("retried").requests,
        4,
        "first attempt and max_retries 3"
    );
}

#[tokio::test]
async fn rate_limits_honour_retry_after_and_answer_resource_exhausted_with_retry_info() {
    let (up, r) = setup().await;
    up.set(
        "retried",
        Behaviour::Status {
            code: 429,
            body: r#"{"error":{"message":"slow down"}}"#.into(),
            retry_after: Some(1),
        },
    );
    let mut req = complete("retried");
    req.num_retries = Some(1);
    let start = Instant::now();
    let status = r.client().complete(req).await.unwrap_err();
    assert_between(start.elapsed(), ms(1000), ms(1000) + SLACK);
    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
    assert_eq!(up.counts("retried").requests, 2);
}

#[tokio::test]
async fn connection_resets_before_headers_are_retried() {
    let (up, r) = setup().await;
    up.set("retried", Behaviour::ok("after the reset"));
    up.fail_first("retried", 1, Behaviour::ResetAfter { after: 0 });
    let resp = r
        .client()
        .complete(complete("retried"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.message.unwrap().content, "after the reset");
    assert_eq!(
        AttemptOutcome::try_from(resp.attempts[0].outcome).unwrap(),
        AttemptOutcome::UpstreamError
    );
}

#[tokio::test]
async fn connect_errors_fall_back() {
    let up = Upstream::start().await;
    up.set("backup", Behaviour::ok("backup answered"));
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = config(&up, "").replacen(&up.base(), &format!("http://{dead}/v1"), 1);
    let r = TestRouter::start_with_env(&yaml, &[("TEST_KEY", "k")]).await;
    let resp = r
        .client()
        .complete(complete("primary"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "backup");
    assert_eq!(
        AttemptOutcome::try_from(resp.attempts[0].outcome).unwrap(),
        AttemptOutcome::ConnectError
    );
}

#[tokio::test]
async fn auth_failures_skip_to_the_fallback_and_never_leak_the_key() {
    let (up, r) = setup().await;
    up.set(
        "primary",
        Behaviour::status(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-test-secret-123"}}"#,
        ),
    );
    let resp = r
        .client()
        .complete(complete("primary"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "backup");
    let a = &resp.attempts[0];
    assert_eq!(
        AttemptOutcome::try_from(a.outcome).unwrap(),
        AttemptOutcome::Rejected
    );
    assert_eq!(a.upstream_status, 401);
    assert!(!a.detail.contains("sk-test-secret-123"), "{}", a.detail);
    assert!(a.detail.contains("<redacted>"));

    // With no fallback the call ends FAILED_PRECONDITION.
    let mut req = complete("primary");
    req.fallbacks = vec!["second".into()];
    up.set("second", Behaviour::status(403, "forbidden"));
    let status = r.client().complete(req).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(!format!("{status:?}").contains("sk-test-secret-123"));
}

#[tokio::test]
async fn bad_requests_answer_invalid_argument_with_no_fallback() {
    let (up, r) = setup().await;
    up.set(
        "primary",
        Behaviour::status(400, r#"{"error":{"message":"invalid temperature"}}"#),
    );
    let status = r.client().complete(complete("primary")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "UPSTREAM_REJECTED");
    assert!(status.message().contains("invalid temperature"));
    assert_eq!(up.counts("backup").requests, 0);
}

#[tokio::test]
async fn streams_answer_in_order_with_attempts_first_and_usage_last() {
    let (up, r) = setup().await;
    up.set("streamy", Behaviour::ok("one two three"));
    let mut s = r
        .client()
        .stream_complete(stream_req("streamy"))
        .await
        .unwrap()
        .into_inner();
    let mut messages = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        messages.push(m);
    }
    let text: String = messages.iter().map(|m| m.delta.as_str()).collect();
    assert_eq!(text, "one two three");
    assert_eq!(
        outcomes(&messages[0].attempts),
        [("streamy".into(), AttemptOutcome::Ok)]
    );
    assert!(messages[1..].iter().all(|m| m.attempts.is_empty()));
    let last = messages.last().unwrap();
    assert_eq!(last.finish_reason, FinishReason::Stop as i32);
    assert_eq!(last.usage.unwrap().completion_tokens, 3);
    assert!(
        messages
            .iter()
            .all(|m| m.id == messages[0].id && m.deployment == "streamy")
    );
    assert_eq!(up.counts("streamy").last_body.unwrap()["stream"], true);
}

#[tokio::test]
async fn a_late_first_chunk_times_out_and_the_stream_falls_back() {
    let (up, r) = setup().await;
    // Headers arrive at once; content does not arrive before the 300ms first-chunk deadline.
    up.set(
        "streamy",
        Behaviour::slow_first_chunk("too late", Duration::from_secs(30)),
    );
    let start = Instant::now();
    let mut s = r
        .client()
        .stream_complete(stream_req("streamy"))
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert_between(start.elapsed(), ms(300), ms(300) + SLACK);
    assert_eq!(first.model, "backup");
    assert_eq!(
        outcomes(&first.attempts),
        [
            ("streamy".into(), AttemptOutcome::FirstChunkTimeout),
            ("backup".into(), AttemptOutcome::Ok)
        ]
    );
    assert_eq!(up.wait_abandoned("streamy", 1).await.abandoned, 1);
}

#[tokio::test]
async fn malformed_sse_and_streams_cut_before_content_fall_back() {
    let (up, r) = setup().await;
    // More malformed events than stream_max_malformed_events (3 by default).
    up.set("streamy", Behaviour::MalformedSse { count: 4 });
    let first = r
        .client()
        .stream_complete(stream_req("streamy"))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await;
    let first = first.unwrap().unwrap();
    assert_eq!(first.model, "backup");
    assert_eq!(
        AttemptOutcome::try_from(first.attempts[0].outcome).unwrap(),
        AttemptOutcome::UpstreamError
    );
    assert!(
        first.attempts[0].detail.contains("malformed"),
        "{}",
        first.attempts[0].detail
    );

    up.set("streamy", Behaviour::EndWithoutDone { after: 0 });
    let first = r
        .client()
        .stream_complete(stream_req("streamy"))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await;
    assert_eq!(first.unwrap().unwrap().model, "backup");
}

#[tokio::test]
async fn a_silent_committed_stream_ends_with_stream_idle_timeout() {
    let (up, r) = setup().await;
    up.set("streamy", Behaviour::StallAfter { after: 1 });
    let mut s = r
        .client()
        .stream_complete(stream_req("streamy"))
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert_eq!(first.delta, "part0 ");
    let start = Instant::now();
    let status = s.message().await.unwrap_err();
    assert_between(start.elapsed(), ms(400) - ms(50), ms(400) + SLACK);
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(reason(&status), "STREAM_IDLE_TIMEOUT");
    assert_eq!(
        outcomes(&attempt_log(&status).attempts),
        [("streamy".into(), AttemptOutcome::IdleTimeout)]
    );
    assert_eq!(up.counts("backup").requests, 0, "no fallback after commit");
    assert_eq!(up.wait_abandoned("streamy", 1).await.abandoned, 1);
}

#[tokio::test]
async fn a_committed_stream_that_breaks_ends_unavailable() {
    let (up, r) = setup().await;
    up.set("streamy", Behaviour::ResetAfter { after: 2 });
    let mut s = r
        .client()
        .stream_complete(stream_req("streamy"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().delta, "part0 ");
    assert_eq!(s.message().await.unwrap().unwrap().delta, "part1 ");
    let status = s.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "STREAM_INTERRUPTED");

    up.set("streamy", Behaviour::EndWithoutDone { after: 1 });
    let mut s = r
        .client()
        .stream_complete(stream_req("streamy"))
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    assert_eq!(s.message().await.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn a_client_that_cancels_a_stream_closes_the_upstream_request() {
    let (up, r) = setup().await;
    up.set("streamy", Behaviour::StallAfter { after: 1 });
    let mut s = r
        .client()
        .stream_complete(stream_req("streamy"))
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    drop(s);
    assert_eq!(up.wait_abandoned("streamy", 1).await.abandoned, 1);
}

#[tokio::test]
async fn a_client_that_gives_up_on_a_unary_call_closes_the_upstream_request() {
    let (up, r) = setup().await;
    up.set("backup", Behaviour::Hang);
    let mut client = r.client();
    // No grpc-timeout: the client simply stops waiting and resets the HTTP/2 stream.
    let gave_up = tokio::time::timeout(ms(200), client.complete(complete("backup"))).await;
    assert!(gave_up.is_err());
    assert_eq!(up.wait_abandoned("backup", 1).await.abandoned, 1);
}

#[tokio::test]
async fn mock_timeout_runs_the_fallbacks_for_real() {
    let (up, r) = setup().await;
    let mut req = complete("mocked");
    req.mock_timeout = true;
    let start = Instant::now();
    let resp = r.client().complete(req).await.unwrap().into_inner();
    assert_between(start.elapsed(), ms(300), ms(300) + SLACK);
    assert_eq!(
        outcomes(&resp.attempts),
        [
            ("mocked".into(), AttemptOutcome::MockTimeout),
            ("backup".into(), AttemptOutcome::Ok)
        ]
    );
    assert_eq!(up.counts("backup").requests, 1);

    // Without fallbacks (retried has none) the call ends DEADLINE_EXCEEDED after the attempts.
    let mut req = complete("retried");
    req.mock_timeout = true;
    req.num_retries = Some(0);
    req.timeout = Some(dur(ms(400)));
    let status = r.client().complete(req).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(
        up.counts("retried").requests,
        0,
        "mock_timeout never calls the provider"
    );
}

#[tokio::test]
async fn mock_timeout_is_refused_when_the_config_disallows_it() {
    let up = Upstream::start().await;
    let r = TestRouter::start_with_env(
        // Off by default.
        &config(&up, ""),
        &[("TEST_KEY", "k")],
    )
    .await;
    let mut req = complete("mocked");
    req.mock_timeout = true;
    let status = r.client().complete(req).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "MOCK_TIMEOUT_DISABLED");
}

#[tokio::test]
async fn a_providers_hint_of_years_reaches_the_caller_as_no_more_than_the_routers_own_cap() {
    let up = Upstream::start().await;
    let hint = |n| Behaviour::Status {
        code: 429,
        body: r#"{"error":{"message":"come back in a few years"}}"#.into(),
        retry_after: Some(n),
    };
    up.set("retried", hint(99_999_999));
    // The default cap: max_cooldown_from_hint, 5 minutes.
    let r = TestRouter::start_with_env(&config(&up, ""), &[("TEST_KEY", "k")]).await;
    let mut req = complete("retried");
    req.num_retries = Some(0);
    let status = r.client().complete(req.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(
        retry.retry_delay,
        Some(Duration::from_secs(300)),
        "was a day"
    );
    // A configured cap, and the same cap on a cooldown's RetryInfo: the deployment cooled for
    // 2s on that hint, and the next call is told 2s at most.
    let r = TestRouter::start_with_env(
        &config(&up, "  max_cooldown_from_hint: 2s\n  allowed_fails: 0"),
        &[("TEST_KEY", "k")],
    )
    .await;
    let status = r.client().complete(req.clone()).await.unwrap_err();
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(2)));
    let status = r.client().complete(req).await.unwrap_err();
    assert_eq!(
        reason(&status),
        "ALL_DEPLOYMENTS_COOLING_DOWN",
        "{status:?}"
    );
    let delay = status
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(delay <= Duration::from_secs(2), "{delay:?}");
}

#[tokio::test]
async fn events_that_carry_nothing_do_not_feed_the_idle_timer() {
    let (up, r) = setup().await;
    // A first word, then a second of usage-only events 5ms apart (each would reset a timer
    // that counted events), then more text.
    let content = |text: &str| {
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n")
    };
    let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10}}\n\n";
    let mut body = content("first ");
    for _ in 0..200 {
        body.push_str(usage);
    }
    body.push_str(&content("late"));
    body.push_str("data: [DONE]\n\n");
    up.set(
        "streamy",
        Behaviour::Sse {
            body,
            cut_after: None,
        },
    );
    let mut s = r
        .client()
        .stream_complete(stream_req("streamy"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().delta, "first ");
    let start = Instant::now();
    let status = s.message().await.unwrap_err();
    assert_between(start.elapsed(), ms(400) - ms(50), ms(400) + SLACK);
    assert_eq!(reason(&status), "STREAM_IDLE_TIMEOUT", "{status:?}");
}
