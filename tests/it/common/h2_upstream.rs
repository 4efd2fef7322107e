//! An OpenAI-compatible streaming upstream over TLS that speaks HTTP/2 at the frame level, so
//! that it can misbehave as real providers and their CDNs do: it advertises a stream limit
//! (SETTINGS_MAX_CONCURRENT_STREAMS) and refuses streams past it, refuses some on purpose
//! (RST_STREAM REFUSED_STREAM), sends a GOAWAY whose last stream id is below streams in flight,
//! and can ask for a client certificate. It counts connections and streams, and the most
//! streams one connection ever had open at once.
//!
//! Every stream is answered alike: `chunks` SSE content events `chunk_delay` apart, then
//! `[DONE]`. Request headers are not decoded (the answer does not depend on them); the
//! response head is HPACK-encoded from the static table.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::{Notify, mpsc},
};

use super::certs::{self, Ca};

/// How the upstream behaves; changeable while it runs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Advertised SETTINGS_MAX_CONCURRENT_STREAMS; a stream past it is refused and counted.
    pub max_streams: u32,
    pub chunks: usize,
    pub chunk_delay: Duration,
    /// Refuse this many streams (the first ones to arrive) with REFUSED_STREAM.
    pub refuse_first: u32,
    /// On the first connection only: once it has received this many streams, send GOAWAY
    /// with the last stream id of the half of them that arrived first; the others are never
    /// answered, and the connection closes when the first half is done.
    pub goaway_after: Option<u32>,
    /// On the first connection only: answer none of its streams, and close it (no GOAWAY,
    /// as a dying server or a cut network would) this long after its first stream arrived.
    pub die_after: Option<Duration>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            max_streams: 20,
            chunks: 3,
            chunk_delay: Duration::from_millis(20),
            refuse_first: 0,
            goaway_after: None,
            die_after: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub connections: u32,
    pub streams: u32,
    /// Streams answered to the end.
    pub completed: u32,
    /// The most streams one connection had open at once.
    pub max_concurrent: u32,
    /// Streams a client opened past the advertised limit.
    pub over_limit: u32,
    pub refused: u32,
    pub goaways: u32,
    /// Streams in flight on a connection that `die_after` closed.
    pub died_with: u32,
}

struct Shared {
    plan: Mutex<Plan>,
    stats: Mutex<Stats>,
}

pub struct H2Upstream {
    pub addr: SocketAddr,
    /// The CA that signed the upstream's certificate, as a PEM file for `ssl_verify`.
    pub ca_file: PathBuf,
    /// A CA, a client certificate from it (cert and key in one PEM file), when the upstream
    /// asks for one.
    pub client_identity: Option<PathBuf>,
    pub dir: PathBuf,
    shared: Arc<Shared>,
}

/// What TLS the upstream offers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Plain,
    /// A client certificate from the upstream's own client CA is required.
    ClientCertRequired,
}

impl H2Upstream {
    pub async fn start(name: &str, plan: Plan) -> H2Upstream {
        Self::start_with(name, plan, Tls::Plain).await
    }

    pub async fn start_with(name: &str, plan: Plan, tls: Tls) -> H2Upstream {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = certs::dir(&format!("h2-{name}"));
        let ca = Ca::new("h2 upstream CA");
        let server = ca.server();
        let ca_file = certs::write(&dir, "ca.pem", &ca.pem());
        let cert_chain = vec![CertificateDer::from(server.der.clone())];
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let (builder, client_identity) = match tls {
            Tls::Plain => (builder.with_no_client_auth(), None),
            Tls::ClientCertRequired => {
                let client_ca = Ca::new("h2 upstream client CA");
                let mut roots = RootCertStore::empty();
                roots
                    .add(CertificateDer::from(client_ca.cert.der().to_vec()))
                    .unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                let client = client_ca.client("spiffe://test/router");
                let both = format!("{}{}", client.cert_pem, client.key_pem);
                let path = certs::write(&dir, "client.pem", &both);
                (builder.with_client_cert_verifier(verifier), Some(path))
            }
        };
        let mut config = builder.with_single_cert(cert_chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            plan: Mutex::new(plan),
            stats: Mutex::new(Stats::default()),
        });
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let s = s.clone();
                tokio::spawn(async move {
                    // A failed handshake (a client that does not trust us) is the test's point.
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let first = {
                            let mut st = s.stats.lock().unwrap();
                            st.connections += 1;
                            st.connections == 1
                        };
                        serve(tls, s, first).await;
                    }
                });
            }
        });
        H2Upstream {
            addr,
            ca_file,
            client_identity,
            dir,
            shared,
        }
    }

    /// The base URL for `api_base`.
    pub fn base(&self) -> String {
        format!("https://localhost:{}/v1", self.addr.port())
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap().clone()
    }

    pub fn set_plan(&self, plan: Plan) {
        *self.shared.plan.lock().unwrap() = plan;
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(0x3, 0, stream, &code.to_be_bytes())
}

/// One connection's bookkeeping.
#[derive(Default)]
struct Conn {
    open: u32,
    received: u32,
    ids: Vec<u32>,
    goaway_last: Option<u32>,
    /// Streams being answered, by id: set to stop when the client resets one.
    answering: HashMap<u32, Arc<std::sync::atomic::AtomicBool>>,
}

/// The connection-level window the client gave us, and a wake-up when it grows.
struct Window {
    left: Mutex<i64>,
    grew: Notify,
}

async fn serve<T: AsyncRead + AsyncWrite + Send + 'static>(io: T, s: Arc<Shared>, first: bool) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let plan = s.plan.lock().unwrap().clone();
    // SETTINGS_MAX_CONCURRENT_STREAMS.
    let mut settings = vec![0, 3];
    settings.extend_from_slice(&plan.max_streams.to_be_bytes());
    let _ = tx.send(frame(0x4, 0, 0, &settings));
    let mut preface = [0u8; 24];
    if rd.read_exact(&mut preface).await.is_err() || preface != PREFACE {
        return;
    }
    let conn = Arc::new(Mutex::new(Conn::default()));
    let window = Arc::new(Window {
        left: Mutex::new(65_535),
        grew: Notify::new(),
    });
    let done = Arc::new(Notify::new());
    // Set when the first stream arrives on a connection that `die_after` will close.
    let mut dies_at: Option<tokio::time::Instant> = None;
    loop {
        let mut head = [0u8; 9];
        let die = async {
            match dies_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            r = rd.read_exact(&mut head) => r,
            _ = done.notified() => break,
            _ = die => {
                let n = conn.lock().unwrap().open;
                s.stats.lock().unwrap().died_with += n;
                // Dropped without a word: the writer's task ends with the connection.
                writer.abort();
                return;
            }
        };
        if read.is_err() {
            break;
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if rd.read_exact(&mut payload).await.is_err() {
            break;
        }
        match kind {
            // SETTINGS: acknowledge the client's.
            0x4 if flags & 1 == 0 => {
                let _ = tx.send(frame(0x4, 1, 0, &[]));
            }
            // PING: answer it.
            0x6 if flags & 1 == 0 => {
                let _ = tx.send(frame(0x6, 1, 0, &payload));
            }
            // WINDOW_UPDATE of the connection.
            0x8 if id == 0 && payload.len() == 4 => {
                let n = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                *window.left.lock().unwrap() += i64::from(n & 0x7fff_ffff);
                window.grew.notify_waiters();
            }
            // HEADERS: a new stream.
            0x1 => {
                let plan = s.plan.lock().unwrap().clone();
                let mut c = conn.lock().unwrap();
                c.received += 1;
                c.ids.push(id);
                let mut st = s.stats.lock().unwrap();
                st.streams += 1;
                if c.goaway_last.is_some_and(|last| id > last) {
                    continue;
                }
                if st.refused < plan.refuse_first {
                    st.refused += 1;
                    let _ = tx.send(rst(id, 0x7));
                    continue;
                }
                if c.open >= plan.max_streams {
                    st.over_limit += 1;
                    let _ = tx.send(rst(id, 0x7));
                    continue;
                }
                c.open += 1;
                st.max_concurrent = st.max_concurrent.max(c.open);
                drop(st);
                if first && let Some(after) = plan.die_after {
                    // Held unanswered until the connection dies.
                    dies_at.get_or_insert_with(|| tokio::time::Instant::now() + after);
                    continue;
                }
                if first
                    && c.goaway_last.is_none()
                    && plan.goaway_after.is_some_and(|n| c.received >= n)
                {
                    let half = (c.ids.len() / 2).max(1);
                    let last = c.ids[half - 1];
                    c.goaway_last = Some(last);
                    s.stats.lock().unwrap().goaways += 1;
                    let mut p = last.to_be_bytes().to_vec();
                    p.extend_from_slice(&0u32.to_be_bytes());
                    let _ = tx.send(frame(0x7, 0, 0, &p));
                    // Streams above `last` are dropped unanswered.
                    let above: Vec<u32> = c.ids.iter().copied().filter(|&i| i > last).collect();
                    for i in above {
                        if c.answering.remove(&i).is_some() {
                            c.open -= 1;
                        }
                    }
                    if id > last {
                        c.open -= 1;
                        continue;
                    }
                }
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                c.answering.insert(id, stop.clone());
                drop(c);
                // The request body follows (our client always sends one); answered once it
                // ends, or at once if the headers ended the stream.
                if flags & 1 == 1 {
                    answer(
                        id,
                        plan,
                        stop,
                        tx.clone(),
                        conn.clone(),
                        window.clone(),
                        s.clone(),
                        done.clone(),
                    );
                }
            }
            // DATA: the request body; the window it took is given back.
            0x0 => {
                if len > 0 {
                    let n = (len as u32).to_be_bytes();
                    let _ = tx.send(frame(0x8, 0, 0, &n));
                    let _ = tx.send(frame(0x8, 0, id, &n));
                }
                if flags & 1 == 1 {
                    let plan = s.plan.lock().unwrap().clone();
                    let stop = conn.lock().unwrap().answering.get(&id).cloned();
                    if let Some(stop) = stop {
                        answer(
                            id,
                            plan,
                            stop,
                            tx.clone(),
                            conn.clone(),
                            window.clone(),
                            s.clone(),
                            done.clone(),
                        );
                    }
                }
            }
            // RST_STREAM: the client gave up on a stream.
            0x3 => {
                let mut c = conn.lock().unwrap();
                if let Some(stop) = c.answering.remove(&id) {
                    stop.store(true, std::sync::atomic::Ordering::Release);
                    c.open = c.open.saturating_sub(1);
                }
            }
            // GOAWAY from the client: it is done with the connection.
            0x7 => break,
            _ => {}
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[allow(clippy::too_many_arguments)]
fn answer(
    id: u32,
    plan: Plan,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    conn: Arc<Mutex<Conn>>,
    window: Arc<Window>,
    s: Arc<Shared>,
    done: Arc<Notify>,
) {
    tokio::spawn(async move {
        let stopped = || stop.load(std::sync::atomic::Ordering::Acquire);
        // :status 200 (static index 8); content-type (static name 31) text/event-stream.
        let mut block = vec![0x88, 0x0f, 0x10, 17];
        block.extend_from_slice(b"text/event-stream");
        let _ = tx.send(frame(0x1, 0x4, id, &block));
        let mut events: Vec<String> = (0..plan.chunks)
            .map(|i| {
                let chunk = serde_json::json!({"id": "h2-1", "object": "chat.completion.chunk", "model": "up",
                    "choices": [{"index": 0, "delta": {"content": format!("w{i} ")}, "finish_reason": null}]});
                format!("data: {chunk}\n\n")
            })
            .collect();
        let end = serde_json::json!({"id": "h2-1", "object": "chat.completion.chunk", "model": "up",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        events.push(format!("data: {end}\n\ndata: [DONE]\n\n"));
        let last = events.len() - 1;
        for (i, event) in events.into_iter().enumerate() {
            // The first chunk at once, then one every `chunk_delay`.
            if i > 0 {
                tokio::time::sleep(plan.chunk_delay).await;
            }
            if stopped() {
                return;
            }
            let need = event.len() as i64;
            loop {
                let grew = window.grew.notified();
                {
                    let mut left = window.left.lock().unwrap();
                    if *left >= need {
                        *left -= need;
                        break;
                    }
                }
                grew.await;
            }
            let flags = if i == last { 0x1 } else { 0 };
            let _ = tx.send(frame(0x0, flags, id, event.as_bytes()));
        }
        let mut c = conn.lock().unwrap();
        if c.answering.remove(&id).is_some() {
            c.open = c.open.saturating_sub(1);
        }
        s.stats.lock().unwrap().completed += 1;
        // After a GOAWAY, the connection closes once the streams it kept are answered.
        if c.goaway_last.is_some() && c.answering.is_empty() {
            done.notify_one();
        }
    });
}
