//! A provider's response: its head, and its body read chunk by chunk. Reading the body to its
//! end gives an HTTP/1.1 connection back to the pool; dropping it early closes that
//! connection (or resets the HTTP/2 stream), which is how an abandoned attempt stops the
//! provider's work.

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt as _;

pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

enum Body {
    H2 {
        recv: h2::RecvStream,
        /// Counts the stream on its connection until the body is done.
        _slot: Box<dyn Send + Sync>,
    },
    H1 {
        incoming: hyper::body::Incoming,
        /// The connection, given back once the body has been read to its end.
        conn: Option<Box<dyn Finish>>,
    },
    Done,
}

/// What happens when a body has been read to its end: an HTTP/1.1 connection goes back to
/// the pool. Dropped instead when the body is not.
pub(super) trait Finish: Send + Sync {
    fn finished(self: Box<Self>);
}

/// The body broke off: the connection or stream failed before its end.
#[derive(Debug, Clone)]
pub struct BodyError(String);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyError {}

impl Response {
    pub(super) fn from_h2(
        head: http::Response<h2::RecvStream>,
        slot: Box<dyn Send + Sync>,
    ) -> Response {
        let (parts, recv) = head.into_parts();
        Response {
            status: parts.status,
            headers: parts.headers,
            body: Body::H2 { recv, _slot: slot },
        }
    }

    pub(super) fn from_h1(
        head: http::Response<hyper::body::Incoming>,
        conn: Box<dyn Finish>,
    ) -> Response {
        let (parts, incoming) = head.into_parts();
        Response {
            status: parts.status,
            headers: parts.headers,
            body: Body::H1 {
                incoming,
                conn: Some(conn),
            },
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        loop {
            match &mut self.body {
                Body::Done => return Ok(None),
                Body::H2 { recv, .. } => match recv.data().await {
                    Some(Ok(bytes)) => {
                        // The window is given back as soon as bytes are read: what limits a
                        // slow reader is the reading, not h2's buffer.
                        let _ = recv.flow_control().release_capacity(bytes.len());
                        if !bytes.is_empty() {
                            return Ok(Some(bytes));
                        }
                    }
                    Some(Err(e)) => {
                        self.body = Body::Done;
                        return Err(BodyError(describe_h2(&e)));
                    }
                    None => self.body = Body::Done,
                },
                Body::H1 { incoming, conn } => match incoming.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(bytes) = frame.into_data()
                            && !bytes.is_empty()
                        {
                            return Ok(Some(bytes));
                        }
                    }
                    Some(Err(e)) => {
                        self.body = Body::Done;
                        return Err(BodyError(describe_h1(&e)));
                    }
                    None => {
                        if let Some(c) = conn.take() {
                            c.finished();
                        }
                        self.body = Body::Done;
                    }
                },
            }
        }
    }

    /// The body as a stream of pieces.
    pub fn bytes_stream(self) -> impl Stream<Item = Result<Bytes, BodyError>> + Send {
        futures_util::stream::unfold(Some(self), |r| async move {
            let mut r = r?;
            match r.chunk().await {
                Ok(Some(b)) => Some((Ok(b), Some(r))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

/// An h2 error in words, without h2's internals.
pub(super) fn describe_h2(e: &h2::Error) -> String {
    if let Some(io) = e.get_io() {
        return format!("the connection broke: {io}");
    }
    match (e.reason(), e.is_go_away(), e.is_remote()) {
        (Some(r), true, true) => {
            format!("the provider closed the HTTP/2 connection (GOAWAY {r:?})")
        }
        (Some(r), false, true) => format!("the provider reset the HTTP/2 stream ({r:?})"),
        (Some(r), _, false) => format!("HTTP/2 protocol error ({r:?})"),
        (None, ..) => format!("HTTP/2 error: {e}"),
    }
}

/// A hyper error in words, with its root cause.
pub(super) fn describe_h1(e: &hyper::Error) -> String {
    use std::error::Error as _;
    let what = if e.is_incomplete_message() {
        "the connection closed before the response was complete".to_string()
    } else if e.is_parse() {
        format!("the provider's response is not HTTP/1.1 ({e})")
    } else if e.is_canceled() {
        "the request was cancelled".to_string()
    } else {
        e.to_string()
    };
    match e.source() {
        Some(cause) => format!("{what}: {cause}"),
        None => what,
    }
}
