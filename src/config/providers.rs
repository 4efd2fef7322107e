//! The provider catalogue: each `provider/` prefix a deployment's `litellm_params.model` may
//! start with, the wire format it speaks, and its defaults. The OpenAI-compatible shortcuts are
//! just a default `api_base` and key variable on the OpenAI wire format.

/// The wire formats llm-router speaks. Each has a module under `providers/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// `POST {api_base}/chat/completions`, bearer key.
    OpenAi,
    /// `POST {api_base}/openai/deployments/{model}/chat/completions?api-version=`, `api-key`.
    Azure,
    /// `POST {api_base}/v1/messages`, `x-api-key` and `anthropic-version`.
    Anthropic,
    /// `POST {api_base}/models/{model}:generateContent`, `x-goog-api-key`.
    Gemini,
}

#[derive(Debug)]
pub struct ProviderSpec {
    pub prefix: &'static str,
    pub wire: WireFormat,
    /// Used when the deployment gives no `api_base`; `None` means `api_base` is required
    /// (unless `base_env` names a variable that is set).
    pub default_base: Option<&'static str>,
    /// Environment variable read for `api_base` when the deployment gives none (LiteLLM's habit
    /// for Azure).
    pub base_env: Option<&'static str>,
    /// Environment variable read for the key when the deployment gives no `api_key`. Only read
    /// for the provider's own default host (or, with no default host, for any): a key must not
    /// be sent to some other host just because it is in the environment.
    pub key_env: Option<&'static str>,
    /// Whether the provider's own host requires a key. A custom `api_base` (a proxy, a local
    /// server) never requires one.
    pub key_required: bool,
    /// Whether the family's models continue an answer from a final assistant message by
    /// default (LiteLLM's `supports_assistant_prefill`): Anthropic, Mistral and DeepSeek do;
    /// OpenAI answers such a message with a new one.
    pub assistant_prefill: bool,
}

pub const PROVIDERS: &[ProviderSpec] = &[
    ProviderSpec {
        prefix: "openai",
        wire: WireFormat::OpenAi,
        default_base: Some("https://api.openai.com/v1"),
        base_env: None,
        key_env: Some("OPENAI_API_KEY"),
        assistant_prefill: false,
        key_required: true,
    },
    ProviderSpec {
        prefix: "azure",
        wire: WireFormat::Azure,
        default_base: None,
        base_env: Some("AZURE_API_BASE"),
        key_env: Some("AZURE_API_KEY"),
        assistant_prefill: false,
        key_required: true,
    },
    ProviderSpec {
        prefix: "anthropic",
        wire: WireFormat::Anthropic,
        default_base: Some("https://api.anthropic.com"),
        base_env: None,
        key_env: Some("ANTHROPIC_API_KEY"),
        assistant_prefill: true,
        key_required: true,
    },
    ProviderSpec {
        prefix: "gemini",
        wire: WireFormat::Gemini,
        default_base: Some("https://generativelanguage.googleapis.com/v1beta"),
        base_env: None,
        key_env: Some("GEMINI_API_KEY"),
        assistant_prefill: false,
        key_required: true,
    },
    ProviderSpec {
        prefix: "groq",
        wire: WireFormat::OpenAi,
        default_base: Some("https://api.groq.com/openai/v1"),
        base_env: None,
        key_env: Some("GROQ_API_KEY"),
        assistant_prefill: false,
        key_required: true,
    },
    ProviderSpec {
        prefix: "mistral",
        wire: WireFormat::OpenAi,
        default_base: Some("https://api.mistral.ai/v1"),
        base_env: None,
        key_env: Some("MISTRAL_API_KEY"),
        assistant_prefill: true,
        key_required: true,
    },
    ProviderSpec {
        prefix: "deepseek",
        wire: WireFormat::OpenAi,
        default_base: Some("https://api.deepseek.com/v1"),
        base_env: None,
        key_env: Some("DEEPSEEK_API_KEY"),
        assistant_prefill: true,
        key_required: true,
    },
    ProviderSpec {
        prefix: "together_ai",
        wire: WireFormat::OpenAi,
        default_base: Some("https://api.together.xyz/v1"),
        base_env: None,
        key_env: Some("TOGETHERAI_API_KEY"),
        assistant_prefill: false,
        key_required: true,
    },
    ProviderSpec {
        prefix: "ollama",
        wire: WireFormat::OpenAi,
        default_base: Some("http://localhost:11434/v1"),
        base_env: None,
        key_env: None,
        assistant_prefill: false,
        key_required: false,
    },
    ProviderSpec {
        prefix: "vllm",
        wire: WireFormat::OpenAi,
        default_base: None,
        base_env: None,
        key_env: Some("HOSTED_VLLM_API_KEY"),
        assistant_prefill: false,
        key_required: false,
    },
    ProviderSpec {
        prefix: "hosted_vllm",
        wire: WireFormat::OpenAi,
        default_base: None,
        base_env: None,
        key_env: Some("HOSTED_VLLM_API_KEY"),
        assistant_prefill: false,
        key_required: false,
    },
];

/// The Azure OpenAI API version sent when neither the deployment nor `AZURE_API_VERSION` sets
/// one: the current GA version.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

/// Anthropic requires `max_tokens` on every request; this is sent when neither the request nor
/// the deployment's `litellm_params.max_tokens` gives one.
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u32 = 4096;

/// The OpenTelemetry GenAI `gen_ai.provider.name` of a provider prefix.
pub fn semconv_name(prefix: &str) -> &str {
    match prefix {
        "azure" => "azure.ai.openai",
        "gemini" => "gcp.gemini",
        "mistral" => "mistral_ai",
        "mock" => "llm_router.mock",
        other => other,
    }
}

pub fn lookup(prefix: &str) -> Option<&'static ProviderSpec> {
    PROVIDERS.iter().find(|p| p.prefix == prefix)
}

/// Every prefix, for error messages.
pub fn prefixes() -> String {
    let mut names: Vec<&str> = PROVIDERS.iter().map(|p| p.prefix).collect();
    names.push("mock");
    names.join(", ")
}
