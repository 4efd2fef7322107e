//! The built-in `mock/` provider: no network, configurable time to first chunk, speed, text and
//! failures. It powers the embedded default config and lets anyone see the deadline machinery
//! work without a provider key. Given tools, it calls one (the one `tool_choice` names, else
//! the first) with arguments made from its schema, until the conversation ends with a tool's
//! result, which it answers with its text; asked for JSON, it answers its text as JSON.

use std::time::Duration;

use futures_util::stream;
use tokio::time::{Instant, sleep_until};

use serde_json::{Value, json};

use super::{
    ChatRequest, Chunk, ChunkStream, Completion, ErrorKind, ProviderError, ResponseFormat,
    ToolChoice, estimate_tokens,
};
use crate::config::{MockFailure, MockSpec};
use crate::proto::{FinishReason, Role, ToolCall, ToolCallDelta, Usage};

/// Sleeps until `due`, but not at all when it has passed: tokio's timer rounds every sleep up
/// to its next millisecond tick, which would make a zero-delay mock take a millisecond.
async fn wait_until(due: Instant) {
    if due > Instant::now() {
        sleep_until(due).await;
    }
}

#[derive(Debug)]
pub struct MockProvider {
    spec: MockSpec,
}

impl MockProvider {
    pub fn new(spec: MockSpec) -> Self {
        MockProvider { spec }
    }

    fn injected_failure(&self) -> Result<(), ProviderError> {
        let Some(failure) = self.spec.failure else {
            return Ok(());
        };
        let (kind, status, detail) = match failure {
            MockFailure::Hang | MockFailure::StallAfterFirstChunk => return Ok(()),
            MockFailure::RateLimit => (ErrorKind::RateLimited, 429, "mock: rate limited"),
            MockFailure::ServerError => (ErrorKind::Upstream, 503, "mock: service unavailable"),
            MockFailure::ConnectError => (ErrorKind::Connect, 0, "mock: connection refused"),
            MockFailure::AuthError => (ErrorKind::Auth, 401, "mock: invalid api key"),
            MockFailure::BadRequest => (ErrorKind::BadRequest, 400, "mock: bad request"),
            MockFailure::ContextWindow => (
                ErrorKind::ContextWindow,
                400,
                "mock: maximum context length exceeded",
            ),
        };
        let mut err = ProviderError::new(kind, status, detail);
        if kind == ErrorKind::RateLimited {
            err.wait_hint = Some(Duration::from_secs(1));
        }
        Err(err)
    }

    /// The answer to `req`: the configured text or, when the conversation ends with an
    /// assistant message that the text begins with (a prefill), the rest of it. So the mock
    /// continues an answer another deployment started, as a model that takes prefills does.
    fn answer<'a>(&'a self, req: &ChatRequest) -> &'a str {
        let text = self.spec.text.as_str();
        match req.messages.last() {
            Some(m) if m.role == Role::Assistant as i32 => {
                text.strip_prefix(m.content.as_str()).unwrap_or(text)
            }
            _ => text,
        }
    }

    /// The tool call the mock makes, if it makes one: while the conversation does not end with
    /// a tool's result.
    fn tool_call(req: &ChatRequest) -> Option<ToolCall> {
        if req.tool_choice == Some(ToolChoice::None)
            || req
                .messages
                .last()
                .is_some_and(|m| m.role == Role::Tool as i32)
        {
            return None;
        }
        let tool = match &req.tool_choice {
            Some(ToolChoice::Function(name)) => req.tools.iter().find(|t| &t.name == name),
            _ => req.tools.first(),
        }?;
        Some(ToolCall {
            id: super::chat::new_call_id("call_mock_"),
            name: tool.name.clone(),
            arguments: example_arguments(&tool.parameters).to_string(),
            signature: String::new(),
        })
    }

    /// The text answer, as JSON when the request asks for JSON and the text is not.
    fn text(&self, req: &ChatRequest) -> String {
        let text = self.answer(req);
        let is_object = matches!(serde_json::from_str::<Value>(text), Ok(Value::Object(_)));
        match req.response_format {
            ResponseFormat::Text => text.to_string(),
            _ if is_object => text.to_string(),
            _ => json!({ "text": text }).to_string(),
        }
    }

    /// The answer split into word-sized chunks, each keeping its trailing space.
    fn pieces(answer: &str) -> Vec<String> {
        answer.split_inclusive(' ').map(str::to_string).collect()
    }

    fn usage(&self, req: &ChatRequest, answer: &str) -> Usage {
        let chars = req.prompt_chars();
        let prompt = u32::try_from(estimate_tokens(chars)).unwrap_or(u32::MAX);
        let completion = Self::tokens(answer);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            ..Default::default()
        }
    }

    fn tokens(answer: &str) -> u32 {
        Self::pieces(answer).len().try_into().unwrap_or(u32::MAX)
    }

    fn token_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.spec.tokens_per_second)
    }

    pub async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        self.injected_failure()?;
        if matches!(
            self.spec.failure,
            Some(MockFailure::Hang | MockFailure::StallAfterFirstChunk)
        ) {
            std::future::pending::<()>().await;
        }
        let start = Instant::now();
        let call = Self::tool_call(req);
        let answer = match &call {
            Some(c) => c.arguments.clone(),
            None => self.text(req),
        };
        let generation = self.token_interval() * Self::tokens(&answer).saturating_sub(1);
        wait_until(start + self.spec.time_to_first_chunk + generation).await;
        let usage = self.usage(req, &answer);
        Ok(match call {
            Some(call) => Completion {
                text: String::new(),
                tool_calls: vec![call],
                thinking: Vec::new(),
                finish_reason: FinishReason::ToolCalls,
                usage: Some(usage),
            },
            None => Completion {
                text: answer,
                tool_calls: Vec::new(),
                thinking: Vec::new(),
                finish_reason: FinishReason::Stop,
                usage: Some(usage),
            },
        })
    }

    pub async fn stream(&self, req: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        self.injected_failure()?;
        if self.spec.failure == Some(MockFailure::Hang) {
            std::future::pending::<()>().await;
        }
        let stall = self.spec.failure == Some(MockFailure::StallAfterFirstChunk);
        let interval = self.token_interval();
        let (mut chunks, finish, usage) = match Self::tool_call(req) {
            // A call in OpenAI's pieces: its id and name first, then its arguments.
            Some(call) => {
                let usage = self.usage(req, &call.arguments);
                let pieces = vec![
                    Chunk {
                        tool_calls: vec![ToolCallDelta {
                            index: 0,
                            id: call.id,
                            name: call.name,
                            arguments: String::new(),
                            signature: String::new(),
                        }],
                        ..Chunk::default()
                    },
                    Chunk {
                        tool_calls: vec![ToolCallDelta {
                            index: 0,
                            arguments: call.arguments,
                            ..ToolCallDelta::default()
                        }],
                        ..Chunk::default()
                    },
                ];
                (pieces, FinishReason::ToolCalls, usage)
            }
            None => {
                let text = self.text(req);
                let usage = self.usage(req, &text);
                let pieces = Self::pieces(&text)
                    .into_iter()
                    .map(|delta| Chunk {
                        delta,
                        ..Chunk::default()
                    })
                    .collect();
                (pieces, FinishReason::Stop, usage)
            }
        };
        chunks.push(Chunk {
            delta: String::new(),
            finish_reason: Some(finish),
            usage: Some(usage),
            ..Chunk::default()
        });
        // Each chunk is due at a fixed instant, so a slow consumer does not slow the schedule.
        let first_due = Instant::now() + self.spec.time_to_first_chunk;
        let schedule = chunks.into_iter().enumerate().map(move |(i, chunk)| {
            let due = first_due + interval * u32::try_from(i).unwrap_or(u32::MAX);
            (due, chunk)
        });
        let s = stream::unfold((schedule, 0usize), move |(mut schedule, sent)| async move {
            if stall && sent == 1 {
                std::future::pending::<()>().await;
            }
            let (due, chunk) = schedule.next()?;
            wait_until(due).await;
            Some((Ok(chunk), (schedule, sent + 1)))
        });
        Ok(Box::pin(s))
    }
}

/// Arguments a tool's schema accepts, made up: each property of its top-level object gets a
/// plain value of its type ("mock" for strings).
fn example_arguments(schema: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let value = match prop.get("type").and_then(Value::as_str) {
                Some("integer" | "number") => json!(0),
                Some("boolean") => json!(false),
                Some("array") => json!([]),
                Some("object") => json!({}),
                Some("null") => Value::Null,
                _ => json!("mock"),
            };
            out.insert(name.clone(), value);
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ChatMessage;
    use crate::providers::Tool;
    use futures_util::StreamExt as _;

    fn mock() -> MockProvider {
        MockProvider::new(MockSpec {
            time_to_first_chunk: Duration::ZERO,
            tokens_per_second: 1_000_000.0,
            text: "It is sunny.".into(),
            failure: None,
        })
    }

    fn with_tools(messages: Vec<ChatMessage>) -> ChatRequest {
        ChatRequest {
            messages,
            tools: vec![
                Tool {
                    name: "first".into(),
                    description: String::new(),
                    parameters: json!({"type": "object"}),
                    strict: None,
                },
                Tool {
                    name: "get_weather".into(),
                    description: String::new(),
                    parameters: json!({"type": "object", "properties": {
                        "city": {"type": "string"}, "days": {"type": "integer"}}}),
                    strict: None,
                },
            ],
            tool_choice: Some(ToolChoice::Function("get_weather".into())),
            ..Default::default()
        }
    }

    fn message(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role: role as i32,
            content: content.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn calls_the_chosen_tool_until_it_has_a_result_then_answers() {
        let req = with_tools(vec![message(Role::User, "weather?")]);
        let c = mock().complete(&req).await.unwrap();
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        assert_eq!(c.tool_calls[0].name, "get_weather");
        let args: Value = serde_json::from_str(&c.tool_calls[0].arguments).unwrap();
        assert_eq!(args, json!({"city": "mock", "days": 0}));

        let chunks: Vec<Chunk> = mock()
            .stream(&req)
            .await
            .unwrap()
            .map(|c| c.unwrap())
            .collect()
            .await;
        let calls = crate::providers::chat::assemble(&chunks);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, c.tool_calls[0].arguments);
        assert_eq!(
            chunks.last().unwrap().finish_reason,
            Some(FinishReason::ToolCalls)
        );

        let mut after = req.clone();
        after
            .messages
            .push(message(Role::Tool, "{\"sky\":\"clear\"}"));
        let c = mock().complete(&after).await.unwrap();
        assert_eq!((c.text.as_str(), c.tool_calls.len()), ("It is sunny.", 0));
    }

    #[tokio::test]
    async fn answers_json_when_asked_for_json() {
        let req = ChatRequest {
            messages: vec![message(Role::User, "hi")],
            response_format: ResponseFormat::JsonObject,
            ..Default::default()
        };
        let c = mock().complete(&req).await.unwrap();
        assert_eq!(c.text, r#"{"text":"It is sunny."}"#);
    }
}
