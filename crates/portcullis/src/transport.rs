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
        /// The socket (dropped before its file is removed).
        listener: UnixListener,
        /// Its path.
        path: SocketFile,
    },
}

/// A Unix socket's path; the file is removed when this is dropped (with its listener).
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl std::ops::Deref for SocketFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Self::Tcp(l)
    }
}

impl Listener {
    /// Bind TCP on `addr`, in a `SO_REUSEPORT` group of its own so that
    /// [`Listener::reuseport_siblings`] can add one socket per data-plane thread.
    ///
    /// `SO_REUSEPORT` alone would let a second gateway started by mistake on the same port join
    /// the group and silently take half the connections. So the port is first bound without it
    /// (and released at once): that bind fails while anything, a reuseport group included,
    /// listens there, and the mistake stays an "address in use" error at start.
    pub async fn tcp(addr: SocketAddr) -> std::io::Result<Self> {
        let mut last = None;
        // With port 0 another process can take the probed port before we bind it: try again.
        for _ in 0..8 {
            let probe = tcp_socket(addr)?;
            probe.bind(addr)?;
            let at = probe.local_addr()?;
            drop(probe);
            let socket = tcp_socket(at)?;
            socket.set_reuseport(true)?;
            match socket.bind(at) {
                Ok(()) => return Ok(Self::Tcp(socket.listen(LISTEN_BACKLOG)?)),
                Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into()))
    }

    /// `n` more listening sockets on this TCP listener's address, in its `SO_REUSEPORT` group
    /// (the kernel spreads new connections over the group), detached from any runtime so each
    /// can be moved to the thread that will accept on it. `Ok(None)` for a Unix socket or a
    /// listener not bound by [`Listener::tcp`] (not in a group).
    pub fn reuseport_siblings(
        &self,
        n: usize,
    ) -> std::io::Result<Option<Vec<std::net::TcpListener>>> {
        let Self::Tcp(l) = self else {
            return Ok(None);
        };
        let at = l.local_addr()?;
        let mut siblings = Vec::with_capacity(n);
        for _ in 0..n {
            let socket = tcp_socket(at)?;
            socket.set_reuseport(true)?;
            match socket.bind(at) {
                Ok(()) => siblings.push(socket.listen(LISTEN_BACKLOG)?.into_std()?),
                // The listener itself is not in a reuseport group.
                Err(e) if siblings.is_empty() && e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some(siblings))
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
        Ok(Self::Unix {
            listener,
            path: SocketFile(path),
        })
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

/// The accept backlog of TCP listeners (tokio's `TcpListener::bind` uses the same).
const LISTEN_BACKLOG: u32 = 1024;

/// A TCP socket for `addr`'s family with `SO_REUSEADDR` (a restart binds over connections in
/// TIME_WAIT, as `TcpListener::bind` does).
fn tcp_socket(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    Ok(socket)
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
    /// Wait until the stream has something to read (or has failed).
    pub async fn readable(&self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
        }
    }

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

/// How an accept loop admits connections.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Everything; the caller decides per connection.
    Open,
    /// A connection is accepted only once a permit is free, and the permit travels with it:
    /// past the limit the kernel's backlog holds the rest. For a listener alone under its limit.
    BeforeAccept(Arc<Semaphore>),
    /// Accept, then wait for a permit before accepting the next: for several listeners sharing
    /// one limit (the per-thread ingress sockets). A loop waiting for a permit before accepting
    /// would hold one while its own socket is empty, and a connection queued on a sibling
    /// socket would wait for it forever; this way each loop holds at most one accepted
    /// connection beyond the limit, and the backlog the rest.
    AfterAccept(Arc<Semaphore>),
}

impl From<Option<Arc<Semaphore>>> for Admission {
    fn from(limit: Option<Arc<Semaphore>>) -> Self {
        limit.map_or(Self::Open, Self::BeforeAccept)
    }
}

/// The one accept loop of every listener: accept until `stop` fires and hand each connection
/// to `on_conn`, which returns `Break` to stop, with its permit under a limited
/// [`Admission`] (`Some(limit)` is [`Admission::BeforeAccept`], `None` is open). Accept errors
/// (EMFILE and friends) back off instead of spinning; `what` names the listener in logs.
pub async fn accept_loop<F>(
    listener: &Listener,
    what: &'static str,
    stop: &CancellationToken,
    admission: impl Into<Admission>,
    mut on_conn: F,
) where
    F: FnMut(Stream, Peer, Option<OwnedSemaphorePermit>) -> ControlFlow<()>,
{
    let admission = admission.into();
    let permit_of = |limit: &Arc<Semaphore>| limit.clone().acquire_owned();
    loop {
        let mut permit = match &admission {
            Admission::BeforeAccept(limit) => tokio::select! {
                _ = stop.cancelled() => return,
                p = permit_of(limit) => match p {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
            },
            _ => None,
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
        if let Admission::AfterAccept(limit) = &admission {
            permit = tokio::select! {
                _ = stop.cancelled() => return,
                p = permit_of(limit) => match p {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
            };
        }
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
                Listener::Unix { path, .. } => Some(path.to_path_buf()),
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
    async fn a_second_gateway_on_the_same_port_is_refused_but_siblings_share_it() {
        let first = Listener::tcp("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let at = first.local_addr().unwrap();
        // Another process (or a second gateway by mistake) cannot join the reuseport group.
        let again = Listener::tcp(at).await.unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse);
        assert!(std::net::TcpListener::bind(at).is_err());
        // Siblings can, and the kernel spreads new connections over the group.
        let siblings = first.reuseport_siblings(1).unwrap().unwrap();
        let mut group = vec![first];
        for s in siblings {
            group.push(Listener::Tcp(TcpListener::from_std(s).unwrap()));
        }
        let mut clients = Vec::new();
        for _ in 0..64 {
            clients.push(TcpStream::connect(at).await.unwrap());
        }
        let mut per_socket = Vec::new();
        for l in &group {
            let mut n = 0;
            while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), l.accept()).await
            {
                n += 1;
            }
            per_socket.push(n);
        }
        assert_eq!(per_socket.iter().sum::<usize>(), 64, "{per_socket:?}");
        assert!(per_socket.iter().all(|&n| n > 0), "{per_socket:?}");
    }

    #[tokio::test]
    async fn a_listener_outside_a_reuseport_group_has_no_siblings() {
        let plain = Listener::from(TcpListener::bind("127.0.0.1:0").await.unwrap());
        assert!(plain.reuseport_siblings(1).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let unix = Listener::unix(dir.path().join("s.sock")).unwrap();
        assert!(unix.reuseport_siblings(1).unwrap().is_none());
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
