//! A committed call's response stream: the routing layer's [`CommittedStream`] as
//! `StreamCompleteResponse` messages. The first message carries the attempts made; the last, the
//! finish reason and usage; a failure after commit ends the stream with its status.
//!
//! tonic polls this stream itself (no task, no channel per call). When the client goes away,
//! tonic drops it, which drops the provider stream and closes the upstream request.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use tonic::Status;

use super::ActiveGuard;
use super::status::{GrpcError as _, call_status};
use crate::proto::{Attempt, FinishReason, StreamCompleteResponse, Usage};
use crate::routing::{
    Answered, Committed,
    recovery::Recovery,
    stream::{CommittedStream, Piece, StreamItem},
};
use crate::telemetry::metrics::GaugeGuard;

/// How a committed stream ended, for the call's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Finished,
    ClientGone,
    Failed(tonic::Code),
}

/// How a committed stream ended, for the call's record.
pub struct Ended<'a> {
    pub how: StreamEnd,
    /// The usage the answering provider reported.
    pub usage: Option<Usage>,
    /// The group and deployment that answered last (another than at commit, after a recovery).
    pub group: &'a str,
    pub deployment: &'a str,
    /// Entries in the call's attempt log.
    pub attempts: usize,
}

/// Called once when the stream ends.
pub type OnEnd = Box<dyn FnOnce(Ended<'_>) + Send>;

pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<StreamCompleteResponse, Status>> + Send>>;

/// What the API layer keeps of a call while its stream is open.
pub struct Open {
    pub id: String,
    /// `router_settings.stream_idle_timeout`.
    pub idle: Duration,
    /// The cap on a status's RetryInfo (`router_settings.max_cooldown_from_hint`).
    pub max_retry_delay: Duration,
    /// Counts the stream open, until it is dropped.
    pub gauge: GaugeGuard,
    /// Counts the call in flight until tonic drops the stream, after its trailers.
    pub active: Option<ActiveGuard>,
    pub on_end: OnEnd,
}

/// The client's stream for a committed call. `recovery`: what the stream needs to recover if
/// it breaks, when the call may.
pub fn forward(
    answered: Answered<Committed>,
    recovery: Option<Box<Recovery>>,
    open: Open,
) -> ResponseStream {
    let group = answered.group.clone();
    let deployment = answered.deployment.clone();
    let inner = CommittedStream::new(answered, open.idle, recovery);
    let head_attempts = inner.attempts();
    Box::pin(Forward {
        _open: open.gauge,
        attempts: head_attempts.len(),
        head_attempts: Some(head_attempts),
        _active: open.active,
        inner,
        id: open.id,
        max_retry_delay: open.max_retry_delay,
        group,
        deployment,
        on_end: Some(open.on_end),
    })
}

struct Forward {
    inner: CommittedStream,
    max_retry_delay: Duration,
    /// The attempts made, for the first message, until it is sent.
    head_attempts: Option<Vec<Attempt>>,
    id: String,
    /// Who answers: the committed deployment, then the one that recovered the stream.
    group: String,
    deployment: String,
    /// Entries in the attempt log as last sent.
    attempts: usize,
    /// Taken when the stream ends.
    on_end: Option<OnEnd>,
    _open: GaugeGuard,
    /// Counts the call in flight until tonic drops the stream, after its trailers.
    _active: Option<ActiveGuard>,
}

impl Forward {
    fn message(&self, piece: Piece) -> StreamCompleteResponse {
        StreamCompleteResponse {
            id: self.id.clone(),
            model: self.group.clone(),
            deployment: self.deployment.clone(),
            delta: piece.text,
            tool_calls: piece.tool_calls,
            thinking: piece.thinking,
            ..Default::default()
        }
    }

    fn end(&mut self, how: StreamEnd) {
        if let Some(f) = self.on_end.take() {
            f(Ended {
                how,
                usage: self.inner.usage(),
                group: &self.group,
                deployment: &self.deployment,
                attempts: self.attempts,
            });
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        // Dropped before its end: tonic let go of it because the client went away.
        if self.on_end.is_some() {
            tracing::debug!(id = %self.id, "client went away; closing the provider stream");
            self.end(StreamEnd::ClientGone);
        }
    }
}

impl Stream for Forward {
    type Item = Result<StreamCompleteResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = match this.inner.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(item)) => item,
        };
        Poll::Ready(Some(match item {
            Ok(StreamItem::Delta(piece)) => {
                let mut msg = this.message(piece);
                if let Some(attempts) = this.head_attempts.take() {
                    msg.attempts = attempts;
                }
                Ok(msg)
            }
            Ok(StreamItem::Resumed {
                group,
                deployment,
                restart,
                piece,
                attempts,
            }) => {
                this.group = group;
                this.deployment = deployment;
                this.attempts = attempts.len();
                // Nothing sent yet (a break before the first message was read): the head's
                // attempts are superseded.
                this.head_attempts = None;
                let mut msg = this.message(piece);
                msg.resumed = true;
                msg.restart = restart;
                msg.attempts = attempts;
                Ok(msg)
            }
            Ok(StreamItem::Finished {
                finish_reason,
                usage,
                attempts,
            }) => {
                let mut tail = this.message(Piece::default());
                tail.finish_reason = finish_reason.unwrap_or(FinishReason::Unspecified) as i32;
                tail.usage = usage;
                if let Some(attempts) = attempts {
                    this.attempts = attempts.len();
                    tail.attempts = attempts;
                }
                this.end(StreamEnd::Finished);
                Ok(tail)
            }
            Err(failure) => {
                this.attempts = failure.attempts.len();
                let status = call_status(&failure.error, &failure.attempts, this.max_retry_delay);
                this.end(StreamEnd::Failed(failure.error.code()));
                Err(status)
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    //! Committed streams under tokio's paused clock, through the router's real chain walk and
    //! mock provider: the idle timer, the total deadline, and how the stream ends.

    use std::sync::Arc;

    use tokio::time::Instant;
    use tonic::Code;

    use super::*;
    use crate::api::stream;
    use crate::proto::AttemptOutcome;
    use crate::routing::CallError;
    use crate::routing::testkit::{CHAIN, call, ms, router};

    /// What the API keeps of an open call, for a test: no call slot, a fresh gauge.
    fn open(idle: Duration, on_end: stream::OnEnd) -> stream::Open {
        stream::Open {
            id: "id".into(),
            idle,
            max_retry_delay: Duration::from_secs(300),
            gauge: Arc::new(crate::telemetry::Metrics::new()).stream_open(),
            active: None,
            on_end,
        }
    }

    /// Reads a committed stream to its end: every item, and how the stream said it ended.
    async fn drain(
        a: Answered<Committed>,
        idle: Duration,
    ) -> (
        Vec<Result<crate::proto::StreamCompleteResponse, tonic::Status>>,
        Option<stream::StreamEnd>,
    ) {
        use futures_util::StreamExt as _;
        let ended = Arc::new(std::sync::Mutex::new(None));
        let e = ended.clone();
        let on_end: stream::OnEnd = Box::new(move |end| *e.lock().unwrap() = Some(end.how));
        let items = stream::forward(a, None, open(idle, on_end)).collect().await;
        let end = *ended.lock().unwrap();
        (items, end)
    }

    #[tokio::test(start_paused = true)]
    async fn a_committed_stream_that_goes_silent_ends_with_idle_timeout() {
        let r = router(CHAIN);
        let a = r.stream(&call("stall")).await.unwrap();
        assert_eq!(
            a.group, "stall",
            "committed on its first chunk: no fallback after this"
        );
        let start = Instant::now();
        let (items, end) = drain(a, ms(500)).await;
        assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
        assert_eq!(start.elapsed(), ms(500));
        assert_eq!(items.len(), 2);
        let first = items[0].as_ref().unwrap();
        assert_eq!(first.delta, "a ");
        assert_eq!(first.attempts.len(), 1);
        let status = items[1].as_ref().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        let log = crate::api::status::attempt_log(status).unwrap();
        assert_eq!(
            AttemptOutcome::try_from(log.attempts[0].outcome).unwrap(),
            AttemptOutcome::IdleTimeout
        );
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_closer_than_the_idle_limit_keep_a_stream_alive_past_it() {
        // A chunk every 200ms for about 2s against a 500ms idle limit: the idle timer is re-armed
        // each time it fires early, and never ends the stream.
        let r = router(CHAIN);
        let a = r.stream(&call("steady")).await.unwrap();
        let start = Instant::now();
        let (items, end) = drain(a, ms(500)).await;
        assert_eq!(end, Some(stream::StreamEnd::Finished));
        assert!(start.elapsed() >= ms(1800), "{:?}", start.elapsed());
        let text: String = items
            .iter()
            .map(|i| i.as_ref().unwrap().delta.clone())
            .collect();
        assert_eq!(text.split_whitespace().count(), 10, "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_flowing_stream_ends_at_the_total_deadline_to_the_millisecond() {
        // The shared timer has been re-armed by chunks several times when the deadline comes.
        let r = router(CHAIN);
        let mut req = call("steady");
        req.timeout = Some(ms(1000));
        let start = Instant::now();
        let a = r.stream(&req).await.unwrap();
        let (items, end) = drain(a, ms(500)).await;
        assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
        assert_eq!(start.elapsed(), ms(980), "1s less the 20ms margin");
        assert!(items.len() > 3, "chunks flowed first: {}", items.len());
        assert_eq!(
            items.last().unwrap().as_ref().unwrap_err().code(),
            Code::DeadlineExceeded
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_committed_stream_still_ends_at_the_total_deadline() {
        let r = router(CHAIN);
        let mut req = call("stall");
        req.timeout = Some(ms(300));
        let a = r.stream(&req).await.unwrap();
        let start = Instant::now();
        // The idle timer (500ms) is longer than what is left of the 280ms total deadline.
        let (items, end) = drain(a, ms(500)).await;
        assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
        assert_eq!(
            start.elapsed(),
            ms(270),
            "280ms less the 10ms to the first chunk"
        );
        let status = items.last().unwrap().as_ref().unwrap_err();
        assert_eq!(
            crate::api::status::attempt_log(status)
                .unwrap()
                .attempts
                .len(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_stream_arrives_with_finish_reason_and_usage_last() {
        let r = router(CHAIN);
        let a = r.stream(&call("fast")).await.unwrap();
        let (items, end) = drain(a, ms(500)).await;
        assert_eq!(end, Some(stream::StreamEnd::Finished));
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_ref().unwrap().delta, "ok");
        let last = items[1].as_ref().unwrap();
        assert_eq!(last.finish_reason, FinishReason::Stop as i32);
        assert_eq!(last.usage.unwrap().completion_tokens, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_dropped_before_its_end_reports_the_client_gone() {
        use futures_util::StreamExt as _;
        let r = router(CHAIN);
        let a = r.stream(&call("stall")).await.unwrap();
        let ended = Arc::new(std::sync::Mutex::new(None));
        let e = ended.clone();
        let on_end: stream::OnEnd = Box::new(move |end| *e.lock().unwrap() = Some(end.how));
        let mut s = stream::forward(a, None, open(ms(500), on_end));
        s.next().await.unwrap().unwrap();
        drop(s);
        assert_eq!(*ended.lock().unwrap(), Some(stream::StreamEnd::ClientGone));
    }

    /// Mid-stream recovery under the paused clock. `stall` sends "a " then falls silent;
    /// `whole` gives the whole answer, continuing from any prefix of it; `silent` stalls too;
    /// `nocontinue` cannot take a prefill.
    const RECOVER: &str = r#"
model_list:
  - model_name: stall
    litellm_params: { model: mock/stall, max_retries: 0, mock: { failure: stall_after_first_chunk, time_to_first_chunk: 10ms, text: "a b c d" } }
    model_info: { id: stall-0 }
  - model_name: whole
    litellm_params: { model: mock/whole, mock: { time_to_first_chunk: 100ms, tokens_per_second: 100, text: "a b c d" } }
    model_info: { id: whole-0 }
  - model_name: silent
    litellm_params: { model: mock/silent, max_retries: 0, mock: { failure: stall_after_first_chunk, time_to_first_chunk: 10ms, text: "a b c d" } }
    model_info: { id: silent-0 }
  - model_name: nocontinue
    litellm_params: { model: mock/nocontinue, mock: { time_to_first_chunk: 10ms, text: "a b c d" } }
    model_info: { id: nocontinue-0, supports_assistant_prefill: false }
  - model_name: relapses
    litellm_params: { model: mock/relapses, max_retries: 10, mock: { failure: stall_after_first_chunk, time_to_first_chunk: 10ms, text: "a b c d" } }
    model_info: { id: relapses-0 }
router_settings:
  stream_idle_timeout: 500ms
  stream_recovery: continue
  fallbacks:
    - stall: [whole]
    - silent: [nocontinue]
server:
  deadline_margin: 20ms
"#;

    /// Commits a stream on `model` and drains it through the API's forwarder, with recovery.
    async fn drain_recovering(
        req: crate::routing::CallRequest,
    ) -> (
        Vec<Result<crate::proto::StreamCompleteResponse, tonic::Status>>,
        Option<stream::StreamEnd>,
        Arc<crate::routing::Router>,
    ) {
        use futures_util::StreamExt as _;
        let r = Arc::new(router(RECOVER));
        let mut a = r.stream(&req).await.unwrap();
        let recovery = Recovery::arm(r.clone(), req, &mut a);
        let ended = Arc::new(std::sync::Mutex::new(None));
        let e = ended.clone();
        let on_end: stream::OnEnd = Box::new(move |end| *e.lock().unwrap() = Some(end.how));
        let items = stream::forward(a, recovery, open(ms(500), on_end))
            .collect()
            .await;
        let end = *ended.lock().unwrap();
        (items, end, r)
    }

    /// Each attempt as (deployment, outcome, whether it recovered the stream).
    fn log_of(attempts: &[crate::proto::Attempt]) -> Vec<(&str, AttemptOutcome, bool)> {
        attempts
            .iter()
            .map(|a| {
                (
                    a.deployment.as_str(),
                    AttemptOutcome::try_from(a.outcome).unwrap(),
                    a.recovery,
                )
            })
            .collect()
    }

    fn text(items: &[Result<crate::proto::StreamCompleteResponse, tonic::Status>]) -> String {
        items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|m| m.delta.as_str())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_continues_on_the_fallback_where_it_stopped() {
        let start = Instant::now();
        let (items, end, r) = drain_recovering(call("stall")).await;
        assert_eq!(end, Some(stream::StreamEnd::Finished));
        assert_eq!(
            text(&items),
            "a b c d",
            "seamless: no word twice, no double space"
        );
        // Committed at 10ms; silent until the 500ms idle limit; the fallback's first chunk
        // 100ms later (" ", the continuation of "a"); three more words and the finish at 100
        // tokens/s.
        assert_eq!(start.elapsed(), ms(10 + 500 + 100 + 40));
        let resumed = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .find(|m| m.resumed)
            .expect("a resumed message");
        assert!(!resumed.restart, "continue never sends a restart marker");
        assert_eq!(resumed.deployment, "whole-0");
        assert_eq!(resumed.model, "whole");
        assert_eq!(
            log_of(&resumed.attempts),
            [
                ("stall-0", AttemptOutcome::IdleTimeout, false),
                ("whole-0", AttemptOutcome::Ok, true)
            ]
        );
        assert!(
            resumed.attempts[0].detail.starts_with("after 1 chunks: "),
            "{}",
            resumed.attempts[0].detail
        );
        let last = items.last().unwrap().as_ref().unwrap();
        assert_eq!(last.finish_reason, crate::proto::FinishReason::Stop as i32);
        assert_eq!(last.deployment, "whole-0");
        // Both deployments are released; the broken one's silence counted against it.
        for d in ["stall-0", "whole-0"] {
            assert_eq!(r.deployment_state(d).unwrap().in_flight(), 0, "{d}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_asks_for_restarts_gets_a_marker_then_the_whole_answer() {
        let mut req = call("stall");
        req.stream_recovery = Some(crate::config::StreamRecovery::Restart);
        let (items, end, _) = drain_recovering(req).await;
        assert_eq!(end, Some(stream::StreamEnd::Finished));
        let msgs: Vec<_> = items.iter().map(|i| i.as_ref().unwrap()).collect();
        assert_eq!(msgs[0].delta, "a ");
        assert!(msgs[1].restart && msgs[1].resumed);
        assert_eq!(msgs[1].delta, "a ", "the answer starts again");
        let after: String = msgs[1..].iter().map(|m| m.delta.as_str()).collect();
        assert_eq!(after, "a b c d");
        assert_eq!(
            msgs.iter().filter(|m| m.restart).count(),
            1,
            "one marker, on the first message of the new answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_recovery_a_silent_stream_ends_as_before() {
        let mut req = call("stall");
        req.stream_recovery = Some(crate::config::StreamRecovery::None);
        let (items, end, _) = drain_recovering(req).await;
        assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
        assert_eq!(items.len(), 2);
        let status = items[1].as_ref().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            !status.message().contains("recovery"),
            "{}",
            status.message()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_deployment_able_to_continue_the_break_is_answered_and_says_recovery_was_tried()
    {
        let start = Instant::now();
        let (items, end, _) = drain_recovering(call("silent")).await;
        // No wait: `nocontinue` takes no prefill, so the recovery finds nothing to try.
        assert_eq!(start.elapsed(), ms(10 + 500));
        assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
        let status = items.last().unwrap().as_ref().unwrap_err();
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "the break's own code"
        );
        assert_eq!(
            crate::api::status::GrpcError::reason(&CallError::StreamIdleTimeout { idle: ms(500) }),
            "STREAM_IDLE_TIMEOUT"
        );
        assert!(
            status
                .message()
                .contains("recovery by continue was tried and failed"),
            "{}",
            status.message()
        );
        let log = crate::api::status::attempt_log(status).unwrap();
        assert_eq!(log.attempts[0].deployment, "silent-0");
        assert_eq!(
            AttemptOutcome::try_from(log.attempts[0].outcome).unwrap(),
            AttemptOutcome::IdleTimeout
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovery_never_runs_past_the_total_deadline() {
        let mut req = call("stall");
        // Committed at 10ms, silent at 510ms; the fallback's first chunk would come at 610ms,
        // after the 600ms total deadline (less the 20ms margin).
        req.timeout = Some(ms(600));
        let start = Instant::now();
        let (items, end, _) = drain_recovering(req).await;
        assert_eq!(start.elapsed(), ms(580));
        assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
        let status = items.last().unwrap().as_ref().unwrap_err();
        assert!(
            status.message().contains("recovery by continue"),
            "{}",
            status.message()
        );
        let log = crate::api::status::attempt_log(status).unwrap();
        assert_eq!(
            log_of(&log.attempts),
            [
                ("stall-0", AttemptOutcome::IdleTimeout, false),
                // Cut by the caller's own deadline (the request's timeout): not the
                // deployment's failure.
                ("whole-0", AttemptOutcome::CallerTimeout, true)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_keeps_breaking_is_recovered_a_bounded_number_of_times() {
        // `relapses` commits and falls silent every time, and may be retried ten times: each
        // recovery retries it after a backoff, and it breaks again.
        let (items, end, _) = drain_recovering(call("relapses")).await;
        assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
        let status = items.last().unwrap().as_ref().unwrap_err();
        assert!(
            status.message().contains("recovered 3 times already"),
            "{}",
            status.message()
        );
        let log = crate::api::status::attempt_log(status).unwrap();
        let idle = log
            .attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::IdleTimeout as i32)
            .count();
        assert_eq!(idle, 1 + crate::routing::recovery::MAX_RECOVERIES as usize);
        assert_eq!(log.attempts.len(), idle, "{:?}", log.attempts);
    }

    #[tokio::test(start_paused = true)]
    async fn a_continuation_extends_the_callers_own_prefill() {
        // The caller prefilled "a"; the answer goes on from it, and so does its continuation.
        let mut req = call("stall");
        req.chat.messages.push(crate::proto::ChatMessage {
            role: crate::proto::Role::Assistant as i32,
            content: "a".into(),
            ..Default::default()
        });
        let (items, end, _) = drain_recovering(req).await;
        assert_eq!(end, Some(stream::StreamEnd::Finished));
        assert_eq!(text(&items), " b c d");
    }
}
