//! OpenAI-compatible `/chat/completions` (OpenAI, vLLM, Ollama, llama.cpp, Groq, ...): unary
//! JSON and SSE streaming.

use std::time::Duration;

use futures_util::{StreamExt, stream};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ChatRequest, Chunk, ChunkStream, Completion, ErrorKind, ProviderError, excerpt, sse::SseDecoder,
};
use crate::config::Secret;
use crate::proto::{FinishReason, Role, Usage};

/// Error bodies are read up to this size; the rest is not worth waiting for.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// A unary answer larger than this is treated as malformed rather than buffered without bound.
const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub struct OpenAiProvider {
    http: reqwest::Client,
    url: String,
    api_key: Option<Secret>,
    model: String,
}

impl OpenAiProvider {
    pub fn new(
        http: reqwest::Client,
        api_base: &str,
        api_key: Option<Secret>,
        model: String,
    ) -> Self {
        OpenAiProvider {
            http,
            url: format!("{api_base}/chat/completions"),
            api_key,
            model,
        }
    }

    fn body(&self, req: &ChatRequest, stream: bool) -> Value {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| {
                let mut msg = json!({ "role": role_name(m.role()), "content": m.content });
                if let Some(name) = &m.name {
                    msg["name"] = json!(name);
                }
                msg
            })
            .collect();
        let mut body = json!({ "model": self.model, "messages": messages, "stream": stream });
        if stream {
            body["stream_options"] = json!({ "include_usage": true });
        }
        if let Some(v) = req.max_tokens {
            body["max_tokens"] = json!(v);
        }
        if let Some(v) = req.temperature {
            body["temperature"] = json!(v);
        }
        if let Some(v) = req.top_p {
            body["top_p"] = json!(v);
        }
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        if !req.user.is_empty() {
            body["user"] = json!(req.user);
        }
        body
    }

    async fn send(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::Response, ProviderError> {
        let body = serde_json::to_vec(&self.body(req, stream)).map_err(|e| {
            ProviderError::new(
                ErrorKind::BadRequest,
                0,
                format!("cannot encode request: {e}"),
            )
        })?;
        let mut builder = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key.expose());
        }
        let response = builder.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = read_limited(response, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let mut err = ProviderError::from_status(status.as_u16(), retry_after, &body);
        err.detail = self.redact(&err.detail);
        Err(err)
    }

    /// Maps reqwest's errors without its Display, which would include the URL (harmless) and
    /// could one day include more; we say what kind of failure it was.
    fn transport_error(&self, e: &reqwest::Error) -> ProviderError {
        use std::error::Error as _;
        let mut cause = String::new();
        let mut source = e.source();
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        let cause = self.redact(&cause);
        if e.is_connect() {
            ProviderError::new(
                ErrorKind::Connect,
                0,
                format!("connect to {} failed: {cause}", self.url),
            )
        } else if e.is_timeout() {
            ProviderError::new(
                ErrorKind::Connect,
                0,
                format!("connect to {} timed out", self.url),
            )
        } else {
            ProviderError::new(
                ErrorKind::Upstream,
                0,
                format!("request to {} failed: {cause}", self.url),
            )
        }
    }

    /// Providers sometimes echo the key in an auth error; it must never reach our caller.
    fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if !key.expose().is_empty() => text.replace(key.expose(), "<redacted>"),
            _ => text.to_string(),
        }
    }

    pub async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        let response = self.send(req, false).await?;
        let body = read_limited(response, MAX_RESPONSE_BODY)
            .await
            .map_err(|e| ProviderError::new(ErrorKind::Upstream, 200, e))?;
        let parsed: ChatCompletion = serde_json::from_str(&body).map_err(|e| {
            ProviderError::new(
                ErrorKind::Upstream,
                200,
                format!("malformed completion ({e}): {}", excerpt(&body)),
            )
        })?;
        let choice = parsed.choices.into_iter().next().ok_or_else(|| {
            ProviderError::new(ErrorKind::Upstream, 200, "completion has no choices")
        })?;
        Ok(Completion {
            text: choice.message.and_then(|m| m.content).unwrap_or_default(),
            finish_reason: finish_reason(choice.finish_reason.as_deref()),
            usage: parsed.usage.map(WireUsage::into_proto),
        })
    }

    pub async fn stream(&self, req: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let response = self.send(req, true).await?;
        let bytes = response.bytes_stream();
        let state = StreamState {
            bytes: Box::pin(bytes),
            decoder: SseDecoder::default(),
            finished: false,
        };
        Ok(Box::pin(stream::unfold(state, next_chunk)))
    }
}

struct StreamState {
    bytes:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    decoder: SseDecoder,
    finished: bool,
}

/// Reads SSE events until one yields a chunk. Ends only after `[DONE]`; a stream cut before it,
/// malformed JSON or an error event yields one `Err` and then ends.
async fn next_chunk(mut st: StreamState) -> Option<(Result<Chunk, ProviderError>, StreamState)> {
    if st.finished {
        return None;
    }
    loop {
        let event = match st.decoder.next_event() {
            Ok(e) => e,
            Err(e) => return fail(st, e),
        };
        if let Some(data) = event {
            if data.trim() == "[DONE]" {
                return None;
            }
            match parse_stream_event(&data) {
                Ok(Some(chunk)) => return Some((Ok(chunk), st)),
                Ok(None) => continue,
                Err(e) => return fail(st, e),
            }
        }
        match st.bytes.next().await {
            Some(Ok(bytes)) => st.decoder.push(&bytes),
            Some(Err(e)) => return fail(st, format!("stream broken: {e}")),
            None => return fail(st, "stream ended before [DONE]".to_string()),
        }
    }
}

fn fail(
    mut st: StreamState,
    detail: String,
) -> Option<(Result<Chunk, ProviderError>, StreamState)> {
    st.finished = true;
    Some((
        Err(ProviderError::new(ErrorKind::Upstream, 200, detail)),
        st,
    ))
}

fn parse_stream_event(data: &str) -> Result<Option<Chunk>, String> {
    let v: StreamEvent = serde_json::from_str(data)
        .map_err(|e| format!("malformed stream event ({e}): {}", excerpt(data)))?;
    if let Some(err) = v.error {
        return Err(format!("error event: {}", excerpt(&err.to_string())));
    }
    let mut chunk = Chunk {
        usage: v.usage.map(WireUsage::into_proto),
        ..Chunk::default()
    };
    if let Some(choice) = v.choices.into_iter().next() {
        chunk.delta = choice.delta.and_then(|d| d.content).unwrap_or_default();
        chunk.finish_reason = choice
            .finish_reason
            .as_deref()
            .map(|r| finish_reason(Some(r)));
    }
    if chunk.delta.is_empty() && chunk.finish_reason.is_none() && chunk.usage.is_none() {
        // Role-only or keep-alive events: nothing to pass on.
        return Ok(None);
    }
    Ok(Some(chunk))
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<String, String> {
    let mut buf = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => {
                if buf.len() + bytes.len() > limit {
                    return Err(format!("response body larger than {limit} bytes"));
                }
                buf.extend_from_slice(&bytes);
            }
            Ok(None) => return Ok(String::from_utf8_lossy(&buf).into_owned()),
            Err(e) => return Err(format!("response body broken: {e}")),
        }
    }
}

/// `Retry-After` in seconds (the form providers use), or OpenAI's `retry-after-ms`, capped at a
/// day: the value only decides whether a retry fits in the call's deadline.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    const CAP: Duration = Duration::from_secs(24 * 3600);
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let secs = match get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        Some(ms) => ms / 1000.0,
        None => get("retry-after")?.trim().parse::<f64>().ok()?,
    };
    if secs.is_nan() {
        return None;
    }
    Duration::try_from_secs_f64(secs.min(CAP.as_secs_f64())).ok()
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
        // Requests are validated before they reach a provider.
        Role::Unspecified => "user",
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

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
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
}

impl WireUsage {
    fn into_proto(self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_events_parse_content_finish_and_usage() {
        assert!(
            parse_stream_event(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#)
                .unwrap()
                .is_none()
        );
        let c = parse_stream_event(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#)
            .unwrap()
            .unwrap();
        assert_eq!(c.delta, "Hi");
        let c = parse_stream_event(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#)
            .unwrap()
            .unwrap();
        assert_eq!(c.finish_reason, Some(FinishReason::Length));
        let c = parse_stream_event(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.usage.unwrap().total_tokens, 7);
        assert!(parse_stream_event("{not json").is_err());
        assert!(parse_stream_event(r#"{"error":{"message":"overloaded"}}"#).is_err());
    }

    #[test]
    fn retry_after_reads_seconds_and_ms() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "1e300".parse().unwrap());
        assert_eq!(
            retry_after(&h),
            Some(Duration::from_secs(24 * 3600)),
            "capped"
        );
        h.insert("retry-after", "-5".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
