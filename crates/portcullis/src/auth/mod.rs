//! Authentication: who is calling.
//!
//! The contract of docs/design.md §5 is `authenticate(credential) → identity`:
//!
//! - [`Credential`] is data: what a request presents, extracted once from the request parts
//!   and the connection facts by [`extract`] (a bearer API key today; JWT, DPoP, client
//!   certificates and cookies are further [`CredentialKind`]s).
//! - an authenticator turns a credential into an [`Identity`] — who, in which workspace, by
//!   which credential, until when — or an [`AuthFailure`]. [`ApiKeyAuthenticator`] implements it
//!   for API keys.
//! - An identity carries no policy: no scopes, no roles. What an identity may do is decided by
//!   `crate::access` from grants it looks up itself.
//!
//! A refusal's reason goes to the audit sink (`crate::audit`) and
//! `portcullis_auth_failures_total{reason}` — never to the client, which gets the same fixed 401
//! whatever the reason.
//!
//! - [`key`]: the key format (parse, checksum, generate), pure.
//! - [`pepper`]: the server pepper secrets are hashed under; never in the database.
//! - [`authenticator`]: verification with a bounded cache, invalidated on change.
//! - [`keyring`]: the Ed25519 signing keys of tokens and identity assertions, sealed at rest.
//! - [`assertion`]: the signed identity assertion added to forwarded calls, signed once and
//!   reused.
//! - [`audit`]: failures to the audit log, coalesced, off the request path.
//! - [`password`]: Argon2id password hashing, bounded, with a constant-cost refusal.
//! - [`throttle`]: login throttling per account and per source address.
//! - [`users`]: what authentication reads and writes about users (a narrow store interface).
//! - [`token`]: user access tokens (EdDSA JWTs): issue, and verify locally on every call.
//! - [`login`]: `POST /api/v1/auth/login`, `change-password` and `/.well-known/jwks.json`.
//! - [`signing`]: the store-backed signing keys behind the [`keyring::KeyRing`]: load,
//!   create, reload, rotate.

pub mod assertion;
pub mod audit;
pub mod authenticator;
pub mod bootstrap;
mod config;
pub mod key;
pub mod keyring;
pub mod login;
pub mod password;
pub mod pepper;
pub mod signing;
pub mod throttle;
pub mod token;
pub mod users;

pub use authenticator::ApiKeyAuthenticator;
pub use config::AuthConfig;
pub use pepper::Pepper;
pub use token::TokenAuthenticator;

use http::HeaderMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// The store change feed: how many times the generation poll has seen the store change.
/// Caches built from store facts (API keys, token subjects) compare against
/// [`Changes::current`]; background work that must reload (signing keys) awaits
/// [`Changes::subscribe`]. Cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct Changes(Arc<ChangesInner>);

#[derive(Debug)]
struct ChangesInner {
    count: AtomicU64,
    tx: watch::Sender<u64>,
}

impl Default for Changes {
    fn default() -> Self {
        Self(Arc::new(ChangesInner {
            count: AtomicU64::new(0),
            tx: watch::channel(0).0,
        }))
    }
}

impl Changes {
    /// The store changed: everything cached from it is stale.
    pub fn bump(&self) {
        let n = self.0.count.fetch_add(1, Ordering::AcqRel) + 1;
        self.0.tx.send_replace(n);
    }

    /// Changes seen so far.
    pub fn current(&self) -> u64 {
        self.0.count.load(Ordering::Acquire)
    }

    /// A receiver that changes with every [`Changes::bump`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.tx.subscribe()
    }
}

/// The kinds of credential a caller can present. A target's auth policy names the kinds it
/// accepts; an identity records the kind it was proven by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// `Authorization: Bearer pcs_…`, an API key.
    ApiKey,
    /// `Authorization: Bearer <JWT>`, a user access token from login: its identity's subject
    /// is a user, `user:<id>`.
    Token,
}

impl CredentialKind {
    /// Stable lowercase name, for logs and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Token => "token",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Self::ApiKey => 1,
            Self::Token => 2,
        }
    }
}

/// A set of credential kinds (what a target accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CredentialKinds(u8);

impl CredentialKinds {
    /// No credential is accepted (and none is needed: public targets).
    pub const NONE: Self = Self(0);
    /// API keys only.
    pub const API_KEY: Self = Self(CredentialKind::ApiKey.bit());
    /// User access tokens only.
    pub const TOKEN: Self = Self(CredentialKind::Token.bit());
    /// Either bearer credential: an API key or a user access token.
    pub const BEARER: Self = Self(CredentialKind::ApiKey.bit() | CredentialKind::Token.bit());

    /// Does the set hold `kind`?
    pub fn contains(self, kind: CredentialKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Is the set empty?
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// What a request presents to prove who is calling. Borrowed from the request: extracting a
/// credential copies nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A raw API key (`pcs_…`), from `Authorization: Bearer`.
    ApiKey(&'a str),
    /// A user access token (a compact JWS), from `Authorization: Bearer`.
    Token(&'a str),
}

impl Credential<'_> {
    /// The kind of this credential.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Self::ApiKey(_) => CredentialKind::ApiKey,
            Self::Token(_) => CredentialKind::Token,
        }
    }

    /// The id the credential claims, for the audit log of a refusal (an API key's key id when
    /// it parses; never a secret). A token's claims are not read before its signature
    /// verifies, so a refused token claims nothing.
    pub fn claimed_id(&self) -> Option<&str> {
        match self {
            Self::ApiKey(raw) => key::parse(raw).ok().map(|p| p.key_id),
            Self::Token(_) => None,
        }
    }
}

/// Extract the one credential of a request that `accepted` allows. Credentials are read from
/// `Authorization: Bearer` only (HTTP headers and gRPC metadata alike); a key in the query string
/// is never looked at. A bearer value starting `pcs_` is an API key; any other is a user
/// access token. `_conn` is where connection-bound credentials (client certificates, the TLS
/// exporter for DPoP) will come from.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    _conn: Option<&crate::transport::ConnFacts>,
    accepted: CredentialKinds,
) -> Result<Credential<'a>, AuthFailure> {
    let token = bearer_token(headers)?;
    if token.starts_with(key::PREFIX) {
        if accepted.contains(CredentialKind::ApiKey) {
            return Ok(Credential::ApiKey(token));
        }
    } else if accepted.contains(CredentialKind::Token) {
        return Ok(Credential::Token(token));
    }
    Err(AuthFailure::Malformed)
}

/// How the caller proved who it is: the credential kind and that credential's id (an API
/// key's key id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Kind of credential.
    pub kind: CredentialKind,
    /// Id of the credential (never a secret).
    pub id: Arc<str>,
}

/// The workspace (tenant) an identity belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRef {
    /// Workspace id.
    pub id: Arc<str>,
    /// Workspace name.
    pub name: Arc<str>,
}

/// What a proof-of-possession credential is bound to (a DPoP key thumbprint, a client
/// certificate). API keys are bearer credentials: unbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// SHA-256 thumbprint of the key or certificate the credential is bound to.
    Thumbprint([u8; 32]),
}

/// A verified caller: who, in which workspace, proven how, until when. No policy: what the
/// caller may do is `crate::access`'s decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who is calling. For an API key, the key itself (`key:<key-id>`).
    pub subject: Arc<str>,
    /// The workspace it belongs to.
    pub workspace: WorkspaceRef,
    /// The credential that proved it.
    pub via: Via,
    /// When the credential stops being valid (Unix ms).
    pub expires_at: Option<i64>,
    /// What the credential is bound to, if it is not a bearer credential.
    pub binding: Option<Binding>,
}

impl Identity {
    /// Past its expiry at `now` (Unix ms)? The same rule as [`crate::store::KeyRecord::is_expired`].
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

/// The one authentication contract of the gateway: every credential kind goes through
/// [`Authenticators::authenticate`], which hands it to the authenticator of its kind. A new kind
/// of credential is a new field here and a new arm below, not a branch in the request path.
#[derive(Debug, Clone)]
pub struct Authenticators {
    api_keys: Arc<ApiKeyAuthenticator>,
    /// `None`: the gateway issues no tokens and refuses every one.
    tokens: Option<Arc<TokenAuthenticator>>,
}

impl Authenticators {
    /// The authenticators of every credential kind the gateway knows (API keys; add tokens
    /// with [`Authenticators::with_tokens`]).
    pub fn new(api_keys: Arc<ApiKeyAuthenticator>) -> Self {
        Self {
            api_keys,
            tokens: None,
        }
    }

    /// Also verify user access tokens with `tokens`.
    pub fn with_tokens(mut self, tokens: Arc<TokenAuthenticator>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// The token authenticator, when tokens are verified.
    pub fn tokens(&self) -> Option<&Arc<TokenAuthenticator>> {
        self.tokens.as_ref()
    }

    /// `authenticate(credential) → identity`.
    pub async fn authenticate(
        &self,
        credential: &Credential<'_>,
    ) -> Result<Arc<Identity>, AuthFailure> {
        match credential {
            Credential::ApiKey(raw) => self.api_keys.authenticate(raw).await,
            Credential::Token(raw) => match &self.tokens {
                Some(t) => t.authenticate(raw).await,
                None => Err(AuthFailure::Token(TokenFault::UnknownKey)),
            },
        }
    }

    /// The API key authenticator (its store, cache and audit queue).
    pub fn api_keys(&self) -> &Arc<ApiKeyAuthenticator> {
        &self.api_keys
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
    /// The credential is valid, but its workspace or its user is disabled.
    #[error("disabled identity")]
    Disabled,
    /// The key id exists, the secret does not match (or its overlap ended).
    #[error("wrong secret")]
    Wrong,
    /// The store could not be asked: fail closed with 503.
    #[error("identity store unavailable")]
    Unavailable,
    /// Login refused without trying: the account or the source address is locked out.
    #[error("throttled")]
    Throttled,
    /// The token was issued before the user's password last changed.
    #[error("password changed since the token was issued")]
    Stale,
    /// The token does not verify.
    #[error("bad token: {}", .0.as_str())]
    Token(TokenFault),
}

/// Why a token was refused before its subject was looked at (`portcullis_link::jws`'s
/// reasons; an expired token is [`AuthFailure::Expired`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenFault {
    /// Too long, not three base64url parts, bad JSON, or a subject that is not `user:<id>`.
    Malformed,
    /// A header other than `{alg: EdDSA, kid, typ: at+jwt}` (`alg: none` included).
    Header,
    /// Its `kid` names no key that verifies now.
    UnknownKey,
    /// The signature does not verify (a re-signed or altered token).
    Signature,
    /// `iat` in the future or after `exp`.
    Validity,
    /// Another audience.
    Audience,
}

impl TokenFault {
    /// Stable name: metric label and audit reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "token_malformed",
            Self::Header => "token_header",
            Self::UnknownKey => "token_unknown_key",
            Self::Signature => "token_signature",
            Self::Validity => "token_validity",
            Self::Audience => "token_audience",
        }
    }
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
            Self::Disabled => "disabled",
            Self::Wrong => "wrong",
            Self::Unavailable => "unavailable",
            Self::Throttled => "throttled",
            Self::Stale => "password_changed",
            Self::Token(f) => f.as_str(),
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
