//! The OpenAI chat-completions wire format: OpenAI itself, every OpenAI-compatible server
//! (vLLM, Ollama, llama.cpp, Groq, Mistral, DeepSeek, Together, ...) and Azure OpenAI, which
//! differs only in its URL and auth header. Unary JSON and SSE streaming ending in `[DONE]`.

use http::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

mod body;
mod rules;

use body::{ChatBody, StreamOptions};
use rules::Rules;

use super::transport::{self, Endpoint, EventParser, Step, Target, malformed, malformed_event};
use super::{ChatRequest, Chunk, ChunkStream, Completion, ErrorKind, ProviderError, excerpt};
use crate::config::{Family, HttpProvider, OpenAiSettings, Secret};
use crate::proto::{FinishReason, ToolCall, ToolCallDelta, Usage};

#[derive(Debug)]
pub struct OpenAiProvider {
    endpoint: Endpoint,
    url: Target,
    /// Sent as `model`; for Azure, the deployment name, which is also in the URL.
    model: String,
    default_max_tokens: Option<u32>,
    /// What the API enforces for this model (`max_completion_tokens`, sampling).
    rules: Rules,
    /// Unreadable stream events skipped before a stream counts as broken.
    max_malformed_events: u32,
}

impl OpenAiProvider {
    pub fn new(
        http: super::transport::Link,
        cfg: &HttpProvider,
        model: &str,
        max_malformed_events: u32,
    ) -> Self {
        let (rules, model) = Rules::new(cfg, model);
        let model = model.as_str();
        let mut auth = Vec::new();
        let url = match &cfg.family {
            Family::Azure(azure) => {
                if let Some(key) = &cfg.api_key {
                    auth.push(("api-key", key.clone()));
                }
                format!(
                    "{}/openai/deployments/{model}/chat/completions?api-version={}",
                    cfg.api_base, azure.api_version
                )
            }
            // The OpenAI-compatible hosts (only they reach this module besides Azure).
            family => {
                if let Some(key) = &cfg.api_key {
                    auth.push((
                        "authorization",
                        Secret::new(format!("Bearer {}", key.expose())),
                    ));
                }
                if let Family::OpenAi(OpenAiSettings {
                    organization: Some(org),
                }) = family
                {
                    auth.push(("openai-organization", Secret::new(org.clone())));
                }
                format!("{}/chat/completions", cfg.api_base)
            }
        };
        OpenAiProvider {
            max_malformed_events,
            endpoint: Endpoint::new(http, auth, &cfg.extra_headers, cfg.api_key.as_ref())
                .with_body_defaults(cfg.body_defaults.clone()),
            url: Target::new(url),
            model: model.to_string(),
            default_max_tokens: cfg.default_max_tokens,
            rules,
        }
    }

    fn body<'a>(&'a self, req: &'a ChatRequest, stream: bool) -> ChatBody<'a> {
        let max_tokens = req.max_tokens.or(self.default_max_tokens);
        let sampling = self.rules.sampling(req, &self.model);
        let completion_tokens = self.rules.completion_tokens;
        ChatBody {
            model: &self.model,
            messages: req.messages.iter().map(body::message).collect(),
            stream,
            // Without it, streamed calls report no usage.
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            max_tokens: max_tokens.filter(|_| !completion_tokens),
            max_completion_tokens: max_tokens.filter(|_| completion_tokens),
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            stop: &req.stop,
            user: &req.user,
            tools: body::tools(req),
            tool_choice: body::tool_choice(req.tool_choice.as_ref()),
            parallel_tool_calls: req.parallel_tool_calls,
            response_format: body::response_format(&req.response_format),
            seed: req.seed,
            presence_penalty: sampling.presence_penalty,
            frequency_penalty: sampling.frequency_penalty,
            reasoning_effort: req.reasoning.map(|r| r.effort().name()),
        }
    }

    pub async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        let response = self
            .endpoint
            .post(&self.url, &self.body(req, false), classify)
            .await?;
        let body = self.endpoint.body(response).await?;
        parse_completion(&body)
    }

    pub async fn stream(&self, req: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let response = self
            .endpoint
            .post(&self.url, &self.body(req, true), classify)
            .await?;
        Ok(transport::sse_stream(
            response,
            OpenAiEvents,
            self.max_malformed_events,
            self.endpoint.secrets(),
        ))
    }
}

/// OpenAI's status codes, plus its content-policy codes (Azure's `content_filter`, OpenAI's
/// `content_policy_violation`), which go to `content_policy_fallbacks`.
fn classify(status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
    let mut err = ProviderError::from_status(status, transport::retry_after(headers), body);
    if status == 400
        && (body.contains("\"content_filter\"") || body.contains("content_policy_violation"))
    {
        err.kind = ErrorKind::ContentPolicy;
    }
    err
}

fn parse_completion(body: &str) -> Result<Completion, ProviderError> {
    let parsed: ChatCompletion =
        serde_json::from_str(body).map_err(|e| malformed("completion", e, body))?;
    let choice = parsed.choices.into_iter().next().ok_or_else(|| {
        ProviderError::new(
            ErrorKind::Upstream,
            200,
            format!("completion has no choices: {}", excerpt(body)),
        )
    })?;
    let mut message = choice.message.unwrap_or_default();
    Ok(Completion {
        text: message.text(),
        tool_calls: message
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id.unwrap_or_default(),
                name: c.function.name.unwrap_or_default(),
                arguments: c.function.arguments.unwrap_or_default(),
                signature: String::new(),
            })
            .collect(),
        thinking: Vec::new(),
        finish_reason: finish_reason(choice.finish_reason.as_deref()),
        usage: parsed.usage.map(WireUsage::into_proto),
    })
}

struct OpenAiEvents;

impl EventParser for OpenAiEvents {
    fn event(&mut self, data: &str) -> Result<Step, ProviderError> {
        if data.trim() == "[DONE]" {
            return Ok(Step::Done);
        }
        let v: StreamEvent = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => return Ok(malformed_event(e, data)),
        };
        if let Some(err) = v.error {
            return Err(ProviderError::new(
                ErrorKind::Upstream,
                200,
                format!("error event: {}", excerpt(&err.to_string())),
            ));
        }
        let mut chunk = Chunk {
            usage: v.usage.map(WireUsage::into_proto),
            ..Chunk::default()
        };
        if let Some(choice) = v.choices.into_iter().next() {
            let mut delta = choice.delta.unwrap_or_default();
            chunk.delta = delta.text();
            chunk.tool_calls = delta
                .tool_calls
                .into_iter()
                .map(|c| ToolCallDelta {
                    index: c.index,
                    id: c.id.unwrap_or_default(),
                    name: c.function.name.unwrap_or_default(),
                    arguments: c.function.arguments.unwrap_or_default(),
                    signature: String::new(),
                })
                .collect();
            chunk.finish_reason = choice
                .finish_reason
                .as_deref()
                .map(|r| finish_reason(Some(r)));
        }
        if !chunk.commits() && chunk.usage.is_none() {
            // Role-only or keep-alive events: nothing to pass on.
            return Ok(Step::Skip);
        }
        Ok(Step::Chunk(chunk))
    }

    fn cut_short(&self) -> ProviderError {
        ProviderError::new(
            ErrorKind::Upstream,
            200,
            "stream ended before a finish_reason or [DONE]",
        )
    }
}

fn finish_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("stop") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        _ => FinishReason::Unspecified,
    }
}

#[derive(Deserialize)]
struct ChatCompletion {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<WireMessage>,
    delta: Option<WireMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireMessage {
    content: Option<String>,
    /// Why the model declined to answer in the requested format (structured outputs): passed
    /// on as the answer's text, which is what the caller would otherwise get none of.
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

impl WireMessage {
    fn text(&mut self) -> String {
        self.content
            .take()
            .filter(|c| !c.is_empty())
            .or_else(|| self.refusal.take())
            .unwrap_or_default()
    }
}

/// A tool call in an answer, or a piece of one in a stream (where only `index` is certain).
#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: u32,
    id: Option<String>,
    #[serde(default)]
    function: WireFunction,
}

#[derive(Deserialize, Default)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct StreamEvent {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    #[serde(default)]
    total_tokens: u32,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u32>,
}

impl WireUsage {
    fn into_proto(self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
            cached_tokens: self.prompt_tokens_details.and_then(|d| d.cached_tokens),
            reasoning_tokens: self
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens),
            cost_usd: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Role;
    use crate::providers::chat::fixture;
    use serde_json::json;

    fn provider(default_max_tokens: Option<u32>) -> OpenAiProvider {
        at(
            "openai",
            Family::OpenAi(OpenAiSettings::default()),
            "http://127.0.0.1:9/v1",
            "gpt-4o",
            default_max_tokens,
        )
    }

    /// A deployment of `model` under `prefix` at `api_base` (nothing is sent).
    fn at(
        prefix: &'static str,
        family: Family,
        api_base: &str,
        model: &str,
        default_max_tokens: Option<u32>,
    ) -> OpenAiProvider {
        OpenAiProvider::new(
            crate::providers::transport::Link::for_tests(),
            &HttpProvider {
                prefix,
                family,
                api_base: api_base.into(),
                api_key: None,
                extra_headers: Vec::new(),
                default_max_tokens,
                body_defaults: None,
            },
            model,
            3,
        )
    }

    fn openai(model: &str) -> OpenAiProvider {
        at(
            "openai",
            Family::OpenAi(OpenAiSettings::default()),
            "https://api.openai.com/v1",
            model,
            None,
        )
    }

    fn message(role: Role, content: &str, name: Option<&str>) -> crate::proto::ChatMessage {
        crate::proto::ChatMessage {
            role: role as i32,
            content: content.into(),
            name: name.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn request_body_carries_every_set_field_and_omits_unset_ones() {
        let p = provider(Some(64));
        let full = ChatRequest {
            messages: vec![
                message(Role::System, "Be brief.", None),
                message(Role::User, "Hi \"there\"", Some("ann")),
            ],
            max_tokens: Some(5),
            temperature: Some(0.5),
            top_p: Some(0.25),
            stop: vec!["\n\n".into()],
            user: "u-1".into(),
            ..Default::default()
        };
        let body = serde_json::to_value(p.body(&full, true)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi \"there\"", "name": "ann"},
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 5,
                "temperature": 0.5,
                "top_p": 0.25,
                "stop": ["\n\n"],
                "user": "u-1",
            })
        );

        let bare = ChatRequest {
            messages: vec![message(Role::User, "Hi", None)],
            max_tokens: None,
            temperature: None,
            top_p: None,
            stop: Vec::new(),
            user: String::new(),
            ..Default::default()
        };
        // The deployment's default max_tokens applies when the call sets none.
        let body = serde_json::to_value(p.body(&bare, false)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "Hi"}],
                "stream": false,
                "max_tokens": 64,
            })
        );
        let body = serde_json::to_value(provider(None).body(&bare, false)).unwrap();
        assert!(body.get("max_tokens").is_none(), "{body}");
    }

    fn step(data: &str) -> Option<Chunk> {
        match OpenAiEvents.event(data).unwrap() {
            Step::Chunk(c) => Some(c),
            Step::Skip => None,
            Step::Done => panic!("unexpected Done"),
            Step::Malformed(m) => panic!("unexpected malformed event: {m}"),
        }
    }

    #[test]
    fn stream_events_parse_content_finish_and_usage() {
        assert!(step(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#).is_none());
        assert_eq!(
            step(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#)
                .unwrap()
                .delta,
            "Hi"
        );
        let c = step(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(c.finish_reason, Some(FinishReason::Length));
        let c = step(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!(c.usage.unwrap().total_tokens, 7);
        assert!(matches!(
            OpenAiEvents.event("{not json"),
            Ok(Step::Malformed(_))
        ));
        assert!(
            OpenAiEvents
                .event(r#"{"error":{"message":"overloaded"}}"#)
                .is_err()
        );
        assert!(matches!(OpenAiEvents.event("[DONE]"), Ok(Step::Done)));
        assert!(OpenAiEvents.cut_short().detail.contains("[DONE]"));
    }

    #[test]
    fn content_filter_errors_are_content_policy() {
        let body = r#"{"error":{"code":"content_filter","message":"filtered","status":400}}"#;
        assert_eq!(
            classify(400, &HeaderMap::new(), body).kind,
            ErrorKind::ContentPolicy
        );
        assert_eq!(
            classify(400, &HeaderMap::new(), "bad").kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn every_feature_maps_to_the_documented_request_body() {
        // gpt-4o is no reasoning model: it takes sampling parameters, and no reasoning_effort.
        let req = ChatRequest {
            reasoning: None,
            ..crate::providers::chat::full_request()
        };
        let body = serde_json::to_value(openai("gpt-4o").body(&req, false)).unwrap();
        let expected: Value = serde_json::from_str(&fixture("openai/request_full.json")).unwrap();
        assert_eq!(body, expected);
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens_and_no_sampling_parameters() {
        let req = crate::providers::chat::full_request();
        let expected: Value =
            serde_json::from_str(&fixture("openai/request_reasoning.json")).unwrap();
        let o3 = openai("o3");
        assert_eq!(
            serde_json::to_value(o3.body(&req, false)).unwrap(),
            expected
        );
        // Asked again, the same body (the warning is once per deployment, the rule always).
        assert_eq!(
            serde_json::to_value(o3.body(&req, false)).unwrap(),
            expected
        );
        // The defaults themselves are accepted, and kept.
        let defaults = ChatRequest {
            temperature: Some(1.0),
            top_p: Some(1.0),
            presence_penalty: Some(0.0),
            ..crate::providers::chat::full_request()
        };
        let body = serde_json::to_value(openai("gpt-5-mini").body(&defaults, false)).unwrap();
        assert_eq!(
            (
                &body["temperature"],
                &body["top_p"],
                &body["presence_penalty"]
            ),
            (&json!(1.0), &json!(1.0), &json!(0.0))
        );
        assert!(body.get("frequency_penalty").is_none(), "{body}");

        // Behind a proxy or a compatible server: by the model's name only.
        let proxied = at(
            "openai",
            Family::OpenAi(OpenAiSettings::default()),
            "https://llm-proxy.internal/v1",
            "o4-mini",
            Some(64),
        );
        let bare = ChatRequest {
            messages: vec![message(Role::User, "Hi", None)],
            temperature: Some(0.5),
            ..Default::default()
        };
        let body = serde_json::to_value(proxied.body(&bare, false)).unwrap();
        assert_eq!(body["max_completion_tokens"], 64, "{body}");
        assert!(body.get("max_tokens").is_none() && body.get("temperature").is_none());
        let groq = at(
            "groq",
            Family::OpenAi(OpenAiSettings::default()),
            "https://api.groq.com/openai/v1",
            "o3-lookalike",
            Some(64),
        );
        let body = serde_json::to_value(groq.body(&bare, false)).unwrap();
        assert_eq!(
            (&body["max_tokens"], &body["temperature"]),
            (&json!(64), &json!(0.5))
        );
    }

    #[test]
    fn azure_reasoning_deployments_are_known_by_name_or_by_litellms_marker() {
        let azure = |model: &str| {
            at(
                "azure",
                Family::Azure(crate::config::AzureSettings {
                    api_version: "2024-10-21".into(),
                }),
                "https://example.openai.azure.com",
                model,
                Some(100),
            )
        };
        let bare = ChatRequest {
            messages: vec![message(Role::User, "Hi", None)],
            top_p: Some(0.5),
            ..Default::default()
        };
        let marked = azure("o_series/my-reasoner");
        assert_eq!(
            marked.url.as_str(),
            "https://example.openai.azure.com/openai/deployments/my-reasoner/chat/completions?api-version=2024-10-21"
        );
        let body = serde_json::to_value(marked.body(&bare, false)).unwrap();
        assert_eq!(body["model"], "my-reasoner");
        assert_eq!(body["max_completion_tokens"], 100);
        assert!(body.get("top_p").is_none(), "{body}");
        let body = serde_json::to_value(azure("gpt5_series/prod").body(&bare, false)).unwrap();
        assert_eq!(body["max_completion_tokens"], 100);
        let body = serde_json::to_value(azure("o3-mini").body(&bare, false)).unwrap();
        assert_eq!(body["max_completion_tokens"], 100);
        // Any other deployment keeps max_tokens, which every api-version reads.
        let body = serde_json::to_value(azure("gpt-4o-prod").body(&bare, false)).unwrap();
        assert_eq!(
            (&body["max_tokens"], &body["top_p"]),
            (&json!(100), &json!(0.5))
        );
    }

    #[test]
    fn tool_calls_and_usage_details_come_back_unary_and_streamed() {
        let c = parse_completion(&fixture("openai/completion_tool_calls.json")).unwrap();
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        assert_eq!(c.text, "");
        assert_eq!(c.tool_calls.len(), 1);
        assert_eq!(c.tool_calls[0].id, "call_Vv4m1sK8fTzq2Lr0xq3FfA7b");
        assert_eq!(c.tool_calls[0].name, "get_weather");
        assert_eq!(
            c.tool_calls[0].arguments,
            r#"{"location":"Paris, France","unit":"celsius"}"#
        );
        let usage = c.usage.unwrap();
        assert_eq!(
            (usage.cached_tokens, usage.reasoning_tokens),
            (Some(64), Some(0))
        );

        let mut chunks = Vec::new();
        for data in crate::providers::chat::sse_data(&fixture("openai/stream_tool_calls.sse")) {
            if let Step::Chunk(c) = OpenAiEvents.event(&data).unwrap() {
                chunks.push(c);
            }
        }
        assert!(
            chunks[0].commits(),
            "a tool call's first piece commits the stream"
        );
        let calls = crate::providers::chat::assemble(&chunks);
        assert_eq!(
            calls, c.tool_calls,
            "the stream assembles into the unary answer's call"
        );
        assert_eq!(
            chunks.iter().find_map(|c| c.finish_reason),
            Some(FinishReason::ToolCalls)
        );
    }

    #[test]
    fn a_refusal_comes_back_as_the_answers_text() {
        let body = r#"{"choices":[{"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#;
        assert_eq!(
            parse_completion(body).unwrap().text,
            "I can't help with that."
        );
        let c = step(r#"{"choices":[{"delta":{"refusal":"I can't"}}]}"#).unwrap();
        assert_eq!(c.delta, "I can't");
    }
}
