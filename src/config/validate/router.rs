//! `router_settings`: the router's own settings, and each group's over them.

use super::*;

pub(super) fn router_settings(
    raw: &RawConfig,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> RouterSettings {
    let rs = &raw.router_settings;
    let ls = &raw.litellm_settings;
    let timeout = errs
        .positive("router_settings.timeout", rs.timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let attempt_timeout = errs.positive("litellm_settings.request_timeout", ls.request_timeout);
    if let Some(t) = attempt_timeout
        && t > timeout
    {
        errs.warn(format!(
            "litellm_settings.request_timeout ({}) is longer than router_settings.timeout ({}), which caps it",
            crate::config::duration::display(t),
            crate::config::duration::display(timeout)
        ));
    }
    let stream_timeout = errs.positive("router_settings.stream_timeout", rs.stream_timeout);
    let stream_idle_timeout = errs
        .positive(
            "router_settings.stream_idle_timeout",
            rs.stream_idle_timeout,
        )
        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
    let stream_max_malformed_events = rs
        .stream_max_malformed_events
        .unwrap_or(DEFAULT_MAX_MALFORMED_EVENTS);
    if stream_max_malformed_events > MAX_MALFORMED_EVENTS_LIMIT {
        errs.add(
            "router_settings.stream_max_malformed_events",
            format!("must be at most {MAX_MALFORMED_EVENTS_LIMIT}"),
        );
    }
    let stream_recovery = stream_recovery(
        "router_settings.stream_recovery",
        rs.stream_recovery.as_deref(),
        errs,
    )
    .unwrap_or(StreamRecovery::None);
    let stream_recovery_max_bytes = match rs.stream_recovery_max_bytes {
        None => DEFAULT_RECOVERY_MAX_BYTES,
        Some(n) if (1024..=RECOVERY_MAX_BYTES_LIMIT).contains(&n) => n as usize,
        Some(_) => {
            errs.add(
                "router_settings.stream_recovery_max_bytes",
                format!("must be from 1024 to {RECOVERY_MAX_BYTES_LIMIT} (16 MiB)"),
            );
            DEFAULT_RECOVERY_MAX_BYTES
        }
    };
    let slow_stream = slow_stream(
        "router_settings",
        rs.stream_min_tokens_per_s,
        rs.stream_min_tokens_window,
        rs.stream_min_tokens_grace,
        SlowStream::OFF,
        errs,
    );
    let max_fallbacks = rs.max_fallbacks.unwrap_or(DEFAULT_MAX_FALLBACKS);
    if max_fallbacks > MAX_FALLBACKS_LIMIT {
        errs.add(
            "router_settings.max_fallbacks",
            format!("must be at most {MAX_FALLBACKS_LIMIT}"),
        );
    }
    let (num_retries, key) = chosen(&rs.num_retries, &ls.num_retries, "num_retries");
    let num_retries = num_retries.copied().unwrap_or(DEFAULT_NUM_RETRIES);
    if num_retries > MAX_RETRIES_LIMIT {
        errs.add(key, format!("must be at most {MAX_RETRIES_LIMIT}"));
    }
    let retry_backoff_initial = errs
        .positive(
            "router_settings.retry_backoff_initial",
            rs.retry_backoff_initial,
        )
        .unwrap_or(DEFAULT_BACKOFF_INITIAL);
    let retry_backoff_max = errs
        .positive("router_settings.retry_backoff_max", rs.retry_backoff_max)
        .unwrap_or(DEFAULT_BACKOFF_MAX);
    if retry_backoff_max < retry_backoff_initial {
        errs.add(
            "router_settings.retry_backoff_max",
            "must not be less than router_settings.retry_backoff_initial",
        );
    }
    let routing_strategy = strategy(
        "router_settings.routing_strategy",
        rs.routing_strategy.as_deref(),
        errs,
    )
    .unwrap_or(Strategy::SimpleShuffle);
    let args = rs.routing_strategy_args.as_ref();
    let lowest_latency_buffer = args.and_then(|a| a.lowest_latency_buffer).unwrap_or(0.0);
    if !(lowest_latency_buffer.is_finite() && (0.0..=10.0).contains(&lowest_latency_buffer)) {
        errs.add(
            "router_settings.routing_strategy_args.lowest_latency_buffer",
            "must be a fraction from 0 to 10 (0.1 means within 10% of the fastest)",
        );
    }
    let latency_ttl = errs
        .positive(
            "router_settings.routing_strategy_args.ttl",
            args.and_then(|a| a.ttl),
        )
        .unwrap_or(DEFAULT_LATENCY_TTL);
    let hedge = hedge("router_settings", rs.hedge_after, rs.max_hedges, None, errs);
    let connect_timeout = errs
        .positive("router_settings.connect_timeout", rs.connect_timeout)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    RouterSettings {
        timeout,
        attempt_timeout,
        pre_call_checks: rs.enable_pre_call_checks.unwrap_or(false),
        default_max_parallel_requests: match rs.default_max_parallel_requests {
            Some(0) => {
                errs.add(
                    "router_settings.default_max_parallel_requests",
                    "must be at least 1",
                );
                None
            }
            n => n,
        },
        stream_timeout,
        stream_idle_timeout,
        stream_max_malformed_events,
        stream_recovery_max_bytes,
        stream_recovery,
        slow_stream,
        max_fallbacks,
        num_retries,
        min_retry_wait: rs.retry_after.unwrap_or(Duration::ZERO),
        retry_backoff_initial,
        retry_backoff_max,
        // Test switches: a caller must not be able to make the router wait or answer for
        // nothing unless the config says so (the built-in demo config does).
        allow_mock_timeout: rs.allow_mock_timeout.unwrap_or(false),
        allow_mock_response: rs.allow_mock_response.unwrap_or(false),
        connect_timeout,
        pool: super::upstream::pool_settings(raw, errs),
        tls: super::upstream::tls(
            super::upstream::TlsKeys {
                prefix: "litellm_settings".into(),
                verify: ls.ssl_verify.as_ref(),
                certificate: ls.ssl_certificate.as_deref(),
                certificate_key: ls.ssl_certificate_key.as_deref(),
            },
            &Default::default(),
            lookup_env,
            errs,
        ),
        routing_strategy,
        lowest_latency_buffer,
        latency_ttl,
        cooldowns: cooldown_policy(raw, errs),
        hedge,
        retry_budget: retry_budget(raw, errs),
    }
}

/// The slow-stream guard from `<prefix>.stream_min_tokens_per_s`, `_window` and `_grace`, each
/// over `base`'s (a group's inherit the router's). A rate of 0 turns the guard off.
fn slow_stream(
    prefix: &str,
    per_s: Option<f64>,
    window: Option<Duration>,
    grace: Option<Duration>,
    base: SlowStream,
    errs: &mut Errors,
) -> SlowStream {
    let d = crate::config::duration::display;
    let mut out = base;
    if let Some(r) = per_s {
        if r.is_finite() && (0.0..=SlowStream::MAX_PER_S).contains(&r) {
            out.per_s = Some(r);
        } else {
            errs.add(
                format!("{prefix}.stream_min_tokens_per_s"),
                format!(
                    "must be a number of tokens a second from 0 (off) to {}",
                    SlowStream::MAX_PER_S
                ),
            );
        }
    }
    if let Some(w) = window {
        if (SlowStream::MIN_WINDOW..=SlowStream::MAX_WINDOW).contains(&w) {
            out.window = w;
        } else {
            errs.add(
                format!("{prefix}.stream_min_tokens_window"),
                format!(
                    "must be from {} to {}",
                    d(SlowStream::MIN_WINDOW),
                    d(SlowStream::MAX_WINDOW)
                ),
            );
        }
    }
    if let Some(g) = grace {
        if g <= SlowStream::MAX_GRACE {
            out.grace = g;
        } else {
            errs.add(
                format!("{prefix}.stream_min_tokens_grace"),
                format!("must be at most {}", d(SlowStream::MAX_GRACE)),
            );
        }
    }
    out
}

fn stream_recovery(key: &str, value: Option<&str>, errs: &mut Errors) -> Option<StreamRecovery> {
    let value = value?;
    let parsed = StreamRecovery::parse(value);
    if parsed.is_none() {
        errs.add(
            key,
            format!("`{value}` is not a stream recovery; use none, continue, restart or continue_or_restart"),
        );
    }
    parsed
}

fn strategy(key: &str, value: Option<&str>, errs: &mut Errors) -> Option<Strategy> {
    let value = value?;
    let parsed = Strategy::parse(value);
    if parsed.is_none() {
        errs.add(
            key,
            format!(
                "`{value}` is not a routing strategy; supported: {}",
                Strategy::NAMES.join(", ")
            ),
        );
    }
    parsed
}

/// Hedging from `hedge_after` and `max_hedges` at `prefix`, over `inherited` (a group's
/// settings inherit the router's). `max_hedges: 0` turns hedging off.
fn hedge(
    prefix: &str,
    after: Option<Duration>,
    max: Option<u32>,
    inherited: Option<Hedge>,
    errs: &mut Errors,
) -> Option<Hedge> {
    let after = errs.positive(&format!("{prefix}.hedge_after"), after);
    if let Some(m) = max
        && m > MAX_HEDGES_LIMIT
    {
        errs.add(
            format!("{prefix}.max_hedges"),
            format!("must be at most {MAX_HEDGES_LIMIT}: each hedge adds load on a slow provider"),
        );
    }
    let after = after.or(inherited.map(|h| h.after))?;
    let max = max.or(inherited.map(|h| h.max)).unwrap_or(1);
    (max > 0).then_some(Hedge { after, max })
}

fn cooldown_policy(raw: &RawConfig, errs: &mut Errors) -> CooldownPolicy {
    let rs = &raw.router_settings;
    let ls = &raw.litellm_settings;
    let (allowed_fails, _) = chosen(&rs.allowed_fails, &ls.allowed_fails, "allowed_fails");
    let (cooldown_time, key) = chosen(&rs.cooldown_time, &ls.cooldown_time, "cooldown_time");
    let cooldown_time = errs.positive(&key, cooldown_time.copied());
    let mut per_kind = [None; FailKind::COUNT];
    if let Some(p) = &rs.allowed_fails_policy {
        for (kind, value) in [
            (FailKind::BadRequest, p.BadRequestErrorAllowedFails),
            (FailKind::Authentication, p.AuthenticationErrorAllowedFails),
            (FailKind::Timeout, p.TimeoutErrorAllowedFails),
            (FailKind::RateLimit, p.RateLimitErrorAllowedFails),
            (
                FailKind::ContentPolicy,
                p.ContentPolicyViolationErrorAllowedFails,
            ),
            (FailKind::InternalServer, p.InternalServerErrorAllowedFails),
        ] {
            per_kind[kind.index()] = value;
        }
    }
    CooldownPolicy {
        enabled: !rs.disable_cooldowns.unwrap_or(false),
        // LiteLLM counts failures only when told how many to allow; by default it goes by
        // the failure rate (see CooldownRule).
        rule: if allowed_fails.is_some() || rs.allowed_fails_policy.is_some() {
            CooldownRule::FailureCount
        } else {
            CooldownRule::FailureRate
        },
        allowed_fails: allowed_fails.copied().unwrap_or(DEFAULT_ALLOWED_FAILS),
        per_kind,
        cooldown_time: cooldown_time.unwrap_or(DEFAULT_COOLDOWN_TIME),
        max_hint: rs
            .max_cooldown_from_hint
            .unwrap_or(DEFAULT_MAX_COOLDOWN_FROM_HINT),
    }
}

fn retry_budget(raw: &RawConfig, errs: &mut Errors) -> Option<RetryBudget> {
    let b = raw.router_settings.retry_budget.as_ref();
    let max_tokens = b
        .and_then(|b| b.max_tokens)
        .unwrap_or(DEFAULT_BUDGET_MAX_TOKENS);
    let token_ratio = b
        .and_then(|b| b.token_ratio)
        .unwrap_or(DEFAULT_BUDGET_TOKEN_RATIO);
    if !(max_tokens.is_finite() && (0.0..=1000.0).contains(&max_tokens)) {
        errs.add(
            "router_settings.retry_budget.max_tokens",
            "must be a number from 0 (no budget) to 1000",
        );
    }
    if !(token_ratio.is_finite() && token_ratio > 0.0 && token_ratio <= 1.0) {
        errs.add(
            "router_settings.retry_budget.token_ratio",
            "must be a number greater than 0 and at most 1",
        );
    }
    (max_tokens > 0.0).then_some(RetryBudget {
        max_tokens,
        token_ratio,
    })
}

/// A group's own settings, over the router's.
#[derive(Clone, Copy)]
pub(super) struct GroupSettings {
    pub(super) strategy: Strategy,
    pub(super) hedge: Option<Hedge>,
    pub(super) stream_recovery: StreamRecovery,
    pub(super) slow_stream: SlowStream,
}

/// `router_settings.model_group_settings`: each group's strategy, hedging and stream recovery,
/// over the router's.
pub(super) fn group_settings(
    raw: &RawConfig,
    router: &RouterSettings,
    groups: &BTreeMap<String, Vec<Deployment>>,
    errs: &mut Errors,
) -> BTreeMap<String, GroupSettings> {
    let mut out = BTreeMap::new();
    let Some(map) = &raw.router_settings.model_group_settings else {
        return out;
    };
    for (name, settings) in map {
        let prefix = format!("router_settings.model_group_settings.{name}");
        if !groups.contains_key(name) {
            errs.add(&prefix, unknown_group(name, groups));
            continue;
        }
        let strategy = strategy(
            &format!("{prefix}.routing_strategy"),
            settings.routing_strategy.as_deref(),
            errs,
        )
        .unwrap_or(router.routing_strategy);
        let hedge = hedge(
            &prefix,
            settings.hedge_after,
            settings.max_hedges,
            router.hedge,
            errs,
        );
        let stream_recovery = stream_recovery(
            &format!("{prefix}.stream_recovery"),
            settings.stream_recovery.as_deref(),
            errs,
        )
        .unwrap_or(router.stream_recovery);
        let slow_stream = slow_stream(
            &prefix,
            settings.stream_min_tokens_per_s,
            settings.stream_min_tokens_window,
            settings.stream_min_tokens_grace,
            router.slow_stream,
            errs,
        );
        out.insert(
            name.clone(),
            GroupSettings {
                strategy,
                hedge,
                stream_recovery,
                slow_stream,
            },
        );
    }
    out
}

/// Where the router's settings mean something other than in LiteLLM, one line each.
pub(super) fn router_divergences(router: &RouterSettings) -> Vec<String> {
    let d = crate::config::duration::display;
    let mut out = vec![
        format!(
            "router_settings.timeout ({}) bounds the whole call, fallbacks included; LiteLLM gives each attempt that long. Attempts are limited by litellm_params.timeout, else litellm_settings.request_timeout{}",
            d(router.timeout),
            router
                .attempt_timeout
                .map_or(", else the whole deadline".to_string(), |t| format!(" ({})", d(t))),
        ),
        format!(
            "a committed stream silent for stream_idle_timeout ({}) is cut (LiteLLM has no idle limit)",
            d(router.stream_idle_timeout)
        ),
        "a request's num_retries can lower a deployment's max_retries, never raise it".to_string(),
        "a deployment at max_parallel_requests (or its rpm/tpm-derived cap) is skipped, not waited for".to_string(),
    ];
    if router.cooldowns.enabled && router.cooldowns.rule == CooldownRule::FailureCount {
        out.push(format!(
            "allowed_fails ({}) counts a deployment's failures within the minute (LiteLLM: within cooldown_time of its last failure)",
            router.cooldowns.allowed_fails,
        ));
    }
    out
}
