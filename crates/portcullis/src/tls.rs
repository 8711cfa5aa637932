//! TLS server configuration from PEM files (rustls with the ring provider, one TLS stack),
//! with session resumption that scales: stateless tickets under a rotating key
//! ([`tickets::RotatingTicketer`]) and a bounded cache for TLS 1.2 session ids.

pub mod cert_names;
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
/// against that CA bundle and the revocation lists `client_crls`, for [`check_client_cert`].
/// A CA or CRL file that cannot be read or parsed fails, naming its configuration key.
///
/// Why the chain is not checked during the TLS handshake: a service with a wrong CA or an
/// expired certificate would then only see a TLS alert, and the gateway would have nothing to
/// audit. Here the handshake asks for a certificate and checks the service's signature with
/// it (possession of the key), accepts any chain, and the link handshake verifies the chain
/// afterwards, so the refusal is a REJECT with a reason and an audit row.
pub fn link_acceptor(
    cfg: &TlsConfig,
    client_ca: Option<&std::path::Path>,
    client_crls: &[std::path::PathBuf],
    clock: crate::clock::Clock,
) -> anyhow::Result<(
    tokio_rustls::TlsAcceptor,
    Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
)> {
    let Some(ca) = client_ca else {
        return Ok((acceptor(cfg, &[], clock)?, None));
    };
    let bad_ca =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("link.client_ca: {}: {e}", ca.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad_ca(&e))? {
        roots
            .add(cert.map_err(|e| bad_ca(&e))?)
            .map_err(|e| bad_ca(&e))?;
    }
    if roots.is_empty() {
        return Err(bad_ca(&"no CA certificate found"));
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = || {
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
    };
    let mut crls = Vec::new();
    for path in client_crls {
        let bad = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!("link.client_crls: {}: {e}", path.display())
        };
        let these = read_crls(path).map_err(|e| bad(&e))?;
        // Parsed here, one file at a time, so a bad one is named.
        verifier()
            .with_crls(these.iter().cloned())
            .build()
            .map_err(|e| bad(&e))?;
        crls.extend(these);
    }
    // With CRLs, every certificate of a chain (the trust anchor aside) must be covered by
    // one: a CA without its CRL refuses its certificates (`link_mtls_revocation_unknown`),
    // as OpenSSL's CRL_CHECK_ALL does. The CRLs' nextUpdate is not enforced: they are read at
    // start, and a gateway must not refuse every service at an instant nobody chose.
    let strict = verifier().with_crls(crls).build().map_err(|e| bad_ca(&e))?;
    let (certs, key) = cert_and_key(cfg)?;
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyClientCert(strict.clone())))
        .with_single_cert(certs, key)?;
    resumption(&mut sc, cfg, clock)?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(sc)), Some(strict)))
}

/// The CRLs in the file at `path`: PEM (`X509 CRL` blocks, at least one) or one DER CRL.
fn read_crls(
    path: &std::path::Path,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>> {
    use rustls::pki_types::CertificateRevocationListDer;
    let bytes = std::fs::read(path)?;
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if crls.is_empty() {
            anyhow::bail!("no X509 CRL found in the PEM file");
        }
        Ok(crls)
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
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
    /// Does the verified certificate name `service`? By a SAN dNSName when the certificate
    /// has any DNS or URI SAN; only when it has none, by its subject CN (one, exactly the
    /// name): RFC 6125 §6.4.4, see [`cert_names`].
    pub fn names(&self, service: &str) -> bool {
        let Self::Verified(cert) = self else {
            return false;
        };
        let Some(names) = cert_names::CertNames::parse(cert) else {
            return false;
        };
        names.names(service, || {
            let (Ok(parsed), Ok(name)) = (
                rustls::server::ParsedCertificate::try_from(cert),
                rustls::pki_types::ServerName::try_from(service),
            ) else {
                return false;
            };
            rustls::client::verify_server_name(&parsed, &name).is_ok()
        })
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
            rustls::CertificateError::UnknownRevocationStatus => "link_mtls_revocation_unknown",
            rustls::CertificateError::UnknownIssuer => "link_mtls_unknown_ca",
            _ => "link_mtls_invalid",
        }),
        // A configured CRL that does not verify (its signature, or its issuer's key usage).
        Err(rustls::Error::InvalidCertRevocationList(_)) => {
            ClientCert::Refused("link_mtls_revocation_unknown")
        }
        Err(_) => ClientCert::Refused("link_mtls_invalid"),
    }
}
