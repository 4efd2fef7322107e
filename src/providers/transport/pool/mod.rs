//! The connections to providers, pooled per origin (scheme, host, port and TLS settings), and
//! the one HTTP client every deployment sends through.
//!
//! Why not a general HTTP client: a provider caps the streams one HTTP/2 connection may carry
//! (`SETTINGS_MAX_CONCURRENT_STREAMS`, often 100), and a client that puts every stream on one
//! connection queues the rest inside it, where their first-chunk timers run out before they
//! are sent. This pool reads the limit each connection's peer advertises, spreads streams over
//! the open connections, opens another when all are full (up to
//! `router_settings.pool_max_http2_connections`), and only then makes a request wait, which
//! the routing layer sees through a [`Probe`] and treats as the router's own saturation, never
//! the deployment's timeout. Streams the provider never processed (refused, or above a GOAWAY's
//! last stream id) are sent again at once on another connection, unseen by the routing layer.
//! HTTP/1.1 providers (plaintext, or TLS without `h2`) get one connection per request in
//! flight, up to `pool_max_connections`, kept for reuse while idle.
//!
//! [`origin`] keeps one origin's connections and decides which a request gets; [`h2`] and
//! [`h1`] speak each protocol on one connection; [`connect`] opens them (TCP, a proxy's
//! tunnel, TLS); [`tls`] builds the TLS settings; [`response`] is what a request gets back.

mod connect;
mod h1;
mod h2;
mod origin;
mod response;
mod tls;

pub use response::{BodyError, Response};
pub use tls::TlsProfile;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::config::upstream::{PoolSettings, UpstreamTls};
use crate::telemetry::Metrics;
use connect::OriginKey;
use origin::{Lease, Origin};

/// How many times a request the provider never processed is sent again, on other
/// connections, before it fails like any other broken request.
const MAX_RESENDS: u32 = 4;

/// The HTTP client of every deployment: cheap to clone, shared by a router and the routers a
/// reload builds while the pool's settings stay the same.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: PoolSettings,
    connect_timeout: Duration,
    origins: Mutex<HashMap<OriginKey, Arc<Origin>>>,
    profiles: tls::Profiles,
    proxies: connect::Proxies,
    metrics: Arc<Metrics>,
    user_agent: HeaderValue,
    /// Whether the task that closes idle connections runs (started with the first origin,
    /// inside the runtime).
    sweeping: std::sync::atomic::AtomicBool,
}

/// One request: always a POST of a whole body (every provider call is one).
pub struct Outgoing<'a> {
    pub url: &'a url::Url,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub tls: &'a TlsProfile,
    /// Whose request it is, for the pool's metrics and log lines.
    pub deployment: &'a str,
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No connection could be made: the name, TCP, a proxy, or TLS (the provider's
    /// certificate among them). Nothing was sent.
    Connect(String),
    /// The connection was made, and the request failed on it (reset, closed, not HTTP).
    Request(String),
}

impl Client {
    pub fn new(settings: PoolSettings, connect_timeout: Duration, metrics: Arc<Metrics>) -> Client {
        Client {
            inner: Arc::new(Inner {
                settings,
                connect_timeout,
                origins: Mutex::new(HashMap::new()),
                profiles: tls::Profiles::default(),
                proxies: connect::Proxies::from_env(),
                metrics,
                user_agent: HeaderValue::from_static(concat!(
                    "llm-router/",
                    env!("CARGO_PKG_VERSION")
                )),
                sweeping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Whether this client was built with these settings, so that a reload may keep it (and
    /// its open connections).
    pub fn built_with(&self, settings: &PoolSettings, connect_timeout: Duration) -> bool {
        self.inner.settings == *settings && self.inner.connect_timeout == connect_timeout
    }

    /// The TLS settings requests with `tls` are made with. Equal settings get the same
    /// profile, and share connections.
    pub fn profile(&self, tls: &Arc<UpstreamTls>) -> TlsProfile {
        self.inner.profiles.get(tls)
    }

    /// Sends `req` and returns the provider's response head, its body still to read.
    pub async fn post(&self, req: Outgoing<'_>) -> Result<Response, SendError> {
        let origin = self.origin(&req)?;
        let mut avoid = None;
        for _ in 0..=MAX_RESENDS {
            let lease = origin.acquire(avoid, req.deployment).await?;
            match lease {
                Lease::H2(stream) => match stream.send(&req, &self.inner.user_agent).await {
                    h2::Sent::Response(r) => return Ok(r),
                    h2::Sent::Failed(e) => return Err(e),
                    h2::Sent::Unprocessed { conn, reason } => {
                        self.inner.metrics.upstream.resend(reason);
                        avoid = Some(conn);
                    }
                },
                Lease::H1(conn) => match conn.send(&req, &self.inner.user_agent).await {
                    h1::Sent::Response(r) => return Ok(r),
                    h1::Sent::Failed(e) => return Err(e),
                    h1::Sent::Unsent => {
                        self.inner.metrics.upstream.resend("stale_connection");
                        avoid = None;
                    }
                },
            }
        }
        Err(SendError::Request(format!(
            "the provider did not take the request on {} connections in a row (refused streams or GOAWAY)",
            MAX_RESENDS + 1
        )))
    }

    fn origin(&self, req: &Outgoing<'_>) -> Result<Arc<Origin>, SendError> {
        let key = OriginKey::of(req.url, req.tls)?;
        let mut origins = self.inner.origins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = origins.get(&key) {
            return Ok(o.clone());
        }
        let origin = Arc::new(Origin::new(
            key.clone(),
            req.tls.clone(),
            origin::Limits {
                max_h1: self.inner.settings.max_connections as usize,
                max_h2: self.inner.settings.max_http2_connections as usize,
                connect_timeout: self.inner.connect_timeout,
            },
            self.inner.proxies.for_origin(&key),
            self.inner.metrics.clone(),
        ));
        origins.insert(key, origin.clone());
        drop(origins);
        self.start_sweeping();
        Ok(origin)
    }

    /// Closes connections idle for longer than `pool_idle_timeout`, and forgets origins with
    /// nothing open. Runs while the client lives.
    fn start_sweeping(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let idle = self.inner.settings.idle_timeout;
        let every = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(15));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let now = Instant::now();
                let mut origins = inner.origins.lock().unwrap_or_else(|e| e.into_inner());
                origins.retain(|_, o| o.sweep(now, idle));
            }
        });
    }
}

tokio::task_local! {
    static PROBE: Probe;
}

/// What the routing layer learns of one attempt's time in the pool: whether, when its deadline
/// passed, it was waiting for a connection because the pool was at its bound. Set by the pool
/// while the attempt's future runs inside [`Probe::watch`].
#[derive(Clone, Default)]
pub struct Probe(Arc<Mutex<Option<Instant>>>);

impl Probe {
    /// Runs `f` with this probe as the one the pool reports to.
    pub fn watch<F: std::future::Future>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = F::Output> {
        PROBE.scope(self.clone(), f)
    }

    /// How long the attempt had been waiting for a connection when it was cut short; `None`
    /// when it was not waiting.
    pub fn saturated_for(&self) -> Option<Duration> {
        let since = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        since.map(|s| s.elapsed())
    }

    /// Marks the current attempt as waiting (`true`) or no longer (`false`). Not undone when
    /// the attempt is dropped mid-wait: that is what [`Probe::saturated_for`] reports.
    fn mark(waiting: bool) {
        let _ = PROBE.try_with(|p| {
            *p.0.lock().unwrap_or_else(|e| e.into_inner()) = waiting.then(Instant::now);
        });
    }
}
