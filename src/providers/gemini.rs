//! Google AI Studio's Gemini API: `generateContent` and `streamGenerateContent?alt=sse`, roles
//! mapped (`assistant` is `model`), system messages as `systemInstruction`, the key in
//! `x-goog-api-key`. Its stream has no end marker: it is complete when a candidate has carried a
//! `finishReason`. Safety blocks are a content-filter finish reason, or, when the prompt itself
//! is blocked, a content-policy failure that `content_policy_fallbacks` can route.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, Endpoint, EventParser, Step, Target, malformed, malformed_event};
use super::{ChatRequest, Chunk, ChunkStream, Completion, ErrorKind, ProviderError, excerpt};
use crate::config::HttpProvider;
use crate::proto::{FinishReason, Role, Usage};

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
        http: reqwest::Client,
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
        let system: Vec<Value> = req
            .messages
            .iter()
            .filter(|m| m.role() == Role::System)
            .map(|m| json!({ "text": m.content }))
            .collect();
        let contents: Vec<Value> = req
            .messages
            .iter()
            .filter(|m| m.role() != Role::System)
            .map(|m| {
                // Tool results would need functionResponse parts keyed by a call this API has
                // no field for; they are passed as the user's text.
                let role = if m.role() == Role::Assistant {
                    "model"
                } else {
                    "user"
                };
                json!({ "role": role, "parts": [{ "text": m.content }] })
            })
            .collect();
        let mut body = json!({ "contents": contents });
        if !system.is_empty() {
            body["systemInstruction"] = json!({ "parts": system });
        }
        let mut generation = serde_json::Map::new();
        if let Some(v) = req.max_tokens.or(self.default_max_tokens) {
            generation.insert("maxOutputTokens".into(), json!(v));
        }
        if let Some(v) = req.temperature {
            generation.insert("temperature".into(), json!(v));
        }
        if let Some(v) = req.top_p {
            generation.insert("topP".into(), json!(v));
        }
        if !req.stop.is_empty() {
            generation.insert("stopSequences".into(), json!(req.stop));
        }
        if !generation.is_empty() {
            body["generationConfig"] = Value::Object(generation);
        }
        body
    }

    pub async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        let response = self
            .endpoint
            .post(&self.unary_url, &self.body(req), classify)
            .await?;
        let body = self.endpoint.body(response).await?;
        let r: Response =
            serde_json::from_str(&body).map_err(|e| malformed("response", e, &body))?;
        let piece = r.into_piece()?;
        if piece.finish_reason.is_none() && piece.text.is_empty() {
            return Err(ProviderError::new(
                ErrorKind::Upstream,
                200,
                format!("response has no candidate: {}", excerpt(&body)),
            ));
        }
        Ok(Completion {
            text: piece.text,
            finish_reason: piece.finish_reason.unwrap_or(FinishReason::Unspecified),
            usage: piece.usage,
        })
    }

    pub async fn stream(&self, req: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let response = self
            .endpoint
            .post(&self.stream_url, &self.body(req), classify)
            .await?;
        Ok(http::sse_stream(
            response,
            GeminiEvents,
            self.max_malformed_events,
            self.endpoint.secrets(),
        ))
    }
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
    let mut err =
        ProviderError::from_status(status, http::retry_after(headers).or(retry_delay), body);
    let api_key_invalid = body.contains("API_KEY_INVALID") || body.contains("API key not valid");
    if status == 400 && api_key_invalid {
        err.kind = ErrorKind::Auth;
    }
    err
}

/// A protobuf JSON Duration such as `"37s"` or `"1.5s"`.
fn parse_google_duration(s: &str) -> Option<Duration> {
    http::seconds(s.strip_suffix('s')?.parse().ok()?)
}

/// One response (or stream event), reduced to what llm-router passes on.
struct Piece {
    text: String,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
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
        let usage = self.usage_metadata.map(|u| Usage {
            prompt_tokens: u.prompt_token_count,
            completion_tokens: u.candidates_token_count,
            total_tokens: u.total_token_count,
            cost_usd: None,
        });
        let Some(c) = self.candidates.into_iter().next() else {
            return Ok(Piece {
                text: String::new(),
                finish_reason: None,
                usage,
            });
        };
        let text = c
            .content
            .map(|content| content.parts.into_iter().filter_map(|p| p.text).collect())
            .unwrap_or_default();
        Ok(Piece {
            text,
            finish_reason: c.finish_reason.as_deref().map(finish_reason),
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

#[derive(Default)]
struct GeminiEvents;

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
        if piece.text.is_empty() && piece.finish_reason.is_none() && piece.usage.is_none() {
            return Ok(Step::Skip);
        }
        Ok(Step::Chunk(Chunk {
            delta: piece.text,
            finish_reason: piece.finish_reason,
            usage: piece.usage,
            ..Chunk::default()
        }))
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
struct Part {
    text: Option<String>,
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
        let mut p = GeminiEvents;
        let ev = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"}}]}"#;
        assert!(matches!(p.event(ev), Ok(Step::Chunk(c)) if c.finish_reason.is_none()));
        let last = r#"{"candidates":[{"content":{"parts":[{"text":"!"}],"role":"model"},"finishReason":"STOP"}]}"#;
        assert!(matches!(p.event(last), Ok(Step::Chunk(c)) if c.finish_reason.is_some()));
        assert!(matches!(p.event("{not json"), Ok(Step::Malformed(_))));
        assert!(p.cut_short().detail.contains("finishReason"));
    }

    #[test]
    fn blocked_prompts_are_content_policy_failures() {
        let mut p = GeminiEvents;
        let e = p
            .event(r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#)
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::ContentPolicy);
    }
}
