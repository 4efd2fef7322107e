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
use crate::proto::{FinishReason, ToolCall, ToolCallDelta, Usage};

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
    let piece = r.into_piece()?;
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
            })
            .collect(),
        // Gemini's thought summaries are not its to send back: nothing is carried.
        thinking: Vec::new(),
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

/// One response (or stream event), reduced to what llm-router passes on.
struct Piece {
    text: String,
    calls: Vec<Call>,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
}

/// A `functionCall` part, with its id (Gemini's when it gave one, else made here).
struct Call {
    id: String,
    name: String,
    arguments: String,
}

impl Response {
    fn into_piece(self) -> Result<Piece, ProviderError> {
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
                finish_reason: None,
                usage,
            });
        };
        let mut text = String::new();
        let mut calls = Vec::new();
        for part in c.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(call) = part.function_call {
                calls.push(Call {
                    id: call
                        .id
                        .filter(|id| !id.is_empty())
                        .unwrap_or_else(|| new_call_id("call_")),
                    name: call.name,
                    arguments: call
                        .args
                        .map_or_else(|| "{}".to_string(), |a| a.to_string()),
                });
            } else if !part.thought
                && let Some(t) = part.text
            {
                // Thought summaries are the model's working, not its answer.
                text.push_str(&t);
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
        let piece = r.into_piece()?;
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

    #[test]
    fn function_calls_get_ids_and_come_back_unary_and_streamed() {
        let r: Response =
            serde_json::from_str(&fixture("gemini/response_function_call.json")).unwrap();
        let piece = r.into_piece().unwrap();
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
