//! User access tokens: issued at login, verified locally on every call.
//!
//! A token is a compact JWS (`portcullis_link::jws`, EdDSA, `typ: at+jwt`) of
//! [`TokenClaims`] — `sub` (`user:<id>`), `ws`, `iat`, `exp`, `jti` (128 random bits), `aud` —
//! signed by the [`KeyRing`]'s current signer. Identity only: no roles, no scopes.
//!
//! Verifying one, in order: signature with the public key its `kid` names (a key unknown to
//! the ring, retired past its `not_after`, `alg: none` or any header but
//! `{alg, kid, typ}` is refused) → claims at the injected wall clock (`exp`, `iat`, `aud`) →
//! the subject's *standing* (disabled user or workspace, a password changed after `iat`).
//!
//! - **No store query per call.** Standings are cached per subject (bounded by
//!   `auth.cache_capacity`, for `auth.cache_ttl`), filled by one
//!   [`UserDirectory::user_for_verification`] per subject per lifetime, single-flight, with
//!   the API key lookups' concurrency bound (`auth.max_concurrent_lookups`, shared),
//!   `auth.max_pending_lookups` and `auth.lookup_timeout`: past them, fail closed (503).
//! - **Invalidated like keys.** The standings cache is dropped whenever the API key
//!   authenticator's generation poll sees the store change ([`super::Changes`]), so disabling
//!   a user or workspace, or a password change made elsewhere, refuses outstanding tokens
//!   within `auth.invalidation_poll`; a password changed through this gateway at once.
//! - **Signatures are checked once per token.** A token whose signature verified is
//!   remembered by its SHA-256 (bounded like the standings), so a client re-sending it costs a
//!   hash and two probes instead of an Ed25519 verification. Only the exact string that
//!   verified can hit; claims and standing are still checked on every call, and the key
//!   must still be in the ring.
//!
//! Password changes are compared at the second (`iat` is a NumericDate): a token is refused
//! when `iat` is before the change's second rounded up, and a token issued within that second
//! after the change gets `iat` = that rounded-up second ([`TokenAuthenticator::issue`]).

use futures_util::future::{BoxFuture, FutureExt, Shared};
use portcullis_link::jws::{self, JwsError, TokenClaims};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::keyring::KeyRing;
use super::users::{Standing, UserDirectory};
use super::{AuthFailure, Changes, CredentialKind, Identity, TokenFault, Via, WorkspaceRef};
use crate::clock::Clock;

/// Longest token lifetime allowed (`auth.token_ttl`).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Settings of token issue and verification (from `[auth]`).
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `aud` of issued tokens, and the only one accepted.
    pub audience: String,
    /// Lifetime of an issued token.
    pub ttl: Duration,
    /// Lifetime of a cached standing or verified signature.
    pub cache_ttl: Duration,
    /// Subjects (and, apart, verified tokens) held, at most.
    pub cache_capacity: usize,
    /// Distinct subjects waiting for or in a store lookup, at most.
    pub max_pending_lookups: usize,
    /// Deadline of one store lookup, waiting included.
    pub lookup_timeout: Duration,
    /// The wall clock claims are checked against.
    pub clock: Clock,
}

impl TokenSettings {
    /// From the configuration.
    pub fn from_config(c: &crate::config::AuthConfig) -> Self {
        Self {
            audience: c.token_audience.clone(),
            ttl: c.token_ttl,
            cache_ttl: c.cache_ttl,
            cache_capacity: c.cache_capacity,
            max_pending_lookups: c.max_pending_lookups,
            lookup_timeout: c.lookup_timeout,
            clock: Clock::system(),
        }
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self::from_config(&crate::config::AuthConfig::default())
    }
}

/// A token just issued. `Debug` masks it.
#[derive(Clone)]
pub struct IssuedToken {
    /// The compact JWS. Hand it to the caller once; never log it.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Its `jti`.
    pub jti: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("access_token", &"***")
            .field("expires_in", &self.expires_in)
            .field("jti", &self.jti)
            .finish()
    }
}

#[derive(Debug)]
struct SubjectEntry {
    /// `None`: no such user.
    standing: Option<Arc<Standing>>,
    fetched: Instant,
    /// [`Changes::current`] when it was fetched: a store change since makes it stale.
    changes: u64,
}

/// A token whose signature verified.
#[derive(Debug)]
struct Verified {
    claims: TokenClaims,
    user_id: String,
    kid: String,
    /// Built once, with the workspace name of the standing it was first checked against.
    identity: Arc<Identity>,
    inserted: Instant,
}

type Lookup = Result<Option<Arc<Standing>>, ()>;

struct Flight {
    epoch: u64,
    changes: u64,
    result: Shared<BoxFuture<'static, Lookup>>,
}

/// Issues and verifies user access tokens. See the module documentation.
pub struct TokenAuthenticator {
    ring: Arc<KeyRing>,
    users: Arc<dyn UserDirectory>,
    settings: TokenSettings,
    changes: Changes,
    subjects: RwLock<HashMap<String, SubjectEntry>>,
    verified: RwLock<HashMap<[u8; 32], Arc<Verified>>>,
    flights: Mutex<HashMap<String, Weak<Flight>>>,
    lookups: Arc<Semaphore>,
    /// Bumped by local invalidations: a lookup that started before one does not insert.
    epoch: AtomicU64,
}

impl std::fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthenticator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// `ceil(ms / 1000)`: the first whole second at or after `ms`.
fn ceil_s(ms: i64) -> i64 {
    ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0)
}

fn fault(e: JwsError) -> AuthFailure {
    match e {
        JwsError::Expired => AuthFailure::Expired,
        JwsError::Malformed => AuthFailure::Token(TokenFault::Malformed),
        JwsError::Header => AuthFailure::Token(TokenFault::Header),
        JwsError::UnknownKey => AuthFailure::Token(TokenFault::UnknownKey),
        JwsError::Signature => AuthFailure::Token(TokenFault::Signature),
        JwsError::Validity => AuthFailure::Token(TokenFault::Validity),
        JwsError::Audience => AuthFailure::Token(TokenFault::Audience),
    }
}

impl TokenAuthenticator {
    /// Verify against `ring` and `users`; `changes` is the store change feed of the API key
    /// authenticator's poll, `lookups` its store lookup turns (shared, so both kinds together
    /// stay within `auth.max_concurrent_lookups`).
    pub fn new(
        ring: Arc<KeyRing>,
        users: Arc<dyn UserDirectory>,
        settings: TokenSettings,
        changes: Changes,
        lookups: Arc<Semaphore>,
    ) -> Arc<Self> {
        Arc::new(Self {
            ring,
            users,
            settings,
            changes,
            subjects: RwLock::new(HashMap::new()),
            verified: RwLock::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            lookups,
            epoch: AtomicU64::new(0),
        })
    }

    /// The key ring tokens are signed and verified with.
    pub fn ring(&self) -> &Arc<KeyRing> {
        &self.ring
    }

    /// The settings.
    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Issue a token for user `user_id` of workspace `workspace_id`, whose password was set at
    /// `password_changed_at` (Unix ms). Fails closed (`Unavailable`) when the ring has no
    /// signing key.
    pub fn issue(
        &self,
        user_id: &str,
        workspace_id: &str,
        password_changed_at: i64,
    ) -> Result<IssuedToken, AuthFailure> {
        let now_ms = self.settings.clock.now_ms();
        let signer = self.ring.signer(now_ms).ok_or(AuthFailure::Unavailable)?;
        let now_s = now_ms.div_euclid(1000);
        let ttl = i64::try_from(self.settings.ttl.as_secs()).unwrap_or(86_400);
        let jti = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            rand::random::<[u8; 16]>(),
        );
        let claims = TokenClaims {
            sub: format!("user:{user_id}"),
            ws: workspace_id.to_string(),
            // Never before the password's change (see the module documentation).
            iat: now_s.max(ceil_s(password_changed_at)),
            exp: now_s + ttl,
            jti: jti.clone(),
            aud: self.settings.audience.clone(),
        };
        let token = jws::sign(&claims, &signer.kid, jws::TYP_ACCESS_TOKEN, signer.pair())
            .map_err(|_| AuthFailure::Unavailable)?;
        Ok(IssuedToken {
            access_token: token,
            expires_in: u64::try_from(claims.exp - now_s).unwrap_or(0),
            jti,
        })
    }

    /// Verify a bearer token.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, AuthFailure> {
        if token.len() > jws::MAX_TOKEN_BYTES {
            return Err(AuthFailure::Token(TokenFault::Malformed));
        }
        let now_ms = self.settings.clock.now_ms();
        let now_s = now_ms.div_euclid(1000);
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let verified = match self.verified_now(&digest, now_ms) {
            Some(v) => v,
            None => {
                let (_, claims): (jws::Header, TokenClaims) =
                    jws::verify(token, jws::TYP_ACCESS_TOKEN, |kid| {
                        self.ring.public(kid, now_ms)
                    })
                    .map_err(fault)?;
                claims
                    .check(now_s, &self.settings.audience)
                    .map_err(fault)?;
                let user_id = claims
                    .sub
                    .strip_prefix("user:")
                    .filter(|id| !id.is_empty())
                    .ok_or(AuthFailure::Token(TokenFault::Malformed))?
                    .to_string();
                let standing = self.standing(&user_id).await?;
                let kid = jws::peek_kid(token).unwrap_or_default();
                let v = Arc::new(Verified {
                    identity: Arc::new(Identity {
                        subject: claims.sub.as_str().into(),
                        workspace: WorkspaceRef {
                            id: claims.ws.as_str().into(),
                            name: standing
                                .as_ref()
                                .map_or("", |s| s.workspace.as_str())
                                .into(),
                        },
                        via: Via {
                            kind: CredentialKind::Token,
                            id: claims.jti.as_str().into(),
                        },
                        expires_at: Some(claims.exp.saturating_mul(1000)),
                        binding: None,
                    }),
                    claims,
                    user_id,
                    kid,
                    inserted: Instant::now(),
                });
                // Remembered whatever the standing says: the signature is what it saves.
                self.remember(digest, v.clone());
                Self::judge(&v.claims, standing.as_deref())?;
                return Ok(v.identity.clone());
            }
        };
        verified
            .claims
            .check(now_s, &self.settings.audience)
            .map_err(fault)?;
        let standing = self.standing(&verified.user_id).await?;
        Self::judge(&verified.claims, standing.as_deref())?;
        Ok(verified.identity.clone())
    }

    /// May the subject of `claims`, standing as `standing`, still call?
    fn judge(claims: &TokenClaims, standing: Option<&Standing>) -> Result<(), AuthFailure> {
        let s = standing.ok_or(AuthFailure::Unknown)?;
        if s.disabled || s.workspace_disabled {
            return Err(AuthFailure::Disabled);
        }
        if s.workspace_id != claims.ws {
            return Err(AuthFailure::Unknown);
        }
        if claims.iat < ceil_s(s.password_changed_at) {
            return Err(AuthFailure::Stale);
        }
        Ok(())
    }

    /// A verified token by its digest, if its key still verifies at `now_ms`.
    fn verified_now(&self, digest: &[u8; 32], now_ms: i64) -> Option<Arc<Verified>> {
        let v = self.verified.read().ok()?.get(digest).cloned()?;
        if Instant::now().saturating_duration_since(v.inserted) >= self.settings.cache_ttl {
            return None;
        }
        self.ring.public(&v.kid, now_ms)?;
        Some(v)
    }

    fn remember(&self, digest: [u8; 32], v: Arc<Verified>) {
        if let Ok(mut m) = self.verified.write() {
            if m.len() >= self.settings.cache_capacity.max(1) {
                // Only tokens with a valid signature get here: holders of real tokens. Start
                // afresh rather than scan.
                m.clear();
            }
            m.insert(digest, v);
        }
    }

    /// The standing of `user_id`, cached or from one (shared) store lookup.
    async fn standing(&self, user_id: &str) -> Result<Option<Arc<Standing>>, AuthFailure> {
        if let Some(s) = self.cached(user_id) {
            return Ok(s);
        }
        self.lookup(user_id).await
    }

    fn cached(&self, user_id: &str) -> Option<Option<Arc<Standing>>> {
        let cache = self.subjects.read().ok()?;
        let e = cache.get(user_id)?;
        let fresh = Instant::now().saturating_duration_since(e.fetched) < self.settings.cache_ttl
            && e.changes == self.changes.current();
        fresh.then(|| e.standing.clone())
    }

    async fn lookup(&self, user_id: &str) -> Result<Option<Arc<Standing>>, AuthFailure> {
        let flight = {
            let Ok(mut flights) = self.flights.lock() else {
                return Err(AuthFailure::Unavailable);
            };
            match flights.get(user_id).and_then(Weak::upgrade) {
                Some(f) => f,
                None => {
                    if flights.len() >= self.settings.max_pending_lookups {
                        flights.retain(|_, f| f.strong_count() > 0);
                    }
                    if flights.len() >= self.settings.max_pending_lookups {
                        tracing::debug!("subject lookups at their bound: failing closed");
                        return Err(AuthFailure::Unavailable);
                    }
                    let f = Arc::new(Flight {
                        epoch: self.epoch.load(Ordering::Acquire),
                        changes: self.changes.current(),
                        result: self.start_lookup(user_id),
                    });
                    flights.insert(user_id.to_owned(), Arc::downgrade(&f));
                    f
                }
            }
        };
        let result = flight.result.clone().await;
        let first = match self.flights.lock() {
            Ok(mut flights) => {
                let ours = flights
                    .get(user_id)
                    .is_some_and(|f| std::ptr::eq(f.as_ptr(), Arc::as_ptr(&flight)));
                if ours {
                    flights.remove(user_id);
                }
                ours
            }
            Err(_) => false,
        };
        let found = result.map_err(|()| AuthFailure::Unavailable)?;
        if first {
            self.insert(&flight, user_id, found.clone());
        }
        Ok(found)
    }

    fn start_lookup(&self, user_id: &str) -> Shared<BoxFuture<'static, Lookup>> {
        let users = self.users.clone();
        let turns = self.lookups.clone();
        let deadline = self.settings.lookup_timeout;
        let user_id = user_id.to_owned();
        async move {
            let work = async {
                let _turn = turns.acquire().await.map_err(|_| ())?;
                users
                    .user_for_verification(&user_id)
                    .await
                    .map_err(|e| tracing::warn!(error = %e, "identity store unavailable"))
            };
            match tokio::time::timeout(deadline, work).await {
                Ok(r) => Ok(r?.map(Arc::new)),
                Err(_) => {
                    tracing::warn!("identity store lookup timed out");
                    Err(())
                }
            }
        }
        .boxed()
        .shared()
    }

    fn insert(&self, flight: &Flight, user_id: &str, standing: Option<Arc<Standing>>) {
        let Ok(mut cache) = self.subjects.write() else {
            return;
        };
        let changes = self.changes.current();
        if self.epoch.load(Ordering::Acquire) != flight.epoch || changes != flight.changes {
            return;
        }
        let now = Instant::now();
        if cache.len() >= self.settings.cache_capacity.max(1) && !cache.contains_key(user_id) {
            let ttl = self.settings.cache_ttl;
            cache.retain(|_, e| {
                now.saturating_duration_since(e.fetched) < ttl && e.changes == changes
            });
            if cache.len() >= self.settings.cache_capacity.max(1) {
                if let Some(k) = cache.keys().next().cloned() {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            user_id.to_owned(),
            SubjectEntry {
                standing,
                fetched: now,
                changes,
            },
        );
    }

    /// Forget what is cached about `user_id` (a change made through this gateway).
    pub fn invalidate(&self, user_id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut c) = self.subjects.write() {
            c.remove(user_id);
        }
        if let Ok(mut f) = self.flights.lock() {
            f.remove(user_id);
        }
    }

    /// Subjects in the cache (fresh or not).
    pub fn cached_subjects(&self) -> usize {
        self.subjects.read().map(|c| c.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keyring::{KeySet, SigningKey};
    use crate::auth::users::{LoginUser, MemoryUsers};
    use crate::clock::ManualClock;

    struct Fixture {
        clock: ManualClock,
        users: Arc<MemoryUsers>,
        changes: Changes,
        tokens: Arc<TokenAuthenticator>,
    }

    fn user() -> LoginUser {
        LoginUser {
            id: "usr_1".into(),
            username: "alice".into(),
            workspace_id: "ws_1".into(),
            workspace: "default".into(),
            password_hash: String::new(),
            disabled: false,
            workspace_disabled: false,
            password_changed_at: 1_000_000,
        }
    }

    fn fixture() -> Fixture {
        let clock = ManualClock::new(2_000_000_000_000);
        let key = SigningKey::generate(0).unwrap().key;
        let ring = Arc::new(KeyRing::new(KeySet::new(vec![Arc::new(key)]), 0));
        let users = MemoryUsers::new();
        users.put(user());
        let changes = Changes::default();
        let settings = TokenSettings {
            clock: clock.clock(),
            ..TokenSettings::default()
        };
        let tokens = TokenAuthenticator::new(
            ring,
            users.clone(),
            settings,
            changes.clone(),
            Arc::new(Semaphore::new(4)),
        );
        Fixture {
            clock,
            users,
            changes,
            tokens,
        }
    }

    #[tokio::test]
    async fn an_issued_token_verifies_to_the_user_and_costs_one_lookup() {
        let f = fixture();
        let t = f.tokens.issue("usr_1", "ws_1", 0).unwrap();
        assert_eq!(t.expires_in, 900);
        assert!(!format!("{t:?}").contains(&t.access_token));
        let id = f.tokens.authenticate(&t.access_token).await.unwrap();
        assert_eq!(&*id.subject, "user:usr_1");
        assert_eq!(&*id.workspace.id, "ws_1");
        assert_eq!(&*id.workspace.name, "default");
        assert_eq!(id.via.kind, CredentialKind::Token);
        assert_eq!(&*id.via.id, t.jti);
        for _ in 0..3 {
            f.tokens.authenticate(&t.access_token).await.unwrap();
        }
        assert_eq!(f.users.verification_queries(), 1);
    }

    #[tokio::test]
    async fn expiry_follows_the_injected_clock() {
        let f = fixture();
        let t = f.tokens.issue("usr_1", "ws_1", 0).unwrap();
        f.tokens.authenticate(&t.access_token).await.unwrap();
        f.clock
            .advance(Duration::from_secs(900 + jws::LEEWAY_S as u64));
        assert_eq!(
            f.tokens.authenticate(&t.access_token).await.unwrap_err(),
            AuthFailure::Expired
        );
    }

    #[tokio::test]
    async fn a_store_change_refuses_a_disabled_user_on_the_next_call() {
        let f = fixture();
        let t = f.tokens.issue("usr_1", "ws_1", 0).unwrap();
        f.tokens.authenticate(&t.access_token).await.unwrap();
        f.users.update("usr_1", |u| u.disabled = true);
        assert!(
            f.tokens.authenticate(&t.access_token).await.is_ok(),
            "cached"
        );
        f.changes.bump();
        assert_eq!(
            f.tokens.authenticate(&t.access_token).await.unwrap_err(),
            AuthFailure::Disabled
        );
        f.users.update("usr_1", |u| {
            u.disabled = false;
            u.workspace_disabled = true;
        });
        f.changes.bump();
        assert_eq!(
            f.tokens.authenticate(&t.access_token).await.unwrap_err(),
            AuthFailure::Disabled
        );
    }

    #[tokio::test]
    async fn a_token_from_before_a_password_change_is_refused_and_one_after_is_not() {
        let f = fixture();
        let before = f.tokens.issue("usr_1", "ws_1", 0).unwrap();
        // The change lands within the same second as the old token's `iat`.
        let changed = f.clock.now_ms() + 300;
        f.clock.advance(Duration::from_millis(400));
        f.users.update("usr_1", |u| u.password_changed_at = changed);
        f.tokens.invalidate("usr_1");
        assert_eq!(
            f.tokens
                .authenticate(&before.access_token)
                .await
                .unwrap_err(),
            AuthFailure::Stale
        );
        let after = f.tokens.issue("usr_1", "ws_1", changed).unwrap();
        assert!(f.tokens.authenticate(&after.access_token).await.is_ok());
    }

    #[tokio::test]
    async fn forged_tokens_are_refused() {
        let f = fixture();
        let t = f.tokens.issue("usr_1", "ws_1", 0).unwrap();
        let parts: Vec<&str> = t.access_token.split('.').collect();
        // Claims changed under the original signature.
        let mut claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1])
                .unwrap(),
        )
        .unwrap();
        claims["sub"] = "user:usr_2".into();
        let p = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims.to_string(),
        );
        let resigned = format!("{}.{p}.{}", parts[0], parts[2]);
        assert_eq!(
            f.tokens.authenticate(&resigned).await.unwrap_err(),
            AuthFailure::Token(TokenFault::Signature)
        );
        // Signed by a key the ring does not hold.
        let stranger = SigningKey::generate(0).unwrap().key;
        let c: TokenClaims = serde_json::from_value(claims).unwrap();
        let other = jws::sign(&c, "stranger", jws::TYP_ACCESS_TOKEN, stranger.pair()).unwrap();
        assert_eq!(
            f.tokens.authenticate(&other).await.unwrap_err(),
            AuthFailure::Token(TokenFault::UnknownKey)
        );
        let none = format!(
            "{}.{}.",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                r#"{"alg":"none","typ":"at+jwt","kid":"k"}"#
            ),
            parts[1]
        );
        assert!(matches!(
            f.tokens.authenticate(&none).await.unwrap_err(),
            AuthFailure::Token(TokenFault::Header | TokenFault::Malformed)
        ));
    }
}
