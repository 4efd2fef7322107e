//! Accepting connections on the gRPC and admin ports without spinning when the process runs out
//! of file descriptors (or buffers, or memory). An accept that fails for want of resources
//! fails again at once until a connection closes: retried in a loop, it burns a core and, logged
//! each time, floods the log. Here it backs off (10 ms, doubling to 1 s, reset by the next
//! accepted connection), is logged at most once a second with how many failed since, and is
//! counted in `llmrouter_accept_errors_total`. The connections already open keep being served.

pub mod conn;
pub mod tls;

use std::{io, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::telemetry::Metrics;

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(1);

/// A listener's accept loop, with its backoff and its log's memory.
pub struct Acceptor {
    listener: TcpListener,
    /// `grpc` or `admin`: the metric's label and the log's.
    port: &'static str,
    metrics: Arc<Metrics>,
    backoff: Duration,
    /// Failures not yet logged, and when the last log line was written.
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl Acceptor {
    pub fn new(listener: TcpListener, port: &'static str, metrics: Arc<Metrics>) -> Self {
        Acceptor {
            listener,
            port,
            metrics,
            backoff: Duration::ZERO,
            unlogged: 0,
            logged_at: None,
        }
    }

    /// The next connection.
    pub async fn accept(&mut self) -> TcpStream {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    self.backoff = Duration::ZERO;
                    return stream;
                }
                // The one connection went away before it was accepted: nothing to wait for.
                Err(e) if per_connection(&e) => {
                    tracing::debug!(port = self.port, error = %e, "accept: connection gone");
                }
                Err(e) => {
                    self.metrics.accept_error(self.port);
                    self.unlogged += 1;
                    let now = Instant::now();
                    if self.logged_at.is_none_or(|at| now - at >= LOG_EVERY) {
                        tracing::warn!(
                            port = self.port,
                            error = %e,
                            failures = self.unlogged,
                            backoff_ms = self.next_backoff().as_millis() as u64,
                            "cannot accept connections (out of file descriptors?); backing off, serving the connections already open"
                        );
                        self.unlogged = 0;
                        self.logged_at = Some(now);
                    }
                    self.backoff = self.next_backoff();
                    tokio::time::sleep(self.backoff).await;
                }
            }
        }
    }

    fn next_backoff(&self) -> Duration {
        if self.backoff.is_zero() {
            FIRST_BACKOFF
        } else {
            (self.backoff * 2).min(MAX_BACKOFF)
        }
    }
}

/// Failures of one connection, not of the listener: retried at once.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_backoff_doubles_from_10ms_to_1s() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut a = Acceptor::new(l, "grpc", Arc::new(Metrics::new()));
        let mut seen = Vec::new();
        for _ in 0..9 {
            a.backoff = a.next_backoff();
            seen.push(a.backoff.as_millis());
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }
}
