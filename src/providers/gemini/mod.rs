//! Google AI Studio's Gemini API: `generateContent` and `streamGenerateContent?alt=sse`, the
//! request body ([`body`]), the key in `x-goog-api-key`, answers as parts (text, and
//! `functionCall`s, which get ids here: Gemini's have none). Its stream has no end marker: it is complete when a candidate has carried a
//! `finishReason`. Safety blocks are a content-filter finish reason, or, when the prompt itself
//! is blocked, a content-policy failure that `content_policy_fallbacks` can route.

use std::time::Duration;

use http::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

pub mod body;

use super::chat::new_call_id;
use super::transport::{self, Endpoint, EventParser, Step, Target, malformed, malformed_event};
use super::{ChatRequest, Chunk, ChunkStream, Completion, ErrorKind, ProviderError, excerpt};
use crate::config::HttpProvider;
use crate::proto::{FinishReason, ThinkingBlock, ThinkingDelta, ToolCall, ToolCallDelta, Usage};

/// `ThinkingBlock.origin` of the blocks Gemini's answers carry (its thought signatures).
pub const ORIGIN: &str = "gemini";

#[derive(Debug)]
pub struct GeminiProvider {
    endpoint: Endpoint,
    unary_url: Target,
    stream_url: Target,
    default_max_tokens: Option<u32>,
    /// Unreadable stream events skipped before a stream counts as broken.
    max_malformed_events: u32,
}

impl GeminiProvider {
    pub fn new(
        http: super::transport::Link,
        cfg: &HttpProvider,
        model: &str,
        max_malformed_events: u32,
    ) -> Self {
        let auth = cfg
            .api_key
            .iter()
            .map(|k| ("x-goog-api-key", k.clone()))
            .collect();
        let model_url = format!("{}/models/{model}", cfg.api_base);
        GeminiProvider {
            max_malformed_events,
            endpoint: Endpoint::new(http, auth, &cfg.extra_headers, cfg.api_key.as_ref())
                .with_body_defaults(cfg.body_defaults.clone()),
            unary_url: Target::new(format!("{model_url}:generateContent")),
            stream_url: Target::new(format!("{model_url}:streamGenerateContent?alt=sse")),
            default_max_tokens: cfg.default_max_tokens,
        }
    }

    fn body(&self, req: &ChatRequest) -> Value {
        body::body(req, self.default_max_tokens)
    }

    pub async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        let response = self
            .endpoint
            .post(&self.unary_url, &self.body(req), classify)
            .await?;
        let body = self.endpoint.body(response).await?;
        parse_response(&body)
    }

    pub async fn stream(&self, req: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let response = self
            .endpoint
            .post(&self.stream_url, &self.body(req), classify)
            .await?;
        Ok(transport::sse_stream(
            response,
            GeminiEvents::default(),
            self.max_malformed_events,
            self.endpoint.secrets(),
        ))
    }
}

/// A unary `generateContent` answer's body as a completion: the wire format's reading, which
/// another host of Gemini models reuses.
pub fn parse_response(body: &str) -> Result<Completion, ProviderError> {
    let r: Response = serde_json::from_str(body).map_err(|e| malformed("response", e, body))?;
    let piece = r.into_piece(&mut Thoughts::default())?;
    if piece.finish_reason.is_none() && piece.text.is_empty() && piece.calls.is_empty() {
        return Err(ProviderError::new(
            ErrorKind::Upstream,
            200,
            format!("response has no candidate: {}", excerpt(body)),
        ));
    }
    Ok(Completion {
        text: piece.text,
        tool_calls: piece
            .calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
                signature: c.signature,
            })
            .collect(),
        thinking: blocks(piece.thinking),
        finish_reason: piece.finish_reason.unwrap_or(FinishReason::Unspecified),
        usage: piece.usage,
    })
}

/// Google's statuses, refined by the body: an invalid key is a 400 `API_KEY_INVALID` (an auth
/// failure, not a bad request), and a 429 carries its wait in a `google.rpc.RetryInfo` detail.
fn classify(status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
    let parsed = serde_json::from_str::<ErrorBody>(body).ok();
    let retry_delay = parsed.as_ref().and_then(|b| {
        b.error
            .details
            .iter()
            .find(|d| d.kind.ends_with("google.rpc.RetryInfo"))
            .and_then(|d| d.retry_delay.as_deref())
            .and_then(parse_google_duration)
    });
    let mut err = ProviderError::from_status(
        status,
        transport::retry_after(headers).or(retry_delay),
        body,
    );
    let api_key_invalid = body.contains("API_KEY_INVALID") || body.contains("API key not valid");
    if status == 400 && api_key_invalid {
        err.kind = ErrorKind::Auth;
    }
    err
}

/// A protobuf JSON Duration such as `"37s"` or `"1.5s"`.
fn parse_google_duration(s: &str) -> Option<Duration> {
    transport::seconds(s.strip_suffix('s')?.parse().ok()?)
}

/// A unary answer's thinking pieces as whole blocks, by index.
fn blocks(pieces: Vec<ThinkingDelta>) -> Vec<ThinkingBlock> {
    let mut out: Vec<ThinkingBlock> = Vec::new();
    for p in pieces {
        let i = p.index as usize;
        if out.len() <= i {
            out.resize_with(i + 1, || ThinkingBlock {
                origin: ORIGIN.into(),
                ..ThinkingBlock::default()
            });
        }
        out[i].text.push_str(&p.text);
        if !p.signature.is_empty() {
            out[i].signature = p.signature;
        }
    }
    out
}

/// How an answer's parts become thinking blocks: thought-summary parts (`thought: true`)
/// in a row make one block, which a signature on one of them ends; a signature on any other
/// part (an answer's text, most often its last part) is a block of its own, with no text.
/// A function call's signature stays with the call. Kept across a stream's events, which
/// carry a few parts each.
#[derive(Default)]
struct Thoughts {
    /// Blocks begun so far.
    blocks: u32,
    /// The block thought summaries are going into, until a signature or other part ends it.
    open: Option<u32>,
}

impl Thoughts {
    fn thought(&mut self, text: String, signature: Option<String>) -> ThinkingDelta {
        let index = match self.open {
            Some(i) => i,
            None => self.begin(),
        };
        self.open = if signature.is_some() {
            None
        } else {
            Some(index)
        };
        ThinkingDelta {
            index,
            text,
            signature: signature.unwrap_or_default(),
            redacted: String::new(),
            origin: ORIGIN.into(),
        }
    }

    fn signature(&mut self, signature: String) -> ThinkingDelta {
        let index = self.begin();
        self.open = None;
        ThinkingDelta {
            index,
            signature,
            origin: ORIGIN.into(),
            ..ThinkingDelta::default()
        }
    }

    fn begin(&mut self) -> u32 {
        self.blocks += 1;
        self.blocks - 1
    }
}

/// One response (or stream event), reduced to what llm-router passes on.
struct Piece {
    text: String,
    calls: Vec<Call>,
    thinking: Vec<ThinkingDelta>,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
}

/// A `functionCall` part, with its id (Gemini's when it gave one, else made here).
struct Call {
    id: String,
    name: String,
    arguments: String,
    /// Its thought signature, when Gemini gave one.
    signature: String,
}

impl Response {
    fn into_piece(self, thoughts: &mut Thoughts) -> Result<Piece, ProviderError> {
        if let Some(reason) = self.prompt_feedback.and_then(|f| f.block_reason) {
            return Err(ProviderError::new(
                ErrorKind::ContentPolicy,
                200,
                format!("prompt blocked by the provider: {reason}"),
            ));
        }
        // Thinking is billed as output: completion tokens count it, and say how much it was.
        let usage = self.usage_metadata.map(|u| {
            let thoughts = u.thoughts_token_count.unwrap_or(0);
            Usage {
                prompt_tokens: u.prompt_token_count,
                completion_tokens: u.candidates_token_count.saturating_add(thoughts),
                total_tokens: u.total_token_count,
                cached_tokens: u.cached_content_token_count,
                reasoning_tokens: u.thoughts_token_count,
                cost_usd: None,
            }
        });
        let Some(c) = self.candidates.into_iter().next() else {
            return Ok(Piece {
                text: String::new(),
                calls: Vec::new(),
                thinking: Vec::new(),
                finish_reason: None,
                usage,
            });
        };
        let mut text = String::new();
        let mut calls = Vec::new();
        let mut thinking = Vec::new();
        for part in c.content.map(|c| c.parts).unwrap_or_default() {
            let signature = part.thought_signature.filter(|s| !s.is_empty());
            if let Some(call) = part.function_call {
                thoughts.open = None;
                calls.push(Call {
                    id: call
                        .id
                        .filter(|id| !id.is_empty())
                        .unwrap_or_else(|| new_call_id("call_")),
                    name: call.name,
                    arguments: call
                        .args
                        .map_or_else(|| "{}".to_string(), |a| a.to_string()),
                    signature: signature.unwrap_or_default(),
                });
            } else if part.thought {
                // Thought summaries are the model's working, not its answer: thinking.
                thinking.push(thoughts.thought(part.text.unwrap_or_default(), signature));
            } else {
                if let Some(t) = part.text {
                    thoughts.open = None;
                    text.push_str(&t);
                }
                if let Some(signature) = signature {
                    thinking.push(thoughts.signature(signature));
                }
            }
        }
        // Gemini ends a turn that calls functions with STOP; the API says why it stopped.
        let finish_reason = c.finish_reason.as_deref().map(|r| match finish_reason(r) {
            FinishReason::Stop if !calls.is_empty() => FinishReason::ToolCalls,
            other => other,
        });
        Ok(Piece {
            text,
            calls,
            thinking,
            finish_reason,
            usage,
        })
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        _ => FinishReason::Unspecified,
    }
}

/// Reads the stream's events: each carries whole function calls, numbered here in order.
#[derive(Default)]
pub struct GeminiEvents {
    calls: u32,
    thoughts: Thoughts,
}

impl EventParser for GeminiEvents {
    fn event(&mut self, data: &str) -> Result<Step, ProviderError> {
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => return Ok(malformed_event(e, data)),
        };
        if let Some(err) = v.get("error") {
            let status = err.get("code").and_then(Value::as_u64).unwrap_or(0);
            let kind = if status == 429 {
                ErrorKind::RateLimited
            } else {
                ErrorKind::Upstream
            };
            return Err(ProviderError::new(
                kind,
                200,
                format!("error event: {}", excerpt(data)),
            ));
        }
        let r: Response = match serde_json::from_value(v) {
            Ok(r) => r,
            Err(e) => return Ok(malformed_event(e, data)),
        };
        let piece = r.into_piece(&mut self.thoughts)?;
        let tool_calls: Vec<ToolCallDelta> = piece
            .calls
            .into_iter()
            .map(|c| {
                self.calls += 1;
                ToolCallDelta {
                    index: self.calls - 1,
                    id: c.id,
                    name: c.name,
                    arguments: c.arguments,
                    signature: c.signature,
                }
            })
            .collect();
        // A stream's calls may come before its finishing event, which says only STOP.
        let finish_reason = match piece.finish_reason {
            Some(FinishReason::Stop) if self.calls > 0 => Some(FinishReason::ToolCalls),
            other => other,
        };
        let chunk = Chunk {
            delta: piece.text,
            tool_calls,
            thinking: piece.thinking,
            finish_reason,
            usage: piece.usage,
            ..Chunk::default()
        };
        if !chunk.commits() && chunk.usage.is_none() {
            return Ok(Step::Skip);
        }
        Ok(Step::Chunk(chunk))
    }

    /// Gemini streams have no end marker: the end is clean only after a finish reason.
    fn cut_short(&self) -> ProviderError {
        ProviderError::new(
            ErrorKind::Upstream,
            200,
            "stream ended before a finishReason",
        )
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    candidates: Vec<Candidate>,
    usage_metadata: Option<UsageMetadata>,
    prompt_feedback: Option<PromptFeedback>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    text: Option<String>,
    /// A thought summary (with `includeThoughts`), not answer text.
    #[serde(default)]
    thought: bool,
    /// The signature of the model's reasoning up to this part, to be sent back with it.
    thought_signature: Option<String>,
    function_call: Option<FunctionCall>,
}

#[derive(Deserialize)]
struct FunctionCall {
    id: Option<String>,
    name: String,
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u32,
    #[serde(default)]
    candidates_token_count: u32,
    #[serde(default)]
    total_token_count: u32,
    cached_content_token_count: Option<u32>,
    thoughts_token_count: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: GoogleError,
}

#[derive(Deserialize)]
struct GoogleError {
    #[serde(default)]
    details: Vec<GoogleDetail>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoogleDetail {
    #[serde(rename = "@type", default)]
    kind: String,
    retry_delay: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::chat::fixture;

    #[test]
    fn invalid_keys_are_auth_failures_and_429s_carry_retry_info() {
        let body = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        assert_eq!(classify(400, &HeaderMap::new(), body).kind, ErrorKind::Auth);
        let body = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#;
        let err = classify(429, &HeaderMap::new(), body);
        assert_eq!(
            (err.kind, err.wait_hint),
            (ErrorKind::RateLimited, Some(Duration::from_secs(37)))
        );
    }

    #[test]
    fn only_the_last_event_carries_a_finish_reason_and_garbage_is_malformed() {
        // The stream (http.rs) ends cleanly only after a chunk with a finish reason.
        let mut p = GeminiEvents::default();
        let ev = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"}}]}"#;
        assert!(matches!(p.event(ev), Ok(Step::Chunk(c)) if c.finish_reason.is_none()));
        let last = r#"{"candidates":[{"content":{"parts":[{"text":"!"}],"role":"model"},"finishReason":"STOP"}]}"#;
        assert!(matches!(p.event(last), Ok(Step::Chunk(c)) if c.finish_reason.is_some()));
        assert!(matches!(p.event("{not json"), Ok(Step::Malformed(_))));
        assert!(p.cut_short().detail.contains("finishReason"));
    }

    #[test]
    fn blocked_prompts_are_content_policy_failures() {
        let mut p = GeminiEvents::default();
        let e = p
            .event(r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#)
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::ContentPolicy);
    }

    #[test]
    fn every_feature_maps_to_the_documented_request_body() {
        let body = body::body(&crate::providers::chat::full_request(), None);
        let expected: Value = serde_json::from_str(&fixture("gemini/request_full.json")).unwrap();
        assert_eq!(body, expected);
    }

    const SIG_ONE: &str = "CiQBVKhc7mFixtureSignatureOne+/AAAA==";
    const SIG_TWO: &str = "CiQBVKhc7mFixtureSignatureTwo-_BBBB==";
    const SIG_THREE: &str = "CiQBVKhc7mFixtureSignatureThree/CCCC==";

    #[test]
    fn thought_signatures_come_back_on_calls_and_as_thinking_blocks() {
        let c = parse_response(&fixture("gemini/response_thought_signatures.json")).unwrap();
        let signatures: Vec<&str> = c.tool_calls.iter().map(|t| t.signature.as_str()).collect();
        assert_eq!(
            signatures,
            [SIG_ONE, ""],
            "only the first parallel call carries one"
        );
        // The thought summary is thinking, not answer text.
        assert_eq!(c.text, "");
        assert_eq!(c.thinking.len(), 1);
        assert!(c.thinking[0].text.starts_with("The user wants"));
        assert_eq!(
            (
                c.thinking[0].signature.as_str(),
                c.thinking[0].origin.as_str()
            ),
            ("", ORIGIN)
        );

        let c = parse_response(&fixture("gemini/response_text_signature.json")).unwrap();
        assert!(c.text.starts_with("It is 18°C"));
        assert_eq!(
            c.thinking,
            [ThinkingBlock {
                signature: SIG_THREE.into(),
                origin: ORIGIN.into(),
                ..ThinkingBlock::default()
            }]
        );

        let mut p = GeminiEvents::default();
        let mut chunks = Vec::new();
        for data in
            crate::providers::chat::sse_data(&fixture("gemini/stream_thought_signatures.sse"))
        {
            if let Step::Chunk(c) = p.event(&data).unwrap() {
                chunks.push(c);
            }
        }
        let calls = crate::providers::chat::assemble(&chunks);
        assert_eq!(calls.len(), 2);
        let pieces: Vec<&ToolCallDelta> = chunks.iter().flat_map(|c| &c.tool_calls).collect();
        assert_eq!(
            (pieces[0].signature.as_str(), pieces[1].signature.as_str()),
            (SIG_ONE, "")
        );
        // The empty last text part's signature: a block of its own, with the finish reason.
        let last = chunks.last().unwrap();
        assert_eq!(last.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(
            last.thinking,
            [ThinkingDelta {
                index: 0,
                signature: SIG_TWO.into(),
                origin: ORIGIN.into(),
                ..ThinkingDelta::default()
            }]
        );
    }

    #[test]
    fn thought_summaries_in_a_row_make_one_block_which_a_signature_ends() {
        let mut t = Thoughts::default();
        let a = t.thought("a".into(), None);
        let b = t.thought("b".into(), Some("c2ln".into()));
        let c = t.thought("c".into(), None);
        t.open = None; // an answer's text part came between
        let d = t.thought("d".into(), None);
        let e = t.signature("ZQ==".into());
        let indices: Vec<u32> = [&a, &b, &c, &d, &e].iter().map(|p| p.index).collect();
        assert_eq!(indices, [0, 0, 1, 2, 3]);
        let blocks = blocks(vec![a, b, c, d, e]);
        assert_eq!(
            (blocks[0].text.as_str(), blocks[0].signature.as_str()),
            ("ab", "c2ln")
        );
        assert_eq!(blocks.len(), 4);
    }

    #[test]
    fn thought_signatures_go_back_where_they_came_from_and_nowhere_else() {
        use crate::proto::{ChatMessage, Role};
        let call = |name: &str, signature: &str| ToolCall {
            id: format!("call_{name}"),
            name: "get_weather".into(),
            arguments: format!(r#"{{"location":"{name}"}}"#),
            signature: signature.into(),
        };
        let block = |text: &str, signature: &str, origin: &str| ThinkingBlock {
            text: text.into(),
            signature: signature.into(),
            origin: origin.into(),
            ..ThinkingBlock::default()
        };
        let req = ChatRequest {
            messages: vec![
                ChatMessage {
                    role: Role::User as i32,
                    content: "Weather in Paris and London?".into(),
                    ..Default::default()
                },
                ChatMessage {
                    role: Role::Assistant as i32,
                    tool_calls: vec![call("Paris", SIG_ONE), call("London", "")],
                    thinking: vec![
                        block("Both lookups are independent.", "", ORIGIN),
                        // Anthropic's: not Gemini's to read.
                        block("anthropic reasoning", "EqQB", ""),
                    ],
                    ..Default::default()
                },
                ChatMessage {
                    role: Role::Tool as i32,
                    content: r#"{"c":18}"#.into(),
                    tool_call_id: "call_Paris".into(),
                    ..Default::default()
                },
                ChatMessage {
                    role: Role::Tool as i32,
                    content: r#"{"c":14}"#.into(),
                    tool_call_id: "call_London".into(),
                    ..Default::default()
                },
                ChatMessage {
                    role: Role::Assistant as i32,
                    content: "18°C and 14°C.".into(),
                    thinking: vec![block("", SIG_THREE, ORIGIN)],
                    ..Default::default()
                },
                ChatMessage {
                    role: Role::User as i32,
                    content: "Thanks".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let body = body::body(&req, None);
        assert_eq!(
            body["contents"][1],
            serde_json::json!({"role": "model", "parts": [
                {"text": "Both lookups are independent.", "thought": true},
                {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": SIG_ONE},
                {"functionCall": {"name": "get_weather", "args": {"location": "London"}}},
            ]})
        );
        assert_eq!(
            body["contents"][3],
            serde_json::json!({"role": "model", "parts": [
                {"text": "18°C and 14°C.", "thoughtSignature": SIG_THREE},
            ]})
        );
        assert!(!body.to_string().contains("EqQB"), "{body}");

        // And Anthropic leaves Gemini's blocks out.
        let anthropic =
            crate::providers::anthropic::body::body("claude-sonnet-4-5", 1024, &req, false);
        let text = anthropic.to_string();
        assert!(text.contains("EqQB") && !text.contains(SIG_THREE), "{text}");
        assert!(!text.contains("Both lookups"), "{text}");
    }

    #[test]
    fn function_calls_get_ids_and_come_back_unary_and_streamed() {
        let r: Response =
            serde_json::from_str(&fixture("gemini/response_function_call.json")).unwrap();
        let piece = r.into_piece(&mut Thoughts::default()).unwrap();
        assert_eq!(piece.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(piece.calls.len(), 1);
        assert!(piece.calls[0].id.starts_with("call_"));
        assert_eq!(piece.calls[0].name, "get_weather");
        let usage = piece.usage.unwrap();
        // Thinking counts as output, and says how much it was.
        assert_eq!(
            (
                usage.completion_tokens,
                usage.reasoning_tokens,
                usage.cached_tokens
            ),
            (18 + 58, Some(58), Some(32))
        );

        let mut p = GeminiEvents::default();
        let mut chunks = Vec::new();
        for data in crate::providers::chat::sse_data(&fixture("gemini/stream_function_call.sse")) {
            if let Step::Chunk(c) = p.event(&data).unwrap() {
                chunks.push(c);
            }
        }
        let calls = crate::providers::chat::assemble(&chunks);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "get_weather");
        let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
        assert_eq!(
            args,
            serde_json::json!({"location": "Paris, France", "unit": "celsius"})
        );
        assert_eq!(
            chunks.last().unwrap().finish_reason,
            Some(FinishReason::ToolCalls),
            "a stream that called functions finishes with TOOL_CALLS, not STOP"
        );
    }

    #[test]
    fn tool_choices_map_to_function_calling_modes() {
        use crate::providers::ToolChoice;
        let base = crate::providers::chat::full_request();
        let config = |tool_choice| {
            let req = ChatRequest {
                tool_choice,
                ..base.clone()
            };
            body::body(&req, None)["toolConfig"]["functionCallingConfig"].clone()
        };
        assert_eq!(
            config(Some(ToolChoice::Required)),
            serde_json::json!({"mode": "ANY"})
        );
        assert_eq!(
            config(Some(ToolChoice::None)),
            serde_json::json!({"mode": "NONE"})
        );
        assert_eq!(
            config(Some(ToolChoice::Function("get_weather".into()))),
            serde_json::json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]})
        );
        assert_eq!(config(None), Value::Null);
    }
}
