//! Why an attempt did not answer, and what that failure is, in the one table that classifies
//! it: whose fault it is (which the retry policy decides on), the attempt log's outcome, and
//! the kind a cooldown counts it as.

use std::time::Duration;

use crate::config::FailKind;
use crate::proto::AttemptOutcome;
use crate::providers::{ErrorKind, ProviderError};

/// Why an attempt did not answer.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The attempt's deadline (or the first-chunk deadline, when `first_chunk`) passed;
    /// `by_client` when that deadline was the client's own limit, not the config's.
    Timeout { first_chunk: bool, by_client: bool },
    /// `mock_timeout` made the attempt wait out its deadline without calling a provider.
    MockTimeout,
    /// A committed stream was silent for longer than `stream_idle_timeout`.
    IdleTimeout { idle: Duration },
    /// A committed stream delivered `rate` tokens a second over `window`, below the slow-stream
    /// guard's `min`; `by_client` when that minimum (or window) was the request's, not the
    /// config's.
    TooSlow {
        rate: f64,
        min: f64,
        window: Duration,
        by_client: bool,
    },
    /// The attempt's deadline (the first-chunk one, when `first_chunk`) passed while it
    /// waited, `waited` long, for a connection: the router's pool to the provider was at its
    /// bound. The request was never sent; the deployment is not at fault.
    Saturated { first_chunk: bool, waited: Duration },
    /// The provider answered with an error, or could not be reached.
    Provider(ProviderError),
}

/// Who a failure says is at fault: what the chain may still try after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nobody in particular: the same or another deployment may answer if asked again
    /// (timeouts, 5xx, broken connections, rate limits).
    Transient,
    /// This deployment will not work for this call (bad credentials, a refusal); the group's
    /// other deployments may.
    Deployment,
    /// The request itself: no deployment will take it.
    Request,
    /// The prompt is too long for the model.
    ContextWindow,
    /// The content was refused on policy grounds.
    ContentPolicy,
}

impl Fault {
    /// Whether another deployment of the group may still answer the call, so that attempts
    /// racing this one are left to run.
    pub fn another_deployment_may_answer(self) -> bool {
        matches!(self, Fault::Transient | Fault::Deployment)
    }
}

/// A failure's classification: one row of the table in [`Failure::class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub fault: Fault,
    pub outcome: AttemptOutcome,
    /// The kind a cooldown and the final status count it as.
    pub kind: FailKind,
}

impl Failure {
    /// A group none of whose deployments can take the prompt (pre-call checks): a
    /// context-window error that was never sent.
    pub fn prompt_too_long(request_tokens: u64) -> Failure {
        Failure::Provider(ProviderError::new(
            ErrorKind::ContextWindow,
            0,
            format!(
                "the prompt, about {request_tokens} tokens, is over the model_info.max_input_tokens of every deployment of the group"
            ),
        ))
    }

    /// The one place a failure is classified.
    pub fn class(&self) -> Class {
        let (fault, outcome, kind) = match self {
            Failure::Timeout {
                by_client: true, ..
            } => (
                Fault::Transient,
                AttemptOutcome::CallerTimeout,
                FailKind::Timeout,
            ),
            Failure::Timeout {
                first_chunk: true, ..
            } => (
                Fault::Transient,
                AttemptOutcome::FirstChunkTimeout,
                FailKind::Timeout,
            ),
            Failure::Timeout {
                first_chunk: false, ..
            } => (Fault::Transient, AttemptOutcome::Timeout, FailKind::Timeout),
            Failure::MockTimeout => (
                Fault::Transient,
                AttemptOutcome::MockTimeout,
                FailKind::Timeout,
            ),
            Failure::IdleTimeout { .. } => (
                Fault::Transient,
                AttemptOutcome::IdleTimeout,
                FailKind::Timeout,
            ),
            Failure::TooSlow { .. } => {
                (Fault::Transient, AttemptOutcome::TooSlow, FailKind::Timeout)
            }
            Failure::Saturated { .. } => (
                Fault::Transient,
                AttemptOutcome::PoolSaturated,
                FailKind::Timeout,
            ),
            Failure::Provider(e) => match e.kind {
                ErrorKind::Connect => (
                    Fault::Transient,
                    AttemptOutcome::ConnectError,
                    FailKind::InternalServer,
                ),
                ErrorKind::Upstream => (
                    Fault::Transient,
                    AttemptOutcome::UpstreamError,
                    FailKind::InternalServer,
                ),
                ErrorKind::RateLimited => (
                    Fault::Transient,
                    AttemptOutcome::RateLimited,
                    FailKind::RateLimit,
                ),
                ErrorKind::Auth | ErrorKind::Refused => (
                    Fault::Deployment,
                    AttemptOutcome::Rejected,
                    FailKind::Authentication,
                ),
                ErrorKind::BadRequest => (
                    Fault::Request,
                    AttemptOutcome::Rejected,
                    FailKind::BadRequest,
                ),
                ErrorKind::ContextWindow => (
                    Fault::ContextWindow,
                    AttemptOutcome::Rejected,
                    FailKind::BadRequest,
                ),
                ErrorKind::ContentPolicy => (
                    Fault::ContentPolicy,
                    AttemptOutcome::Rejected,
                    FailKind::ContentPolicy,
                ),
            },
        };
        Class {
            fault,
            outcome,
            kind,
        }
    }

    pub fn fault(&self) -> Fault {
        self.class().fault
    }

    pub fn outcome(&self) -> AttemptOutcome {
        self.class().outcome
    }

    /// Whether the failure counts against the deployment (its cooldown count, retry budget and
    /// latency): not when `mock_timeout` never reached it, nor when the router's own pool held
    /// it back, nor when the caller's own limit cut it short. Only the deployment's configured
    /// limits and the provider's errors count.
    pub fn counts_against_deployment(&self) -> bool {
        !matches!(
            self,
            Failure::MockTimeout
                | Failure::Saturated { .. }
                | Failure::Timeout {
                    by_client: true,
                    ..
                }
                | Failure::TooSlow {
                    by_client: true,
                    ..
                }
        )
    }

    /// How long the provider asked us to wait before asking again (its `Retry-After`, rate
    /// limit reset or RetryInfo), when it said.
    pub fn provider_wait_hint(&self) -> Option<Duration> {
        match self {
            Failure::Provider(e) => e.wait_hint,
            Failure::Timeout { .. }
            | Failure::MockTimeout
            | Failure::IdleTimeout { .. }
            | Failure::TooSlow { .. }
            | Failure::Saturated { .. } => None,
        }
    }

    pub fn upstream_status(&self) -> u16 {
        match self {
            Failure::Provider(e) => e.status,
            Failure::Timeout { .. }
            | Failure::MockTimeout
            | Failure::IdleTimeout { .. }
            | Failure::TooSlow { .. }
            | Failure::Saturated { .. } => 0,
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Failure::Timeout {
                first_chunk: true,
                by_client: true,
            } => "no first chunk before the request's stream_timeout".into(),
            Failure::Timeout {
                first_chunk: false,
                by_client: true,
            } => "no answer before the caller's deadline (grpc-timeout or the request's timeout)"
                .into(),
            Failure::Timeout {
                first_chunk: true, ..
            } => "no first chunk before the first-chunk deadline".into(),
            Failure::Timeout {
                first_chunk: false, ..
            } => "no answer before the attempt deadline".into(),
            Failure::MockTimeout => "mock_timeout: waited out the attempt deadline".into(),
            Failure::IdleTimeout { idle } => {
                format!("the stream was silent for longer than stream_idle_timeout ({idle:?})")
            }
            Failure::TooSlow {
                rate,
                min,
                window,
                by_client,
            } => format!(
                "the stream delivered about {rate:.1} tokens/s over the last {}, below the {} stream_min_tokens_per_s ({min})",
                crate::config::duration::display(*window),
                if *by_client {
                    "request's"
                } else {
                    "configured"
                }
            ),
            Failure::Saturated {
                first_chunk,
                waited,
            } => format!(
                "the {} deadline passed after {} ms waiting for a connection to the provider: the router's pool to it is full (router_settings.pool_max_http2_connections, or pool_max_connections for HTTP/1.1); the request was not sent, and the deployment is not charged",
                if *first_chunk {
                    "first-chunk"
                } else {
                    "attempt"
                },
                waited.as_millis()
            ),
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
    fn every_failure_has_a_fault_and_an_outcome() {
        let timeout = |first_chunk, by_client| Failure::Timeout {
            first_chunk,
            by_client,
        };
        assert_eq!(timeout(true, false).fault(), Fault::Transient);
        assert_eq!(Failure::MockTimeout.fault(), Fault::Transient);
        assert_eq!(provider(ErrorKind::Connect).fault(), Fault::Transient);
        assert_eq!(provider(ErrorKind::Upstream).fault(), Fault::Transient);
        assert_eq!(provider(ErrorKind::RateLimited).fault(), Fault::Transient);
        assert_eq!(provider(ErrorKind::Auth).fault(), Fault::Deployment);
        assert_eq!(provider(ErrorKind::Refused).fault(), Fault::Deployment);
        assert_eq!(provider(ErrorKind::BadRequest).fault(), Fault::Request);
        assert_eq!(
            provider(ErrorKind::ContextWindow).fault(),
            Fault::ContextWindow
        );
        assert_eq!(
            provider(ErrorKind::Auth).outcome(),
            AttemptOutcome::Rejected
        );
        assert_eq!(
            timeout(true, false).outcome(),
            AttemptOutcome::FirstChunkTimeout
        );
        assert_eq!(timeout(true, true).outcome(), AttemptOutcome::CallerTimeout);
        assert_eq!(
            timeout(false, true).outcome(),
            AttemptOutcome::CallerTimeout
        );
        assert!(!Failure::MockTimeout.counts_against_deployment());
        let saturated = Failure::Saturated {
            first_chunk: true,
            waited: Duration::from_millis(40),
        };
        assert!(!saturated.counts_against_deployment());
        assert_eq!(saturated.outcome(), AttemptOutcome::PoolSaturated);
        assert_eq!(saturated.fault(), Fault::Transient);
        assert!(saturated.detail().contains("first-chunk deadline"));
        assert!(!timeout(false, true).counts_against_deployment());
        assert!(!timeout(true, true).counts_against_deployment());
        assert!(timeout(false, false).counts_against_deployment());
        assert!(timeout(true, false).counts_against_deployment());
        let slow = |by_client| Failure::TooSlow {
            rate: 0.5,
            min: 5.0,
            window: Duration::from_secs(2),
            by_client,
        };
        assert_eq!(slow(false).fault(), Fault::Transient);
        assert_eq!(slow(false).outcome(), AttemptOutcome::TooSlow);
        assert!(slow(false).counts_against_deployment());
        assert!(!slow(true).counts_against_deployment());
        assert_eq!(
            slow(true).detail(),
            "the stream delivered about 0.5 tokens/s over the last 2s, below the request's stream_min_tokens_per_s (5)"
        );
    }
}
