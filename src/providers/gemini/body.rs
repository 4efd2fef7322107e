//! The `generateContent` request body: turns as `contents` (assistant is `model`; consecutive
//! function responses in one turn, as Gemini wants a turn's calls answered together), parts
//! (`text`, `inlineData`, `fileData`, `functionCall`, `functionResponse`), system messages as
//! `systemInstruction`, tools as `functionDeclarations` with a JSON Schema
//! (`parametersJsonSchema`), `toolConfig`, and `generationConfig` (JSON output, thinking).

use serde_json::{Map, Value, json};

use crate::proto::{ChatMessage, Role, content_part::Part, image::Source};
use crate::providers::chat::{arguments_object, base64, image_media_type, text_of};
use crate::providers::{ChatRequest, ResponseFormat, ToolChoice};

pub fn body(req: &ChatRequest, default_max_tokens: Option<u32>) -> Value {
    let system: Vec<Value> = req
        .messages
        .iter()
        .filter(|m| m.role() == Role::System)
        .map(|m| json!({ "text": text_of(m) }))
        .collect();
    // Consecutive function responses go in one turn, as Gemini pairs them with the calls of
    // the turn before; other turns stay as they were sent.
    let mut contents: Vec<Value> = Vec::new();
    let mut last_was_response = false;
    for m in req.messages.iter().filter(|m| m.role() != Role::System) {
        let role = if m.role() == Role::Assistant {
            "model"
        } else {
            "user"
        };
        let parts = parts(req, m);
        let is_response = parts
            .first()
            .is_some_and(|p| p.get("functionResponse").is_some());
        match contents.last_mut() {
            Some(last) if is_response && last_was_response => {
                if let Some(list) = last["parts"].as_array_mut() {
                    list.extend(parts);
                }
            }
            _ => contents.push(json!({ "role": role, "parts": parts })),
        }
        last_was_response = is_response;
    }
    let mut body = json!({ "contents": contents });
    if !system.is_empty() {
        body["systemInstruction"] = json!({ "parts": system });
    }
    if !req.tools.is_empty() {
        let declarations: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name, "parametersJsonSchema": t.parameters});
                if !t.description.is_empty() {
                    d["description"] = json!(t.description);
                }
                d
            })
            .collect();
        body["tools"] = json!([{ "functionDeclarations": declarations }]);
    }
    if let Some(choice) = &req.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Function(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body["toolConfig"] = json!({ "functionCallingConfig": config });
    }
    let mut generation = Map::new();
    let mut set = |key: &str, v: Value| {
        generation.insert(key.into(), v);
    };
    if let Some(v) = req.max_tokens.or(default_max_tokens) {
        set("maxOutputTokens", json!(v));
    }
    if let Some(v) = req.temperature {
        set("temperature", json!(v));
    }
    if let Some(v) = req.top_p {
        set("topP", json!(v));
    }
    if !req.stop.is_empty() {
        set("stopSequences", json!(req.stop));
    }
    if let Some(v) = req.seed {
        set("seed", json!(v));
    }
    if let Some(v) = req.presence_penalty {
        set("presencePenalty", json!(v));
    }
    if let Some(v) = req.frequency_penalty {
        set("frequencyPenalty", json!(v));
    }
    match &req.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => set("responseMimeType", json!("application/json")),
        ResponseFormat::JsonSchema { schema, .. } => {
            set("responseMimeType", json!("application/json"));
            set("responseJsonSchema", schema.clone());
        }
    }
    if let Some(r) = &req.reasoning {
        set("thinkingConfig", json!({"thinkingBudget": r.budget()}));
    }
    if !generation.is_empty() {
        body["generationConfig"] = Value::Object(generation);
    }
    body
}

/// A message's parts: its text and parts, its tool calls, or (a tool result) a
/// `functionResponse` named by the call it answers.
fn parts(req: &ChatRequest, m: &ChatMessage) -> Vec<Value> {
    if m.role() == Role::Tool
        && let Some(name) = req.tool_name(&m.tool_call_id)
    {
        let text = text_of(m);
        // Gemini wants an object: a JSON object result is passed as it is.
        let response = match serde_json::from_str::<Value>(&text) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({ "result": text }),
        };
        return vec![json!({"functionResponse": {"name": name, "response": response}})];
    }
    let mut out = Vec::with_capacity(m.parts.len() + m.tool_calls.len() + m.thinking.len() + 1);
    // Gemini's own thinking blocks go back where they came from: a thought summary as a
    // thought part (its signature on it), a signature without text on the answer's first text
    // part (Gemini gives it on a text part; sending it back is optional there, so one with no
    // text part to go on is left out). Other formats' blocks are not Gemini's to read.
    let mut loose = Vec::new();
    for t in m.thinking.iter().filter(|t| t.origin == super::ORIGIN) {
        if t.text.is_empty() {
            if !t.signature.is_empty() {
                loose.push(t.signature.as_str());
            }
            continue;
        }
        let mut part = json!({ "text": t.text, "thought": true });
        if !t.signature.is_empty() {
            part["thoughtSignature"] = json!(t.signature);
        }
        out.push(part);
    }
    let thoughts = out.len();
    if !m.content.is_empty() || (m.parts.is_empty() && m.tool_calls.is_empty()) {
        out.push(json!({ "text": m.content }));
    }
    for p in &m.parts {
        let part = match &p.part {
            Some(Part::Text(t)) => json!({ "text": t }),
            Some(Part::Image(image)) => match &image.source {
                Some(Source::Url(url)) => json!({
                    "fileData": {"mimeType": image_media_type(image), "fileUri": url},
                }),
                Some(Source::Data(d)) => json!({
                    "inlineData": {"mimeType": image_media_type(image), "data": base64(d)},
                }),
                None => continue,
            },
            Some(Part::File(f)) => json!({
                "inlineData": {"mimeType": f.media_type, "data": base64(&f.data)},
            }),
            None => continue,
        };
        out.push(part);
    }
    if let Some(signature) = loose.first()
        && let Some(text) = out[thoughts..].iter_mut().find(|p| p.get("text").is_some())
    {
        text["thoughtSignature"] = json!(signature);
    }
    out.extend(m.tool_calls.iter().map(|c| {
        let mut part =
            json!({"functionCall": {"name": c.name, "args": arguments_object(&c.arguments)}});
        // Required back on the current turn's calls by Gemini's thinking models.
        if !c.signature.is_empty() {
            part["thoughtSignature"] = json!(c.signature);
        }
        part
    }));
    out
}
