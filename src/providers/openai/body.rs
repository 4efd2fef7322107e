//! The chat-completions request body: the provider-neutral request in OpenAI's names. Built
//! straight from the call's own strings (a `serde_json::Value` would copy each of them into a
//! map first, on every attempt), tools and tool calls included; only images and files, which
//! must become data URLs, and the small tool-choice and format objects are built anew.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Value, json};

use crate::proto::{ChatMessage, Role, content_part::Part, image::Source};
use crate::providers::chat::{base64, image_media_type};
use crate::providers::{ChatRequest, ResponseFormat, ToolChoice};

#[derive(Serialize)]
pub(super) struct ChatBody<'a> {
    pub model: &'a str,
    pub messages: Vec<Message<'a>>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// What other OpenAI-compatible servers read; OpenAI's reasoning models refuse it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// OpenAI's own name for the limit (see `rules`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    pub user: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<&'static str>,
}

#[derive(Serialize)]
pub(super) struct Message<'a> {
    role: &'static str,
    /// Left out of an assistant message that only calls tools, as OpenAI documents.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<Call<'a>>,
    #[serde(skip_serializing_if = "str::is_empty")]
    tool_call_id: &'a str,
}

/// A plain string, or OpenAI's array of content parts.
#[derive(Serialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(&'a str),
    Parts(Vec<Value>),
}

/// A `tools` entry, borrowed from the request (its schema is not copied).
#[derive(Serialize)]
pub(super) struct Tool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    parameters: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

/// A tool call of an assistant message, borrowed from it.
#[derive(Serialize)]
struct Call<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: CallFunction<'a>,
}

#[derive(Serialize)]
struct CallFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
pub(super) struct StreamOptions {
    pub include_usage: bool,
}

pub(super) fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
        // Requests are validated before they reach a provider.
        Role::Unspecified => "user",
    }
}

pub(super) fn message(m: &ChatMessage) -> Message<'_> {
    let content = if m.parts.is_empty() {
        (m.tool_calls.is_empty() || !m.content.is_empty()).then_some(Content::Text(&m.content))
    } else {
        let mut parts = Vec::with_capacity(m.parts.len() + 1);
        if !m.content.is_empty() {
            parts.push(json!({"type": "text", "text": m.content}));
        }
        parts.extend(m.parts.iter().filter_map(|p| part(p.part.as_ref()?)));
        Some(Content::Parts(parts))
    };
    Message {
        role: role_name(m.role()),
        content,
        name: m.name.as_deref(),
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| Call {
                id: &c.id,
                kind: "function",
                function: CallFunction {
                    name: &c.name,
                    arguments: &c.arguments,
                },
            })
            .collect(),
        tool_call_id: &m.tool_call_id,
    }
}

fn part(p: &Part) -> Option<Value> {
    Some(match p {
        Part::Text(t) => json!({"type": "text", "text": t}),
        Part::Image(image) => {
            let url: Cow<'_, str> = match image.source.as_ref()? {
                Source::Url(u) => Cow::Borrowed(u),
                Source::Data(d) => Cow::Owned(format!(
                    "data:{};base64,{}",
                    image_media_type(image),
                    base64(d)
                )),
            };
            let mut image_url = json!({"url": url});
            if !image.detail.is_empty() {
                image_url["detail"] = json!(image.detail);
            }
            json!({"type": "image_url", "image_url": image_url})
        }
        Part::File(f) => {
            let mut file = json!({
                "file_data": format!("data:{};base64,{}", f.media_type, base64(&f.data)),
            });
            if !f.filename.is_empty() {
                file["filename"] = json!(f.filename);
            }
            json!({"type": "file", "file": file})
        }
    })
}

/// The request's tools, tool choice and response format in OpenAI's shapes.
pub(super) fn tools(req: &ChatRequest) -> Vec<Tool<'_>> {
    req.tools
        .iter()
        .map(|t| Tool {
            kind: "function",
            function: Function {
                name: &t.name,
                description: &t.description,
                parameters: &t.parameters,
                strict: t.strict,
            },
        })
        .collect()
}

pub(super) fn tool_choice(choice: Option<&ToolChoice>) -> Option<Value> {
    Some(match choice? {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
    })
}

pub(super) fn response_format(format: &ResponseFormat) -> Option<Value> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(json!({"type": "json_object"})),
        ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
        } => Some(json!({
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": strict},
        })),
    }
}
