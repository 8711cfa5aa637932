//! Who is linking: the link handshake's credential contract.
//!
//! The gateway hands every HELLO, with what it knows of the handshake (the nonce it sent and
//! its time), to one [`LinkAuthenticator`], which answers with the
//! service's [`LinkIdentity`] or a [`LinkAuthFailure`]. A service token is the credential today
//! ([`ServiceTokens`]); an enrolled Ed25519 key signing the challenge (with the TLS exporter
//! value) and a client certificate naming the service are further implementations of the same
//! interface, so the handshake itself does not change when they land.
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
}

/// How a service proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCredentialKind {
    /// A static service token (development).
    Token,
}

impl LinkCredentialKind {
    /// Stable name, for logs and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "service_token",
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
}

/// Why a link's credential was refused: the audit reason (the service gets REJECT
/// `bad_credential` whatever it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkAuthFailure {
    /// Unknown service, or a credential that does not verify.
    #[error("bad link credential")]
    BadCredential,
    /// The HELLO carries a kind of credential this gateway does not accept.
    #[error("credential kind not accepted")]
    KindNotAccepted,
}

impl LinkAuthFailure {
    /// Stable name: metric label and audit reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadCredential => "link_token",
            Self::KindNotAccepted => "link_credential_kind",
        }
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
            let mut h = [0u8; 32];
            hex::decode_to_slice(svc.token_sha256.expose(), &mut h).map_err(|_| {
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
        let Credential::Token { token } = &hello.credential;
        let ok = self.verify(&hello.service, token);
        Box::pin(async move {
            if ok {
                Ok(LinkIdentity {
                    service: hello.service.as_str().into(),
                    via: LinkCredentialKind::Token,
                })
            } else {
                Err(LinkAuthFailure::BadCredential)
            }
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
