//! Committed streams under tokio's paused clock, through the router's real chain walk and
//! mock provider: the idle timer, the total deadline, and how the stream ends.

use std::sync::Arc;

use tokio::time::Instant;
use tonic::Code;

use super::*;
use crate::api::stream;
use crate::proto::AttemptOutcome;
use crate::routing::testkit::{CHAIN, call, ms, router};

/// What the API keeps of an open call, for a test: no call slot, a fresh gauge.
pub(super) fn open(idle: Duration, on_end: stream::OnEnd) -> stream::Open {
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
