//! What the gateway knows about a connection, for every call on it: the addresses and, under
//! TLS, the negotiated facts (version, SNI, ALPN, the client's certificate chain and the TLS
//! exporter value that channel-bound credentials sign).
//!
//! The ingress builds one [`ConnFacts`] per connection and puts it in every request's
//! extensions (as [`Conn`], together with the connection's activity counter), so credentials and
//! phases read connection facts from the request they handle and nothing reaches into the
//! socket.

use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;

/// Label of the TLS exporter value (RFC 5705/8446 §7.5) credentials bind to.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-portcullis-channel-binding";

/// Facts of one client connection.
#[derive(Debug, Clone)]
pub struct ConnFacts {
    /// The client's address.
    pub peer: SocketAddr,
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
