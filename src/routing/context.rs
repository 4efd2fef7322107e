//! What a call may use, fixed when it arrives: who is calling and the policy that caller has.
//! The API layer builds one per call from what the caller proved; routing reads it wherever a
//! call may reach a model group (see [`super::reach`]) and where a request's switches are
//! granted ([`CallContext::permit`]).
//!
//! A call with no policy (anonymous while `auth.required` is false, as every call was before
//! callers were told apart) may use every group and every switch the router allows.

use std::sync::Arc;

use super::{CallError, CallRequest};
use crate::config::{ModelGroup, auth::CallerPolicy};

/// What one call may use.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// Who is calling, as proven (a client certificate, an API key, a header from a configured
    /// trusted peer); `None` for an anonymous call.
    pub identity: Option<Identity>,
    /// The caller's name as metrics, logs and traces show it.
    pub caller: CallerName,
    /// What the caller may use; `None`: everything.
    pub policy: Option<Arc<CallerPolicy>>,
}

/// A caller's proven identity: a SPIFFE id, a certificate's name, a trusted header's value,
/// or an API key's caller. Never a secret: it may be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(pub Arc<str>);

/// The labels of calls of no listed caller; no caller may take these names.
pub const UNAUTHENTICATED: &str = "unauthenticated";
pub const UNKNOWN: &str = "unknown";

/// A caller as labels show it: bounded by the config, never a key or a raw header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CallerName {
    /// No credential was presented.
    #[default]
    Unauthenticated,
    /// A proven identity that no caller lists (served under `auth.default`, if set).
    Unknown,
    /// A configured caller's `name`.
    Named(Arc<str>),
}

impl CallerName {
    /// As a metric label: borrowed (free) for calls of no listed caller.
    pub fn label(&self) -> std::borrow::Cow<'static, str> {
        match self {
            CallerName::Named(n) => std::borrow::Cow::Owned(n.to_string()),
            CallerName::Unauthenticated => std::borrow::Cow::Borrowed(UNAUTHENTICATED),
            CallerName::Unknown => std::borrow::Cow::Borrowed(UNKNOWN),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            CallerName::Unauthenticated => UNAUTHENTICATED,
            CallerName::Unknown => UNKNOWN,
            CallerName::Named(n) => n,
        }
    }
}

/// What a caller may not use, for PERMISSION_DENIED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The model group (by the name the request used).
    Group(String),
    /// A request field the caller may not set (or not that high).
    Field { field: &'static str, why: String },
}

impl CallContext {
    /// A call from a caller nobody has identified, under no policy.
    pub fn anonymous() -> Self {
        CallContext::default()
    }

    /// Whether the call may use `group`.
    pub fn allows(&self, group: &ModelGroup) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|p| p.allows_group(&group.name))
    }

    /// Whether hedged attempts may run for this call where its groups hedge.
    pub fn hedging(&self) -> bool {
        self.policy.as_ref().is_none_or(|p| p.knobs.hedging)
    }

    /// The one place that decides which of a request's switches the caller may use. The
    /// router's own gates (`allow_mock_timeout`, `allow_mock_response`) still apply after it.
    pub fn permit(&self, req: &CallRequest) -> Result<(), CallError> {
        let Some(p) = &self.policy else {
            return Ok(());
        };
        let deny = |field: &'static str, why: String| {
            Err(CallError::PermissionDenied {
                caller: self.caller.as_str().to_string(),
                denied: Denied::Field { field, why },
            })
        };
        let k = &p.knobs;
        if !k.mock {
            if req.mock_timeout {
                return deny(
                    "mock_timeout",
                    "is not granted (callers[].allow.mock)".into(),
                );
            }
            if req.mock_response.is_some() {
                return deny(
                    "mock_response",
                    "is not granted (callers[].allow.mock)".into(),
                );
            }
        }
        if !k.fallbacks && !req.fallbacks.is_empty() {
            return deny(
                "fallbacks",
                "is not granted (callers[].allow.fallbacks): the configured chain applies".into(),
            );
        }
        if let Some(n) = req.num_retries
            && n > k.max_num_retries
        {
            return deny(
                "num_retries",
                format!(
                    "may be at most {} for this caller (callers[].allow.max_num_retries)",
                    k.max_num_retries
                ),
            );
        }
        if !k.stream_recovery && req.stream_recovery.is_some() {
            return deny(
                "stream_recovery",
                "is not granted (callers[].allow.stream_recovery): the group's setting applies"
                    .into(),
            );
        }
        if !k.stream_recovery && req.slow_stream.tightens() {
            let field = if req.slow_stream.per_s.is_some_and(|r| r > 0.0) {
                "stream_min_tokens_per_s"
            } else {
                "stream_min_tokens_window"
            };
            return deny(
                field,
                "is not granted (callers[].allow.stream_recovery): only 0 (off) may be sent; the group's guard applies"
                    .into(),
            );
        }
        Ok(())
    }
}
