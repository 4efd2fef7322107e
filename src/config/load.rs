//! Loading: the config text (built in, a file, or YAML given), layered with `LLMROUTER__`
//! environment overrides, deserialized into the raw structs with every unused key's path
//! kept (the errors and the ignored keys name them), then handed to validation.

use std::{collections::BTreeMap, fmt, path::Path};

use super::{Config, DEFAULT_CONFIG_YAML, ENV_PREFIX, raw, validate};

/// Where the config text comes from.
#[derive(Debug, Clone)]
pub enum Source<'a> {
    /// The compiled-in `config/default.yaml`.
    BuiltIn,
    File(&'a Path),
    /// YAML text, for tests and tools.
    Yaml(&'a str),
}

/// Why a config could not be loaded. Start-up errors, apart from request errors.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read or is not valid YAML.
    Load(String),
    /// One or more keys are wrong; each names its key path.
    Invalid(Vec<KeyError>),
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Load(msg) => write!(f, "cannot load config: {msg}"),
            ConfigError::Invalid(errors) => {
                write!(f, "invalid config ({} problem(s)):", errors.len())?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads, layers environment overrides from the process environment, and validates.
    pub fn load(source: Source<'_>) -> Result<Config, ConfigError> {
        Self::load_with_env(source, std::env::vars(), |name| std::env::var(name).ok())
    }

    /// As [`Config::load`], with the environment given explicitly (tests use this so they never
    /// depend on, or change, the process environment).
    pub fn load_with_env(
        source: Source<'_>,
        overrides: impl IntoIterator<Item = (String, String)>,
        lookup_env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        use config::{FileFormat, builder::DefaultState};

        let mut builder = config::ConfigBuilder::<DefaultState>::default();
        builder = match source {
            Source::BuiltIn => builder.add_source(config::File::from_str(
                DEFAULT_CONFIG_YAML,
                FileFormat::Yaml,
            )),
            Source::Yaml(text) => {
                builder.add_source(config::File::from_str(text, FileFormat::Yaml))
            }
            Source::File(path) => {
                if !path.is_file() {
                    return Err(ConfigError::Load(format!(
                        "config file `{}` does not exist or is not a file",
                        path.display()
                    )));
                }
                builder.add_source(config::File::from(path).format(FileFormat::Yaml))
            }
        };
        let env: config::Map<String, String> = overrides
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .separator("__")
                .source(Some(env)),
        );
        let layered = builder
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let (raw, ignored) = parse_raw(layered)?;
        validate::validate(raw, ignored, &lookup_env)
    }
}

/// Deserializes the layered config, tracking the path of every key serde did not use. The
/// unknown keys directly under a deployment's `litellm_params` are provider parameters in
/// LiteLLM's eyes: their values are read in a second pass into `other`, and their paths are
/// not returned.
fn parse_raw(layered: config::Config) -> Result<(raw::RawConfig, Vec<String>), ConfigError> {
    let mut unused = Vec::new();
    let mut on_unused = |path: serde_ignored::Path<'_>| unused.push(key_path(&path));
    let de = serde_ignored::Deserializer::new(layered.clone(), &mut on_unused);
    let mut raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = index_style(&e.path().to_string());
        ConfigError::Invalid(vec![KeyError {
            key,
            message: e.into_inner().to_string(),
        }])
    })?;
    let mut params: Option<ParamsOnly> = None;
    unused.retain(|key| {
        let Some((i, name)) = litellm_param(key) else {
            return true;
        };
        let all =
            params.get_or_insert_with(|| layered.clone().try_deserialize().unwrap_or_default());
        let value = all
            .model_list
            .get(i)
            .and_then(|d| d.litellm_params.get(name))
            .cloned();
        match (
            raw.model_list
                .get_mut(i)
                .and_then(|d| d.litellm_params.as_mut()),
            value,
        ) {
            (Some(p), Some(v)) => {
                p.other.insert(name.to_string(), v);
                false
            }
            _ => true,
        }
    });
    // The config crate's tables are hash maps: sort so that errors come out in a stable order.
    unused.sort();
    Ok((raw, unused))
}

/// Each deployment's `litellm_params` as plain JSON, for the keys `raw` has no field for.
#[derive(Default, serde::Deserialize)]
struct ParamsOnly {
    #[serde(default)]
    model_list: Vec<ParamsOnlyDeployment>,
}

#[derive(Default, serde::Deserialize)]
struct ParamsOnlyDeployment {
    #[serde(default)]
    litellm_params: BTreeMap<String, serde_json::Value>,
}

/// `(i, name)` when `key` is `model_list[i].litellm_params.name`, directly.
fn litellm_param(key: &str) -> Option<(usize, &str)> {
    let rest = key.strip_prefix("model_list[")?;
    let (i, rest) = rest.split_once(']')?;
    let name = rest.strip_prefix(".litellm_params.")?;
    (!name.contains(['.', '['])).then_some((i.parse().ok()?, name))
}

/// `model_list.0.litellm_params` from serde_ignored, as `model_list[0].litellm_params`.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    index_style(&path.to_string())
}

fn index_style(dotted: &str) -> String {
    let mut out = String::new();
    for seg in dotted.split('.').filter(|s| !s.is_empty() && *s != "?") {
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else if let Some(stripped) = seg.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            out.push_str(&format!("[{stripped}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_read_like_the_yaml() {
        assert_eq!(
            index_style("model_list.0.litellm_params.rpm"),
            "model_list[0].litellm_params.rpm"
        );
        assert_eq!(
            index_style("router_settings.timeout"),
            "router_settings.timeout"
        );
        assert_eq!(
            index_style("router_settings.fallbacks[1].x"),
            "router_settings.fallbacks[1].x"
        );
    }
}
