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
    let (certs, key) = cert_and_key(cfg)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    sc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    resumption(&mut sc, cfg, clock)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(sc)))
}

/// The certificate chain and key `cfg` names.
fn cert_and_key(
    cfg: &TlsConfig,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", cfg.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.key.display()))?;
    Ok((certs, key))
}

/// Session resumption as `cfg` says: stateless tickets under a key rotating on `clock`, and a
/// bounded cache for TLS 1.2 session ids.
fn resumption(
    sc: &mut rustls::ServerConfig,
    cfg: &TlsConfig,
    clock: crate::clock::Clock,
) -> anyhow::Result<()> {
    sc.session_storage = if cfg.session_cache == 0 {
        Arc::new(rustls::server::NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(cfg.session_cache)
    };
    if cfg.session_tickets {
        sc.ticketer = Arc::new(tickets::RotatingTicketer::new(cfg.ticket_rotation, clock)?);
    }
    Ok(())
}

/// The link listener's TLS: like [`acceptor`], and with `client_ca` it asks every service for
/// a client certificate (optional at the TLS level) and returns the verifier that checks one
/// against that CA bundle, for [`check_client_cert`].
///
/// Why the chain is not checked during the TLS handshake: a service with a wrong CA or an
/// expired certificate would then only see a TLS alert, and the gateway would have nothing to
/// audit. Here the handshake asks for a certificate and checks the service's signature with
/// it (possession of the key), accepts any chain, and the link handshake verifies the chain
/// afterwards, so the refusal is a REJECT with a reason and an audit row.
pub fn link_acceptor(
    cfg: &TlsConfig,
    client_ca: Option<&std::path::Path>,
    clock: crate::clock::Clock,
) -> anyhow::Result<(
    tokio_rustls::TlsAcceptor,
    Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
)> {
    let Some(ca) = client_ca else {
        return Ok((acceptor(cfg, &[], clock)?, None));
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?
    {
        let cert = cert.map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("{}: no CA certificate found", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let strict = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
    let (certs, key) = cert_and_key(cfg)?;
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyClientCert(strict.clone())))
        .with_single_cert(certs, key)?;
    resumption(&mut sc, cfg, clock)?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(sc)), Some(strict)))
}

/// Asks for a client certificate, verifies the handshake signature made with it, and defers
/// the chain to [`check_client_cert`] (see [`link_acceptor`]).
#[derive(Debug)]
struct AnyClientCert(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What a link's client certificate proves.
#[derive(Debug, Clone, Default)]
pub enum ClientCert {
    /// None presented (or none asked for).
    #[default]
    None,
    /// A chain from the CA bundle, valid now: its end-entity certificate.
    Verified(CertificateDer<'static>),
    /// Presented but refused: the audit reason.
    Refused(&'static str),
}

impl ClientCert {
    /// Does the verified certificate name `service` (a SAN dNSName)?
    pub fn names(&self, service: &str) -> bool {
        let Self::Verified(cert) = self else {
            return false;
        };
        let (Ok(parsed), Ok(name)) = (
            rustls::server::ParsedCertificate::try_from(cert),
            rustls::pki_types::ServerName::try_from(service),
        ) else {
            return false;
        };
        rustls::client::verify_server_name(&parsed, &name).is_ok()
    }
}

/// Check the chain a link presented against `verifier` (the CA bundle) at the system time.
pub fn check_client_cert(
    verifier: &dyn rustls::server::danger::ClientCertVerifier,
    chain: Option<&[CertificateDer<'static>]>,
) -> ClientCert {
    let Some((end, intermediates)) = chain.and_then(|c| c.split_first()) else {
        return ClientCert::None;
    };
    match verifier.verify_client_cert(end, intermediates, rustls::pki_types::UnixTime::now()) {
        Ok(_) => ClientCert::Verified(end.clone()),
        Err(rustls::Error::InvalidCertificate(e)) => ClientCert::Refused(match e {
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                "link_mtls_expired"
            }
            rustls::CertificateError::Revoked => "link_mtls_revoked",
            rustls::CertificateError::UnknownIssuer => "link_mtls_unknown_ca",
            _ => "link_mtls_invalid",
        }),
        Err(_) => ClientCert::Refused("link_mtls_invalid"),
    }
}
