//! One HTTP/2 connection to a provider, through h2: its handshake, the peer's stream limit and
//! GOAWAY read off the wire as they arrive, and one request's stream on it.
//!
//! h2 applies a peer's stream limit by queueing streams past it inside the connection, and
//! after a GOAWAY it still opens new streams, which the peer ignores. So the frames the peer
//! sends are watched (only their 9-byte headers, and the payloads of SETTINGS and GOAWAY):
//! the pool gives a connection no more streams than its peer allows, and none once it is
//! going away; and a stream above the GOAWAY's last stream id is known never to have been
//! processed, so it can be sent again.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Method, header};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
};

use super::{
    Outgoing, SendError,
    connect::Stream as Io,
    response::{Response, describe_h2 as describe},
};

/// Streams one connection carries at most, whatever its peer allows: past this, another
/// connection spreads the flow-control window and the head-of-line risk of a lost packet.
const MAX_STREAMS_PER_CONNECTION: usize = 256;
/// The window each stream gives the provider, and the connection's for all its streams:
/// what a provider can have in flight toward a reader that is not reading. Bounds the memory
/// a connection can hold for slow callers (1 MiB) while leaving a single large answer room.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// The largest response header block accepted.
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Of a SETTINGS payload, what is read (a peer sends a handful of 6-byte entries).
const MAX_SETTINGS_KEPT: usize = 1024;

/// What the peer has said about the connection, read off the wire.
#[derive(Default)]
struct Watch {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`, once the peer's first SETTINGS arrived.
    max_streams: AtomicUsize,
    settled: AtomicBool,
    /// The last stream id of the peer's GOAWAY; `u32::MAX` until one arrives.
    goaway: AtomicU32,
    closed: AtomicBool,
    /// Why the connection ended, when it ended in an error.
    ended: std::sync::Mutex<Option<String>>,
    changed: Notify,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            max_streams: AtomicUsize::new(MAX_STREAMS_PER_CONNECTION),
            goaway: AtomicU32::new(u32::MAX),
            ..Watch::default()
        }
    }
}

/// An open HTTP/2 connection.
pub(super) struct Conn {
    pub(super) id: u64,
    send: h2::client::SendRequest<Bytes>,
    watch: Arc<Watch>,
}

impl Conn {
    /// How many streams it may carry at once.
    pub(super) fn max_streams(&self) -> usize {
        self.watch.max_streams.load(Ordering::Acquire)
    }

    /// Whether it takes no more streams: its peer sent GOAWAY, or it closed.
    pub(super) fn draining(&self) -> bool {
        self.watch.goaway.load(Ordering::Acquire) != u32::MAX
            || self.watch.closed.load(Ordering::Acquire)
    }

    /// Waits for the peer's first SETTINGS (the caller bounds the wait).
    pub(super) async fn settled(&self) -> Result<(), SendError> {
        loop {
            let changed = self.watch.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.watch.settled.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.watch.closed.load(Ordering::Acquire) {
                let why = self
                    .watch
                    .ended
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_else(|| "the provider closed the connection".into());
                return Err(SendError::Connect(format!(
                    "{why}, before its HTTP/2 SETTINGS"
                )));
            }
            changed.await;
        }
    }

    /// Whether a stream with this id is one the peer's GOAWAY says it never processed.
    fn above_goaway(&self, id: u32) -> bool {
        id > self.watch.goaway.load(Ordering::Acquire)
    }
}

/// Opens HTTP/2 on `io`. The returned future drives the connection until it closes, and must
/// be spawned.
pub(super) async fn open(
    io: Io,
    id: u64,
) -> Result<(Arc<Conn>, impl Future<Output = ()> + Send + 'static), SendError> {
    let watch = Arc::new(Watch::new());
    let io = Sniffed {
        io,
        frames: Frames::default(),
        watch: watch.clone(),
    };
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| SendError::Connect(format!("HTTP/2 handshake failed: {}", describe(&e))))?;
    let driver_watch = watch.clone();
    let driver = async move {
        if let Err(e) = connection.await {
            // A TLS 1.3 server refuses a missing client certificate after the handshake, so
            // that refusal arrives here, on the connection's first read.
            // (h2 keeps only the text of an I/O error, so the alert is known by its words.)
            let mut why = describe(&e);
            if why.contains("alert") {
                why = format!(
                    "TLS: the provider refused the connection ({why}); if it asks for a client certificate, set ssl_certificate"
                );
            }
            tracing::debug!(error = %why, "upstream HTTP/2 connection ended");
            *driver_watch.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        }
        driver_watch.closed.store(true, Ordering::Release);
        driver_watch.changed.notify_waiters();
    };
    Ok((Arc::new(Conn { id, send, watch }), driver))
}

/// A request's stream on a connection, counted there until the response's body is done.
pub(super) struct Stream {
    conn: Arc<Conn>,
    /// The pool's count of the stream, released when dropped.
    slot: Box<dyn Send + Sync>,
}

/// How sending on a stream went.
pub(super) enum Sent {
    Response(Response),
    Failed(SendError),
    /// The provider never processed the request (a refused stream, or one above a GOAWAY's
    /// last stream id, or a connection that closed before it was sent): it may be sent again,
    /// on another connection.
    Unprocessed {
        conn: u64,
        reason: &'static str,
    },
}

impl Stream {
    pub(super) fn new(conn: Arc<Conn>, slot: Box<dyn Send + Sync>) -> Stream {
        Stream { conn, slot }
    }

    pub(super) async fn send(self, req: &Outgoing<'_>, user_agent: &HeaderValue) -> Sent {
        let Stream { conn, slot } = self;
        let unprocessed = |reason| Sent::Unprocessed {
            conn: conn.id,
            reason,
        };
        let mut send = match conn.send.clone().ready().await {
            Ok(s) => s,
            Err(_) => return unprocessed("closed_connection"),
        };
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = match req.url.as_str().parse() {
            Ok(uri) => uri,
            Err(_) => {
                return Sent::Failed(SendError::Connect(
                    "the provider URL is not a valid request URI".into(),
                ));
            }
        };
        *request.version_mut() = http::Version::HTTP_2;
        let headers = request.headers_mut();
        headers.extend(req.headers.clone());
        headers
            .entry(header::USER_AGENT)
            .or_insert_with(|| user_agent.clone());
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(req.body.len()));
        let (response, mut body) = match send.send_request(request, req.body.is_empty()) {
            Ok(r) => r,
            // Nothing was sent: the connection is closing or broken.
            Err(_) => return unprocessed("closed_connection"),
        };
        let id = u32::from(response.stream_id());
        // A GOAWAY that h2 took in just before this stream opened: the peer will ignore it.
        if conn.above_goaway(id) {
            return unprocessed("goaway");
        }
        let sending = send_all(&mut body, req.body.clone());
        tokio::pin!(sending, response);
        let mut sent = req.body.is_empty();
        let head = loop {
            tokio::select! {
                head = &mut response => break head,
                // A failure to send shows on the response too; an answer before the body is
                // all sent (an early 413) is taken as it is.
                _ = &mut sending, if !sent => sent = true,
            }
        };
        match head {
            Ok(head) => Sent::Response(Response::from_h2(head, slot)),
            Err(e)
                if e.is_reset()
                    && e.is_remote()
                    && e.reason() == Some(h2::Reason::REFUSED_STREAM) =>
            {
                unprocessed("refused_stream")
            }
            Err(_) if conn.above_goaway(id) => unprocessed("goaway"),
            Err(e) => Sent::Failed(SendError::Request(describe(&e))),
        }
    }
}

/// Sends a whole body as flow control allows.
async fn send_all(tx: &mut h2::SendStream<Bytes>, mut rest: Bytes) -> Result<(), h2::Error> {
    while !rest.is_empty() {
        tx.reserve_capacity(rest.len());
        match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
            Some(Ok(0)) => {}
            Some(Ok(n)) => {
                let chunk = rest.split_to(n.min(rest.len()));
                tx.send_data(chunk, rest.is_empty())?;
            }
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
    Ok(())
}

/// The connection's bytes, with the peer's frames watched as they pass.
struct Sniffed {
    io: Io,
    frames: Frames,
    watch: Arc<Watch>,
}

/// Where the reader stands in the peer's frame sequence.
#[derive(Default)]
struct Frames {
    head: [u8; 9],
    /// Bytes of the current frame's header read so far; 9 while in its payload.
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    kind: u8,
    /// Payload bytes kept (of SETTINGS and GOAWAY), and how many are wanted.
    kept: Vec<u8>,
    want: usize,
}

impl Frames {
    fn feed(&mut self, mut data: &[u8], watch: &Watch) {
        while !data.is_empty() {
            if self.have < 9 {
                let n = (9 - self.have).min(data.len());
                self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 9 {
                    let h = &self.head;
                    self.left =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    self.kind = h[3];
                    let ack = h[4] & 1 == 1;
                    self.want = match self.kind {
                        0x4 if !ack => self.left.min(MAX_SETTINGS_KEPT),
                        0x7 => self.left.min(4),
                        _ => 0,
                    };
                    self.kept.clear();
                    if self.left == 0 {
                        self.end(watch, ack);
                    }
                }
                continue;
            }
            let n = self.left.min(data.len());
            if self.kept.len() < self.want {
                let k = (self.want - self.kept.len()).min(n);
                self.kept.extend_from_slice(&data[..k]);
            }
            self.left -= n;
            data = &data[n..];
            if self.left == 0 {
                let ack = self.head[4] & 1 == 1;
                self.end(watch, ack);
            }
        }
    }

    /// The current frame is complete.
    fn end(&mut self, watch: &Watch, ack: bool) {
        self.have = 0;
        match self.kind {
            0x4 if !ack => {
                for entry in self.kept.chunks_exact(6) {
                    if u16::from_be_bytes([entry[0], entry[1]]) == 0x3 {
                        let n = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                        let n = usize::try_from(n).unwrap_or(usize::MAX);
                        watch
                            .max_streams
                            .store(n.min(MAX_STREAMS_PER_CONNECTION), Ordering::Release);
                    }
                }
                watch.settled.store(true, Ordering::Release);
                watch.changed.notify_waiters();
            }
            0x7 if self.kept.len() == 4 => {
                let last =
                    u32::from_be_bytes([self.kept[0], self.kept[1], self.kept[2], self.kept[3]])
                        & 0x7fff_ffff;
                watch.goaway.fetch_min(last, Ordering::AcqRel);
                watch.changed.notify_waiters();
            }
            _ => {}
        }
    }
}

impl AsyncRead for Sniffed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.frames.feed(&buf.filled()[before..], &this.watch);
        }
        result
    }
}

impl AsyncWrite for Sniffed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn settings_and_goaway_are_read_across_any_split_of_the_bytes() {
        let mut wire = Vec::new();
        // SETTINGS: header table size, then MAX_CONCURRENT_STREAMS = 20.
        wire.extend(frame(0x4, 0, 0, &[0, 1, 0, 0, 16, 0, 0, 3, 0, 0, 0, 20]));
        wire.extend(frame(0x4, 1, 0, &[])); // an ACK
        wire.extend(frame(0x1, 4, 1, &[0x88])); // HEADERS
        wire.extend(frame(0x0, 0, 1, &[b'x'; 300])); // DATA
        wire.extend(frame(
            0x7,
            0,
            0,
            &[0, 0, 0, 7, 0, 0, 0, 0, b'b', b'y', b'e'],
        ));
        for split in [1, 2, 5, 9, 10, 64, wire.len()] {
            let watch = Watch::new();
            let mut frames = Frames::default();
            for piece in wire.chunks(split) {
                frames.feed(piece, &watch);
            }
            assert!(watch.settled.load(Ordering::Acquire), "split {split}");
            assert_eq!(
                watch.max_streams.load(Ordering::Acquire),
                20,
                "split {split}"
            );
            assert_eq!(watch.goaway.load(Ordering::Acquire), 7, "split {split}");
        }
    }

    #[test]
    fn a_peer_without_a_stream_limit_gets_ours() {
        let watch = Watch::new();
        let mut frames = Frames::default();
        frames.feed(&frame(0x4, 0, 0, &[0, 3, 0xff, 0xff, 0xff, 0xff]), &watch);
        assert_eq!(
            watch.max_streams.load(Ordering::Acquire),
            MAX_STREAMS_PER_CONNECTION
        );
        assert_eq!(watch.goaway.load(Ordering::Acquire), u32::MAX);
    }
}
