//! One HTTP/1.1 connection to a provider, through hyper: one request at a time, kept for the
//! next when its response was read to the end.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, header};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::{
    Outgoing, SendError,
    connect::Stream as Io,
    response::{Response, describe_h1 as describe},
};

/// The most a response head (status line and headers) may take.
const MAX_HEAD_BYTES: usize = 64 * 1024;

type Sender = http1::SendRequest<Full<Bytes>>;

/// Where a connection goes back to once its response has been read to the end.
pub(super) trait Keep: Send + Sync {
    fn keep(&self, idle: Idle);
}

/// A connection with nothing in flight.
pub(super) struct Idle {
    sender: Sender,
}

impl Idle {
    pub(super) fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    pub(super) fn lease(self, origin: Arc<dyn Keep>) -> Leased {
        Leased {
            sender: self.sender,
            origin,
        }
    }
}

/// A connection one request has to itself.
pub(super) struct Leased {
    sender: Sender,
    origin: Arc<dyn Keep>,
}

/// A connection whose response body is being read, to give back at its end.
struct Returning {
    sender: Sender,
    origin: Arc<dyn Keep>,
}

impl crate::providers::transport::pool::response::Finish for Returning {
    fn finished(self: Box<Self>) {
        self.origin.keep(Idle {
            sender: self.sender,
        });
    }
}

pub(super) enum Sent {
    Response(Response),
    Failed(SendError),
    /// The connection closed before the request was written: it may be sent on another.
    Unsent,
}

impl Leased {
    pub(super) async fn send(mut self, req: &Outgoing<'_>, user_agent: &HeaderValue) -> Sent {
        if self.sender.ready().await.is_err() {
            return Sent::Unsent;
        }
        let url = req.url;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let mut request = http::Request::new(Full::new(req.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = match path.parse() {
            Ok(uri) => uri,
            Err(_) => {
                return Sent::Failed(SendError::Connect(
                    "the provider URL is not a valid request URI".into(),
                ));
            }
        };
        let headers = request.headers_mut();
        headers.extend(req.headers.clone());
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => String::new(),
        };
        if let Ok(host) = HeaderValue::from_str(&host) {
            headers.insert(header::HOST, host);
        }
        headers
            .entry(header::USER_AGENT)
            .or_insert_with(|| user_agent.clone());
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(req.body.len()));
        match self.sender.try_send_request(request).await {
            Ok(head) => Sent::Response(Response::from_h1(
                head,
                Box::new(Returning {
                    sender: self.sender,
                    origin: self.origin,
                }),
            )),
            Err(mut e) => {
                if e.take_message().is_some() {
                    Sent::Unsent
                } else {
                    Sent::Failed(SendError::Request(describe(e.error())))
                }
            }
        }
    }
}

/// Opens HTTP/1.1 on `io`. The returned future drives the connection until it closes, and
/// must be spawned.
pub(super) async fn open(
    io: Io,
) -> Result<(Idle, impl Future<Output = ()> + Send + 'static), SendError> {
    let (sender, connection) = http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(format!("HTTP/1.1 handshake failed: {}", describe(&e))))?;
    let driver = async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "upstream HTTP/1.1 connection ended");
        }
    };
    Ok((Idle { sender }, driver))
}
