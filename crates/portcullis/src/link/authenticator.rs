//! Who is linking: the link handshake's credential contract.
//!
//! The gateway hands every HELLO, with what it knows of the handshake (the nonce it sent and
//! its time), to one [`LinkAuthenticator`], which answers with the
//! service's [`LinkIdentity`] or a [`LinkAuthFailure`]. Two credentials implement it: a static
//! service token ([`ServiceTokens`]) and an enrolled Ed25519 key signing the challenge with the
//! TLS exporter value ([`super::instance_keys::InstanceKeys`]); [`LinkCredentials`] holds both
//! and applies each service's `auth` (the kinds it requires).
//!
//! Every refusal costs the same as an acceptance (unknown services are hashed and compared
//! like known ones) and is reported to the audit sink by the caller.

use portcullis_link::{Credential, Hello};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What the gateway knows of a handshake when it checks the HELLO: what a signed challenge
/// must cover. (The peer and the TLS facts join it with the credentials that need them.)
#[derive(Debug, Clone)]
pub struct HandshakeFacts {
    /// The nonce of the CHALLENGE this HELLO answers.
    pub nonce: Arc<str>,
    /// The gateway's time in the CHALLENGE (Unix ms).
    pub server_time_ms: u64,
    /// The HELLO's protocol version (signed by an Ed25519 credential).
    pub version: u8,
    /// The connection's TLS exporter value (`EXPORTER-portcullis-link`); `None` on
    /// plaintext TCP.
    pub tls_exporter: Option<[u8; 32]>,
    /// The client certificate the connection presented, checked against `link.client_ca`.
    pub client_cert: crate::tls::ClientCert,
}

/// How a service proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCredentialKind {
    /// A static service token (development).
    Token,
    /// An Ed25519 instance key enrolled by pairing.
    Ed25519,
    /// A TLS client certificate naming the service, alone.
    Mtls,
    /// A client certificate and a static token.
    MtlsToken,
    /// A client certificate and an enrolled key.
    MtlsEd25519,
}

impl LinkCredentialKind {
    /// Stable name, for logs and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "service_token",
            Self::Ed25519 => "ed25519",
            Self::Mtls => "mtls",
            Self::MtlsToken => "mtls+service_token",
            Self::MtlsEd25519 => "mtls+ed25519",
        }
    }
}

/// A service that proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkIdentity {
    /// The service name it may serve as.
    pub service: Arc<str>,
    /// The credential kind that proved it.
    pub via: LinkCredentialKind,
    /// The enrolled key, for an Ed25519 credential.
    pub key: Option<super::instance_keys::LinkKeyId>,
}

/// Why a link's credential was refused: the audit reason and metric label
/// ([`LinkAuthFailure::as_str`]) and the REJECT code ([`LinkAuthFailure::reject_code`]),
/// which says no more than the service needs (`bad_credential` for every failed proof).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkAuthFailure {
    /// Unknown service, or a token that does not verify.
    #[error("bad link credential")]
    BadCredential,
    /// The HELLO carries a kind of credential its service does not accept.
    #[error("credential kind not accepted")]
    KindNotAccepted,
    /// An Ed25519 signature that does not verify.
    #[error("bad link credential")]
    BadSignature,
    /// The signed timestamp is outside the allowed skew.
    #[error("timestamp outside the allowed clock skew")]
    StaleTimestamp,
    /// A service nonce seen before: the key was revoked.
    #[error("bad link credential")]
    Replay,
    /// Too many bad signatures in the window: the key was revoked.
    #[error("bad link credential")]
    FailuresRevoked,
    /// The key is enrolled (or pending) for another service, or bound to another instance.
    #[error("bad link credential")]
    WrongBinding,
    /// The key is not enrolled: a pairing is pending.
    #[error("pairing required: ask an admin to approve code {}", .0.code)]
    PairingRequired(portcullis_link::PairingPrompt),
    /// An admin denied this key.
    #[error("this instance key was denied")]
    PairingDenied,
    /// Too many pairings are pending.
    #[error("too many pairings pending")]
    PairingFull,
    /// The store could not be asked.
    #[error("the gateway cannot check credentials now")]
    Unavailable,
    /// The service requires a client certificate and this one (or its absence) fails: the
    /// audit reason (`link_mtls_missing`, `_unknown_ca`, `_expired`, `_revoked`,
    /// `_revocation_unknown`, `_invalid`, `_name`; docs/link-protocol.md §10.6).
    #[error("client certificate refused ({0})")]
    Mtls(&'static str),
}

impl LinkAuthFailure {
    /// Stable name: metric label and audit reason.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::BadCredential => "link_token",
            Self::KindNotAccepted => "link_credential_kind",
            Self::BadSignature => "link_signature",
            Self::StaleTimestamp => "link_stale_timestamp",
            Self::Replay => "link_replay",
            Self::FailuresRevoked => "link_failures",
            Self::WrongBinding => "link_key_binding",
            Self::PairingRequired(_) => "link_pairing_required",
            Self::PairingDenied => "link_pairing_denied",
            Self::PairingFull => "link_pairing_full",
            Self::Unavailable => "link_store_unavailable",
            Self::Mtls(reason) => reason,
        }
    }

    /// The REJECT code the service gets.
    pub fn reject_code(&self) -> portcullis_link::RejectCode {
        use portcullis_link::RejectCode;
        match self {
            Self::StaleTimestamp => RejectCode::StaleTimestamp,
            Self::PairingRequired(_) => RejectCode::PairingRequired,
            Self::PairingDenied => RejectCode::PairingDenied,
            Self::PairingFull | Self::Unavailable => RejectCode::Unavailable,
            _ => RejectCode::BadCredential,
        }
    }

    /// Is this a refusal to count as an authentication failure (audit, metrics)? A pending
    /// pairing is the normal first contact of a new instance, not a failure.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::PairingRequired(_))
    }
}

/// A boxed future of an authentication.
pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<LinkIdentity, LinkAuthFailure>> + Send + 'a>>;

/// The link's credential contract: `authenticate(hello, facts) → identity`.
pub trait LinkAuthenticator: Send + Sync + 'static {
    /// Verify the credential in `hello` for the service it names.
    fn authenticate<'a>(&'a self, hello: &'a Hello, facts: &'a HandshakeFacts) -> AuthFuture<'a>;
}

/// SHA-256 of a service token, as configured in `services.<name>.token_sha256`.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Static service tokens: service name → SHA-256 of its token.
#[derive(Clone, Default)]
pub struct ServiceTokens {
    hashes: HashMap<String, [u8; 32]>,
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokens")
            .field("services", &self.hashes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ServiceTokens {
    /// From the configured `services.<name>.token_sha256` values. Fails naming the field if
    /// a hash is not 64 hex characters.
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Self> {
        let mut hashes = HashMap::new();
        for (name, svc) in &config.services {
            let Some(token) = svc
                .token_sha256
                .as_ref()
                .filter(|_| svc.requires(crate::config::LinkAuthKind::Token))
            else {
                continue;
            };
            let mut h = [0u8; 32];
            hex::decode_to_slice(token.expose(), &mut h).map_err(|_| {
                anyhow::anyhow!("services.{name}.token_sha256: must be 64 hex characters")
            })?;
            hashes.insert(name.clone(), h);
        }
        Ok(Self { hashes })
    }

    /// The services allowed to link.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.hashes.keys().map(String::as_str)
    }

    fn verify(&self, service: &str, token: &str) -> bool {
        // Hash whether or not the service is known, and compare against a dummy when it is
        // not, so an unknown name is indistinguishable from a wrong token.
        let presented = hash_token(token);
        let (expected, known) = match self.hashes.get(service) {
            Some(h) => (h, true),
            None => (&[0u8; 32], false),
        };
        bool::from(expected.ct_eq(&presented)) && known
    }
}

impl LinkAuthenticator for ServiceTokens {
    fn authenticate<'a>(&'a self, hello: &'a Hello, _facts: &'a HandshakeFacts) -> AuthFuture<'a> {
        let ok = match &hello.credential {
            Credential::Token { token } => self.verify(&hello.service, token),
            Credential::Ed25519 { .. } | Credential::TlsClientCertificate {} => false,
        };
        Box::pin(async move {
            if ok {
                Ok(LinkIdentity {
                    service: hello.service.as_str().into(),
                    via: LinkCredentialKind::Token,
                    key: None,
                })
            } else {
                Err(LinkAuthFailure::BadCredential)
            }
        })
    }
}

/// Every link credential of the gateway: tokens for the services that require them, instance
/// keys for those that require Ed25519 (when the gateway has a store), and the client
/// certificate for those that require mTLS, each service held to every kind its `auth` lists.
pub struct LinkCredentials {
    tokens: ServiceTokens,
    keys: Option<Arc<super::instance_keys::InstanceKeys>>,
    /// Services that require a client certificate.
    mtls: std::collections::HashSet<String>,
}

impl LinkCredentials {
    /// Tokens and, when given, instance keys; no service requires mTLS.
    pub fn new(
        tokens: ServiceTokens,
        keys: Option<Arc<super::instance_keys::InstanceKeys>>,
    ) -> Self {
        Self {
            tokens,
            keys,
            mtls: Default::default(),
        }
    }

    /// Require a client certificate of `services`.
    pub fn with_mtls(mut self, services: impl IntoIterator<Item = String>) -> Self {
        self.mtls = services.into_iter().collect();
        self
    }

    /// The client certificate check of a service that requires one.
    fn check_cert(&self, hello: &Hello, facts: &HandshakeFacts) -> Result<(), LinkAuthFailure> {
        use crate::tls::ClientCert;
        match &facts.client_cert {
            ClientCert::None => Err(LinkAuthFailure::Mtls("link_mtls_missing")),
            ClientCert::Refused(reason) => Err(LinkAuthFailure::Mtls(reason)),
            c @ ClientCert::Verified(_) if !c.names(&hello.service) => {
                Err(LinkAuthFailure::Mtls("link_mtls_name"))
            }
            ClientCert::Verified(_) => Ok(()),
        }
    }

    /// The instance keys, if any service enrols them.
    pub fn keys(&self) -> Option<&Arc<super::instance_keys::InstanceKeys>> {
        self.keys.as_ref()
    }
}

impl LinkAuthenticator for LinkCredentials {
    fn authenticate<'a>(&'a self, hello: &'a Hello, facts: &'a HandshakeFacts) -> AuthFuture<'a> {
        Box::pin(async move {
            let mtls = self.mtls.contains(&hello.service);
            if mtls {
                self.check_cert(hello, facts)?;
            }
            let mut id = match &hello.credential {
                Credential::Token { .. } => self.tokens.authenticate(hello, facts).await?,
                Credential::Ed25519 { .. } => match &self.keys {
                    Some(k) => k.authenticate(hello, facts).await?,
                    None => return Err(LinkAuthFailure::KindNotAccepted),
                },
                // Only for a service whose one credential is the certificate: one that also
                // requires a token or a key is configured for those, and a service without
                // mTLS is not satisfied by nothing.
                Credential::TlsClientCertificate {} => {
                    let only_mtls = mtls
                        && !self.tokens.services().any(|s| s == hello.service)
                        && !self
                            .keys
                            .as_ref()
                            .is_some_and(|k| k.accepts(&hello.service));
                    if !only_mtls {
                        return Err(LinkAuthFailure::KindNotAccepted);
                    }
                    return Ok(LinkIdentity {
                        service: hello.service.as_str().into(),
                        via: LinkCredentialKind::Mtls,
                        key: None,
                    });
                }
            };
            if mtls {
                id.via = match id.via {
                    LinkCredentialKind::Ed25519 => LinkCredentialKind::MtlsEd25519,
                    _ => LinkCredentialKind::MtlsToken,
                };
            }
            Ok(id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> ServiceTokens {
        let mut hashes = HashMap::new();
        hashes.insert("echo".to_string(), hash_token("right"));
        ServiceTokens { hashes }
    }

    #[test]
    fn only_the_right_token_for_a_known_service_verifies() {
        let t = tokens();
        assert!(t.verify("echo", "right"));
        assert!(!t.verify("echo", "wrong"));
        assert!(!t.verify("other", "right"));
        // A service whose hash happens to be all zeros cannot be reached by an unknown name.
        assert!(!t.verify("unknown", ""));
    }
}
