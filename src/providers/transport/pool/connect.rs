//! Opening a connection to an origin: the name, TCP (no Nagle), a tunnel through the proxy the
//! environment names (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, minus `NO_PROXY`), then TLS for
//! `https` with ALPN. Errors say which step failed, never the URL or a credential.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
};

use base64::Engine as _;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use super::{SendError, tls::TlsProfile};

/// Where connections go: requests to the same key share them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct OriginKey {
    pub(super) https: bool,
    /// Without brackets for IPv6.
    pub(super) host: String,
    pub(super) port: u16,
    /// The TLS profile's id: different TLS settings never share a connection.
    pub(super) tls: usize,
}

impl OriginKey {
    pub(super) fn of(url: &url::Url, tls: &TlsProfile) -> Result<OriginKey, SendError> {
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(SendError::Connect("the provider URL is not http(s)".into())),
        };
        let host = url
            .host_str()
            .ok_or_else(|| SendError::Connect("the provider URL has no host".into()))?;
        Ok(OriginKey {
            https,
            host: host.trim_matches(['[', ']']).to_string(),
            port: url
                .port_or_known_default()
                .unwrap_or(if https { 443 } else { 80 }),
            tls: if https { tls.id } else { 0 },
        })
    }

    /// `host:port`, for log lines (never a path, a query or a credential).
    pub(super) fn shown(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An open connection, before any HTTP.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the peer chose HTTP/2 by ALPN.
    pub(super) fn is_h2(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

/// Opens a connection to `key`'s origin; the caller bounds the time it takes.
pub(super) async fn open(
    key: &OriginKey,
    tls: &TlsProfile,
    proxy: Option<&Proxy>,
) -> Result<Stream, SendError> {
    let tcp = match proxy {
        None => tcp(&key.host, key.port).await?,
        Some(p) => p.tunnel(&key.host, key.port).await?,
    };
    let _ = tcp.set_nodelay(true);
    if !key.https {
        return Ok(Stream::Plain(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(key.host.clone()).map_err(|_| {
        SendError::Connect("the provider's host is not a valid TLS server name".into())
    })?;
    let tls = tokio_rustls::TlsConnector::from(tls.config())
        .connect(name, tcp)
        .await
        .map_err(|e| SendError::Connect(tls_error(&e)))?;
    Ok(Stream::Tls(Box::new(tls)))
}

async fn tcp(host: &str, port: u16) -> Result<TcpStream, SendError> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| SendError::Connect(format!("cannot resolve the provider's host: {e}")))?
            .collect(),
    };
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(SendError::Connect(match last {
        Some(e) => format!("TCP connect failed: {e}"),
        None => "the provider's host resolved to no address".into(),
    }))
}

/// A handshake error in words that say what to check.
fn tls_error(e: &io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => format!(
            "TLS: the provider's certificate is not accepted ({c:?}); ssl_verify names the CA bundle to trust"
        ),
        Some(rustls::Error::AlertReceived(a)) => format!(
            "TLS: the provider refused the handshake ({a:?}); if it asks for a client certificate, set ssl_certificate"
        ),
        Some(other) => format!("TLS handshake failed: {other}"),
        None => format!("TLS handshake failed: {e}"),
    }
}

/// The proxies the environment names, read once when the client is built.
#[derive(Default)]
pub(super) struct Proxies {
    https: Option<Proxy>,
    http: Option<Proxy>,
    no_proxy: Vec<NoProxy>,
}

/// An HTTP proxy reached in plaintext, with its basic credentials if its URL has them.
#[derive(Clone)]
pub(super) struct Proxy {
    host: String,
    port: u16,
    /// `Proxy-Authorization`'s value: a secret, never shown.
    auth: Option<String>,
}

impl Proxies {
    pub(super) fn from_env() -> Proxies {
        Self::from_lookup(&|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    fn from_lookup(env: &dyn Fn(&str) -> Option<String>) -> Proxies {
        let var = |upper: &str| env(upper).or_else(|| env(&upper.to_ascii_lowercase()));
        let all = var("ALL_PROXY");
        let read = |name: &str, value: Option<String>| {
            let value = value?;
            let p = Proxy::parse(&value);
            if p.is_none() {
                // Not echoed: the value may hold a password.
                tracing::warn!(
                    variable = name,
                    "the proxy variable is not an http://host:port URL; connecting directly"
                );
            }
            p
        };
        Proxies {
            https: read("HTTPS_PROXY", var("HTTPS_PROXY").or_else(|| all.clone())),
            http: read("HTTP_PROXY", var("HTTP_PROXY").or(all)),
            no_proxy: var("NO_PROXY")
                .map(|v| v.split(',').filter_map(NoProxy::parse).collect())
                .unwrap_or_default(),
        }
    }

    /// The proxy connections to `key` go through. Never one for loopback.
    pub(super) fn for_origin(&self, key: &OriginKey) -> Option<Proxy> {
        let proxy = if key.https { &self.https } else { &self.http };
        let proxy = proxy.as_ref()?;
        let host = key.host.as_str();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if loopback || self.no_proxy.iter().any(|n| n.matches(host)) {
            return None;
        }
        Some(proxy.clone())
    }
}

impl Proxy {
    fn parse(value: &str) -> Option<Proxy> {
        let value = value.trim();
        let with_scheme = if value.contains("://") {
            value.to_string()
        } else {
            format!("http://{value}")
        };
        let url = url::Url::parse(&with_scheme).ok()?;
        if url.scheme() != "http" {
            return None;
        }
        let host = url.host_str()?.trim_matches(['[', ']']).to_string();
        let auth = (!url.username().is_empty()).then(|| {
            let user = percent_decode(url.username());
            let pass = percent_decode(url.password().unwrap_or(""));
            let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            format!("Basic {creds}")
        });
        Some(Proxy {
            host,
            port: url.port().unwrap_or(80),
            auth,
        })
    }

    /// A TCP connection to `host:port` through the proxy (HTTP CONNECT).
    async fn tunnel(&self, host: &str, port: u16) -> Result<TcpStream, SendError> {
        let mut tcp = tcp(&self.host, self.port).await.map_err(|e| match e {
            SendError::Connect(m) => SendError::Connect(format!("proxy: {m}")),
            other => other,
        })?;
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(auth) = &self.auth {
            head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        head.push_str("\r\n");
        let io = |e: io::Error| SendError::Connect(format!("proxy: {e}"));
        tcp.write_all(head.as_bytes()).await.map_err(io)?;
        // The proxy's answer head, read byte by byte so that nothing of the tunnel is taken.
        let mut answer = Vec::with_capacity(128);
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() > 8 * 1024 {
                return Err(SendError::Connect(
                    "proxy: its answer to CONNECT is too long".into(),
                ));
            }
            let mut b = [0u8; 1];
            if tcp.read(&mut b).await.map_err(io)? == 0 {
                return Err(SendError::Connect(
                    "proxy: closed the connection before answering CONNECT".into(),
                ));
            }
            answer.push(b[0]);
        }
        let status = answer
            .split(|&b| b == b' ')
            .nth(1)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(200..=299) => Ok(tcp),
            Some(407) => Err(SendError::Connect(
                "proxy: asks for credentials (407); give them in the proxy URL".into(),
            )),
            Some(s) => Err(SendError::Connect(format!(
                "proxy: refused the tunnel to the provider ({s})"
            ))),
            None => Err(SendError::Connect(
                "proxy: its answer to CONNECT is not HTTP".into(),
            )),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One `NO_PROXY` entry: `*`, a host name (and its subdomains), an IP address, or a CIDR
/// block.
#[derive(Debug, PartialEq)]
enum NoProxy {
    All,
    Domain(String),
    Net(IpAddr, u8),
}

impl NoProxy {
    fn parse(entry: &str) -> Option<NoProxy> {
        let entry = entry.trim();
        if entry.is_empty() {
            return None;
        }
        if entry == "*" {
            return Some(NoProxy::All);
        }
        if let Some((ip, bits)) = entry.split_once('/')
            && let (Ok(ip), Ok(bits)) = (ip.parse::<IpAddr>(), bits.parse::<u8>())
        {
            return Some(NoProxy::Net(ip, bits));
        }
        if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            return Some(NoProxy::Net(ip, bits));
        }
        // `host:port` entries apply to the host whatever the port.
        let host = entry.rsplit_once(':').map_or(entry, |(h, _)| h);
        Some(NoProxy::Domain(
            host.trim_start_matches("*.")
                .trim_start_matches('.')
                .to_ascii_lowercase(),
        ))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            NoProxy::All => true,
            NoProxy::Domain(d) => {
                let host = host.to_ascii_lowercase();
                host == *d
                    || host
                        .strip_suffix(d.as_str())
                        .is_some_and(|h| h.ends_with('.'))
            }
            NoProxy::Net(net, bits) => match (host.parse::<IpAddr>(), net) {
                (Ok(IpAddr::V4(ip)), IpAddr::V4(net)) => {
                    let mask = u32::MAX
                        .checked_shl(32 - u32::from((*bits).min(32)))
                        .unwrap_or(0);
                    u32::from(ip) & mask == u32::from(*net) & mask
                }
                (Ok(IpAddr::V6(ip)), IpAddr::V6(net)) => {
                    let mask = u128::MAX
                        .checked_shl(128 - u32::from((*bits).min(128)))
                        .unwrap_or(0);
                    u128::from(ip) & mask == u128::from(*net) & mask
                }
                _ => false,
            },
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: &str, https: bool) -> OriginKey {
        OriginKey {
            https,
            host: host.into(),
            port: 443,
            tls: 0,
        }
    }

    #[test]
    fn proxies_follow_the_environment_and_no_proxy() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let p = Proxies::from_lookup(&env(&[
            ("https_proxy", "http://user:p%40ss@proxy.internal:3128"),
            (
                "NO_PROXY",
                "internal.example, .corp, 10.0.0.0/8, 192.168.1.7, *.svc:8080",
            ),
        ]));
        let proxied = p.for_origin(&key("api.openai.com", true)).unwrap();
        assert_eq!(
            (proxied.host.as_str(), proxied.port),
            ("proxy.internal", 3128)
        );
        let expected = base64::engine::general_purpose::STANDARD.encode("user:p@ss");
        assert_eq!(proxied.auth.as_deref(), Some(&*format!("Basic {expected}")));
        assert!(
            p.for_origin(&key("api.openai.com", false)).is_none(),
            "no HTTP_PROXY"
        );
        for direct in [
            "internal.example",
            "vllm.internal.example",
            "a.corp",
            "10.3.4.5",
            "192.168.1.7",
            "x.svc",
            "127.0.0.1",
            "localhost",
            "::1",
        ] {
            assert!(p.for_origin(&key(direct, true)).is_none(), "{direct}");
        }
        for proxied in ["notinternal.example", "11.0.0.1", "192.168.1.8", "acorp"] {
            assert!(p.for_origin(&key(proxied, true)).is_some(), "{proxied}");
        }
        let all = Proxies::from_lookup(&env(&[("ALL_PROXY", "proxy:8080"), ("no_proxy", "*")]));
        assert!(all.for_origin(&key("api.openai.com", true)).is_none());
        let all = Proxies::from_lookup(&env(&[("ALL_PROXY", "proxy:8080")]));
        assert_eq!(all.for_origin(&key("h", false)).unwrap().port, 8080);
        assert!(all.for_origin(&key("h", true)).unwrap().auth.is_none());
        let socks = Proxies::from_lookup(&env(&[("HTTPS_PROXY", "socks5://proxy:1080")]));
        assert!(
            socks.for_origin(&key("h", true)).is_none(),
            "unsupported: direct"
        );
    }
}
