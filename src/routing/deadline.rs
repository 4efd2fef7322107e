//! Deadline arithmetic: the call's total deadline, each attempt's deadline, and backoff waits
//! that never run past the total deadline.

use std::time::Duration;

use tokio::time::Instant;

use super::failure::Failure;

/// Parses a gRPC `grpc-timeout` header value: up to 8 digits and a unit (`H M S m u n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The call's total deadline: the earliest of the client's gRPC deadline, the request's
/// `timeout` and the router's `timeout`, less the margin that lets our DEADLINE_EXCEEDED reach
/// the client before the gRPC server's own timeout layer answers CANCELLED.
pub fn total_deadline(
    now: Instant,
    client: Option<Duration>,
    request: Option<Duration>,
    router: Duration,
    margin: Duration,
) -> Instant {
    let budget = [client, request, Some(router)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(router);
    after(now, budget.saturating_sub(margin))
}

/// `now + d`, saturating far in the future instead of overflowing: durations come from requests
/// and from providers' headers, and a huge one must not panic.
pub fn after(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d).unwrap_or_else(|| now + FAR)
}

/// A steady-clock instant as wall-clock time, for what clients and dashboards read.
pub fn wall_clock(at: Instant) -> std::time::SystemTime {
    let now = Instant::now();
    let wall = std::time::SystemTime::now();
    if at >= now {
        wall + (at - now)
    } else {
        wall - (now - at)
    }
}

/// Which of a call's limits the client set (its `grpc-timeout`, the request's `timeout`
/// or `stream_timeout`), rather than the config. An attempt cut by one of them says nothing
/// about its deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientLimits {
    /// The total deadline is the client's (shorter than `router_settings.timeout`).
    pub total: bool,
    /// The first-chunk limit is the request's `stream_timeout`.
    pub stream_timeout: bool,
}

/// Deadlines of one attempt, fixed when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptDeadlines {
    /// The earliest of the total deadline and the deployment's timeout.
    pub attempt: Instant,
    /// For streamed attempts with a `stream_timeout`: when the first chunk must have arrived.
    /// Never later than `attempt`.
    pub first_chunk: Option<Instant>,
    /// Whether `attempt` is the client's total deadline, not a configured limit.
    attempt_is_clients: bool,
    /// Whether `first_chunk` is the request's `stream_timeout`.
    first_chunk_is_clients: bool,
}

impl AttemptDeadlines {
    pub fn new(
        start: Instant,
        total: Instant,
        deployment_timeout: Duration,
        stream_timeout: Option<Duration>,
        client: ClientLimits,
    ) -> Self {
        let own = after(start, deployment_timeout);
        let attempt = total.min(own);
        AttemptDeadlines {
            attempt,
            first_chunk: stream_timeout.map(|t| after(start, t).min(attempt)),
            attempt_is_clients: client.total && total < own,
            first_chunk_is_clients: client.stream_timeout,
        }
    }

    /// The failure of an attempt that ran out of time: waiting for its first chunk
    /// (`streaming`) or its whole answer. Cut by the client's own limit when that limit is the
    /// one that passed.
    pub fn expired(&self, streaming: bool) -> Failure {
        if streaming && self.first_chunk_is_binding() {
            Failure::Timeout {
                first_chunk: true,
                by_client: self.first_chunk_is_clients,
            }
        } else {
            Failure::Timeout {
                first_chunk: false,
                by_client: self.attempt_is_clients,
            }
        }
    }

    /// When the attempt gives up waiting for its answer (unary) or first chunk (stream).
    pub fn until_first_chunk(&self) -> Instant {
        self.first_chunk.unwrap_or(self.attempt)
    }

    /// Whether a timeout at `until_first_chunk` is the first-chunk deadline's doing rather than
    /// the attempt's own (or the total) deadline.
    pub fn first_chunk_is_binding(&self) -> bool {
        self.first_chunk.is_some_and(|f| f < self.attempt)
    }
}

/// Settings that shape the wait before retrying a deployment that failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First step (`retry_backoff_initial`); doubles per retry.
    pub initial: Duration,
    /// Largest step (`retry_backoff_max`).
    pub max: Duration,
    /// The router's `retry_after` setting: no retry of a failed deployment comes sooner.
    pub floor: Duration,
}

impl Backoff {
    /// The wait before retry number `retry` (1 for the first retry). `jitter` in [0, 1) spreads
    /// retries from many callers over the upper half of the step. A provider's hint (its
    /// `Retry-After`) replaces the computed step when longer.
    pub fn wait(&self, retry: u32, provider_hint: Option<Duration>, jitter: f64) -> Duration {
        let exp = retry.saturating_sub(1).min(20);
        let step = self.initial.saturating_mul(1 << exp).min(self.max);
        let jittered = step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        jittered
            .max(self.floor)
            .max(provider_hint.unwrap_or_default())
    }

    /// [`Backoff::wait`], when it ends before the call's deadline (`time_left` from now): a
    /// wait that would eat the rest of the call's time is never slept, and the call moves on.
    pub fn wait_within(
        &self,
        retry: u32,
        provider_hint: Option<Duration>,
        jitter: f64,
        time_left: Duration,
    ) -> Option<Duration> {
        let wait = self.wait(retry, provider_hint, jitter);
        (wait < time_left).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses_every_unit() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789m"), None, "more than 8 digits");
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[tokio::test(start_paused = true)]
    async fn total_deadline_is_the_earliest_less_the_margin() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let router = Duration::from_secs(600);
        // Client deadline wins.
        assert_eq!(
            total_deadline(now, Some(ms(500)), Some(ms(900)), router, ms(20)),
            now + ms(480)
        );
        // Request timeout wins.
        assert_eq!(
            total_deadline(now, Some(ms(900)), Some(ms(300)), router, ms(20)),
            now + ms(280)
        );
        // Only the router's.
        assert_eq!(
            total_deadline(now, None, None, ms(1000), ms(20)),
            now + ms(980)
        );
        // A deadline shorter than the margin is already over.
        assert_eq!(total_deadline(now, Some(ms(10)), None, router, ms(20)), now);
    }

    #[tokio::test(start_paused = true)]
    async fn attempt_deadline_never_passes_the_total() {
        let start = Instant::now();
        let s = Duration::from_secs;
        let d = AttemptDeadlines::new(start, start + s(10), s(3), None, ClientLimits::default());
        assert_eq!(d.attempt, start + s(3));
        assert_eq!(d.until_first_chunk(), start + s(3));
        assert!(!d.first_chunk_is_binding());

        let d = AttemptDeadlines::new(
            start,
            start + s(2),
            s(3),
            Some(s(1)),
            ClientLimits::default(),
        );
        assert_eq!(d.attempt, start + s(2), "total caps the deployment timeout");
        assert_eq!(d.first_chunk, Some(start + s(1)));
        assert!(d.first_chunk_is_binding());

        let d = AttemptDeadlines::new(
            start,
            start + s(2),
            s(3),
            Some(Duration::MAX),
            ClientLimits::default(),
        );
        assert_eq!(
            d.first_chunk,
            Some(start + s(2)),
            "a huge stream_timeout cannot overflow"
        );

        let d = AttemptDeadlines::new(
            start,
            start + s(2),
            s(3),
            Some(s(5)),
            ClientLimits::default(),
        );
        assert_eq!(
            d.first_chunk,
            Some(start + s(2)),
            "first-chunk deadline capped too"
        );
        assert!(
            !d.first_chunk_is_binding(),
            "the total deadline is what fires"
        );
    }

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        let ms = Duration::from_millis;
        let b = Backoff {
            initial: ms(100),
            max: ms(1000),
            floor: ms(0),
        };
        assert_eq!(b.wait(1, None, 1.0), ms(100));
        assert_eq!(b.wait(2, None, 1.0), ms(200));
        assert_eq!(b.wait(3, None, 0.0), ms(200), "jitter 0 is half the step");
        assert_eq!(b.wait(10, None, 1.0), ms(1000), "capped at max");
        assert_eq!(
            b.wait(1, Some(ms(700)), 1.0),
            ms(700),
            "Retry-After wins when longer"
        );
        let b = Backoff {
            floor: ms(300),
            ..b
        };
        assert_eq!(b.wait(1, None, 0.0), ms(300), "retry_after is a floor");
        assert_eq!(b.wait_within(1, None, 0.0, ms(301)), Some(ms(300)));
        assert_eq!(
            b.wait_within(1, None, 0.0, ms(300)),
            None,
            "a wait that ends at the deadline leaves no time to retry"
        );
    }
}
