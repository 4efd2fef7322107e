//! The provider catalogue: each `provider/` prefix a deployment's `litellm_params.model` may
//! start with, the API it speaks (and through it, the wire format), and its defaults. The OpenAI-compatible shortcuts are
//! just a default `api_base` and key variable on the OpenAI wire format.

/// The body and event formats llm-router speaks: what a request body and a streamed answer
/// look like, whoever hosts the model. Each has a module under `providers/`, whose body builder
/// and event parser another host of the same family (a cloud endpoint) can reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// OpenAI's chat completions.
    OpenAi,
    /// Anthropic's Messages.
    Anthropic,
    /// Google's generateContent.
    Gemini,
}

/// The provider API a catalogue entry speaks: where a request goes and how it is proven, over
/// its [`WireFormat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST {api_base}/chat/completions`, bearer key.
    OpenAi,
    /// `POST {api_base}/openai/deployments/{model}/chat/completions?api-version=`, `api-key`.
    Azure,
    /// `POST {api_base}/v1/messages`, `x-api-key` and `anthropic-version`.
    Anthropic,
    /// `POST {api_base}/models/{model}:generateContent`, `x-goog-api-key`.
    Gemini,
}

impl Api {
    pub fn wire(self) -> WireFormat {
        match self {
            Api::OpenAi | Api::Azure => WireFormat::OpenAi,
            Api::Anthropic => WireFormat::Anthropic,
            Api::Gemini => WireFormat::Gemini,
        }
    }
}

#[derive(Debug)]
pub struct ProviderSpec {
    pub prefix: &'static str,
    pub api: Api,
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
    /// Appended to a configured `api_base` that lacks it: LiteLLM configs give Ollama's bare
    /// host (`http://localhost:11434`), and its OpenAI-compatible API is under `/v1`.
    pub base_suffix: Option<&'static str>,
}

/// An OpenAI-compatible host: a default base and key variable on the OpenAI wire format.
const fn compatible(
    prefix: &'static str,
    default_base: Option<&'static str>,
    key_env: Option<&'static str>,
    key_required: bool,
) -> ProviderSpec {
    ProviderSpec {
        prefix,
        api: Api::OpenAi,
        default_base,
        base_env: None,
        key_env,
        key_required,
        assistant_prefill: false,
        base_suffix: None,
    }
}

impl ProviderSpec {
    /// The family's models continue an answer from an assistant prefill.
    const fn with_prefill(mut self) -> Self {
        self.assistant_prefill = true;
        self
    }

    /// Appends `suffix` to a configured `api_base` that lacks it.
    const fn with_base_suffix(mut self, suffix: &'static str) -> Self {
        self.base_suffix = Some(suffix);
        self
    }
}

pub const PROVIDERS: &[ProviderSpec] = &[
    compatible(
        "openai",
        Some("https://api.openai.com/v1"),
        Some("OPENAI_API_KEY"),
        true,
    ),
    ProviderSpec {
        prefix: "azure",
        api: Api::Azure,
        default_base: None,
        base_env: Some("AZURE_API_BASE"),
        key_env: Some("AZURE_API_KEY"),
        assistant_prefill: false,
        key_required: true,
        base_suffix: None,
    },
    ProviderSpec {
        prefix: "anthropic",
        api: Api::Anthropic,
        default_base: Some("https://api.anthropic.com"),
        base_env: None,
        key_env: Some("ANTHROPIC_API_KEY"),
        assistant_prefill: true,
        key_required: true,
        base_suffix: None,
    },
    ProviderSpec {
        prefix: "gemini",
        api: Api::Gemini,
        default_base: Some("https://generativelanguage.googleapis.com/v1beta"),
        base_env: None,
        key_env: Some("GEMINI_API_KEY"),
        assistant_prefill: false,
        key_required: true,
        base_suffix: None,
    },
    compatible(
        "groq",
        Some("https://api.groq.com/openai/v1"),
        Some("GROQ_API_KEY"),
        true,
    ),
    compatible(
        "mistral",
        Some("https://api.mistral.ai/v1"),
        Some("MISTRAL_API_KEY"),
        true,
    )
    .with_prefill(),
    compatible(
        "deepseek",
        Some("https://api.deepseek.com/v1"),
        Some("DEEPSEEK_API_KEY"),
        true,
    )
    .with_prefill(),
    compatible(
        "together_ai",
        Some("https://api.together.xyz/v1"),
        Some("TOGETHERAI_API_KEY"),
        true,
    ),
    compatible("ollama", Some("http://localhost:11434/v1"), None, false).with_base_suffix("/v1"),
    compatible("vllm", None, Some("HOSTED_VLLM_API_KEY"), false),
    compatible("hosted_vllm", None, Some("HOSTED_VLLM_API_KEY"), false),
    // LiteLLM's ollama_chat/ speaks Ollama's /api/chat; llm-router reaches the same server
    // through its OpenAI-compatible API.
    compatible(
        "ollama_chat",
        Some("http://localhost:11434/v1"),
        None,
        false,
    )
    .with_base_suffix("/v1"),
    compatible(
        "openrouter",
        Some("https://openrouter.ai/api/v1"),
        Some("OPENROUTER_API_KEY"),
        true,
    ),
    compatible(
        "xai",
        Some("https://api.x.ai/v1"),
        Some("XAI_API_KEY"),
        true,
    ),
    compatible(
        "perplexity",
        Some("https://api.perplexity.ai"),
        Some("PERPLEXITYAI_API_KEY"),
        true,
    ),
    compatible(
        "moonshot",
        Some("https://api.moonshot.ai/v1"),
        Some("MOONSHOT_API_KEY"),
        true,
    ),
    compatible(
        "fireworks_ai",
        Some("https://api.fireworks.ai/inference/v1"),
        Some("FIREWORKS_AI_API_KEY"),
        true,
    ),
    compatible(
        "deepinfra",
        Some("https://api.deepinfra.com/v1/openai"),
        Some("DEEPINFRA_API_KEY"),
        true,
    ),
    compatible(
        "cerebras",
        Some("https://api.cerebras.ai/v1"),
        Some("CEREBRAS_API_KEY"),
        true,
    ),
    compatible(
        "sambanova",
        Some("https://api.sambanova.ai/v1"),
        Some("SAMBANOVA_API_KEY"),
        true,
    ),
    compatible(
        "nvidia_nim",
        Some("https://integrate.api.nvidia.com/v1"),
        Some("NVIDIA_NIM_API_KEY"),
        true,
    ),
    compatible(
        "dashscope",
        Some("https://dashscope-intl.aliyuncs.com/compatible-mode/v1"),
        Some("DASHSCOPE_API_KEY"),
        true,
    ),
    compatible(
        "codestral",
        Some("https://codestral.mistral.ai/v1"),
        Some("CODESTRAL_API_KEY"),
        true,
    ),
    compatible(
        "lm_studio",
        Some("http://localhost:1234/v1"),
        Some("LM_STUDIO_API_KEY"),
        false,
    ),
    compatible("llamafile", Some("http://127.0.0.1:8080/v1"), None, false),
    // Any OpenAI-compatible server at api_base.
    compatible("custom_openai", None, None, false),
    compatible("openai_like", None, None, false),
    // Azure AI Foundry's model inference endpoint (OpenAI's shape under the base).
    compatible("azure_ai", None, Some("AZURE_AI_API_KEY"), true),
    // Another LiteLLM proxy (or llm-router's own OpenAI-compatible peers).
    compatible("litellm_proxy", None, Some("LITELLM_PROXY_API_KEY"), false),
];

/// Providers LiteLLM reaches by signing each request (AWS SigV4, Google service accounts),
/// which llm-router does not do yet: a deployment on one is refused (or skipped when its group
/// has others), with this said.
pub const SIGNED: &[&str] = &[
    "bedrock",
    "bedrock_converse",
    "sagemaker",
    "sagemaker_chat",
    "vertex_ai",
    "vertex_ai_beta",
];

/// Why a deployment on a request-signing provider cannot be served yet.
pub fn signed_reason(prefix: &str) -> String {
    format!(
        "`{prefix}/` needs request signing (AWS SigV4 or Google credentials), which llm-router does not support yet; reach the model through an OpenAI-compatible endpoint, or gemini/ for Google AI Studio"
    )
}

/// How `litellm_params.model` names its provider.
#[derive(Debug, PartialEq, Eq)]
pub enum Model<'a> {
    /// `provider/model`, or a bare model name whose provider LiteLLM infers.
    Known { prefix: &'a str, model: &'a str },
    /// A provider that needs request signing (see [`SIGNED`]).
    Signed { prefix: &'a str },
    /// A name LiteLLM would send somewhere llm-router cannot go, with why.
    Unsupported(String),
}

/// Resolves `litellm_params.model`: `provider/model`, or a bare name as LiteLLM infers its
/// provider (OpenAI's `gpt-`, `o1`.. names and `chatgpt-`; Anthropic's `claude-`; a bare
/// `gemini-` name goes to Vertex AI in LiteLLM).
pub fn resolve_model(model: &str) -> Model<'_> {
    if let Some((prefix, rest)) = model.split_once('/')
        && !prefix.is_empty()
        && !rest.is_empty()
        && (prefix == "mock" || lookup(prefix).is_some() || SIGNED.contains(&prefix))
    {
        return if SIGNED.contains(&prefix) {
            Model::Signed { prefix }
        } else {
            Model::Known {
                prefix,
                model: rest,
            }
        };
    }
    let openai = ["gpt-", "chatgpt-", "o1", "o3", "o4", "ft:gpt-"];
    if openai.iter().any(|p| model.starts_with(p)) {
        return Model::Known {
            prefix: "openai",
            model,
        };
    }
    if model.starts_with("claude-") {
        return Model::Known {
            prefix: "anthropic",
            model,
        };
    }
    if model.starts_with("gemini-") {
        return Model::Signed {
            prefix: "vertex_ai",
        };
    }
    Model::Unsupported(match model.split_once('/') {
        Some((prefix, _)) if !prefix.is_empty() => {
            format!(
                "unknown provider `{prefix}`; supported: {} (any other OpenAI-compatible host: custom_openai/ with its api_base)",
                prefixes()
            )
        }
        _ => format!(
            "`{model}` names no provider: write `provider/model`, e.g. `openai/gpt-4o-mini` or `mock/fast` (LiteLLM infers one only for gpt-, o1/o3/o4 and claude- names)"
        ),
    })
}

/// What OpenAI's API enforces on a deployment's request bodies, by its model: reasoning models
/// (the o-series and the gpt-5 family, but its `-chat` models) refuse `max_tokens` ("Use
/// 'max_completion_tokens' instead") and any sampling parameter but its default; OpenAI's own
/// API documents `max_completion_tokens` for every chat model (`max_tokens` is deprecated).
/// Other OpenAI-compatible servers keep `max_tokens`, which is what they read, and are sent
/// what the request set whatever their model is called. Decided here once, for the body
/// builder, the capability default and check-config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiRules {
    /// The token limit goes as `max_completion_tokens`.
    pub completion_tokens: bool,
    /// Only the default sampling parameters are sent (temperature and top_p 1, penalties 0).
    pub default_sampling: bool,
    /// The model name requests are sent with (for Azure, the deployment name, also in the
    /// URL): without LiteLLM's `o_series/` or `gpt5_series/` marker.
    pub model: String,
}

/// LiteLLM's markers for an Azure deployment whose name does not say it is a reasoning model
/// (`azure/o_series/my-deployment`, `azure/gpt5_series/my-deployment`).
const AZURE_REASONING_MARKERS: [&str; 2] = ["o_series/", "gpt5_series/"];

impl OpenAiRules {
    /// The rules for a deployment of `model` on `h`, when it speaks OpenAI's wire format.
    pub fn of(h: &super::HttpProvider, model: &str) -> Option<OpenAiRules> {
        (h.family.api().wire() == WireFormat::OpenAi)
            .then(|| OpenAiRules::new(h.prefix, &h.api_base, model))
    }

    /// The rules for `model` under `prefix` at `api_base` (`azure` for Azure OpenAI).
    pub fn new(prefix: &str, api_base: &str, model: &str) -> OpenAiRules {
        let (model, marked) = match prefix {
            "azure" => AZURE_REASONING_MARKERS
                .iter()
                .find_map(|m| model.strip_prefix(m))
                .map_or((model, false), |rest| (rest, true)),
            _ => (model, false),
        };
        let reasoning = marked || (is_openai(prefix) && is_openai_reasoning_model(model));
        let own_host = prefix == "openai" && is_openai_host(api_base);
        OpenAiRules {
            completion_tokens: reasoning || own_host,
            default_sampling: reasoning,
            model: model.to_string(),
        }
    }
}

/// OpenAI's own models: reached through `openai/` or `azure/`.
fn is_openai(prefix: &str) -> bool {
    matches!(prefix, "openai" | "azure")
}

/// OpenAI's reasoning models by name: o1, o3, o4-mini, codex-mini and the gpt-5 family (its
/// `-chat` models are not reasoning models and take sampling parameters). A name after a
/// path (`openai/o3` behind a proxy) is read by its last segment.
pub fn is_openai_reasoning_model(model: &str) -> bool {
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
    api_base
        .strip_prefix("https://")
        .unwrap_or_default()
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
        .eq_ignore_ascii_case("api.openai.com")
}

/// What a deployment can do by default, as far as its provider and model name tell: the big
/// three families' current models take tools, images and JSON schemas, and their reasoning
/// models (by name) a reasoning setting; other OpenAI-compatible hosts take tools only (set
/// `model_info.supports_*` for what a server offers); the mock takes everything.
pub fn default_capabilities(prefix: &str, model: &str) -> super::Capabilities {
    let m = model.to_ascii_lowercase();
    let reasoning = match prefix {
        "openai" | "azure" => OpenAiRules::new(prefix, "", model).default_sampling,
        "anthropic" => ["claude-3-7", "sonnet-4", "opus-4", "haiku-4"]
            .iter()
            .any(|p| m.contains(p)),
        "gemini" => m.starts_with("gemini-2.5") || m.starts_with("gemini-3"),
        _ => false,
    };
    match prefix {
        "openai" | "azure" | "anthropic" | "gemini" => super::Capabilities {
            function_calling: true,
            vision: true,
            response_schema: true,
            reasoning,
            image_urls: prefix != "gemini",
        },
        // The mock takes everything: it makes up tool calls and JSON, and ignores the rest.
        "mock" => super::Capabilities {
            function_calling: true,
            vision: true,
            response_schema: true,
            reasoning: true,
            image_urls: true,
        },
        _ => super::Capabilities {
            function_calling: true,
            image_urls: true,
            ..Default::default()
        },
    }
}

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
