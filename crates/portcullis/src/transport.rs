//! Transport: the sockets under the ingress and the link server, and what the gateway knows
//! about each connection.
//!
//! - [`Listener`] is one abstraction over TCP and Unix-domain listeners (TLS runs on top of
//!   either, on the data-plane thread that owns the connection); [`accept_loop`] is the one
//!   accept loop both servers run: admission, error back-off, stop.
//! - [`ConnFacts`]: the addresses and, under TLS, the negotiated facts (version, SNI, ALPN, the
//!   client's certificate chain and the TLS exporter value that channel-bound credentials sign).
//!   The ingress puts them in every request's extensions (as [`Conn`], with the connection's
//!   activity counter), so credentials and phases read connection facts from the request they
//!   handle and nothing reaches into the socket.

use rustls::pki_types::CertificateDer;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix-domain socket at `path` (local services and workers); the file is removed when
    /// the listener is dropped.
    Unix {
        /// The socket.
        listener: UnixListener,
        /// Its path.
        path: PathBuf,
    },
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Self::Tcp(l)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Listener {
    /// Bind TCP on `addr`.
    pub async fn tcp(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self::Tcp(TcpListener::bind(addr).await?))
    }

    /// Bind a Unix-domain socket at `path`, replacing a stale socket file left by a previous
    /// run (but never another kind of file).
    pub fn unix(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path = path.into();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        Ok(Self::Unix { listener, path })
    }

    /// Where the listener listens, for logs: the TCP address or the socket's path.
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| format!("<{e}>"), |a| a.to_string()),
            Self::Unix { path, .. } => format!("unix:{}", path.display()),
        }
    }

    /// The bound TCP address (`None` for a Unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().ok(),
            Self::Unix { .. } => None,
        }
    }

    /// Accept one connection.
    pub async fn accept(&self) -> std::io::Result<(Stream, Peer)> {
        match self {
            Self::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Calls are small writes answered at once: never wait for Nagle.
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), Peer::Tcp(peer)))
            }
            Self::Unix { listener, .. } => {
                let (s, _) = listener.accept().await?;
                Ok((Stream::Unix(s), Peer::Unix))
            }
        }
    }
}

/// Who connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A local process on a Unix-domain socket.
    Unix,
}

impl Peer {
    /// The peer's IP address (Unix peers are local: loopback).
    pub fn ip(&self) -> IpAddr {
        match self {
            Self::Tcp(a) => a.ip(),
            Self::Unix => IpAddr::from([127, 0, 0, 1]),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => a.fmt(f),
            Self::Unix => f.write_str("unix"),
        }
    }
}

/// An accepted connection.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix-domain.
    Unix(UnixStream),
}

/// A connection detached from any runtime's reactor, to be handed to another thread
/// ([`StdStream::into_tokio`] registers it with the runtime it is called on).
#[derive(Debug)]
pub enum StdStream {
    /// TCP.
    Tcp(std::net::TcpStream),
    /// Unix-domain.
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    /// Leave the current runtime's reactor.
    pub fn into_std(self) -> std::io::Result<StdStream> {
        Ok(match self {
            Self::Tcp(s) => StdStream::Tcp(s.into_std()?),
            Self::Unix(s) => StdStream::Unix(s.into_std()?),
        })
    }
}

impl StdStream {
    /// Join the calling runtime's reactor.
    pub fn into_tokio(self) -> std::io::Result<Stream> {
        Ok(match self {
            Self::Tcp(s) => Stream::Tcp(TcpStream::from_std(s)?),
            Self::Unix(s) => Stream::Unix(UnixStream::from_std(s)?),
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The one accept loop of every listener: accept until `stop` fires and hand each connection
/// to `on_conn`, which returns `Break` to stop. With `admission`, a connection is accepted only
/// once a permit is free (the kernel's backlog holds the rest) and the permit travels with it;
/// without, `on_conn` decides admission itself. Accept errors (EMFILE and friends) back off
/// instead of spinning; `what` names the listener in logs.
pub async fn accept_loop<F>(
    listener: &Listener,
    what: &'static str,
    stop: &CancellationToken,
    admission: Option<Arc<Semaphore>>,
    mut on_conn: F,
) where
    F: FnMut(Stream, Peer, Option<OwnedSemaphorePermit>) -> ControlFlow<()>,
{
    loop {
        let permit = match &admission {
            Some(limit) => tokio::select! {
                _ = stop.cancelled() => return,
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
            },
            None => None,
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if on_conn(stream, peer, permit).is_break() {
            return;
        }
    }
}

/// Label of the TLS exporter value (RFC 5705/8446 §7.5) credentials bind to.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-portcullis-channel-binding";

/// Facts of one client connection.
#[derive(Debug, Clone)]
pub struct ConnFacts {
    /// The client.
    pub peer: Peer,
    /// Our address the client connected to.
    pub local: Option<SocketAddr>,
    /// TLS facts, when the connection is TLS.
    pub tls: Option<TlsFacts>,
}

/// What a TLS handshake negotiated.
#[derive(Debug, Clone)]
pub struct TlsFacts {
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: &'static str,
    /// The server name the client asked for (SNI).
    pub sni: Option<Arc<str>>,
    /// The negotiated application protocol (`h2`, `http/1.1`).
    pub alpn: Option<Arc<[u8]>>,
    /// The client's certificate chain, leaf first (empty without client authentication).
    pub peer_certificates: Arc<[CertificateDer<'static>]>,
    /// 32 bytes of TLS exporter output under [`EXPORTER_LABEL`]: unique to this connection, so
    /// a credential that signs it cannot be replayed on another one.
    pub exporter: Option<[u8; 32]>,
}

impl TlsFacts {
    /// Read the facts of an established server-side TLS connection.
    pub fn of(conn: &rustls::ServerConnection) -> Self {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1_3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1_2",
            _ => "other",
        };
        let mut exporter = [0u8; 32];
        let exporter = conn
            .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
            .ok()
            .map(|e| *e);
        Self {
            version,
            sni: conn.server_name().map(Into::into),
            alpn: conn.alpn_protocol().map(Into::into),
            peer_certificates: conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            exporter,
        }
    }
}

/// The per-connection value every request carries in its extensions: the facts and the
/// connection's activity (a call counts on it from head to response end, for the idle timeout
/// and drain).
#[derive(Debug, Clone)]
pub struct Conn {
    /// Facts of the connection.
    pub facts: Arc<ConnFacts>,
    /// Calls in progress on the connection.
    pub activity: Arc<crate::ingress::ConnActivity>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn one_accept_loop_serves_tcp_and_unix_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let listeners = [
            Listener::tcp("127.0.0.1:0".parse().unwrap()).await.unwrap(),
            Listener::unix(dir.path().join("link.sock")).unwrap(),
        ];
        for listener in listeners {
            let stop = CancellationToken::new();
            let tcp = listener.local_addr();
            let path = match &listener {
                Listener::Unix { path, .. } => Some(path.clone()),
                Listener::Tcp(_) => None,
            };
            let s = stop.clone();
            let server = tokio::spawn(async move {
                let mut peers = Vec::new();
                accept_loop(
                    &listener,
                    "test",
                    &s,
                    Some(Arc::new(Semaphore::new(1))),
                    |mut st, peer, permit| {
                        assert!(permit.is_some());
                        peers.push(peer);
                        tokio::spawn(async move {
                            let _permit = permit;
                            st.write_all(b"hi").await.unwrap();
                        });
                        ControlFlow::Break(())
                    },
                )
                .await;
                peers
            });
            let mut got = Vec::new();
            match (tcp, path) {
                (Some(addr), _) => {
                    let mut c = TcpStream::connect(addr).await.unwrap();
                    c.read_to_end(&mut got).await.unwrap();
                }
                (None, Some(p)) => {
                    let mut c = UnixStream::connect(p).await.unwrap();
                    c.read_to_end(&mut got).await.unwrap();
                }
                _ => unreachable!(),
            }
            assert_eq!(got, b"hi");
            let peers = server.await.unwrap();
            assert_eq!(peers.len(), 1);
        }
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced_but_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        assert!(Listener::unix(&p).is_ok());
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(Listener::unix(&f).is_err());
        assert!(f.exists());
    }
}
