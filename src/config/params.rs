//! The `litellm_params` keys llm-router does not read itself: LiteLLM passes them on to the
//! provider (`extra_body`, `reasoning_effort`, `stop`, `thinking`, ...), and a config written
//! for LiteLLM carries them. Each is sorted here, once, at load: into the JSON a deployment's
//! requests start from (named as its wire format names it), or into the list check-config
//! prints of keys with no effect, each with the reason.
//!
//! What a request sets itself always wins over these: they fill only what the request left
//! out (as in LiteLLM, where a call's own arguments override the deployment's).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::ignored::{NO_BUDGETS, NO_TAGS};
use super::providers::WireFormat;

/// LiteLLM proxy features, not provider parameters: never sent, listed with what they mean
/// here.
const NOT_SUPPORTED: &[(&str, &str)] = &[
    (
        "mock_response",
        "a deployment that always answers the same text is a mock/ deployment here; a request's own mock_response works when router_settings.allow_mock_response is on",
    ),
    ("max_budget", NO_BUDGETS),
    ("budget_duration", NO_BUDGETS),
    (
        "stream",
        "each RPC decides: Complete is unary, StreamComplete streams",
    ),
    (
        "drop_params",
        "llm-router sends each provider only the fields of its wire format, and a key set here as given",
    ),
    ("tags", NO_TAGS),
    (
        "metadata",
        "a request's metadata is logged; none is sent to providers",
    ),
    (
        "custom_llm_provider",
        "the provider is the prefix of litellm_params.model",
    ),
    ("base_model", "used by LiteLLM's cost tracking only"),
    (
        "litellm_credential_name",
        "give credentials as api_key (or os.environ/NAME)",
    ),
    (
        "region_name",
        "only request-signing providers use it, and they are not supported yet",
    ),
    (
        "input_cost_per_second",
        "cost is per token here (input_cost_per_token, output_cost_per_token)",
    ),
    (
        "output_cost_per_second",
        "cost is per token here (input_cost_per_token, output_cost_per_token)",
    ),
    (
        "use_in_pass_through",
        "llm-router has no pass-through endpoints",
    ),
    (
        "merge_reasoning_content_in_choices",
        "reasoning text is not carried by the API yet",
    ),
    (
        "cache_control_injection_points",
        "llm-router does not rewrite prompts for caching",
    ),
    ("n", "llm-router asks for one answer per attempt"),
    (
        "model_info",
        "model_info belongs beside litellm_params, not inside it",
    ),
];

/// Keys llm-router sets on every request itself.
const SET_PER_CALL: &[&str] = &["model", "messages", "stream_options", "contents", "system"];

/// LiteLLM's thinking budgets for a `reasoning_effort` on providers that take a token budget:
/// the one table, for deployment defaults here and requests' `reasoning` (`providers::chat`).
pub fn thinking_budget(effort: &str) -> Option<u32> {
    match effort {
        "minimal" | "low" => Some(1024),
        "medium" => Some(2048),
        "high" => Some(4096),
        _ => None,
    }
}

/// A deployment's extra keys, sorted.
#[derive(Debug, Default)]
pub struct Sorted {
    /// Merged into every request body where the request left the field out.
    pub body: Map<String, Value>,
    /// Keys with no effect, each with why.
    pub ignored: Vec<(String, String)>,
    /// Keys whose value is unusable, each with what is wrong.
    pub invalid: Vec<(String, String)>,
}

/// Sorts a deployment's extra `litellm_params` for its wire format. `mock` deployments send
/// nothing anywhere, so every key is ignored there.
pub fn sort(wire: Option<WireFormat>, params: &BTreeMap<String, Value>) -> Sorted {
    let mut out = Sorted::default();
    for (key, value) in params {
        if let Some((_, why)) = NOT_SUPPORTED.iter().find(|(k, _)| k == key) {
            out.ignored.push((key.clone(), (*why).to_string()));
            continue;
        }
        if key.starts_with("aws_") || key.starts_with("vertex_") {
            out.ignored.push((
                key.clone(),
                "credentials of a request-signing provider, which llm-router does not support yet"
                    .into(),
            ));
            continue;
        }
        if SET_PER_CALL.contains(&key.as_str()) {
            out.ignored
                .push((key.clone(), "llm-router sets it on every request".into()));
            continue;
        }
        let Some(wire) = wire else {
            out.ignored.push((
                key.clone(),
                "mock/ deployments send nothing to a provider".into(),
            ));
            continue;
        };
        if key == "extra_body" {
            // Merged last, under the keys given on their own.
            continue;
        }
        match wire {
            // LiteLLM sends what OpenAI does not define to OpenAI-compatible hosts in
            // extra_body, which lands at the top level of the JSON: so does this.
            WireFormat::OpenAi => {
                out.body.insert(key.clone(), value.clone());
            }
            WireFormat::Anthropic => anthropic(key, value, &mut out),
            WireFormat::Gemini => gemini(key, value, &mut out),
        }
    }
    if let Some(extra) = params.get("extra_body") {
        match (wire, extra) {
            (None, _) => {}
            (Some(_), Value::Object(fields)) => {
                let mut body = Value::Object(std::mem::take(&mut out.body));
                fill_absent(&mut body, fields);
                if let Value::Object(map) = body {
                    out.body = map;
                }
            }
            (Some(_), _) => out
                .invalid
                .push(("extra_body".into(), "must be a map of JSON fields".into())),
        }
    }
    out
}

fn stop_list(value: &Value) -> Option<Value> {
    match value {
        Value::String(s) => Some(json!([s])),
        Value::Array(items) if items.iter().all(Value::is_string) => Some(value.clone()),
        _ => None,
    }
}

fn anthropic(key: &str, value: &Value, out: &mut Sorted) {
    match key {
        "temperature" | "top_p" | "top_k" | "thinking" | "service_tier" => {
            out.body.insert(key.to_string(), value.clone());
        }
        "stop" => match stop_list(value) {
            Some(list) => {
                out.body.insert("stop_sequences".into(), list);
            }
            None => out
                .invalid
                .push((key.into(), "must be a string or a list of strings".into())),
        },
        "reasoning_effort" => match value.as_str().and_then(thinking_budget) {
            Some(budget) => {
                out.body
                    .entry("thinking")
                    .or_insert_with(|| json!({"type": "enabled", "budget_tokens": budget}));
            }
            None => out
                .invalid
                .push((key.into(), "must be low, medium or high".into())),
        },
        _ => out.ignored.push((
            key.into(),
            "Anthropic's Messages API has no such field (put raw fields in extra_body)".into(),
        )),
    }
}

fn gemini(key: &str, value: &Value, out: &mut Sorted) {
    let mut generation = |name: &str, v: Value| {
        let config = out
            .body
            .entry("generationConfig")
            .or_insert_with(|| json!({}));
        if let Value::Object(map) = config {
            map.entry(name.to_string()).or_insert(v);
        }
    };
    match key {
        "temperature" => generation("temperature", value.clone()),
        "top_p" => generation("topP", value.clone()),
        "top_k" => generation("topK", value.clone()),
        "seed" => generation("seed", value.clone()),
        "presence_penalty" => generation("presencePenalty", value.clone()),
        "frequency_penalty" => generation("frequencyPenalty", value.clone()),
        "stop" => match stop_list(value) {
            Some(list) => generation("stopSequences", list),
            None => out
                .invalid
                .push((key.into(), "must be a string or a list of strings".into())),
        },
        "reasoning_effort" => match value.as_str().and_then(thinking_budget) {
            Some(budget) => generation("thinkingConfig", json!({"thinkingBudget": budget})),
            None => out
                .invalid
                .push((key.into(), "must be low, medium or high".into())),
        },
        "thinking" => match value.get("budget_tokens").and_then(Value::as_u64) {
            Some(budget) => generation("thinkingConfig", json!({"thinkingBudget": budget})),
            None => out.invalid.push((
                key.into(),
                "must be Anthropic's shape, {type: enabled, budget_tokens: N}".into(),
            )),
        },
        _ => out.ignored.push((
            key.into(),
            "Gemini's generateContent has no such field (put raw fields in extra_body)".into(),
        )),
    }
}

/// Fills `body` with each field of `defaults` it lacks, into nested objects too: what the
/// request set wins.
pub fn fill_absent(body: &mut Value, defaults: &Map<String, Value>) {
    let Value::Object(map) = body else {
        return;
    };
    for (key, default) in defaults {
        match (map.get_mut(key), default) {
            (None, _) => {
                map.insert(key.clone(), default.clone());
            }
            (Some(existing @ Value::Object(_)), Value::Object(inner)) => {
                fill_absent(existing, inner);
            }
            (Some(_), _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(yaml: &[(&str, Value)]) -> BTreeMap<String, Value> {
        yaml.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn openai_hosts_receive_every_provider_key_and_extra_body_at_the_top() {
        let p = params(&[
            ("reasoning_effort", json!("high")),
            ("stop", json!(["END"])),
            ("num_ctx", json!(8192)),
            (
                "extra_body",
                json!({"chat_template_kwargs": {"thinking": true}}),
            ),
            ("max_budget", json!(10)),
            ("stream", json!(true)),
        ]);
        let s = sort(Some(WireFormat::OpenAi), &p);
        assert_eq!(
            Value::Object(s.body),
            json!({
                "reasoning_effort": "high",
                "stop": ["END"],
                "num_ctx": 8192,
                "chat_template_kwargs": {"thinking": true},
            })
        );
        let ignored: Vec<&str> = s.ignored.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(ignored, ["max_budget", "stream"]);
        assert!(s.invalid.is_empty());
    }

    #[test]
    fn anthropic_gets_its_own_names_and_a_thinking_budget() {
        let p = params(&[
            ("reasoning_effort", json!("medium")),
            ("stop", json!("END")),
            ("top_k", json!(5)),
            ("num_ctx", json!(8192)),
        ]);
        let s = sort(Some(WireFormat::Anthropic), &p);
        assert_eq!(
            Value::Object(s.body),
            json!({
                "thinking": {"type": "enabled", "budget_tokens": 2048},
                "stop_sequences": ["END"],
                "top_k": 5,
            })
        );
        assert_eq!(s.ignored.len(), 1, "num_ctx has no Anthropic field");
        // An explicit thinking block wins over reasoning_effort.
        let p = params(&[
            ("reasoning_effort", json!("high")),
            (
                "thinking",
                json!({"type": "enabled", "budget_tokens": 9000}),
            ),
        ]);
        let s = sort(Some(WireFormat::Anthropic), &p);
        assert_eq!(s.body["thinking"]["budget_tokens"], 9000);
    }

    #[test]
    fn gemini_nests_under_generation_config() {
        let p = params(&[
            ("reasoning_effort", json!("low")),
            ("stop", json!(["a", "b"])),
            ("seed", json!(7)),
            ("extra_body", json!({"safetySettings": []})),
        ]);
        let s = sort(Some(WireFormat::Gemini), &p);
        assert_eq!(
            Value::Object(s.body),
            json!({
                "generationConfig": {
                    "thinkingConfig": {"thinkingBudget": 1024},
                    "stopSequences": ["a", "b"],
                    "seed": 7,
                },
                "safetySettings": [],
            })
        );
    }

    #[test]
    fn bad_values_are_reported_and_mock_sends_nothing() {
        let p = params(&[("reasoning_effort", json!("max")), ("extra_body", json!(3))]);
        let s = sort(Some(WireFormat::Anthropic), &p);
        assert_eq!(s.invalid.len(), 2);
        let s = sort(None, &params(&[("temperature", json!(0.2))]));
        assert!(s.body.is_empty());
        assert_eq!(s.ignored.len(), 1);
    }

    #[test]
    fn the_request_wins_over_the_defaults_at_every_depth() {
        let mut body = json!({"temperature": 0.9, "generationConfig": {"topP": 0.5}});
        let defaults = json!({
            "temperature": 0.1,
            "stop": ["x"],
            "generationConfig": {"topP": 0.1, "seed": 3},
        });
        fill_absent(&mut body, defaults.as_object().unwrap());
        assert_eq!(
            body,
            json!({
                "temperature": 0.9,
                "stop": ["x"],
                "generationConfig": {"topP": 0.5, "seed": 3},
            })
        );
    }
}
