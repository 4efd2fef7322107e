//! Validation of what a request carries beyond plain text: message parts (images, files),
//! tool calls and tool results, tools, the tool choice, the answer's format and reasoning.
//! Each error names its field; what passes is converted once into the provider-neutral types
//! the providers map (`providers::ChatRequest`).

use std::collections::BTreeSet;

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

use super::error::{ApiError, invalid};
use crate::proto::{
    self, ChatMessage, ContentPart, Role, content_part::Part, image::Source, tool_choice::Choice,
};
use crate::providers::{Effort, Reasoning, ResponseFormat, Tool, ToolChoice};

const MAX_PARTS: usize = 64;
const MAX_THINKING: usize = 64;
const MAX_TOOLS: usize = 128;
const MAX_TOOL_CALLS: usize = 128;
const MAX_NAME: usize = 64;
const MAX_URL: usize = 8 * 1024;
const MAX_DESCRIPTION: usize = 16 * 1024;
const MIN_BUDGET: u32 = 1024;
const MAX_BUDGET: u32 = 1_000_000;

/// A function or schema name as OpenAI accepts it (the strictest of the providers).
fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(invalid(
            field,
            format!("must be 1 to {MAX_NAME} characters"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(
            field,
            "may hold only letters, digits, underscores and dashes",
        ));
    }
    Ok(())
}

/// A provider's opaque signature as it gave it: base64 (standard or URL-safe), or empty.
/// Gemini answers 400 to anything else; its length is bounded by the request's.
fn is_signature(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'))
}

/// Checks each message's parts, tool calls and tool result id.
pub fn check_messages(messages: &[ChatMessage]) -> Result<(), ApiError> {
    let mut call_ids = BTreeSet::new();
    for (i, m) in messages.iter().enumerate() {
        let at = |rest: &str| format!("messages[{i}].{rest}");
        if m.parts.len() > MAX_PARTS {
            return Err(invalid(
                at("parts"),
                format!("holds more than {MAX_PARTS} parts"),
            ));
        }
        for (j, p) in m.parts.iter().enumerate() {
            check_part(&at(&format!("parts[{j}]")), p, m.role)?;
        }
        if !m.thinking.is_empty() && m.role != Role::Assistant as i32 {
            return Err(invalid(
                at("thinking"),
                "only ROLE_ASSISTANT messages carry thinking",
            ));
        }
        if m.thinking.len() > MAX_THINKING {
            return Err(invalid(
                at("thinking"),
                format!("holds more than {MAX_THINKING} blocks"),
            ));
        }
        for (k, t) in m.thinking.iter().enumerate() {
            if !["", "anthropic", "gemini"].contains(&t.origin.as_str()) {
                return Err(invalid(
                    at(&format!("thinking[{k}].origin")),
                    "must be empty, anthropic or gemini, as the answer gave it",
                ));
            }
        }
        if !m.tool_calls.is_empty() && m.role != Role::Assistant as i32 {
            return Err(invalid(
                at("tool_calls"),
                "only ROLE_ASSISTANT messages carry tool calls",
            ));
        }
        if m.tool_calls.len() > MAX_TOOL_CALLS {
            return Err(invalid(
                at("tool_calls"),
                format!("holds more than {MAX_TOOL_CALLS} calls"),
            ));
        }
        for (j, c) in m.tool_calls.iter().enumerate() {
            let here = |f: &str| at(&format!("tool_calls[{j}].{f}"));
            if c.id.is_empty() || c.id.len() > 256 {
                return Err(invalid(here("id"), "must be 1 to 256 characters"));
            }
            check_name(&here("name"), &c.name)?;
            if !matches!(
                serde_json::from_str::<Value>(&c.arguments),
                Ok(Value::Object(_))
            ) {
                return Err(invalid(here("arguments"), "must be a JSON object, as text"));
            }
            if !is_signature(&c.signature) {
                return Err(invalid(
                    here("signature"),
                    "must be the signature as the answer gave it (base64)",
                ));
            }
            call_ids.insert(c.id.as_str());
        }
        if !m.tool_call_id.is_empty() && m.role != Role::Tool as i32 {
            return Err(invalid(
                at("tool_call_id"),
                "only ROLE_TOOL messages answer a tool call",
            ));
        }
        // A tool result must answer a call made earlier in the conversation, once there are
        // any: providers pair them by id (Anthropic, OpenAI) or by the call's name (Gemini).
        if m.role == Role::Tool as i32 && !call_ids.is_empty() {
            if m.tool_call_id.is_empty() {
                return Err(invalid(
                    at("tool_call_id"),
                    "is required: the id of the tool call this message answers",
                ));
            }
            if !call_ids.contains(m.tool_call_id.as_str()) {
                return Err(invalid(
                    at("tool_call_id"),
                    "names no tool call of an earlier ROLE_ASSISTANT message",
                ));
            }
        }
    }
    Ok(())
}

fn check_part(field: &str, p: &ContentPart, role: i32) -> Result<(), ApiError> {
    match &p.part {
        None => Err(invalid(field, "must set text, image or file")),
        Some(Part::Text(_)) => Ok(()),
        Some(Part::Image(_) | Part::File(_)) if role != Role::User as i32 => Err(invalid(
            field,
            "images and files may only be in ROLE_USER messages",
        )),
        Some(Part::Image(image)) => match &image.source {
            None => Err(invalid(format!("{field}.image"), "must set url or data")),
            Some(Source::Url(url)) => {
                let ok = url.len() <= MAX_URL
                    && url::Url::parse(url).is_ok_and(|u| {
                        matches!(u.scheme(), "http" | "https") && u.host().is_some()
                    });
                if !ok {
                    return Err(invalid(
                        format!("{field}.image.url"),
                        "must be an http(s) URL of at most 8 KiB",
                    ));
                }
                check_detail(field, &image.detail)
            }
            Some(Source::Data(data)) => {
                if data.is_empty() {
                    return Err(invalid(format!("{field}.image.data"), "must not be empty"));
                }
                if !image.media_type.starts_with("image/") {
                    return Err(invalid(
                        format!("{field}.image.media_type"),
                        "is required with data, as image/png, image/jpeg, image/gif or image/webp",
                    ));
                }
                check_detail(field, &image.detail)
            }
        },
        Some(Part::File(file)) => {
            if file.data.is_empty() {
                return Err(invalid(format!("{field}.file.data"), "must not be empty"));
            }
            if file.media_type.is_empty() || !file.media_type.contains('/') {
                return Err(invalid(
                    format!("{field}.file.media_type"),
                    "is required, such as application/pdf",
                ));
            }
            Ok(())
        }
    }
}

fn check_detail(field: &str, detail: &str) -> Result<(), ApiError> {
    match detail {
        "" | "low" | "high" | "auto" => Ok(()),
        _ => Err(invalid(
            format!("{field}.image.detail"),
            "must be low, high or auto when set",
        )),
    }
}

/// The request's tools, checked and converted.
pub fn tools(tools: Vec<proto::Tool>) -> Result<Vec<Tool>, ApiError> {
    if tools.len() > MAX_TOOLS {
        return Err(invalid(
            "tools",
            format!("holds more than {MAX_TOOLS} tools"),
        ));
    }
    let mut names = BTreeSet::new();
    tools
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            check_name(&format!("tools[{i}].name"), &t.name)?;
            if !names.insert(t.name.clone()) {
                return Err(invalid(
                    format!("tools[{i}].name"),
                    format!("`{}` is given twice", t.name),
                ));
            }
            if t.description.len() > MAX_DESCRIPTION {
                return Err(invalid(
                    format!("tools[{i}].description"),
                    "is longer than 16 KiB",
                ));
            }
            let parameters = match &t.parameters {
                Some(s) => object_schema(&format!("tools[{i}].parameters"), struct_json(s))?,
                None => serde_json::json!({"type": "object", "properties": {}}),
            };
            Ok(Tool {
                name: t.name,
                description: t.description,
                parameters,
                strict: t.strict,
            })
        })
        .collect()
}

/// A tool's parameters as every family accepts them: an object schema at the root. OpenAI
/// and Anthropic refuse any other root (`{"type": "string"}`, a bare `anyOf`), so such a tool
/// is refused here, before any attempt. A root that leaves out `type` (`{}`, or `properties`
/// alone: what a grpcurl user writes) is completed to `"type": "object"`, and one without
/// `properties` gets an empty map: Anthropic answers 400 without the type, and OpenAI's strict
/// mode without the map.
fn object_schema(field: &str, schema: Value) -> Result<Value, ApiError> {
    let Value::Object(mut root) = schema else {
        return Err(invalid(field, "must be a JSON Schema object"));
    };
    match root.get("type") {
        Some(Value::String(t)) if t == "object" => {}
        Some(other) => {
            return Err(invalid(
                field,
                format!(
                    "must be an object schema: its root \"type\" is {other}, and providers accept only \"object\" there"
                ),
            ));
        }
        None => {
            if let Some(key) = ["anyOf", "oneOf", "allOf", "not", "$ref", "enum", "const"]
                .into_iter()
                .find(|k| root.contains_key(*k))
            {
                return Err(invalid(
                    field,
                    format!(
                        "must be an object schema: give \"type\": \"object\" at its root (a root \"{key}\" without it is refused by OpenAI and Anthropic)"
                    ),
                ));
            }
            root.insert("type".into(), Value::String("object".into()));
        }
    }
    match root.get("properties") {
        None => {
            root.insert("properties".into(), Value::Object(Map::new()));
        }
        Some(Value::Object(_)) => {}
        Some(_) => return Err(invalid(field, "\"properties\" must be an object")),
    }
    if let Some(required) = root.get("required")
        && !required
            .as_array()
            .is_some_and(|r| r.iter().all(Value::is_string))
    {
        return Err(invalid(field, "\"required\" must be a list of names"));
    }
    Ok(Value::Object(root))
}

pub fn tool_choice(
    choice: Option<proto::ToolChoice>,
    tools: &[Tool],
) -> Result<Option<ToolChoice>, ApiError> {
    let choice = match choice.and_then(|c| c.choice) {
        None => return Ok(None),
        Some(Choice::Mode(mode)) => match proto::ToolChoiceMode::try_from(mode) {
            Ok(proto::ToolChoiceMode::Unspecified) => return Ok(None),
            Ok(proto::ToolChoiceMode::Auto) => ToolChoice::Auto,
            Ok(proto::ToolChoiceMode::None) => ToolChoice::None,
            Ok(proto::ToolChoiceMode::Required) => ToolChoice::Required,
            Err(_) => {
                return Err(invalid(
                    "tool_choice.mode",
                    format!("{mode} is not a known ToolChoiceMode"),
                ));
            }
        },
        Some(Choice::Function(name)) => {
            if !tools.iter().any(|t| t.name == name) {
                return Err(invalid(
                    "tool_choice.function",
                    "names no tool of the request's tools",
                ));
            }
            ToolChoice::Function(name)
        }
    };
    if tools.is_empty() && choice != ToolChoice::None {
        return Err(invalid("tool_choice", "needs tools"));
    }
    Ok(Some(choice))
}

pub fn response_format(f: Option<proto::ResponseFormat>) -> Result<ResponseFormat, ApiError> {
    let Some(f) = f else {
        return Ok(ResponseFormat::Text);
    };
    Ok(match proto::ResponseFormatType::try_from(f.r#type) {
        Ok(proto::ResponseFormatType::Unspecified | proto::ResponseFormatType::Text) => {
            ResponseFormat::Text
        }
        Ok(proto::ResponseFormatType::JsonObject) => ResponseFormat::JsonObject,
        Ok(proto::ResponseFormatType::JsonSchema) => {
            let name = if f.name.is_empty() {
                "response".to_string()
            } else {
                check_name("response_format.name", &f.name)?;
                f.name
            };
            let Some(schema) = &f.schema else {
                return Err(invalid(
                    "response_format.schema",
                    "is required for RESPONSE_FORMAT_TYPE_JSON_SCHEMA",
                ));
            };
            ResponseFormat::JsonSchema {
                name,
                schema: struct_json(schema),
                strict: f.strict,
            }
        }
        Err(_) => {
            return Err(invalid(
                "response_format.type",
                format!("{} is not a known ResponseFormatType", f.r#type),
            ));
        }
    })
}

pub fn reasoning(r: Option<proto::Reasoning>) -> Result<Option<Reasoning>, ApiError> {
    let Some(r) = r else { return Ok(None) };
    let effort = match proto::ReasoningEffort::try_from(r.effort) {
        Ok(proto::ReasoningEffort::Unspecified) => None,
        Ok(proto::ReasoningEffort::Minimal) => Some(Effort::Minimal),
        Ok(proto::ReasoningEffort::Low) => Some(Effort::Low),
        Ok(proto::ReasoningEffort::Medium) => Some(Effort::Medium),
        Ok(proto::ReasoningEffort::High) => Some(Effort::High),
        Err(_) => {
            return Err(invalid(
                "reasoning.effort",
                format!("{} is not a known ReasoningEffort", r.effort),
            ));
        }
    };
    if let Some(b) = r.budget_tokens
        && !(MIN_BUDGET..=MAX_BUDGET).contains(&b)
    {
        return Err(invalid(
            "reasoning.budget_tokens",
            format!("must be from {MIN_BUDGET} to {MAX_BUDGET}"),
        ));
    }
    if effort.is_none() && r.budget_tokens.is_none() {
        return Ok(None);
    }
    Ok(Some(Reasoning {
        effort,
        budget_tokens: r.budget_tokens,
    }))
}

/// A `google.protobuf.Struct` as the JSON it stands for. Whole numbers become JSON integers
/// (protobuf has only doubles, and schemas say `"maxItems": 3`, not `3.0`).
pub fn struct_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect::<Map<_, _>>(),
    )
}

fn value_json(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::Number(Number::from(*n as i64))
            } else {
                Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_json).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{ListValue, Struct};
    use serde_json::json;

    /// JSON as a protobuf Struct, as a client's stub builds it.
    fn json_struct(v: Value) -> Struct {
        fn value(v: Value) -> prost_types::Value {
            let kind = match v {
                Value::Null => Kind::NullValue(0),
                Value::Bool(b) => Kind::BoolValue(b),
                Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
                Value::String(s) => Kind::StringValue(s),
                Value::Array(a) => Kind::ListValue(ListValue {
                    values: a.into_iter().map(value).collect(),
                }),
                Value::Object(_) => Kind::StructValue(json_struct(v)),
            };
            prost_types::Value { kind: Some(kind) }
        }
        let Value::Object(map) = v else {
            panic!("not an object: {v}")
        };
        Struct {
            fields: map.into_iter().map(|(k, v)| (k, value(v))).collect(),
        }
    }

    fn num(n: f64) -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    #[test]
    fn structs_become_plain_json_with_whole_numbers_as_integers() {
        let s = Struct {
            fields: [
                ("maxItems".to_string(), num(3.0)),
                ("ratio".to_string(), num(0.5)),
                (
                    "enum".to_string(),
                    prost_types::Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: vec![prost_types::Value {
                                kind: Some(Kind::StringValue("a".into())),
                            }],
                        })),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            struct_json(&s),
            serde_json::json!({"maxItems": 3, "ratio": 0.5, "enum": ["a"]})
        );
    }

    fn field(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        match r {
            Err(ApiError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn user_with(part: Part) -> ChatMessage {
        ChatMessage {
            role: Role::User as i32,
            parts: vec![ContentPart { part: Some(part) }],
            ..Default::default()
        }
    }

    #[test]
    fn parts_tool_calls_and_results_are_checked_by_field() {
        let image = |source, media_type: &str| {
            Part::Image(proto::Image {
                source: Some(source),
                media_type: media_type.into(),
                ..Default::default()
            })
        };
        assert!(
            check_messages(&[user_with(image(Source::Url("https://x/a.png".into()), ""))]).is_ok()
        );
        assert_eq!(
            field(check_messages(&[user_with(image(
                Source::Url("file:///etc/passwd".into()),
                ""
            ))])),
            "messages[0].parts[0].image.url"
        );
        assert_eq!(
            field(check_messages(&[user_with(image(
                Source::Data(vec![1]),
                "text/plain"
            ))])),
            "messages[0].parts[0].image.media_type"
        );
        let call = |id: &str, args: &str| ChatMessage {
            role: Role::Assistant as i32,
            tool_calls: vec![proto::ToolCall {
                id: id.into(),
                name: "get_weather".into(),
                arguments: args.into(),
                signature: String::new(),
            }],
            ..Default::default()
        };
        let result = |id: &str| ChatMessage {
            role: Role::Tool as i32,
            content: "sunny".into(),
            tool_call_id: id.into(),
            ..Default::default()
        };
        assert!(check_messages(&[call("c1", r#"{"city":"Paris"}"#), result("c1")]).is_ok());
        assert_eq!(
            field(check_messages(&[call("c1", "[1]"), result("c1")])),
            "messages[0].tool_calls[0].arguments"
        );
        assert_eq!(
            field(check_messages(&[call("c1", "{}"), result("c2")])),
            "messages[1].tool_call_id"
        );
        assert_eq!(
            field(check_messages(&[call("c1", "{}"), result("")])),
            "messages[1].tool_call_id"
        );
        let mut signed = call("c1", "{}");
        signed.tool_calls[0].signature = "CiIBjz1rX+/a_b-c==".into();
        assert!(check_messages(&[signed.clone(), result("c1")]).is_ok());
        signed.tool_calls[0].signature = "not base64!".into();
        assert_eq!(
            field(check_messages(&[signed, result("c1")])),
            "messages[0].tool_calls[0].signature"
        );
        let thinking = |origin: &str| ChatMessage {
            thinking: vec![proto::ThinkingBlock {
                signature: "c2ln".into(),
                origin: origin.into(),
                ..Default::default()
            }],
            ..call("c1", "{}")
        };
        for ok in ["", "anthropic", "gemini"] {
            assert!(
                check_messages(&[thinking(ok), result("c1")]).is_ok(),
                "{ok}"
            );
        }
        assert_eq!(
            field(check_messages(&[thinking("openai"), result("c1")])),
            "messages[0].thinking[0].origin"
        );
    }

    #[test]
    fn tools_choices_formats_and_reasoning_are_checked_by_field() {
        let tool = |name: &str| proto::Tool {
            name: name.into(),
            ..Default::default()
        };
        assert_eq!(field(tools(vec![tool("a b")])), "tools[0].name");
        assert_eq!(field(tools(vec![tool("a"), tool("a")])), "tools[1].name");
        let ok = tools(vec![tool("a")]).unwrap();
        assert_eq!(ok[0].parameters["type"], "object");
        let with = |schema: Value| proto::Tool {
            parameters: Some(json_struct(schema)),
            ..tool("a")
        };
        for refused in [
            json!({"type": "string"}),
            json!({"type": ["object", "null"]}),
            json!({"anyOf": [{"type": "object"}]}),
            json!({"$ref": "#/$defs/A", "$defs": {"A": {"type": "object"}}}),
            json!({"type": "object", "properties": ["a"]}),
            json!({"type": "object", "required": "a"}),
        ] {
            assert_eq!(
                field(tools(vec![tool("b"), with(refused.clone())])),
                "tools[1].parameters",
                "{refused}"
            );
        }
        // A root without a type is completed to an object schema; the rest is kept as given.
        let completed = |schema: Value| tools(vec![with(schema)]).unwrap()[0].parameters.clone();
        assert_eq!(
            completed(json!({})),
            json!({"type": "object", "properties": {}})
        );
        let props = json!({"city": {"type": "string"}});
        assert_eq!(
            completed(json!({"properties": props, "required": ["city"]})),
            json!({"type": "object", "properties": props, "required": ["city"]})
        );
        assert_eq!(
            completed(json!({"type": "object"})),
            json!({"type": "object", "properties": {}})
        );
        let function = |name: &str| {
            Some(proto::ToolChoice {
                choice: Some(Choice::Function(name.into())),
            })
        };
        assert_eq!(
            tool_choice(function("a"), &ok).unwrap(),
            Some(ToolChoice::Function("a".into()))
        );
        assert_eq!(
            field(tool_choice(function("b"), &ok)),
            "tool_choice.function"
        );
        assert_eq!(
            field(tool_choice(function("a"), &[])),
            "tool_choice.function"
        );
        let schema = proto::ResponseFormat {
            r#type: proto::ResponseFormatType::JsonSchema as i32,
            ..Default::default()
        };
        assert_eq!(
            field(response_format(Some(schema))),
            "response_format.schema"
        );
        assert_eq!(
            field(reasoning(Some(proto::Reasoning {
                budget_tokens: Some(10),
                ..Default::default()
            }))),
            "reasoning.budget_tokens"
        );
        assert_eq!(reasoning(Some(proto::Reasoning::default())).unwrap(), None);
    }
}
