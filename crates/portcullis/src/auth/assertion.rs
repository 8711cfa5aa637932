//! Identity assertions: the gateway's signed statement of who is calling, added to every
//! authenticated call it forwards as `x-portcullis-identity` (docs/design.md §5, specified in
//! `docs/link-protocol.md` §6.4).
//!
//! An assertion is a compact JWS (`portcullis_link::jws`, `typ: portcullis-identity+jwt`) of
//! [`AssertionClaims`]: the issuer, the subject, the workspace the call acts in, the credential
//! that proved the subject, the audience (the service the call is forwarded to), and a validity
//! of at most 60 s that never outlives the credential. It is signed with the [`KeyRing`]'s
//! current signer, whose public key every linked service holds (HELLO_ACK, then `PUT` to
//! `KEYS_PATH` on every change), so a service verifies it without trusting a plain header and
//! can hand it on to another as proof.
//!
//! **Sign once, reuse.** An Ed25519 signature costs tens of microseconds, more than the rest of
//! the call path, so [`AssertionSigner`] keeps what it signed per (subject, credential,
//! workspace, audience) and reuses it while more than [`REFRESH_BEFORE_EXPIRY_S`] of its life
//! remain and its key is still the one that signs: a hot identity costs one signature per
//! 45 s per data-plane thread, and a new signing key takes over at the next call.
//!
//! **The cache is per thread.** Every data-plane thread runs calls, so a cache shared by all of
//! them would bounce one lock and the reference counts of one hot entry between cores on each
//! call. Each thread instead uses its own shard (threads get an index the first time they sign;
//! shards are as many as the machine has cores), so the hit path is an uncontended lock, a hash
//! and a compare. The price is one signature per thread instead of one per gateway. Every
//! shard is bounded: at its share of the capacity it drops expired entries (at most once a
//! second) and otherwise an arbitrary one, so a flood of distinct identities costs signatures,
//! never memory.

use bytes::Bytes;
use http::HeaderValue;
use portcullis_link::jws::{self, AssertedVia, AssertionClaims};
use portcullis_link::shard::PreHashedMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use super::keyring::{KeyRing, SigningKey};
use super::{Identity, WorkspaceRef};
use crate::clock::Clock;

/// Validity of an assertion, seconds: the protocol's maximum.
pub const LIFETIME_S: i64 = jws::MAX_ASSERTION_LIFETIME_S;
/// An assertion is signed anew once fewer than this many seconds of its life remain, so the
/// one a service receives has at least this long to go (its clock may be a little behind).
pub const REFRESH_BEFORE_EXPIRY_S: i64 = 15;
/// Default bound of the cache, entries over all threads.
pub const DEFAULT_CAPACITY: usize = 16_384;
/// Most shards, whatever the core count.
const MAX_SHARDS: usize = 64;
/// Shortest interval between two sweeps of expired entries in one shard, ms.
const SWEEP_EVERY_MS: i64 = 1_000;

/// Why no assertion could be made. The call fails closed (503): a service would refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// The key ring holds no key that may sign now.
    #[error("no signing key")]
    NoSigningKey,
    /// The claims could not be encoded as a header value.
    #[error("cannot encode the assertion")]
    Encode,
}

/// Signs identity assertions for forwarded calls, with a bounded per-thread cache. Built once;
/// shared by every data-plane thread.
pub struct AssertionSigner {
    keys: Arc<KeyRing>,
    issuer: Arc<str>,
    clock: Clock,
    /// Keyed, so cache slots cannot be aimed at from outside.
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    /// Counts every signature (a cache miss).
    signed: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("issuer", &self.issuer)
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

/// One thread's cache: entries by the keyed hash of what they assert.
#[derive(Default)]
struct Shard {
    entries: PreHashedMap<Entry>,
    swept_ms: i64,
}

/// What was signed, for whom, by which key, and the header value to reuse.
struct Entry {
    subject: Box<str>,
    via_kind: &'static str,
    via_id: Box<str>,
    workspace_id: Box<str>,
    workspace_name: Box<str>,
    audience: Box<str>,
    kid: Arc<str>,
    issued_ms: i64,
    refresh_ms: i64,
    value: HeaderValue,
}

impl Entry {
    fn asserts(&self, identity: &Identity, workspace: &WorkspaceRef, audience: &str) -> bool {
        *self.subject == *identity.subject
            && self.via_kind == identity.via.kind.as_str()
            && *self.via_id == *identity.via.id
            && *self.workspace_id == *workspace.id
            && *self.workspace_name == *workspace.name
            && *self.audience == *audience
    }

    /// Reusable at `now_ms` while `kid` signs? A clock that went back past the issue time
    /// also re-signs: the service would see an assertion from its future.
    fn reusable(&self, now_ms: i64, kid: &str) -> bool {
        now_ms < self.refresh_ms && now_ms >= self.issued_ms && *self.kid == *kid
    }
}

impl AssertionSigner {
    /// A signer with the keys of `keys`, naming itself `issuer` (`iss`), reading wall time
    /// from `clock`, caching at most `capacity` assertions (at least one per shard).
    pub fn new(
        keys: Arc<KeyRing>,
        issuer: impl Into<Arc<str>>,
        clock: Clock,
        capacity: usize,
    ) -> Self {
        let shards = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, MAX_SHARDS);
        Self {
            keys,
            issuer: issuer.into(),
            clock,
            hasher: RandomState::new(),
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(shards).max(1),
            signed: Default::default(),
        }
    }

    /// Count signatures into `signed` (`Metrics::assertions_signed`).
    pub fn counting_into(mut self, signed: prometheus_client::metrics::counter::Counter) -> Self {
        self.signed = signed;
        self
    }

    /// Assertions signed so far.
    pub fn signed(&self) -> u64 {
        self.signed.get()
    }

    /// The issuer every assertion names.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key ring assertions are signed from (the link publishes its public keys).
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The wall clock assertions are dated by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The `x-portcullis-identity` value asserting `identity`, acting in `workspace`, to the
    /// service `audience`: the cached one while it may be reused, else a fresh signature.
    pub fn assertion(
        &self,
        identity: &Identity,
        workspace: &WorkspaceRef,
        audience: &str,
    ) -> Result<HeaderValue, AssertionError> {
        let now = self.clock.now_ms();
        let set = self.keys.load();
        let signer = set
            .signer(now, self.keys.publish_delay_ms())
            .ok_or(AssertionError::NoSigningKey)?;
        let hash = self.hash(identity, workspace, audience);
        let shard = self.shard();
        {
            let s = shard.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = s.entries.get(&hash) {
                if e.reusable(now, &signer.kid) && e.asserts(identity, workspace, audience) {
                    return Ok(e.value.clone());
                }
            }
        }
        // Signed outside the lock: the thread's other calls wait for nothing.
        let entry = self.sign(identity, workspace, audience, signer, now)?;
        self.signed.inc();
        let value = entry.value.clone();
        let mut s = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if s.entries.len() >= self.per_shard && !s.entries.contains_key(&hash) {
            s.make_room(now, self.per_shard);
        }
        s.entries.insert(hash, entry);
        Ok(value)
    }

    /// Assertions cached now, over every shard (tests, metrics).
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

    fn hash(&self, identity: &Identity, workspace: &WorkspaceRef, audience: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        // `str`'s `Hash` ends each string with a marker byte: the fields cannot run together.
        identity.subject.hash(&mut h);
        identity.via.kind.as_str().hash(&mut h);
        identity.via.id.hash(&mut h);
        workspace.id.hash(&mut h);
        audience.hash(&mut h);
        h.finish()
    }

    fn sign(
        &self,
        identity: &Identity,
        workspace: &WorkspaceRef,
        audience: &str,
        key: &SigningKey,
        now_ms: i64,
    ) -> Result<Entry, AssertionError> {
        let iat = now_ms.div_euclid(1000);
        // Never valid past the credential that proved the subject (but at least a second:
        // the protocol wants `exp > iat`).
        let exp = identity
            .expires_at
            .map_or(iat + LIFETIME_S, |e| {
                (iat + LIFETIME_S).min(e.div_euclid(1000))
            })
            .max(iat + 1);
        let claims = AssertionClaims {
            iss: self.issuer.to_string(),
            sub: identity.subject.to_string(),
            ws: workspace.id.to_string(),
            wsn: workspace.name.to_string(),
            via: AssertedVia {
                kind: identity.via.kind.as_str().to_string(),
                id: identity.via.id.to_string(),
            },
            aud: audience.to_string(),
            iat,
            exp,
        };
        let token = jws::sign(&claims, &key.kid, jws::TYP_ASSERTION, key.pair())
            .map_err(|_| AssertionError::Encode)?;
        // Not marked sensitive: the link's HPACK table may keep it, and the many calls that
        // reuse it then cost an index instead of ~450 bytes Huffman-coded by the gateway and
        // decoded by the service (measured: ~10% of a call's CPU on both sides). HPACK's
        // table matches whole fields, never substrings, so a compression oracle could only
        // confirm a guess of the entire value, and a signed 60-second assertion cannot be
        // guessed: RFC 7541 §7.1.3's concern is short, low-entropy values. Nor would another
        // tenant gain by learning it: only the gateway sends it, over the link.
        let value = HeaderValue::from_maybe_shared(Bytes::from(token))
            .map_err(|_| AssertionError::Encode)?;
        Ok(Entry {
            subject: identity.subject.as_ref().into(),
            via_kind: identity.via.kind.as_str(),
            via_id: identity.via.id.as_ref().into(),
            workspace_id: workspace.id.as_ref().into(),
            workspace_name: workspace.name.as_ref().into(),
            audience: audience.into(),
            kid: key.kid.clone(),
            issued_ms: iat * 1000,
            refresh_ms: (exp - REFRESH_BEFORE_EXPIRY_S) * 1000,
            value,
        })
    }
}

impl Shard {
    /// Make room for one entry: drop the stale ones (at most once a second, the sweep is a
    /// pass over the shard), and if that freed nothing, one arbitrary entry.
    fn make_room(&mut self, now_ms: i64, cap: usize) {
        if now_ms - self.swept_ms >= SWEEP_EVERY_MS {
            self.swept_ms = now_ms;
            self.entries.retain(|_, e| now_ms < e.refresh_ms);
        }
        while self.entries.len() >= cap {
            let Some(k) = self.entries.keys().next().copied() else {
                break;
            };
            self.entries.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keyring::KeySet;
    use crate::auth::{CredentialKind, Via};
    use crate::clock::ManualClock;
    use std::time::Duration;

    const T0: i64 = 1_700_000_000_000;

    fn key(created_ms: i64) -> Arc<SigningKey> {
        Arc::new(SigningKey::generate(created_ms).unwrap().key)
    }

    fn identity(subject: &str) -> Identity {
        Identity {
            subject: format!("key:{subject}").into(),
            workspace: WorkspaceRef {
                id: "ws_1".into(),
                name: "default".into(),
            },
            via: Via {
                kind: CredentialKind::ApiKey,
                id: subject.into(),
            },
            expires_at: None,
            binding: None,
        }
    }

    fn signer(capacity: usize) -> (AssertionSigner, Arc<KeyRing>, ManualClock) {
        let clock = ManualClock::new(T0);
        let ring = Arc::new(KeyRing::new(KeySet::new(vec![key(T0 - 1000)]), 0));
        let s = AssertionSigner::new(ring.clone(), "portcullis", clock.clock(), capacity);
        (s, ring, clock)
    }

    fn claims(value: &HeaderValue, ring: &KeyRing) -> (String, AssertionClaims) {
        let (h, c): (jws::Header, AssertionClaims) =
            jws::verify(value.to_str().unwrap(), jws::TYP_ASSERTION, |kid| {
                ring.public(kid, T0)
            })
            .unwrap();
        (h.kid, c)
    }

    #[test]
    fn an_assertion_names_the_identity_workspace_and_service_and_verifies() {
        let (s, ring, _) = signer(16);
        let id = identity("k1");
        let v = s.assertion(&id, &id.workspace, "echo").unwrap();
        let (kid, c) = claims(&v, &ring);
        assert_eq!(kid, *ring.signer(T0).unwrap().kid);
        assert_eq!(c.iss, "portcullis");
        assert_eq!(c.sub, "key:k1");
        assert_eq!((c.ws.as_str(), c.wsn.as_str()), ("ws_1", "default"));
        assert_eq!((c.via.kind.as_str(), c.via.id.as_str()), ("api_key", "k1"));
        assert_eq!(c.aud, "echo");
        assert_eq!(c.iat, T0 / 1000);
        assert_eq!(c.exp - c.iat, LIFETIME_S);
        assert_eq!(c.check(T0 / 1000, "echo"), Ok(()));
    }

    #[test]
    fn it_is_reused_until_fifteen_seconds_before_expiry() {
        let (s, ring, clock) = signer(16);
        let id = identity("k1");
        let first = s.assertion(&id, &id.workspace, "echo").unwrap();
        clock.advance(
            Duration::from_secs((LIFETIME_S - REFRESH_BEFORE_EXPIRY_S) as u64)
                - Duration::from_millis(1),
        );
        assert_eq!(s.assertion(&id, &id.workspace, "echo").unwrap(), first);
        // Another audience or workspace is another assertion.
        let other = s.assertion(&id, &id.workspace, "billing").unwrap();
        assert_ne!(other, first);
        let ws = WorkspaceRef {
            id: "ws_2".into(),
            name: "other".into(),
        };
        assert_eq!(
            claims(&s.assertion(&id, &ws, "echo").unwrap(), &ring).1.ws,
            "ws_2"
        );
        clock.advance(Duration::from_millis(1));
        let fresh = s.assertion(&id, &id.workspace, "echo").unwrap();
        assert_ne!(fresh, first);
        assert!(claims(&fresh, &ring).1.iat > claims(&first, &ring).1.iat);
    }

    #[test]
    fn a_new_signing_key_forces_a_new_signature() {
        let (s, ring, _) = signer(16);
        let id = identity("k1");
        let first = s.assertion(&id, &id.workspace, "echo").unwrap();
        let new = key(T0);
        ring.replace(KeySet::new(vec![key(T0 - 1000), new.clone()]));
        let again = s.assertion(&id, &id.workspace, "echo").unwrap();
        assert_ne!(again, first);
        assert_eq!(claims(&again, &ring).0, *new.kid);
    }

    #[test]
    fn no_signing_key_fails_closed() {
        let clock = ManualClock::new(T0);
        let ring = Arc::new(KeyRing::new(KeySet::default(), 0));
        let s = AssertionSigner::new(ring, "portcullis", clock.clock(), 16);
        let id = identity("k1");
        assert_eq!(
            s.assertion(&id, &id.workspace, "echo"),
            Err(AssertionError::NoSigningKey)
        );
    }

    #[test]
    fn an_assertion_never_outlives_its_credential() {
        let (s, ring, _) = signer(16);
        let mut id = identity("k1");
        id.expires_at = Some(T0 + 20_000);
        let c = claims(&s.assertion(&id, &id.workspace, "echo").unwrap(), &ring).1;
        assert_eq!(c.exp, (T0 + 20_000) / 1000);
    }

    #[test]
    fn the_cache_stays_bounded_under_distinct_identities() {
        let (s, _, _) = signer(8);
        let bound = s.per_shard * s.shards.len();
        for i in 0..200 {
            let id = identity(&format!("k{i}"));
            s.assertion(&id, &id.workspace, "echo").unwrap();
        }
        assert!(s.cached() <= bound, "{} > {bound}", s.cached());
        assert!(s.cached() > 0);
    }
}
