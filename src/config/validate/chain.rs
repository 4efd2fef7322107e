//! Where a group's calls go next: fallback lists (LiteLLM's `router_setting or
//! litellm.setting` precedence, followed transitively), retry policies by kind of failure,
//! aliases, and the warning when one attempt may use the whole deadline.

use super::*;

/// A setting LiteLLM's Router takes from `router_settings`, else from `litellm_settings`
/// (`router_setting or litellm.setting`), with the key it came from.
pub(super) fn chosen<'a, T>(
    router: &'a Option<T>,
    litellm: &'a Option<T>,
    name: &str,
) -> (Option<&'a T>, String) {
    match (router, litellm) {
        (Some(v), _) => (Some(v), format!("router_settings.{name}")),
        (None, Some(v)) => (Some(v), format!("litellm_settings.{name}")),
        (None, None) => (None, format!("router_settings.{name}")),
    }
}

/// Merges LiteLLM's `[{group: [fallback, ...]}]` list into a map, checking every name.
pub(super) fn fallback_map(
    list: Option<&[BTreeMap<String, Vec<String>>]>,
    key: &str,
    groups: &BTreeMap<String, Vec<Deployment>>,
    errs: &mut Errors,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (j, entry) in list.unwrap_or_default().iter().enumerate() {
        for (from, to) in entry {
            let here = format!("{key}[{j}].{from}");
            if !groups.contains_key(from) {
                errs.add(&here, unknown_group(from, groups));
            }
            if out.contains_key(from) {
                errs.add(&here, format!("fallbacks for `{from}` are given twice"));
            }
            for (k, name) in to.iter().enumerate() {
                if !groups.contains_key(name) {
                    errs.add(format!("{here}[{k}]"), unknown_group(name, groups));
                } else if name == from {
                    errs.add(format!("{here}[{k}]"), "a group cannot fall back to itself");
                }
            }
            out.insert(from.clone(), to.clone());
        }
    }
    out
}

/// A group's fallback chain as LiteLLM walks it: each fallback is followed by its own
/// fallbacks (depth first) before the next, a group is tried once, and the chain stops at
/// `max` groups. Returns the chain, and the group it was cut after when it was cut.
pub(super) fn transitive_fallbacks(
    name: &str,
    own: &dyn Fn(&str) -> Vec<String>,
    max: usize,
) -> (Vec<String>, Option<String>) {
    fn walk(
        from: &str,
        own: &dyn Fn(&str) -> Vec<String>,
        max: usize,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
        cut: &mut bool,
    ) {
        for next in own(from) {
            if seen.contains(&next) {
                continue;
            }
            if out.len() == max {
                *cut = true;
                return;
            }
            seen.insert(next.clone());
            out.push(next.clone());
            walk(&next, own, max, seen, out, cut);
        }
    }
    let mut seen = BTreeSet::from([name.to_string()]);
    let (mut out, mut cut) = (Vec::new(), false);
    walk(name, own, max, &mut seen, &mut out, &mut cut);
    let after = cut.then(|| out.last().cloned().unwrap_or_else(|| name.to_string()));
    (out, after)
}

/// Warns when a group has retries or fallbacks but an attempt of one of its deployments may
/// use the call's whole deadline: a hung attempt then leaves no time for any of them.
pub(super) fn no_time_for_fallbacks(
    name: &str,
    deps: &[Deployment],
    chain: &[String],
    policy: &RetryPolicy,
    router: &RouterSettings,
    errs: &mut Errors,
) {
    let retries =
        deps.iter().any(|d| d.max_retries > 0) && policy.retries(FailKind::Timeout) != Some(0);
    if chain.is_empty() && !retries {
        return;
    }
    let whole: Vec<&str> = deps
        .iter()
        .filter(|d| d.timeout >= router.timeout)
        .map(|d| d.id.as_str())
        .collect();
    if whole.is_empty() {
        return;
    }
    let what = match (chain.is_empty(), retries) {
        (false, true) => "retries or fallbacks",
        (false, false) => "fallbacks",
        _ => "retries",
    };
    errs.warn(format!(
        "model group `{name}`: an attempt on {} may take the whole call's deadline (router_settings.timeout, {}), so one that hangs leaves no time for its {what}; give attempts a shorter limit with litellm_settings.request_timeout or litellm_params.timeout",
        whole.join(", "),
        crate::config::duration::display(router.timeout),
    ));
}

/// `retry_policy` (every group's, none by default) and `model_group_retry_policy` (by group,
/// over it).
pub(super) fn retry_policies(
    raw: &RawConfig,
    groups: &BTreeMap<String, Vec<Deployment>>,
    errs: &mut Errors,
) -> (RetryPolicy, BTreeMap<String, RetryPolicy>) {
    let rs = &raw.router_settings;
    let global = rs
        .retry_policy
        .as_ref()
        .map(|p| retry_policy("router_settings.retry_policy", p, errs))
        .unwrap_or_default();
    let mut per_group = BTreeMap::new();
    for (group, p) in rs.model_group_retry_policy.iter().flatten() {
        let key = format!("router_settings.model_group_retry_policy.{group}");
        if !groups.contains_key(group) {
            errs.add(&key, unknown_group(group, groups));
            continue;
        }
        per_group.insert(group.clone(), retry_policy(&key, p, errs));
    }
    (global, per_group)
}

pub(super) fn retry_policy(key: &str, p: &RawRetryPolicy, errs: &mut Errors) -> RetryPolicy {
    let mut out = RetryPolicy::default();
    for (kind, name, value) in [
        (
            FailKind::BadRequest,
            "BadRequestErrorRetries",
            p.BadRequestErrorRetries,
        ),
        (
            FailKind::Authentication,
            "AuthenticationErrorRetries",
            p.AuthenticationErrorRetries,
        ),
        (
            FailKind::Timeout,
            "TimeoutErrorRetries",
            p.TimeoutErrorRetries,
        ),
        (
            FailKind::RateLimit,
            "RateLimitErrorRetries",
            p.RateLimitErrorRetries,
        ),
        (
            FailKind::ContentPolicy,
            "ContentPolicyViolationErrorRetries",
            p.ContentPolicyViolationErrorRetries,
        ),
        (
            FailKind::InternalServer,
            "InternalServerErrorRetries",
            p.InternalServerErrorRetries,
        ),
    ] {
        let Some(n) = value else { continue };
        if n > MAX_RETRIES_LIMIT {
            errs.add(
                format!("{key}.{name}"),
                format!("must be at most {MAX_RETRIES_LIMIT}"),
            );
        }
        if kind.is_request_fault() || kind == FailKind::Authentication {
            if n > 0 {
                errs.warn(format!(
                    "`{key}.{name}`: llm-router does not retry {}; the setting has no effect",
                    if kind == FailKind::Authentication {
                        "a deployment that refused its credentials (the group's other deployments are tried, then its fallbacks)"
                    } else {
                        "a request the provider rejected (it goes to the special fallbacks, if any)"
                    }
                ));
            }
            continue;
        }
        out.0[kind.index()] = Some(n);
    }
    out
}

/// `model_group_alias`: other names for groups.
pub(super) fn aliases(
    raw: &RawConfig,
    groups: &BTreeMap<String, Vec<Deployment>>,
    errs: &mut Errors,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    use crate::config::raw::RawAlias;
    let mut out = BTreeMap::new();
    let mut hidden = BTreeSet::new();
    for (alias, target) in raw.router_settings.model_group_alias.iter().flatten() {
        let key = format!("router_settings.model_group_alias.{alias}");
        let group = match target {
            RawAlias::Group(g) => g,
            RawAlias::Entry { model, hidden: h } => {
                if *h {
                    hidden.insert(alias.clone());
                }
                model
            }
        };
        if groups.contains_key(alias) {
            errs.add(&key, format!("`{alias}` is a model group's own name"));
        } else if !groups.contains_key(group) {
            errs.add(&key, unknown_group(group, groups));
        } else {
            out.insert(alias.clone(), group.clone());
        }
    }
    (out, hidden)
}
