//! Tools, images, JSON schemas and reasoning through the gRPC API: each provider family maps
//! the request and its answers (unary and streamed tool calls), a chain across the three
//! families answers from each position, and deployments that lack what a request needs are
//! skipped without being sent.

use crate::common::upstream::{Behaviour, Upstream};
use crate::common::*;
use llm_router::proto::{
    AttemptOutcome, ChatMessage, CompleteRequest, ContentPart, FinishReason, Image, ResponseFormat,
    ResponseFormatType, Role, StreamCompleteRequest, StreamRecovery, Tool, ToolCall, ToolChoice,
    content_part::Part, image::Source, tool_choice::Choice,
};
use prost_types::{Struct, Value, value::Kind};
use tonic::Code;
use tonic_types::StatusExt;

const KEYS: &[(&str, &str)] = &[("KEY", "sk-test-0123456789")];

/// One group per family on the test upstream, and a chain across them.
fn config(base: &str) -> String {
    let root = base.trim_end_matches("/v1");
    format!(
        r#"
model_list:
  - model_name: gpt
    litellm_params: {{ model: openai/gpt-tools, api_base: "{base}", api_key: os.environ/KEY, max_retries: 0 }}
    model_info: {{ id: openai-1 }}
  - model_name: claude
    litellm_params: {{ model: anthropic/claude-tools, api_base: "{root}", api_key: os.environ/KEY, max_retries: 0 }}
    model_info: {{ id: anthropic-1, supports_reasoning: true }}
  - model_name: gemini
    litellm_params: {{ model: gemini/gemini-tools, api_base: "{root}/v1beta", api_key: os.environ/KEY, max_retries: 0 }}
    model_info: {{ id: gemini-1 }}
  - model_name: mixed
    litellm_params: {{ model: mock/plain }}
    model_info: {{ id: plain-mock, supports_function_calling: false }}
  - model_name: mixed
    litellm_params: {{ model: openai/gpt-mixed, api_base: "{base}", api_key: os.environ/KEY, max_retries: 0 }}
    model_info: {{ id: capable }}
  - model_name: text-only
    litellm_params: {{ model: openai/text-only, api_base: "{base}", api_key: os.environ/KEY }}
    model_info: {{ id: text-only-1, supports_function_calling: false, supports_vision: false }}
  - model_name: recover
    litellm_params: {{ model: openai/recover-a, api_base: "{base}", api_key: os.environ/KEY, max_retries: 0 }}
    model_info: {{ id: recover-a }}
  - model_name: recover-backup
    litellm_params: {{ model: openai/recover-b, api_base: "{base}", api_key: os.environ/KEY, max_retries: 0 }}
    model_info: {{ id: recover-b, supports_assistant_prefill: true }}
router_settings:
  num_retries: 0
  disable_cooldowns: true
  fallbacks:
    - gpt: [claude, gemini]
    - recover: [recover-backup]
"#
    )
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn object(fields: Vec<(&str, Value)>) -> Struct {
    Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: "Current weather for a place".into(),
        parameters: Some(object(vec![
            ("type", string("object")),
            (
                "properties",
                Value {
                    kind: Some(Kind::StructValue(object(vec![(
                        "location",
                        Value {
                            kind: Some(Kind::StructValue(object(vec![("type", string("string"))]))),
                        },
                    )]))),
                },
            ),
        ])),
        strict: None,
    }
}

/// A request with a tool, an image and a JSON schema.
fn rich(model: &str) -> CompleteRequest {
    CompleteRequest {
        model: model.into(),
        messages: vec![ChatMessage {
            role: Role::User as i32,
            content: "What's the weather where this photo was taken?".into(),
            parts: vec![ContentPart {
                part: Some(Part::Image(Image {
                    source: Some(Source::Data(vec![137, 80, 78, 71])),
                    media_type: "image/png".into(),
                    detail: String::new(),
                })),
            }],
            ..Default::default()
        }],
        tools: vec![weather_tool()],
        tool_choice: Some(ToolChoice {
            choice: Some(Choice::Function("get_weather".into())),
        }),
        response_format: Some(ResponseFormat {
            r#type: ResponseFormatType::JsonSchema as i32,
            name: "forecast".into(),
            schema: Some(object(vec![("type", string("object"))])),
            strict: true,
        }),
        ..Default::default()
    }
}

fn as_stream(r: CompleteRequest) -> StreamCompleteRequest {
    StreamCompleteRequest {
        model: r.model,
        messages: r.messages,
        tools: r.tools,
        tool_choice: r.tool_choice,
        response_format: r.response_format,
        ..Default::default()
    }
}

/// Adds a message's tool-call pieces to the calls so far, as a client does: by index, the id
/// and name from a call's first piece, its arguments concatenated.
fn add_pieces(calls: &mut Vec<ToolCall>, pieces: Vec<llm_router::proto::ToolCallDelta>) {
    for d in pieces {
        let i = d.index as usize;
        if calls.len() <= i {
            calls.resize(i + 1, ToolCall::default());
        }
        if !d.id.is_empty() {
            calls[i].id = d.id;
        }
        if !d.name.is_empty() {
            calls[i].name = d.name;
        }
        calls[i].arguments.push_str(&d.arguments);
        if !d.signature.is_empty() {
            calls[i].signature = d.signature;
        }
    }
}

/// The tool calls of a stream, assembled as a client does from the pieces' indexes.
async fn streamed_calls(
    r: &TestRouter,
    req: StreamCompleteRequest,
) -> (Vec<ToolCall>, FinishReason, String) {
    let mut stream = r.client().stream_complete(req).await.unwrap().into_inner();
    let (mut calls, mut finish, mut text) = (Vec::<ToolCall>::new(), 0, String::new());
    while let Some(m) = stream.message().await.unwrap() {
        text.push_str(&m.delta);
        add_pieces(&mut calls, m.tool_calls);
        if m.finish_reason != 0 {
            finish = m.finish_reason;
        }
    }
    (calls, FinishReason::try_from(finish).unwrap(), text)
}

fn args(call: &ToolCall) -> serde_json::Value {
    serde_json::from_str(&call.arguments).unwrap()
}

#[tokio::test]
async fn each_family_answers_tool_calls_unary_and_streamed_in_one_shape() {
    let up = Upstream::start().await;
    let r = TestRouter::start_with_env(&config(&up.base()), KEYS).await;
    let paris = serde_json::json!({"location": "Paris, France", "unit": "celsius"});
    for (group, model, unary, stream) in [
        (
            "gpt",
            "gpt-tools",
            "openai/completion_tool_calls.json",
            "openai/stream_tool_calls.sse",
        ),
        (
            "claude",
            "claude-tools",
            "anthropic/message_tool_use.json",
            "anthropic/stream_tool_use.sse",
        ),
        (
            "gemini",
            "gemini-tools",
            "gemini/response_function_call.json",
            "gemini/stream_function_call.sse",
        ),
    ] {
        up.set(model, Behaviour::fixture(200, unary));
        let resp = r.client().complete(rich(group)).await.unwrap().into_inner();
        assert_eq!(resp.model, group);
        assert_eq!(
            resp.finish_reason,
            FinishReason::ToolCalls as i32,
            "{group}"
        );
        let message = resp.message.unwrap();
        assert_eq!(message.tool_calls.len(), 1, "{group}");
        let call = &message.tool_calls[0];
        assert_eq!(call.name, "get_weather", "{group}");
        assert!(!call.id.is_empty(), "{group}: every call has an id");
        assert_eq!(args(call), paris, "{group}");

        up.set(model, Behaviour::sse_fixture(stream));
        let (calls, finish, _) = streamed_calls(&r, as_stream(rich(group))).await;
        assert_eq!(finish, FinishReason::ToolCalls, "{group}");
        assert_eq!(calls.len(), 1, "{group}");
        assert_eq!(calls[0].name, "get_weather", "{group}");
        assert!(!calls[0].id.is_empty(), "{group}");
        assert_eq!(args(&calls[0]), paris, "{group}");
    }
    // Each request carried the tool, the image and the schema in its family's own names.
    let openai = up.counts("gpt-tools").last_body.unwrap();
    assert_eq!(openai["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(openai["tool_choice"]["function"]["name"], "get_weather");
    assert_eq!(openai["response_format"]["json_schema"]["name"], "forecast");
    assert_eq!(
        openai["messages"][0]["content"][1]["image_url"]["url"],
        "data:image/png;base64,iVBORw=="
    );
    let anthropic = up.counts("claude-tools").last_body.unwrap();
    assert_eq!(anthropic["tools"][0]["input_schema"]["type"], "object");
    assert_eq!(anthropic["tool_choice"]["name"], "get_weather");
    assert_eq!(
        anthropic["messages"][0]["content"][1]["source"]["data"],
        "iVBORw=="
    );
    assert_eq!(anthropic["output_config"]["format"]["type"], "json_schema");
    let gemini = up.counts("gemini-tools").last_body.unwrap();
    assert_eq!(
        gemini["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    assert_eq!(
        gemini["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"][0],
        "get_weather"
    );
    assert_eq!(
        gemini["contents"][0]["parts"][1]["inlineData"]["data"],
        "iVBORw=="
    );
    assert_eq!(
        gemini["generationConfig"]["responseMimeType"],
        "application/json"
    );
}

#[tokio::test]
async fn a_chain_across_the_three_families_answers_from_each_position() {
    let up = Upstream::start().await;
    let r = TestRouter::start_with_env(&config(&up.base()), KEYS).await;
    up.set(
        "gpt-tools",
        Behaviour::fixture(200, "openai/completion_tool_calls.json"),
    );
    up.set(
        "claude-tools",
        Behaviour::fixture(200, "anthropic/message_tool_use.json"),
    );
    up.set(
        "gemini-tools",
        Behaviour::fixture(200, "gemini/response_function_call.json"),
    );
    let answered = |resp: &llm_router::proto::CompleteResponse| {
        let m = resp.message.as_ref().unwrap();
        (resp.model.clone(), m.tool_calls[0].name.clone())
    };
    let resp = r.client().complete(rich("gpt")).await.unwrap().into_inner();
    assert_eq!(answered(&resp), ("gpt".into(), "get_weather".into()));

    up.set("gpt-tools", Behaviour::status(503, "overloaded"));
    let resp = r.client().complete(rich("gpt")).await.unwrap().into_inner();
    assert_eq!(answered(&resp), ("claude".into(), "get_weather".into()));

    up.set("claude-tools", Behaviour::status(500, "boom"));
    let resp = r.client().complete(rich("gpt")).await.unwrap().into_inner();
    assert_eq!(answered(&resp), ("gemini".into(), "get_weather".into()));
    assert_eq!(
        outcomes(&resp.attempts),
        [
            ("openai-1".to_string(), AttemptOutcome::UpstreamError),
            ("anthropic-1".to_string(), AttemptOutcome::UpstreamError),
            ("gemini-1".to_string(), AttemptOutcome::Ok),
        ]
    );
}

#[tokio::test]
async fn deployments_without_a_capability_are_skipped_and_never_sent() {
    let up = Upstream::start().await;
    let r = TestRouter::start_with_env(&config(&up.base()), KEYS).await;
    up.set(
        "gpt-mixed",
        Behaviour::fixture(200, "openai/completion_tool_calls.json"),
    );
    // This mock says it takes no tools: a tool call goes to the capable deployment, and the
    // log says why the mock was passed over.
    for _ in 0..4 {
        let resp = r
            .client()
            .complete(rich("mixed"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.deployment, "capable");
        assert_eq!(
            outcomes(&resp.attempts),
            [
                ("plain-mock".to_string(), AttemptOutcome::Unsupported),
                ("capable".to_string(), AttemptOutcome::Ok),
            ]
        );
        assert!(
            resp.attempts[0]
                .detail
                .contains("supports_function_calling")
        );
    }
    // ListModels says which deployments take what.
    let flags = |id: &str| {
        let r = &r;
        let id = id.to_string();
        async move {
            let d = r.deployment(&id).await;
            (
                d.supports_function_calling,
                d.supports_vision,
                d.supports_response_schema,
            )
        }
    };
    assert_eq!(flags("plain-mock").await, (false, true, true));
    assert_eq!(flags("text-only-1").await, (false, false, true));
    assert_eq!(flags("capable").await, (true, true, true));
    // Plain chat still goes to either.
    let mut plain = complete("mixed");
    plain.messages = user("hello");
    r.client().complete(plain).await.unwrap();

    // Nothing in the chain can take it: FAILED_PRECONDITION, naming the capability.
    let status = r.client().complete(rich("text-only")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "CAPABILITY_UNSUPPORTED");
    assert!(
        status.message().contains("supports_function_calling"),
        "{}",
        status.message()
    );
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["capability"], "supports_function_calling");
    assert_eq!(
        outcomes(&attempt_log(&status).attempts),
        [("text-only-1".to_string(), AttemptOutcome::Unsupported)]
    );
    assert_eq!(up.counts("text-only").requests, 0, "never sent");
    // An image alone needs vision.
    let mut image_only = rich("text-only");
    image_only.tools.clear();
    image_only.tool_choice = None;
    image_only.response_format = None;
    let status = r.client().complete(image_only).await.unwrap_err();
    assert!(
        status.message().contains("supports_vision"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn bad_tool_requests_name_their_field() {
    let up = Upstream::start().await;
    let r = TestRouter::start_with_env(&config(&up.base()), KEYS).await;
    let field = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument);
        status.get_details_bad_request().unwrap().field_violations[0]
            .field
            .clone()
    };
    let mut req = rich("gpt");
    req.tool_choice = Some(ToolChoice {
        choice: Some(Choice::Function("nope".into())),
    });
    assert_eq!(
        field(r.client().complete(req).await.unwrap_err()),
        "tool_choice.function"
    );
    let mut req = rich("gpt");
    req.tools.push(weather_tool());
    assert_eq!(
        field(r.client().complete(req).await.unwrap_err()),
        "tools[1].name"
    );
    let mut req = rich("gpt");
    req.messages.push(ChatMessage {
        role: Role::Assistant as i32,
        tool_calls: vec![ToolCall {
            id: "c1".into(),
            name: "get_weather".into(),
            arguments: "not json".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    assert_eq!(
        field(r.client().complete(req).await.unwrap_err()),
        "messages[1].tool_calls[0].arguments"
    );
    let mut req = rich("gpt");
    if let Some(Part::Image(i)) = &mut req.messages[0].parts[0].part {
        i.source = Some(Source::Url("ftp://example.com/a.png".into()));
    }
    assert_eq!(
        field(r.client().complete(req).await.unwrap_err()),
        "messages[0].parts[0].image.url"
    );
    // A schema whose root is not an object schema: OpenAI and Anthropic would answer 400.
    let mut req = rich("gpt");
    req.tools[0].parameters = Some(object(vec![("type", string("string"))]));
    let status = r.client().complete(req).await.unwrap_err();
    assert!(status.message().contains("\"object\""), "{status:?}");
    assert_eq!(field(status), "tools[0].parameters");
    assert_eq!(up.counts("gpt-tools").requests, 0);
}

#[tokio::test]
async fn a_tool_without_a_schema_type_reaches_anthropic_as_an_object_schema() {
    let up = Upstream::start().await;
    let r = TestRouter::start_with_env(&config(&up.base()), KEYS).await;
    // What a grpcurl user writes for a tool that takes nothing, and one with properties only.
    let mut req = rich("claude");
    req.response_format = None;
    req.tool_choice = None;
    req.tools = vec![
        Tool {
            name: "now".into(),
            parameters: Some(object(vec![])),
            ..Default::default()
        },
        Tool {
            parameters: weather_tool().parameters.map(|mut p| {
                p.fields.remove("type");
                p
            }),
            ..weather_tool()
        },
    ];
    up.set(
        "claude-tools",
        Behaviour::fixture(200, "anthropic/message_tool_use.json"),
    );
    r.client().complete(req).await.unwrap();
    let body = up.counts("claude-tools").last_body.unwrap();
    assert_eq!(
        body["tools"][0]["input_schema"],
        serde_json::json!({"type": "object", "properties": {}})
    );
    assert_eq!(
        body["tools"][1]["input_schema"],
        serde_json::json!({"type": "object", "properties": {"location": {"type": "string"}}})
    );
}

#[tokio::test]
async fn a_stream_that_delivered_tool_calls_recovers_by_restart_never_by_continuation() {
    let up = Upstream::start().await;
    let r = TestRouter::start_with_env(&config(&up.base()), KEYS).await;
    // The first deployment sends the call's first pieces, then its connection is reset.
    let cut = || Behaviour::Sse {
        body: crate::common::upstream::fixture("openai/stream_tool_calls.sse"),
        cut_after: Some(3),
    };
    up.set(
        "recover-b",
        Behaviour::sse_fixture("openai/stream_tool_calls.sse"),
    );

    // Continue: a prefill is text, which cannot carry a half-made call on.
    up.set("recover-a", cut());
    let mut req = as_stream(rich("recover"));
    req.stream_recovery = StreamRecovery::Continue as i32;
    let mut stream = r.client().stream_complete(req).await.unwrap().into_inner();
    let mut pieces = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(m)) => pieces += m.tool_calls.len(),
            Ok(None) => panic!("the stream ended cleanly"),
            Err(status) => break status,
        }
    };
    assert!(pieces > 0, "pieces were delivered before the break");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("tool-call or thinking pieces"),
        "{}",
        status.message()
    );
    assert_eq!(
        up.counts("recover-b").requests,
        0,
        "no continuation was attempted"
    );

    // Restart: the caller discards what it had and gets the backup's whole call.
    up.set("recover-a", cut());
    let mut req = as_stream(rich("recover"));
    req.stream_recovery = StreamRecovery::Restart as i32;
    let mut stream = r.client().stream_complete(req).await.unwrap().into_inner();
    let mut calls: Vec<ToolCall> = Vec::new();
    let mut restarted = false;
    while let Some(m) = stream.message().await.unwrap() {
        if m.restart {
            restarted = true;
            calls.clear();
        }
        add_pieces(&mut calls, m.tool_calls);
    }
    assert!(restarted);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        args(&calls[0]),
        serde_json::json!({"location": "Paris, France", "unit": "celsius"})
    );
}

#[tokio::test]
async fn an_image_by_url_skips_gemini_which_does_not_fetch_it() {
    let up = Upstream::start().await;
    let r = TestRouter::start_with_env(&config(&up.base()), KEYS).await;
    up.set("gpt-tools", Behaviour::status(503, "overloaded"));
    up.set("claude-tools", Behaviour::status(503, "overloaded"));
    up.set(
        "gemini-tools",
        Behaviour::fixture(200, "gemini/response_function_call.json"),
    );
    let mut by_url = rich("gpt");
    if let Some(Part::Image(i)) = &mut by_url.messages[0].parts[0].part {
        i.source = Some(Source::Url("https://example.com/paris.png".into()));
    }
    // OpenAI and Anthropic fetch it themselves; Gemini would not, so it is passed over.
    let status = r.client().complete(by_url.clone()).await.unwrap_err();
    assert_eq!(
        outcomes(&attempt_log(&status).attempts),
        [
            ("openai-1".to_string(), AttemptOutcome::UpstreamError),
            ("anthropic-1".to_string(), AttemptOutcome::UpstreamError),
            ("gemini-1".to_string(), AttemptOutcome::Unsupported),
        ]
    );
    assert_eq!(up.counts("gemini-tools").requests, 0);
    by_url.model = "gemini".into();
    let status = r.client().complete(by_url).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("image.data"),
        "{}",
        status.message()
    );
    // The same image inline goes to Gemini, and so does a file of Google's File API, by its URI.
    let resp = r
        .client()
        .complete(rich("gemini"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.deployment, "gemini-1");
    let mut google_file = rich("gemini");
    let uri = "https://generativelanguage.googleapis.com/v1beta/files/abc-123";
    if let Some(Part::Image(i)) = &mut google_file.messages[0].parts[0].part {
        i.source = Some(Source::Url(uri.into()));
    }
    r.client().complete(google_file).await.unwrap();
    let body = up.counts("gemini-tools").last_body.unwrap();
    assert_eq!(body["contents"][0]["parts"][1]["fileData"]["fileUri"], uri);
}

#[tokio::test]
async fn anthropic_thinking_comes_back_and_goes_back_with_the_tool_call() {
    let up = Upstream::start().await;
    let r = TestRouter::start_with_env(&config(&up.base()), KEYS).await;
    up.set(
        "claude-tools",
        Behaviour::fixture(200, "anthropic/message_thinking_tool_use.json"),
    );
    let mut first = rich("claude");
    first.reasoning = Some(llm_router::proto::Reasoning {
        budget_tokens: Some(2048),
        ..Default::default()
    });
    let resp = r
        .client()
        .complete(first.clone())
        .await
        .unwrap()
        .into_inner();
    let answer = resp.message.unwrap();
    assert_eq!(answer.thinking.len(), 2);
    assert!(!answer.thinking[0].signature.is_empty());

    // The agent's next turn: the answer as it came, then the tool's result.
    let call_id = answer.tool_calls[0].id.clone();
    let mut next = first;
    next.messages.push(answer.clone());
    next.messages.push(ChatMessage {
        role: Role::Tool as i32,
        content: r#"{"sky":"clear"}"#.into(),
        tool_call_id: call_id,
        ..Default::default()
    });
    r.client().complete(next).await.unwrap();
    let body = up.counts("claude-tools").last_body.unwrap();
    let sent = &body["messages"][1]["content"];
    assert_eq!(sent[0]["type"], "thinking");
    assert_eq!(sent[0]["signature"], answer.thinking[0].signature.as_str());
    assert_eq!(sent[1]["type"], "redacted_thinking");
    assert_eq!(sent[2]["type"], "tool_use");
    assert_eq!(body["thinking"]["budget_tokens"], 2048);

    // Streamed, the thinking arrives in pieces before the text.
    up.set(
        "claude-tools",
        Behaviour::sse_fixture("anthropic/stream_thinking.sse"),
    );
    let mut stream = r
        .client()
        .stream_complete(as_stream(rich("claude")))
        .await
        .unwrap()
        .into_inner();
    let (mut thinking, mut text) = (String::new(), String::new());
    while let Some(m) = stream.message().await.unwrap() {
        for t in &m.thinking {
            thinking.push_str(&t.text);
        }
        assert!(
            text.is_empty() || m.thinking.is_empty(),
            "thinking comes first"
        );
        text.push_str(&m.delta);
    }
    assert_eq!(thinking, "The user wants the weather in Paris.");
    assert_eq!(text, "It is sunny in Paris.");
}

#[tokio::test]
async fn gemini_thought_signatures_go_round_a_multi_turn_tool_conversation() {
    const SIG_ONE: &str = "CiQBVKhc7mFixtureSignatureOne+/AAAA==";
    const SIG_THREE: &str = "CiQBVKhc7mFixtureSignatureThree/CCCC==";
    let up = Upstream::start().await;
    let r = TestRouter::start_with_env(&config(&up.base()), KEYS).await;
    let mut req = rich("gemini");
    req.messages[0].parts.clear();
    req.response_format = None;
    req.tool_choice = None;

    // Turn 1: two parallel calls, the first signed, and a thought summary.
    up.set(
        "gemini-tools",
        Behaviour::fixture(200, "gemini/response_thought_signatures.json"),
    );
    let answer = r.client().complete(req.clone()).await.unwrap().into_inner();
    let message = answer.message.unwrap();
    assert_eq!(message.tool_calls.len(), 2);
    assert_eq!(message.tool_calls[0].signature, SIG_ONE);
    assert_eq!(message.thinking.len(), 1);
    assert_eq!(message.thinking[0].origin, "gemini");

    // Streamed, the same call carries the same signature.
    up.set(
        "gemini-tools",
        Behaviour::sse_fixture("gemini/stream_thought_signatures.sse"),
    );
    let (calls, finish, _) = streamed_calls(&r, as_stream(req.clone())).await;
    assert_eq!(finish, FinishReason::ToolCalls);
    assert_eq!(
        calls
            .iter()
            .map(|c| c.signature.as_str())
            .collect::<Vec<_>>(),
        [SIG_ONE, ""]
    );

    // Turn 2: the assistant message goes back as it came, with both results.
    req.messages.push(message.clone());
    for (call, result) in message
        .tool_calls
        .iter()
        .zip([r#"{"c":18}"#, r#"{"c":14}"#])
    {
        req.messages.push(ChatMessage {
            role: Role::Tool as i32,
            content: result.into(),
            tool_call_id: call.id.clone(),
            ..Default::default()
        });
    }
    up.set(
        "gemini-tools",
        Behaviour::fixture(200, "gemini/response_text_signature.json"),
    );
    let answer = r.client().complete(req.clone()).await.unwrap().into_inner();
    let body = up.counts("gemini-tools").last_body.unwrap();
    let model_turn = &body["contents"][1];
    assert_eq!(model_turn["role"], "model");
    assert_eq!(model_turn["parts"][0]["thought"], true);
    assert_eq!(model_turn["parts"][1]["thoughtSignature"], SIG_ONE);
    assert!(model_turn["parts"][2].get("thoughtSignature").is_none());
    assert_eq!(body["contents"][2]["parts"].as_array().unwrap().len(), 2);
    let message = answer.message.unwrap();
    assert!(message.content.starts_with("It is 18°C"));
    assert_eq!(message.thinking[0].signature, SIG_THREE);

    // Turn 3: the answer's text signature goes back on its text part.
    req.messages.push(message);
    req.messages.push(ChatMessage {
        role: Role::User as i32,
        content: "Thanks".into(),
        ..Default::default()
    });
    r.client().complete(req.clone()).await.unwrap();
    let body = up.counts("gemini-tools").last_body.unwrap();
    assert_eq!(
        body["contents"][3]["parts"][0]["thoughtSignature"],
        SIG_THREE
    );
    assert_eq!(up.counts("gemini-tools").requests, 4);

    // The same conversation sent to Anthropic leaves Gemini's blocks out (it would refuse
    // them); the calls themselves go as tool_use blocks.
    up.set(
        "claude-tools",
        Behaviour::fixture(200, "anthropic/message.json"),
    );
    req.model = "claude".into();
    r.client().complete(req).await.unwrap();
    let body = up.counts("claude-tools").last_body.unwrap();
    let text = body.to_string();
    assert!(!text.contains("CiQBVKhc7mFixture"), "{text}");
    assert_eq!(body["messages"][1]["content"][0]["type"], "tool_use");
}
