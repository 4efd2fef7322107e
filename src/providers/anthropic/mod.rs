//! Anthropic's Messages API: the request body ([`body`]), `x-api-key` and
//! `anthropic-version` headers, answers as content blocks (text and `tool_use`), and its SSE
//! event types (`message_start`, `content_block_start`, `content_block_delta`,
//! `message_delta`, `message_stop`, `ping`, `error`). 529 and `overloaded_error` are rate
//! limits: retryable.

pub mod body;
pub mod messages;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderMap;
use serde_json::Value;

use super::transport::{self, Endpoint, Target};
use super::{ChatRequest, ChunkStream, Completion, ErrorKind, ProviderError};
use crate::config::{HttpProvider, Secret, providers::DEFAULT_ANTHROPIC_MAX_TOKENS};

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
        http: super::transport::Link,
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
        messages::parse_message(&body)
    }

    pub async fn stream(&self, req: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let response = self
            .endpoint
            .post(&self.url, &self.body(req, true), classify)
            .await?;
        Ok(transport::sse_stream(
            response,
            messages::AnthropicEvents::default(),
            self.max_malformed_events,
            self.endpoint.secrets(),
        ))
    }
}

/// Anthropic's statuses: 529 (overloaded) and `overloaded_error` bodies are rate limits, waited
/// out with `retry-after` or, failing that, the latest `anthropic-ratelimit-*-reset` time.
fn classify(status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
    let error_type = messages::error_type(body);
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

#[cfg(test)]
mod tests {
    use super::messages::AnthropicEvents;
    use super::*;
    use crate::proto::FinishReason;
    use crate::providers::chat::fixture;
    use crate::providers::transport::{EventParser, Step};

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
        let c = messages::parse_message(&fixture("anthropic/message_tool_use.json")).unwrap();
        assert_eq!(c.tool_calls.len(), 1);
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
        let c =
            messages::parse_message(&fixture("anthropic/message_thinking_tool_use.json")).unwrap();
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
