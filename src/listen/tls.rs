//! TLS on the gRPC port (`server.tls`), with rustls: the certificate, key and client CAs read
//! from files, read again when they change, and each connection's client certificate turned
//! into the identity it proves.
//!
//! Rotation: cert-manager rewrites the files in place and Kubernetes swaps a `..data` symlink
//! under a mounted Secret; either way the bytes at the configured paths change. [`Rotating`]
//! reads them every watch interval and, when they differ, builds a new rustls config that new
//! connections use. Connections already open keep theirs, so no call is dropped. A new set
//! that does not load (a half-written file, a key that does not match) is logged and the one
//! serving stays.

use std::{
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

/// `server.tls`: where the gRPC port's certificate, key and client CAs are. The files are
/// read again when they change (a rotation), without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    /// CAs whose client certificates are accepted (mTLS); none: no client certificates.
    pub client_ca_file: Option<std::path::PathBuf>,
    /// With a client CA: whether a client without a certificate is refused (`client_auth:
    /// required`, the default) or let in to authenticate otherwise (`optional`).
    pub client_auth_required: bool,
    /// `admin: true`: the admin port serves HTTPS with the same certificate (never asking for
    /// a client certificate: probes and scrapers have none). Default false: plaintext.
    pub admin: bool,
}

/// Why a TLS file set did not load: the config key of the file at fault and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub key: &'static str,
    pub message: String,
}

/// One loaded set of files: what connections are accepted with.
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// The admin port's: the same certificate, HTTP/1.1, no client certificates.
    pub admin: Arc<ServerConfig>,
    /// The files' bytes, to see when they change.
    seen: Vec<Vec<u8>>,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|e| LoadError {
        key,
        message: format!("cannot read {}: {e}", path.display()),
    })
}

/// The bytes of every configured file, in a fixed order.
fn read_all(s: &TlsSettings) -> Result<Vec<Vec<u8>>, LoadError> {
    let mut out = vec![
        read("server.tls.cert_file", &s.cert_file)?,
        read("server.tls.key_file", &s.key_file)?,
    ];
    if let Some(ca) = &s.client_ca_file {
        out.push(read("server.tls.client_ca_file", ca)?);
    }
    Ok(out)
}

impl ServerTls {
    /// Reads and checks the files `s` names.
    pub fn load(s: &TlsSettings) -> Result<ServerTls, LoadError> {
        let seen = read_all(s)?;
        let (config, admin) = build(s, &seen)?;
        Ok(ServerTls {
            config,
            admin,
            seen,
        })
    }
}

type Configs = (Arc<ServerConfig>, Arc<ServerConfig>);

fn build(s: &TlsSettings, files: &[Vec<u8>]) -> Result<Configs, LoadError> {
    let err = |key: &'static str, message: String| LoadError { key, message };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files[0])
        .collect::<Result<_, _>>()
        .map_err(|e| {
            err(
                "server.tls.cert_file",
                format!("is not PEM certificates: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(err(
            "server.tls.cert_file",
            "holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&files[1]).map_err(|e| {
        err(
            "server.tls.key_file",
            format!("holds no private key in PEM (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err("server.tls", e.to_string()))
    };
    let mismatch = |e: rustls::Error| {
        err(
            "server.tls.key_file",
            format!("does not go with server.tls.cert_file: {e}"),
        )
    };
    let mut admin = builder()?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(mismatch)?;
    admin.alpn_protocols = vec![b"http/1.1".to_vec()];
    let builder = builder()?;
    let builder = match &s.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(_) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(&files[2]) {
                let ca = ca.map_err(|e| {
                    err(
                        "server.tls.client_ca_file",
                        format!("is not PEM certificates: {e}"),
                    )
                })?;
                roots.add(ca).map_err(|e| {
                    err(
                        "server.tls.client_ca_file",
                        format!("holds a certificate that is not a CA: {e}"),
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(err(
                    "server.tls.client_ca_file",
                    "holds no certificate".into(),
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if s.client_auth_required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| err("server.tls.client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(mismatch)?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), Arc::new(admin)))
}

/// The TLS config new connections are accepted with, replaced when the files change.
pub struct Rotating {
    settings: TlsSettings,
    current: RwLock<ServerTls>,
}

impl Rotating {
    pub fn new(settings: TlsSettings, first: ServerTls) -> Self {
        Rotating {
            settings,
            current: RwLock::new(first),
        }
    }

    /// The config for the next connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .config
            .clone()
    }

    /// The config for the admin port's next connection.
    pub fn admin_config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .admin
            .clone()
    }

    /// Reads the files once; when they changed and load, new connections use them. Returns
    /// whether a new set took over.
    pub fn refresh(&self) -> bool {
        let files = match read_all(&self.settings) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(key = e.key, error = %e.message, "TLS files unreadable; keeping the certificate in use");
                return false;
            }
        };
        if self.current.read().unwrap_or_else(|e| e.into_inner()).seen == files {
            return false;
        }
        match build(&self.settings, &files) {
            Ok((config, admin)) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = ServerTls {
                    config,
                    admin,
                    seen: files,
                };
                tracing::info!("TLS files changed: new connections use the new certificate");
                true
            }
            Err(e) => {
                // Not remembered as seen: the next read tries again, since a rotation may be
                // half-way through writing the files.
                tracing::warn!(key = e.key, error = %e.message, "new TLS files do not load; keeping the certificate in use");
                false
            }
        }
    }

    /// Re-reads the files every `interval`, forever.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let this = self.clone();
            // File reads block; they stay off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || this.refresh()).await;
        }
    }
}

/// The identity a client certificate proves: its first SPIFFE URI SAN, else its first DNS
/// SAN. `None` when it has neither (or is not the DER rustls verified, which cannot happen).
pub fn certificate_identity(cert: &[u8]) -> Option<String> {
    let names = subject_alt_names(cert)?;
    let mut dns = None;
    for (tag, value) in names {
        let Ok(text) = std::str::from_utf8(value) else {
            continue;
        };
        match tag {
            URI if text.starts_with("spiffe://") => return Some(text.to_string()),
            DNS if dns.is_none() => dns = Some(text.to_string()),
            _ => {}
        }
    }
    dns
}

/// GeneralName tags: dNSName [2] and uniformResourceIdentifier [6], both IA5String.
const DNS: u8 = 0x82;
const URI: u8 = 0x86;
/// 2.5.29.17, subjectAltName.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// One DER element: its tag, its contents, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*input.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    (end <= input.len()).then(|| (tag, &input[header..end], &input[end..]))
}

/// The names in a certificate's subjectAltName extension, as (tag, bytes).
fn subject_alt_names(cert: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    const SEQUENCE: u8 = 0x30;
    const EXTENSIONS: u8 = 0xa3;
    let (SEQUENCE, certificate, _) = tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = tlv(certificate)? else {
        return None;
    };
    while !tbs.is_empty() {
        let (tag, value, rest) = tlv(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let (SEQUENCE, mut extensions, _) = tlv(value)? else {
            return None;
        };
        while !extensions.is_empty() {
            let (_, extension, rest) = tlv(extensions)?;
            extensions = rest;
            let (0x06, oid, mut fields) = tlv(extension)? else {
                continue;
            };
            if oid != SAN_OID {
                continue;
            }
            // An optional `critical` BOOLEAN, then the OCTET STRING that wraps the names.
            let (mut tag, mut octets, rest) = tlv(fields)?;
            if tag == 0x01 {
                fields = rest;
                (tag, octets, _) = tlv(fields)?;
            }
            if tag != 0x04 {
                return None;
            }
            let (SEQUENCE, mut names, _) = tlv(octets)? else {
                return None;
            };
            let mut out = Vec::new();
            while !names.is_empty() {
                let (tag, value, rest) = tlv(names)?;
                out.push((tag, value));
                names = rest;
            }
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn spiffe_uri_wins_then_the_first_dns_name() {
        use rcgen::SanType::{DnsName, URI as Uri};
        let spiffe = "spiffe://cluster.local/ns/search/sa/ranker";
        let der = cert_with(vec![
            DnsName("ranker.search.svc".try_into().unwrap()),
            Uri("https://example.com/x".try_into().unwrap()),
            Uri(spiffe.try_into().unwrap()),
        ]);
        assert_eq!(certificate_identity(&der).as_deref(), Some(spiffe));
        let der = cert_with(vec![
            DnsName("a.example".try_into().unwrap()),
            DnsName("b.example".try_into().unwrap()),
        ]);
        assert_eq!(certificate_identity(&der).as_deref(), Some("a.example"));
        assert_eq!(certificate_identity(&cert_with(vec![])), None);
    }

    #[test]
    fn malformed_der_is_no_identity_and_no_panic() {
        let der = cert_with(vec![rcgen::SanType::DnsName(
            "a.example".try_into().unwrap(),
        )]);
        for cut in 0..der.len() {
            let _ = certificate_identity(&der[..cut]);
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = certificate_identity(&flipped);
            flipped[i] ^= 0xff;
        }
        assert_eq!(
            certificate_identity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::DnsName("localhost".try_into().unwrap())];
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_kubernetes_secret_swap_is_picked_up_and_a_broken_one_is_not() {
        use std::os::unix::fs::symlink;
        // A mounted Secret: the files are symlinks into `..data`, itself a symlink to a
        // timestamped folder, which the kubelet swaps with a rename.
        let dir = std::env::temp_dir().join(format!("llm-router-tls-swap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let write = |version: &str, (cert, key): &(String, String)| {
            let d = dir.join(version);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("tls.crt"), cert).unwrap();
            std::fs::write(d.join("tls.key"), key).unwrap();
        };
        let swap = |version: &str| {
            let tmp = dir.join("..data_tmp");
            let _ = std::fs::remove_file(&tmp);
            symlink(version, &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("..data")).unwrap();
        };
        let first = pair();
        write("..2026_12_03_1", &first);
        swap("..2026_12_03_1");
        symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        symlink("..data/tls.key", dir.join("tls.key")).unwrap();
        let settings = TlsSettings {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
            client_ca_file: None,
            client_auth_required: true,
            admin: false,
        };
        let rotating = Rotating::new(settings.clone(), ServerTls::load(&settings).unwrap());
        let before = rotating.config();
        assert!(!rotating.refresh(), "nothing changed");

        // A new Secret whose key does not match its certificate: kept out.
        let (cert, _) = pair();
        let (_, other_key) = pair();
        write("..2026_12_03_2", &(cert, other_key));
        swap("..2026_12_03_2");
        assert!(!rotating.refresh());
        assert!(Arc::ptr_eq(&before, &rotating.config()));

        let second = pair();
        write("..2026_12_03_3", &second);
        swap("..2026_12_03_3");
        assert!(rotating.refresh(), "the swapped Secret is picked up");
        assert!(!Arc::ptr_eq(&before, &rotating.config()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
