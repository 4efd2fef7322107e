//! The OpenAI chat-completions wire format: OpenAI itself, every OpenAI-compatible server
//! (vLLM, Ollama, llama.cpp, Groq, Mistral, DeepSeek, Together, ...) and Azure OpenAI, which
//! differs only in its URL and auth header. Unary JSON and SSE streaming ending in `[DONE]`.

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, Endpoint, EventParser, Step, malformed};
use super::{ChatRequest, Chunk, ChunkStream, Completion, ErrorKind, ProviderError, excerpt};
use crate::config::{HttpProvider, Secret, providers::WireFormat};
use crate::proto::{FinishReason, Role, Usage};

#[derive(Debug)]
pub struct OpenAiProvider {
    endpoint: Endpoint,
    url: String,
    /// Sent as `model`; for Azure, the deployment name, which is also in the URL.
    model: String,
    default_max_tokens: Option<u32>,
}

impl OpenAiProvider {
    pub fn new(http: reqwest::Client, cfg: &HttpProvider, model: &str) -> Self {
        let mut auth = Vec::new();
        let url = match cfg.wire {
            WireFormat::Azure => {
                if let Some(key) = &cfg.api_key {
                    auth.push(("api-key", key.clone()));
                }
                format!(
                    "{}/openai/deployments/{model}/chat/completions?api-version={}",
                    cfg.api_base,
                    cfg.api_version.as_deref().unwrap_or_default()
                )
            }
            _ => {
                if let Some(key) = &cfg.api_key {
                    auth.push((
                        "authorization",
                        Secret::new(format!("Bearer {}", key.expose())),
                    ));
                }
                if let Some(org) = &cfg.organization {
                    auth.push(("openai-organization", Secret::new(org.clone())));
                }
                format!("{}/chat/completions", cfg.api_base)
            }
        };
        OpenAiProvider {
            endpoint: Endpoint::new(http, auth, &cfg.extra_headers, cfg.api_key.as_ref()),
            url,
            model: model.to_string(),
            default_max_tokens: cfg.default_max_tokens,
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
            // Without it, streamed calls report no usage.
            body["stream_options"] = json!({ "include_usage": true });
        }
        if let Some(v) = req.max_tokens.or(self.default_max_tokens) {
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
        Ok(http::sse_stream(response, OpenAiEvents))
    }
}

/// OpenAI's status codes, plus its content-policy codes (Azure's `content_filter`, OpenAI's
/// `content_policy_violation`), which go to `content_policy_fallbacks`.
fn classify(status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
    let mut err = ProviderError::from_status(status, http::retry_after(headers), body);
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
    Ok(Completion {
        text: choice.message.and_then(|m| m.content).unwrap_or_default(),
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
        let v: StreamEvent =
            serde_json::from_str(data).map_err(|e| malformed("stream event", e, data))?;
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
            chunk.delta = choice.delta.and_then(|d| d.content).unwrap_or_default();
            chunk.finish_reason = choice
                .finish_reason
                .as_deref()
                .map(|r| finish_reason(Some(r)));
        }
        if chunk.delta.is_empty() && chunk.finish_reason.is_none() && chunk.usage.is_none() {
            // Role-only or keep-alive events: nothing to pass on.
            return Ok(Step::Skip);
        }
        Ok(Step::Chunk(chunk))
    }

    fn end(&mut self) -> Result<(), ProviderError> {
        Err(ProviderError::new(
            ErrorKind::Upstream,
            200,
            "stream ended before [DONE]",
        ))
    }
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

    fn step(data: &str) -> Option<Chunk> {
        match OpenAiEvents.event(data).unwrap() {
            Step::Chunk(c) => Some(c),
            Step::Skip => None,
            Step::Done => panic!("unexpected Done"),
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
        assert!(OpenAiEvents.event("{not json").is_err());
        assert!(
            OpenAiEvents
                .event(r#"{"error":{"message":"overloaded"}}"#)
                .is_err()
        );
        assert!(matches!(OpenAiEvents.event("[DONE]"), Ok(Step::Done)));
        assert!(OpenAiEvents.end().is_err());
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
}
