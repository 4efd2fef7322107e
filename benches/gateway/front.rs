//! The benchmark's TLS upstreams, as providers are reached: a front on a port of its own that
//! terminates TLS with a certificate made at start (its CA written to a file, for
//! `ssl_verify`), in front of the plaintext upstream. `H2` speaks HTTP/2 only and advertises a
//! stream limit per connection, as providers and their CDNs do; each of its streams is one
//! request to the plaintext upstream. `H1` speaks HTTP/1.1 only, one upstream connection per
//! client connection, byte for byte.
//!
//! The front runs in the benchmark's process, beside the upstream and the load generator, so
//! its work is not in the measured processes' CPU; every path (direct, llm-router, baseline)
//! goes through it alike.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::net::{TcpListener, TcpStream};

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

    /// Starts the front before `upstream` (a plaintext `http://host:port/v1` base).
    pub async fn start(kind: Kind, upstream: &str) -> Front {
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
        let target: SocketAddr = upstream
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .build()
            .unwrap();
        let upstream = upstream.trim_end_matches("/v1").to_string();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, http, upstream) = (acceptor.clone(), http.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    match kind {
                        Kind::H1 => {
                            let Ok(mut plain) = TcpStream::connect(target).await else {
                                return;
                            };
                            let _ = plain.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                        Kind::H2 { max_streams } => {
                            let service = hyper::service::service_fn(move |req| {
                                forward(req, http.clone(), upstream.clone())
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

type Body = BoxBody<Bytes, std::io::Error>;

/// One HTTP/2 stream as one request to the plaintext upstream, its answer streamed back.
async fn forward(
    req: hyper::Request<hyper::body::Incoming>,
    http: reqwest::Client,
    upstream: String,
) -> Result<hyper::Response<Body>, std::io::Error> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let resp = http
        .post(format!("{upstream}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(std::io::Error::other)?;
    let mut out = hyper::Response::builder().status(resp.status().as_u16());
    if let Some(ct) = resp.headers().get("content-type") {
        out = out.header("content-type", ct.as_bytes());
    }
    let stream = resp
        .bytes_stream()
        .map(|r| r.map(Frame::data).map_err(std::io::Error::other));
    Ok(out.body(BodyExt::boxed(StreamBody::new(stream))).unwrap())
}
