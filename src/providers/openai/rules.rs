//! The sampling parameters an OpenAI reasoning model refuses, left out of its bodies (which
//! models: `config::OpenAiRules`), with the warning that says so once per deployment.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{HttpProvider, OpenAiRules};
use crate::providers::ChatRequest;

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
        // Only OpenAI-format deployments are built here.
        let rules = OpenAiRules::new(cfg.prefix, &cfg.api_base, model);
        (
            Rules {
                completion_tokens: rules.completion_tokens,
                default_sampling: rules.default_sampling,
                warned: AtomicBool::new(false),
            },
            rules.model,
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::Family;
    use crate::config::providers::is_openai_reasoning_model;

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
            assert!(is_openai_reasoning_model(m), "{m}");
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
            assert!(!is_openai_reasoning_model(m), "{m}");
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
        let tokens = |base: &str| OpenAiRules::new("openai", base, "gpt-4o").completion_tokens;
        assert!(tokens("https://api.openai.com/v1"));
        assert!(tokens("https://API.openai.com:443/v1"));
        assert!(!tokens("http://api.openai.com.evil/v1"));
        assert!(!tokens("https://api.openai.com.evil/v1"));
        assert!(!tokens("https://proxy.internal/v1"));
        assert!(!OpenAiRules::new("groq", "https://api.openai.com/v1", "o3").completion_tokens);
    }
}
