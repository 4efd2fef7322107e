//! The attempts of one round, run together: the first attempt and its hedges.
//!
//! Not `FuturesUnordered`: once it has polled as many futures as it holds, it wakes its own task
//! and returns `Pending` (futures-rs #2333, a guard against starving the executor). With the
//! one attempt a round usually holds, that is a spurious wake-up every time the attempt makes
//! progress, and on a multi-threaded runtime each one can rouse a parked worker: 2.9 context
//! switches per unary call where a plain forwarder makes 2.3 (BENCHMARKS.md). A round holds at
//! most `1 + max_hedges` attempts, so polling all of them on each wake-up costs less than
//! tracking which one woke.

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    task::Poll,
};

pub(super) struct Race<F> {
    /// Attempts by the order they started in; `None` once finished.
    running: Vec<Option<Pin<Box<F>>>>,
}

impl<F: Future> Race<F> {
    pub(super) fn new() -> Self {
        Race {
            running: Vec::with_capacity(1),
        }
    }

    pub(super) fn push(&mut self, fut: F) {
        self.running.push(Some(Box::pin(fut)));
    }

    /// No attempt is still running.
    pub(super) fn is_empty(&self) -> bool {
        self.running.iter().all(Option::is_none)
    }

    /// The output of the next attempt to finish; `None` when none is running. Attempts that
    /// finish at the same wake-up are returned in the order they started.
    pub(super) async fn next(&mut self) -> Option<F::Output> {
        poll_fn(|cx| {
            if self.is_empty() {
                return Poll::Ready(None);
            }
            for slot in self.running.iter_mut() {
                if let Some(fut) = slot
                    && let Poll::Ready(out) = fut.as_mut().poll(cx)
                {
                    *slot = None;
                    return Poll::Ready(Some(out));
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Context, Wake, Waker},
        time::Duration,
    };

    use super::*;

    /// Counts wake-ups of the task that polls the race.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_pending_attempt_does_not_wake_its_task() {
        // The behaviour this type exists for: FuturesUnordered would wake the task here.
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut race = Race::new();
        race.push(std::future::pending::<u32>());
        let mut next = Box::pin(race.next());
        for _ in 0..3 {
            assert!(next.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_finish_in_time_order_and_then_the_race_is_empty() {
        let mut race = Race::new();
        for (label, ms) in [("slow", 30u64), ("fast", 10), ("middle", 20)] {
            race.push(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                label
            });
        }
        assert!(!race.is_empty());
        assert_eq!(race.next().await, Some("fast"));
        assert_eq!(race.next().await, Some("middle"));
        assert!(!race.is_empty());
        assert_eq!(race.next().await, Some("slow"));
        assert!(race.is_empty());
        assert_eq!(race.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_pushed_while_others_run_joins_the_race() {
        let mut race = Race::new();
        race.push(Box::pin(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            "first"
        }) as Pin<Box<dyn Future<Output = &str> + Send>>);
        tokio::time::sleep(Duration::from_millis(10)).await;
        race.push(Box::pin(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            "hedge"
        }));
        assert_eq!(race.next().await, Some("hedge"));
        assert_eq!(race.next().await, Some("first"));
    }
}
