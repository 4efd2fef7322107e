//! `auth:` and `callers:`: how callers are recognised and what each may use.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{ENV_SECRET_PREFIX, Errors, unknown_group};
use crate::config::{
    Deployment,
    auth::{
        Auth, Budget, BudgetPeriod, CallerPolicy, Cidr, HeaderFormat, KeyDigest, Knobs,
        MAX_NUM_RETRIES, TrustedHeader,
    },
    raw::{RawAuth, RawCaller, RawConfig, RawTrustedHeader},
};

/// Names a caller may not take: the labels of calls without one, and the default policy's.
pub const RESERVED_CALLER_NAMES: &[&str] = &["unauthenticated", "unknown", "default"];
const MAX_CALLERS: usize = 1000;
const MAX_NAME_LEN: usize = 64;
const MAX_IDENTITY_LEN: usize = 512;
/// A key shorter than this is guessable.
const MIN_KEY_LEN: usize = 16;
/// LiteLLM's name for "every group" in a key's `models`.
const ALL_MODELS: &str = "all-proxy-models";
const FILE_PREFIX: &str = "file:";
const SHA256_PREFIX: &str = "sha256:";

pub(super) fn auth(
    raw: &RawConfig,
    members: &BTreeMap<String, Vec<Deployment>>,
    aliases: &BTreeMap<String, String>,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> Auth {
    let a: &RawAuth = &raw.auth;
    let required = a.required.unwrap_or(false);
    let reflection_requires_auth = match a.reflection.as_deref() {
        None | Some("open") => false,
        Some("authenticated") => true,
        Some(other) => {
            errs.add(
                "auth.reflection",
                format!("`{other}` is not one of: open, authenticated"),
            );
            false
        }
    };
    let trusted_header = a
        .trusted_header
        .as_ref()
        .and_then(|h| trusted_header(h, errs));

    let groups = Groups { members, aliases };
    if raw.callers.len() > MAX_CALLERS {
        errs.add("callers", format!("lists more than {MAX_CALLERS} callers"));
    }
    let mut names = BTreeSet::new();
    let mut identities: BTreeMap<String, String> = BTreeMap::new();
    let mut keys: Vec<(KeyDigest, usize)> = Vec::new();
    let mut key_files = Vec::new();
    let mut callers = Vec::new();
    for (i, c) in raw.callers.iter().enumerate().take(MAX_CALLERS) {
        let at = format!("callers[{i}]");
        let name = match c.name.as_deref().map(str::trim) {
            None | Some("") => {
                errs.add(format!("{at}.name"), "is required");
                format!("callers[{i}]")
            }
            Some(n) => {
                if let Err(e) = check_name(n) {
                    errs.add(format!("{at}.name"), e);
                } else if !names.insert(n.to_string()) {
                    errs.add(format!("{at}.name"), format!("duplicate caller `{n}`"));
                }
                n.to_string()
            }
        };
        let mut ids = Vec::new();
        for (j, id) in c.identities.iter().flatten().enumerate() {
            let key = format!("{at}.identities[{j}]");
            let id = id.trim();
            if id.is_empty() || id.len() > MAX_IDENTITY_LEN || id.chars().any(char::is_control) {
                errs.add(
                    key,
                    format!("must be 1 to {MAX_IDENTITY_LEN} printable characters"),
                );
            } else if let Some(other) = identities.insert(id.to_string(), name.clone()) {
                errs.add(
                    key,
                    format!("`{id}` is already caller `{other}`'s identity"),
                );
            } else {
                ids.push(id.to_string());
            }
        }
        let mut key_count = 0;
        for (j, source) in c.keys.iter().flatten().enumerate() {
            let key = format!("{at}.keys[{j}]");
            if let Some(path) = source.trim().strip_prefix(FILE_PREFIX) {
                key_files.push(std::path::PathBuf::from(path.trim()));
            }
            let Some(digest) = key_digest(source, &key, lookup_env, errs) else {
                continue;
            };
            if keys.iter().any(|(d, _)| *d == digest) {
                // Which caller holds it is not said: that would tell a reader of the error
                // which caller a leaked key belongs to.
                errs.add(key, "is the same key as another caller's");
                continue;
            }
            keys.push((digest, callers.len()));
            key_count += 1;
        }
        if ids.is_empty() && key_count == 0 && !errs_for(errs, &at) {
            errs.add(
                at.clone(),
                "has neither identities nor keys: nothing could be recognised as this caller",
            );
        }
        let who = Recognised {
            name,
            identities: ids,
            key_count,
        };
        callers.push(Arc::new(policy(c, who, &at, &groups, errs)));
    }

    let default = a.default.as_ref().map(|d| {
        for (set, field) in [
            (d.name.is_some(), "name"),
            (d.identities.is_some(), "identities"),
            (d.keys.is_some(), "keys"),
        ] {
            if set {
                errs.add(
                    format!("auth.default.{field}"),
                    "is not read here: the default policy is for proven identities no caller lists",
                );
            }
        }
        let who = Recognised {
            name: "default".to_string(),
            identities: Vec::new(),
            key_count: 0,
        };
        Arc::new(policy(d, who, "auth.default", &groups, errs))
    });

    if required && callers.is_empty() && default.is_none() {
        errs.add(
            "auth.required",
            "is true, but no caller could be served: list `callers`, or set `auth.default` for proven identities",
        );
    }
    let any_identities = callers.iter().any(|c| !c.identities.is_empty()) || default.is_some();
    if any_identities
        && trusted_header.is_none()
        && raw
            .server
            .tls
            .as_ref()
            .is_none_or(|t| t.client_ca_file.is_none())
    {
        errs.warn(
            "callers name identities, but nothing proves one: set server.tls.client_ca_file (mTLS) or auth.trusted_header (a mesh's header)".to_string(),
        );
    }
    Auth::new(
        required,
        reflection_requires_auth,
        trusted_header,
        callers,
        default,
        keys,
        key_files,
    )
}

/// Whether an error was already reported under `at` (so that a caller with a bad key is not
/// also told it has none).
fn errs_for(errs: &Errors, at: &str) -> bool {
    errs.0.iter().any(|e| e.key.starts_with(at))
}

fn check_name(n: &str) -> Result<(), String> {
    if n.len() > MAX_NAME_LEN
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} letters, digits, `-`, `_` or `.`: it is a metric label"
        ));
    }
    if RESERVED_CALLER_NAMES.contains(&n) {
        return Err(format!(
            "`{n}` is reserved (it labels calls of no listed caller)"
        ));
    }
    Ok(())
}

fn trusted_header(h: &RawTrustedHeader, errs: &mut Errors) -> Option<TrustedHeader> {
    let name = match h.name.as_deref().map(str::trim) {
        None | Some("") => {
            errs.add("auth.trusted_header.name", "is required");
            return None;
        }
        Some(n) => n.to_ascii_lowercase(),
    };
    if http::HeaderName::from_bytes(name.as_bytes()).is_err()
        || name.starts_with("grpc-")
        || name.starts_with(':')
    {
        errs.add(
            "auth.trusted_header.name",
            format!("`{name}` is not a header a proxy can set"),
        );
        return None;
    }
    if name == "authorization" {
        errs.add(
            "auth.trusted_header.name",
            "`authorization` carries callers' keys: name the header the proxy sets",
        );
        return None;
    }
    let peers = h.trusted_peers.as_deref().unwrap_or_default();
    if peers.is_empty() {
        errs.add(
            "auth.trusted_header.trusted_peers",
            "must list the proxies whose header is believed (a header anyone can set is no identity); e.g. [127.0.0.6/32] for an Istio sidecar",
        );
        return None;
    }
    let mut trusted_peers = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        match Cidr::parse(p) {
            Ok(c) => trusted_peers.push(c),
            Err(e) => errs.add(format!("auth.trusted_header.trusted_peers[{i}]"), e),
        }
    }
    let format = if name == "x-forwarded-client-cert" {
        HeaderFormat::Xfcc
    } else {
        HeaderFormat::Plain
    };
    Some(TrustedHeader {
        name,
        format,
        trusted_peers,
    })
}

/// A key's digest from where the config says it is. The key itself is never echoed.
fn key_digest(
    source: &str,
    key: &str,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> Option<KeyDigest> {
    let source = source.trim();
    let value = if let Some(var) = source.strip_prefix(ENV_SECRET_PREFIX) {
        match lookup_env(var).filter(|v| !v.is_empty()) {
            Some(v) => v,
            None => {
                errs.add(key, format!("environment variable {var} is not set"));
                return None;
            }
        }
    } else if let Some(path) = source.strip_prefix(FILE_PREFIX) {
        match std::fs::read_to_string(path.trim()) {
            // A file written by `echo` ends with a newline that is not part of the key.
            Ok(text) => text.trim_end_matches(['\n', '\r']).to_string(),
            Err(e) => {
                errs.add(key, format!("cannot read {}: {e}", path.trim()));
                return None;
            }
        }
    } else if let Some(hex) = source.strip_prefix(SHA256_PREFIX) {
        return match parse_hex32(hex.trim()) {
            Some(d) => Some(KeyDigest(d)),
            None => {
                errs.add(key, "must be sha256: and 64 hex digits");
                None
            }
        };
    } else {
        errs.add(
            key,
            "must be os.environ/NAME, file:PATH or sha256:HEX (a key written in the config would be readable by everyone who can read the config)",
        );
        return None;
    };
    if value.len() < MIN_KEY_LEN {
        errs.add(
            key,
            format!("is shorter than {MIN_KEY_LEN} bytes: too easy to guess"),
        );
        return None;
    }
    Some(KeyDigest::of(value.as_bytes()))
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The groups and aliases a policy's `models` may name.
struct Groups<'a> {
    members: &'a BTreeMap<String, Vec<Deployment>>,
    aliases: &'a BTreeMap<String, String>,
}

/// How a caller is recognised, found before its policy is read.
struct Recognised {
    name: String,
    identities: Vec<String>,
    key_count: usize,
}

fn policy(
    c: &RawCaller,
    who: Recognised,
    at: &str,
    groups: &Groups<'_>,
    errs: &mut Errors,
) -> CallerPolicy {
    let Recognised {
        name,
        identities,
        key_count,
    } = who;
    let Groups { members, aliases } = *groups;
    let models = match c.models.as_deref() {
        None | Some([]) => None,
        Some(list) if list.iter().any(|m| m == ALL_MODELS) => None,
        Some(list) => {
            let mut set = BTreeSet::new();
            for (j, m) in list.iter().enumerate() {
                let group = if members.contains_key(m) {
                    Some(m.clone())
                } else {
                    aliases.get(m).cloned()
                };
                match group {
                    Some(g) => {
                        set.insert(g);
                    }
                    None => errs.add(format!("{at}.models[{j}]"), unknown_group(m, members)),
                }
            }
            Some(set)
        }
    };
    let positive = |errs: &mut Errors, field: &str, v: Option<u64>| {
        if v == Some(0) {
            errs.add(format!("{at}.{field}"), "must be at least 1 when set");
        }
        v
    };
    let rpm_limit = positive(errs, "rpm_limit", c.rpm_limit);
    let tpm_limit = positive(errs, "tpm_limit", c.tpm_limit);
    let max_parallel_requests = positive(
        errs,
        "max_parallel_requests",
        c.max_parallel_requests.map(u64::from),
    )
    .map(|n| n as u32);
    let budget = match (c.max_budget, c.budget_duration.as_deref()) {
        (None, None) => None,
        (Some(max), Some(period)) => {
            if !(max.is_finite() && max >= 0.0) {
                errs.add(
                    format!("{at}.max_budget"),
                    "must be a non-negative number of USD",
                );
            }
            match BudgetPeriod::parse(period) {
                Ok(period) => Some(Budget {
                    max_usd: max,
                    period,
                }),
                Err(e) => {
                    errs.add(format!("{at}.budget_duration"), e);
                    None
                }
            }
        }
        (Some(_), None) => {
            errs.add(
                format!("{at}.budget_duration"),
                "is required with max_budget: spend is counted per period (30d, 1mo, ...), which every replica and restart agrees on",
            );
            None
        }
        (None, Some(_)) => {
            errs.add(
                format!("{at}.max_budget"),
                "is required with budget_duration",
            );
            None
        }
    };
    let mut knobs = Knobs::default();
    if let Some(a) = &c.allow {
        knobs.mock = a.mock.unwrap_or(knobs.mock);
        knobs.fallbacks = a.fallbacks.unwrap_or(knobs.fallbacks);
        knobs.stream_recovery = a.stream_recovery.unwrap_or(knobs.stream_recovery);
        knobs.hedging = a.hedging.unwrap_or(knobs.hedging);
        if let Some(n) = a.max_num_retries {
            if n > MAX_NUM_RETRIES {
                errs.add(
                    format!("{at}.allow.max_num_retries"),
                    format!("must be at most {MAX_NUM_RETRIES}"),
                );
            }
            knobs.max_num_retries = n.min(MAX_NUM_RETRIES);
        }
    }
    CallerPolicy {
        name: Arc::from(name),
        identities,
        key_count,
        models,
        rpm_limit,
        tpm_limit,
        max_parallel_requests,
        budget,
        knobs,
    }
}
