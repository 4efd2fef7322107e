//! One origin's connections, and the one place that decides which a request gets: a free
//! stream on the least busy HTTP/2 connection, an idle HTTP/1.1 connection, a connection
//! being opened (one a request's arrival started, expected to carry as many streams as the
//! origin's last HTTP/2 connection did), a new one while under the bound, or else a wait,
//! which is the router's own saturation and is counted, logged and reported to the attempt's
//! [`Probe`](super::Probe).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use tokio::{sync::Notify, time::Instant};

use super::{
    SendError,
    connect::{self, OriginKey, Proxy},
    h1, h2,
    tls::TlsProfile,
};
use crate::telemetry::Metrics;

pub(super) struct Limits {
    pub(super) max_h1: usize,
    pub(super) max_h2: usize,
    pub(super) connect_timeout: Duration,
}

/// The streams a connection being opened is expected to carry before its peer says: common
/// providers allow 100 to 256 per connection.
const FIRST_GUESS_STREAMS: usize = 100;

pub(super) struct Origin {
    pub(super) key: OriginKey,
    tls: TlsProfile,
    limits: Limits,
    proxy: Option<Proxy>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// A stream or connection was released, or the pool grew: one waiter (or, when the pool
    /// grew, every waiter) looks again. `generation` counts those events, so that a waiter
    /// that decided to wait just before one does not miss it.
    freed: Notify,
    generation: AtomicU64,
    next_id: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// No connection has been made yet (TLS origins choose by ALPN).
    Unknown,
    H1,
    H2,
}

struct State {
    protocol: Protocol,
    h2: Vec<H2Entry>,
    /// Idle HTTP/1.1 connections, the most recently used last.
    h1_idle: Vec<(h1::Idle, Instant)>,
    /// HTTP/1.1 connections open, idle or not.
    h1_open: usize,
    connecting: Vec<Connecting>,
    /// What a connection being opened is expected to carry: the last HTTP/2 peer's limit.
    expected_streams: usize,
    /// Requests waiting because the pool is at its bound.
    waiting: usize,
    saturated_since: Option<Instant>,
}

struct H2Entry {
    conn: Arc<h2::Conn>,
    in_flight: usize,
    idle_since: Option<Instant>,
}

/// A connection being opened, and the requests counting on it.
struct Connecting {
    shared: Arc<Opening>,
    capacity: usize,
    claims: usize,
}

#[derive(Default)]
struct Opening {
    done: Notify,
    /// Set, with `failed` when it failed, before `done` wakes the requests counting on it.
    finished: std::sync::atomic::AtomicBool,
    failed: Mutex<Option<SendError>>,
}

/// What a request does next (see [`Origin::next`]).
enum Next {
    Leased(Lease),
    Opening(Arc<Opening>),
    /// The pool is at its bound: wait for a release after `generation`.
    Full {
        generation: u64,
    },
}

/// What a request got: a stream on an HTTP/2 connection, or an HTTP/1.1 connection of its own.
pub(super) enum Lease {
    H2(h2::Stream),
    H1(h1::Leased),
}

/// A stream counted on its connection until dropped.
pub(super) struct StreamSlot {
    origin: Arc<Origin>,
    conn: u64,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut st = self.origin.lock();
        if let Some(e) = st.h2.iter_mut().find(|e| e.conn.id == self.conn) {
            e.in_flight = e.in_flight.saturating_sub(1);
            if e.in_flight == 0 {
                e.idle_since = Some(Instant::now());
            }
        }
        drop(st);
        self.origin.wake(false);
    }
}

/// A request's wait at the pool's bound, from its start until it gets a connection or is
/// dropped.
struct Wait<'a> {
    origin: &'a Origin,
    deployment: &'a str,
    since: Instant,
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let waited = self.since.elapsed();
        self.origin
            .metrics
            .upstream
            .pool_waited(self.deployment, waited.as_secs_f64());
        let mut st = self.origin.lock();
        st.waiting = st.waiting.saturating_sub(1);
        if st.waiting == 0
            && let Some(since) = st.saturated_since.take()
        {
            drop(st);
            tracing::info!(
                origin = %self.origin.key.shown(),
                full_for_ms = since.elapsed().as_millis() as u64,
                "upstream connection pool has room again"
            );
        }
    }
}

impl Origin {
    pub(super) fn new(
        key: OriginKey,
        tls: TlsProfile,
        limits: Limits,
        proxy: Option<Proxy>,
        metrics: Arc<Metrics>,
    ) -> Origin {
        Origin {
            key,
            tls,
            limits,
            proxy,
            metrics,
            state: Mutex::new(State {
                protocol: Protocol::Unknown,
                h2: Vec::new(),
                h1_idle: Vec::new(),
                h1_open: 0,
                connecting: Vec::new(),
                expected_streams: FIRST_GUESS_STREAMS,
                waiting: 0,
                saturated_since: None,
            }),
            freed: Notify::new(),
            generation: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection (or a stream on one) for one request; never connection `avoid`, which
    /// just refused it.
    pub(super) async fn acquire(
        self: &Arc<Self>,
        avoid: Option<u64>,
        deployment: &str,
    ) -> Result<Lease, SendError> {
        let mut wait: Option<Wait<'_>> = None;
        loop {
            match self.next(avoid, deployment, wait.is_some()) {
                Next::Leased(lease) => {
                    if wait.take().is_some() {
                        super::Probe::mark(false);
                    }
                    return Ok(lease);
                }
                Next::Opening(opening) => {
                    let done = opening.done.notified();
                    tokio::pin!(done);
                    done.as_mut().enable();
                    if !opening.finished.load(Ordering::Acquire) {
                        done.await;
                    }
                    let failed = opening
                        .failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    if let Some(e) = failed {
                        if wait.take().is_some() {
                            super::Probe::mark(false);
                        }
                        return Err(e);
                    }
                }
                Next::Full { generation } => {
                    if wait.is_none() {
                        super::Probe::mark(true);
                        wait = Some(Wait {
                            origin: self,
                            deployment,
                            since: Instant::now(),
                        });
                    }
                    let freed = self.freed.notified();
                    tokio::pin!(freed);
                    freed.as_mut().enable();
                    if self.generation.load(Ordering::Acquire) == generation {
                        freed.await;
                    }
                }
            }
        }
    }

    /// What a request does next, decided under the lock: take a lease, count on a
    /// connection being opened, or wait for a release. `waiting`: it already waits at the
    /// bound (and is counted as such).
    fn next(self: &Arc<Self>, avoid: Option<u64>, deployment: &str, waiting: bool) -> Next {
        let mut st = self.lock();
        let protocol = if self.key.https {
            st.protocol
        } else {
            Protocol::H1
        };
        if protocol == Protocol::H1 {
            if let Some(idle) = take_idle(&mut st) {
                drop(st);
                return Next::Leased(Lease::H1(idle.lease(self.clone() as Arc<dyn h1::Keep>)));
            }
            if st.h1_open + st.connecting.len() < self.limits.max_h1 {
                return Next::Opening(self.open(&mut st, 1));
            }
        } else {
            if let Some(e) = least_busy(&mut st.h2, avoid) {
                e.in_flight += 1;
                e.idle_since = None;
                let conn = e.conn.clone();
                drop(st);
                let slot = StreamSlot {
                    origin: self.clone(),
                    conn: conn.id,
                };
                return Next::Leased(Lease::H2(h2::Stream::new(conn, Box::new(slot))));
            }
            if let Some(c) = st.connecting.iter_mut().find(|c| c.claims < c.capacity) {
                c.claims += 1;
                return Next::Opening(c.shared.clone());
            }
            let open = st.h2.iter().filter(|e| !e.conn.draining()).count();
            if open + st.connecting.len() < self.limits.max_h2 {
                let expected = st.expected_streams;
                return Next::Opening(self.open(&mut st, expected));
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        if !waiting {
            st.waiting += 1;
            if st.saturated_since.is_none() {
                st.saturated_since = Some(Instant::now());
                let (open, bound) = match protocol {
                    Protocol::H1 => (st.h1_open, "pool_max_connections"),
                    _ => (st.h2.len(), "pool_max_http2_connections"),
                };
                drop(st);
                tracing::warn!(
                    origin = %self.key.shown(),
                    deployment,
                    connections = open,
                    "upstream connection pool is full (router_settings.{bound}): calls wait for a free connection, within their deadlines; this is the router's saturation, not the provider's"
                );
            }
            self.metrics.upstream.pool_wait(deployment);
        }
        Next::Full { generation }
    }

    /// Wakes a waiter (`all`: every waiter) to look again.
    fn wake(&self, all: bool) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if all {
            self.freed.notify_waiters();
        } else {
            self.freed.notify_one();
        }
    }

    /// Starts opening a connection expected to carry `capacity` requests, the first of them
    /// the caller's. The opening goes on if the caller gives up: others may be counting on it.
    fn open(self: &Arc<Self>, st: &mut State, capacity: usize) -> Arc<Opening> {
        let shared = Arc::new(Opening::default());
        st.connecting.push(Connecting {
            shared: shared.clone(),
            capacity: capacity.max(1),
            claims: 1,
        });
        let origin = self.clone();
        let opening = shared.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(origin.limits.connect_timeout, origin.connect())
                .await
                .unwrap_or_else(|_| {
                    Err(SendError::Connect(format!(
                        "no connection within router_settings.connect_timeout ({})",
                        crate::config::duration::display(origin.limits.connect_timeout)
                    )))
                });
            let mut st = origin.lock();
            st.connecting.retain(|c| !Arc::ptr_eq(&c.shared, &opening));
            let grew = match result {
                Ok(Opened::H2(conn)) => {
                    st.protocol = Protocol::H2;
                    st.expected_streams = conn.max_streams().max(1);
                    st.h2.push(H2Entry {
                        conn,
                        in_flight: 0,
                        idle_since: Some(Instant::now()),
                    });
                    true
                }
                Ok(Opened::H1(idle)) => {
                    st.protocol = Protocol::H1;
                    st.h1_idle.push((idle, Instant::now()));
                    true
                }
                Err(e) => {
                    *opening.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    false
                }
            };
            drop(st);
            opening.finished.store(true, Ordering::Release);
            opening.done.notify_waiters();
            if grew {
                origin.wake(true);
            }
        });
        shared
    }

    async fn connect(self: &Arc<Self>) -> Result<Opened, SendError> {
        let stream = connect::open(&self.key, &self.tls, self.proxy.as_ref()).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if stream.is_h2() {
            let (conn, driver) = h2::open(stream, id).await?;
            let origin = Arc::downgrade(self);
            let conn_id = conn.id;
            self.metrics.upstream.connection_opened("h2");
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                driver.await;
                metrics.upstream.connection_closed("h2");
                if let Some(o) = origin.upgrade() {
                    o.lock().h2.retain(|e| e.conn.id != conn_id);
                    o.wake(false);
                }
            });
            // The peer's limit is known before the connection takes a stream.
            conn.settled().await?;
            Ok(Opened::H2(conn))
        } else {
            let (idle, driver) = h1::open(stream).await?;
            self.lock().h1_open += 1;
            self.metrics.upstream.connection_opened("h1");
            let origin = Arc::downgrade(self);
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                driver.await;
                metrics.upstream.connection_closed("h1");
                if let Some(o) = origin.upgrade() {
                    let mut st = o.lock();
                    st.h1_open = st.h1_open.saturating_sub(1);
                    drop(st);
                    o.wake(false);
                }
            });
            Ok(Opened::H1(idle))
        }
    }

    /// Closes connections idle for longer than `idle`. Whether the origin is still in use.
    pub(super) fn sweep(&self, now: Instant, idle: Duration) -> bool {
        let mut st = self.lock();
        let stale = |since: Option<Instant>| since.is_some_and(|s| now.duration_since(s) >= idle);
        st.h2
            .retain(|e| e.in_flight > 0 || !(stale(e.idle_since) || e.conn.draining()));
        st.h1_idle
            .retain(|(c, since)| c.is_open() && !stale(Some(*since)));
        !(st.h2.is_empty() && st.h1_open == 0 && st.connecting.is_empty() && st.waiting == 0)
    }
}

impl h1::Keep for Origin {
    /// An HTTP/1.1 connection whose response was read to its end, for the next request.
    fn keep(&self, idle: h1::Idle) {
        self.lock().h1_idle.push((idle, Instant::now()));
        self.wake(false);
    }
}

enum Opened {
    H2(Arc<h2::Conn>),
    H1(h1::Idle),
}

/// The open HTTP/2 connection with the fewest streams in flight that has room for one more.
fn least_busy(entries: &mut [H2Entry], avoid: Option<u64>) -> Option<&mut H2Entry> {
    entries
        .iter_mut()
        .filter(|e| Some(e.conn.id) != avoid && !e.conn.draining())
        .filter(|e| e.in_flight < e.conn.max_streams())
        .min_by_key(|e| e.in_flight)
}

/// The most recently used idle HTTP/1.1 connection still open.
fn take_idle(st: &mut State) -> Option<h1::Idle> {
    while let Some((idle, _)) = st.h1_idle.pop() {
        if idle.is_open() {
            return Some(idle);
        }
    }
    None
}
