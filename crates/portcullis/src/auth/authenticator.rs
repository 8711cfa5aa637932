//! API key verification, cached and invalidated.
//!
//! Verifying a key: parse and checksum (junk stops here, before any lookup) → the key's
//! record and live secret HMACs, from the cache or the store → HMAC-SHA-256 of the presented
//! secret under the pepper → constant-time comparison with every live secret → revoked?
//! expired? An unknown key id still computes the HMAC and compares it against a dummy, so
//! unknown and known-but-wrong cost the same.
//!
//! The cache holds what the store said about a key id (record + secret HMACs), never a
//! "this string is valid" verdict: each call recomputes the HMAC, so a wrong secret can never
//! hit a cached success. It is bounded (`auth.cache_capacity`), entries live `auth.cache_ttl`,
//! and it is invalidated — never merely left to expire — when a key changes: at once for
//! changes made through this authenticator, and within `auth.invalidation_poll` for changes
//! made elsewhere (the CLI, other nodes), which bump the store's change generation.
//!
//! `last_used_at` is kept in memory and written by the background task at most once a minute
//! per key, off the request path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::audit::{Coalescer, Failure, CHANNEL_CAPACITY};
use super::key::{self, NewKey};
use super::{AuthFailure, CredentialKind, Identity, Pepper, Via, WorkspaceRef};
use crate::access::{GrantSource, Grants};
use crate::store::{now_ms, KeyRecord, KeySecret, Store, StoreError};

/// How often `last_used_at` is written for a key, at most.
pub const LAST_USED_INTERVAL: Duration = Duration::from_secs(60);

/// Settings of the authenticator (from `[auth]`).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Cache entry lifetime.
    pub cache_ttl: Duration,
    /// Cache size bound.
    pub cache_capacity: usize,
    /// Store change poll interval.
    pub invalidation_poll: Duration,
    /// Audit log bound.
    pub audit_max_rows: u64,
}

impl AuthSettings {
    /// From the configuration.
    pub fn from_config(c: &crate::config::AuthConfig) -> Self {
        Self {
            cache_ttl: c.cache_ttl,
            cache_capacity: c.cache_capacity,
            invalidation_poll: c.invalidation_poll,
            audit_max_rows: c.audit_max_rows,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self::from_config(&crate::config::AuthConfig::default())
    }
}

/// What the store said about a key id.
#[derive(Debug)]
struct Known {
    /// The record's identity fields; the rest of the record the check needs is below.
    identity: Arc<Identity>,
    /// The key's scopes, handed to `crate::access` through [`GrantSource`].
    grants: Arc<Grants>,
    revoked_at: Option<i64>,
    secrets: Vec<KeySecret>,
    /// When this entry last reported a use to `last_used` (ms), so the shared map's lock is
    /// taken about once a second per key instead of on every call.
    noted_ms: AtomicI64,
}

#[derive(Debug)]
struct Entry {
    key: Arc<Known>,
    fetched: Instant,
}

/// A key the authenticator just issued (create, rotate, bootstrap): the record and the raw
/// key, to be shown exactly once.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// The stored record.
    pub record: KeyRecord,
    /// The whole key. Show once; never log.
    pub api_key: String,
}

/// What [`ApiKeyAuthenticator::create_key`] needs.
#[derive(Debug, Clone)]
pub struct CreateKey {
    /// Workspace name.
    pub workspace: String,
    /// Display name.
    pub name: String,
    /// Scopes (capability names, or `*`).
    pub scopes: Vec<String>,
    /// Lifetime; `None`: no expiry.
    pub expires_in: Option<Duration>,
    /// Key id; `None`: generated.
    pub key_id: Option<String>,
}

/// Verifies API keys for the gateway. See the module documentation.
pub struct ApiKeyAuthenticator {
    store: Store,
    pepper: Pepper,
    settings: AuthSettings,
    cache: RwLock<HashMap<String, Entry>>,
    /// Bumped by every invalidation: a lookup that started before one does not insert.
    epoch: AtomicU64,
    generation: AtomicI64,
    last_used: Mutex<HashMap<String, i64>>,
    failures: mpsc::Sender<Failure>,
    failures_rx: Mutex<Option<mpsc::Receiver<Failure>>>,
    dummy: [u8; 32],
}

impl std::fmt::Debug for ApiKeyAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyAuthenticator")
            .field("store", &self.store.dialect())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The identity a key proves, and apart from it the key's grants (its scopes): the identity
/// carries no policy (`crate::access`).
fn to_identity(r: KeyRecord) -> (Identity, Grants) {
    let key_id: Arc<str> = r.key_id.into();
    let identity = Identity {
        subject: format!("key:{key_id}").into(),
        workspace: WorkspaceRef {
            id: r.workspace_id.into(),
            name: r.workspace.into(),
        },
        via: Via {
            kind: CredentialKind::ApiKey,
            id: key_id,
        },
        expires_at: r.expires_at,
        binding: None,
    };
    (identity, Grants::new(r.scopes))
}

/// Check and normalise scopes.
fn check_scopes(scopes: &[String]) -> Result<Vec<String>, StoreError> {
    if scopes.is_empty() {
        return Err(StoreError::Invalid(
            "a key needs at least one scope (capability name, or * for all)".into(),
        ));
    }
    if scopes.len() > super::MAX_SCOPES {
        return Err(StoreError::Invalid(format!(
            "at most {} scopes",
            super::MAX_SCOPES
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for s in scopes {
        let s = s.trim();
        if !super::valid_scope(s) {
            return Err(StoreError::Invalid(format!(
                "invalid scope {s:?}: scopes are * or 1-128 of [a-z0-9._:-]"
            )));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

impl ApiKeyAuthenticator {
    /// An authenticator over `store`, hashing under `pepper`. Call [`Self::start`] to run its
    /// background work (audit writer, last-used writer, change poll).
    pub fn new(store: Store, pepper: Pepper, settings: AuthSettings) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let dummy = pepper.hash_secret("unknown-key", "unknown-secret");
        Arc::new(Self {
            store,
            pepper,
            settings,
            cache: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            generation: AtomicI64::new(i64::MIN),
            last_used: Mutex::new(HashMap::new()),
            failures: tx,
            failures_rx: Mutex::new(Some(rx)),
            dummy,
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The pepper version new hashes are made with.
    pub fn pepper_version(&self) -> u32 {
        self.pepper.version()
    }

    /// Verify a raw key (`pcs_…`).
    pub async fn authenticate(&self, raw: &str) -> Result<Arc<Identity>, AuthFailure> {
        let parsed = key::parse(raw).map_err(|_| AuthFailure::Malformed)?;
        let now = now_ms();
        let presented = self.pepper.hash_secret(parsed.key_id, parsed.secret);
        let known = match self.cached(parsed.key_id) {
            Some(k) => k,
            None => {
                let epoch = self.epoch.load(Ordering::Acquire);
                let found = self
                    .store
                    .key_for_verification(parsed.key_id, now)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "identity store unavailable");
                        AuthFailure::Unavailable
                    })?;
                let Some((record, secrets)) = found else {
                    // Same work as a known key: one comparison against a dummy.
                    let _ = bool::from(presented[..].ct_eq(&self.dummy[..]));
                    return Err(AuthFailure::Unknown);
                };
                let revoked_at = record.revoked_at;
                let (identity, grants) = to_identity(record);
                let k = Arc::new(Known {
                    revoked_at,
                    identity: Arc::new(identity),
                    grants: Arc::new(grants),
                    secrets,
                    noted_ms: AtomicI64::new(0),
                });
                self.insert(epoch, k.clone());
                k
            }
        };
        if !secrets_match(&known.secrets, &presented, self.pepper.version(), now) {
            return Err(AuthFailure::Wrong);
        }
        if known.revoked_at.is_some() {
            return Err(AuthFailure::Revoked);
        }
        if known.identity.is_expired(now) {
            return Err(AuthFailure::Expired);
        }
        // `last_used_at` is written once a minute at most; a second's precision is plenty.
        if now - known.noted_ms.load(Ordering::Relaxed) >= 1_000 {
            known.noted_ms.store(now, Ordering::Relaxed);
            self.note_used(&known.identity.via.id, now);
        }
        Ok(known.identity.clone())
    }

    fn cached(&self, key_id: &str) -> Option<Arc<Known>> {
        let cache = self.cache.read().ok()?;
        let e = cache.get(key_id)?;
        (e.fetched.elapsed() < self.settings.cache_ttl).then(|| e.key.clone())
    }

    fn insert(&self, epoch: u64, key: Arc<Known>) {
        let Ok(mut cache) = self.cache.write() else {
            return;
        };
        // An invalidation happened while we were reading: what we read may be stale.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let key_id = key.identity.via.id.to_string();
        if cache.len() >= self.settings.cache_capacity && !cache.contains_key(&key_id) {
            let ttl = self.settings.cache_ttl;
            cache.retain(|_, e| e.fetched.elapsed() < ttl);
            if cache.len() >= self.settings.cache_capacity {
                // Still full of live entries: drop an arbitrary one (HashMap order is random
                // per process, so an attacker cannot choose which).
                if let Some(k) = cache.keys().next().cloned() {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            key_id,
            Entry {
                key,
                fetched: Instant::now(),
            },
        );
    }

    /// Forget what is cached about `key_id`.
    pub fn invalidate(&self, key_id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut c) = self.cache.write() {
            c.remove(key_id);
        }
    }

    /// Forget everything cached.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
    }

    /// Keys in the cache.
    pub fn cached_keys(&self) -> usize {
        self.cache.read().map(|c| c.len()).unwrap_or(0)
    }

    fn note_used(&self, key_id: &str, now: i64) {
        if let Ok(mut m) = self.last_used.lock() {
            match m.get_mut(key_id) {
                Some(t) => *t = now,
                None => {
                    // Bounded like the cache: a key verified, so the set is bounded by keys
                    // in the store; still cap it in case of a huge store.
                    if m.len() < self.settings.cache_capacity.saturating_mul(4) {
                        m.insert(key_id.to_string(), now);
                    }
                }
            }
        }
    }

    /// Write pending last-used times now (the background task does this once a minute).
    pub async fn flush_last_used(&self) -> Result<(), StoreError> {
        let pending: Vec<(String, i64)> = match self.last_used.lock() {
            Ok(mut m) => m.drain().collect(),
            Err(_) => return Ok(()),
        };
        self.store.touch_last_used(&pending).await
    }

    /// Queue a refused call for the audit log. Returns `false` when the queue was full and
    /// the event was dropped (the caller counts it).
    pub fn report_failure(
        &self,
        reason: &'static str,
        key_id: Option<&str>,
        peer: Option<IpAddr>,
        capability: Option<&str>,
    ) -> bool {
        self.failures
            .try_send(Failure {
                reason,
                key_id: key_id.map(String::from),
                peer,
                capability: capability.map(String::from),
            })
            .is_ok()
    }

    /// Drop the cache when another process or node changed keys. Returns whether it did.
    pub async fn poll_changes(&self) -> Result<bool, StoreError> {
        let g = self.store.generation().await?;
        let old = self.generation.swap(g, Ordering::AcqRel);
        if old != g && old != i64::MIN {
            self.invalidate_all();
            return Ok(true);
        }
        Ok(false)
    }

    /// Run the background work until `shutdown` is cancelled, then flush. Call once.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let rx = self.failures_rx.lock().ok().and_then(|mut r| r.take());
        tokio::spawn(async move {
            let Some(mut rx) = rx else {
                return;
            };
            let _ = me.poll_changes().await;
            let max_rows = i64::try_from(me.settings.audit_max_rows).unwrap_or(i64::MAX);
            let mut coalescer = Coalescer::default();
            let mut audit_tick = tokio::time::interval(Duration::from_secs(1));
            let mut used_tick = tokio::time::interval(LAST_USED_INTERVAL);
            let mut poll_tick = tokio::time::interval(me.settings.invalidation_poll);
            for t in [&mut audit_tick, &mut used_tick, &mut poll_tick] {
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    f = rx.recv() => match f {
                        Some(f) => coalescer.add(f),
                        None => break,
                    },
                    _ = audit_tick.tick() => {
                        if !coalescer.is_empty() {
                            coalescer.flush(&me.store, max_rows).await;
                        }
                    }
                    _ = used_tick.tick() => {
                        if let Err(e) = me.flush_last_used().await {
                            tracing::warn!(error = %e, "cannot record last-used times");
                        }
                    }
                    _ = poll_tick.tick() => {
                        if let Err(e) = me.poll_changes().await {
                            tracing::debug!(error = %e, "cannot poll key changes");
                        }
                    }
                }
            }
            while let Ok(f) = rx.try_recv() {
                coalescer.add(f);
            }
            if !coalescer.is_empty() {
                coalescer.flush(&me.store, max_rows).await;
            }
            if let Err(e) = me.flush_last_used().await {
                tracing::warn!(error = %e, "cannot record last-used times");
            }
        })
    }

    // ---- changes made through this authenticator invalidate its cache at once ----

    /// Create a key and return it with its raw value (shown once).
    pub async fn create_key(&self, req: &CreateKey, actor: &str) -> Result<IssuedKey, StoreError> {
        let issued = create_key(&self.store, &self.pepper, req, actor, false).await?;
        self.invalidate(&issued.record.key_id);
        Ok(issued)
    }

    /// Revoke a key: refused from the next call on.
    pub async fn revoke(&self, key_id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        let r = self.store.revoke_key(key_id, actor).await;
        self.invalidate(key_id);
        r
    }

    /// Rotate a key: a new secret now, the old ones until `overlap` ends.
    pub async fn rotate(
        &self,
        key_id: &str,
        overlap: Duration,
        actor: &str,
    ) -> Result<(IssuedKey, i64), StoreError> {
        let r = rotate_key(&self.store, &self.pepper, key_id, overlap, actor).await;
        self.invalidate(key_id);
        r
    }
}

impl GrantSource for ApiKeyAuthenticator {
    fn grants_now(&self, identity: &Identity) -> Option<Arc<Grants>> {
        if identity.via.kind != CredentialKind::ApiKey {
            return None;
        }
        self.cached(&identity.via.id).map(|k| k.grants.clone())
    }

    /// A cache miss (the entry expired or was evicted since the call authenticated) asks the
    /// store; a store that cannot answer yields no grants, and the decision denies.
    fn grants<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Arc<Grants>>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(g) = self.grants_now(identity) {
                return Some(g);
            }
            if identity.via.kind != CredentialKind::ApiKey {
                return None;
            }
            let (record, _) = self
                .store
                .key_for_verification(&identity.via.id, now_ms())
                .await
                .ok()??;
            Some(Arc::new(to_identity(record).1))
        })
    }
}

/// Does `presented` match a secret accepted at `now`? Compares against every candidate
/// (no early exit) in constant time.
fn secrets_match(secrets: &[KeySecret], presented: &[u8; 32], version: u32, now: i64) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for s in secrets {
        let live = s.not_after.is_none_or(|t| t > now) && s.pepper_version == version;
        let eq = presented[..].ct_eq(&s.secret_hmac[..]);
        ok |= eq & subtle::Choice::from(u8::from(live));
    }
    bool::from(ok)
}

/// Create a key in the store (the CLI and the authenticator share this).
pub async fn create_key(
    store: &Store,
    pepper: &Pepper,
    req: &CreateKey,
    actor: &str,
    bootstrap: bool,
) -> Result<IssuedKey, StoreError> {
    let key_id = match &req.key_id {
        Some(id) if key::valid_key_id(id) => id.clone(),
        Some(_) => return Err(StoreError::Invalid("key ids are 4-64 of [a-z0-9-]".into())),
        None => key::generate_key_id(),
    };
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(StoreError::Invalid(
            "a key needs a name of 1-200 characters".into(),
        ));
    }
    let scopes = check_scopes(&req.scopes)?;
    let expires_at = match req.expires_in {
        Some(d) if d.is_zero() => {
            return Err(StoreError::Invalid("--expires must be positive".into()))
        }
        Some(d) => Some(now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
        None => None,
    };
    let NewKey {
        key_id,
        secret,
        raw,
    } = key::generate(&key_id);
    let row = crate::store::NewKeyRow {
        secret_hmac: pepper.hash_secret(&key_id, &secret),
        pepper_version: pepper.version(),
        key_id,
        workspace: req.workspace.clone(),
        name: req.name.trim().to_string(),
        scopes,
        expires_at,
    };
    let record = if bootstrap {
        store.insert_bootstrap_key(&row, actor).await?
    } else {
        store.insert_key(&row, actor).await?
    };
    Ok(IssuedKey {
        record,
        api_key: raw,
    })
}

/// Rotate a key in the store (the CLI and the authenticator share this).
pub async fn rotate_key(
    store: &Store,
    pepper: &Pepper,
    key_id: &str,
    overlap: Duration,
    actor: &str,
) -> Result<(IssuedKey, i64), StoreError> {
    let new = key::generate(key_id);
    let (record, until) = store
        .rotate_key(
            key_id,
            pepper.hash_secret(key_id, &new.secret),
            pepper.version(),
            overlap,
            actor,
        )
        .await?;
    Ok((
        IssuedKey {
            record,
            api_key: new.raw,
        },
        until,
    ))
}
