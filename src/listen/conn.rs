//! The gRPC port's connections, plaintext or TLS, each with what it proved: the peer's
//! address and, over mTLS, the identity of its client certificate. tonic hands this
//! [`PeerInfo`] to every request on the connection (its extensions), so a call's identity is
//! read, not worked out again, per call.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::{Acceptor, tls::Rotating};
use crate::telemetry::Metrics;

/// Longest a client may take over its TLS handshake before the connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past it, accepting waits (the kernel's backlog queues).
const MAX_HANDSHAKES: usize = 1024;

/// What a connection proved, on every request it carries.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The client certificate's identity (SPIFFE URI, else DNS name), verified against
    /// `server.tls.client_ca_file`.
    pub identity: Option<Arc<str>>,
    /// The connection is TLS.
    pub tls: bool,
}

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>, PeerInfo),
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Conn::Plain(s) => PeerInfo {
                remote: s.peer_addr().ok(),
                identity: None,
                tls: false,
            },
            Conn::Tls(_, info) => info.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepted connections with Nagle's algorithm off: tonic's own `tcp_nodelay` does not apply
/// to an incoming stream we provide, and with Nagle on a response's frames can wait for the
/// client's delayed ACK, up to 40ms on a call whose deadline is the product. With `tls`, each
/// connection's handshake runs in its own task (a slow client holds up nobody else's) within
/// `HANDSHAKE_TIMEOUT`; a failed handshake closes that connection only.
pub fn incoming(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    tls: Option<Arc<Rotating>>,
) -> impl tokio_stream::Stream<Item = io::Result<Conn>> {
    let acceptor = Acceptor::new(listener, "grpc", metrics);
    let (tx, rx) = mpsc::channel::<Conn>(64);
    let task = tokio::spawn(accept_loop(acceptor, tls, tx));
    futures_util::stream::unfold((rx, AbortOnDrop(task)), |(mut rx, task)| async move {
        let conn = rx.recv().await?;
        Some((Ok(conn), (rx, task)))
    })
}

async fn accept_loop(mut acceptor: Acceptor, tls: Option<Arc<Rotating>>, tx: mpsc::Sender<Conn>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        // Only handshakes take a permit: a plaintext connection is handed over at once.
        let permit = match &tls {
            Some(_) => match handshakes.clone().acquire_owned().await {
                Ok(p) => Some(p),
                Err(_) => return,
            },
            None => None,
        };
        let conn = acceptor.accept().await;
        if let Err(e) = conn.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let Some(tls) = &tls else {
            if tx.send(Conn::Plain(conn)).await.is_err() {
                return;
            }
            continue;
        };
        let config = tls.config();
        let tx = tx.clone();
        tokio::spawn(async move {
            let remote = conn.peer_addr().ok();
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(conn);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = ?remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = ?remote, "TLS handshake timed out");
                    return;
                }
            };
            drop(permit);
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| super::tls::certificate_identity(c))
                .map(Arc::from);
            let info = PeerInfo {
                remote,
                identity,
                tls: true,
            };
            let _ = tx.send(Conn::Tls(Box::new(stream), info)).await;
        });
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
