//! API key verification, cached and invalidated.
//!
//! Verifying a key: parse and checksum (junk stops here, before any lookup) → the key's
//! record and live secret HMACs, from the cache or the store → HMAC-SHA-256 of the presented
//! secret under the pepper → constant-time comparison with every live secret → revoked?
//! disabled (its workspace, or the user it was issued to)? expired?
//!
//! The cache holds what the store said about a key id (record + secret HMACs), never a
//! "this string is valid" verdict: each call recomputes the HMAC, so a wrong secret can never
//! hit a cached success. It is bounded (`auth.cache_capacity`), entries live `auth.cache_ttl`,
//! and it is invalidated — never merely left to expire — when a key changes: at once for
//! changes made through this authenticator, and within `auth.invalidation_poll` for changes
//! made elsewhere (the CLI, other nodes), which bump the store's change generation.
//!
//! **Unknown key ids.** The checksum is public, so anyone can make well-formed keys with ids
//! that do not exist. Without care each try would cost a store query, and would answer
//! measurably slower than a wrong secret for a cached id, telling an attacker which ids exist.
//! So "no such key id" is cached too, in a negative cache of its own (`auth.negative_cache_*`:
//! bounded, oldest first out, and separate so a flood of random ids cannot evict real keys),
//! invalidated exactly like the positive entries — a key created after a negative entry
//! verifies at once on this node, within the poll elsewhere. A cached-unknown id then does the
//! same work as a cached-known id with a wrong secret: one probe of each map under one lock,
//! the HMAC, and a constant-time comparison against one secret (a dummy).
//!
//! **Store work on a miss is bounded.** Concurrent misses for one key id share one lookup
//! (single flight); at most `auth.max_concurrent_lookups` lookups reach the store at once and
//! at most `auth.max_pending_lookups` distinct ids wait for or are in one; each has a deadline
//! (`auth.lookup_timeout`). Past either bound the call fails closed (`Unavailable`, 503): a
//! flood of distinct random ids costs at most that many store connections, cannot queue
//! without bound, and never touches calls whose key is cached.
//!
//! **Time.** Cache lifetimes are measured on tokio's clock (`tokio::time::Instant`), so paused-
//! time tests drive them; expiry dates are compared with the injected wall clock
//! ([`crate::clock::Clock`], [`AuthSettings::clock`]).
//!
//! `last_used_at` is kept in memory and written by the background task at most once a minute
//! per key, off the request path.

use futures_util::future::{BoxFuture, FutureExt, Shared};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::audit::{Coalescer, Failure, CHANNEL_CAPACITY};
use super::key::{self, NewKey};
use super::{AuthFailure, CredentialKind, Identity, Pepper, Via, WorkspaceRef};
use crate::access::{GrantSource, Grants};
use crate::clock::Clock;
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
    /// Lifetime of a negative ("no such key id") cache entry.
    pub negative_cache_ttl: Duration,
    /// Negative cache size bound.
    pub negative_cache_capacity: usize,
    /// Store lookups in progress at once, at most.
    pub max_concurrent_lookups: usize,
    /// Distinct key ids waiting for or in a store lookup, at most; beyond: fail closed.
    pub max_pending_lookups: usize,
    /// Deadline of one store lookup, waiting for a turn included.
    pub lookup_timeout: Duration,
    /// The wall clock expiry is checked against (the system clock but in tests).
    pub clock: Clock,
}

impl AuthSettings {
    /// From the configuration.
    pub fn from_config(c: &crate::config::AuthConfig) -> Self {
        Self {
            cache_ttl: c.cache_ttl,
            cache_capacity: c.cache_capacity,
            invalidation_poll: c.invalidation_poll,
            audit_max_rows: c.audit_max_rows,
            negative_cache_ttl: c.negative_cache_ttl,
            negative_cache_capacity: c.negative_cache_capacity,
            max_concurrent_lookups: c.max_concurrent_lookups,
            max_pending_lookups: c.max_pending_lookups,
            lookup_timeout: c.lookup_timeout,
            clock: Clock::system(),
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
    /// Its workspace or its user was disabled when the store was asked.
    disabled: bool,
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

/// What the cache says about a key id.
enum Cached {
    Known(Arc<Known>),
    /// The store has no such key id.
    Unknown,
}

/// Both caches, under one lock, so a lookup probes both whatever it finds.
#[derive(Debug, Default)]
struct Cache {
    known: HashMap<String, Entry>,
    unknown: Negative,
}

/// Key ids the store does not have, oldest first out: every entry lives the same time, so
/// the oldest insertion is the first to expire and eviction is O(1) with no sweep.
#[derive(Debug, Default)]
struct Negative {
    ids: HashMap<Arc<str>, NegEntry>,
    /// Insertion order. An item whose id has been invalidated or inserted again since is
    /// stale (its `seq` no longer matches) and is skipped; kept under twice the capacity.
    order: VecDeque<(Arc<str>, u64)>,
    seq: u64,
}

#[derive(Debug)]
struct NegEntry {
    fetched: Instant,
    seq: u64,
}

impl Negative {
    fn contains(&self, key_id: &str, now: Instant, ttl: Duration) -> bool {
        self.ids
            .get(key_id)
            .is_some_and(|e| now.saturating_duration_since(e.fetched) < ttl)
    }

    /// Is the oldest item of `order` current (and then: expired at `now`)?
    fn front(&self, now: Instant, ttl: Duration) -> Option<(bool, bool)> {
        let (id, seq) = self.order.front()?;
        Some(match self.ids.get(id) {
            Some(e) if e.seq == *seq => (true, now.saturating_duration_since(e.fetched) >= ttl),
            _ => (false, true),
        })
    }

    fn pop_front(&mut self, current: bool) {
        if let Some((id, _)) = self.order.pop_front() {
            if current {
                self.ids.remove(&id);
            }
        }
    }

    fn insert(&mut self, key_id: &str, now: Instant, ttl: Duration, capacity: usize) {
        // Expired and stale items first, then the oldest live ones while full.
        while let Some((current, expired)) = self.front(now, ttl) {
            if !expired && self.ids.len() < capacity {
                break;
            }
            self.pop_front(current);
        }
        self.seq += 1;
        let id: Arc<str> = Arc::from(key_id);
        self.ids.insert(
            id.clone(),
            NegEntry {
                fetched: now,
                seq: self.seq,
            },
        );
        self.order.push_back((id, self.seq));
        if self.order.len() > capacity.saturating_mul(2).saturating_add(16) {
            let ids = &self.ids;
            self.order
                .retain(|(id, seq)| ids.get(id).is_some_and(|e| e.seq == *seq));
        }
    }

    fn remove(&mut self, key_id: &str) {
        // Its item in `order` becomes stale and is skipped.
        self.ids.remove(key_id);
    }

    fn clear(&mut self) {
        self.ids.clear();
        self.order.clear();
    }
}

/// The outcome of one store lookup, shared by every caller waiting for that key id. Errors
/// are logged once, where they happen; callers only need to fail closed.
type Lookup = Result<Option<Arc<Known>>, ()>;

/// A store lookup in progress for one key id (single flight). The map of flights holds it
/// weakly: when every caller waiting for it has gone, it is dropped, and the lookup with it.
struct Flight {
    /// The invalidation epoch when it started: its answer is cached only if none happened.
    epoch: u64,
    result: Shared<BoxFuture<'static, Lookup>>,
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
    cache: RwLock<Cache>,
    /// Store lookups in progress, by key id; bounded by `max_pending_lookups`.
    flights: Mutex<HashMap<String, Weak<Flight>>>,
    /// Turns to query the store: `max_concurrent_lookups`.
    lookups: Arc<Semaphore>,
    /// Bumped by every invalidation: a lookup that started before one does not insert.
    epoch: AtomicU64,
    generation: AtomicI64,
    last_used: Mutex<HashMap<String, i64>>,
    failures: mpsc::Sender<Failure>,
    failures_rx: Mutex<Option<mpsc::Receiver<Failure>>>,
    /// What an unknown key id's presented secret is compared with: one secret, like a key.
    dummy: [KeySecret; 1],
    /// Bumped whenever the generation poll sees the store change: the token subjects' cache
    /// and the signing keys follow it.
    changes: super::Changes,
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
    // A key issued to a user acts with the user's role bindings narrowed by its scopes.
    let user = r.user_id;
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
    (identity, Grants::new(r.scopes).issued_to(user))
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
        // Random: no presented secret can be made to match it (and a match would still be
        // refused as unknown).
        let dummy = [KeySecret {
            serial: 0,
            secret_hmac: rand::random(),
            pepper_version: pepper.version(),
            not_after: None,
        }];
        let lookups = Arc::new(Semaphore::new(settings.max_concurrent_lookups.max(1)));
        Arc::new(Self {
            store,
            pepper,
            settings,
            cache: RwLock::new(Cache::default()),
            flights: Mutex::new(HashMap::new()),
            lookups,
            epoch: AtomicU64::new(0),
            generation: AtomicI64::new(i64::MIN),
            last_used: Mutex::new(HashMap::new()),
            failures: tx,
            failures_rx: Mutex::new(Some(rx)),
            dummy,
            changes: super::Changes::default(),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The pepper (the signing keys are sealed under a key derived from it).
    pub(crate) fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    /// The store change feed this authenticator's generation poll drives.
    pub fn changes(&self) -> &super::Changes {
        &self.changes
    }

    /// The turns to query the store for verification (`auth.max_concurrent_lookups`), to be
    /// shared by every authenticator that looks identities up on the request path.
    pub fn lookup_turns(&self) -> Arc<Semaphore> {
        self.lookups.clone()
    }

    /// The wall clock of this authenticator.
    pub fn clock(&self) -> &Clock {
        &self.settings.clock
    }

    /// The pepper version new hashes are made with.
    pub fn pepper_version(&self) -> u32 {
        self.pepper.version()
    }

    /// Verify a raw key (`pcs_…`).
    pub async fn authenticate(&self, raw: &str) -> Result<Arc<Identity>, AuthFailure> {
        let parsed = key::parse(raw).map_err(|_| AuthFailure::Malformed)?;
        let now = self.settings.clock.now_ms();
        let presented = self.pepper.hash_secret(parsed.key_id, parsed.secret);
        let found = match self.cached(parsed.key_id) {
            Some(c) => c,
            None => match self.lookup(parsed.key_id, now).await? {
                Some(k) => Cached::Known(k),
                None => Cached::Unknown,
            },
        };
        // The same comparison for an unknown id as for a known one (one secret, a dummy).
        let (secrets, known) = match &found {
            Cached::Known(k) => (&k.secrets[..], Some(k)),
            Cached::Unknown => (&self.dummy[..], None),
        };
        let matched = secrets_match(secrets, &presented, self.pepper.version(), now);
        let Some(known) = known else {
            return Err(AuthFailure::Unknown);
        };
        if !matched {
            return Err(AuthFailure::Wrong);
        }
        if known.revoked_at.is_some() {
            return Err(AuthFailure::Revoked);
        }
        if known.disabled {
            return Err(AuthFailure::Disabled);
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

    /// What the caches hold about `key_id`. Probes both maps whatever it finds, so a cached
    /// unknown id and a cached known one cost the same.
    fn cached(&self, key_id: &str) -> Option<Cached> {
        let now = Instant::now();
        let cache = self.cache.read().ok()?;
        let known = cache
            .known
            .get(key_id)
            .filter(|e| now.saturating_duration_since(e.fetched) < self.settings.cache_ttl);
        let unknown = cache
            .unknown
            .contains(key_id, now, self.settings.negative_cache_ttl);
        match known {
            Some(e) => Some(Cached::Known(e.key.clone())),
            None => unknown.then_some(Cached::Unknown),
        }
    }

    /// Ask the store about `key_id`, sharing a lookup already in progress for it, and cache
    /// the answer, positive or negative. Fails closed when the pending bound is reached, the
    /// deadline passes or the store fails.
    async fn lookup(&self, key_id: &str, now: i64) -> Result<Option<Arc<Known>>, AuthFailure> {
        let flight = {
            let Ok(mut flights) = self.flights.lock() else {
                return Err(AuthFailure::Unavailable);
            };
            match flights.get(key_id).and_then(Weak::upgrade) {
                Some(f) => f,
                None => {
                    if flights.len() >= self.settings.max_pending_lookups {
                        // Flights whose callers all left are dropped; their entries linger.
                        flights.retain(|_, f| f.strong_count() > 0);
                    }
                    if flights.len() >= self.settings.max_pending_lookups {
                        tracing::debug!("verification lookups at their bound: failing closed");
                        return Err(AuthFailure::Unavailable);
                    }
                    let f = Arc::new(Flight {
                        epoch: self.epoch.load(Ordering::Acquire),
                        result: self.start_lookup(key_id, now),
                    });
                    flights.insert(key_id.to_owned(), Arc::downgrade(&f));
                    f
                }
            }
        };
        let result = flight.result.clone().await;
        // The first caller to come back retires the flight and caches its answer; the flight
        // may also have been retired already by an invalidation, and then nothing is cached.
        let first = match self.flights.lock() {
            Ok(mut flights) => {
                let ours = flights
                    .get(key_id)
                    .is_some_and(|f| std::ptr::eq(f.as_ptr(), Arc::as_ptr(&flight)));
                if ours {
                    flights.remove(key_id);
                }
                ours
            }
            Err(_) => false,
        };
        let found = result.map_err(|()| AuthFailure::Unavailable)?;
        if first {
            match &found {
                Some(k) => self.insert(flight.epoch, k.clone()),
                None => self.insert_unknown(flight.epoch, key_id),
            }
        }
        Ok(found)
    }

    /// The store lookup of one flight: waits for a turn, then one query, all under the
    /// deadline.
    fn start_lookup(&self, key_id: &str, now: i64) -> Shared<BoxFuture<'static, Lookup>> {
        let store = self.store.clone();
        let turns = self.lookups.clone();
        let deadline = self.settings.lookup_timeout;
        let key_id = key_id.to_owned();
        async move {
            let work = async {
                let _turn = turns.acquire().await.map_err(|_| ())?;
                store
                    .key_for_verification(&key_id, now)
                    .await
                    .map_err(|e| tracing::warn!(error = %e, "identity store unavailable"))
            };
            let found = match tokio::time::timeout(deadline, work).await {
                Ok(r) => r?,
                Err(_) => {
                    tracing::warn!("identity store lookup timed out");
                    return Err(());
                }
            };
            Ok(found.map(|found| {
                let disabled = found.is_disabled();
                let (record, secrets) = (found.record, found.secrets);
                let revoked_at = record.revoked_at;
                let (identity, grants) = to_identity(record);
                Arc::new(Known {
                    revoked_at,
                    disabled,
                    identity: Arc::new(identity),
                    grants: Arc::new(grants),
                    secrets,
                    noted_ms: AtomicI64::new(0),
                })
            }))
        }
        .boxed()
        .shared()
    }

    fn insert(&self, epoch: u64, key: Arc<Known>) {
        let Ok(mut cache) = self.cache.write() else {
            return;
        };
        // An invalidation happened while we were reading: what we read may be stale.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let cache = &mut cache.known;
        let key_id = key.identity.via.id.to_string();
        let now = Instant::now();
        if cache.len() >= self.settings.cache_capacity && !cache.contains_key(&key_id) {
            let ttl = self.settings.cache_ttl;
            cache.retain(|_, e| now.saturating_duration_since(e.fetched) < ttl);
            if cache.len() >= self.settings.cache_capacity {
                // Still full of live entries: drop an arbitrary one (HashMap order is random
                // per process, so an attacker cannot choose which).
                if let Some(k) = cache.keys().next().cloned() {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(key_id, Entry { key, fetched: now });
    }

    fn insert_unknown(&self, epoch: u64, key_id: &str) {
        let Ok(mut cache) = self.cache.write() else {
            return;
        };
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        cache.unknown.insert(
            key_id,
            Instant::now(),
            self.settings.negative_cache_ttl,
            self.settings.negative_cache_capacity.max(1),
        );
    }

    /// Forget what is cached about `key_id`.
    pub fn invalidate(&self, key_id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut c) = self.cache.write() {
            c.known.remove(key_id);
            c.unknown.remove(key_id);
        }
        // A caller from now on asks the store again instead of joining a lookup that may
        // have read the old state.
        if let Ok(mut f) = self.flights.lock() {
            f.remove(key_id);
        }
    }

    /// Forget everything cached.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut c) = self.cache.write() {
            c.known.clear();
            c.unknown.clear();
        }
        if let Ok(mut f) = self.flights.lock() {
            f.clear();
        }
    }

    /// Keys in the cache.
    pub fn cached_keys(&self) -> usize {
        self.cache.read().map(|c| c.known.len()).unwrap_or(0)
    }

    /// Unknown key ids in the negative cache.
    pub fn cached_unknown_ids(&self) -> usize {
        self.cache.read().map(|c| c.unknown.ids.len()).unwrap_or(0)
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
            self.changes.bump();
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
        let now = self.settings.clock.now_ms();
        let issued = create_key_at(&self.store, &self.pepper, req, None, actor, false, now).await?;
        self.invalidate(&issued.record.key_id);
        Ok(issued)
    }

    /// Create a key issued to user `user_id` (in the user's workspace): it acts with the user's
    /// roles narrowed by its scopes, and goes with the user.
    pub async fn create_user_key(
        &self,
        req: &CreateKey,
        user_id: &str,
        actor: &str,
    ) -> Result<IssuedKey, StoreError> {
        let now = self.settings.clock.now_ms();
        let issued = create_key_at(
            &self.store,
            &self.pepper,
            req,
            Some(user_id),
            actor,
            false,
            now,
        )
        .await?;
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
    /// Moves with every invalidation of the verification cache — a key changed through this
    /// authenticator, or the store's change generation moved (the poll) — so decisions cached
    /// by `crate::access` are dropped on the same signal.
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn grants_now(&self, identity: &Identity) -> Option<Arc<Grants>> {
        if identity.via.kind != CredentialKind::ApiKey {
            return None;
        }
        match self.cached(&identity.via.id)? {
            Cached::Known(k) => Some(k.grants.clone()),
            Cached::Unknown => None,
        }
    }

    /// A cache miss (the entry expired or was evicted since the call authenticated) asks the
    /// store through the same bounded, single-flight lookup verification uses; a store that
    /// cannot answer yields no grants, and the decision denies.
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
            let now = self.settings.clock.now_ms();
            let known = self.lookup(&identity.via.id, now).await.ok()??;
            Some(known.grants.clone())
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
    create_key_at(store, pepper, req, None, actor, bootstrap, now_ms()).await
}

/// [`create_key`] for a key issued to user `user_id`.
pub async fn create_user_key(
    store: &Store,
    pepper: &Pepper,
    req: &CreateKey,
    user_id: &str,
    actor: &str,
) -> Result<IssuedKey, StoreError> {
    create_key_at(store, pepper, req, Some(user_id), actor, false, now_ms()).await
}

/// [`create_key`] with `now` (Unix ms) as the time its lifetime starts from.
async fn create_key_at(
    store: &Store,
    pepper: &Pepper,
    req: &CreateKey,
    user_id: Option<&str>,
    actor: &str,
    bootstrap: bool,
    now: i64,
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
        Some(d) => Some(now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
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
        user_id: user_id.map(String::from),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    async fn authenticator(
        f: impl FnOnce(&mut AuthSettings),
    ) -> (tempfile::TempDir, Arc<ApiKeyAuthenticator>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&StoreOptions::sqlite(dir.path()))
            .await
            .unwrap();
        let pepper = Pepper::new(b"unit-pepper-0123456789abcdef-0123456789".to_vec(), 1).unwrap();
        let mut settings = AuthSettings::default();
        f(&mut settings);
        (dir, ApiKeyAuthenticator::new(store, pepper, settings))
    }

    /// Put a store lookup for `key_id` in progress that ends with "no such key" when `done`
    /// fires (never, if it is dropped); the returned `Arc` stands for a caller waiting on it.
    fn lookup_in_progress(
        auth: &ApiKeyAuthenticator,
        key_id: &str,
        done: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Arc<Flight> {
        let result = async move {
            match done {
                Some(rx) => rx.await.map_err(|_| ())?,
                None => std::future::pending().await,
            }
            Ok(None)
        }
        .boxed()
        .shared();
        let f = Arc::new(Flight {
            epoch: auth.epoch.load(Ordering::Acquire),
            result,
        });
        auth.flights
            .lock()
            .unwrap()
            .insert(key_id.to_owned(), Arc::downgrade(&f));
        f
    }

    fn create(name: &str) -> CreateKey {
        CreateKey {
            workspace: "default".into(),
            name: name.into(),
            scopes: vec!["a".into()],
            expires_in: None,
            key_id: None,
        }
    }

    #[tokio::test]
    async fn misses_beyond_the_pending_bound_fail_closed_without_a_store_query() {
        let (_dir, auth) = authenticator(|s| s.max_pending_lookups = 2).await;
        let cached = auth.create_key(&create("cached"), "t").await.unwrap();
        auth.authenticate(&cached.api_key).await.unwrap();
        let held = [
            lookup_in_progress(&auth, "held-one", None),
            lookup_in_progress(&auth, "held-two", None),
        ];
        let q = auth.store.verification_queries();
        let fresh = key::generate("a-third-id").raw;
        assert_eq!(
            auth.authenticate(&fresh).await.unwrap_err(),
            AuthFailure::Unavailable
        );
        assert_eq!(
            auth.store.verification_queries(),
            q,
            "refused before the store"
        );
        // A cached key does not need a lookup and is not refused.
        assert!(auth.authenticate(&cached.api_key).await.is_ok());
        // Once a waiting caller has gone, its slot is free again.
        let [one, _two] = held;
        drop(one);
        assert_eq!(
            auth.authenticate(&fresh).await.unwrap_err(),
            AuthFailure::Unknown
        );
        assert_eq!(auth.store.verification_queries(), q + 1);
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_id_share_its_lookup_and_cache_the_answer() {
        let (_dir, auth) = authenticator(|_| {}).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let flight = lookup_in_progress(&auth, "shared-id", Some(rx));
        let raw = key::generate("shared-id").raw;
        let q = auth.store.verification_queries();
        let (tries, ()) = tokio::join!(
            futures_util::future::join_all((0..5).map(|_| auth.authenticate(&raw))),
            async {
                // Every caller has joined the lookup (each was polled once) before it ends.
                drop(flight);
                tokio::task::yield_now().await;
                let _ = tx.send(());
            },
        );
        for r in tries {
            assert_eq!(r.unwrap_err(), AuthFailure::Unknown);
        }
        assert_eq!(
            auth.store.verification_queries(),
            q,
            "no lookup of their own"
        );
        assert_eq!(auth.cached_unknown_ids(), 1, "the shared answer is cached");
        assert!(
            auth.flights.lock().unwrap().is_empty(),
            "the flight is retired"
        );
    }

    #[tokio::test]
    async fn an_invalidation_during_a_lookup_keeps_its_answer_out_of_the_cache() {
        let (_dir, auth) = authenticator(|_| {}).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let flight = lookup_in_progress(&auth, "racing-id", Some(rx));
        let raw = key::generate("racing-id").raw;
        let (r, ()) = tokio::join!(auth.authenticate(&raw), async {
            drop(flight);
            tokio::task::yield_now().await;
            // A key with this id is created here while the lookup is out.
            auth.invalidate("racing-id");
            let _ = tx.send(());
        });
        assert_eq!(r.unwrap_err(), AuthFailure::Unknown);
        assert_eq!(
            auth.cached_unknown_ids(),
            0,
            "a stale \"unknown\" is not cached"
        );
    }

    #[test]
    fn the_negative_cache_is_bounded_oldest_first_and_expires() {
        let mut n = Negative::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        for i in 0..5 {
            n.insert(&format!("id-{i}"), t0, ttl, 3);
        }
        assert_eq!(n.ids.len(), 3);
        assert!(!n.contains("id-1", t0, ttl) && n.contains("id-2", t0, ttl));
        assert!(n.contains("id-4", t0, ttl));
        assert!(!n.contains("id-4", t0 + ttl, ttl), "expired");
        // Removed ids leave stale order items that are skipped, and the order stays bounded.
        for i in 0..100 {
            let id = format!("churn-{i}");
            n.insert(&id, t0, ttl, 3);
            n.remove(&id);
        }
        assert!(n.order.len() <= 3 * 2 + 16 + 1, "{}", n.order.len());
        n.insert("late", t0 + ttl, ttl, 3);
        assert_eq!(n.ids.len(), 1, "expired entries go first");
    }
}
