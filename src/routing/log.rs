//! The call's attempt log: every attempt made, and every deployment skipped, in order. It is
//! returned to the caller with the answer, or with the error as its AttemptLog detail.

use std::time::Duration;

use tokio::time::Instant;

use super::health::Unavailable;
use crate::config::{Deployment, ModelGroup};
use crate::proto::{Attempt, AttemptOutcome};

/// What a call has done so far.
#[derive(Default)]
pub struct CallLog {
    pub attempts: Vec<Attempt>,
    /// Attempts started, hedges included.
    pub started: usize,
    /// When the first skipped deployment is back, and whether any was skipped for cooling
    /// (else for capacity): the answer when no attempt could be made at all.
    pub unavailable: Option<(Instant, bool)>,
    /// The call recovers a broken stream: each entry is marked.
    pub recovery: bool,
    /// The prompt's estimated size, which pre-call checks skip deployments by.
    pub request_tokens: u64,
    /// A capability the request needs that a skipped deployment lacked (its `model_info`
    /// key): what the call fails with when nothing in the chain has it.
    pub unsupported: Option<&'static str>,
}

impl CallLog {
    pub fn push(&mut self, mut attempt: Attempt) {
        attempt.recovery = self.recovery;
        self.attempts.push(attempt);
    }

    /// Logs the deployments a group could not use, each as a not-an-attempt entry.
    pub fn skipped(&mut self, group: &ModelGroup, skipped: &[(usize, Unavailable)]) {
        let now = Instant::now();
        for &(idx, why) in skipped {
            let d = &group.deployments[idx];
            let secs = |until: Instant| until.saturating_duration_since(now).as_secs_f64();
            let (outcome, detail, back) = match why {
                Unavailable::CoolingDown { until } => (
                    AttemptOutcome::CoolingDown,
                    format!(
                        "skipped: cooling down for another {:.1}s after failing too often this minute",
                        secs(until)
                    ),
                    Some((until, true)),
                ),
                Unavailable::AtCapacity { until } => (
                    AttemptOutcome::AtCapacity,
                    "skipped: at max_parallel_requests, or at its rpm/tpm for this minute".to_string(),
                    Some((until, false)),
                ),
                Unavailable::Throttled => (
                    AttemptOutcome::RetryThrottled,
                    "skipped: its retry budget is at or below half, so only first attempts may use it".to_string(),
                    None,
                ),
                Unavailable::PromptTooLong { max_input_tokens } => (
                    AttemptOutcome::PromptTooLong,
                    format!(
                        "skipped before sending (enable_pre_call_checks): the prompt, about {} tokens, is over its model_info.max_input_tokens ({max_input_tokens})",
                        self.request_tokens
                    ),
                    None,
                ),
            };
            self.push(entry(d, outcome, Duration::ZERO, 0, detail, false));
            if let Some((until, cooling)) = back {
                self.unavailable = Some(match self.unavailable {
                    Some((u, c)) if u <= until => (u, c || cooling),
                    Some((_, c)) => (until, c || cooling),
                    None => (until, cooling),
                });
            }
        }
    }

    /// Logs a deployment skipped for lacking a capability the request needs.
    pub fn unsupported(&mut self, d: &Deployment, capability: &'static str) {
        self.unsupported.get_or_insert(capability);
        let detail = format!(
            "skipped, never sent: it does not take {}, which the request has",
            super::capability::lacking(capability)
        );
        self.push(entry(
            d,
            AttemptOutcome::Unsupported,
            Duration::ZERO,
            0,
            detail,
            false,
        ));
    }
}

/// One entry of the attempt log.
pub fn entry(
    d: &Deployment,
    outcome: AttemptOutcome,
    elapsed: Duration,
    status: u16,
    detail: String,
    hedge: bool,
) -> Attempt {
    Attempt {
        model: d.group.clone(),
        deployment: d.id.clone(),
        outcome: outcome as i32,
        elapsed: Some(to_proto_duration(elapsed)),
        upstream_status: i32::from(status),
        detail,
        hedge,
        recovery: false,
    }
}

pub fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
