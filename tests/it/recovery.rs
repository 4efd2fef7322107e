//! Streams that break after their first chunk, recovered through the fallback chain: the real
//! server, and upstreams that cut, stall or reject on purpose and record what reached them.

use std::time::Duration;

use llm_router::proto::{
    AttemptOutcome, FinishReason, StreamCompleteRequest, StreamCompleteResponse, StreamRecovery,
};
use tonic::Code;

use crate::common::upstream::{Behaviour, Upstream, fixture};
use crate::common::*;

/// `breaks` sends three chunks and resets the connection; `stalls` sends two and falls silent;
/// `rest` answers (and takes prefills); `rejects` refuses a prefill with a 400; `claude` is an
/// Anthropic deployment (which takes prefills by default).
fn config(base: &str, recovery: &str) -> String {
    let root = base.trim_end_matches("/v1");
    format!(
        r#"
model_list:
  - model_name: breaks
    litellm_params: {{ model: openai/breaks, api_base: "{base}" }}
  - model_name: stalls
    litellm_params: {{ model: openai/stalls, api_base: "{base}" }}
  - model_name: picky
    litellm_params: {{ model: openai/breaks, api_base: "{base}" }}
  - model_name: to-claude
    litellm_params: {{ model: openai/breaks, api_base: "{base}" }}
  - model_name: rest
    litellm_params: {{ model: openai/rest, api_base: "{base}" }}
    model_info: {{ supports_assistant_prefill: true }}
  - model_name: rejects
    litellm_params: {{ model: openai/rejects, api_base: "{base}" }}
    model_info: {{ supports_assistant_prefill: true }}
  - model_name: plain
    litellm_params: {{ model: openai/plain, api_base: "{base}" }}
  - model_name: claude
    litellm_params: {{ model: anthropic/claude-x, api_base: "{root}", api_key: sk-ant-test }}
router_settings:
  num_retries: 0
  stream_idle_timeout: 300ms
  stream_recovery: {recovery}
  fallbacks:
    - breaks: [rest]
    - stalls: [rest]
    - picky: [rejects, rest]
    - to-claude: [plain, claude]
"#
    )
}

async fn setup(recovery: &str) -> (Upstream, TestRouter) {
    let up = Upstream::start().await;
    up.set("breaks", Behaviour::ResetAfter { after: 3 });
    up.set("stalls", Behaviour::StallAfter { after: 2 });
    up.set("rest", Behaviour::ok("and the rest."));
    up.set("plain", Behaviour::ok("never asked."));
    up.set(
        "rejects",
        Behaviour::status(
            400,
            r#"{"error":{"message":"a final assistant message (prefill) is not supported","type":"invalid_request_error"}}"#,
        ),
    );
    up.set("claude-x", Behaviour::sse_fixture("anthropic/stream.sse"));
    let r = TestRouter::start(&config(&up.base(), recovery)).await;
    (up, r)
}

/// Every message of a stream, or the status that ended it with the messages before it.
pub(crate) async fn run(
    r: &TestRouter,
    req: StreamCompleteRequest,
) -> (Vec<StreamCompleteResponse>, Option<tonic::Status>) {
    let mut s = r.client().stream_complete(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    loop {
        match s.message().await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, None),
            Err(status) => return (out, Some(status)),
        }
    }
}

pub(crate) fn text(messages: &[StreamCompleteResponse]) -> String {
    messages.iter().map(|m| m.delta.as_str()).collect()
}

/// The messages' text as a client that honours restart markers assembles it.
pub(crate) fn assembled(messages: &[StreamCompleteResponse]) -> String {
    let mut out = String::new();
    for m in messages {
        if m.restart {
            out.clear();
        }
        out.push_str(&m.delta);
    }
    out
}

/// The log a message carries, as (deployment, outcome, whether it recovered the stream).
fn log(m: &StreamCompleteResponse) -> Vec<(String, AttemptOutcome, bool)> {
    log_of(&m.attempts)
}

pub(crate) fn log_of(
    attempts: &[llm_router::proto::Attempt],
) -> Vec<(String, AttemptOutcome, bool)> {
    attempts
        .iter()
        .map(|a| {
            (
                a.deployment.clone(),
                AttemptOutcome::try_from(a.outcome).unwrap(),
                a.recovery,
            )
        })
        .collect()
}

pub(crate) fn with(model: &str, recovery: StreamRecovery) -> StreamCompleteRequest {
    StreamCompleteRequest {
        stream_recovery: recovery as i32,
        ..stream_req(model)
    }
}

/// The last message a deployment was sent, as (role, content).
fn last_message(up: &Upstream, model: &str) -> (String, String) {
    let body = up.counts(model).last_body.unwrap();
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    (
        last["role"].as_str().unwrap().to_string(),
        last["content"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn a_stream_cut_after_three_chunks_continues_on_the_fallback() {
    let (up, r) = setup("continue").await;
    let (messages, status) = run(&r, stream_req("breaks")).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(text(&messages), "part0 part1 part2 and the rest.");
    assert!(messages.iter().all(|m| !m.restart));
    let resumed = messages
        .iter()
        .find(|m| m.resumed)
        .expect("a resumed message");
    assert_eq!(
        (resumed.model.as_str(), resumed.deployment.as_str()),
        ("rest", "rest/0")
    );
    assert_eq!(
        log(resumed),
        [
            ("breaks/0".into(), AttemptOutcome::UpstreamError, false),
            ("rest/0".into(), AttemptOutcome::Ok, true)
        ]
    );
    assert!(
        resumed.attempts[0]
            .detail
            .starts_with("after 3 chunks (about "),
        "{}",
        resumed.attempts[0].detail
    );
    let last = messages.last().unwrap();
    assert_eq!(last.finish_reason, FinishReason::Stop as i32);
    assert_eq!(last.deployment, "rest/0");
    // The fallback got the conversation and the text delivered, as a prefill without its
    // trailing space.
    assert_eq!(
        last_message(&up, "rest"),
        ("assistant".into(), "part0 part1 part2".into())
    );
    let (_, metrics) = r.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            r#"llmrouter_stream_recoveries_total{model_group="breaks",mode="continue",result="recovered"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stream_that_falls_silent_continues_on_the_fallback_after_the_idle_limit() {
    let (up, r) = setup("continue").await;
    let start = std::time::Instant::now();
    let (messages, status) = run(&r, stream_req("stalls")).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(text(&messages), "part0 part1 and the rest.");
    assert!(start.elapsed() >= Duration::from_millis(300));
    let resumed = messages.iter().find(|m| m.resumed).unwrap();
    assert_eq!(log(resumed)[0].1, AttemptOutcome::IdleTimeout);
    assert_eq!(
        up.wait_abandoned("stalls", 1).await.abandoned,
        1,
        "the silent request is closed"
    );
}

#[tokio::test]
async fn a_caller_that_asks_for_restarts_gets_one_marker_then_the_fallbacks_whole_answer() {
    let (up, r) = setup("none").await;
    let (messages, status) = run(&r, with("breaks", StreamRecovery::Restart)).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(messages.iter().filter(|m| m.restart).count(), 1);
    assert_eq!(assembled(&messages), "and the rest.");
    // Restart sends the original conversation: no prefill.
    assert_eq!(last_message(&up, "rest").0, "user");
}

#[tokio::test]
async fn a_caller_that_did_not_ask_for_restarts_never_sees_a_marker() {
    // The group restarts for callers that accept it; this one did not say, so it continues.
    let (_, r) = setup("restart").await;
    let (messages, status) = run(&r, stream_req("breaks")).await;
    assert!(status.is_none(), "{status:?}");
    assert!(messages.iter().all(|m| !m.restart));
    assert_eq!(text(&messages), "part0 part1 part2 and the rest.");
}

#[tokio::test]
async fn without_recovery_the_break_is_answered_and_the_fallback_never_called() {
    for (config, request) in [
        ("none", StreamRecovery::Unspecified),
        ("continue", StreamRecovery::None),
    ] {
        let (up, r) = setup(config).await;
        let (messages, status) = run(&r, with("breaks", request)).await;
        assert_eq!(text(&messages), "part0 part1 part2 ", "{config}");
        let status = status.expect("the stream ends with a status");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(reason(&status), "STREAM_INTERRUPTED");
        assert!(
            !status.message().contains("recovery"),
            "{}",
            status.message()
        );
        assert_eq!(up.counts("rest").requests, 0, "{config}");
    }
}

#[tokio::test]
async fn a_fallback_that_rejects_the_prefill_is_passed_over_and_never_masks_the_break() {
    let (up, r) = setup("continue").await;
    let (messages, status) = run(&r, stream_req("picky")).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(text(&messages), "part0 part1 part2 and the rest.");
    let resumed = messages.iter().find(|m| m.resumed).unwrap();
    assert_eq!(
        log(resumed),
        [
            ("picky/0".into(), AttemptOutcome::UpstreamError, false),
            ("rejects/0".into(), AttemptOutcome::Rejected, true),
            ("rest/0".into(), AttemptOutcome::Ok, true)
        ]
    );
    assert_eq!(up.counts("rejects").requests, 1);

    // With nothing after the rejecting fallback, the caller gets the break, not the 400.
    up.set(
        "rest",
        Behaviour::status(400, r#"{"error":{"message":"no prefill here either"}}"#),
    );
    let (_, status) = run(&r, stream_req("picky")).await;
    let status = status.unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert_eq!(reason(&status), "STREAM_INTERRUPTED");
    assert!(
        status
            .message()
            .contains("recovery by continue was tried and failed"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_continuation_skips_deployments_that_take_no_prefill_and_speaks_anthropic() {
    let (up, r) = setup("continue").await;
    let (messages, status) = run(&r, stream_req("to-claude")).await;
    assert!(status.is_none(), "{status:?}");
    // `plain` (OpenAI) takes no prefill: never asked. Anthropic continues from the prefill.
    assert_eq!(up.counts("plain").requests, 0);
    assert_eq!(text(&messages), "part0 part1 part2 Hello!");
    let body = up.counts("claude-x").last_body.unwrap();
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "assistant");
    assert_eq!(
        serde_json::to_string(&last["content"]).unwrap(),
        serde_json::to_string("part0 part1 part2").unwrap()
    );
    let last = messages.last().unwrap();
    assert_eq!(last.finish_reason, FinishReason::Stop as i32);
    assert_eq!(last.usage.unwrap().completion_tokens, 15);
    // The fixture is the Anthropic reference stream.
    assert!(fixture("anthropic/stream.sse").contains("Hello"));
}

#[tokio::test]
async fn a_recovery_racing_the_total_deadline_ends_at_the_deadline_with_the_break() {
    let (up, r) = setup("continue").await;
    up.set("rest", Behaviour::Hang);
    let req = StreamCompleteRequest {
        timeout: Some(dur(Duration::from_millis(800))),
        ..stream_req("breaks")
    };
    let start = std::time::Instant::now();
    let (_, status) = run(&r, req).await;
    let status = status.unwrap();
    assert_between(
        start.elapsed(),
        Duration::from_millis(780) - ms(30),
        ms(780) + SLACK,
    );
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert_eq!(
        log_of(&attempt_log(&status).attempts),
        [
            ("breaks/0".into(), AttemptOutcome::UpstreamError, false),
            // The request's own timeout cut it: the caller's limit, not the deployment's.
            ("rest/0".into(), AttemptOutcome::CallerTimeout, true)
        ]
    );
}

// ---- Each wire format, each kind of break, and recovery meeting the router's other rules ----

/// Groups whose first deployment breaks in one way or another, each falling back to a group
/// that answers in the same wire format.
fn formats_config(base: &str) -> String {
    let root = base.trim_end_matches("/v1");
    format!(
        r#"
model_list:
  - model_name: claude-cut
    litellm_params: {{ model: anthropic/claude-cut, api_base: "{root}", api_key: k }}
  - model_name: claude-error-event
    litellm_params: {{ model: anthropic/claude-error, api_base: "{root}", api_key: k }}
  - model_name: claude
    litellm_params: {{ model: anthropic/claude-x, api_base: "{root}", api_key: k }}
  - model_name: gemini-cut
    litellm_params: {{ model: gemini/gemini-cut, api_base: "{root}/v1beta", api_key: k }}
  - model_name: gemini
    litellm_params: {{ model: gemini/gemini-ok, api_base: "{root}/v1beta", api_key: k }}
  - model_name: garbled
    litellm_params: {{ model: openai/garbled, api_base: "{base}" }}
  - model_name: cooling
    litellm_params: {{ model: openai/cooling, api_base: "{base}" }}
    model_info: {{ supports_assistant_prefill: true }}
  - model_name: rest
    litellm_params: {{ model: openai/rest, api_base: "{base}" }}
    model_info: {{ supports_assistant_prefill: true }}
  - model_name: slow
    litellm_params: {{ model: openai/slow, api_base: "{base}" }}
  - model_name: breaks
    litellm_params: {{ model: openai/breaks, api_base: "{base}" }}
    model_info: {{ supports_assistant_prefill: true }}
router_settings:
  num_retries: 0
  stream_idle_timeout: 300ms
  stream_recovery: continue
  allowed_fails: 0
  cooldown_time: 30s
  model_group_settings:
    gemini-cut: {{ stream_recovery: restart }}
    slow: {{ hedge_after: 100ms }}
  fallbacks:
    - claude-cut: [claude]
    - claude-error-event: [claude]
    - gemini-cut: [gemini]
    - garbled: [cooling, rest]
    - slow: [breaks, rest]
"#
    )
}

async fn formats() -> (Upstream, TestRouter) {
    let up = Upstream::start().await;
    let anthropic = fixture("anthropic/stream.sse");
    // Cut after its first text delta ("Hello"): message_start, content_block_start, ping, delta.
    up.set(
        "claude-cut",
        Behaviour::Sse {
            body: anthropic.clone(),
            cut_after: Some(4),
        },
    );
    // An overloaded error event after the first text delta.
    up.set(
        "claude-error",
        Behaviour::sse_fixture_edited("anthropic/stream.sse", |events| {
            let mut out = events[..4].to_vec();
            out.push(
                "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n"
                    .into(),
            );
            out
        }),
    );
    up.set("claude-x", Behaviour::sse_fixture("anthropic/stream.sse"));
    up.set(
        "gemini-cut",
        Behaviour::Sse {
            body: fixture("gemini/stream.sse"),
            cut_after: Some(1),
        },
    );
    up.set("gemini-ok", Behaviour::sse_fixture("gemini/stream.sse"));
    // Two content chunks, then more unreadable events than the limit of 3.
    up.set(
        "garbled",
        Behaviour::sse_fixture_edited("openai/stream.sse", |events| {
            let mut out = events[..3].to_vec();
            out.extend(std::iter::repeat_n("data: {not json\n\n".to_string(), 4));
            out
        }),
    );
    up.set("cooling", Behaviour::status(503, "down"));
    up.set("rest", Behaviour::ok("and the rest."));
    up.set("slow", Behaviour::slow_first_chunk("too slow", ms(2000)));
    up.set("breaks", Behaviour::ResetAfter { after: 3 });
    let r = TestRouter::start(&formats_config(&up.base())).await;
    (up, r)
}

#[tokio::test]
async fn anthropic_streams_cut_or_ended_by_an_error_event_continue_on_anthropic() {
    let (up, r) = formats().await;
    for group in ["claude-cut", "claude-error-event"] {
        let (messages, status) = run(&r, stream_req(group)).await;
        assert!(status.is_none(), "{group}: {status:?}");
        // "Hello" delivered, then the fallback's whole answer after the prefill "Hello".
        assert_eq!(text(&messages), "HelloHello!", "{group}");
        let resumed = messages.iter().find(|m| m.resumed).unwrap();
        let broken = AttemptOutcome::try_from(resumed.attempts[0].outcome).unwrap();
        let expected = if group == "claude-cut" {
            AttemptOutcome::UpstreamError
        } else {
            AttemptOutcome::RateLimited
        };
        assert_eq!(broken, expected, "{group}");
        let body = up.counts("claude-x").last_body.unwrap();
        let last = body["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["role"], "assistant", "{group}");
    }
}

#[tokio::test]
async fn a_gemini_stream_cut_midway_restarts_on_gemini_for_a_caller_that_accepts_it() {
    let (_, r) = formats().await;
    let (messages, status) = run(&r, with("gemini-cut", StreamRecovery::Restart)).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(messages[0].delta, "The");
    assert_eq!(messages.iter().filter(|m| m.restart).count(), 1);
    assert_eq!(assembled(&messages), "The quick brown fox jumps.");

    // The group restarts only for callers that accept it; Gemini takes no prefill by default,
    // so a caller that did not ask has no deployment to continue on. (A new router: with
    // allowed_fails 0, the first break cooled `gemini-cut` down.)
    let (_, r) = formats().await;
    let (messages, status) = run(&r, stream_req("gemini-cut")).await;
    let status = status.unwrap_or_else(|| panic!("{messages:#?}"));
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains("recovery by continue was tried and failed"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn too_many_unreadable_events_midway_break_the_stream_and_a_cooling_fallback_is_skipped() {
    let (up, r) = formats().await;
    // Cool `cooling` down first: with allowed_fails 0, one failure is enough.
    let _ = r.client().complete(complete("cooling")).await.unwrap_err();
    let (messages, status) = run(&r, stream_req("garbled")).await;
    assert!(status.is_none(), "{status:?}");
    // The fake fallback does not really continue: its answer follows the prefill as it is.
    assert_eq!(text(&messages), "Hello there!and the rest.");
    let resumed = messages.iter().find(|m| m.resumed).unwrap();
    assert_eq!(
        log(resumed),
        [
            ("garbled/0".into(), AttemptOutcome::UpstreamError, false),
            ("cooling/0".into(), AttemptOutcome::CoolingDown, true),
            ("rest/0".into(), AttemptOutcome::Ok, true)
        ]
    );
    assert!(
        resumed.attempts[0]
            .detail
            .contains("malformed stream events"),
        "{}",
        resumed.attempts[0].detail
    );
    assert_eq!(up.counts("cooling").requests, 1, "skipped, never sent");
}

#[tokio::test]
async fn a_hedge_that_won_and_then_broke_recovers_from_its_own_group_on() {
    let (up, r) = formats().await;
    let (messages, status) = run(&r, stream_req("slow")).await;
    assert!(status.is_none(), "{status:?}");
    // The hedge into `breaks` (the next group) answered first and broke after three chunks;
    // the recovery went on from there, to `rest`, and never back to `slow`.
    assert_eq!(text(&messages), "part0 part1 part2 and the rest.");
    let resumed = messages.iter().find(|m| m.resumed).unwrap();
    assert_eq!(
        log(resumed),
        [
            ("slow/0".into(), AttemptOutcome::Cancelled, false),
            ("breaks/0".into(), AttemptOutcome::UpstreamError, false),
            ("rest/0".into(), AttemptOutcome::Ok, true)
        ]
    );
    assert!(resumed.attempts[1].hedge);
    assert_eq!(up.counts("slow").requests, 1);
}

#[tokio::test]
async fn a_continue_keeps_no_more_than_its_limit_of_delivered_text() {
    let up = Upstream::start().await;
    up.set("rest", Behaviour::ok("and the rest."));
    let base = up.base();
    let r = TestRouter::start(&format!(
        r#"
model_list:
  - model_name: long
    litellm_params: {{ model: openai/long, api_base: "{base}" }}
  - model_name: rest
    litellm_params: {{ model: openai/rest, api_base: "{base}" }}
    model_info: {{ supports_assistant_prefill: true }}
router_settings:
  num_retries: 0
  stream_recovery: continue
  stream_recovery_max_bytes: 1024
  fallbacks:
    - long: [rest]
"#
    ))
    .await;
    // 64 bytes of text an event; the connection is reset after `events` of them.
    let word = "w".repeat(63) + " ";
    let breaking_after = |events: usize| {
        let mut body = String::new();
        for _ in 0..events + 1 {
            body.push_str(&format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}}}}]}}\n\n"
            ));
        }
        Behaviour::Sse {
            body,
            cut_after: Some(events),
        }
    };
    // 640 bytes delivered: within the limit, so the stream continues on `rest` from them.
    up.set("long", breaking_after(10));
    let (messages, status) = run(&r, stream_req("long")).await;
    assert!(status.is_none(), "{status:?}");
    assert!(messages.iter().any(|m| m.resumed));
    assert_eq!(up.counts("rest").requests, 1);
    // 1,280 bytes: over it. The text was let go; no continuation is sent, and the stream ends
    // with its break, saying why it did not recover.
    up.set("long", breaking_after(20));
    let (messages, status) = run(&r, stream_req("long")).await;
    assert_eq!(text(&messages).len(), 20 * 64);
    let status = status.expect("the break ends the stream");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains("stream_recovery_max_bytes (1024 bytes)"),
        "{}",
        status.message()
    );
    assert_eq!(up.counts("rest").requests, 1, "no continuation was sent");
    // A caller that takes restarts still recovers, from the fallback's first word.
    let req = StreamCompleteRequest {
        stream_recovery: StreamRecovery::Restart as i32,
        ..stream_req("long")
    };
    let (messages, status) = run(&r, req).await;
    assert!(status.is_none(), "{status:?}");
    assert!(messages.iter().any(|m| m.restart));
    assert_eq!(up.counts("rest").requests, 2);
}
