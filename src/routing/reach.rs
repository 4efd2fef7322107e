//! Which model groups a call may reach: the requested group (by name or alias), then the
//! request's own fallbacks or the configured chain, and a group's special fallback lists
//! (context-window, content-policy). The one place that decides it: planning, the chain walk's
//! switch to a special list and ListModels ask here, and a recovery walks only the rest of a
//! chain planned here, so what a caller may use ([`CallContext::allows`]) is applied once.

use std::sync::Arc;

use super::{
    CallError,
    context::{CallContext, Denied},
    policy::Special,
};
use crate::config::{Config, ModelGroup};
use crate::providers::bounded;

/// The groups of one config snapshot as one call may see them.
pub struct Reach<'a> {
    config: &'a Config,
    context: &'a CallContext,
}

impl<'a> Reach<'a> {
    pub fn new(config: &'a Config, context: &'a CallContext) -> Self {
        Reach { config, context }
    }

    /// The groups the call may use, by name: what ListModels lists and errors name.
    pub fn visible(&self) -> impl Iterator<Item = &'a Arc<ModelGroup>> + '_ {
        self.config
            .groups
            .values()
            .filter(|g| self.context.allows(g))
    }

    /// The aliases (`model_group_alias`) of the groups the call may use, by alias: each with
    /// the group it resolves to. An alias of a group the call may not use is not shown, as the
    /// group is not, nor one configured `hidden`.
    pub fn visible_aliases(&self) -> impl Iterator<Item = (&'a str, &'a Arc<ModelGroup>)> + '_ {
        self.config
            .aliases
            .keys()
            .filter(|alias| !self.config.hidden_aliases.contains(*alias))
            .filter_map(|alias| Some((alias.as_str(), self.group(alias)?)))
    }

    /// A group by name or alias, if it exists and the call may use it.
    pub fn group(&self, name: &str) -> Option<&'a Arc<ModelGroup>> {
        self.config.group(name).filter(|g| self.context.allows(g))
    }

    /// The names of the groups the call may use, sorted, for error messages.
    fn known(&self) -> Vec<String> {
        self.visible().map(|g| g.name.clone()).collect()
    }

    /// The requested group: PERMISSION_DENIED when it exists and the caller may not use it.
    pub fn requested(&self, model: &str) -> Result<&'a Arc<ModelGroup>, CallError> {
        match self.config.group(model) {
            None => Err(CallError::ModelNotFound {
                model: echo(model),
                known: self.known(),
            }),
            Some(g) if !self.context.allows(g) => Err(CallError::PermissionDenied {
                caller: self.context.caller.as_str().to_string(),
                denied: Denied::Group(echo(model)),
            }),
            Some(g) => Ok(g),
        }
    }

    /// The call's chain: the requested group, then the request's `fallbacks` when it names
    /// any (each must exist; a group named twice is tried once), else the group's configured
    /// chain, cut at `router_settings.max_fallbacks`. A fallback the caller may not use is
    /// skipped (and logged), never sent.
    pub fn chain(
        &self,
        model: &str,
        request_fallbacks: &[String],
    ) -> Result<Vec<Arc<ModelGroup>>, CallError> {
        let requested = self.requested(model)?;
        let max = self.config.router.max_fallbacks as usize;
        let mut chain = vec![requested.clone()];
        if request_fallbacks.is_empty() {
            // A configured chain longer than max_fallbacks is cut (check-config warns of it).
            let configured = requested.fallbacks.iter().take(max);
            chain.extend(configured.filter_map(|name| self.group(name).cloned()));
            return Ok(chain);
        }
        for (index, name) in request_fallbacks.iter().enumerate() {
            let group = self
                .config
                .group(name)
                .ok_or_else(|| CallError::UnknownFallback {
                    index,
                    name: echo(name),
                    known: self.known(),
                })?;
            if !self.context.allows(group) {
                tracing::info!(
                    caller = self.context.caller.as_str(),
                    fallback = %group.name,
                    "request fallback skipped: the caller may not use this group"
                );
                continue;
            }
            // A group named twice would only be tried twice: once is enough.
            if !chain.iter().skip(1).any(|g| Arc::ptr_eq(g, group)) {
                chain.push(group.clone());
            }
        }
        if chain.len() - 1 > max {
            return Err(CallError::TooManyFallbacks {
                count: chain.len() - 1,
                max,
            });
        }
        Ok(chain)
    }

    /// `group`'s special fallback list, which replaces the rest of a chain.
    pub fn special(&self, group: &ModelGroup, special: Special) -> Vec<Arc<ModelGroup>> {
        let names = match special {
            Special::ContextWindow => &group.context_window_fallbacks,
            Special::ContentPolicy => &group.content_policy_fallbacks,
        };
        names
            .iter()
            .filter_map(|name| self.group(name).cloned())
            .collect()
    }
}

/// A name from a request, as errors echo it: cut to 128 bytes, so that a caller cannot make
/// the router send back (or log) whatever it sent.
pub fn echo(name: &str) -> String {
    bounded(name, 128)
}
