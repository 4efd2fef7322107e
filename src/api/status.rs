//! From a call's failure to a gRPC status with rich details: google.rpc.ErrorInfo always,
//! RetryInfo when the caller should wait, BadRequest for a bad field, and the call's
//! AttemptLog. [`GrpcError::grpc`] is the one place that chooses a failure's code, reason and
//! retry delay: an exhaustive match, so a new routing error forces a decision here.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use prost::Message;
use prost_types::Any;
use tonic::{Code, Status};
use tonic_types::pb;

use super::error::ApiError;
use crate::config::FailKind;
use crate::proto::{Attempt, AttemptLog};
use crate::routing::{CallError, Denied, Failure, callers::Limit, to_proto_duration};

pub const ATTEMPT_LOG_TYPE_URL: &str = "type.googleapis.com/llmrouter.v1.AttemptLog";

/// ErrorInfo domain of every error the service returns.
pub const ERROR_DOMAIN: &str = "llmrouter.v1";

/// The RetryInfo delay of a call shed at `max_concurrent_calls`: short, since calls finish
/// all the time, and jittered by the client's own backoff.
pub const OVERLOADED_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The RetryInfo delay after a chain that ended rate-limited, when the provider gave no hint.
const RATE_LIMITED_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How a failure is answered over gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grpc {
    pub code: Code,
    /// The ErrorInfo reason: a stable UPPER_SNAKE name clients can switch on.
    pub reason: &'static str,
    /// The RetryInfo delay: how long the caller should wait before calling again.
    pub retry_delay: Option<Duration>,
}

/// A failure as gRPC sees it: routing's ([`CallError`]) or the API layer's own ([`ApiError`]).
pub trait GrpcError {
    fn grpc(&self) -> Grpc;

    /// The status message: names the field, group or setting involved.
    fn message(&self) -> String;

    /// The request field at fault and what is wrong with it, for BadRequest.
    fn bad_field(&self) -> Option<(String, String)> {
        None
    }

    /// ErrorInfo metadata of the failure itself (the attempts' are added by the caller).
    fn annotate(&self, _metadata: &mut HashMap<String, String>) {}

    fn code(&self) -> Code {
        self.grpc().code
    }

    fn reason(&self) -> &'static str {
        self.grpc().reason
    }

    fn retry_delay(&self) -> Option<Duration> {
        self.grpc().retry_delay
    }
}

impl GrpcError for CallError {
    fn grpc(&self) -> Grpc {
        let (code, reason, retry_delay) = match self {
            CallError::UnknownFallback { .. } | CallError::TooManyFallbacks { .. } => {
                (Code::InvalidArgument, "INVALID_ARGUMENT", None)
            }
            CallError::ModelNotFound { .. } => (Code::NotFound, "MODEL_NOT_FOUND", None),
            CallError::MockTimeoutDisabled => {
                (Code::FailedPrecondition, "MOCK_TIMEOUT_DISABLED", None)
            }
            CallError::MockResponseDisabled => {
                (Code::FailedPrecondition, "MOCK_RESPONSE_DISABLED", None)
            }
            CallError::DeadlineExceeded => (Code::DeadlineExceeded, "DEADLINE_EXCEEDED", None),
            CallError::FallbacksExhausted(last) => {
                let code = exhausted_code(last);
                let delay = (code == Code::ResourceExhausted).then(|| {
                    last.provider_wait_hint()
                        .unwrap_or(RATE_LIMITED_RETRY_DELAY)
                });
                (code, "FALLBACKS_EXHAUSTED", delay)
            }
            CallError::UpstreamRejected(_) => (Code::InvalidArgument, "UPSTREAM_REJECTED", None),
            CallError::ContextWindowExceeded(_) => {
                (Code::InvalidArgument, "CONTEXT_WINDOW_EXCEEDED", None)
            }
            CallError::ContentPolicyViolation(_) => {
                (Code::InvalidArgument, "CONTENT_POLICY_VIOLATION", None)
            }
            CallError::StreamIdleTimeout { .. } => {
                (Code::DeadlineExceeded, "STREAM_IDLE_TIMEOUT", None)
            }
            CallError::StreamInterrupted { .. } => (Code::Unavailable, "STREAM_INTERRUPTED", None),
            // Alive, so not a deadline: another try (or a recovery) may well be faster.
            CallError::StreamTooSlow(_) => (Code::Unavailable, "STREAM_TOO_SLOW", None),
            // The break decides: what the recovery ran into is in the message and the log.
            CallError::RecoveryFailed { broke, .. } => {
                let g = broke.grpc();
                (g.code, g.reason, g.retry_delay)
            }
            // Rounded up to the millisecond, so a client that waits it finds the deployment back.
            CallError::NoDeploymentAvailable { back_in, cooling } => (
                if *cooling {
                    Code::Unavailable
                } else {
                    Code::ResourceExhausted
                },
                if *cooling {
                    "ALL_DEPLOYMENTS_COOLING_DOWN"
                } else {
                    "ALL_DEPLOYMENTS_AT_CAPACITY"
                },
                Some(Duration::from_millis(back_in.as_millis() as u64 + 1)),
            ),
            CallError::CapabilityUnsupported { .. } => {
                (Code::FailedPrecondition, "CAPABILITY_UNSUPPORTED", None)
            }
            CallError::PermissionDenied { .. } => {
                (Code::PermissionDenied, "PERMISSION_DENIED", None)
            }
            CallError::CallerLimited { refusal, .. } => (
                Code::ResourceExhausted,
                match refusal.limit {
                    Limit::Rpm(_) | Limit::Tpm(_) => "CALLER_RATE_LIMITED",
                    Limit::Parallel(_) => "CALLER_CONCURRENCY_LIMITED",
                    Limit::Budget { .. } => "CALLER_BUDGET_EXCEEDED",
                },
                // Rounded up to the millisecond, so that a client that waits it is let in.
                Some(Duration::from_millis(
                    refusal.retry_after.as_millis() as u64 + 1,
                )),
            ),
        };
        Grpc {
            code,
            reason,
            retry_delay,
        }
    }

    fn message(&self) -> String {
        CallError::message(self)
    }

    fn bad_field(&self) -> Option<(String, String)> {
        self.field_violation()
    }

    fn annotate(&self, metadata: &mut HashMap<String, String>) {
        if let Some((field, _)) = self.field_violation() {
            metadata.insert("field".to_string(), field);
            return;
        }
        let (key, value) = match self {
            CallError::ModelNotFound { model, .. } => ("model", model.clone()),
            CallError::RecoveryFailed { mode, .. } => ("recovery", mode.name().to_string()),
            CallError::CapabilityUnsupported { capability } => {
                ("capability", capability.to_string())
            }
            CallError::PermissionDenied { caller, denied } => {
                metadata.insert("caller".to_string(), caller.clone());
                match denied {
                    Denied::Group(g) => ("model", g.clone()),
                    Denied::Field { field, .. } => ("field", field.to_string()),
                }
            }
            CallError::CallerLimited { caller, refusal } => {
                metadata.insert("caller".to_string(), caller.clone());
                ("limit", refusal.key().to_string())
            }
            _ => return,
        };
        metadata.insert(key.to_string(), value);
    }
}

impl GrpcError for ApiError {
    fn grpc(&self) -> Grpc {
        match self {
            ApiError::InvalidArgument { .. } => Grpc {
                code: Code::InvalidArgument,
                reason: "INVALID_ARGUMENT",
                retry_delay: None,
            },
            ApiError::Overloaded { .. } | ApiError::PendingBytesExhausted { .. } => Grpc {
                code: Code::ResourceExhausted,
                reason: "OVERLOADED",
                retry_delay: Some(OVERLOADED_RETRY_DELAY),
            },
            ApiError::Unauthenticated { .. } => Grpc {
                code: Code::Unauthenticated,
                reason: "UNAUTHENTICATED",
                retry_delay: None,
            },
            ApiError::Call(e) => e.grpc(),
        }
    }

    fn message(&self) -> String {
        ApiError::message(self)
    }

    fn bad_field(&self) -> Option<(String, String)> {
        match self {
            ApiError::InvalidArgument { field, message } => Some((field.clone(), message.clone())),
            ApiError::Overloaded { .. }
            | ApiError::PendingBytesExhausted { .. }
            | ApiError::Unauthenticated { .. } => None,
            ApiError::Call(e) => e.bad_field(),
        }
    }

    fn annotate(&self, metadata: &mut HashMap<String, String>) {
        match self {
            ApiError::InvalidArgument { field, .. } => {
                metadata.insert("field".to_string(), field.clone());
            }
            ApiError::Overloaded { .. }
            | ApiError::PendingBytesExhausted { .. }
            | ApiError::Unauthenticated { .. } => {}
            ApiError::Call(e) => e.annotate(metadata),
        }
    }
}

/// When the chain is exhausted, the last attempt's failure decides the code.
fn exhausted_code(last: &Failure) -> Code {
    match last.class().kind {
        FailKind::Timeout => Code::DeadlineExceeded,
        FailKind::RateLimit => Code::ResourceExhausted,
        FailKind::InternalServer => Code::Unavailable,
        FailKind::Authentication => Code::FailedPrecondition,
        FailKind::BadRequest | FailKind::ContentPolicy => Code::InvalidArgument,
    }
}

/// The most AttemptLog entries a status carries: its details travel in a header
/// (`grpc-status-details-bin`), which must stay far below what clients and proxies accept.
const MAX_LOGGED_ATTEMPTS: usize = 64;

/// The AttemptLog's budget in a status, encoded. With the message (at most
/// [`MAX_MESSAGE_BYTES`], carried twice: in `grpc-message` and inside the details) and the
/// details' base64, a status's trailers stay under 8 KiB, the soft limit of grpc's C-core
/// (Python, Ruby, C++) and of grpc-java, whatever the chain.
const MAX_LOG_BYTES: usize = 3 * 1024;

/// A status message's bound: the message names the failure; the log and traces have the rest.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Each entry's `detail` is cut to these lengths in turn while the log is over its budget,
/// before any entry is left out: every attempt's outcome is worth more than one's words.
const DETAIL_CUTS: [usize; 2] = [160, 48];

/// The log as a status carries it: whole when it fits; else with shorter details, then with
/// fewer entries (its first and last halves, the deciding attempt last, and `omitted` counting
/// the rest), until it fits [`MAX_LOG_BYTES`].
fn bounded_log(attempts: &[Attempt]) -> AttemptLog {
    let mut keep = attempts.len().min(MAX_LOGGED_ATTEMPTS);
    let mut log = ends(attempts, keep, None);
    for cut in DETAIL_CUTS {
        if log.encoded_len() <= MAX_LOG_BYTES {
            return log;
        }
        log = ends(attempts, keep, Some(cut));
    }
    let last_cut = Some(DETAIL_CUTS[DETAIL_CUTS.len() - 1]);
    // The first and the last attempt always stay.
    while log.encoded_len() > MAX_LOG_BYTES && keep > 2 {
        keep -= 1;
        log = ends(attempts, keep, last_cut);
    }
    log
}

/// The first and last halves of `attempts` (`keep` entries in all), details cut to `cut`.
fn ends(attempts: &[Attempt], keep: usize, cut: Option<usize>) -> AttemptLog {
    let shorten = |a: &Attempt| match cut {
        Some(max) if a.detail.len() > max => Attempt {
            detail: crate::providers::bounded(&a.detail, max),
            ..a.clone()
        },
        _ => a.clone(),
    };
    if attempts.len() <= keep {
        return AttemptLog {
            attempts: attempts.iter().map(shorten).collect(),
            omitted: 0,
        };
    }
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let mut kept: Vec<Attempt> = attempts[..head].iter().map(shorten).collect();
    kept.extend(attempts[attempts.len() - tail..].iter().map(shorten));
    AttemptLog {
        attempts: kept,
        omitted: u32::try_from(attempts.len() - keep).unwrap_or(u32::MAX),
    }
}

/// The status a failure is answered with. `max_retry_delay` caps the RetryInfo delay, whatever
/// it comes from (a provider's hint, a cooldown, a limit's minute): the router's own
/// `max_cooldown_from_hint`, the longest it would itself keep away from a deployment on a
/// provider's word, so that a client honouring RetryInfo never waits longer than that.
pub fn call_status(
    error: &impl GrpcError,
    attempts: &[Attempt],
    max_retry_delay: Duration,
) -> Status {
    let Grpc {
        code,
        reason,
        retry_delay,
    } = error.grpc();
    let retry_delay = retry_delay.map(|d| d.min(max_retry_delay));
    let message = crate::providers::bounded(&error.message(), MAX_MESSAGE_BYTES);

    let mut metadata = HashMap::new();
    metadata.insert("attempts".to_string(), attempts.len().to_string());
    if let Some(last) = attempts.last() {
        metadata.insert("last_model".to_string(), last.model.clone());
        metadata.insert("last_deployment".to_string(), last.deployment.clone());
    }
    error.annotate(&mut metadata);

    let mut details = vec![any(
        "type.googleapis.com/google.rpc.ErrorInfo",
        &pb::ErrorInfo {
            reason: reason.to_string(),
            domain: ERROR_DOMAIN.to_string(),
            metadata,
        },
    )];
    if let Some(delay) = retry_delay {
        details.push(any(
            "type.googleapis.com/google.rpc.RetryInfo",
            &pb::RetryInfo {
                retry_delay: Some(to_proto_duration(delay)),
            },
        ));
    }
    if let Some((field, description)) = error.bad_field() {
        details.push(any(
            "type.googleapis.com/google.rpc.BadRequest",
            &pb::BadRequest {
                field_violations: vec![pb::bad_request::FieldViolation {
                    field,
                    description,
                    ..Default::default()
                }],
            },
        ));
    }
    details.push(any(ATTEMPT_LOG_TYPE_URL, &bounded_log(attempts)));

    let status = pb::Status {
        code: code as i32,
        message: message.clone(),
        details,
    };
    Status::with_details(code, message, Bytes::from(status.encode_to_vec()))
}

fn any(type_url: &str, msg: &impl Message) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: msg.encode_to_vec(),
    }
}

/// Reads the AttemptLog back out of a status, for clients and tests.
pub fn attempt_log(status: &Status) -> Option<AttemptLog> {
    let decoded = pb::Status::decode(status.details()).ok()?;
    decoded
        .details
        .iter()
        .find(|a| a.type_url == ATTEMPT_LOG_TYPE_URL)
        .and_then(|a| AttemptLog::decode(a.value.as_slice()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{ErrorKind, ProviderError};

    #[test]
    fn exhausted_code_follows_the_last_failure() {
        let p = |k| CallError::FallbacksExhausted(Failure::Provider(ProviderError::new(k, 0, "")));
        assert_eq!(p(ErrorKind::RateLimited).code(), Code::ResourceExhausted);
        assert_eq!(
            p(ErrorKind::RateLimited).retry_delay(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(p(ErrorKind::Upstream).code(), Code::Unavailable);
        assert_eq!(p(ErrorKind::Connect).code(), Code::Unavailable);
        assert_eq!(p(ErrorKind::Auth).code(), Code::FailedPrecondition);
        assert_eq!(
            CallError::FallbacksExhausted(Failure::Timeout {
                first_chunk: true,
                by_client: false
            })
            .code(),
            Code::DeadlineExceeded
        );
        assert_eq!(
            CallError::FallbacksExhausted(Failure::MockTimeout).code(),
            Code::DeadlineExceeded
        );
        assert_eq!(p(ErrorKind::Upstream).retry_delay(), None);
    }

    #[test]
    fn a_long_attempt_log_keeps_its_ends_and_counts_what_it_left_out() {
        let attempt = |i: usize| Attempt {
            deployment: format!("d{i}"),
            ..Attempt::default()
        };
        let short: Vec<_> = (0..64).map(attempt).collect();
        assert_eq!(bounded_log(&short).attempts.len(), 64);
        assert_eq!(bounded_log(&short).omitted, 0);
        let long: Vec<_> = (0..1000).map(attempt).collect();
        let status = call_status(
            &CallError::DeadlineExceeded,
            &long,
            Duration::from_secs(300),
        );
        let log = attempt_log(&status).unwrap();
        assert_eq!(log.attempts.len(), 64);
        assert_eq!(log.omitted, 936);
        assert_eq!(log.attempts[0].deployment, "d0");
        assert_eq!(log.attempts[31].deployment, "d31");
        assert_eq!(log.attempts[32].deployment, "d968");
        assert_eq!(
            log.attempts[63].deployment, "d999",
            "the deciding attempt stays last"
        );
        assert!(
            status.details().len() < 8 * 1024,
            "{}",
            status.details().len()
        );
    }

    /// What a status's trailers weigh as a client receives them: `grpc-message`
    /// percent-encoded (at worst three bytes a byte) and the details in base64.
    fn trailer_bytes(status: &Status) -> usize {
        status.message().len() * 3 + status.details().len().div_ceil(3) * 4
    }

    #[test]
    fn a_status_stays_under_8_kib_whatever_the_chain_and_keeps_its_ends() {
        let page = format!(
            "HTTP 503: <html><body>{}</body></html>",
            "Service Unavailable ".repeat(100)
        );
        let attempt = |i: usize| Attempt {
            model: format!("fallback-group-{}", i / 11),
            deployment: format!("fallback-group-{}/deployment-{}", i / 11, i % 11),
            outcome: crate::proto::AttemptOutcome::UpstreamError as i32,
            elapsed: Some(to_proto_duration(Duration::from_millis(1234))),
            upstream_status: 503,
            detail: crate::providers::bounded(&page, 512),
            ..Attempt::default()
        };
        for n in [1, 12, 66, 1000] {
            let attempts: Vec<_> = (0..n).map(attempt).collect();
            let last = attempts.last().unwrap().clone();
            let error = CallError::FallbacksExhausted(Failure::Provider(
                crate::providers::ProviderError::from_status(503, None, &page),
            ));
            let status = call_status(&error, &attempts, Duration::from_secs(300));
            assert!(
                trailer_bytes(&status) < 8 * 1024,
                "{n} attempts: {}",
                trailer_bytes(&status)
            );
            let log = attempt_log(&status).unwrap();
            assert_eq!(log.attempts.len() + log.omitted as usize, n, "{n}");
            assert_eq!(log.attempts[0].deployment, "fallback-group-0/deployment-0");
            let kept_last = log.attempts.last().unwrap();
            assert_eq!(
                (
                    &kept_last.deployment,
                    kept_last.outcome,
                    kept_last.upstream_status
                ),
                (&last.deployment, last.outcome, 503),
                "the deciding attempt stays, {n}"
            );
            if n == 1 {
                assert_eq!(
                    log.attempts[0].detail, last.detail,
                    "one attempt keeps its words"
                );
            }
        }
        // A message longer than its bound (a recovery that failed, say) is cut.
        let long = CallError::StreamInterrupted {
            detail: "x".repeat(10_000),
        };
        let status = call_status(&long, &[], Duration::from_secs(300));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
    }
}
