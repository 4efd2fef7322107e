//! The admin HTTP port (`server.admin_listen`): `/metrics` for Prometheus, `/healthz` and
//! `/readyz` for tools that do not speak gRPC health. HTTP/1.1 on hyper, which tonic already
//! brings: plaintext, or HTTPS with the gRPC port's certificate (`server.tls.admin`).

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};

use super::Metrics;
use crate::listen::{Acceptor, tls::Rotating};

/// How long a client of the admin port may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves until `shutdown` completes. `ready` is true while the server takes calls. With
/// `tls`, connections are HTTPS with its current certificate.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    tls: Option<Arc<Rotating>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Out of file descriptors, the port backs off instead of spinning (see `listen`).
    let mut acceptor = Acceptor::new(listener, "admin", metrics.clone());
    loop {
        let stream = tokio::select! {
            stream = acceptor.accept() => stream,
            () = &mut shutdown => return,
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        let tls = tls.as_ref().map(|t| t.admin_config());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, &metrics, *ready.borrow());
                async move { Ok::<_, Infallible>(response) }
            });
            // Errors here are a scraper hanging up; nothing to do about them. A client that
            // opens a connection and sends its request's headers slowly, or never, is cut off
            // after HEADER_READ_TIMEOUT instead of holding a task and a socket for good (the
            // TLS handshake included).
            let http = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .clone();
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(config) => {
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                    if let Ok(Ok(stream)) = tokio::time::timeout(HEADER_READ_TIMEOUT, accept).await
                    {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            }
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, ready: bool) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, OPENMETRICS, metrics.encode()),
        // Liveness only: the shared store's state is a detail, never a reason to fail.
        "/healthz" => reply(
            StatusCode::OK,
            TEXT,
            match metrics.shared_state_detail() {
                Some(detail) => format!("ok\nshared_state: {detail}\n"),
                None => "ok\n".into(),
            },
        ),
        "/readyz" if ready => reply(StatusCode::OK, TEXT, "ready\n".into()),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n".into()),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
