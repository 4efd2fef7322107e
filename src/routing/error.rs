//! Why a call failed. Every variant chooses its gRPC code and ErrorInfo reason in one exhaustive
//! match, so a new variant forces a decision.

use std::time::Duration;

use tonic::Code;

use super::retry::Failure;
use crate::providers::ErrorKind;

/// ErrorInfo domain of every error the service returns.
pub const ERROR_DOMAIN: &str = "llmrouter.v1";

/// The RetryInfo delay of a call shed at `max_concurrent_calls`: short, since calls finish
/// all the time, and jittered by the client's own backoff.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub enum CallError {
    /// A request field is wrong.
    InvalidArgument { field: String, message: String },
    /// The requested model group does not exist.
    ModelNotFound { model: String, known: Vec<String> },
    /// `mock_timeout` was asked for while `router_settings.allow_mock_timeout` is false.
    MockTimeoutDisabled,
    /// The call's total deadline ran out before the chain was done.
    DeadlineExceeded,
    /// Every group of the chain was tried and the last attempt failed like this.
    FallbacksExhausted(Failure),
    /// A provider said the request itself is bad (400/404/413/422): no fallback will help.
    UpstreamRejected(Failure),
    /// The prompt does not fit and the group has no context-window fallbacks.
    ContextWindowExceeded(Failure),
    /// The provider refused the content and the group has no content-policy fallbacks.
    ContentPolicyViolation(Failure),
    /// A committed stream was silent longer than `stream_idle_timeout`.
    StreamIdleTimeout { idle: Duration },
    /// A committed stream broke: the provider cut it, or sent garbage.
    StreamInterrupted { detail: String },
    /// No attempt could be made anywhere in the chain: every deployment was cooling down
    /// (`cooling`) or at capacity. The first is back after `retry_after`.
    NoDeploymentAvailable {
        retry_after: Duration,
        cooling: bool,
    },
    /// The server is at `server.max_concurrent_calls`: refused before any work.
    Overloaded { limit: u32 },
}

impl CallError {
    pub fn code(&self) -> Code {
        match self {
            CallError::InvalidArgument { .. } => Code::InvalidArgument,
            CallError::ModelNotFound { .. } => Code::NotFound,
            CallError::MockTimeoutDisabled => Code::FailedPrecondition,
            CallError::DeadlineExceeded => Code::DeadlineExceeded,
            CallError::FallbacksExhausted(last) => exhausted_code(last),
            CallError::UpstreamRejected(_) => Code::InvalidArgument,
            CallError::ContextWindowExceeded(_) => Code::InvalidArgument,
            CallError::ContentPolicyViolation(_) => Code::InvalidArgument,
            CallError::StreamIdleTimeout { .. } => Code::DeadlineExceeded,
            CallError::StreamInterrupted { .. } => Code::Unavailable,
            CallError::NoDeploymentAvailable { cooling: true, .. } => Code::Unavailable,
            CallError::NoDeploymentAvailable { cooling: false, .. } => Code::ResourceExhausted,
            CallError::Overloaded { .. } => Code::ResourceExhausted,
        }
    }

    /// The ErrorInfo reason: a stable UPPER_SNAKE name clients can switch on.
    pub fn reason(&self) -> &'static str {
        match self {
            CallError::InvalidArgument { .. } => "INVALID_ARGUMENT",
            CallError::ModelNotFound { .. } => "MODEL_NOT_FOUND",
            CallError::MockTimeoutDisabled => "MOCK_TIMEOUT_DISABLED",
            CallError::DeadlineExceeded => "DEADLINE_EXCEEDED",
            CallError::FallbacksExhausted(_) => "FALLBACKS_EXHAUSTED",
            CallError::UpstreamRejected(_) => "UPSTREAM_REJECTED",
            CallError::ContextWindowExceeded(_) => "CONTEXT_WINDOW_EXCEEDED",
            CallError::ContentPolicyViolation(_) => "CONTENT_POLICY_VIOLATION",
            CallError::StreamIdleTimeout { .. } => "STREAM_IDLE_TIMEOUT",
            CallError::StreamInterrupted { .. } => "STREAM_INTERRUPTED",
            CallError::NoDeploymentAvailable { cooling: true, .. } => {
                "ALL_DEPLOYMENTS_COOLING_DOWN"
            }
            CallError::NoDeploymentAvailable { cooling: false, .. } => {
                "ALL_DEPLOYMENTS_AT_CAPACITY"
            }
            CallError::Overloaded { .. } => "OVERLOADED",
        }
    }

    pub fn message(&self) -> String {
        match self {
            CallError::InvalidArgument { field, message } => format!("`{field}` {message}"),
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
                "the prompt exceeds the model's context window and no context_window_fallbacks are configured: {}",
                f.detail()
            ),
            CallError::ContentPolicyViolation(f) => format!(
                "the provider refused the content and no content_policy_fallbacks are configured: {}",
                f.detail()
            ),
            CallError::StreamIdleTimeout { idle } => {
                format!("the stream was silent for longer than stream_idle_timeout ({idle:?})")
            }
            CallError::StreamInterrupted { detail } => {
                format!("the provider's stream broke: {detail}")
            }
            CallError::NoDeploymentAvailable {
                retry_after,
                cooling: true,
            } => format!(
                "every deployment of the model group and its fallbacks is cooling down after repeated failures; the first is back in {:.1}s",
                retry_after.as_secs_f64()
            ),
            CallError::NoDeploymentAvailable {
                retry_after,
                cooling: false,
            } => format!(
                "every deployment of the model group and its fallbacks is at its max_parallel_requests or rpm/tpm limit; retry in {:.1}s",
                retry_after.as_secs_f64()
            ),
            CallError::Overloaded { limit } => format!(
                "the router is at server.max_concurrent_calls ({limit} calls in flight); retry shortly or elsewhere"
            ),
        }
    }

    /// How long a rate-limited caller should wait, for RetryInfo.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::FallbacksExhausted(f) if exhausted_code(f) == Code::ResourceExhausted => {
                Some(f.retry_after().unwrap_or(Duration::from_secs(1)))
            }
            // Rounded up to the millisecond, so a client that waits it finds the deployment back.
            CallError::NoDeploymentAvailable { retry_after, .. } => {
                Some(Duration::from_millis(retry_after.as_millis() as u64 + 1))
            }
            CallError::Overloaded { .. } => Some(OVERLOADED_RETRY_AFTER),
            _ => None,
        }
    }
}

/// When the chain is exhausted, the last attempt's failure decides the code.
fn exhausted_code(last: &Failure) -> Code {
    match last {
        Failure::Timeout { .. } | Failure::MockTimeout => Code::DeadlineExceeded,
        Failure::Provider(e) => match e.kind {
            ErrorKind::RateLimited => Code::ResourceExhausted,
            ErrorKind::Upstream | ErrorKind::Connect => Code::Unavailable,
            ErrorKind::Auth | ErrorKind::Refused => Code::FailedPrecondition,
            ErrorKind::BadRequest | ErrorKind::ContextWindow | ErrorKind::ContentPolicy => {
                Code::InvalidArgument
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderError;

    #[test]
    fn exhausted_code_follows_the_last_failure() {
        let p = |k| CallError::FallbacksExhausted(Failure::Provider(ProviderError::new(k, 0, "")));
        assert_eq!(p(ErrorKind::RateLimited).code(), Code::ResourceExhausted);
        assert_eq!(
            p(ErrorKind::RateLimited).retry_after(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(p(ErrorKind::Upstream).code(), Code::Unavailable);
        assert_eq!(p(ErrorKind::Connect).code(), Code::Unavailable);
        assert_eq!(p(ErrorKind::Auth).code(), Code::FailedPrecondition);
        assert_eq!(
            CallError::FallbacksExhausted(Failure::Timeout { first_chunk: true }).code(),
            Code::DeadlineExceeded
        );
        assert_eq!(
            CallError::FallbacksExhausted(Failure::MockTimeout).code(),
            Code::DeadlineExceeded
        );
        assert_eq!(p(ErrorKind::Upstream).retry_after(), None);
    }
}
