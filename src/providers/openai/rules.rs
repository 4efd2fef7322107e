//! What OpenAI's API enforces on a request body beyond its shape, by model: reasoning models
//! (the o-series and the gpt-5 family, but for its `gpt-5-chat` models) refuse `max_tokens`
//! ("Use 'max_completion_tokens' instead") and every sampling parameter but its default, and
//! OpenAI's own API documents `max_completion_tokens` for every chat model, `max_tokens` being
//! deprecated. Other OpenAI-compatible servers keep `max_tokens`, which is what they read.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Family, HttpProvider};
use crate::providers::ChatRequest;

/// LiteLLM's markers for an Azure deployment whose name does not say it is a reasoning model
/// (`azure/o_series/my-deployment`, `azure/gpt5_series/my-deployment`): stripped from the
/// deployment name, which is the URL's.
const AZURE_MARKERS: [&str; 2] = ["o_series/", "gpt5_series/"];

#[derive(Debug)]
pub(super) struct Rules {
    /// The token limit goes as `max_completion_tokens`.
    pub completion_tokens: bool,
    /// The model takes only the default sampling parameters (temperature 1, top_p 1,
    /// penalties 0): any other value is left out of the body.
    pub default_sampling: bool,
    /// Whether leaving sampling parameters out has been logged for this deployment.
    warned: AtomicBool,
}

/// The sampling parameters a reasoning model's body leaves out: those of the request that
/// are set to anything but their default.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
}

impl Rules {
    /// The rules for `model` (for Azure, the deployment name, which LiteLLM's markers may
    /// prefix) at `cfg`'s host, and the model name the request is sent with.
    pub fn new(cfg: &HttpProvider, model: &str) -> (Rules, String) {
        let (model, marked) = match &cfg.family {
            Family::Azure(_) => AZURE_MARKERS
                .iter()
                .find_map(|m| model.strip_prefix(m))
                .map_or((model, false), |rest| (rest, true)),
            _ => (model, false),
        };
        // Only OpenAI's models are known by name: a server of the same wire format hosting a
        // model of its own (vLLM, Groq, ...) is told nothing it did not ask for.
        let openai = cfg.prefix == "openai" || matches!(cfg.family, Family::Azure(_));
        let reasoning = marked || (openai && is_reasoning_model(model));
        let own_host = cfg.prefix == "openai" && is_openai_host(&cfg.api_base);
        (
            Rules {
                completion_tokens: reasoning || own_host,
                default_sampling: reasoning,
                warned: AtomicBool::new(false),
            },
            model.to_string(),
        )
    }

    /// The request's sampling parameters as the body sends them, and (once per deployment) a
    /// warning naming what was left out.
    pub fn sampling(&self, req: &ChatRequest, model: &str) -> Sampling {
        let asked = Sampling {
            temperature: req.temperature,
            top_p: req.top_p,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
        };
        if !self.default_sampling {
            return asked;
        }
        let keep = |v: Option<f32>, default: f32| v.filter(|v| *v == default);
        let sent = Sampling {
            temperature: keep(asked.temperature, 1.0),
            top_p: keep(asked.top_p, 1.0),
            presence_penalty: keep(asked.presence_penalty, 0.0),
            frequency_penalty: keep(asked.frequency_penalty, 0.0),
        };
        if let Some(left_out) = self.first_left_out(&asked, &sent) {
            tracing::warn!(
                model,
                left_out = %left_out,
                "a request set sampling parameters this reasoning model refuses; they are left \
                 out of its requests (logged once per deployment)"
            );
        }
        sent
    }
}

impl Rules {
    /// The names of what `sent` leaves out of `asked`, the first time anything is (the warning
    /// is once per deployment); `None` after, or when nothing is.
    fn first_left_out(&self, asked: &Sampling, sent: &Sampling) -> Option<String> {
        if sent == asked || self.warned.swap(true, Ordering::Relaxed) {
            return None;
        }
        let names: Vec<&str> = [
            ("temperature", asked.temperature, sent.temperature),
            ("top_p", asked.top_p, sent.top_p),
            (
                "presence_penalty",
                asked.presence_penalty,
                sent.presence_penalty,
            ),
            (
                "frequency_penalty",
                asked.frequency_penalty,
                sent.frequency_penalty,
            ),
        ]
        .into_iter()
        .filter(|(_, a, s)| a != s)
        .map(|(name, _, _)| name)
        .collect();
        Some(names.join(", "))
    }
}

/// OpenAI's reasoning models by name: o1, o3, o4-mini, codex-mini and the gpt-5 family (its
/// `-chat` models are not reasoning models and take sampling parameters). A name after
/// a path (`openai/o3` behind a proxy) is read by its last segment.
pub(super) fn is_reasoning_model(model: &str) -> bool {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let o_series = ["o1", "o3", "o4"].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    });
    let gpt5 = name.strip_prefix("gpt-5").is_some_and(|rest| {
        !rest.contains("-chat") && !rest.starts_with(|c: char| c.is_ascii_digit())
    });
    o_series || gpt5 || name.starts_with("codex-mini")
}

/// OpenAI's own API host (not a proxy or a compatible server given as `api_base`).
fn is_openai_host(api_base: &str) -> bool {
    let rest = api_base
        .strip_prefix("https://")
        .unwrap_or_default()
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    rest.eq_ignore_ascii_case("api.openai.com")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_models_are_known_by_name() {
        for m in [
            "o1",
            "o1-mini",
            "o3",
            "o3-mini-2025-01-31",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano-2025-08-07",
            "gpt-5.1",
            "gpt-5.2-codex",
            "GPT-5",
            "openai/o3",
            "codex-mini-latest",
        ] {
            assert!(is_reasoning_model(m), "{m}");
        }
        for m in [
            "gpt-4o",
            "gpt-4.1-mini",
            "gpt-5-chat-latest",
            "gpt-5.1-chat-latest",
            "gpt-50",
            "o1x",
            "ollama-o3",
            "llama-3.1-8b",
            "gpt-3.5-turbo",
        ] {
            assert!(!is_reasoning_model(m), "{m}");
        }
    }

    #[test]
    fn what_is_left_out_is_named_once_per_deployment() {
        let cfg = HttpProvider {
            prefix: "openai",
            family: Family::OpenAi(Default::default()),
            api_base: "https://api.openai.com/v1".into(),
            api_key: None,
            extra_headers: Vec::new(),
            default_max_tokens: None,
            body_defaults: None,
        };
        let (rules, _) = Rules::new(&cfg, "o3");
        let defaults = ChatRequest {
            temperature: Some(1.0),
            ..Default::default()
        };
        let sent = rules.sampling(&defaults, "o3");
        assert_eq!(sent.temperature, Some(1.0));
        assert!(
            !rules.warned.load(Ordering::Relaxed),
            "nothing was left out: no warning yet"
        );
        let refused = ChatRequest {
            temperature: Some(0.5),
            frequency_penalty: Some(0.5),
            presence_penalty: Some(0.0),
            ..Default::default()
        };
        let asked = Sampling {
            temperature: Some(0.5),
            presence_penalty: Some(0.0),
            frequency_penalty: Some(0.5),
            ..Default::default()
        };
        let sent = Sampling {
            presence_penalty: Some(0.0),
            ..Default::default()
        };
        assert_eq!(rules.sampling(&refused, "o3"), sent);
        // The call above took the one warning; any later one is not logged.
        assert_eq!(rules.first_left_out(&asked, &sent), None);
        let (fresh, _) = Rules::new(&cfg, "o3");
        assert_eq!(
            fresh.first_left_out(&asked, &sent).as_deref(),
            Some("temperature, frequency_penalty")
        );
        assert_eq!(fresh.first_left_out(&asked, &sent), None);
    }

    #[test]
    fn only_openai_itself_is_sent_max_completion_tokens_for_every_model() {
        assert!(is_openai_host("https://api.openai.com/v1"));
        assert!(is_openai_host("https://API.openai.com:443/v1"));
        assert!(!is_openai_host("http://api.openai.com.evil/v1"));
        assert!(!is_openai_host("https://proxy.internal/v1"));
        assert!(!is_openai_host("http://127.0.0.1:9/v1"));
    }
}
