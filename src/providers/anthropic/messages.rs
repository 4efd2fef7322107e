//! Anthropic's Messages wire format as it comes back: an answer's content blocks (text,
//! `tool_use`, thinking), its usage, and the stream's event types (`message_start`,
//! `content_block_start`, `content_block_delta`, `message_delta`, `message_stop`, `ping`,
//! `error`). Apart from the transport (`super`), so that another host of Anthropic's models
//! reads its answers and events with the same code.

use serde::Deserialize;
use serde_json::Value;

use crate::proto::{FinishReason, ThinkingBlock, ThinkingDelta, ToolCall, ToolCallDelta, Usage};
use crate::providers::transport::{EventParser, Step, malformed, malformed_event};
use crate::providers::{Chunk, Completion, ErrorKind, ProviderError, excerpt};

/// A unary answer's body as a completion.
pub fn parse_message(body: &str) -> Result<Completion, ProviderError> {
    let msg: Message = serde_json::from_str(body).map_err(|e| malformed("message", e, body))?;
    Ok(completion(msg))
}

/// The `error.type` of an error body, when it is Anthropic's.
pub fn error_type(body: &str) -> Option<String> {
    serde_json::from_str::<ErrorBody>(body)
        .ok()
        .map(|b| b.error.kind)
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
                signature: String::new(),
            }),
            "thinking" => thinking.push(ThinkingBlock {
                text: block.thinking.unwrap_or_default(),
                signature: block.signature.unwrap_or_default(),
                redacted: String::new(),
                origin: String::new(),
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

/// Reads the stream's events. Usage arrives in two parts: input tokens in `message_start`,
/// output tokens in `message_delta`.
#[derive(Default)]
pub struct AnthropicEvents {
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
                            signature: String::new(),
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
