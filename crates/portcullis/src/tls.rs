//! TLS server configuration from PEM files (rustls with the ring provider, one TLS stack),
//! with session resumption that scales: stateless tickets under a rotating key
//! ([`tickets::RotatingTicketer`]) and a bounded cache for TLS 1.2 session ids.

pub mod tickets;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

use crate::config::TlsConfig;

/// A TLS acceptor for the certificate and key in `cfg`, advertising `alpn` protocols; ticket
/// keys rotate on `clock`.
pub fn acceptor(
    cfg: &TlsConfig,
    alpn: &[&[u8]],
    clock: crate::clock::Clock,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", cfg.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    sc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    sc.session_storage = if cfg.session_cache == 0 {
        Arc::new(rustls::server::NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(cfg.session_cache)
    };
    if cfg.session_tickets {
        sc.ticketer = Arc::new(tickets::RotatingTicketer::new(cfg.ticket_rotation, clock)?);
    }
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(sc)))
}
