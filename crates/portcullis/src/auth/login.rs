//! Users prove who they are: the gateway operations `POST /api/v1/auth/login`,
//! `POST /api/v1/auth/change-password` and `GET /.well-known/jwks.json`.
//!
//! **Login** `{workspace, username, password}` (JSON, at most [`MAX_BODY_BYTES`], unknown
//! fields refused) → `200 {"access_token", "token_type": "Bearer", "expires_in"}`. In order,
//! each step cheaper than the next and none skipped by a refusal of the one before:
//!
//! 1. the account and the source address are not locked out (in memory, then the shared
//!    per-account counter in the store): locked → 401 `throttled`, no hash, no user query;
//! 2. a place in the bounded hashing queue, or 503 at once;
//! 3. the user, by workspace name and username (one query);
//! 4. Argon2id of the presented password against the user's hash — or against the dummy for
//!    an unknown workspace or user, at the same cost;
//! 5. disabled user or workspace → 401 `disabled`; otherwise a token.
//!
//! Every refusal is the same fixed 401 as a bad API key, its reason (`unknown`, `wrong`,
//! `disabled`, `throttled`, `malformed`) to the audit sink and
//! `portcullis_auth_failures_total`. A wrong password or unknown user counts towards the
//! account's and the address's lockout; a right one clears the account's count and, when the
//! stored hash is weaker than the configured parameters, rehashes it (before the token is
//! issued: storing a hash moves `password_changed_at`, which ends the user's other tokens —
//! once, when the parameters are raised).
//!
//! **Change password** (a user access token) `{current_password, new_password}` → 204: the
//! current password is checked like a login (throttled the same way), the new one against the
//! policy; `password_changed_at` is set, so every token issued before it — the caller's
//! included — is refused from then on.
//!
//! **JWKS** is public: the keys that verify now ([`KeyRing::jwks`]).

use axum::extract::{Extension, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;

use super::keyring::KeyRing;
use super::password::{Password, PasswordError, PasswordHasher, Verdict, MAX_PASSWORD_BYTES};
use super::throttle::{LoginThrottle, ThrottleKey, ThrottleStore};
use super::token::{IssuedToken, TokenAuthenticator};
use super::users::{LoginUser, UserDirectory};
use super::{AuthFailure, CredentialKind, CredentialKinds, Identity};
use crate::audit::{AuditSink, Refusal};
use crate::clock::Clock;
use crate::error::GatewayError;
use crate::pipeline::{AuthPolicy, Caller, Operation, PathMatch};

/// Largest login or change-password body, bytes.
pub const MAX_BODY_BYTES: usize = 8 * 1024;
/// Path of the login operation.
pub const LOGIN_PATH: &str = "/api/v1/auth/login";
/// Path of the change-password operation.
pub const CHANGE_PASSWORD_PATH: &str = "/api/v1/auth/change-password";
/// Path of the JWK set.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Longest workspace name or username looked up; longer ones are refused without a query.
const MAX_NAME_BYTES: usize = 128;

/// `POST /api/v1/auth/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Workspace name.
    pub workspace: String,
    /// Username.
    pub username: String,
    /// Password.
    pub password: Password,
}

/// `POST /api/v1/auth/change-password`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The password now.
    pub current_password: Password,
    /// The password from now on (at least 12 characters, at most 1024 bytes).
    pub new_password: Password,
}

/// The answer to a successful login (RFC 6749 §5.1).
#[derive(Serialize)]
pub struct TokenResponse<'a> {
    /// The token.
    pub access_token: &'a str,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// Why a login or a password change did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// Refused: the fixed 401, with this reason for the audit log.
    Refused(AuthFailure),
    /// The new password breaks the policy: 400.
    Policy(&'static str),
    /// Too many password checks in progress: 503 at once.
    Busy,
    /// The store could not answer: 503 (fail closed).
    Unavailable,
}

impl From<PasswordError> for LoginError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => Self::Busy,
            PasswordError::Policy(m) => Self::Policy(m),
            _ => Self::Unavailable,
        }
    }
}

/// Login and password changes. See the module documentation.
pub struct Login {
    users: Arc<dyn UserDirectory>,
    hasher: Arc<PasswordHasher>,
    throttle: Arc<LoginThrottle>,
    shared: Option<Arc<dyn ThrottleStore>>,
    tokens: Arc<TokenAuthenticator>,
    audit: AuditSink,
    clock: Clock,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("hasher", &self.hasher)
            .finish_non_exhaustive()
    }
}

impl Login {
    /// Login over `users`, hashing with `hasher`, throttled by `throttle` (and `shared`, the
    /// store's per-account counter, when there is one), issuing with `tokens`; refusals go to
    /// `audit`.
    pub fn new(
        users: Arc<dyn UserDirectory>,
        hasher: Arc<PasswordHasher>,
        throttle: Arc<LoginThrottle>,
        shared: Option<Arc<dyn ThrottleStore>>,
        tokens: Arc<TokenAuthenticator>,
        audit: AuditSink,
    ) -> Arc<Self> {
        let clock = tokens.settings().clock.clone();
        Arc::new(Self {
            users,
            hasher,
            throttle,
            shared,
            tokens,
            audit,
            clock,
        })
    }

    /// The password hasher.
    pub fn hasher(&self) -> &Arc<PasswordHasher> {
        &self.hasher
    }

    /// The login throttle.
    pub fn throttle(&self) -> &Arc<LoginThrottle> {
        &self.throttle
    }

    fn refuse(&self, failure: AuthFailure, peer: Option<IpAddr>) -> LoginError {
        self.audit.refused(Refusal {
            reason: failure.as_str(),
            credential_id: None,
            peer,
            capability: None,
        });
        LoginError::Refused(failure)
    }

    /// Is `account` (or `ip`) locked, here or — for the account — in the shared counter?
    async fn locked(
        &self,
        account: &ThrottleKey,
        ip: Option<&ThrottleKey>,
    ) -> Result<bool, LoginError> {
        let keys: Vec<&ThrottleKey> = std::iter::once(account).chain(ip).collect();
        if self.throttle.check(&keys).is_err() {
            return Ok(true);
        }
        let (Some(shared), Some(key)) = (&self.shared, account.store_key()) else {
            return Ok(false);
        };
        let now = self.clock.now_ms();
        let state = shared.throttle_state(&key, now).await.map_err(|e| {
            tracing::warn!(error = %e, "login throttle store unavailable");
            LoginError::Unavailable
        })?;
        if state.and_then(|s| s.locked_until).is_some_and(|t| t > now) {
            // Locked by failures seen on other nodes: refuse here without asking again.
            self.throttle.lock(account);
            return Ok(true);
        }
        Ok(false)
    }

    /// Count a failed password check against `account` and `ip`.
    async fn failed(&self, account: &ThrottleKey, ip: Option<&ThrottleKey>) {
        self.throttle.failed(account);
        if let Some(ip) = ip {
            self.throttle.failed(ip);
        }
        let (Some(shared), Some(key)) = (&self.shared, account.store_key()) else {
            return;
        };
        let s = self.throttle.settings();
        let r = shared
            .throttle_failure(
                &key,
                self.clock.now_ms(),
                i64::try_from(s.window.as_millis()).unwrap_or(i64::MAX),
                s.max_failures,
                i64::try_from(s.lockout.as_millis()).unwrap_or(i64::MAX),
            )
            .await;
        match r {
            Ok(state) if state.locked_until.is_some() => self.throttle.lock(account),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot record a failed login in the store"),
        }
    }

    async fn succeeded(&self, account: &ThrottleKey) {
        self.throttle.succeeded(account);
        if let (Some(shared), Some(key)) = (&self.shared, account.store_key()) {
            if let Err(e) = shared.throttle_clear(&key).await {
                tracing::warn!(error = %e, "cannot clear the login throttle in the store");
            }
        }
    }

    /// Check `password` for the user `found` (or the dummy when `None`) with the throttle of
    /// `account`/`ip`; the user when it matches.
    async fn check_password(
        self: &Arc<Self>,
        place: super::password::Place,
        account: &ThrottleKey,
        ip: Option<&ThrottleKey>,
        found: Option<LoginUser>,
        password: &Password,
        peer: Option<IpAddr>,
    ) -> Result<LoginUser, LoginError> {
        let verdict = self
            .hasher
            .verify_reserved(
                place,
                password,
                found.as_ref().map(|u| u.password_hash.as_str()),
            )
            .await?;
        let (user, rehash) = match (found, verdict) {
            (Some(u), Verdict::Match { rehash }) => (u, rehash),
            (found, _) => {
                self.failed(account, ip).await;
                let reason = if found.is_some() {
                    AuthFailure::Wrong
                } else {
                    AuthFailure::Unknown
                };
                return Err(self.refuse(reason, peer));
            }
        };
        self.succeeded(account).await;
        let mut user = user;
        if rehash {
            // Before the token is issued: storing a hash sets `password_changed_at`, and the
            // token must not predate it. Skipped (not failed) when the queue is full or the
            // store refuses; the next login tries again. Other tokens of the user end here:
            // a rehash happens once, when the parameters are raised.
            match self.hasher.hash(password).await {
                Ok(phc) => {
                    let now = self.clock.now_ms();
                    match self.users.set_password_hash(&user.id, &phc, now).await {
                        Ok(changed) => {
                            user.password_changed_at = changed;
                            self.tokens.invalidate(&user.id);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot store a rehashed password"),
                    }
                }
                Err(e) => tracing::debug!(error = %e, "password rehash skipped"),
            }
        }
        Ok(user)
    }

    /// Purge the shared throttle table every minute (stale rows, and a bound of
    /// `auth.login_throttle_capacity` rows) until `shutdown`.
    pub fn start(
        self: &Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let shared = self.shared.clone()?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let s = me.throttle.settings();
                        let window = i64::try_from(s.window.max(s.lockout).as_millis())
                            .unwrap_or(i64::MAX);
                        let cap = u64::try_from(s.capacity).unwrap_or(u64::MAX);
                        if let Err(e) = shared.throttle_purge(me.clock.now_ms(), window, cap).await {
                            tracing::debug!(error = %e, "cannot purge the login throttle table");
                        }
                    }
                }
            }
        }))
    }

    /// Log in. See the module documentation.
    pub async fn login(
        self: &Arc<Self>,
        req: &LoginRequest,
        peer: Option<IpAddr>,
    ) -> Result<IssuedToken, LoginError> {
        if req.workspace.is_empty()
            || req.username.is_empty()
            || req.workspace.len() > MAX_NAME_BYTES
            || req.username.len() > MAX_NAME_BYTES
            || req.password.expose().len() > MAX_PASSWORD_BYTES
        {
            return Err(self.refuse(AuthFailure::Malformed, peer));
        }
        let account = ThrottleKey::account(&req.workspace, &req.username);
        let ip = peer.map(ThrottleKey::Ip);
        if self.locked(&account, ip.as_ref()).await? {
            return Err(self.refuse(AuthFailure::Throttled, peer));
        }
        let place = self.hasher.reserve()?;
        let found = self
            .users
            .login_user(&req.workspace, &req.username)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "identity store unavailable");
                LoginError::Unavailable
            })?;
        let user = self
            .check_password(place, &account, ip.as_ref(), found, &req.password, peer)
            .await?;
        if user.disabled || user.workspace_disabled {
            return Err(self.refuse(AuthFailure::Disabled, peer));
        }
        self.tokens
            .issue(&user.id, &user.workspace_id, user.password_changed_at)
            .await
            .map_err(|_| LoginError::Unavailable)
    }

    /// Change the password of the user `identity` (proven by a token).
    pub async fn change_password(
        self: &Arc<Self>,
        identity: &Identity,
        req: &ChangePasswordRequest,
        peer: Option<IpAddr>,
    ) -> Result<(), LoginError> {
        let user_id = match (identity.via.kind, identity.subject.strip_prefix("user:")) {
            (CredentialKind::Token, Some(id)) => id,
            _ => return Err(self.refuse(AuthFailure::Malformed, peer)),
        };
        req.new_password.check_new()?;
        let place = self.hasher.reserve()?;
        let found = self.users.login_user_by_id(user_id).await.map_err(|e| {
            tracing::warn!(error = %e, "identity store unavailable");
            LoginError::Unavailable
        })?;
        let Some(found) = found else {
            return Err(self.refuse(AuthFailure::Unknown, peer));
        };
        let account = ThrottleKey::account(&found.workspace, &found.username);
        let ip = peer.map(ThrottleKey::Ip);
        if self.locked(&account, ip.as_ref()).await? {
            return Err(self.refuse(AuthFailure::Throttled, peer));
        }
        let user = self
            .check_password(
                place,
                &account,
                ip.as_ref(),
                Some(found),
                &req.current_password,
                peer,
            )
            .await?;
        if user.disabled || user.workspace_disabled {
            return Err(self.refuse(AuthFailure::Disabled, peer));
        }
        let phc = self.hasher.hash(&req.new_password).await?;
        let now = self.clock.now_ms();
        self.users
            .set_password_hash(&user.id, &phc, now)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot store a new password");
                LoginError::Unavailable
            })?;
        self.tokens.invalidate(&user.id);
        Ok(())
    }
}

/// An error as the one rescue point answers it.
pub(crate) fn rescued(e: GatewayError) -> Response {
    e.into_response().map(axum::body::Body::new)
}

fn answer(e: LoginError) -> Response {
    rescued(match e {
        LoginError::Refused(f) => GatewayError::Unauthorized(f.as_str()),
        LoginError::Policy(_) => GatewayError::BadRequest("password policy"),
        LoginError::Busy => GatewayError::Overloaded,
        LoginError::Unavailable => GatewayError::Unavailable("identity store"),
    })
}

/// Read a JSON body of at most [`MAX_BODY_BYTES`] strictly into `T`.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, Response> {
    json_body_or_empty(req)
        .await?
        .ok_or_else(|| rescued(GatewayError::BadRequest("json")))
}

/// [`json_body`], where an empty body (or only whitespace) is `None`: an operation whose
/// every field has a default.
pub(crate) async fn json_body_or_empty<T: serde::de::DeserializeOwned>(
    req: Request,
) -> Result<Option<T>, Response> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES);
    let bytes: Bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(rescued(GatewayError::PayloadTooLarge))
        }
        Err(_) => return Err(rescued(GatewayError::BadRequest("body"))),
    };
    // The body may hold a password: wiped once parsed.
    let bytes = zeroize::Zeroizing::new(bytes.to_vec());
    // An object, not the same fields as an array (serde would accept `[ws, user, pw]`).
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Ok(None),
        Some(b'{') => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| rescued(GatewayError::BadRequest("json"))),
        Some(_) => Err(rescued(GatewayError::BadRequest("json"))),
    }
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The three operations, to register with the pipeline.
pub fn operations(login: Arc<Login>, ring: Arc<KeyRing>, clock: Clock) -> Vec<Operation> {
    let l = login.clone();
    let login_router = axum::Router::new().route(
        LOGIN_PATH,
        post(move |caller: Option<Extension<Caller>>, req: Request| {
            let login = l.clone();
            async move {
                let peer = caller.and_then(|Extension(c)| c.peer);
                let body: LoginRequest = match json_body(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match login.login(&body, peer).await {
                    Ok(t) => no_store(
                        axum::Json(TokenResponse {
                            access_token: &t.access_token,
                            token_type: "Bearer",
                            expires_in: t.expires_in,
                        })
                        .into_response(),
                    ),
                    Err(e) => answer(e),
                }
            }
        }),
    );
    let change_router = axum::Router::new().route(
        CHANGE_PASSWORD_PATH,
        post(move |caller: Option<Extension<Caller>>, req: Request| {
            let login = login.clone();
            async move {
                let (identity, peer) = match caller {
                    Some(Extension(c)) => (c.identity, c.peer),
                    None => (None, None),
                };
                let Some(identity) = identity else {
                    // The pipeline authenticated the call: an identity is always there.
                    return rescued(GatewayError::Unauthorized("missing"));
                };
                let body: ChangePasswordRequest = match json_body(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match login.change_password(&identity, &body, peer).await {
                    Ok(()) => StatusCode::NO_CONTENT.into_response(),
                    Err(e) => answer(e),
                }
            }
        }),
    );
    let jwks_router = axum::Router::new().route(
        JWKS_PATH,
        get(move || {
            let ring = ring.clone();
            let clock = clock.clone();
            async move {
                let mut r = axum::Json(ring.jwks(clock.now_ms())).into_response();
                // Keys are published a publish delay before they sign; a verifier that caches
                // this must refetch on an unknown kid.
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                r
            }
        }),
    );
    vec![
        Operation {
            name: "login",
            path: PathMatch::Exact(LOGIN_PATH),
            requires: crate::access::Requirement::Public,
            auth: AuthPolicy::Public,
            router: login_router,
        },
        Operation {
            name: "change_password",
            path: PathMatch::Exact(CHANGE_PASSWORD_PATH),
            requires: crate::access::Requirement::Authenticated,
            auth: AuthPolicy::Credential(CredentialKinds::TOKEN),
            router: change_router,
        },
        Operation {
            name: "jwks",
            path: PathMatch::Exact(JWKS_PATH),
            requires: crate::access::Requirement::Public,
            auth: AuthPolicy::Public,
            router: jwks_router,
        },
    ]
}
