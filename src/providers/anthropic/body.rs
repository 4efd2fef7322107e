//! The Messages API request body: system messages in `system`, content as blocks (text, image,
//! document, `tool_use` in assistant turns, `tool_result` in user turns), tools with an
//! `input_schema`, the tool choice, `thinking`, and structured output as `output_config.format`.

use serde_json::{Value, json};

use crate::proto::{ChatMessage, Role, content_part::Part, image::Source};
use crate::providers::chat::{arguments_object, base64, image_media_type, text_of};
use crate::providers::{ChatRequest, ResponseFormat, ToolChoice};

/// What a JSON_OBJECT answer needs: Anthropic has no JSON mode without a schema, so the model
/// is told (a JSON_SCHEMA answer goes through `output_config.format`, which enforces it).
pub(super) const JSON_OBJECT_INSTRUCTION: &str =
    "Answer with one JSON object and nothing else: no prose, no code fences.";

pub fn body(model: &str, default_max_tokens: u32, req: &ChatRequest, stream: bool) -> Value {
    let mut system: Vec<String> = req
        .messages
        .iter()
        .filter(|m| m.role() == Role::System)
        .map(text_of)
        .collect();
    if req.response_format == ResponseFormat::JsonObject {
        system.push(JSON_OBJECT_INSTRUCTION.to_string());
    }
    let messages: Vec<Value> = req
        .messages
        .iter()
        .filter(|m| m.role() != Role::System)
        .map(message)
        .collect();
    let mut max_tokens = req.max_tokens.unwrap_or(default_max_tokens);
    let mut body = json!({
        "model": model,
        "messages": messages,
        "stream": stream,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    match &req.reasoning {
        Some(r) => {
            // Thinking counts against max_tokens, which must exceed its budget: the caller's
            // max_tokens is for the answer, on top of it. Anthropic refuses a temperature or
            // top_p other than its defaults while thinking: they are left out.
            let budget = r.budget();
            max_tokens = max_tokens.saturating_add(budget);
            body["thinking"] = json!({"type": "enabled", "budget_tokens": budget});
        }
        None => {
            if let Some(v) = req.temperature {
                // Anthropic's range is 0..1; OpenAI-style callers may send up to 2.
                body["temperature"] = json!(v.min(1.0));
            }
            if let Some(v) = req.top_p {
                body["top_p"] = json!(v);
            }
        }
    }
    body["max_tokens"] = json!(max_tokens);
    if !req.stop.is_empty() {
        body["stop_sequences"] = json!(req.stop);
    }
    if !req.user.is_empty() {
        body["metadata"] = json!({ "user_id": req.user });
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                let mut tool = json!({"name": t.name, "input_schema": t.parameters});
                if !t.description.is_empty() {
                    tool["description"] = json!(t.description);
                }
                tool
            })
            .collect();
    }
    if let Some(choice) = tool_choice(req) {
        body["tool_choice"] = choice;
    }
    if let ResponseFormat::JsonSchema { schema, .. } = &req.response_format {
        body["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
    }
    body
}

fn tool_choice(req: &ChatRequest) -> Option<Value> {
    let mut choice = match &req.tool_choice {
        Some(ToolChoice::Auto) => json!({"type": "auto"}),
        Some(ToolChoice::Required) => json!({"type": "any"}),
        Some(ToolChoice::Function(name)) => json!({"type": "tool", "name": name}),
        Some(ToolChoice::None) => return Some(json!({"type": "none"})),
        None if req.parallel_tool_calls == Some(false) && !req.tools.is_empty() => {
            json!({"type": "auto"})
        }
        None => return None,
    };
    if req.parallel_tool_calls == Some(false) {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    Some(choice)
}

/// Whether a thinking block is Anthropic's own (`origin` empty, as before the field, or named).
fn is_anthropics(t: &crate::proto::ThinkingBlock) -> bool {
    t.origin.is_empty() || t.origin == "anthropic"
}

/// One message as a turn: assistant turns carry `tool_use` blocks, tool results become user
/// turns with a `tool_result` block (Anthropic combines consecutive user turns).
fn message(m: &ChatMessage) -> Value {
    match m.role() {
        Role::Assistant => {
            // Blocks another format's model made (Gemini's signatures) are left out: Anthropic
            // would refuse a signature it did not make.
            let mut thinking = m.thinking.iter().filter(|t| is_anthropics(t)).peekable();
            if m.tool_calls.is_empty() && m.parts.is_empty() && thinking.peek().is_none() {
                // A plain string: the form an assistant prefill takes.
                return json!({"role": "assistant", "content": m.content});
            }
            // Thinking first, as the answer carried it, unchanged (Anthropic checks it).
            let mut blocks: Vec<Value> = thinking
                .map(|t| {
                    if t.redacted.is_empty() {
                        json!({"type": "thinking", "thinking": t.text, "signature": t.signature})
                    } else {
                        json!({"type": "redacted_thinking", "data": t.redacted})
                    }
                })
                .collect();
            blocks.extend(text_blocks(m));
            blocks.extend(m.tool_calls.iter().map(|c| {
                json!({
                    "type": "tool_use",
                    "id": c.id,
                    "name": c.name,
                    "input": arguments_object(&c.arguments),
                })
            }));
            json!({"role": "assistant", "content": blocks})
        }
        Role::Tool if !m.tool_call_id.is_empty() => json!({
            "role": "user",
            "content": [{
                "type": "tool_result",
                "tool_use_id": m.tool_call_id,
                "content": text_of(m),
            }],
        }),
        // A tool message without a call id (a conversation without tool calls) is the
        // user's text, as before the API carried ids.
        _ if m.parts.is_empty() => json!({"role": "user", "content": m.content}),
        _ => json!({"role": "user", "content": text_blocks(m)}),
    }
}

/// `content` and the parts as content blocks, in order.
fn text_blocks(m: &ChatMessage) -> Vec<Value> {
    let mut blocks = Vec::with_capacity(m.parts.len() + 1);
    if !m.content.is_empty() {
        blocks.push(json!({"type": "text", "text": m.content}));
    }
    for p in &m.parts {
        let block = match &p.part {
            Some(Part::Text(t)) => json!({"type": "text", "text": t}),
            Some(Part::Image(image)) => match &image.source {
                Some(Source::Url(url)) => {
                    json!({"type": "image", "source": {"type": "url", "url": url}})
                }
                Some(Source::Data(d)) => json!({
                    "type": "image",
                    "source": {"type": "base64", "media_type": image_media_type(image), "data": base64(d)},
                }),
                None => continue,
            },
            // Plain text goes as text (Anthropic's base64 documents are PDFs).
            Some(Part::File(f)) if f.media_type == "text/plain" => json!({
                "type": "document",
                "source": {
                    "type": "text",
                    "media_type": "text/plain",
                    "data": String::from_utf8_lossy(&f.data),
                },
            }),
            Some(Part::File(f)) => json!({
                "type": "document",
                "source": {"type": "base64", "media_type": f.media_type, "data": base64(&f.data)},
            }),
            None => continue,
        };
        blocks.push(block);
    }
    blocks
}
