//! Gateway addresses and dialling: `tcp://host:port` (plaintext, development),
//! `tls://host:port` (TLS 1.3 with rustls and the `ring` provider) or a bare `host:port`.
//!
//! The transport is returned as one boxed byte stream so the handshake and HTTP/2 code do not
//! care which it is. No ALPN is offered: the bytes after the TLS handshake are link frames.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::{Error, ErrorKind};

/// Where a gateway listens, parsed from a URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct GatewayAddr {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl fmt::Display for GatewayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tls" } else { "tcp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for GatewayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl GatewayAddr {
    /// Parse `tcp://host:port`, `tls://host:port` or `host:port`; IPv6 hosts in brackets.
    pub(crate) fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::config(format!("gateway {url:?}: {why}"));
        let (tls, rest) = if let Some(r) = url.strip_prefix("tls://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("tcp://") {
            (false, r)
        } else if url.contains("://") {
            return Err(bad("scheme must be tcp:// or tls://"));
        } else {
            (false, url)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
        let port: u16 = port.parse().map_err(|_| bad("invalid port"))?;
        let host = match host.strip_prefix('[') {
            Some(h) => h.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?,
            None if host.contains(':') => return Err(bad("IPv6 hosts go in brackets")),
            None => host,
        };
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return Err(bad("invalid host"));
        }
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
        })
    }

    /// The TLS server name: the host as written.
    pub(crate) fn server_name(&self) -> Result<ServerName<'static>, Error> {
        ServerName::try_from(self.host.clone()).map_err(|e| {
            Error::config(format!("gateway {self}: invalid TLS server name")).with_source(e)
        })
    }
}

/// Build the rustls client configuration from PEM root certificates: TLS 1.3 only, `ring`;
/// with `client`, a certificate chain and private key (PEM) presented to the gateway (mTLS).
pub(crate) fn tls_config(
    root_ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0usize;
    for cert in CertificateDer::pem_slice_iter(root_ca_pem) {
        let cert = cert.map_err(|e| Error::config("TLS root CA: invalid PEM").with_source(e))?;
        roots
            .add(cert)
            .map_err(|e| Error::config("TLS root CA: unusable certificate").with_source(e))?;
        count += 1;
    }
    if count == 0 {
        return Err(Error::config("TLS root CA: no certificate in PEM"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::config("TLS configuration").with_source(e))?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::config("TLS client certificate: invalid PEM").with_source(e))?;
            if chain.is_empty() {
                return Err(Error::config(
                    "TLS client certificate: no certificate in PEM",
                ));
            }
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| Error::config("TLS client key: invalid PEM").with_source(e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::config("TLS client certificate and key").with_source(e))?
        }
    };
    Ok(Arc::new(config))
}

/// A dialled connection to a gateway, plaintext or TLS.
pub(crate) enum Transport {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Dial `addr`; TLS when the address says so, with `tls` as the client configuration.
pub(crate) async fn dial(
    addr: &GatewayAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Transport, Error> {
    let connect_err = |e: std::io::Error| {
        Error::new(ErrorKind::Connect, format!("connect to {addr}")).with_source(e)
    };
    let tcp = TcpStream::connect((addr.host.as_str(), addr.port))
        .await
        .map_err(connect_err)?;
    // Handshake frames and small HTTP/2 frames should not wait for Nagle.
    tcp.set_nodelay(true).map_err(connect_err)?;
    if !addr.tls {
        return Ok(Transport::Tcp(tcp));
    }
    let config = tls.ok_or_else(|| Error::config(format!("gateway {addr}: no TLS root CA")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let stream = connector
        .connect(addr.server_name()?, tcp)
        .await
        .map_err(|e| Error::new(ErrorKind::Connect, format!("TLS with {addr}")).with_source(e))?;
    Ok(Transport::Tls(Box::new(stream)))
}

impl Transport {
    /// The connection's TLS exporter value (the channel binding an instance key signs);
    /// `None` on plaintext TCP.
    pub(crate) fn tls_exporter(&self) -> Result<Option<[u8; 32]>, Error> {
        match self {
            Self::Tcp(_) => Ok(None),
            Self::Tls(s) => {
                let mut out = [0u8; portcullis_link::proof::TLS_EXPORTER_LEN];
                s.get_ref()
                    .1
                    .export_keying_material(
                        &mut out,
                        portcullis_link::proof::TLS_EXPORTER_LABEL,
                        None,
                    )
                    .map_err(|e| {
                        Error::new(ErrorKind::Connect, "TLS exporter unavailable").with_source(e)
                    })?;
                Ok(Some(out))
            }
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let a = GatewayAddr::parse("tcp://127.0.0.1:7070").unwrap();
        assert!(!a.tls);
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 7070));
        let a = GatewayAddr::parse("gw.example:443").unwrap();
        assert!(!a.tls);
        let a = GatewayAddr::parse("tls://gw.example:7443").unwrap();
        assert!(a.tls);
        assert_eq!(a.to_string(), "tls://gw.example:7443");
        let a = GatewayAddr::parse("tls://[::1]:7443").unwrap();
        assert_eq!(a.host, "::1");
        assert_eq!(a.to_string(), "tls://[::1]:7443");
        for bad in [
            "http://x:1",
            "x",
            "tcp://x:notaport",
            "tcp://:1",
            "tcp://x:0",
            "::1:80",
            "tcp://[::1:80",
            "tcp://u@x:1",
        ] {
            assert!(GatewayAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_empty_ca() {
        assert!(tls_config(b"", None).is_err());
        assert!(tls_config(
            b"-----BEGIN CERTIFICATE-----\nzz\n-----END CERTIFICATE-----\n",
            None
        )
        .is_err());
    }
}
