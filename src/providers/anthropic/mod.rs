//! Anthropic's Messages API: the request body ([`body`]), `x-api-key` and
//! `anthropic-version` headers, answers as content blocks (text and `tool_use`), and its SSE
//! event types (`message_start`, `content_block_start`, `content_block_delta`,
//! `message_delta`, `message_stop`, `ping`, `error`). 529 and `overloaded_error` are rate
//! limits: retryable.

mod body;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use super::transport::{self, Endpoint, EventParser, Step, Target, malformed, malformed_event};
use super::{ChatRequest, Chunk, ChunkStream, Completion, ErrorKind, ProviderError, excerpt};
use crate::config::{HttpProvider, Secret, providers::DEFAULT_ANTHROPIC_MAX_TOKENS};
use crate::proto::{FinishReason, ThinkingBlock, ThinkingDelta, ToolCall, ToolCallDelta, Usage};

/// The API version llm-router speaks; a deployment can send another with `extra_headers`.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug)]
pub struct AnthropicProvider {
    endpoint: Endpoint,
    url: Target,
    model: String,
    max_tokens: u32,
    /// Unreadable stream events skipped before a stream counts as broken.
    max_malformed_events: u32,
}

impl AnthropicProvider {
    pub fn new(
        http: reqwest::Client,
        cfg: &HttpProvider,
        model: &str,
        max_malformed_events: u32,
    ) -> Self {
        let mut auth = vec![("anthropic-version", Secret::new(ANTHROPIC_VERSION.into()))];
        if let Some(key) = &cfg.api_key {
            auth.push(("x-api-key", key.clone()));
        }
        AnthropicProvider {
            max_malformed_events,
            endpoint: Endpoint::new(http, auth, &cfg.extra_headers, cfg.api_key.as_ref())
                .with_body_defaults(cfg.body_defaults.clone()),
            url: Target::new(format!("{}/v1/messages", cfg.api_base)),
            model: model.to_string(),
            max_tokens: cfg
                .default_max_tokens
                .unwrap_or(DEFAULT_ANTHROPIC_MAX_TOKENS),
        }
    }

    fn body(&self, req: &ChatRequest, stream: bool) -> Value {
        body::body(&self.model, self.max_tokens, req, stream)
    }

    pub async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        let response = self
            .endpoint
            .post(&self.url, &self.body(req, false), classify)
            .await?;
        let body = self.endpoint.body(response).await?;
        let msg: Message =
            serde_json::from_str(&body).map_err(|e| malformed("message", e, &body))?;
        Ok(completion(msg))
    }

    pub async fn stream(&self, req: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let response = self
            .endpoint
            .post(&self.url, &self.body(req, true), classify)
            .await?;
        Ok(transport::sse_stream(
            response,
            AnthropicEvents::default(),
            self.max_malformed_events,
            self.endpoint.secrets(),
        ))
    }
}

impl WireUsage {
    /// The usage in the API's terms: Anthropic's `input_tokens` leaves out the prompt tokens
    /// read from or written to its cache, which count here as prompt tokens too.
    /// `stream_output`: a stream's output tokens, reported apart from its input.
    fn into_proto(self, stream_output: Option<u32>) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = self
            .input_tokens
            .saturating_add(cached)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0));
        let output = stream_output.unwrap_or(self.output_tokens);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: output,
            total_tokens: prompt.saturating_add(output),
            cached_tokens: self.cache_read_input_tokens,
            ..Default::default()
        }
    }
}

/// A message's content blocks as an answer: its text, tool calls and thinking, in order.
fn completion(msg: Message) -> Completion {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut thinking = Vec::new();
    for block in msg.content {
        match block.kind.as_str() {
            "text" => text.push_str(block.text.as_deref().unwrap_or_default()),
            "tool_use" => tool_calls.push(ToolCall {
                id: block.id.unwrap_or_default(),
                name: block.name.unwrap_or_default(),
                arguments: block
                    .input
                    .map_or_else(|| "{}".to_string(), |v| v.to_string()),
            }),
            "thinking" => thinking.push(ThinkingBlock {
                text: block.thinking.unwrap_or_default(),
                signature: block.signature.unwrap_or_default(),
                redacted: String::new(),
            }),
            "redacted_thinking" => thinking.push(ThinkingBlock {
                redacted: block.data.unwrap_or_default(),
                ..ThinkingBlock::default()
            }),
            _ => {}
        }
    }
    Completion {
        text,
        tool_calls,
        thinking,
        finish_reason: stop_reason(msg.stop_reason.as_deref()),
        usage: msg.usage.map(|u| u.into_proto(None)),
    }
}

fn stop_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("end_turn" | "stop_sequence") => FinishReason::Stop,
        Some("max_tokens") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Unspecified,
    }
}

/// Anthropic's statuses: 529 (overloaded) and `overloaded_error` bodies are rate limits, waited
/// out with `retry-after` or, failing that, the latest `anthropic-ratelimit-*-reset` time.
fn classify(status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
    let error_type = serde_json::from_str::<ErrorBody>(body)
        .ok()
        .map(|b| b.error.kind);
    let rate_limited = status == 429
        || status == 529
        || matches!(
            error_type.as_deref(),
            Some("overloaded_error" | "rate_limit_error")
        );
    // The reset headers come with every response; they say when a limit resets, which is a
    // wait only for an answer that hit one.
    let wait_hint = transport::retry_after(headers).or_else(|| {
        rate_limited
            .then(|| ratelimit_reset(headers, SystemTime::now()))
            .flatten()
    });
    let mut err = ProviderError::from_status(status, wait_hint, body);
    if rate_limited {
        err.kind = ErrorKind::RateLimited;
    }
    err
}

/// The latest of the `anthropic-ratelimit-*-reset` headers (RFC 3339 times), as a wait from now.
fn ratelimit_reset(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            n.starts_with("anthropic-ratelimit-") && n.ends_with("-reset")
        })
        .filter_map(|(_, v)| v.to_str().ok().and_then(parse_rfc3339))
        .map(|at| at - now)
        .filter(|wait| *wait > 0.0)
        .fold(None, |max: Option<f64>, w| {
            Some(max.map_or(w, |m| m.max(w)))
        })
        .and_then(transport::seconds)
}

/// Seconds since the Unix epoch of an RFC 3339 time such as `2024-06-01T12:00:30.5Z` or
/// `2024-06-01T14:00:30+02:00`.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't'])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    // Bounded before any arithmetic: a header is the provider's text, and a year of 2^62
    // would overflow the day count.
    if !(0..=9999).contains(&y) {
        return None;
    }
    let (time, offset) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else {
        let pos = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        let (oh, om) = (oh.parse::<i64>().ok()?, om.parse::<i64>().ok()?);
        if !(0..=23).contains(&oh) || !(0..=59).contains(&om) {
            return None;
        }
        (t, sign * (oh * 3600 + om * 60))
    };
    let mut t = time.splitn(3, ':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || !(0..=23).contains(&hh)
        || !(0..=59).contains(&mm)
        || !(0.0..61.0).contains(&ss)
    {
        return None;
    }
    // Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 - offset) as f64 + ss)
}

/// Reads the stream's events. Usage arrives in two parts: input tokens in `message_start`,
/// output tokens in `message_delta`.
#[derive(Default)]
struct AnthropicEvents {
    /// The stream's input usage, from `message_start`.
    input: Option<WireUsage>,
    /// Which content blocks are tool calls: the block index of each, in order (a call's
    /// place here is its index in the API's tool-call pieces).
    tool_blocks: Vec<u32>,
    /// Which content blocks are thinking, likewise.
    thinking_blocks: Vec<u32>,
}

impl AnthropicEvents {
    /// A thinking piece for content block `block`, when it is one.
    fn thinking(&self, block: u32, piece: ThinkingDelta) -> Option<Step> {
        let index = self.thinking_blocks.iter().position(|&b| b == block)?;
        Some(Step::Chunk(Chunk {
            thinking: vec![ThinkingDelta {
                index: index as u32,
                ..piece
            }],
            ..Chunk::default()
        }))
    }
}

impl EventParser for AnthropicEvents {
    fn event(&mut self, data: &str) -> Result<Step, ProviderError> {
        let ev: Event = match serde_json::from_str(data) {
            Ok(ev) => ev,
            Err(e) => return Ok(malformed_event(e, data)),
        };
        match ev.kind.as_str() {
            "message_start" => {
                self.input = ev.message.and_then(|m| m.usage);
                Ok(Step::Skip)
            }
            "content_block_start" => match ev.content_block {
                Some(block) if block.kind == "thinking" || block.kind == "redacted_thinking" => {
                    let at = ev.index.unwrap_or_default();
                    self.thinking_blocks.push(at);
                    // A thinking block's text and signature come in deltas; a redacted block's
                    // data comes whole, here.
                    let piece = ThinkingDelta {
                        redacted: block.data.unwrap_or_default(),
                        ..ThinkingDelta::default()
                    };
                    if piece.redacted.is_empty() {
                        Ok(Step::Skip)
                    } else {
                        Ok(self.thinking(at, piece).unwrap_or(Step::Skip))
                    }
                }
                Some(block) if block.kind == "tool_use" => {
                    let index = self.tool_blocks.len() as u32;
                    self.tool_blocks.push(ev.index.unwrap_or_default());
                    Ok(Step::Chunk(Chunk {
                        tool_calls: vec![ToolCallDelta {
                            index,
                            id: block.id.unwrap_or_default(),
                            name: block.name.unwrap_or_default(),
                            arguments: String::new(),
                        }],
                        ..Chunk::default()
                    }))
                }
                _ => Ok(Step::Skip),
            },
            "content_block_delta" => match ev.delta {
                Some(Delta {
                    kind: Some(k),
                    text: Some(text),
                    ..
                }) if k == "text_delta" => Ok(Step::Chunk(Chunk {
                    delta: text,
                    ..Chunk::default()
                })),
                Some(Delta {
                    kind: Some(k),
                    partial_json: Some(json),
                    ..
                }) if k == "input_json_delta" => {
                    let block = ev.index.unwrap_or_default();
                    let Some(index) = self.tool_blocks.iter().position(|&b| b == block) else {
                        return Ok(malformed_event(
                            "input_json_delta for no tool_use block",
                            data,
                        ));
                    };
                    Ok(Step::Chunk(Chunk {
                        tool_calls: vec![ToolCallDelta {
                            index: index as u32,
                            arguments: json,
                            ..ToolCallDelta::default()
                        }],
                        ..Chunk::default()
                    }))
                }
                Some(Delta {
                    kind: Some(k),
                    thinking,
                    signature,
                    ..
                }) if k == "thinking_delta" || k == "signature_delta" => {
                    let piece = ThinkingDelta {
                        text: thinking.unwrap_or_default(),
                        signature: signature.unwrap_or_default(),
                        ..ThinkingDelta::default()
                    };
                    match self.thinking(ev.index.unwrap_or_default(), piece) {
                        Some(step) => Ok(step),
                        None => Ok(malformed_event(
                            "thinking delta for no thinking block",
                            data,
                        )),
                    }
                }
                _ => Ok(Step::Skip),
            },
            "message_delta" => {
                let reason = ev.delta.and_then(|d| d.stop_reason);
                let usage = ev.usage.map(|u| {
                    let input = self.input.clone().unwrap_or_default();
                    input.into_proto(Some(u.output_tokens))
                });
                Ok(Step::Chunk(Chunk {
                    delta: String::new(),
                    finish_reason: reason.as_deref().map(|r| stop_reason(Some(r))),
                    usage,
                    ..Chunk::default()
                }))
            }
            "message_stop" => Ok(Step::Done),
            "error" => {
                let kind = match ev.error.as_ref().map(|e| e.kind.as_str()) {
                    Some("overloaded_error" | "rate_limit_error") => ErrorKind::RateLimited,
                    _ => ErrorKind::Upstream,
                };
                Err(ProviderError::new(
                    kind,
                    200,
                    format!("error event: {}", excerpt(data)),
                ))
            }
            // ping, content_block_start/stop, and event types added after this was written.
            _ => Ok(Step::Skip),
        }
    }

    fn cut_short(&self) -> ProviderError {
        ProviderError::new(
            ErrorKind::Upstream,
            200,
            "stream ended before a stop_reason or message_stop",
        )
    }
}

#[derive(Deserialize)]
struct Message {
    // Required: a body without it is not an Anthropic message (an empty answer would hide that).
    content: Vec<ContentBlock>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    /// `tool_use` blocks: the call's id, function and arguments.
    id: Option<String>,
    name: Option<String>,
    input: Option<Value>,
    /// `thinking` blocks: the reasoning and its signature.
    thinking: Option<String>,
    signature: Option<String>,
    /// `redacted_thinking` blocks: their opaque data.
    data: Option<String>,
}

#[derive(Deserialize, Clone, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
    cache_read_input_tokens: Option<u32>,
    cache_creation_input_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    /// The content block a `content_block_*` event is about.
    index: Option<u32>,
    content_block: Option<ContentBlock>,
    message: Option<Message>,
    delta: Option<Delta>,
    usage: Option<WireUsage>,
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    partial_json: Option<String>,
    thinking: Option<String>,
    signature: Option<String>,
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type")]
    kind: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::chat::fixture;

    #[test]
    fn rfc3339_times_parse_with_offsets_and_fractions() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("2024-06-01T12:00:30Z"), Some(1_717_243_230.0));
        assert_eq!(
            parse_rfc3339("2024-06-01T14:00:30+02:00"),
            Some(1_717_243_230.0)
        );
        assert_eq!(
            parse_rfc3339("2024-06-01T12:00:30.5Z"),
            Some(1_717_243_230.5)
        );
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800.0));
        assert_eq!(parse_rfc3339("not a time"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        // The provider's text: absurd values are refused, never overflowed on.
        assert_eq!(parse_rfc3339("9223372036854775807-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("-9223372036854775807-01-01T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339("2024-06-01T12:00:30+9223372036854775807:00"),
            None
        );
        assert_eq!(parse_rfc3339("2024-06-01T-5:00:30Z"), None);
        assert_eq!(parse_rfc3339("2024-06-01T12:00:1e308Z"), None);
    }

    #[test]
    fn overloaded_is_a_rate_limit_with_the_reset_time() {
        let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let err = classify(529, &HeaderMap::new(), body);
        assert_eq!((err.kind, err.status), (ErrorKind::RateLimited, 529));

        let mut h = HeaderMap::new();
        h.insert(
            "anthropic-ratelimit-requests-reset",
            "2024-06-01T12:00:30Z".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-tokens-reset",
            "2024-06-01T12:00:40Z".parse().unwrap(),
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_717_243_200);
        assert_eq!(
            ratelimit_reset(&h, now),
            Some(Duration::from_secs(40)),
            "the latest reset"
        );
        // The same headers on a 500 say nothing about waiting: no hint, so no long cooldown.
        // (A reset far in the future, which only a rate limit makes a wait.)
        let mut h = HeaderMap::new();
        h.insert(
            "anthropic-ratelimit-tokens-reset",
            "2999-01-01T00:00:00Z".parse().unwrap(),
        );
        let err = classify(500, &h, r#"{"type":"error","error":{"type":"api_error"}}"#);
        assert_eq!((err.kind, err.wait_hint), (ErrorKind::Upstream, None));
        let err = classify(
            429,
            &h,
            r#"{"type":"error","error":{"type":"rate_limit_error"}}"#,
        );
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert!(err.wait_hint.is_some());
    }

    #[test]
    fn error_events_classify_by_type() {
        let mut p = AnthropicEvents::default();
        let e = p.event(
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(e.err().unwrap().kind, ErrorKind::RateLimited);
        let e = p.event(r#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#);
        assert_eq!(e.err().unwrap().kind, ErrorKind::Upstream);
        assert!(matches!(p.event(r#"{"type":"ping"}"#), Ok(Step::Skip)));
        assert!(matches!(
            p.event(r#"{"type":"something_new"}"#),
            Ok(Step::Skip)
        ));
    }

    #[test]
    fn every_feature_maps_to_the_documented_request_body() {
        let req = crate::providers::chat::full_request();
        let body = body::body("claude-sonnet-4-5", 1024, &req, false);
        let expected: Value =
            serde_json::from_str(&fixture("anthropic/request_full.json")).unwrap();
        assert_eq!(body, expected);
        // Without thinking, the caller's temperature goes as it is (capped at 1).
        let plain = ChatRequest {
            reasoning: None,
            ..req.clone()
        };
        let body = body::body("m", 1024, &plain, false);
        assert_eq!(
            (body["temperature"].as_f64(), body["max_tokens"].as_u64()),
            (Some(0.5), Some(500))
        );
        // JSON_OBJECT has no schema: the model is told, in the system prompt.
        let json_object = ChatRequest {
            response_format: crate::providers::ResponseFormat::JsonObject,
            ..plain
        };
        let body = body::body("m", 1024, &json_object, false);
        assert!(
            body["system"]
                .as_str()
                .unwrap()
                .ends_with(body::JSON_OBJECT_INSTRUCTION)
        );
        assert!(body.get("output_config").is_none());
    }

    #[test]
    fn tool_use_blocks_come_back_unary_and_streamed() {
        let msg: Message =
            serde_json::from_str(&fixture("anthropic/message_tool_use.json")).unwrap();
        assert_eq!(msg.content.len(), 2);
        let mut p = AnthropicEvents::default();
        let mut chunks = Vec::new();
        for data in crate::providers::chat::sse_data(&fixture("anthropic/stream_tool_use.sse")) {
            match p.event(&data).unwrap() {
                Step::Chunk(c) => chunks.push(c),
                Step::Done => break,
                _ => {}
            }
        }
        let text: String = chunks.iter().map(|c| c.delta.as_str()).collect();
        assert_eq!(text, "I'll check the weather in Paris.");
        let calls = crate::providers::chat::assemble(&chunks);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].id, "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
        assert_eq!(calls[0].name, "get_weather");
        let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
        assert_eq!(
            args,
            serde_json::json!({"location": "Paris, France", "unit": "celsius"})
        );
        let last = chunks.last().unwrap();
        assert_eq!(last.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(last.usage.as_ref().unwrap().prompt_tokens, 472);
    }

    #[test]
    fn tool_choices_map_to_anthropics_names() {
        use crate::providers::ToolChoice;
        let base = crate::providers::chat::full_request();
        let choice = |tool_choice, parallel| {
            let req = ChatRequest {
                tool_choice,
                parallel_tool_calls: parallel,
                ..base.clone()
            };
            body::body("m", 1024, &req, false)["tool_choice"].clone()
        };
        assert_eq!(
            choice(Some(ToolChoice::Required), None),
            serde_json::json!({"type": "any"})
        );
        assert_eq!(
            choice(Some(ToolChoice::None), Some(false)),
            serde_json::json!({"type": "none"})
        );
        assert_eq!(
            choice(Some(ToolChoice::Function("get_weather".into())), None),
            serde_json::json!({"type": "tool", "name": "get_weather"})
        );
        assert_eq!(
            choice(None, Some(false)),
            serde_json::json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(choice(None, None), Value::Null);
    }

    #[test]
    fn documents_go_as_pdf_data_or_plain_text() {
        use crate::proto::{ChatMessage, ContentPart, File, Role, content_part::Part};
        let file = |media_type: &str, data: &[u8]| ContentPart {
            part: Some(Part::File(File {
                data: data.to_vec(),
                media_type: media_type.into(),
                filename: String::new(),
            })),
        };
        let req = ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User as i32,
                parts: vec![
                    file("application/pdf", b"%PDF"),
                    file("text/plain", b"notes"),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let body = body::body("m", 1024, &req, false);
        assert_eq!(
            body["messages"][0]["content"],
            serde_json::json!([
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERg=="}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
            ])
        );
    }

    #[test]
    fn thinking_comes_back_unary_and_streamed_and_goes_back_unchanged() {
        let msg: Message =
            serde_json::from_str(&fixture("anthropic/message_thinking_tool_use.json")).unwrap();
        let c = completion(msg);
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        assert_eq!(c.thinking.len(), 2);
        assert!(c.thinking[0].text.starts_with("The user wants"));
        assert!(c.thinking[0].signature.starts_with("EqQB"));
        assert!(c.thinking[1].redacted.starts_with("EmwK"));
        assert_eq!(c.tool_calls[0].name, "get_weather");

        // Sent back with its tool call: thinking first, unchanged, then the tool_use.
        let assistant = crate::proto::ChatMessage {
            role: crate::proto::Role::Assistant as i32,
            tool_calls: c.tool_calls.clone(),
            thinking: c.thinking.clone(),
            ..Default::default()
        };
        let req = ChatRequest {
            messages: vec![assistant],
            ..Default::default()
        };
        let body = body::body("m", 1024, &req, false);
        let blocks = &body["messages"][0]["content"];
        assert_eq!(blocks[0]["type"], "thinking");
        assert_eq!(blocks[0]["signature"], c.thinking[0].signature.as_str());
        assert_eq!(
            blocks[1],
            serde_json::json!({"type": "redacted_thinking", "data": c.thinking[1].redacted})
        );
        assert_eq!(blocks[2]["type"], "tool_use");

        let mut p = AnthropicEvents::default();
        let mut chunks = Vec::new();
        for data in crate::providers::chat::sse_data(&fixture("anthropic/stream_thinking.sse")) {
            match p.event(&data).unwrap() {
                Step::Chunk(c) => chunks.push(c),
                Step::Done => break,
                _ => {}
            }
        }
        assert!(
            chunks[0].commits(),
            "thinking commits a stream: it may come for seconds"
        );
        let text: String = chunks
            .iter()
            .flat_map(|c| &c.thinking)
            .map(|t| t.text.as_str())
            .collect();
        assert_eq!(text, "The user wants the weather in Paris.");
        let signature: String = chunks
            .iter()
            .flat_map(|c| &c.thinking)
            .map(|t| t.signature.as_str())
            .collect();
        assert!(signature.starts_with("EqQB"));
        assert!(
            chunks
                .iter()
                .flat_map(|c| &c.thinking)
                .all(|t| t.index == 0)
        );
        let answer: String = chunks.iter().map(|c| c.delta.as_str()).collect();
        assert_eq!(answer, "It is sunny in Paris.");
    }
}
