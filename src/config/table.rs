//! The resolved routing table as `check-config` prints it: every group, deployment, effective
//! limit and chain, the warnings, the differences from LiteLLM and the keys with no effect.
//! Never a key or header value.

use super::*;

/// A deployment's rpm, tpm and max_parallel_requests, when set.
fn limits_summary(d: &Deployment) -> String {
    let mut out = String::new();
    if let Some(rpm) = d.rpm {
        out.push_str(&format!(" rpm {rpm}"));
    }
    if let Some(tpm) = d.tpm {
        out.push_str(&format!(" tpm {tpm}"));
    }
    if let Some(n) = d.max_parallel_requests {
        out.push_str(&format!(" max_parallel_requests {n}"));
    }
    out
}

/// The `model_info.supports_*` capabilities a deployment has.
fn capabilities_summary(c: &Capabilities) -> String {
    let mut out = String::new();
    for (has, key) in [
        (c.function_calling, "supports_function_calling"),
        (c.vision, "supports_vision"),
        (c.response_schema, "supports_response_schema"),
        (c.reasoning, "supports_reasoning"),
    ] {
        if has {
            out.push(' ');
            out.push_str(key);
        }
    }
    out
}

/// What check-config shows of an HTTP provider's settings: whether a key is set and which
/// headers are added, never their values.
fn http_summary(h: &HttpProvider, model: &str) -> String {
    let mut out = String::new();
    if h.api_key.is_some() {
        out.push_str(" key set");
    }
    if let super::Family::Azure(azure) = &h.family {
        out.push_str(&format!(" api_version {}", azure.api_version));
    }
    // What the body builder changes on the way (README, "OpenAI's reasoning models").
    if let Some(rules) = super::OpenAiRules::of(h, model) {
        if rules.completion_tokens {
            out.push_str(" sends max_completion_tokens");
        }
        if rules.default_sampling {
            out.push_str(
                " (reasoning model: sampling parameters other than the defaults left out)",
            );
        }
    }
    if !h.extra_headers.is_empty() {
        let names: Vec<&str> = h.extra_headers.iter().map(|(n, _)| n.as_str()).collect();
        out.push_str(&format!(" extra_headers [{}]", names.join(", ")));
    }
    out
}

/// A deployment's TLS settings, when they differ from the config's default.
fn tls_summary(dep: &Deployment, default: &super::upstream::UpstreamTls) -> String {
    if *dep.tls == *default || matches!(dep.provider, ProviderConfig::Mock(_)) {
        return String::new();
    }
    dep.tls
        .describe()
        .map_or(" TLS system roots".to_string(), |t| format!(" TLS {t}"))
}

/// One caller's policy on a line: what it may call, its limits and switches. Identities are
/// listed (they are names, not secrets); keys are only counted.
fn policy_summary(p: &auth::CallerPolicy) -> String {
    let mut out = format!(
        "models {}",
        p.models.as_ref().map_or("all".to_string(), |m| m
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "))
    );
    for (key, v) in [
        ("rpm_limit", p.rpm_limit),
        ("tpm_limit", p.tpm_limit),
        (
            "max_parallel_requests",
            p.max_parallel_requests.map(u64::from),
        ),
    ] {
        if let Some(v) = v {
            out.push_str(&format!(", {key} {v}"));
        }
    }
    if let Some(b) = &p.budget {
        out.push_str(&format!(
            ", max_budget {} USD per {}",
            b.max_usd,
            b.period.name()
        ));
    }
    let k = &p.knobs;
    out.push_str(&format!(
        "; allow mock {}, fallbacks {}, max_num_retries {}, stream_recovery {}, hedging {}",
        k.mock, k.fallbacks, k.max_num_retries, k.stream_recovery, k.hedging
    ));
    out
}

impl Config {
    /// Who may call: `auth` and each caller's policy.
    fn auth_summary(&self) -> String {
        use std::fmt::Write as _;
        let a = &self.auth;
        let mut out = String::new();
        if a.is_off() {
            let _ = writeln!(
                out,
                "auth: off (no callers configured; every call is served unauthenticated)"
            );
            return out;
        }
        let _ = writeln!(
            out,
            "auth: required {}, reflection {}, trusted_header {}",
            a.required,
            if a.reflection_requires_auth {
                "authenticated"
            } else {
                "open"
            },
            a.trusted_header
                .as_ref()
                .map_or("none".to_string(), |h| format!(
                    "{} from {}",
                    h.name,
                    h.trusted_peers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
        );
        for c in &a.callers {
            let _ = writeln!(
                out,
                "  caller {}: identities [{}], {} key(s); {}",
                c.name,
                c.identities.join(", "),
                c.key_count,
                policy_summary(c)
            );
        }
        if let Some(d) = &a.default {
            let _ = writeln!(
                out,
                "  default (proven identities no caller lists): {}",
                policy_summary(d)
            );
        }
        out
    }

    /// The resolved routing table, as `check-config` prints it. Never shows a key.
    pub fn routing_table(&self) -> String {
        use std::fmt::Write as _;
        let d = duration::display;
        let r = &self.router;
        let mut out = String::new();
        let _ = writeln!(out, "config OK: {} model group(s)", self.groups.len());
        let _ = writeln!(
            out,
            "router: timeout {}, stream_timeout {}, stream_idle_timeout {}, stream_max_malformed_events {}, stream_recovery {}, stream_recovery_max_bytes {}, slow-stream guard {}, num_retries {}, retry_after {}, backoff {}..{}, allow_mock_timeout {}, allow_mock_response {}",
            d(r.timeout),
            r.stream_timeout.map_or("none".into(), d),
            d(r.stream_idle_timeout),
            r.stream_max_malformed_events,
            r.stream_recovery.name(),
            r.stream_recovery_max_bytes,
            r.slow_stream.describe(),
            r.num_retries,
            d(r.min_retry_wait),
            d(r.retry_backoff_initial),
            d(r.retry_backoff_max),
            r.allow_mock_timeout,
            r.allow_mock_response,
        );
        let c = &r.cooldowns;
        let _ = writeln!(
            out,
            "router: routing_strategy {}, cooldowns {}, retry_budget {}",
            r.routing_strategy.name(),
            if !c.enabled {
                "off".to_string()
            } else if c.rule == CooldownRule::FailureRate {
                format!(
                    "by failure rate (LiteLLM's default rule) for {}",
                    d(c.cooldown_time)
                )
            } else {
                format!(
                    "after {} fails/min for {}",
                    c.allowed_fails,
                    d(c.cooldown_time)
                )
            },
            r.retry_budget.map_or("off".to_string(), |b| format!(
                "{} tokens, ratio {}",
                b.max_tokens, b.token_ratio
            )),
        );
        let _ = writeln!(
            out,
            "state: {}",
            self.shared_state.as_ref().map_or(
                "per replica (no router_settings.redis_url or redis_host): each replica keeps its own cooldowns, usage, in-flight counts and caller limits".to_string(),
                |s| s.describe()
            )
        );
        let p = &r.pool;
        let _ = writeln!(
            out,
            "upstream: connect_timeout {}, per origin up to {} HTTP/2 connections (each within the provider's stream limit) or {} HTTP/1.1 connections, idle ones closed after {}; TLS {}",
            d(r.connect_timeout),
            p.max_http2_connections,
            p.max_connections,
            d(p.idle_timeout),
            r.tls
                .describe()
                .unwrap_or_else(|| "against the system roots (or SSL_CERT_FILE)".to_string()),
        );
        let s = &self.server;
        let _ = writeln!(
            out,
            "server: listen {}, admin_listen {}, deadline_margin {}, drain_period {}, shutdown_grace {}, max_concurrent_calls {}, max_concurrent_streams {}, max_request_bytes {}",
            s.listen,
            s.admin_listen.map_or("none".to_string(), |a| a.to_string()),
            d(s.deadline_margin),
            d(s.drain_period),
            d(s.shutdown_grace),
            s.max_concurrent_calls
                .map_or("unlimited".to_string(), |n| n.to_string()),
            s.max_concurrent_streams,
            s.max_request_bytes,
        );
        if let Some(t) = &s.tls {
            let _ = writeln!(
                out,
                "server.tls: cert_file {}, key_file {}, admin port {}, client certificates {}",
                t.cert_file.display(),
                t.key_file.display(),
                if t.admin { "https" } else { "plaintext" },
                match &t.client_ca_file {
                    None => "not asked for".to_string(),
                    Some(ca) => format!(
                        "{} against {}",
                        if t.client_auth_required {
                            "required"
                        } else {
                            "optional"
                        },
                        ca.display()
                    ),
                }
            );
        }
        out.push_str(&self.auth_summary());
        for g in self.groups.values() {
            let _ = writeln!(
                out,
                "\ngroup {} ({}{}, stream_recovery {}, slow-stream guard {})",
                g.name,
                g.strategy.name(),
                g.hedge.map_or(String::new(), |h| format!(
                    ", hedge after {} up to {}",
                    d(h.after),
                    h.max
                )),
                g.stream_recovery.name(),
                g.slow_stream.describe(),
            );
            for dep in &g.deployments {
                let base = dep.provider.api_base();
                let _ = writeln!(
                    out,
                    "  deployment {}: {}/{}{} timeout {} stream_timeout {} max_retries {} weight {}{}{}{}{}{}",
                    dep.id,
                    dep.provider.name(),
                    dep.upstream_model,
                    if base.is_empty() {
                        String::new()
                    } else {
                        format!(" at {base}")
                    },
                    d(dep.timeout),
                    dep.stream_timeout.map_or("none".into(), d),
                    dep.max_retries,
                    dep.weight,
                    limits_summary(dep),
                    match &dep.provider {
                        ProviderConfig::Http(h) => http_summary(h, &dep.upstream_model),
                        ProviderConfig::Mock(_) => String::new(),
                    },
                    tls_summary(dep, &r.tls),
                    if dep.supports_assistant_prefill {
                        " supports_assistant_prefill"
                    } else {
                        ""
                    },
                    capabilities_summary(&dep.capabilities),
                );
            }
            let chain = |v: &[String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(" -> ")
                }
            };
            let _ = writeln!(out, "  fallbacks: {}", chain(&g.fallbacks));
            if !g.context_window_fallbacks.is_empty() {
                let _ = writeln!(
                    out,
                    "  context_window_fallbacks: {}",
                    chain(&g.context_window_fallbacks)
                );
            }
            if !g.content_policy_fallbacks.is_empty() {
                let _ = writeln!(
                    out,
                    "  content_policy_fallbacks: {}",
                    chain(&g.content_policy_fallbacks)
                );
            }
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(out, "\nwarnings:");
            for w in &self.warnings {
                let _ = writeln!(out, "  {w}");
            }
        }
        if !self.divergences.is_empty() {
            let _ = writeln!(out, "\ndifferences from LiteLLM in this config:");
            for d in &self.divergences {
                let _ = writeln!(out, "  {d}");
            }
        }
        if !self.ignored_keys.is_empty() {
            let _ = writeln!(out, "\nignored LiteLLM keys (no effect in llm-router):");
            for k in &self.ignored_keys {
                let _ = writeln!(out, "  {}: {}", k.key, k.why);
            }
        }
        out
    }
}
