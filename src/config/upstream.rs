//! How llm-router reaches providers: the connection pool's bounds (`router_settings.pool_*`,
//! llm-router's own keys) and TLS toward each deployment's provider (LiteLLM's `ssl_verify` and
//! `ssl_certificate`, in `litellm_settings` for every deployment or in a deployment's
//! `litellm_params` for it alone).

use std::{fmt, time::Duration};

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The pool of connections to providers, per origin (scheme, host, port and TLS settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// HTTP/1.1 connections per origin (`pool_max_connections`): each carries one request at
    /// a time, so this bounds the calls in flight to a plaintext or HTTP/1.1-only provider.
    /// Default 4096, the server's default `max_concurrent_calls`.
    pub max_connections: u32,
    /// HTTP/2 connections per origin (`pool_max_http2_connections`), each carrying up to the
    /// streams the provider allows one connection (its SETTINGS_MAX_CONCURRENT_STREAMS).
    /// Default 256: 25,600 streams to a provider allowing 100 per connection.
    pub max_http2_connections: u32,
    /// How long a connection with nothing in flight is kept for reuse (`pool_idle_timeout`).
    /// Default 90s.
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 4096,
            max_http2_connections: 256,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// TLS toward one deployment's provider. Equal settings share connections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    pub verify: TlsVerify,
    /// The certificate presented when the provider asks for one (mTLS).
    pub identity: Option<ClientIdentity>,
}

impl UpstreamTls {
    /// What check-config shows, when it is not the default.
    pub fn describe(&self) -> Option<String> {
        let verify = match &self.verify {
            TlsVerify::System => None,
            TlsVerify::Bundle { path, .. } => Some(format!("CA bundle {path}")),
            TlsVerify::Off => Some("certificate NOT verified".to_string()),
        };
        let identity = self
            .identity
            .as_ref()
            .map(|i| format!("client certificate {}", i.path));
        match (verify, identity) {
            (None, None) => None,
            (Some(v), None) => Some(v),
            (None, Some(i)) => Some(i),
            (Some(v), Some(i)) => Some(format!("{v}, {i}")),
        }
    }
}

/// How the provider's certificate is checked (`ssl_verify`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsVerify {
    /// Against the system's roots, or the PEM file `SSL_CERT_FILE` names (`ssl_verify: true`,
    /// the default).
    #[default]
    System,
    /// Against this PEM bundle only (`ssl_verify: <path>`), read when the config loads.
    Bundle {
        path: String,
        certs: Vec<CertificateDer<'static>>,
    },
    /// Not at all (`ssl_verify: false`): warned at start.
    Off,
}

/// A client certificate chain and its key (`ssl_certificate`, and `ssl_certificate_key` when
/// the key is in a file of its own), read when the config loads.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate file, as configured: what check-config shows.
    pub path: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: KeyBytes,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("path", &self.path)
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// A private key: never shown, compared by its bytes.
#[derive(Clone)]
pub struct KeyBytes(pub std::sync::Arc<PrivateKeyDer<'static>>);

impl PartialEq for KeyBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.secret_der() == other.0.secret_der()
    }
}

impl Eq for KeyBytes {}
