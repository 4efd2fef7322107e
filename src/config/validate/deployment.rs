//! `model_list` entries: each deployment, its provider's settings and its secrets.

use super::*;
use crate::config::raw::RawModelInfo;

/// A deployment on a provider llm-router cannot reach yet: refused, unless its group has
/// others (then skipped with a warning), which is only known once every entry is read.
pub(super) struct Skipped {
    pub(super) index: usize,
    pub(super) group: String,
    pub(super) reason: String,
}

pub(super) fn deployment(
    i: usize,
    d: &RawDeployment,
    position: usize,
    router: &RouterSettings,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
    skipped: &mut Vec<Skipped>,
) -> Option<Deployment> {
    let key = |k: &str| format!("model_list[{i}].{k}");
    let group = match d.model_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => {
            errs.add(
                key("model_name"),
                "is required: the group name clients send as `model`",
            );
            return None;
        }
    };
    let Some(params) = &d.litellm_params else {
        errs.add(key("litellm_params"), "is required");
        return None;
    };
    let (provider, upstream_model) = match params.model.as_deref().map(providers::resolve_model) {
        Some(providers::Model::Known { prefix, model }) => (prefix, model),
        Some(providers::Model::Signed { prefix }) => {
            skipped.push(Skipped {
                index: i,
                group,
                reason: providers::signed_reason(prefix),
            });
            return None;
        }
        Some(providers::Model::Unsupported(why)) => {
            errs.add(key("litellm_params.model"), why);
            return None;
        }
        None => {
            errs.add(
                key("litellm_params.model"),
                "is required as `provider/model`, e.g. `openai/gpt-4o-mini` or `mock/fast`",
            );
            return None;
        }
    };

    // LiteLLM's wildcard routes (`model_name: openai/*`, `model: openai/*`) forward the
    // requested model's name to the provider; until llm-router expands them, say plainly what
    // such an entry does here, rather than refuse a file LiteLLM loads.
    if group.contains('*') || upstream_model.contains('*') {
        errs.warn(format!(
            "`{}`: `{group}` is a LiteLLM wildcard route, which llm-router does not expand yet: \
             the group answers only requests whose model is exactly `{group}`, and sends the \
             provider the model name `{upstream_model}`",
            key("model_name")
        ));
    }

    let (timeout, stream_timeout, max_retries) = attempt_limits(&key, params, router, errs);
    let weight = capacity(&key, params, errs);

    let (provider_config, prefill_by_default) =
        provider_config(provider, params, &key, lookup_env, errs)?;

    let id = match d.model_info.id.as_deref().map(str::trim) {
        Some("") => {
            errs.add(key("model_info.id"), "must not be empty");
            return None;
        }
        Some(id) => id.to_string(),
        None => format!("{group}/{position}"),
    };

    let info = &d.model_info;
    if info.max_input_tokens == Some(0) {
        errs.add(key("model_info.max_input_tokens"), "must be at least 1");
    }
    let cost = cost(&key, info, params, errs);

    Some(Deployment {
        id,
        group,
        provider: provider_config,
        upstream_model: upstream_model.to_string(),
        timeout,
        stream_timeout,
        max_retries,
        weight,
        rpm: params.rpm,
        tpm: params.tpm,
        // LiteLLM's cap when max_parallel_requests is unset: rpm, else tpm / 6000
        // (calculate_max_parallel_requests).
        max_parallel_requests: params
            .max_parallel_requests
            .or(params.rpm)
            .or_else(|| {
                params
                    .tpm
                    .map(|t| u32::try_from(t / 6000).unwrap_or(u32::MAX).max(1))
            })
            .or(router.default_max_parallel_requests),
        cooldown_time: params
            .cooldown_time
            .unwrap_or(router.cooldowns.cooldown_time),
        supports_assistant_prefill: d
            .model_info
            .supports_assistant_prefill
            .unwrap_or(prefill_by_default),
        max_input_tokens: info.max_input_tokens,
        cost,
        // Set once the group is complete.
        alone_in_group: false,
        capabilities: capabilities(provider, upstream_model, info),
        // Its own `ssl_*` keys are read by `model_list`.
        tls: router.tls.clone(),
    })
}

/// The attempt limit (the deployment's own, else LiteLLM's per-attempt `request_timeout`, else
/// the whole call's deadline), the first-chunk limit and the retries.
fn attempt_limits(
    key: &dyn Fn(&str) -> String,
    params: &RawLitellmParams,
    router: &RouterSettings,
    errs: &mut Errors,
) -> (Duration, Option<Duration>, u32) {
    let timeout = errs
        .positive(&key("litellm_params.timeout"), params.timeout)
        .or(router.attempt_timeout)
        .unwrap_or(router.timeout);
    if params.timeout.is_some() && timeout > router.timeout {
        // Not an error: the call's total deadline caps it anyway. Worth saying, though.
        errs.warn(format!(
            "`{}` ({}) is longer than router_settings.timeout ({}), which caps it",
            key("litellm_params.timeout"),
            crate::config::duration::display(timeout),
            crate::config::duration::display(router.timeout)
        ));
    }
    let stream_timeout = errs
        .positive(&key("litellm_params.stream_timeout"), params.stream_timeout)
        .or(router.stream_timeout);
    // LiteLLM's deployment-level num_retries retries the same call: max_retries here.
    let (max_retries, retries_key) = match (params.max_retries, params.num_retries) {
        (Some(n), _) => (n, "max_retries"),
        (None, Some(n)) => (n, "num_retries"),
        (None, None) => (router.num_retries, "max_retries"),
    };
    if max_retries > MAX_RETRIES_LIMIT {
        errs.add(
            key(&format!("litellm_params.{retries_key}")),
            format!("must be at most {MAX_RETRIES_LIMIT}"),
        );
    }
    (timeout, stream_timeout, max_retries)
}

/// The weight (0 until the group's weights are settled) and the capacity limits' checks.
fn capacity(key: &dyn Fn(&str) -> String, params: &RawLitellmParams, errs: &mut Errors) -> u32 {
    // 0 stands for "not set" until the group's weights are settled (see shuffle_weights).
    let weight = params.weight.unwrap_or(0);
    if params.weight == Some(0) {
        errs.add(key("litellm_params.weight"), "must be at least 1");
    }
    for (value, name) in [
        (params.rpm.map(u64::from), "rpm"),
        (params.tpm, "tpm"),
        (
            params.max_parallel_requests.map(u64::from),
            "max_parallel_requests",
        ),
    ] {
        if value == Some(0) {
            errs.add(key(&format!("litellm_params.{name}")), "must be at least 1");
        }
    }
    weight
}

/// The deployment's provider: the mock, or an HTTP provider of the catalogue with its base,
/// key, headers and family settings. Also whether its models continue an assistant prefill by
/// default.
fn provider_config(
    provider: &str,
    params: &RawLitellmParams,
    key: &dyn Fn(&str) -> String,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> Option<(ProviderConfig, bool)> {
    // The mock continues any prefix of its own answer (see MockProvider).
    let mut prefill_by_default = true;
    let provider_config = if provider == "mock" {
        for (set, name) in [
            (params.api_base.is_some(), "api_base"),
            (params.api_key.is_some(), "api_key"),
            (params.api_version.is_some(), "api_version"),
            (params.organization.is_some(), "organization"),
            (params.extra_headers.is_some(), "extra_headers"),
        ] {
            if set {
                errs.add(
                    key(&format!("litellm_params.{name}")),
                    "mock deployments take no {name}".replace("{name}", name),
                );
            }
        }
        extra_params(key, None, params, errs);
        ProviderConfig::Mock(mock_spec(
            &key("litellm_params.mock"),
            params.mock.as_ref(),
            errs,
        ))
    } else {
        let Some(spec) = providers::lookup(provider) else {
            // resolve_model only answers Known with a catalogued prefix.
            errs.add(
                key("litellm_params.model"),
                format!("unknown provider `{provider}`"),
            );
            return None;
        };
        if params.mock.is_some() {
            errs.add(
                key("litellm_params.mock"),
                "only mock/ deployments take a mock block",
            );
        }
        prefill_by_default = spec.assistant_prefill;
        let mut http = http_provider(spec, params, key, lookup_env, errs);
        let defaults = extra_params(key, Some(spec.api.wire()), params, errs);
        http.body_defaults = (!defaults.is_empty()).then(|| Arc::new(defaults));
        ProviderConfig::Http(http)
    };
    Some((provider_config, prefill_by_default))
}

/// The price per token, from `model_info` or `litellm_params`, when one is set.
fn cost(
    key: &dyn Fn(&str) -> String,
    info: &RawModelInfo,
    params: &RawLitellmParams,
    errs: &mut Errors,
) -> Option<Cost> {
    let price = |info_value: Option<f64>, param: Option<f64>, name: &str, errs: &mut Errors| {
        let (value, at) = match (info_value, param) {
            (Some(v), _) => (Some(v), format!("model_info.{name}")),
            (None, v) => (v, format!("litellm_params.{name}")),
        };
        if let Some(v) = value
            && !(v.is_finite() && (0.0..=1.0).contains(&v))
        {
            errs.add(key(&at), "must be a price in USD per token, from 0 to 1");
        }
        value
    };
    let input_cost = price(
        info.input_cost_per_token,
        params.input_cost_per_token,
        "input_cost_per_token",
        errs,
    );
    let output_cost = price(
        info.output_cost_per_token,
        params.output_cost_per_token,
        "output_cost_per_token",
        errs,
    );
    (input_cost.is_some() || output_cost.is_some()).then(|| Cost {
        input: input_cost.unwrap_or(0.0),
        output: output_cost.unwrap_or(0.0),
    })
}

/// What the deployment can do: its provider's defaults for the model, with `model_info`'s
/// `supports_*` over them.
fn capabilities(provider: &str, upstream_model: &str, info: &RawModelInfo) -> Capabilities {
    let by_default = providers::default_capabilities(provider, upstream_model);
    Capabilities {
        function_calling: info
            .supports_function_calling
            .unwrap_or(by_default.function_calling),
        vision: info.supports_vision.unwrap_or(by_default.vision),
        response_schema: info
            .supports_response_schema
            .unwrap_or(by_default.response_schema),
        reasoning: info.supports_reasoning.unwrap_or(by_default.reasoning),
        image_urls: by_default.image_urls,
    }
}

/// Sorts the deployment's `litellm_params` llm-router has no field for: a typo of one it has
/// is an error; the rest become request defaults for its wire format, or ignored keys with
/// why. Returns the request defaults.
fn extra_params(
    key: &dyn Fn(&str) -> String,
    wire: Option<WireFormat>,
    params: &RawLitellmParams,
    errs: &mut Errors,
) -> serde_json::Map<String, serde_json::Value> {
    let mut others = params.other.clone();
    others.retain(|name, _| match litellm_param_typo(name) {
        Some(known) => {
            // Close to a key llm-router reads: a typo, which must not pass silently.
            errs.add(
                key(&format!("litellm_params.{name}")),
                format!("unknown key; did you mean `{known}`?"),
            );
            false
        }
        None => true,
    });
    let sorted = params::sort(wire, &others);
    for (name, why) in sorted.ignored {
        errs.ignore(key(&format!("litellm_params.{name}")), why);
    }
    for (name, why) in sorted.invalid {
        errs.add(key(&format!("litellm_params.{name}")), why);
    }
    sorted.body
}

/// Resolves an HTTP provider's base URL, key, headers and provider-specific settings.
fn http_provider(
    spec: &'static ProviderSpec,
    params: &RawLitellmParams,
    key: &dyn Fn(&str) -> String,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> HttpProvider {
    let base_key = key("litellm_params.api_base");
    let from_env = || {
        spec.base_env
            .and_then(|var| lookup_env(var).filter(|v| !v.is_empty()))
    };
    // `os.environ/NAME` works here as for keys (an unset variable is reported once, and the
    // base is then left empty rather than reported missing too).
    let configured = params
        .api_base
        .as_deref()
        .map(|v| env_string(v, &base_key, lookup_env, errs).unwrap_or_default());
    let api_base = match configured.or_else(from_env) {
        Some(base) => {
            let base = base.trim_end_matches('/');
            match spec.base_suffix {
                Some(suffix) if !base.is_empty() && !base.ends_with(suffix) => {
                    format!("{base}{suffix}")
                }
                _ => base.to_string(),
            }
        }
        None => match spec.default_base {
            Some(base) => base.to_string(),
            None => {
                let hint = spec
                    .base_env
                    .map(|v| format!(" (or set {v})"))
                    .unwrap_or_default();
                errs.add(
                    &base_key,
                    format!("is required for {}/ deployments{hint}", spec.prefix),
                );
                String::new()
            }
        },
    };
    if !api_base.is_empty() {
        match url::Url::parse(&api_base) {
            // A password in the URL would be shown wherever the base is (check-config, logs,
            // attempt details), and sent to whatever host the URL names.
            Ok(url) if !url.username().is_empty() || url.password().is_some() => errs.add(
                &base_key,
                "must not carry credentials (`user:password@host`): give the key as api_key (or os.environ/NAME), or in extra_headers",
            ),
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host().is_some()
                    && url.query().is_none() => {}
            // Not echoed when it may hold credentials.
            _ if api_base.contains('@') => {
                errs.add(&base_key, "is not an http(s) base URL")
            }
            _ => errs.add(
                &base_key,
                format!("`{api_base}` is not an http(s) base URL"),
            ),
        }
    }

    let key_key = key("litellm_params.api_key");
    let own_host = spec.default_base.is_none_or(|default| api_base == default);
    let api_key = match params.api_key.as_deref() {
        Some(value) => resolve_secret(value, &key_key, lookup_env, errs),
        None if own_host => spec
            .key_env
            .and_then(|var| lookup_env(var).filter(|v| !v.is_empty()))
            .map(Secret::new),
        None => None,
    };
    if api_key.is_none() && params.api_key.is_none() && own_host && spec.key_required {
        let hint = spec
            .key_env
            .map(|v| format!(", and {v} is not set in the environment"))
            .unwrap_or_default();
        errs.add(
            &key_key,
            format!("is required for {}/ deployments{hint}", spec.prefix),
        );
    }

    if params.api_version.is_some() && spec.api != Api::Azure {
        errs.add(
            key("litellm_params.api_version"),
            "only azure/ deployments take api_version",
        );
    }
    if params.organization.is_some() && spec.api != Api::OpenAi {
        errs.add(
            key("litellm_params.organization"),
            "only OpenAI-compatible deployments take organization",
        );
    }
    let family = match spec.api {
        Api::OpenAi => Family::OpenAi(OpenAiSettings {
            organization: params
                .organization
                .as_deref()
                .and_then(|v| env_string(v, &key("litellm_params.organization"), lookup_env, errs)),
        }),
        Api::Azure => {
            let version_key = key("litellm_params.api_version");
            Family::Azure(AzureSettings {
                api_version: params
                    .api_version
                    .as_deref()
                    .and_then(|v| env_string(v, &version_key, lookup_env, errs))
                    .or_else(|| lookup_env("AZURE_API_VERSION").filter(|v| !v.is_empty()))
                    .unwrap_or_else(|| DEFAULT_AZURE_API_VERSION.to_string()),
            })
        }
        Api::Anthropic => Family::Anthropic,
        Api::Gemini => Family::Gemini,
    };
    if params.max_tokens == Some(0) {
        errs.add(key("litellm_params.max_tokens"), "must be at least 1");
    }

    let mut extra_headers = Vec::new();
    for (name, value) in params.extra_headers.iter().flatten() {
        let here = key(&format!("litellm_params.extra_headers.{name}"));
        if http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.add(&here, "is not a valid HTTP header name");
            continue;
        }
        if let Some(v) = resolve_secret(value, &here, lookup_env, errs) {
            if http::header::HeaderValue::from_str(v.expose()).is_err() {
                errs.add(&here, "is not a valid HTTP header value");
            } else {
                extra_headers.push((name.to_ascii_lowercase(), v));
            }
        }
    }

    HttpProvider {
        prefix: spec.prefix,
        family,
        api_base,
        api_key,
        extra_headers,
        default_max_tokens: params.max_tokens,
        body_defaults: None,
    }
}

/// A literal value, or `os.environ/NAME` read from the environment.
/// A literal value, or `os.environ/NAME` read from the environment (LiteLLM's form, which its
/// configs use in any string field: bases, versions, organizations as well as keys).
fn env_string(
    value: &str,
    key: &str,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> Option<String> {
    resolve_secret(value, key, lookup_env, errs).map(|s| s.expose().to_string())
}

fn mock_spec(key: &str, raw: Option<&RawMock>, errs: &mut Errors) -> MockSpec {
    let empty = RawMock::default();
    let m = raw.unwrap_or(&empty);
    let tokens_per_second = m.tokens_per_second.unwrap_or(200.0);
    // Bounded so that the per-token interval is a sane Duration.
    if !(tokens_per_second.is_finite() && (0.01..=1_000_000.0).contains(&tokens_per_second)) {
        errs.add(
            format!("{key}.tokens_per_second"),
            "must be a number from 0.01 to 1000000",
        );
    }
    let failure = m.failure.as_deref().and_then(|f| {
        let parsed = MockFailure::parse(f);
        if parsed.is_none() {
            errs.add(
                format!("{key}.failure"),
                format!("`{f}` is not one of: {}", MockFailure::NAMES.join(", ")),
            );
        }
        parsed
    });
    MockSpec {
        time_to_first_chunk: m.time_to_first_chunk.unwrap_or(Duration::from_millis(20)),
        tokens_per_second,
        text: m
            .text
            .clone()
            .unwrap_or_else(|| "This is a mock response from llm-router.".to_string()),
        failure,
    }
}
