//! The one place that decides what an attempt's failure means for the call.

use crate::config::FailKind;
use crate::proto::AttemptOutcome;
use crate::providers::{ErrorKind, ProviderError};

/// Why an attempt did not answer.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The attempt's deadline (or the first-chunk deadline, when `first_chunk`) passed.
    Timeout { first_chunk: bool },
    /// `mock_timeout` made the attempt wait out its deadline without calling a provider.
    MockTimeout,
    /// The provider answered with an error, or could not be reached.
    Provider(ProviderError),
}

/// What the chain does after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Retry in this group (another deployment when there is one), then fall back.
    Retry,
    /// This deployment will not work for this call (bad credentials): try the group's other
    /// deployments without retrying it, then fall back.
    SkipDeployment,
    /// The request is at fault: answer at once, no fallback.
    Fatal,
    /// The prompt is too long: go to the group's context-window fallbacks, else answer at once.
    ContextWindow,
    /// The content was refused on policy grounds: go to the group's content-policy fallbacks,
    /// else answer at once.
    ContentPolicy,
}

impl Failure {
    pub fn next(&self) -> Next {
        match self {
            Failure::Timeout { .. } | Failure::MockTimeout => Next::Retry,
            Failure::Provider(e) => match e.kind {
                ErrorKind::Connect | ErrorKind::Upstream | ErrorKind::RateLimited => Next::Retry,
                ErrorKind::Auth | ErrorKind::Refused => Next::SkipDeployment,
                ErrorKind::BadRequest => Next::Fatal,
                ErrorKind::ContextWindow => Next::ContextWindow,
                ErrorKind::ContentPolicy => Next::ContentPolicy,
            },
        }
    }

    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            Failure::Timeout { first_chunk: true } => AttemptOutcome::FirstChunkTimeout,
            Failure::Timeout { first_chunk: false } => AttemptOutcome::Timeout,
            Failure::MockTimeout => AttemptOutcome::MockTimeout,
            Failure::Provider(e) => match e.kind {
                ErrorKind::Connect => AttemptOutcome::ConnectError,
                ErrorKind::Upstream => AttemptOutcome::UpstreamError,
                ErrorKind::RateLimited => AttemptOutcome::RateLimited,
                ErrorKind::Auth
                | ErrorKind::BadRequest
                | ErrorKind::ContextWindow
                | ErrorKind::ContentPolicy
                | ErrorKind::Refused => AttemptOutcome::Rejected,
            },
        }
    }

    /// The failure as a cooldown counts it; `None` for `mock_timeout`, which never reached the
    /// deployment.
    pub fn kind(&self) -> Option<FailKind> {
        Some(match self {
            Failure::Timeout { .. } => FailKind::Timeout,
            Failure::MockTimeout => return None,
            Failure::Provider(e) => match e.kind {
                ErrorKind::Connect | ErrorKind::Upstream => FailKind::InternalServer,
                ErrorKind::RateLimited => FailKind::RateLimit,
                ErrorKind::Auth | ErrorKind::Refused => FailKind::Authentication,
                ErrorKind::BadRequest | ErrorKind::ContextWindow => FailKind::BadRequest,
                ErrorKind::ContentPolicy => FailKind::ContentPolicy,
            },
        })
    }

    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Failure::Provider(e) => e.retry_after,
            Failure::Timeout { .. } | Failure::MockTimeout => None,
        }
    }

    pub fn upstream_status(&self) -> u16 {
        match self {
            Failure::Provider(e) => e.status,
            Failure::Timeout { .. } | Failure::MockTimeout => 0,
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Failure::Timeout { first_chunk: true } => {
                "no first chunk before the first-chunk deadline".into()
            }
            Failure::Timeout { first_chunk: false } => {
                "no answer before the attempt deadline".into()
            }
            Failure::MockTimeout => "mock_timeout: waited out the attempt deadline".into(),
            Failure::Provider(e) => e.detail.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(kind: ErrorKind) -> Failure {
        Failure::Provider(ProviderError::new(kind, 0, ""))
    }

    #[test]
    fn every_failure_has_a_next_step_and_an_outcome() {
        assert_eq!(Failure::Timeout { first_chunk: true }.next(), Next::Retry);
        assert_eq!(Failure::MockTimeout.next(), Next::Retry);
        assert_eq!(provider(ErrorKind::Connect).next(), Next::Retry);
        assert_eq!(provider(ErrorKind::Upstream).next(), Next::Retry);
        assert_eq!(provider(ErrorKind::RateLimited).next(), Next::Retry);
        assert_eq!(provider(ErrorKind::Auth).next(), Next::SkipDeployment);
        assert_eq!(provider(ErrorKind::Refused).next(), Next::SkipDeployment);
        assert_eq!(provider(ErrorKind::BadRequest).next(), Next::Fatal);
        assert_eq!(
            provider(ErrorKind::ContextWindow).next(),
            Next::ContextWindow
        );
        assert_eq!(
            provider(ErrorKind::Auth).outcome(),
            AttemptOutcome::Rejected
        );
        assert_eq!(
            Failure::Timeout { first_chunk: true }.outcome(),
            AttemptOutcome::FirstChunkTimeout
        );
    }
}
