//! Providers: one module per wire format. Each turns a [`ChatRequest`] into a [`Completion`] or
//! a [`ChunkStream`], and every failure into a [`ProviderError`] whose [`ErrorKind`] the routing
//! layer uses to decide what happens next. Providers know nothing of deadlines: the routing layer
//! drops their futures when time runs out, which closes the upstream request.
//!
//! What a request's bytes are (its body, its answer, its events) is the wire format's module;
//! where they go and how they are proven and read off the connection is [`transport`]'s: the
//! endpoint with its auth step, and a framed-stream reader generic over the framing. A cloud
//! that hosts a known family (Anthropic's or Gemini's models) is that family's body builder and
//! event parser on another endpoint and framing.

mod anthropic;
mod chat;
mod gemini;
mod mock;
mod openai;
pub mod transport;

use std::{fmt, pin::Pin, sync::Arc, time::Duration};

use futures_util::Stream;

use crate::config::{Deployment, ProviderConfig, providers::WireFormat};
use crate::proto::{FinishReason, ThinkingBlock, ThinkingDelta, ToolCall, ToolCallDelta, Usage};

pub use anthropic::AnthropicProvider;
pub use chat::{ChatRequest, Effort, Needs, Reasoning, ResponseFormat, Tool, ToolChoice, text_of};
pub use gemini::GeminiProvider;
pub use mock::MockProvider;
pub use openai::OpenAiProvider;

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    /// The tools the model called, in order.
    pub tool_calls: Vec<ToolCall>,
    /// The model's reasoning, where the provider returns it to be sent back (Anthropic).
    pub thinking: Vec<ThinkingBlock>,
    pub finish_reason: FinishReason,
    pub usage: Option<Usage>,
}

/// One piece of a streamed answer. Content chunks carry a delta; the provider's last chunks may
/// carry only a finish reason or usage.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub delta: String,
    /// Pieces of tool calls, in OpenAI's shape (see `proto::ToolCallDelta`).
    pub tool_calls: Vec<ToolCallDelta>,
    /// Pieces of the model's reasoning (see `proto::ThinkingDelta`).
    pub thinking: Vec<ThinkingDelta>,
    pub finish_reason: Option<FinishReason>,
    pub usage: Option<Usage>,
    /// Unreadable events the provider sent since the previous chunk, skipped.
    pub skipped_events: u32,
}

impl Chunk {
    /// Whether this chunk commits a stream: it has content (reasoning included, which a
    /// thinking model may send for seconds before any text), or it ends the answer.
    pub fn commits(&self) -> bool {
        self.has_content() || self.finish_reason.is_some()
    }

    /// Whether it carries anything for the caller: text, tool-call or thinking pieces.
    pub fn has_content(&self) -> bool {
        !self.delta.is_empty() || self.has_structure()
    }

    /// Whether it carries tool-call or thinking pieces, which a continuation's prefill (text)
    /// cannot carry on.
    pub fn has_structure(&self) -> bool {
        !self.tool_calls.is_empty() || !self.thinking.is_empty()
    }

    /// The bytes of generated output it carries (text, tool-call arguments and names, thinking
    /// text), from which a stream's delivery rate is estimated.
    pub fn output_bytes(&self) -> usize {
        self.delta.len()
            + self
                .tool_calls
                .iter()
                .map(|t| t.name.len() + t.arguments.len())
                .sum::<usize>()
            + self.thinking.iter().map(|t| t.text.len()).sum::<usize>()
    }
}

/// A provider's stream. It ends (`None`) after the provider's own end-of-stream marker, or when
/// the body ends cleanly after a finish reason; a stream cut short yields an `Err` first.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, ProviderError>> + Send>>;

/// How a provider call failed, in the terms the routing layer decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection could be made.
    Connect,
    /// 5xx, 408, 409, a broken connection, or a malformed answer: retryable.
    Upstream,
    /// 429 or the provider's overloaded signal: retryable, maybe after `wait_hint`.
    RateLimited,
    /// 401 or 403: this deployment's credentials are wrong; other deployments may work.
    Auth,
    /// 400, 404, 413, 422: the request itself is bad; no deployment will take it.
    BadRequest,
    /// The prompt does not fit the model's context window.
    ContextWindow,
    /// The provider refused the content on policy grounds (a content filter).
    ContentPolicy,
    /// Another 4xx: this deployment refuses, for reasons a retry will not change.
    Refused,
}

#[derive(Debug, Clone)]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// The provider's HTTP status, 0 when there was none.
    pub status: u16,
    /// How long the provider asked us to wait before asking again (its `Retry-After`, a rate
    /// limit reset, or Gemini's RetryInfo), when it said.
    pub wait_hint: Option<Duration>,
    /// What happened, with the provider's own words. Never holds a key.
    pub detail: String,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, status: u16, detail: impl Into<String>) -> Self {
        ProviderError {
            kind,
            status,
            wait_hint: None,
            detail: detail.into(),
        }
    }

    /// Classifies an HTTP error status. `body` is the provider's error text.
    pub fn from_status(status: u16, wait_hint: Option<Duration>, body: &str) -> Self {
        let kind = match status {
            429 => ErrorKind::RateLimited,
            401 | 403 => ErrorKind::Auth,
            400 | 404 | 413 | 422 if is_context_window_error(body) => ErrorKind::ContextWindow,
            400 | 404 | 413 | 422 => ErrorKind::BadRequest,
            408 | 409 => ErrorKind::Upstream,
            500..=599 => ErrorKind::Upstream,
            _ if (400..500).contains(&status) => ErrorKind::Refused,
            // 1xx/3xx where a 2xx was expected: the upstream is not speaking the protocol.
            _ => ErrorKind::Upstream,
        };
        ProviderError {
            kind,
            status,
            wait_hint,
            detail: format!("HTTP {status}: {}", excerpt(body)),
        }
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// OpenAI's `context_length_exceeded` and the wording OpenAI-compatible servers use for it.
fn is_context_window_error(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    [
        "context_length_exceeded",
        "maximum context length",
        "context window",
        "context length",
        "too many tokens",
        "prompt is too long",
        "maximum number of tokens",
    ]
    .iter()
    .any(|needle| b.contains(needle))
}

/// Provider error text is kept, but bounded: a misbehaving upstream could send megabytes.
pub(crate) fn excerpt(body: &str) -> String {
    bounded(body.trim(), 512)
}

/// `s` cut to at most `max` bytes, on a character boundary. The one way text from outside
/// (provider bodies, names a caller sent) is bounded before it is kept, logged or echoed.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` bounded to `max` bytes, with an ellipsis when it was cut.
pub fn bounded(s: &str, max: usize) -> String {
    let kept = cut(s, max);
    if kept.len() == s.len() {
        kept.to_string()
    } else {
        format!("{kept}…")
    }
}

/// A deployment's provider client, built once per config snapshot.
#[derive(Debug)]
pub enum Provider {
    Mock(MockProvider),
    /// OpenAI, Azure OpenAI and the OpenAI-compatible family.
    OpenAi(OpenAiProvider),
    Anthropic(AnthropicProvider),
    Gemini(GeminiProvider),
}

impl Provider {
    /// `max_malformed_events`: unreadable stream events skipped before a stream counts as
    /// broken (`router_settings.stream_max_malformed_events`).
    pub fn new(
        deployment: &Deployment,
        client: &transport::pool::Client,
        max_malformed_events: u32,
    ) -> Arc<Provider> {
        let model = deployment.upstream_model.as_str();
        let http = transport::Link::new(client, &deployment.tls, &deployment.id);
        // Its TLS settings (the system's roots, read once) are made ready now rather than on
        // its first call.
        if deployment.provider.api_base().starts_with("https:") {
            http.tls.prepare();
        }
        let max = max_malformed_events;
        Arc::new(match &deployment.provider {
            ProviderConfig::Mock(spec) => Provider::Mock(MockProvider::new(spec.clone())),
            ProviderConfig::Http(cfg) => match cfg.family.wire() {
                WireFormat::OpenAi => {
                    Provider::OpenAi(OpenAiProvider::new(http.clone(), cfg, model, max))
                }
                WireFormat::Anthropic => {
                    Provider::Anthropic(AnthropicProvider::new(http.clone(), cfg, model, max))
                }
                WireFormat::Gemini => {
                    Provider::Gemini(GeminiProvider::new(http.clone(), cfg, model, max))
                }
            },
        })
    }

    pub async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        match self {
            Provider::Mock(p) => p.complete(req).await,
            Provider::OpenAi(p) => p.complete(req).await,
            Provider::Anthropic(p) => p.complete(req).await,
            Provider::Gemini(p) => p.complete(req).await,
        }
    }

    /// Starts a streamed answer. Returns once the provider has accepted the request; the first
    /// chunk is read from the stream.
    pub async fn stream(&self, req: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        match self {
            Provider::Mock(p) => p.stream(req).await,
            Provider::OpenAi(p) => p.stream(req).await,
            Provider::Anthropic(p) => p.stream(req).await,
            Provider::Gemini(p) => p.stream(req).await,
        }
    }
}

/// Tokens in `chars` bytes of text, at about four a token: the one estimate used wherever a
/// count is needed and no provider gave one (per-minute `tpm` limits, latency per token, the
/// mock provider's prompt usage). Close enough for limits; never billed.
pub fn estimate_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_as_the_routing_table_says() {
        let kind = |s, body: &str| ProviderError::from_status(s, None, body).kind;
        assert_eq!(kind(429, ""), ErrorKind::RateLimited);
        assert_eq!(kind(401, ""), ErrorKind::Auth);
        assert_eq!(kind(403, ""), ErrorKind::Auth);
        for s in [400, 404, 413, 422] {
            assert_eq!(kind(s, "bad"), ErrorKind::BadRequest);
        }
        assert_eq!(
            kind(400, r#"{"error":{"code":"context_length_exceeded"}}"#),
            ErrorKind::ContextWindow
        );
        for s in [408, 409, 500, 502, 503, 504] {
            assert_eq!(kind(s, ""), ErrorKind::Upstream);
        }
        assert_eq!(kind(402, ""), ErrorKind::Refused);
    }

    #[test]
    fn excerpt_bounds_long_bodies_on_char_boundaries() {
        let long = "é".repeat(1000);
        let e = excerpt(&long);
        assert!(e.len() <= 520);
        assert!(e.ends_with('…'));
    }
}
