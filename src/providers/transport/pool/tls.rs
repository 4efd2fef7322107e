//! TLS toward providers: one rustls client config per distinct set of settings (roots, the
//! verification switch, a client certificate), offering `h2` and `http/1.1` by ALPN.

use std::sync::{Arc, Mutex, OnceLock};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

use crate::config::upstream::{TlsVerify, UpstreamTls};

/// A TLS setting as connections use it. Requests with equal settings get the same profile
/// (the same `id`), and so share an origin's connections. Its rustls config is built when
/// first needed ([`TlsProfile::prepare`] builds it ahead): reading the system's roots costs a
/// few milliseconds that a config reaching providers only over plaintext never pays.
#[derive(Clone)]
pub struct TlsProfile {
    pub(super) id: usize,
    inner: Arc<Lazy>,
}

struct Lazy {
    tls: Arc<UpstreamTls>,
    config: OnceLock<Arc<ClientConfig>>,
    system_roots: Arc<OnceLock<Arc<RootCertStore>>>,
}

impl TlsProfile {
    /// The rustls config, built on first use.
    pub(super) fn config(&self) -> Arc<ClientConfig> {
        let l = &self.inner;
        l.config
            .get_or_init(|| Arc::new(build(&l.tls, &l.system_roots)))
            .clone()
    }

    /// Builds the config now, off any request's path.
    pub fn prepare(&self) {
        let _ = self.config();
    }
}

impl std::fmt::Debug for TlsProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsProfile({})", self.id)
    }
}

/// The profiles built so far, by their settings. A handful per config, kept for the client's
/// life so that a reload with the same settings keeps its connections.
#[derive(Default)]
pub(super) struct Profiles {
    built: Mutex<Vec<(Arc<UpstreamTls>, TlsProfile)>>,
    system_roots: Arc<OnceLock<Arc<RootCertStore>>>,
}

impl Profiles {
    pub(super) fn get(&self, tls: &Arc<UpstreamTls>) -> TlsProfile {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, p)) = built.iter().find(|(t, _)| **t == **tls) {
            return p.clone();
        }
        let profile = TlsProfile {
            id: built.len(),
            inner: Arc::new(Lazy {
                tls: tls.clone(),
                config: OnceLock::new(),
                system_roots: self.system_roots.clone(),
            }),
        };
        built.push((tls.clone(), profile.clone()));
        profile
    }
}

fn build(tls: &UpstreamTls, system_roots: &OnceLock<Arc<RootCertStore>>) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match &tls.verify {
        TlsVerify::System => {
            builder.with_root_certificates(system_roots.get_or_init(load_system_roots).clone())
        }
        TlsVerify::Bundle { certs, .. } => {
            let mut roots = RootCertStore::empty();
            // Checked when the config loaded; one that is not a CA is left out.
            roots.add_parsable_certificates(certs.iter().cloned());
            builder.with_root_certificates(roots)
        }
        TlsVerify::Off => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerifier(provider))),
    };
    let mut config = match &tls.identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain.clone(), id.key.0.clone_key())
                .unwrap_or_else(|e| {
                    // The config's validation built this same pair; it cannot fail here.
                    tracing::error!(error = %e, "the client certificate is not usable; connecting without it");
                    build(
                        &UpstreamTls {
                            verify: tls.verify.clone(),
                            identity: None,
                        },
                        system_roots,
                    )
                }),
            None => builder.with_no_client_auth(),
        };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// The system's roots (or `SSL_CERT_FILE`'s, or `SSL_CERT_DIR`'s), read once per client.
fn load_system_roots() -> Arc<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "cannot read some of the system's root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(found.certs);
    if bad > 0 {
        tracing::debug!(
            bad,
            "system root certificates that do not parse were left out"
        );
    }
    if roots.is_empty() {
        tracing::warn!(
            "no system root certificates were found: TLS connections to providers will fail unless ssl_verify names a CA bundle (or SSL_CERT_FILE is set)"
        );
    }
    Arc::new(roots)
}

/// `ssl_verify: false`: any certificate is accepted. Signatures are still checked, so the
/// handshake is a real one with whoever answered.
#[derive(Debug)]
struct NoVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
