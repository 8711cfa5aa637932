//! Who is calling: the gateway's identity assertion of every call, verified before the
//! handler runs, and handed to it as an [`Identity`].
//!
//! The gateway adds `x-portcullis-identity` to every call it forwards: a compact JWS
//! (`alg: EdDSA`, `typ: portcullis-identity+jwt`) of the caller's subject, workspace and
//! credential, for this service (`aud`), valid at most 60 s, signed with a key whose public
//! half the gateway sent over the link (HELLO_ACK, then `PUT /.well-known/portcullis/keys` on
//! every change). A [`Verifier`] checks it in the order `docs/link-protocol.md` §6.4 gives;
//! a call without a valid one is answered 401 and never reaches the handler.
//!
//! **Cost.** A verified assertion is kept, keyed by its exact bytes, until its `exp`: the
//! gateway reuses an assertion for about 45 s, so a hot caller costs one signature check per
//! 45 s per thread, and the rest of its calls a hash, a lock nobody else holds and a compare.
//! The cache is split per thread (threads take a shard the first time they verify) so the
//! runtime's worker threads never wait on one another's lock, and it is bounded: a full shard
//! drops an arbitrary entry. New keys invalidate every entry.
//!
//! With the `axum` feature (on by default) `Identity` is an extractor; it is also in the
//! request's extensions for any other tower service.

use portcullis_link::shard::PreHashedMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use http::{HeaderMap, HeaderName};
use portcullis_link::jws::{self, AssertionClaims, Jwks, JwsError};

/// `x-portcullis-identity`, parsed once.
const IDENTITY: HeaderName = HeaderName::from_static(portcullis_link::headers::IDENTITY);

/// Assertions a [`Verifier`] keeps verified, over all threads.
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;
/// Most shards, whatever the core count.
const MAX_SHARDS: usize = 64;
/// The tail of an assertion its cache slot is chosen by: its signature, which differs for
/// every assertion. The whole assertion is compared on a hit.
const HASHED_TAIL: usize = 64;

/// A caller the gateway vouched for: who, in which workspace, proven by which credential,
/// and the assertion itself, to hand on to another service that wants the gateway's word.
///
/// Cheap to clone (one reference count).
#[derive(Clone, PartialEq, Eq)]
pub struct Identity(Arc<Inner>);

#[derive(PartialEq, Eq)]
struct Inner {
    claims: AssertionClaims,
    assertion: Box<str>,
}

impl Identity {
    /// The subject: `key:<key-id>` for an API key, `user:<id>` for a user.
    pub fn subject(&self) -> &str {
        &self.0.claims.sub
    }

    /// The id of the workspace the call acts in.
    pub fn workspace_id(&self) -> &str {
        &self.0.claims.ws
    }

    /// The name of the workspace the call acts in.
    pub fn workspace_name(&self) -> &str {
        &self.0.claims.wsn
    }

    /// The kind of credential that proved the subject: `api_key`, `token`.
    pub fn credential_kind(&self) -> &str {
        &self.0.claims.via.kind
    }

    /// The id of that credential: an API key's key id, a token's `jti`. Never a secret.
    pub fn credential_id(&self) -> &str {
        &self.0.claims.via.id
    }

    /// The gateway that issued the assertion (`iss`).
    pub fn issuer(&self) -> &str {
        &self.0.claims.iss
    }

    /// When the assertion expires, Unix seconds.
    pub fn expires_at(&self) -> i64 {
        self.0.claims.exp
    }

    /// The assertion as received (`x-portcullis-identity`), to pass on as proof: it verifies
    /// against the gateway's JWKS, and names this service as its audience.
    pub fn assertion(&self) -> &str {
        &self.0.assertion
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The assertion is a bearer proof for this service: not printed.
        f.debug_struct("Identity")
            .field("subject", &self.subject())
            .field("workspace_id", &self.workspace_id())
            .field("workspace_name", &self.workspace_name())
            .field("credential_kind", &self.credential_kind())
            .field("credential_id", &self.credential_id())
            .field("expires_at", &self.expires_at())
            .finish_non_exhaustive()
    }
}

/// Why an assertion was refused. The caller gets the same 401 whatever the reason; the
/// reason is logged ([`VerifyError::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No `x-portcullis-identity` header.
    #[error("no identity assertion")]
    Missing,
    /// More than one `x-portcullis-identity` header.
    #[error("more than one identity assertion")]
    Duplicate,
    /// The signature or the claims do not hold.
    #[error("{0}")]
    Token(JwsError),
    /// Signed by a known key, but naming another issuer.
    #[error("wrong issuer")]
    Issuer,
}

impl VerifyError {
    /// Stable name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "assertion_missing",
            Self::Duplicate => "assertion_duplicate",
            Self::Token(e) => e.as_str(),
            Self::Issuer => "token_issuer",
        }
    }
}

impl From<JwsError> for VerifyError {
    fn from(e: JwsError) -> Self {
        Self::Token(e)
    }
}

/// Verifies the identity assertions of one gateway for one service, with a bounded cache of
/// verified ones. The SDK keeps one per link; a service may build its own to check an
/// assertion another service handed on (with that service's name as the audience).
pub struct Verifier {
    audience: Box<str>,
    issuer: Box<str>,
    /// Read on a cache miss only.
    keys: RwLock<Keys>,
    /// Bumped by every key change; a cached verification counts under its generation only.
    generation: AtomicU64,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("keys", &self.key_ids())
            .finish_non_exhaustive()
    }
}

/// `(kid, public key)`, at most [`jws::MAX_JWKS_KEYS`].
type Keys = Arc<[(String, [u8; 32])]>;

#[derive(Default)]
struct Shard {
    entries: PreHashedMap<Cached>,
}

struct Cached {
    identity: Identity,
    generation: u64,
}

/// Now, Unix seconds.
pub(crate) fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Verifier {
    /// A verifier of assertions for the service `audience`, issued by `issuer`, signed with
    /// one of `keys` (at most [`jws::MAX_JWKS_KEYS`] are used; malformed ones are skipped).
    pub fn new(audience: impl Into<String>, issuer: impl Into<String>, keys: &Jwks) -> Self {
        Self::with_capacity(audience, issuer, keys, DEFAULT_CACHE_CAPACITY)
    }

    /// [`Verifier::new`] keeping at most `capacity` verified assertions.
    pub fn with_capacity(
        audience: impl Into<String>,
        issuer: impl Into<String>,
        keys: &Jwks,
        capacity: usize,
    ) -> Self {
        let shards = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, MAX_SHARDS);
        Self {
            audience: audience.into().into(),
            issuer: issuer.into().into(),
            keys: RwLock::new(keys.public_keys().into()),
            generation: AtomicU64::new(0),
            hasher: RandomState::new(),
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(shards).max(1),
        }
    }

    /// The audience assertions must name: this service.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The issuer assertions must name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The ids of the keys held now.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(kid, _)| kid.clone())
            .collect()
    }

    /// Replace the keys (the gateway's new set). Assertions verified under the old set are
    /// verified again, so a key the gateway dropped stops verifying at once.
    pub fn set_keys(&self, keys: &Jwks) {
        let keys: Keys = keys.public_keys().into();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
        self.generation.fetch_add(1, Ordering::AcqRel);
        for s in self.shards.iter() {
            s.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entries
                .clear();
        }
    }

    /// Verify a call's headers: exactly one `x-portcullis-identity`, valid now.
    pub fn verify_headers(&self, headers: &HeaderMap) -> Result<Identity, VerifyError> {
        let mut values = headers.get_all(IDENTITY).iter();
        let value = values.next().ok_or(VerifyError::Missing)?;
        if values.next().is_some() {
            return Err(VerifyError::Duplicate);
        }
        // UTF-8 is all that matters here (the assertion is then compared or fully parsed), and
        // checking it is cheaper than `to_str`'s byte-by-byte visible-ASCII test.
        let token = std::str::from_utf8(value.as_bytes()).map_err(|_| JwsError::Malformed)?;
        self.verify(token)
    }

    /// Verify an assertion now.
    pub fn verify(&self, assertion: &str) -> Result<Identity, VerifyError> {
        self.verify_at(assertion, now_s())
    }

    /// Verify an assertion at `now_s` (Unix seconds), in the order of the protocol: size and
    /// shape, header (`alg: EdDSA`, a known `kid`, `typ: portcullis-identity+jwt`, nothing
    /// else), signature, then claims (`iat`/`exp` within 60 s of each other and around now,
    /// `aud` this service, `iss` the gateway's).
    pub fn verify_at(&self, assertion: &str, now_s: i64) -> Result<Identity, VerifyError> {
        if assertion.len() > jws::MAX_TOKEN_BYTES {
            return Err(JwsError::Malformed.into());
        }
        let hash = self.hash(assertion);
        let shard = self.shard();
        let generation = self.generation.load(Ordering::Acquire);
        {
            let s = shard.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = s.entries.get(&hash) {
                // Kept until `exp` only: past it the claims are checked again (leeway and all).
                if c.generation == generation
                    && now_s < c.identity.0.claims.exp
                    && *c.identity.0.assertion == *assertion
                {
                    return Ok(c.identity.clone());
                }
            }
        }
        let keys = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (_, claims): (jws::Header, AssertionClaims) =
            jws::verify(assertion, jws::TYP_ASSERTION, |kid| {
                keys.iter().find(|(k, _)| k == kid).map(|(_, p)| *p)
            })?;
        claims.check(now_s, &self.audience)?;
        if *claims.iss != *self.issuer {
            return Err(VerifyError::Issuer);
        }
        let identity = Identity(Arc::new(Inner {
            claims,
            assertion: assertion.into(),
        }));
        let mut s = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if s.entries.len() >= self.per_shard && !s.entries.contains_key(&hash) {
            if let Some(k) = s.entries.keys().next().copied() {
                s.entries.remove(&k);
            }
        }
        s.entries.insert(
            hash,
            Cached {
                identity: identity.clone(),
                generation,
            },
        );
        Ok(identity)
    }

    /// Verified assertions held now, over every shard.
    pub fn cached(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entries
                    .len()
            })
            .sum()
    }

    fn shard(&self) -> &Mutex<Shard> {
        let i = portcullis_link::shard::thread_index();
        &self.shards[i % self.shards.len()]
    }

    fn hash(&self, assertion: &str) -> u64 {
        let b = assertion.as_bytes();
        self.hasher
            .hash_one(&b[b.len().saturating_sub(HASHED_TAIL)..])
    }
}

/// The fixed body of every refusal, the gateway's own 401 body.
pub(crate) const UNAUTHORIZED_BODY: &str = r#"{"error":"unauthorized"}"#;

#[cfg(feature = "axum")]
mod extract {
    use super::{Identity, UNAUTHORIZED_BODY};
    use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
    use axum_core::response::{IntoResponse, Response};
    use http::request::Parts;
    use http::{header, HeaderValue, StatusCode};
    use std::convert::Infallible;

    /// The handler asked for an [`Identity`] and the call has none: it did not come through
    /// the SDK's verification (a public endpoint, or the router served outside a link).
    /// Answered with the same fixed 401 as a call whose assertion is refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    #[error("no verified identity")]
    pub struct IdentityRejection(());

    impl IntoResponse for IdentityRejection {
        fn into_response(self) -> Response {
            let mut resp = (StatusCode::UNAUTHORIZED, UNAUTHORIZED_BODY).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
    }

    /// The verified caller; rejects with 401 when the call has none.
    impl<S: Send + Sync> FromRequestParts<S> for Identity {
        type Rejection = IdentityRejection;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Identity>()
                .cloned()
                .ok_or(IdentityRejection(()))
        }
    }

    /// `Option<Identity>`: the verified caller, or `None` (a public endpoint).
    impl<S: Send + Sync> OptionalFromRequestParts<S> for Identity {
        type Rejection = Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Identity>().cloned())
        }
    }
}

#[cfg(feature = "axum")]
pub use extract::IdentityRejection;
