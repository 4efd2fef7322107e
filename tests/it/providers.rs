//! Each provider's wire format, through the gRPC API: the in-process upstream serves each
//! vendor's documented bodies and SSE streams (tests/fixtures/) byte for byte, and misbehaves
//! in each vendor's own ways.

use std::time::{Duration, Instant};

use crate::common::upstream::{Behaviour, Upstream, fixture};
use crate::common::*;
use llm_router::config::{Config, Source};
use llm_router::proto::{AttemptOutcome, ChatMessage, FinishReason, Role, StreamCompleteResponse};
use tonic::Code;
use tonic_types::StatusExt;

const KEYS: &[(&str, &str)] = &[
    ("OPENAI_KEY", "sk-fixture-openai-key"),
    ("AZURE_API_KEY", "azure-fixture-key"),
    ("ANTHROPIC_API_KEY", "sk-ant-fixture-key"),
    ("GEMINI_API_KEY", "gemini-fixture-key"),
    ("GROQ_API_KEY", "gsk-fixture-key"),
];

/// One group per provider, all on the test upstream. Upstream model names are unique, so the
/// upstream's counts are per deployment.
fn config(base: &str) -> String {
    // Anthropic's base has no /v1 (its path adds it); Gemini's includes its version.
    let root = base.trim_end_matches("/v1");
    format!(
        r#"
model_list:
  - model_name: gpt
    litellm_params: {{ model: openai/gpt-4o-mini, api_base: "{base}", api_key: os.environ/OPENAI_KEY, organization: org-fixture, max_retries: 0 }}
    model_info: {{ id: openai-1 }}
  - model_name: azure-gpt
    litellm_params: {{ model: azure/my-gpt4o-deployment, api_base: "{root}", max_retries: 0 }}
    model_info: {{ id: azure-1 }}
  - model_name: claude
    litellm_params: {{ model: anthropic/claude-sonnet-4-5, api_base: "{root}", api_key: os.environ/ANTHROPIC_API_KEY, timeout: 400ms, max_retries: 0, max_tokens: 1024 }}
    model_info: {{ id: anthropic-1 }}
  - model_name: claude-retried
    litellm_params: {{ model: anthropic/claude-retried, api_base: "{root}", api_key: os.environ/ANTHROPIC_API_KEY, max_retries: 2 }}
    model_info: {{ id: anthropic-2 }}
  - model_name: gemini
    litellm_params: {{ model: gemini/gemini-2.0-flash, api_base: "{root}/v1beta", api_key: os.environ/GEMINI_API_KEY, max_retries: 0 }}
    model_info: {{ id: gemini-1 }}
  - model_name: groq
    litellm_params: {{ model: groq/llama-3.3-70b, api_base: "{base}", api_key: os.environ/GROQ_API_KEY, max_retries: 0 }}
    model_info: {{ id: groq-1 }}
  - model_name: big-context
    litellm_params: {{ model: openai/big-context, api_base: "{base}", api_key: os.environ/OPENAI_KEY }}
    model_info: {{ id: big-context }}
  - model_name: lenient
    litellm_params: {{ model: openai/lenient, api_base: "{base}", api_key: os.environ/OPENAI_KEY }}
    model_info: {{ id: lenient }}
  - model_name: reasoner
    litellm_params: {{ model: openai/o3, api_base: "{base}", api_key: os.environ/OPENAI_KEY, max_retries: 0 }}
    model_info: {{ id: o3-1, supports_reasoning: true }}
  - model_name: azure-reasoner
    litellm_params: {{ model: azure/o_series/my-reasoner, api_base: "{root}", api_key: azure-key, max_retries: 0 }}
    model_info: {{ id: azure-o-1 }}
router_settings:
  num_retries: 0
  # Each test walks one deployment through several failures in a row: an auth failure would
  # cool it (LiteLLM's default rule) and hide the next mapping.
  disable_cooldowns: true
  retry_backoff_initial: 10ms
  retry_backoff_max: 20ms
  fallbacks:
    - claude: [groq]
    - gemini: [azure-gpt]
  context_window_fallbacks:
    - gpt: [big-context]
    - claude: [big-context]
  content_policy_fallbacks:
    - azure-gpt: [lenient]
    - gemini: [lenient]
"#
    )
}

async fn setup() -> (Upstream, TestRouter) {
    let up = Upstream::start().await;
    let r = TestRouter::start_with_env(&config(&up.base()), KEYS).await;
    (up, r)
}

fn conversation() -> Vec<ChatMessage> {
    let msg = |role: Role, content: &str| ChatMessage {
        role: role as i32,
        content: content.into(),
        name: None,
        ..Default::default()
    };
    vec![
        msg(Role::System, "Be brief."),
        msg(Role::User, "Hi"),
        msg(Role::Assistant, "Hello."),
        msg(Role::User, "Who are you?"),
    ]
}

async fn collect(
    r: &TestRouter,
    model: &str,
) -> Result<Vec<StreamCompleteResponse>, tonic::Status> {
    let req = llm_router::proto::StreamCompleteRequest {
        messages: conversation(),
        ..stream_req(model)
    };
    let mut s = r.client().stream_complete(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.push(m);
    }
    Ok(out)
}

fn text(messages: &[StreamCompleteResponse]) -> String {
    messages.iter().map(|m| m.delta.as_str()).collect()
}

fn first_outcome(attempts: &[llm_router::proto::Attempt]) -> AttemptOutcome {
    AttemptOutcome::try_from(attempts[0].outcome).unwrap()
}

// ---- Connections ----

#[tokio::test]
async fn finished_streams_leave_their_connection_to_the_next_call() {
    // A response dropped before its body's end closes its connection; each format's streams
    // end at their marker, and the body's end follows it in a separate write here.
    let (up, r) = setup().await;
    up.set("gpt-4o-mini", Behaviour::sse_fixture("openai/stream.sse"));
    up.set(
        "claude-sonnet-4-5",
        Behaviour::sse_fixture("anthropic/stream.sse"),
    );
    up.set(
        "gemini-2.0-flash",
        Behaviour::sse_fixture("gemini/stream.sse"),
    );
    for model in ["gpt", "claude", "gemini"] {
        for _ in 0..3 {
            let messages = collect(&r, model).await.unwrap();
            assert!(!text(&messages).is_empty(), "{model}");
            // The connection goes back to the pool a moment after the client's stream ends.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        up.connections(),
        1,
        "nine streamed calls, one after another, share one upstream connection"
    );
}

#[tokio::test]
async fn a_body_that_never_ends_after_its_marker_does_not_hold_the_client() {
    let (up, r) = setup().await;
    up.set("gpt-4o-mini", Behaviour::DoneThenHang { after: 2 });
    let start = Instant::now();
    let messages = collect(&r, "gpt").await.unwrap();
    assert_eq!(text(&messages), "part0 part1 ");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the client's stream ends at the marker: {:?}",
        start.elapsed()
    );
    // The body is read on in the background for a bounded time (2s), then the connection is
    // closed.
    assert_eq!(up.counts("gpt-4o-mini").abandoned, 0);
    let seen = up.wait_abandoned("gpt-4o-mini", 1).await;
    assert_eq!(
        seen.abandoned, 1,
        "the connection is given up after a while"
    );
}

/// Calls `claude` with no fallbacks: its one attempt must fail as an upstream error whose
/// detail holds `needle`.
async fn claude_fails_upstream(r: &TestRouter, needle: &str) {
    let status = r
        .client()
        .complete(CompleteRequest {
            fallbacks: Vec::new(),
            ..complete("claude")
        })
        .await
        .unwrap_err();
    let log = attempt_log(&status);
    assert_eq!(first_outcome(&log.attempts), AttemptOutcome::UpstreamError);
    let detail = &log.attempts[0].detail;
    assert!(detail.contains(needle), "{detail}");
}

#[tokio::test]
async fn redirects_are_not_followed_so_keys_stay_with_their_host() {
    // reqwest would follow a redirect and strip only `authorization` on the way; Anthropic's,
    // Azure's and Gemini's key headers would go to the new host. No provider redirects an API
    // call, so none is followed: a 3xx is an upstream failure.
    let (up, r) = setup().await;
    let elsewhere = Upstream::start().await;
    elsewhere.set("claude-sonnet-4-5", Behaviour::ok("stolen"));
    up.set(
        "claude-sonnet-4-5",
        Behaviour::Raw {
            status: 307,
            headers: vec![(
                "location".into(),
                format!("http://{}/v1/messages", elsewhere.addr),
            )],
            body: String::new(),
        },
    );
    claude_fails_upstream(&r, "HTTP 307").await;
    assert_eq!(elsewhere.connections(), 0, "nothing went to the other host");
}

#[tokio::test]
async fn an_answer_in_another_vendors_format_is_malformed_not_empty() {
    let (up, r) = setup().await;
    // An OpenAI completion where an Anthropic message was due: no `content`.
    up.set("claude-sonnet-4-5", Behaviour::ok("hello"));
    claude_fails_upstream(&r, "malformed message").await;
}

// ---- OpenAI and the OpenAI-compatible family ----

#[tokio::test]
async fn openai_unary_and_stream_with_usage_and_headers() {
    let (up, r) = setup().await;
    up.set(
        "gpt-4o-mini",
        Behaviour::fixture(200, "openai/completion.json"),
    );
    let resp = r
        .client()
        .complete(CompleteRequest {
            messages: conversation(),
            ..complete("gpt")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.message.unwrap().content,
        "Hello! How can I assist you today?"
    );
    assert_eq!(resp.finish_reason, FinishReason::Stop as i32);
    assert_eq!(resp.usage.unwrap().total_tokens, 29);
    let seen = up.counts("gpt-4o-mini");
    assert_eq!(seen.last_path.as_deref(), Some("/v1/chat/completions"));
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-fixture-openai-key")
    );
    assert_eq!(seen.header("openai-organization"), Some("org-fixture"));
    let body = seen.last_body.unwrap();
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][2]["role"], "assistant");

    up.set("gpt-4o-mini", Behaviour::sse_fixture("openai/stream.sse"));
    let messages = collect(&r, "gpt").await.unwrap();
    assert_eq!(text(&messages), "Hello there!");
    let last = messages.last().unwrap();
    assert_eq!(last.finish_reason, FinishReason::Stop as i32);
    assert_eq!(last.usage.unwrap().total_tokens, 12);
    let body = up.counts("gpt-4o-mini").last_body.unwrap();
    assert_eq!(
        body["stream_options"]["include_usage"], true,
        "asks for usage on streams"
    );
}

#[tokio::test]
async fn openai_errors_map_to_the_outcome_table() {
    let (up, r) = setup().await;
    // 429 with Retry-After, no fallback: RESOURCE_EXHAUSTED with RetryInfo.
    up.set(
        "gpt-4o-mini",
        Behaviour::Raw {
            status: 429,
            headers: vec![("retry-after".into(), "20".into())],
            body: fixture("openai/error_429.json"),
        },
    );
    let status = r.client().complete(complete("gpt")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(20))
    );
    let log = attempt_log(&status);
    assert_eq!(first_outcome(&log.attempts), AttemptOutcome::RateLimited);
    assert!(
        log.attempts[0].detail.contains("Rate limit reached"),
        "the provider's words are kept"
    );

    // Context window: routed to context_window_fallbacks.
    up.set(
        "gpt-4o-mini",
        Behaviour::fixture(400, "openai/error_context.json"),
    );
    up.set(
        "big-context",
        Behaviour::fixture(200, "openai/completion.json"),
    );
    let resp = r
        .client()
        .complete(complete("gpt"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "big-context");
    assert_eq!(first_outcome(&resp.attempts), AttemptOutcome::Rejected);

    // Auth: the echoed key never comes back.
    up.set(
        "gpt-4o-mini",
        Behaviour::fixture(401, "openai/error_401.json"),
    );
    let status = r.client().complete(complete("gpt")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let detail = &attempt_log(&status).attempts[0].detail;
    assert!(
        !detail.contains("sk-fixture-openai-key") && detail.contains("<redacted>"),
        "{detail}"
    );

    // A plain bad request: INVALID_ARGUMENT, the provider's message kept, no fallback.
    up.set(
        "gpt-4o-mini",
        Behaviour::fixture(400, "openai/error_400.json"),
    );
    let status = r.client().complete(complete("gpt")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("temperature"));
}

#[tokio::test]
async fn shortcuts_speak_openai() {
    let (up, r) = setup().await;
    up.set(
        "llama-3.3-70b",
        Behaviour::fixture(200, "openai/completion.json"),
    );
    r.client().complete(complete("groq")).await.unwrap();
    assert_eq!(
        up.counts("llama-3.3-70b").header("authorization"),
        Some("Bearer gsk-fixture-key")
    );
}

// ---- Azure OpenAI ----

#[tokio::test]
async fn azure_uses_its_deployment_path_version_and_api_key_header() {
    let (up, r) = setup().await;
    up.set(
        "my-gpt4o-deployment",
        Behaviour::fixture(200, "azure/completion.json"),
    );
    let resp = r
        .client()
        .complete(complete("azure-gpt"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.message.unwrap().content, "Azure says hello.");
    assert_eq!(resp.usage.unwrap().total_tokens, 18);
    let seen = up.counts("my-gpt4o-deployment");
    assert_eq!(
        seen.last_path.as_deref(),
        Some("/openai/deployments/my-gpt4o-deployment/chat/completions?api-version=2024-10-21")
    );
    assert_eq!(seen.header("api-key"), Some("azure-fixture-key"));
    assert_eq!(seen.header("authorization"), None);

    // Its stream opens with a prompt-filter event that has no choices.
    up.set(
        "my-gpt4o-deployment",
        Behaviour::sse_fixture("azure/stream.sse"),
    );
    let messages = collect(&r, "azure-gpt").await.unwrap();
    assert_eq!(text(&messages), "Azure streams.");
    assert_eq!(messages.last().unwrap().usage.unwrap().completion_tokens, 3);
}

#[tokio::test]
async fn azure_content_filter_goes_to_content_policy_fallbacks() {
    let (up, r) = setup().await;
    up.set(
        "my-gpt4o-deployment",
        Behaviour::fixture(400, "azure/error_content_filter.json"),
    );
    up.set("lenient", Behaviour::fixture(200, "openai/completion.json"));
    let resp = r
        .client()
        .complete(complete("azure-gpt"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "lenient");
    assert_eq!(first_outcome(&resp.attempts), AttemptOutcome::Rejected);
    assert!(
        resp.attempts[0]
            .detail
            .contains("content management policy")
    );

    // A group without content-policy fallbacks answers INVALID_ARGUMENT, CONTENT_POLICY_VIOLATION.
    up.set(
        "llama-3.3-70b",
        Behaviour::fixture(400, "azure/error_content_filter.json"),
    );
    let status = r.client().complete(complete("groq")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "CONTENT_POLICY_VIOLATION");
    assert_eq!(attempt_log(&status).attempts.len(), 1);
}

#[tokio::test]
async fn azure_rate_limits_carry_retry_after() {
    let (up, r) = setup().await;
    up.set(
        "my-gpt4o-deployment",
        Behaviour::Raw {
            status: 429,
            headers: vec![("retry-after".into(), "2".into())],
            body: fixture("azure/error_429.json"),
        },
    );
    let status = r
        .client()
        .complete(complete("azure-gpt"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(2))
    );
    let log = attempt_log(&status);
    assert_eq!(first_outcome(&log.attempts), AttemptOutcome::RateLimited);
    assert!(log.attempts[0].detail.contains("exceeded token rate limit"));
}

// ---- Anthropic ----

#[tokio::test]
async fn anthropic_moves_system_sends_max_tokens_and_its_headers() {
    let (up, r) = setup().await;
    up.set(
        "claude-sonnet-4-5",
        Behaviour::fixture(200, "anthropic/message.json"),
    );
    let resp = r
        .client()
        .complete(CompleteRequest {
            messages: conversation(),
            ..complete("claude")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.message.unwrap().content, "Hi! My name is Claude.");
    assert_eq!(resp.finish_reason, FinishReason::Stop as i32);
    let usage = resp.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (2095, 503, 2598)
    );

    let seen = up.counts("claude-sonnet-4-5");
    assert_eq!(seen.last_path.as_deref(), Some("/v1/messages"));
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-fixture-key"));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    let body = seen.last_body.unwrap();
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(body["max_tokens"], 1024, "from litellm_params.max_tokens");
    assert_eq!(
        body["messages"].as_array().unwrap().len(),
        3,
        "system is not a message"
    );
    assert_eq!(body["messages"][1]["role"], "assistant");
}

#[tokio::test]
async fn anthropic_streams_with_usage_from_start_and_delta() {
    let (up, r) = setup().await;
    up.set(
        "claude-sonnet-4-5",
        Behaviour::sse_fixture("anthropic/stream.sse"),
    );
    let messages = collect(&r, "claude").await.unwrap();
    assert_eq!(text(&messages), "Hello!");
    let last = messages.last().unwrap();
    assert_eq!(last.finish_reason, FinishReason::Stop as i32);
    let usage = last.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (25, 15));
}

#[tokio::test]
async fn anthropic_overloaded_529_is_retried() {
    let (up, r) = setup().await;
    up.set(
        "claude-retried",
        Behaviour::fixture(200, "anthropic/message.json"),
    );
    up.fail_first(
        "claude-retried",
        1,
        Behaviour::fixture(529, "anthropic/error_overloaded.json"),
    );
    let resp = r
        .client()
        .complete(complete("claude-retried"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_outcome(&resp.attempts), AttemptOutcome::RateLimited);
    assert_eq!(resp.attempts[0].upstream_status, 529);
    assert_eq!(resp.attempts.len(), 2);
}

#[tokio::test]
async fn anthropic_error_event_before_the_first_chunk_moves_the_chain_on() {
    let (up, r) = setup().await;
    up.set(
        "claude-sonnet-4-5",
        Behaviour::sse_fixture("anthropic/stream_error.sse"),
    );
    up.set("llama-3.3-70b", Behaviour::sse_fixture("openai/stream.sse"));
    let messages = collect(&r, "claude").await.unwrap();
    assert_eq!(messages[0].model, "groq");
    assert_eq!(
        first_outcome(&messages[0].attempts),
        AttemptOutcome::RateLimited,
        "overloaded_error"
    );
    assert_eq!(text(&messages), "Hello there!");
}

#[tokio::test]
async fn anthropic_streams_cut_before_and_after_the_first_chunk() {
    let (up, r) = setup().await;
    up.set("llama-3.3-70b", Behaviour::sse_fixture("openai/stream.sse"));
    // Cut after message_start, content_block_start and ping: before any text. The chain moves on.
    up.set(
        "claude-sonnet-4-5",
        Behaviour::Sse {
            body: fixture("anthropic/stream.sse"),
            cut_after: Some(3),
        },
    );
    let messages = collect(&r, "claude").await.unwrap();
    assert_eq!(messages[0].model, "groq");
    assert_eq!(
        first_outcome(&messages[0].attempts),
        AttemptOutcome::UpstreamError
    );

    // Cut after the first text delta: committed, so the client's stream ends UNAVAILABLE.
    up.set(
        "claude-sonnet-4-5",
        Behaviour::Sse {
            body: fixture("anthropic/stream.sse"),
            cut_after: Some(4),
        },
    );
    let req = llm_router::proto::StreamCompleteRequest {
        messages: conversation(),
        ..stream_req("claude")
    };
    let mut s = r.client().stream_complete(req).await.unwrap().into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().delta, "Hello");
    let status = s.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "STREAM_INTERRUPTED");

    // Ending cleanly before any stop_reason is a cut too. (After message_delta's stop_reason,
    // the answer is complete even without message_stop: see
    // a_stream_that_ends_cleanly_after_its_finish_reason_is_complete_without_its_marker.)
    let whole = fixture("anthropic/stream.sse");
    let without_stop = whole[..whole.find("event: message_delta").unwrap()].to_string();
    up.set(
        "claude-sonnet-4-5",
        Behaviour::Sse {
            body: without_stop,
            cut_after: None,
        },
    );
    let status = collect(&r, "claude")
        .await
        .expect_err("a stream without a stop_reason must not end cleanly");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn anthropic_context_window_and_auth_errors() {
    let (up, r) = setup().await;
    up.set(
        "claude-sonnet-4-5",
        Behaviour::fixture(400, "anthropic/error_context.json"),
    );
    up.set(
        "big-context",
        Behaviour::fixture(200, "openai/completion.json"),
    );
    let resp = r
        .client()
        .complete(complete("claude"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "big-context");

    up.set(
        "claude-sonnet-4-5",
        Behaviour::fixture(401, "anthropic/error_401.json"),
    );
    up.set(
        "llama-3.3-70b",
        Behaviour::fixture(200, "openai/completion.json"),
    );
    let resp = r
        .client()
        .complete(complete("claude"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "groq", "an auth failure falls back");
    assert_eq!(resp.attempts[0].upstream_status, 401);

    up.set(
        "claude-retried",
        Behaviour::Raw {
            status: 429,
            headers: vec![("retry-after".into(), "0.05".into())],
            body: fixture("anthropic/error_429.json"),
        },
    );
    let status = r
        .client()
        .complete(complete("claude-retried"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        attempt_log(&status).attempts.len(),
        3,
        "retried twice after Retry-After"
    );
}

// ---- Gemini ----

#[tokio::test]
async fn gemini_maps_roles_and_system_instruction() {
    let (up, r) = setup().await;
    up.set(
        "gemini-2.0-flash",
        Behaviour::fixture(200, "gemini/response.json"),
    );
    let resp = r
        .client()
        .complete(CompleteRequest {
            messages: conversation(),
            max_tokens: Some(64),
            ..complete("gemini")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.message.unwrap().content,
        "Gemini answers in one piece."
    );
    assert_eq!(resp.usage.unwrap().total_tokens, 14);
    let seen = up.counts("gemini-2.0-flash");
    assert_eq!(
        seen.last_path.as_deref(),
        Some("/v1beta/models/gemini-2.0-flash:generateContent")
    );
    assert_eq!(seen.header("x-goog-api-key"), Some("gemini-fixture-key"));
    let body = seen.last_body.unwrap();
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(body["contents"][1]["role"], "model");
    assert_eq!(body["contents"][2]["parts"][0]["text"], "Who are you?");
    assert_eq!(body["generationConfig"]["maxOutputTokens"], 64);
}

#[tokio::test]
async fn gemini_streams_over_sse_and_needs_a_finish_reason() {
    let (up, r) = setup().await;
    up.set(
        "gemini-2.0-flash",
        Behaviour::sse_fixture("gemini/stream.sse"),
    );
    let messages = collect(&r, "gemini").await.unwrap();
    assert_eq!(text(&messages), "The quick brown fox jumps.");
    let last = messages.last().unwrap();
    assert_eq!(last.finish_reason, FinishReason::Stop as i32);
    assert_eq!(last.usage.unwrap().completion_tokens, 8);
    assert_eq!(
        up.counts("gemini-2.0-flash").last_path.as_deref(),
        Some("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse")
    );

    // The same stream without its last event ends without a finishReason: a cut stream.
    let whole = fixture("gemini/stream.sse");
    let without_last = whole[..whole.rfind("data:").unwrap()].to_string();
    up.set(
        "gemini-2.0-flash",
        Behaviour::Sse {
            body: without_last,
            cut_after: None,
        },
    );
    let status = collect(&r, "gemini")
        .await
        .expect_err("a stream without a finishReason must not end cleanly");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn gemini_safety_blocks() {
    let (up, r) = setup().await;
    // A blocked prompt goes to the content-policy fallbacks.
    up.set(
        "gemini-2.0-flash",
        Behaviour::fixture(200, "gemini/blocked.json"),
    );
    up.set("lenient", Behaviour::fixture(200, "openai/completion.json"));
    let resp = r
        .client()
        .complete(complete("gemini"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "lenient");
    assert!(resp.attempts[0].detail.contains("SAFETY"));

    // A candidate stopped for safety is an answer with a content-filter finish reason.
    up.set(
        "gemini-2.0-flash",
        Behaviour::fixture(200, "gemini/safety_finish.json"),
    );
    let resp = r
        .client()
        .complete(complete("gemini"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "gemini");
    assert_eq!(resp.finish_reason, FinishReason::ContentFilter as i32);
}

#[tokio::test]
async fn gemini_bad_keys_are_auth_failures_and_context_errors_are_bad_requests() {
    let (up, r) = setup().await;
    up.set(
        "gemini-2.0-flash",
        Behaviour::fixture(400, "gemini/error_api_key.json"),
    );
    up.set(
        "my-gpt4o-deployment",
        Behaviour::fixture(200, "azure/completion.json"),
    );
    let resp = r
        .client()
        .complete(complete("gemini"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.model, "azure-gpt",
        "an invalid key falls back instead of failing the request"
    );

    up.set(
        "gemini-2.0-flash",
        Behaviour::fixture(400, "gemini/error_context.json"),
    );
    // `gemini` has no context_window_fallbacks: as in LiteLLM, its regular fallback (which may
    // have a larger window) gets the call.
    let resp = r
        .client()
        .complete(complete("gemini"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "azure-gpt");
    assert_eq!(first_outcome(&resp.attempts), AttemptOutcome::Rejected);
    // When the fallback's window is too small as well, the chain ends saying why.
    up.set(
        "my-gpt4o-deployment",
        Behaviour::fixture(400, "openai/error_context.json"),
    );
    let status = r.client().complete(complete("gemini")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "CONTEXT_WINDOW_EXCEEDED");
}

// ---- Across providers ----

#[tokio::test]
async fn anthropic_primary_times_out_and_an_openai_compatible_fallback_answers() {
    let (up, r) = setup().await;
    up.set("claude-sonnet-4-5", Behaviour::Hang);
    up.set("llama-3.3-70b", Behaviour::sse_fixture("openai/stream.sse"));
    let start = Instant::now();
    let messages = collect(&r, "claude").await.unwrap();
    assert_between(start.elapsed(), ms(400), ms(400) + SLACK);
    assert_eq!(
        outcomes(&messages[0].attempts),
        [
            ("anthropic-1".into(), AttemptOutcome::Timeout),
            ("groq-1".into(), AttemptOutcome::Ok)
        ]
    );
    assert_eq!(text(&messages), "Hello there!");
    assert_eq!(up.wait_abandoned("claude-sonnet-4-5", 1).await.abandoned, 1);
}

#[tokio::test]
async fn gemini_rate_limited_with_retry_info_and_azure_answers() {
    let (up, r) = setup().await;
    up.set(
        "gemini-2.0-flash",
        Behaviour::fixture(429, "gemini/error_429.json"),
    );
    up.set(
        "my-gpt4o-deployment",
        Behaviour::fixture(200, "azure/completion.json"),
    );
    let resp = r
        .client()
        .complete(complete("gemini"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "azure-gpt");
    assert_eq!(
        outcomes(&resp.attempts),
        [
            ("gemini-1".into(), AttemptOutcome::RateLimited),
            ("azure-1".into(), AttemptOutcome::Ok)
        ]
    );

    // Alone, the 37s RetryInfo does not fit the call: RESOURCE_EXHAUSTED carries it on.
    let mut req = complete("gemini");
    req.num_retries = Some(1);
    req.timeout = Some(dur(ms(2000)));
    req.fallbacks = vec!["gemini".into()];
    let status = r.client().complete(req).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(37))
    );
}

#[test]
fn a_config_mixing_every_provider_passes_check_config() {
    let yaml = r#"
model_list:
  - model_name: mixed
    litellm_params: { model: openai/gpt-4o }
  - model_name: mixed
    litellm_params: { model: azure/gpt-4o-eu, api_base: "https://my-resource.openai.azure.com", api_version: "2024-10-21" }
  - model_name: mixed
    litellm_params: { model: anthropic/claude-sonnet-4-5 }
  - model_name: mixed
    litellm_params: { model: gemini/gemini-2.0-flash }
  - model_name: mixed
    litellm_params: { model: groq/llama-3.3-70b-versatile }
  - model_name: mixed
    litellm_params: { model: mistral/mistral-large-latest }
  - model_name: mixed
    litellm_params: { model: deepseek/deepseek-chat }
  - model_name: mixed
    litellm_params: { model: together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo }
  - model_name: mixed
    litellm_params: { model: ollama/llama3.2 }
  - model_name: mixed
    litellm_params: { model: hosted_vllm/qwen, api_base: "http://vllm.internal:8000/v1" }
  - model_name: mixed
    litellm_params: { model: vllm/qwen, api_base: "http://vllm.internal:8000/v1", extra_headers: { x-tenant: os.environ/TENANT } }
"#;
    let env = |k: &str| {
        let v = match k {
            "OPENAI_API_KEY" => "sk-o",
            "ANTHROPIC_API_KEY" => "sk-a",
            "GEMINI_API_KEY" => "g",
            "AZURE_API_KEY" => "az",
            "GROQ_API_KEY" => "gq",
            "MISTRAL_API_KEY" => "m",
            "DEEPSEEK_API_KEY" => "d",
            "TOGETHERAI_API_KEY" => "t",
            "TENANT" => "tenant-secret",
            _ => return None,
        };
        Some(v.to_string())
    };
    let cfg = Config::load_with_env(Source::Yaml(yaml), Vec::new(), env)
        .unwrap_or_else(|e| panic!("{e}"));
    let table = cfg.routing_table();
    for expected in [
        "openai/gpt-4o at https://api.openai.com/v1",
        "azure/gpt-4o-eu at https://my-resource.openai.azure.com",
        "api_version 2024-10-21",
        "anthropic/claude-sonnet-4-5 at https://api.anthropic.com",
        "gemini/gemini-2.0-flash at https://generativelanguage.googleapis.com/v1beta",
        "groq/llama-3.3-70b-versatile at https://api.groq.com/openai/v1",
        "mistral/mistral-large-latest at https://api.mistral.ai/v1",
        "deepseek/deepseek-chat at https://api.deepseek.com/v1",
        "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo at https://api.together.xyz/v1",
        "ollama/llama3.2 at http://localhost:11434/v1",
        "extra_headers [x-tenant]",
    ] {
        assert!(
            table.contains(expected),
            "missing `{expected}` in:\n{table}"
        );
    }
    for secret in ["sk-o", "sk-a", "tenant-secret"] {
        assert!(!table.contains(secret), "{secret} leaked into:\n{table}");
    }

    // Without the environment, each hosted provider names the key it needs.
    let err = Config::load_with_env(Source::Yaml(yaml), Vec::new(), |_| None)
        .unwrap_err()
        .to_string();
    for expected in [
        "`model_list[0].litellm_params.api_key`: is required for openai/ deployments, and OPENAI_API_KEY is not set",
        "`model_list[2].litellm_params.api_key`: is required for anthropic/ deployments, and ANTHROPIC_API_KEY is not set",
        "`model_list[4].litellm_params.api_key`: is required for groq/ deployments, and GROQ_API_KEY is not set",
        "`model_list[10].litellm_params.extra_headers.x-tenant`: environment variable `TENANT` is not set",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    assert!(
        !err.contains("model_list[8]"),
        "ollama needs no key:\n{err}"
    );
    assert!(
        !err.contains("model_list[9]"),
        "self-hosted vLLM needs no key:\n{err}"
    );
}

#[test]
fn key_variables_are_only_sent_to_the_providers_own_host() {
    let yaml = r#"
model_list:
  - model_name: hosted
    litellm_params: { model: openai/gpt-4o }
  - model_name: local
    litellm_params: { model: openai/qwen, api_base: "http://vllm.internal:8000/v1" }
  - model_name: proxied
    litellm_params: { model: groq/llama, api_base: "http://egress-proxy.internal/groq/v1" }
  - model_name: azure
    litellm_params: { model: azure/dep, api_base: "https://r.openai.azure.com" }
"#;
    let env = |k: &str| match k {
        "OPENAI_API_KEY" | "GROQ_API_KEY" | "AZURE_API_KEY" => Some(format!("secret-{k}")),
        _ => None,
    };
    let cfg = Config::load_with_env(Source::Yaml(yaml), Vec::new(), env)
        .unwrap_or_else(|e| panic!("{e}"));
    let key_of = |group: &str| match &cfg.group(group).unwrap().deployments[0].provider {
        llm_router::config::ProviderConfig::Http(h) => {
            h.api_key.as_ref().map(|k| k.expose().to_string())
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(key_of("hosted").as_deref(), Some("secret-OPENAI_API_KEY"));
    assert_eq!(
        key_of("local"),
        None,
        "OPENAI_API_KEY is not sent to a local server"
    );
    assert_eq!(key_of("proxied"), None, "nor GROQ_API_KEY to a proxy");
    assert_eq!(
        key_of("azure").as_deref(),
        Some("secret-AZURE_API_KEY"),
        "Azure has no default host"
    );
}

#[test]
fn provider_settings_are_checked() {
    let bad = r#"
model_list:
  - model_name: a
    litellm_params: { model: azure/x }
  - model_name: b
    litellm_params: { model: openai/y, api_base: "http://h/v1", api_version: "2024-10-21" }
  - model_name: c
    litellm_params: { model: vllm/z }
  - model_name: d
    litellm_params: { model: cohere/command }
  - model_name: e
    litellm_params: { model: anthropic/c, api_key: k, organization: org }
  - model_name: f
    litellm_params: { model: openai/f, api_base: "http://h/v1", extra_headers: { "bad header": v } }
"#;
    let err = Config::load_with_env(Source::Yaml(bad), Vec::new(), |_| None)
        .unwrap_err()
        .to_string();
    for expected in [
        "`model_list[0].litellm_params.api_base`: is required for azure/ deployments (or set AZURE_API_BASE)",
        "`model_list[0].litellm_params.api_key`: is required for azure/ deployments, and AZURE_API_KEY is not set",
        "`model_list[1].litellm_params.api_version`: only azure/ deployments take api_version",
        "`model_list[2].litellm_params.api_base`: is required for vllm/ deployments",
        "`model_list[3].litellm_params.model`: unknown provider `cohere`",
        "`model_list[4].litellm_params.organization`: only OpenAI-compatible deployments take organization",
        "`model_list[5].litellm_params.extra_headers.bad header`: is not a valid HTTP header name",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

use llm_router::proto::CompleteRequest;

// ---- Stream parsing: unreadable events, and streams that end without their marker ----

/// Puts an unreadable event before the events at `at` (indices into the fixture's events).
fn with_garbage(path: &str, at: &'static [usize]) -> Behaviour {
    Behaviour::sse_fixture_edited(path, |events| {
        let mut out = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            if at.contains(&i) {
                out.push("data: {\"choices\":[{\"delta\":{\"content\":\"broken\n\n".to_string());
            }
            out.push(e);
        }
        out
    })
}

#[tokio::test]
async fn unreadable_events_are_skipped_counted_and_the_whole_answer_delivered() {
    let (up, r) = setup().await;
    up.set("gpt-4o-mini", with_garbage("openai/stream.sse", &[1, 2]));
    up.set(
        "claude-sonnet-4-5",
        with_garbage("anthropic/stream.sse", &[3, 4]),
    );
    up.set(
        "gemini-2.0-flash",
        with_garbage("gemini/stream.sse", &[1, 2]),
    );
    for (model, deployment, answer) in [
        ("gpt", "openai-1", "Hello there!"),
        ("claude", "anthropic-1", "Hello!"),
        ("gemini", "gemini-1", "The quick brown fox jumps."),
    ] {
        let messages = collect(&r, model).await.unwrap();
        assert_eq!(text(&messages), answer, "{model}");
        let last = messages.last().unwrap();
        assert_eq!(last.finish_reason, FinishReason::Stop as i32, "{model}");
        assert!(last.usage.is_some(), "{model}");
        // The last message carries the log again, now that it changed.
        assert_eq!(last.attempts.len(), 1, "{model}");
        assert_eq!(first_outcome(&last.attempts), AttemptOutcome::Ok);
        assert_eq!(
            last.attempts[0].detail, "skipped 2 malformed stream events",
            "{model}"
        );
        assert_eq!(last.attempts[0].deployment, deployment);
    }
    let (_, metrics) = r.admin_get("/metrics").await;
    for d in ["openai-1", "anthropic-1", "gemini-1"] {
        let series = "llmrouter_stream_events_skipped_total{model_group=";
        let found = metrics
            .lines()
            .find(|l| l.starts_with(series) && l.contains(&format!("deployment=\"{d}\"")))
            .unwrap_or_else(|| panic!("no skipped-events series for {d}:\n{metrics}"));
        assert!(found.ends_with(" 2"), "{found}");
    }
}

#[tokio::test]
async fn more_unreadable_events_than_the_limit_break_the_stream() {
    let (up, r) = setup().await;
    up.set(
        "gpt-4o-mini",
        with_garbage("openai/stream.sse", &[1, 2, 3, 4]),
    );
    let status = collect(&r, "gpt").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let log = attempt_log(&status);
    assert!(
        log.attempts[0]
            .detail
            .contains("more than stream_max_malformed_events (3)"),
        "{}",
        log.attempts[0].detail
    );
}

#[tokio::test]
async fn a_stream_that_ends_cleanly_after_its_finish_reason_is_complete_without_its_marker() {
    let (up, r) = setup().await;
    // OpenAI without `data: [DONE]`; Anthropic without `message_stop`.
    let without_last = |events: Vec<String>| events[..events.len() - 1].to_vec();
    up.set(
        "gpt-4o-mini",
        Behaviour::sse_fixture_edited("openai/stream.sse", without_last),
    );
    up.set(
        "claude-sonnet-4-5",
        Behaviour::sse_fixture_edited("anthropic/stream.sse", without_last),
    );
    for (model, answer, usage) in [
        ("gpt", "Hello there!", (9, 3)),
        ("claude", "Hello!", (25, 15)),
    ] {
        let messages = collect(&r, model).await.unwrap();
        assert_eq!(text(&messages), answer, "{model}");
        let last = messages.last().unwrap();
        assert_eq!(last.finish_reason, FinishReason::Stop as i32, "{model}");
        let u = last.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), usage, "{model}");
    }

    // Ending before any finish reason is a break.
    let before_finish = |events: Vec<String>| events[..3].to_vec();
    up.set(
        "gpt-4o-mini",
        Behaviour::sse_fixture_edited("openai/stream.sse", before_finish),
    );
    let status = collect(&r, "gpt").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "STREAM_INTERRUPTED");
}

#[tokio::test]
async fn a_long_error_body_is_still_classified_by_its_beginning() {
    // A context-window error that quotes 40 KB of the prompt: past the 16 KiB read, but its
    // code comes first, so it still goes to the context-window fallback.
    let (up, r) = setup().await;
    let body = format!(
        r#"{{"error":{{"code":"context_length_exceeded","message":"This model's maximum context length is 128000 tokens. Your prompt: {}"}}}}"#,
        "lorem ipsum ".repeat(3_500)
    );
    assert!(body.len() > 40_000);
    up.set("gpt-4o-mini", Behaviour::status(400, &body));
    up.set("big-context", Behaviour::ok("fits here"));
    let resp = r
        .client()
        .complete(complete("gpt"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "big-context");
    assert!(
        resp.attempts[0].detail.len() < 1_000,
        "the detail is an excerpt"
    );
}

#[tokio::test]
async fn an_error_event_quoting_the_key_reaches_the_caller_redacted() {
    let (up, r) = setup().await;
    let key = KEYS.iter().find(|(k, _)| *k == "OPENAI_KEY").unwrap().1;
    up.set(
        "gpt-4o-mini",
        Behaviour::sse_fixture_edited("openai/stream.sse", move |events| {
            let mut out = events[..2].to_vec();
            out.push(format!(
                "data: {{\"error\":{{\"message\":\"key {key} was revoked mid-stream\"}}}}\n\n"
            ));
            out
        }),
    );
    let status = collect(&r, "gpt").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let everything = format!("{} {:?}", status.message(), attempt_log(&status));
    assert!(!everything.contains(key), "{everything}");
    assert!(everything.contains("<redacted>"), "{everything}");
}

/// Whether `text` holds any 8 characters in a row of `key`: a part of it, not only the whole.
fn holds_part_of(text: &str, key: &str) -> bool {
    let key: Vec<char> = key.chars().collect();
    key.windows(8)
        .any(|w| text.contains(&w.iter().collect::<String>()))
}

#[tokio::test]
async fn a_key_the_excerpt_cut_goes_through_is_redacted_whole_unary_and_streamed() {
    let (up, r) = setup().await;
    let key = KEYS.iter().find(|(k, _)| *k == "OPENAI_KEY").unwrap().1;
    // Error details keep the first 512 bytes of a body: with this much before it, the key
    // straddles the cut at every one of its characters (and lies wholly before and after it).
    for pad in 480..=515 {
        let body = format!("{} Bearer {key} is not valid", "x".repeat(pad));
        up.set("gpt-4o-mini", Behaviour::status(401, &body));
        let status = r.client().complete(complete("gpt")).await.unwrap_err();
        let everything = format!("{} {:?}", status.message(), attempt_log(&status));
        assert!(!holds_part_of(&everything, key), "pad {pad}: {everything}");
    }
    for pad in 460..=505 {
        let padding = "x".repeat(pad);
        up.set(
            "gpt-4o-mini",
            Behaviour::sse_fixture_edited("openai/stream.sse", move |events| {
                let mut out = events[..2].to_vec();
                out.push(format!(
                    "data: {{\"error\":{{\"message\":\"{padding} key {key} was revoked\"}}}}\n\n"
                ));
                out
            }),
        );
        let status = collect(&r, "gpt").await.unwrap_err();
        let everything = format!("{} {:?}", status.message(), attempt_log(&status));
        assert!(!holds_part_of(&everything, key), "pad {pad}: {everything}");
    }
}

#[tokio::test]
async fn openai_reasoning_models_are_sent_max_completion_tokens_and_no_refused_sampling() {
    let (up, r) = setup().await;
    for (group, model, path) in [
        ("reasoner", "o3", "/v1/chat/completions"),
        (
            "azure-reasoner",
            "my-reasoner",
            "/openai/deployments/my-reasoner/chat/completions?api-version=2024-10-21",
        ),
    ] {
        up.set(model, Behaviour::fixture(200, "openai/completion.json"));
        let req = CompleteRequest {
            max_tokens: Some(300),
            temperature: Some(0.5),
            top_p: Some(0.9),
            ..complete(group)
        };
        r.client().complete(req.clone()).await.unwrap();
        r.client().complete(req).await.unwrap();
        let seen = up.counts(model);
        assert_eq!(seen.requests, 2, "{group}");
        assert_eq!(seen.last_path.as_deref(), Some(path), "{group}");
        let body = seen.last_body.unwrap();
        assert_eq!(body["model"], model, "{group}");
        assert_eq!(body["max_completion_tokens"], 300, "{body}");
        for refused in ["max_tokens", "temperature", "top_p"] {
            assert!(body.get(refused).is_none(), "{group}: {body}");
        }
    }
    // Any other model behind a custom api_base keeps max_tokens and its sampling.
    up.set(
        "gpt-4o-mini",
        Behaviour::fixture(200, "openai/completion.json"),
    );
    let req = CompleteRequest {
        max_tokens: Some(300),
        temperature: Some(0.5),
        ..complete("gpt")
    };
    r.client().complete(req).await.unwrap();
    let body = up.counts("gpt-4o-mini").last_body.unwrap();
    assert_eq!(
        (&body["max_tokens"], &body["temperature"]),
        (&serde_json::json!(300), &serde_json::json!(0.5))
    );
    // check-config says which deployments the rules change.
    let env = |k: &str| {
        KEYS.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    let table = Config::load_with_env(Source::Yaml(&config(&up.base())), Vec::new(), env)
        .unwrap()
        .routing_table();
    let line = |id: &str| {
        table
            .lines()
            .find(|l| l.contains(&format!("deployment {id}:")))
            .unwrap()
            .to_string()
    };
    for id in ["o3-1", "azure-o-1"] {
        assert!(
            line(id).contains("sends max_completion_tokens (reasoning model"),
            "{table}"
        );
    }
    assert!(
        !line("openai-1").contains("max_completion_tokens"),
        "{table}"
    );
}
