//! How providers are reached: the pool's bounds (`router_settings.pool_*`) and TLS toward
//! providers (`ssl_verify`, `ssl_certificate`, `ssl_certificate_key`), globally in
//! `litellm_settings` and per deployment in `litellm_params`. Certificate files are read and
//! parsed here, so that a bad one is an error naming its key, not a failed connection later.

use std::{sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::Errors;
use crate::config::raw::{RawConfig, RawSslVerify};
use crate::config::upstream::{ClientIdentity, KeyBytes, PoolSettings, TlsVerify, UpstreamTls};

const MAX_CONNECTIONS_RANGE: (u32, u32) = (1, 100_000);
const MAX_HTTP2_CONNECTIONS_RANGE: (u32, u32) = (1, 1024);
const IDLE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));

pub(super) fn pool_settings(raw: &RawConfig, errs: &mut Errors) -> PoolSettings {
    let rs = &raw.router_settings;
    let d = PoolSettings::default();
    let count =
        |key: &str, v: Option<u32>, (lo, hi): (u32, u32), default, errs: &mut Errors| match v {
            None => default,
            Some(n) if (lo..=hi).contains(&n) => n,
            Some(_) => {
                errs.add(
                    format!("router_settings.{key}"),
                    format!("must be from {lo} to {hi}"),
                );
                default
            }
        };
    let idle_timeout = match rs.pool_idle_timeout {
        None => d.idle_timeout,
        Some(t) if (IDLE_TIMEOUT_RANGE.0..=IDLE_TIMEOUT_RANGE.1).contains(&t) => t,
        Some(_) => {
            errs.add("router_settings.pool_idle_timeout", "must be from 1s to 1h");
            d.idle_timeout
        }
    };
    PoolSettings {
        max_connections: count(
            "pool_max_connections",
            rs.pool_max_connections,
            MAX_CONNECTIONS_RANGE,
            d.max_connections,
            errs,
        ),
        max_http2_connections: count(
            "pool_max_http2_connections",
            rs.pool_max_http2_connections,
            MAX_HTTP2_CONNECTIONS_RANGE,
            d.max_http2_connections,
            errs,
        ),
        idle_timeout,
    }
}

/// The TLS settings one place of the config gives (`litellm_settings` or a deployment's
/// `litellm_params`), each key still unset where it says nothing.
pub(super) struct TlsKeys<'a> {
    /// `litellm_settings` or `model_list[i].litellm_params`.
    pub prefix: String,
    pub verify: Option<&'a RawSslVerify>,
    pub certificate: Option<&'a str>,
    pub certificate_key: Option<&'a str>,
}

/// The TLS settings of `keys`, over `base` where they say nothing. `base` itself is returned
/// (shared) when they say nothing at all.
pub(super) fn tls(
    keys: TlsKeys<'_>,
    base: &Arc<UpstreamTls>,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> Arc<UpstreamTls> {
    if keys.verify.is_none() && keys.certificate.is_none() && keys.certificate_key.is_none() {
        return base.clone();
    }
    let key = |k: &str| format!("{}.{k}", keys.prefix);
    let path = |value: &str, k: &str, errs: &mut Errors| {
        super::resolve_secret(value.trim(), &key(k), lookup_env, errs)
            .map(|s| s.expose().to_string())
            .filter(|p| {
                let empty = p.is_empty();
                if empty {
                    errs.add(key(k), "must not be empty");
                }
                !empty
            })
    };
    let verify = match keys.verify {
        None => base.verify.clone(),
        Some(RawSslVerify::Switch(true)) => TlsVerify::System,
        Some(RawSslVerify::Switch(false)) => TlsVerify::Off,
        Some(RawSslVerify::Text(t)) if t.trim().eq_ignore_ascii_case("true") => TlsVerify::System,
        Some(RawSslVerify::Text(t)) if t.trim().eq_ignore_ascii_case("false") => TlsVerify::Off,
        Some(RawSslVerify::Text(t)) => match path(t, "ssl_verify", errs) {
            None => TlsVerify::System,
            Some(p) => match bundle(&p) {
                Ok(certs) => TlsVerify::Bundle { path: p, certs },
                Err(e) => {
                    errs.add(key("ssl_verify"), e);
                    TlsVerify::System
                }
            },
        },
    };
    if verify == TlsVerify::Off {
        errs.warn(format!(
            "{}: ssl_verify is false: providers' certificates are not checked, so anyone on the path can read and change the calls (and their keys)",
            keys.prefix
        ));
    }
    let identity = match (keys.certificate, keys.certificate_key) {
        (None, None) => base.identity.clone(),
        (None, Some(_)) => {
            errs.add(key("ssl_certificate_key"), "needs ssl_certificate");
            None
        }
        (Some(cert), key_file) => {
            let cert = path(cert, "ssl_certificate", errs);
            let key_path = key_file.and_then(|k| path(k, "ssl_certificate_key", errs));
            cert.and_then(|c| match identity(&c, key_path.as_deref()) {
                Ok(id) => Some(id),
                Err((k, e)) => {
                    errs.add(key(k), e);
                    None
                }
            })
        }
    };
    Arc::new(UpstreamTls { verify, identity })
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))
}

/// The certificates of a PEM CA bundle.
fn bundle(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{path}` is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "`{path}` holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)"
        ));
    }
    Ok(certs)
}

/// A client certificate chain from `cert`, and its key from `key` or else from `cert` too (as
/// LiteLLM reads one file holding both). The error names the key it is about.
fn identity(cert: &str, key: Option<&str>) -> Result<ClientIdentity, (&'static str, String)> {
    let chain = bundle(cert).map_err(|e| ("ssl_certificate", e))?;
    let (key_name, key_path) = match key {
        Some(k) => ("ssl_certificate_key", k),
        None => ("ssl_certificate", cert),
    };
    let pem = read(key_path).map_err(|e| (key_name, e))?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        let hint = if key.is_none() {
            "; put the key in the same file or give its file as ssl_certificate_key"
        } else {
            ""
        };
        (
            key_name,
            format!("`{key_path}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1){hint}"),
        )
    })?;
    // The pair is checked now, so that a key of another certificate is this error rather
    // than a handshake every provider refuses.
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| (key_name, e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain.clone(), private.clone_key())
        .map_err(|e| {
            (
                key_name,
                format!("`{key_path}` does not go with the certificate: {e}"),
            )
        })?;
    Ok(ClientIdentity {
        path: cert.to_string(),
        chain,
        key: KeyBytes(Arc::new(private)),
    })
}
