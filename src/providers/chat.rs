//! What every provider is asked, provider-neutrally: the conversation (messages with parts,
//! tool calls and tool results, as the proto carries them), the tools, the shape of the answer
//! and the sampling and reasoning settings, already validated. Each wire format maps it to its
//! own names; the helpers here are the mappings they share.

use base64::Engine as _;
use serde_json::Value;

use crate::proto::{ChatMessage, Role, content_part::Part, image::Source};

/// A request's conversation and settings, validated (see `api::request`).
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    pub user: String,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: ResponseFormat,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub reasoning: Option<Reasoning>,
}

/// A function the model may call; its parameters as a JSON Schema object.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// `{"type": "object", "properties": {}}` when the request gave none.
    pub parameters: Value,
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum ResponseFormat {
    #[default]
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        strict: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    Minimal,
    Low,
    Medium,
    High,
}

impl Effort {
    /// OpenAI's `reasoning_effort` value.
    pub fn name(self) -> &'static str {
        match self {
            Effort::Minimal => "minimal",
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reasoning {
    pub effort: Option<Effort>,
    pub budget_tokens: Option<u32>,
}

impl Reasoning {
    /// The thinking budget for providers that take one: the request's, else LiteLLM's for its
    /// effort (minimal and low 1024, medium 2048, high 4096 tokens).
    pub fn budget(&self) -> u32 {
        self.budget_tokens.unwrap_or_else(|| {
            let effort = self.effort.unwrap_or(Effort::Low);
            crate::config::params::thinking_budget(effort.name()).unwrap_or(1024)
        })
    }

    /// The effort for providers that take one: the request's, else the nearest to its budget.
    pub fn effort(&self) -> Effort {
        self.effort.unwrap_or(match self.budget_tokens {
            Some(b) if b >= 4096 => Effort::High,
            Some(b) if b >= 2048 => Effort::Medium,
            _ => Effort::Low,
        })
    }
}

impl ChatRequest {
    /// The prompt's size in characters, for the token estimate: text, tool calls and results,
    /// tool schemas, and a fixed share per image and file (providers bill an image by its
    /// size; 4,000 characters is about the 1,000 tokens of a large one).
    pub fn prompt_chars(&self) -> usize {
        const IMAGE_CHARS: usize = 4_000;
        let parts: usize = self
            .messages
            .iter()
            .flat_map(|m| &m.parts)
            .map(|p| match &p.part {
                Some(Part::Text(t)) => t.len(),
                Some(Part::Image(_)) => IMAGE_CHARS,
                // A document is billed by its text: its size is the closest cheap guess.
                Some(Part::File(f)) => f.data.len(),
                None => 0,
            })
            .sum();
        let messages: usize = self
            .messages
            .iter()
            .map(|m| {
                m.content.len()
                    + m.tool_calls
                        .iter()
                        .map(|c| c.name.len() + c.arguments.len())
                        .sum::<usize>()
            })
            .sum();
        let tools: usize = self
            .tools
            .iter()
            .map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len())
            .sum();
        let schema = match &self.response_format {
            ResponseFormat::JsonSchema { schema, .. } => schema.to_string().len(),
            _ => 0,
        };
        parts + messages + tools + schema
    }

    /// The capabilities the request needs of a deployment, by `model_info` key.
    pub fn needs(&self) -> Needs {
        Needs {
            function_calling: !self.tools.is_empty(),
            vision: self
                .messages
                .iter()
                .flat_map(|m| &m.parts)
                .any(|p| matches!(p.part, Some(Part::Image(_)))),
            response_schema: self.response_format != ResponseFormat::Text,
            reasoning: self.reasoning.is_some(),
            image_urls: self.messages.iter().flat_map(|m| &m.parts).any(|p| {
                matches!(
                    &p.part,
                    Some(Part::Image(crate::proto::Image {
                        source: Some(Source::Url(url)),
                        ..
                    })) if !is_google_file(url)
                )
            }),
        }
    }

    /// The function name of the tool call `id` answers, from the assistant messages before
    /// it (Gemini names results by function, not by call).
    pub fn tool_name(&self, id: &str) -> Option<&str> {
        self.messages
            .iter()
            .filter(|m| m.role == Role::Assistant as i32)
            .flat_map(|m| &m.tool_calls)
            .find(|c| c.id == id)
            .map(|c| c.name.as_str())
    }
}

/// What a request needs of a deployment beyond plain chat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub function_calling: bool,
    pub vision: bool,
    pub response_schema: bool,
    pub reasoning: bool,
    /// An image is given by a URL the provider must fetch itself (not a file of Google's
    /// File API, which Gemini reads by its URI).
    pub image_urls: bool,
}

/// A message's whole text: `content`, then its text parts, in order. What providers without
/// parts in some place (a tool result, a system message) receive.
pub fn text_of(m: &ChatMessage) -> String {
    let mut out = m.content.clone();
    for p in &m.parts {
        if let Some(Part::Text(t)) = &p.part {
            out.push_str(t);
        }
    }
    out
}

/// An id for a tool call its provider gave none (Gemini's, the mock's): `prefix` and 24
/// random letters and digits, unique enough to pair a result with its call in a conversation.
pub fn new_call_id(prefix: &str) -> String {
    let tail: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(24)
        .collect();
    format!("{prefix}{tail}")
}

/// Whether `url` names a file of Google's File API, which Gemini reads by its URI.
fn is_google_file(url: &str) -> bool {
    url.starts_with("https://generativelanguage.googleapis.com/")
}

/// An image or file's bytes as base64.
pub fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// An image's media type: as given, else from its URL's extension, else JPEG (what providers
/// assume of photos).
pub fn image_media_type(image: &crate::proto::Image) -> String {
    if !image.media_type.is_empty() {
        return image.media_type.clone();
    }
    let url = match &image.source {
        Some(Source::Url(u)) => u.split(['?', '#']).next().unwrap_or_default(),
        _ => "",
    };
    let ext = url
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => "image/jpeg",
    }
    .to_string()
}

/// A tool call's arguments as a JSON object (validated as one when the request came in;
/// an answer's may not be: then an empty object).
pub fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Default::default()),
    }
}

/// One request using every feature, which each wire format's tests map and compare with the
/// body its vendor documents (`tests/fixtures/*/request_full.json`).
#[cfg(test)]
pub fn full_request() -> ChatRequest {
    use crate::proto::{ContentPart, Image, ToolCall};
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"summary": {"type": "string"}},
        "required": ["summary"],
        "additionalProperties": false,
    });
    let message = |role: Role, content: &str| ChatMessage {
        role: role as i32,
        content: content.into(),
        ..Default::default()
    };
    let image = |source| ContentPart {
        part: Some(Part::Image(Image {
            source: Some(source),
            media_type: String::new(),
            detail: String::new(),
        })),
    };
    let mut inline = image(Source::Data(vec![137, 80, 78, 71]));
    if let Some(Part::Image(i)) = &mut inline.part {
        i.media_type = "image/png".into();
    }
    ChatRequest {
        messages: vec![
            message(Role::System, "You are a weather assistant."),
            ChatMessage {
                parts: vec![
                    image(Source::Url("https://example.com/paris.png".into())),
                    inline,
                ],
                ..message(Role::User, "What's the weather here?")
            },
            ChatMessage {
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"location":"Paris, France"}"#.into(),
                    signature: String::new(),
                }],
                ..message(Role::Assistant, "")
            },
            ChatMessage {
                tool_call_id: "call_1".into(),
                ..message(Role::Tool, r#"{"temperature":18,"sky":"clear"}"#)
            },
            message(Role::User, "And tomorrow?"),
        ],
        max_tokens: Some(500),
        temperature: Some(0.5),
        tools: vec![Tool {
            name: "get_weather".into(),
            description: "Current weather for a place".into(),
            parameters: serde_json::json!({
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            }),
            strict: None,
        }],
        tool_choice: Some(ToolChoice::Auto),
        parallel_tool_calls: Some(false),
        response_format: ResponseFormat::JsonSchema {
            name: "forecast".into(),
            schema,
            strict: true,
        },
        seed: Some(7),
        presence_penalty: Some(0.5),
        frequency_penalty: Some(0.25),
        reasoning: Some(Reasoning {
            effort: Some(Effort::High),
            budget_tokens: None,
        }),
        ..Default::default()
    }
}

/// A file under `tests/fixtures/`: a vendor's documented body or stream.
#[cfg(test)]
pub fn fixture(path: &str) -> String {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The `data:` payloads of an SSE fixture, event by event.
#[cfg(test)]
pub fn sse_data(fixture: &str) -> Vec<String> {
    fixture
        .split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(|d| d.trim().to_string())
        })
        .collect()
}

/// Tool calls assembled from a stream's pieces as a client does: by index, the id and name
/// from the first piece, the arguments concatenated.
#[cfg(test)]
pub fn assemble(chunks: &[super::Chunk]) -> Vec<crate::proto::ToolCall> {
    let mut calls: Vec<crate::proto::ToolCall> = Vec::new();
    for d in chunks.iter().flat_map(|c| &c.tool_calls) {
        let i = d.index as usize;
        if calls.len() <= i {
            calls.resize(i + 1, Default::default());
        }
        if !d.id.is_empty() {
            calls[i].id = d.id.clone();
        }
        if !d.name.is_empty() {
            calls[i].name = d.name.clone();
        }
        calls[i].arguments.push_str(&d.arguments);
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ContentPart, Image};

    #[test]
    fn budgets_and_efforts_map_both_ways() {
        let r = |effort, budget_tokens| Reasoning {
            effort,
            budget_tokens,
        };
        assert_eq!(r(Some(Effort::High), None).budget(), 4096);
        assert_eq!(r(Some(Effort::Minimal), None).budget(), 1024);
        assert_eq!(r(Some(Effort::Low), Some(9000)).budget(), 9000);
        assert_eq!(r(None, Some(3000)).effort(), Effort::Medium);
        assert_eq!(r(None, None).effort(), Effort::Low);
    }

    #[test]
    fn media_types_come_from_the_request_else_the_url() {
        let url = |u: &str| Image {
            source: Some(Source::Url(u.into())),
            ..Default::default()
        };
        assert_eq!(image_media_type(&url("https://x/a.PNG?s=1")), "image/png");
        assert_eq!(image_media_type(&url("https://x/a")), "image/jpeg");
        let given = Image {
            media_type: "image/webp".into(),
            ..url("https://x/a.png")
        };
        assert_eq!(image_media_type(&given), "image/webp");
    }

    #[test]
    fn images_count_towards_the_prompt_and_the_needs() {
        let req = ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User as i32,
                content: "look".into(),
                parts: vec![ContentPart {
                    part: Some(Part::Image(Image::default())),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(req.prompt_chars(), 4 + 4_000);
        assert!(req.needs().vision);
        assert!(!req.needs().function_calling);
    }
}
