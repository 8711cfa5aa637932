//! Authentication: who is calling.
//!
//! The contract of DESIGN §5 is `authenticate(credential) → identity`; this module implements
//! it for API keys ([`ApiKeyAuthenticator`]). A refusal is an [`AuthFailure`] whose reason
//! goes to the audit log and `portcullis_auth_failures_total{reason}` — never to the client,
//! which gets the same fixed 401 whatever the reason.
//!
//! - [`key`]: the key format (parse, checksum, generate), pure.
//! - [`pepper`]: the server pepper secrets are hashed under; never in the database.
//! - [`authenticator`]: verification with a bounded cache, invalidated on change.
//! - [`audit`]: failures to the audit log, coalesced, off the request path.

pub mod audit;
pub mod authenticator;
pub mod key;
pub mod pepper;

pub use authenticator::ApiKeyAuthenticator;
pub use pepper::Pepper;

use http::HeaderMap;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The API key's id.
    pub key_id: String,
    /// Workspace id.
    pub workspace_id: String,
    /// Workspace name.
    pub workspace: String,
    /// The key's display name.
    pub name: String,
    /// Capabilities granted; `*` grants all.
    pub scopes: Vec<String>,
    /// When the key expires (Unix ms).
    pub expires_at: Option<i64>,
}

impl Identity {
    /// Past its expiry at `now` (Unix ms)? The same rule as [`crate::store::KeyRecord::is_expired`].
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// Does this identity hold `capability`? Scope `*` grants every capability.
    pub fn has_capability(&self, capability: &str) -> bool {
        self.scopes.iter().any(|s| s == "*" || s == capability)
    }
}

/// Why a credential was refused. [`AuthFailure::as_str`] is the metric label and the audit
/// reason; all but `Unavailable` answer the same fixed 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthFailure {
    /// No `Authorization` header.
    #[error("missing credential")]
    Missing,
    /// Not a bearer credential, or not a well-formed key (checksum included).
    #[error("malformed credential")]
    Malformed,
    /// Well-formed, but no such key id.
    #[error("unknown key")]
    Unknown,
    /// The key was revoked.
    #[error("revoked key")]
    Revoked,
    /// The key expired.
    #[error("expired key")]
    Expired,
    /// The key id exists, the secret does not match (or its overlap ended).
    #[error("wrong secret")]
    Wrong,
    /// The store could not be asked: fail closed with 503.
    #[error("identity store unavailable")]
    Unavailable,
}

impl AuthFailure {
    /// Stable name: metric label and audit reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Wrong => "wrong",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Is `s` a valid scope: `*` or a capability name `[a-z0-9._:-]{1,128}`?
pub fn valid_scope(s: &str) -> bool {
    s == "*"
        || (!s.is_empty()
            && s.len() <= 128
            && s.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b':' | b'-')
            }))
}

/// Most scopes one key may carry.
pub const MAX_SCOPES: usize = 64;

/// The bearer credential of a request: `Authorization: Bearer <token>` (HTTP and gRPC
/// metadata alike). Credentials anywhere else — query strings included — are not looked at.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthFailure::Missing);
    };
    if values.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Malformed);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() || token.contains(' ') {
        return Err(AuthFailure::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn capabilities() {
        let mut id = Identity {
            key_id: "k".into(),
            workspace_id: "w".into(),
            workspace: "default".into(),
            name: "n".into(),
            scopes: vec!["echo.read".into()],
            expires_at: None,
        };
        assert!(id.has_capability("echo.read"));
        assert!(!id.has_capability("echo.write"));
        id.scopes.push("*".into());
        assert!(id.has_capability("anything"));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), Err(AuthFailure::Missing));
        h.insert("authorization", HeaderValue::from_static("Bearer pcs_x"));
        assert_eq!(bearer_token(&h), Ok("pcs_x"));
        h.insert("authorization", HeaderValue::from_static("bearer   pcs_y"));
        assert_eq!(bearer_token(&h), Ok("pcs_y"));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), Err(AuthFailure::Malformed));
        h.insert("authorization", HeaderValue::from_static("Bearer"));
        assert_eq!(bearer_token(&h), Err(AuthFailure::Malformed));
        h.insert("authorization", HeaderValue::from_static("Bearer a"));
        h.append("authorization", HeaderValue::from_static("Bearer b"));
        assert_eq!(bearer_token(&h), Err(AuthFailure::Malformed));
    }

    #[test]
    fn scopes() {
        assert!(valid_scope("*"));
        assert!(valid_scope("echo.read"));
        assert!(!valid_scope(""));
        assert!(!valid_scope("Echo"));
        assert!(!valid_scope("a,b"));
    }
}
