//! Recovery of a committed stream that broke: another walk, through the rest of the stream's
//! chain and within the call's total deadline, starting with the broken deployment counted as
//! its group's first failure, so that the retry policy, cooldowns and retry budgets apply to
//! recovery attempts as to any other. Three forms (see `StreamRecovery`): `continue` sends the
//! conversation plus the text already delivered, as an assistant prefill, to a deployment that
//! takes one; `restart` sends the original request, and the caller is told to start again;
//! `continue_or_restart` continues on a deployment that takes the prefill and restarts on one
//! that does not.

use std::{future::Future, pin::Pin, sync::Arc};

use tokio::time::Instant;
use tracing::Instrument as _;

use super::{
    Answered, CallFailure, CallRequest, Committed, Router, Sends,
    chain::{Resume, Seed},
    failure::Failure,
    policy,
};
use crate::config::StreamRecovery;
use crate::proto::{ChatMessage, Role};
use crate::providers::{ChatRequest, Chunk};

/// Recoveries one stream may make. A deployment that broke is tried again only as the chain's
/// last option, within its group's retries for the whole call (see `chain::Broken`); the bound
/// also caps a chain whose other deployments break in turn.
pub const MAX_RECOVERIES: u32 = 3;

/// A recovery under way: resolves to the recovery (to arm again) and its outcome.
pub type Recovering =
    Pin<Box<dyn Future<Output = (Box<Recovery>, Result<Answered<Committed>, CallFailure>)> + Send>>;

/// What a committed stream keeps to recover from a break. Only streams whose call may recover
/// carry one: the others keep nothing.
pub struct Recovery {
    router: Arc<Router>,
    /// The conversation as the caller sent it.
    chat: ChatRequest,
    /// The rest of the call's chain and its plan.
    resume: Resume,
    deadline: Instant,
    /// `Continue`, `Restart` or `ContinueOrRestart`, never `None`.
    pub mode: StreamRecovery,
    /// The answer's text so far (not for `Restart`: what the prefill repeats), while it is
    /// within `max_delivered`.
    delivered: String,
    /// `router_settings.stream_recovery_max_bytes`: past it the text is let go, and the
    /// stream no longer recovers by continuing.
    max_delivered: usize,
    /// The text delivered outgrew `max_delivered`.
    outgrown: bool,
    /// Whether tool-call or thinking pieces were delivered: a continuation cannot carry them on
    /// (a prefill is text), so such a stream recovers only by restart.
    delivered_structure: bool,
    /// Whitespace the prefill left off the end of the delivered text (providers reject a
    /// prefill that ends with it), which the continuation's first delta may bring back.
    trimmed: String,
    /// The call's span, which recovery attempts' spans belong to.
    span: tracing::Span,
    /// Recoveries started so far.
    started: u32,
}

impl Recovery {
    /// The recovery a committed stream gets, if its call may recover. Takes the stream's
    /// `resume` out of `answered`.
    pub fn arm(
        router: Arc<Router>,
        request: CallRequest,
        answered: &mut Answered<Committed>,
    ) -> Option<Box<Recovery>> {
        let resume = answered.resume.take()?;
        let group = resume.chain.first()?;
        let mode = policy::recovery_mode(request.stream_recovery, group.stream_recovery);
        if mode == StreamRecovery::None {
            return None;
        }
        let max_delivered = router.config().router.stream_recovery_max_bytes;
        let mut recovery = Box::new(Recovery {
            router,
            chat: request.chat,
            resume,
            deadline: answered.deadline,
            mode,
            delivered: String::new(),
            max_delivered,
            outgrown: false,
            delivered_structure: false,
            trimmed: String::new(),
            span: tracing::Span::current(),
            started: 0,
        });
        recovery.delivered(&answered.value.first);
        Some(recovery)
    }

    /// Notes what a chunk delivered to the caller.
    pub fn delivered(&mut self, chunk: &Chunk) {
        self.delivered_structure |= chunk.has_structure();
        if self.mode == StreamRecovery::Restart || self.outgrown {
            return;
        }
        if self.delivered.len() + chunk.delta.len() > self.max_delivered {
            // Kept no longer: a stream's whole answer must not be held (and sent back) for a
            // recovery that could no longer be an ordinary request.
            self.outgrown = true;
            self.delivered = String::new();
            return;
        }
        self.delivered.push_str(&chunk.delta);
    }

    /// Whether the next recovery may continue the delivered text: a prefill is text within
    /// `max_delivered`, so not after tool-call or thinking pieces or more text than that.
    fn can_continue(&self) -> bool {
        self.mode != StreamRecovery::Restart && !self.delivered_structure && !self.outgrown
    }

    /// Why another recovery may not start, if it may not.
    pub fn refused(&self) -> Option<String> {
        if self.mode == StreamRecovery::Continue && self.delivered_structure {
            return Some(
                "the stream had delivered tool-call or thinking pieces, which a continuation cannot carry on (a client that asks for STREAM_RECOVERY_CONTINUE_OR_RESTART or STREAM_RECOVERY_RESTART is restarted instead)"
                    .to_string(),
            );
        }
        if self.mode == StreamRecovery::Continue && self.outgrown {
            return Some(format!(
                "the stream had delivered more than router_settings.stream_recovery_max_bytes ({} bytes) of text, more than a continuation sends back (a client that asks for STREAM_RECOVERY_CONTINUE_OR_RESTART or STREAM_RECOVERY_RESTART is restarted instead)",
                self.max_delivered
            ));
        }
        if self.started >= MAX_RECOVERIES {
            return Some(format!(
                "the stream was recovered {MAX_RECOVERIES} times already, the most one stream may be"
            ));
        }
        (Instant::now() >= self.deadline).then(|| "the call's deadline has passed".to_string())
    }

    /// Starts recovering from `broke`, the failure of the stream's answering attempt.
    pub fn start(mut self: Box<Self>, broke: Failure) -> Recovering {
        self.started += 1;
        let span = self.span.clone();
        // Counted by the group whose stream broke (the walk moves `resume` on).
        let group = self
            .resume
            .chain
            .first()
            .map_or_else(String::new, |g| g.name.clone());
        Box::pin(
            async move {
                let result = self.walk(broke).await;
                let outcome = if result.is_ok() {
                    "recovered"
                } else {
                    "failed"
                };
                self.router
                    .metrics()
                    .stream_recovery(&group, self.mode.name(), outcome);
                (self, result)
            }
            .instrument(span),
        )
    }

    async fn walk(&mut self, broke: Failure) -> Result<Answered<Committed>, CallFailure> {
        let continued = self.can_continue().then(|| self.continued_chat());
        // Only `continue` keeps to deployments that take a prefill (and counts a rejected one
        // as the deployment's fault); the others may reach any deployment and restart there.
        let only_prefill = self.mode == StreamRecovery::Continue;
        let sends = match (&continued, self.mode) {
            (Some(c), StreamRecovery::Continue) => Sends::Continue(c),
            (Some(c), StreamRecovery::ContinueOrRestart) => Sends::Either {
                continued: c,
                whole: &self.chat,
            },
            _ => Sends::Restart(&self.chat),
        };
        let sized = continued.as_ref().unwrap_or(&self.chat);
        let plan = self
            .resume
            .plan
            .for_recovery(self.resume.chain.clone(), sized, only_prefill);
        let mut broken = self.resume.broken.clone();
        if let Some(group) = self.resume.chain.first() {
            broken.add(&group.name, self.resume.deployment);
        }
        let seed = Seed {
            deployment: self.resume.deployment,
            failure: broke,
            switched: self.resume.switched,
            broken,
        };
        let router = self.router.clone();
        let mut answered = router.walk_to_commit(&plan, Some(seed), sends).await?;
        if let Some(resume) = answered.resume.take() {
            self.resume = resume;
        }
        let first = &mut answered.value.first;
        if answered.value.restart {
            // The answer starts over: what a later continuation repeats starts over with it.
            self.delivered.clear();
            self.outgrown = false;
            self.delivered_structure = false;
            self.delivered(first);
        } else {
            // The continuation's first delta may bring back the whitespace the prefill left off.
            if !self.trimmed.is_empty() && first.delta.starts_with(char::is_whitespace) {
                first.delta = first.delta.trim_start().to_string();
            }
            self.delivered(first);
        }
        Ok(answered)
    }

    /// The conversation plus the text delivered, as a final assistant message (a prefill);
    /// notes the whitespace it leaves off the end.
    fn continued_chat(&mut self) -> ChatRequest {
        let mut chat = self.chat.clone();
        let prefill = self.delivered.trim_end();
        self.trimmed = self.delivered[prefill.len()..].to_string();
        match chat.messages.last_mut() {
            // The caller's own prefill, which the answer went on from: the answer extends it.
            Some(last) if last.role == Role::Assistant as i32 => {
                last.content.push_str(prefill);
                let kept = last.content.trim_end().len();
                last.content.truncate(kept);
            }
            _ if prefill.is_empty() => {}
            _ => chat.messages.push(ChatMessage {
                role: Role::Assistant as i32,
                content: prefill.to_string(),
                ..Default::default()
            }),
        }
        chat
    }

    /// For a failed `continue` recovery: what a client that accepts restarts would have had,
    /// when the rest of the chain has deployments that take no prefill (never tried by
    /// `continue`), other than those that broke the stream.
    pub fn restart_could_have(&self) -> Option<String> {
        if self.mode != StreamRecovery::Continue {
            return None;
        }
        let broken = &self.resume.broken;
        let answering = self.resume.chain.first().map(|g| g.name.as_str());
        let skipped: Vec<&str> = self
            .resume
            .chain
            .iter()
            .flat_map(|g| {
                g.deployments.iter().enumerate().filter_map(move |(i, d)| {
                    let broke = (Some(g.name.as_str()) == answering && i == self.resume.deployment)
                        || broken
                            .deployments
                            .iter()
                            .any(|(n, j)| *n == g.name && *j == i);
                    (!d.supports_assistant_prefill && !broke).then_some(d.id.as_str())
                })
            })
            .collect();
        if skipped.is_empty() {
            return None;
        }
        // A few names say enough; the status must stay small.
        const NAMED: usize = 4;
        let more = match skipped.len().saturating_sub(NAMED) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        Some(format!(
            "{} deployment(s) left in the chain take no assistant prefill ({}{more}): a client that asks for STREAM_RECOVERY_CONTINUE_OR_RESTART would have been restarted there",
            skipped.len(),
            skipped[..skipped.len().min(NAMED)].join(", ")
        ))
    }
}
