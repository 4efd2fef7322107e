//! The benchmark's TLS upstreams, as providers are reached: a front on a port of its own that
//! terminates TLS with a certificate made at start (its CA written to a file, for
//! `ssl_verify`), before the benchmark's fake upstream. `H2` speaks HTTP/2 only and advertises a
//! stream limit per connection, as providers and their CDNs do; each of its streams is served
//! as one HTTP/1.1 exchange with the fake upstream over an in-memory pipe. `H1` speaks HTTP/1.1
//! only, the decrypted connection served by the fake upstream directly.
//!
//! No socket is opened behind the front: at 10,000 held streams the benchmark's process would
//! otherwise hold two descriptors per stream on top of its clients', past what the machine's
//! limit allows. The front runs in the benchmark's process, beside the upstream and the load
//! generator, so its work is not in the measured processes' CPU; every path (direct,
//! llm-router, baseline) goes through it alike.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::net::TcpListener;

use crate::Upstream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/2 over TLS, at most this many streams per connection.
    H2 { max_streams: u32 },
    /// HTTP/1.1 over TLS.
    H1,
}

pub struct Front {
    pub addr: SocketAddr,
    /// The CA that signed the front's certificate, as a PEM file.
    pub ca_file: PathBuf,
    pub kind: Kind,
}

impl Front {
    pub fn base(&self) -> String {
        format!("https://localhost:{}/v1", self.addr.port())
    }

    pub fn describe(&self) -> String {
        match self.kind {
            Kind::H2 { max_streams } => {
                format!("TLS 1.3, HTTP/2 only, SETTINGS_MAX_CONCURRENT_STREAMS {max_streams}")
            }
            Kind::H1 => "TLS 1.3, HTTP/1.1 only".to_string(),
        }
    }

    /// Starts the front before `upstream`.
    pub async fn start(kind: Kind, upstream: &Upstream) -> Front {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bench upstream CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let ca_file =
            std::env::temp_dir().join(format!("llm-router-bench-ca-{}.pem", std::process::id()));
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = match kind {
            Kind::H2 { .. } => vec![b"h2".to_vec()],
            Kind::H1 => vec![b"http/1.1".to_vec()],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    match kind {
                        Kind::H1 => upstream.serve_io(tls),
                        Kind::H2 { max_streams } => {
                            let service = hyper::service::service_fn(move |req| {
                                forward(req, upstream.clone())
                            });
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .max_concurrent_streams(max_streams)
                                .serve_connection(TokioIo::new(tls), service)
                                .await;
                        }
                    }
                });
            }
        });
        Front {
            addr,
            ca_file,
            kind,
        }
    }
}

/// One HTTP/2 stream as one HTTP/1.1 exchange with the upstream over an in-memory pipe, the
/// answer's body streamed back as it comes.
async fn forward(
    req: hyper::Request<hyper::body::Incoming>,
    upstream: Upstream,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error> {
    let (ours, theirs) = tokio::io::duplex(16 * 1024);
    upstream.serve_io(theirs);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(ours)).await?;
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    // HTTP/1.1 needs the authority as a header; HTTP/2 carried it as a pseudo-header.
    parts.version = hyper::Version::HTTP_11;
    if let Some(path) = parts.uri.path_and_query() {
        parts.uri = path.as_str().parse().expect("a path that parsed already");
    }
    parts.headers.insert(
        hyper::header::HOST,
        hyper::header::HeaderValue::from_static("localhost"),
    );
    send.send_request(hyper::Request::from_parts(parts, body))
        .await
}
