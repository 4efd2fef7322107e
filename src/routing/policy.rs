//! The retry policy: the one place that decides what a call does next, when it enters a model
//! group and after each failed attempt. [`decide`] is a pure function of the failure and the
//! chain's position, so every combination is covered by one table of tests below; the chain
//! walk ([`super::chain`]) only carries the decision out.

use std::time::Duration;

use super::deadline::Backoff;
use super::error::CallError;
use super::failure::{Failure, Fault};
use crate::config::{SlowStream, StreamRecovery};

/// What the group's picker would run next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// A deployment not yet tried in this call.
    Untried,
    /// Only deployments that already failed in this call (a retry of one waits a backoff).
    Failed,
    /// None: every deployment left is cooling down, at capacity, throttled or excluded.
    Nothing,
}

/// Where the call stands when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    /// Retries of the current group so far (not counting its first attempt).
    pub retries_done: u32,
    /// Retries the group may make: the first attempt's deployment's `max_retries`, or the
    /// request's `num_retries` when lower.
    pub retries_allowed: u32,
    pub candidate: Candidate,
    /// Special fallback lists the call may still switch to: configured on the group, and the
    /// call has not switched to one yet (it does so once).
    pub context_window_fallbacks: bool,
    pub content_policy_fallbacks: bool,
    /// Time left before the call's total deadline.
    pub time_left: Duration,
    pub backoff: Backoff,
    /// How long the provider asked us to wait, after a failure that said so.
    pub provider_hint: Option<Duration>,
    /// In [0, 1): spreads the retries of many calls (see [`Backoff::wait`]).
    pub jitter: f64,
}

/// A special fallback list, which replaces the rest of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    ContextWindow,
    ContentPolicy,
}

/// Why the call leaves a group for the next one in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// The group used every retry it may make.
    RetriesExhausted,
    /// No deployment of the group can take an attempt now (those skipped are logged).
    NoDeploymentLeft,
    /// The backoff before the next retry would not end before the call's deadline.
    NoTimeToWait,
    /// The prompt does not fit this group's model and it has no context-window fallbacks
    /// (left): the regular fallbacks may have a larger model, as LiteLLM assumes too.
    ContextWindow,
}

/// How the call ends, with the failure that ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// The provider said the request is bad: no deployment will take it.
    Rejected,
    /// The content was refused and no content-policy fallback is left.
    ContentPolicyViolation,
}

impl Final {
    pub fn error(self, failure: Failure) -> CallError {
        match self {
            Final::Rejected => CallError::UpstreamRejected(failure),
            Final::ContentPolicyViolation => CallError::ContentPolicyViolation(failure),
        }
    }
}

/// What the call does next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Start an attempt now on a deployment of the group not yet tried in this call.
    /// `counted`: it uses one of the group's retries.
    AttemptNow { counted: bool },
    /// Wait, then retry a deployment of the group that already failed in this call.
    WaitThenRetry { wait: Duration, counted: bool },
    /// Move on to the next group of the chain (the call fails when there is none).
    NextGroup(Leave),
    /// Replace the rest of the chain with the group's special fallback list.
    SwitchTo(Special),
    /// Answer the caller with this failure now.
    Stop(Final),
}

/// A failure's fault as this call sees it: what [`decide`] and the group's picker go by. In a
/// continuation of a broken stream, a deployment that rejects the request rejects the
/// assistant prefill, which another deployment may take: the deployment's fault, not the
/// request's (and never a stop that would hide the break the recovery is for).
pub fn fault(failure: &Failure, continuation: bool) -> Fault {
    match failure.fault() {
        Fault::Request if continuation => Fault::Deployment,
        other => other,
    }
}

/// What the call does next: on entering a group (`failed` is `None`), or after an attempt of
/// the group failed, with its fault as [`fault`] gives it.
pub fn decide(failed: Option<Fault>, at: &Position) -> Decision {
    let counted = match failed {
        // Entering a group: its first attempt, which no retry limit applies to.
        None => false,
        Some(Fault::Transient) if at.retries_done >= at.retries_allowed => {
            return Decision::NextGroup(Leave::RetriesExhausted);
        }
        Some(Fault::Transient) => true,
        // The deployment is excluded for the rest of the call; trying another is no retry.
        Some(Fault::Deployment) => false,
        Some(Fault::Request) => return Decision::Stop(Final::Rejected),
        Some(Fault::ContextWindow) if at.context_window_fallbacks => {
            return Decision::SwitchTo(Special::ContextWindow);
        }
        Some(Fault::ContextWindow) => return Decision::NextGroup(Leave::ContextWindow),
        Some(Fault::ContentPolicy) if at.content_policy_fallbacks => {
            return Decision::SwitchTo(Special::ContentPolicy);
        }
        Some(Fault::ContentPolicy) => return Decision::Stop(Final::ContentPolicyViolation),
    };
    match at.candidate {
        Candidate::Untried => Decision::AttemptNow { counted },
        Candidate::Failed => {
            let retry = at.retries_done + u32::from(counted);
            match at
                .backoff
                .wait_within(retry, at.provider_hint, at.jitter, at.time_left)
            {
                Some(wait) => Decision::WaitThenRetry { wait, counted },
                None => Decision::NextGroup(Leave::NoTimeToWait),
            }
        }
        Candidate::Nothing => Decision::NextGroup(Leave::NoDeploymentLeft),
    }
}

/// How a committed stream that broke recovers: the caller's choice when it made one, else the
/// answering group's setting, where `restart` and `continue_or_restart` mean continue for a
/// caller that did not ask for restarts (only a caller that asked may be sent a restart marker).
pub fn recovery_mode(requested: Option<StreamRecovery>, group: StreamRecovery) -> StreamRecovery {
    match (requested, group) {
        (Some(mode), _) => mode,
        (None, StreamRecovery::Restart | StreamRecovery::ContinueOrRestart) => {
            StreamRecovery::Continue
        }
        (None, mode) => mode,
    }
}

/// A request's own slow-stream guard (`stream_min_tokens_per_s`, `stream_min_tokens_window`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SlowStreamRequest {
    /// Tokens a second; 0 turns the guard off for the call.
    pub per_s: Option<f64>,
    pub window: Option<Duration>,
}

impl SlowStreamRequest {
    /// Whether the request makes the guard stricter than the config could have: anything but
    /// turning it off. Such a request needs the caller's `stream_recovery` grant.
    pub fn tightens(&self) -> bool {
        self.per_s.is_some_and(|r| r > 0.0) || self.window.is_some()
    }
}

/// The slow-stream guard a committed stream runs under.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Tokens a second, more than 0.
    pub min: f64,
    pub window: Duration,
    /// From commit, before the first window starts.
    pub grace: Duration,
    /// The request set the rate or the window: a stream it cuts is not the deployment's fault.
    pub by_client: bool,
}

/// The guard of a stream the answering group (`group`'s settings) committed: the request's rate
/// and window where it set them, else the group's; none when the rate is off (0 or unset).
pub fn pace(requested: SlowStreamRequest, group: &SlowStream) -> Option<Pace> {
    let min = match requested.per_s {
        Some(r) => r,
        None => group.min()?,
    };
    (min > 0.0).then(|| Pace {
        min,
        window: requested.window.unwrap_or(group.window),
        grace: group.grace,
        by_client: requested.tightens(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{ErrorKind, ProviderError};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Every failure the chain can see, by name.
    fn failures() -> Vec<(&'static str, Failure)> {
        let p = |kind| Failure::Provider(ProviderError::new(kind, 0, ""));
        vec![
            (
                "timeout",
                Failure::Timeout {
                    first_chunk: false,
                    by_client: false,
                },
            ),
            (
                "caller's timeout",
                Failure::Timeout {
                    first_chunk: false,
                    by_client: true,
                },
            ),
            (
                "first-chunk timeout",
                Failure::Timeout {
                    first_chunk: true,
                    by_client: false,
                },
            ),
            ("mock timeout", Failure::MockTimeout),
            ("connect", p(ErrorKind::Connect)),
            ("upstream", p(ErrorKind::Upstream)),
            ("rate limited", p(ErrorKind::RateLimited)),
            ("auth", p(ErrorKind::Auth)),
            ("refused", p(ErrorKind::Refused)),
            ("bad request", p(ErrorKind::BadRequest)),
            ("context window", p(ErrorKind::ContextWindow)),
            ("content policy", p(ErrorKind::ContentPolicy)),
        ]
    }

    /// Positions in the chain, by name. Backoff: 100ms doubling, no floor; jitter 1 (the whole
    /// step); 1s left.
    fn positions() -> Vec<(&'static str, Position)> {
        let base = Position {
            retries_done: 0,
            retries_allowed: 2,
            candidate: Candidate::Untried,
            context_window_fallbacks: false,
            content_policy_fallbacks: false,
            time_left: ms(1000),
            backoff: Backoff {
                initial: ms(100),
                max: ms(400),
                floor: Duration::ZERO,
            },
            provider_hint: None,
            jitter: 1.0,
        };
        vec![
            ("retries left, untried deployment", base),
            (
                "retries left, only failed deployments",
                Position {
                    candidate: Candidate::Failed,
                    retries_done: 1,
                    ..base
                },
            ),
            (
                "retries left, only failed deployments, backoff past the deadline",
                Position {
                    candidate: Candidate::Failed,
                    time_left: ms(150),
                    retries_done: 1,
                    ..base
                },
            ),
            (
                "retries left, nothing available",
                Position {
                    candidate: Candidate::Nothing,
                    ..base
                },
            ),
            (
                "retries exhausted",
                Position {
                    retries_done: 2,
                    ..base
                },
            ),
            (
                "special fallbacks configured and not yet taken",
                Position {
                    context_window_fallbacks: true,
                    content_policy_fallbacks: true,
                    ..base
                },
            ),
        ]
    }

    use Decision::*;

    /// The expected decision for each failure (rows) at each position (columns, in the order
    /// of `positions()`).
    fn expected(failure: &str) -> [Decision; 6] {
        let retry = [
            AttemptNow { counted: true },
            // The second retry waits 200ms (jitter 1).
            WaitThenRetry {
                wait: ms(200),
                counted: true,
            },
            NextGroup(Leave::NoTimeToWait),
            NextGroup(Leave::NoDeploymentLeft),
            NextGroup(Leave::RetriesExhausted),
            AttemptNow { counted: true },
        ];
        let skip = [
            AttemptNow { counted: false },
            // Not counted: the retry number stays 1, a 100ms step.
            WaitThenRetry {
                wait: ms(100),
                counted: false,
            },
            // 100ms fits in 150ms.
            WaitThenRetry {
                wait: ms(100),
                counted: false,
            },
            NextGroup(Leave::NoDeploymentLeft),
            // Excluding a deployment uses no retry, so it goes on even with none left.
            AttemptNow { counted: false },
            AttemptNow { counted: false },
        ];
        let special = |kind, stop| {
            [
                Stop(stop),
                Stop(stop),
                Stop(stop),
                Stop(stop),
                Stop(stop),
                SwitchTo(kind),
            ]
        };
        match failure {
            "timeout"
            | "caller's timeout"
            | "first-chunk timeout"
            | "mock timeout"
            | "connect"
            | "upstream"
            | "rate limited" => retry,
            "auth" | "refused" => skip,
            "bad request" => [Stop(Final::Rejected); 6],
            // Without a context-window list, the regular fallbacks may have a larger model.
            "context window" => {
                let cw = NextGroup(Leave::ContextWindow);
                [cw, cw, cw, cw, cw, SwitchTo(Special::ContextWindow)]
            }
            "content policy" => special(Special::ContentPolicy, Final::ContentPolicyViolation),
            other => panic!("no expectation for {other}"),
        }
    }

    #[test]
    fn every_failure_at_every_position_has_one_decision() {
        let positions = positions();
        for (name, failure) in failures() {
            let want = expected(name);
            for ((where_, at), want) in positions.iter().zip(want) {
                assert_eq!(
                    decide(Some(failure.fault()), at),
                    want,
                    "{name} at `{where_}`"
                );
            }
        }
    }

    #[test]
    fn entering_a_group_attempts_at_once_or_waits_for_a_deployment_hedges_already_failed() {
        let positions = positions();
        let decisions: Vec<Decision> = positions.iter().map(|(_, at)| decide(None, at)).collect();
        assert_eq!(
            decisions,
            [
                AttemptNow { counted: false },
                WaitThenRetry {
                    wait: ms(100),
                    counted: false
                },
                WaitThenRetry {
                    wait: ms(100),
                    counted: false
                },
                NextGroup(Leave::NoDeploymentLeft),
                // The group's retry limit does not apply to its first attempt.
                AttemptNow { counted: false },
                AttemptNow { counted: false },
            ]
        );
    }

    #[test]
    fn a_provider_hint_longer_than_the_backoff_is_waited_and_can_push_past_the_deadline() {
        let (_, base) = positions()[1];
        let hinted = |hint| Position {
            provider_hint: Some(hint),
            ..base
        };
        assert_eq!(
            decide(Some(Fault::Transient), &hinted(ms(700))),
            WaitThenRetry {
                wait: ms(700),
                counted: true
            }
        );
        assert_eq!(
            decide(Some(Fault::Transient), &hinted(ms(1000))),
            NextGroup(Leave::NoTimeToWait),
            "a wait that ends at the deadline leaves no time for the retry"
        );
    }

    #[test]
    fn a_continuation_rejected_as_a_bad_request_moves_on_to_another_deployment() {
        for (name, failure) in failures() {
            let plain = failure.fault();
            let expected = if plain == Fault::Request {
                Fault::Deployment
            } else {
                plain
            };
            assert_eq!(fault(&failure, true), expected, "{name}");
            assert_eq!(fault(&failure, false), plain, "{name}");
        }
        let (_, at) = positions()[0];
        let rejected = Failure::Provider(ProviderError::new(ErrorKind::BadRequest, 400, ""));
        assert_eq!(
            decide(Some(fault(&rejected, true)), &at),
            AttemptNow { counted: false }
        );
        let none_left = Position {
            candidate: Candidate::Nothing,
            ..at
        };
        assert_eq!(
            decide(Some(fault(&rejected, true)), &none_left),
            NextGroup(Leave::NoDeploymentLeft),
            "never a stop that would mask the break the recovery is for"
        );
    }

    #[test]
    fn the_callers_recovery_choice_wins_and_restart_needs_its_consent() {
        use StreamRecovery as M;
        let all = [M::None, M::Continue, M::Restart, M::ContinueOrRestart];
        for group in all {
            for asked in all {
                assert_eq!(recovery_mode(Some(asked), group), asked);
            }
        }
        assert_eq!(recovery_mode(None, M::None), M::None);
        assert_eq!(recovery_mode(None, M::Continue), M::Continue);
        assert_eq!(recovery_mode(None, M::Restart), M::Continue);
        assert_eq!(recovery_mode(None, M::ContinueOrRestart), M::Continue);
    }

    #[test]
    fn the_requests_guard_wins_field_by_field_and_zero_turns_it_off() {
        let s = Duration::from_secs;
        let group = SlowStream {
            per_s: Some(3.0),
            window: s(20),
            grace: s(2),
        };
        let asked = |per_s, window| SlowStreamRequest { per_s, window };
        assert_eq!(
            pace(asked(None, None), &group),
            Some(Pace {
                min: 3.0,
                window: s(20),
                grace: s(2),
                by_client: false
            })
        );
        let mine = pace(asked(Some(8.0), None), &group).unwrap();
        assert_eq!((mine.min, mine.window, mine.by_client), (8.0, s(20), true));
        let window = pace(asked(None, Some(s(5))), &group).unwrap();
        assert_eq!(
            (window.min, window.window, window.by_client),
            (3.0, s(5), true)
        );
        assert_eq!(pace(asked(Some(0.0), None), &group), None);
        assert_eq!(pace(asked(None, None), &SlowStream::OFF), None);
        let only_mine = pace(asked(Some(1.0), None), &SlowStream::OFF).unwrap();
        assert_eq!(only_mine.grace, SlowStream::DEFAULT_GRACE);
        assert!(!asked(Some(0.0), None).tightens());
        assert!(asked(Some(0.5), None).tightens());
        assert!(asked(None, Some(s(3))).tightens());
    }
}
