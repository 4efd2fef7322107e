//! A bound on request bytes being received and not yet handed to a call, across every stream
//! of every connection (`server.max_pending_request_bytes`). tonic buffers each request message
//! whole before its handler, and with it the call's admission count, runs: without this bound a
//! client that sends many large requests and never finishes them holds their bytes for as long
//! as it likes, many times `max_concurrent_calls` over. Each request's body reserves its bytes
//! as they arrive and gives them back when it is dropped (once its message is decoded, before
//! the handler runs); a frame that would go past the bound ends the request with
//! RESOURCE_EXHAUSTED at once, and what it had buffered is freed.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;

use super::error::ApiError;
use super::status::call_status;

/// The bytes pending across the server, and their bound.
#[derive(Debug)]
pub struct PendingBytes {
    limit: usize,
    held: AtomicUsize,
}

impl PendingBytes {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(PendingBytes {
            limit,
            held: AtomicUsize::new(0),
        })
    }

    /// Takes `n` bytes of the budget, if they fit.
    fn reserve(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// The tower layer that bounds every request's body by one [`PendingBytes`].
#[derive(Debug, Clone)]
pub struct PendingLayer(pub Arc<PendingBytes>);

impl<S> tower_layer::Layer<S> for PendingLayer {
    type Service = Pending<S>;

    fn layer(&self, inner: S) -> Pending<S> {
        Pending {
            inner,
            budget: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pending<S> {
    inner: S,
    budget: Arc<PendingBytes>,
}

impl<S> tower_service::Service<http::Request<Body>> for Pending<S>
where
    S: tower_service::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let budget = self.budget.clone();
        self.inner.call(req.map(|body| {
            Body::new(Counted {
                inner: body,
                budget,
                held: 0,
            })
        }))
    }
}

/// A request body whose bytes count against the server's pending budget while it lives.
struct Counted {
    inner: Body,
    budget: Arc<PendingBytes>,
    held: usize,
}

impl HttpBody for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len();
            if !self.budget.reserve(n) {
                let limit = self.budget.limit;
                // The RetryInfo of a refusal at the server's own limit, as for max_concurrent_calls.
                return Poll::Ready(Some(Err(call_status(
                    &ApiError::PendingBytesExhausted { limit },
                    &[],
                    Duration::MAX,
                ))));
            }
            self.held += n;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_takes_what_fits_and_gets_it_back() {
        let b = PendingBytes::new(100);
        assert!(b.reserve(60));
        assert!(!b.reserve(41), "past the bound");
        assert!(b.reserve(40));
        b.release(60);
        assert_eq!(b.held(), 40);
        assert!(b.reserve(60));
        assert!(!b.reserve(usize::MAX), "no overflow");
    }
}
