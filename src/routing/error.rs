//! Why a call failed, in routing's terms. The gRPC status each variant gets (code, ErrorInfo
//! reason, RetryInfo) is chosen in one exhaustive match in `api::status`; errors the API layer
//! finds before routing (a malformed field, the server at its cap) are its own (`api::error`).

use std::time::Duration;

use super::{callers::Refusal, context::Denied, failure::Failure};
use crate::config::StreamRecovery;

#[derive(Debug, Clone)]
pub enum CallError {
    /// The request's `fallbacks[index]` names no model group the call may use.
    UnknownFallback {
        index: usize,
        name: String,
        known: Vec<String>,
    },
    /// The request's `fallbacks` name more groups than `router_settings.max_fallbacks`.
    TooManyFallbacks { count: usize, max: usize },
    /// The requested model group does not exist.
    ModelNotFound { model: String, known: Vec<String> },
    /// `mock_timeout` was asked for while `router_settings.allow_mock_timeout` is false.
    MockTimeoutDisabled,
    /// `mock_response` was asked for while `router_settings.allow_mock_response` is false.
    MockResponseDisabled,
    /// The call's total deadline ran out before the chain was done.
    DeadlineExceeded,
    /// Every group of the chain was tried and the last attempt failed like this.
    FallbacksExhausted(Failure),
    /// A provider said the request itself is bad (400/404/413/422): no fallback will help.
    UpstreamRejected(Failure),
    /// The prompt does not fit the last model the chain tried, and no fallback is left.
    ContextWindowExceeded(Failure),
    /// The provider refused the content and the group has no content-policy fallbacks.
    ContentPolicyViolation(Failure),
    /// A committed stream was silent longer than `stream_idle_timeout`.
    StreamIdleTimeout { idle: Duration },
    /// A committed stream delivered tokens more slowly than the slow-stream guard allows
    /// (a [`Failure::TooSlow`]).
    StreamTooSlow(Failure),
    /// A committed stream broke: the provider cut it, or sent garbage.
    StreamInterrupted { detail: String },
    /// A committed stream broke (`broke`), and recovering it in `mode` through the rest of the
    /// chain failed too (`why`). Answered as the break itself: a recovery never hides it.
    RecoveryFailed {
        broke: Box<CallError>,
        mode: StreamRecovery,
        why: String,
    },
    /// No attempt could be made anywhere in the chain: every deployment was cooling down
    /// (`cooling`) or at capacity. The first is back in `back_in`.
    NoDeploymentAvailable { back_in: Duration, cooling: bool },
    /// The request needs a capability (its `model_info` key) no deployment of the chain has.
    CapabilityUnsupported { capability: &'static str },
    /// The caller's policy does not grant the group or the request field.
    PermissionDenied { caller: String, denied: Denied },
    /// The caller is at one of its limits (rate, tokens, concurrency, budget).
    CallerLimited { caller: String, refusal: Refusal },
}

impl CallError {
    /// The request field a failure is about and what is wrong with it, when it is a field's.
    pub fn field_violation(&self) -> Option<(String, String)> {
        match self {
            CallError::UnknownFallback { index, name, known } => Some((
                format!("fallbacks[{index}]"),
                format!(
                    "names unknown model group `{name}`; known model groups: {}",
                    known.join(", ")
                ),
            )),
            CallError::TooManyFallbacks { count, max } => Some((
                "fallbacks".into(),
                format!(
                    "names {count} model groups; router_settings.max_fallbacks allows at most {max}"
                ),
            )),
            _ => None,
        }
    }

    /// What went wrong, for the status message: names the field, group or setting involved.
    pub fn message(&self) -> String {
        match self {
            CallError::UnknownFallback { .. } | CallError::TooManyFallbacks { .. } => {
                let (field, description) = self.field_violation().unwrap_or_default();
                format!("`{field}` {description}")
            }
            CallError::ModelNotFound { model, known } if model.is_empty() => {
                format!(
                    "`model` is required; known model groups: {}",
                    known.join(", ")
                )
            }
            CallError::ModelNotFound { model, known } => {
                format!(
                    "unknown model group `{model}`; known model groups: {}",
                    known.join(", ")
                )
            }
            CallError::MockTimeoutDisabled => {
                "`mock_timeout` is disabled by router_settings.allow_mock_timeout".into()
            }
            CallError::MockResponseDisabled => {
                "`mock_response` is disabled by router_settings.allow_mock_response".into()
            }
            CallError::DeadlineExceeded => {
                "the call's deadline passed before any deployment answered".into()
            }
            CallError::FallbacksExhausted(last) => {
                format!(
                    "every deployment and fallback failed; last: {}",
                    last.detail()
                )
            }
            CallError::UpstreamRejected(f) => {
                format!("the provider rejected the request: {}", f.detail())
            }
            CallError::ContextWindowExceeded(f) => format!(
                "the prompt exceeds the context window of the last model tried, and no fallback is left (context_window_fallbacks, else the regular fallbacks): {}",
                f.detail()
            ),
            CallError::ContentPolicyViolation(f) => format!(
                "the provider refused the content and no content_policy_fallbacks are configured: {}",
                f.detail()
            ),
            CallError::StreamIdleTimeout { idle } => {
                format!("the stream was silent for longer than stream_idle_timeout ({idle:?})")
            }
            CallError::StreamTooSlow(f) => f.detail(),
            CallError::StreamInterrupted { detail } => {
                format!("the provider's stream broke: {detail}")
            }
            CallError::RecoveryFailed { broke, mode, why } => format!(
                "{}; recovery by {} was tried and failed: {why}",
                broke.message(),
                mode.name()
            ),
            CallError::NoDeploymentAvailable {
                back_in,
                cooling: true,
            } => format!(
                "every deployment of the model group and its fallbacks is cooling down after repeated failures; the first is back in {:.1}s",
                back_in.as_secs_f64()
            ),
            CallError::NoDeploymentAvailable {
                back_in,
                cooling: false,
            } => format!(
                "every deployment of the model group and its fallbacks is at its max_parallel_requests or rpm/tpm limit; retry in {:.1}s",
                back_in.as_secs_f64()
            ),
            CallError::CapabilityUnsupported { capability } => format!(
                "no deployment of the model group or its fallbacks takes {}, which the request has; nothing was sent",
                super::capability::lacking(capability)
            ),
            CallError::PermissionDenied {
                caller,
                denied: Denied::Group(group),
            } => format!("caller `{caller}` may not use model group `{group}` (callers[].models)"),
            CallError::PermissionDenied {
                caller,
                denied: Denied::Field { field, why },
            } => format!("caller `{caller}`: `{field}` {why}"),
            CallError::CallerLimited { caller, refusal } => refusal.message(caller),
        }
    }
}
