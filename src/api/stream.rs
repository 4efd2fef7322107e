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

use super::status::{GrpcError as _, call_status};
use crate::proto::{Attempt, FinishReason, StreamCompleteResponse, Usage};
use crate::routing::{
    Answered, Committed,
    stream::{CommittedStream, StreamItem},
};
use crate::telemetry::{Metrics, metrics::GaugeGuard};

/// How a committed stream ended, for the call's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Finished,
    ClientGone,
    Failed(tonic::Code),
}

/// Called once when the stream ends, with how it ended and the usage the provider reported.
pub type OnEnd = Box<dyn FnOnce(StreamEnd, Option<Usage>) + Send>;

pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<StreamCompleteResponse, Status>> + Send>>;

/// The client's stream for a committed call.
pub fn forward(
    answered: Answered<Committed>,
    id: String,
    idle: Duration,
    metrics: &Metrics,
    on_end: OnEnd,
) -> ResponseStream {
    let group = answered.group.clone();
    let deployment = answered.deployment.clone();
    let inner = CommittedStream::new(answered, idle);
    let head_attempts = Some(inner.attempts().to_vec());
    Box::pin(Forward {
        _open: metrics.stream_open(),
        inner,
        head_attempts,
        id,
        group,
        deployment,
        on_end: Some(on_end),
    })
}

struct Forward {
    inner: CommittedStream,
    /// The attempts made, for the first message, until it is sent.
    head_attempts: Option<Vec<Attempt>>,
    id: String,
    group: String,
    deployment: String,
    /// Taken when the stream ends.
    on_end: Option<OnEnd>,
    _open: GaugeGuard,
}

impl Forward {
    fn message(&self, delta: String) -> StreamCompleteResponse {
        StreamCompleteResponse {
            id: self.id.clone(),
            model: self.group.clone(),
            deployment: self.deployment.clone(),
            delta,
            ..Default::default()
        }
    }

    fn end(&mut self, how: StreamEnd) {
        if let Some(f) = self.on_end.take() {
            f(how, self.inner.usage());
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
            Ok(StreamItem::Delta(delta)) => {
                let mut msg = this.message(delta);
                if let Some(attempts) = this.head_attempts.take() {
                    msg.attempts = attempts;
                }
                Ok(msg)
            }
            Ok(StreamItem::Finished {
                finish_reason,
                usage,
                attempts,
            }) => {
                let mut tail = this.message(String::new());
                tail.finish_reason = finish_reason.unwrap_or(FinishReason::Unspecified) as i32;
                tail.usage = usage;
                tail.attempts = attempts.unwrap_or_default();
                this.end(StreamEnd::Finished);
                Ok(tail)
            }
            Err(failure) => {
                let status = call_status(&failure.error, &failure.attempts);
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
    use crate::routing::testkit::{CHAIN, call, ms, router};

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
        let on_end: stream::OnEnd = Box::new(move |end, _| *e.lock().unwrap() = Some(end));
        let items = stream::forward(
            a,
            "id".into(),
            idle,
            &Arc::new(crate::telemetry::Metrics::new()),
            on_end,
        )
        .collect()
        .await;
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
        let on_end: stream::OnEnd = Box::new(move |end, _| *e.lock().unwrap() = Some(end));
        let mut s = stream::forward(
            a,
            "id".into(),
            ms(500),
            &Arc::new(crate::telemetry::Metrics::new()),
            on_end,
        );
        s.next().await.unwrap().unwrap();
        drop(s);
        assert_eq!(*ended.lock().unwrap(), Some(stream::StreamEnd::ClientGone));
    }
}
