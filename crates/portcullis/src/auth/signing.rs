//! The gateway's signing keys, kept in the store (`signing_keys`) and held in memory as the
//! one [`KeyRing`] every part of the gateway signs and verifies with (tokens here, identity
//! assertions on forwarded calls).
//!
//! - **Start-up** ([`SigningKeys::load`]): every stored key is unsealed with the pepper; a key
//!   that does not unseal is a start-up error naming its kid (never its bytes). A store with
//!   no key gets its first one.
//! - **Publish delay.** A new key is published at once but signs only once it is older than
//!   the publish delay, default 2 × `auth.invalidation_poll` + 2 × `link.heartbeat_interval`:
//!   two polls for every other gateway node to reload it from the store, two heartbeats for
//!   every linked service to receive it, before a token or assertion signed by it can reach
//!   them.
//! - **Rotation** ([`rotate`], `portcullis signing-keys rotate`, and every
//!   `auth.signing_key_rotation` by the background task): a new key is stored, and every older
//!   key is scheduled to retire when the new one starts signing (so something always signs),
//!   verifying until `retired_at + auth.token_ttl + the longest assertion lifetime + leeway`:
//!   whatever an old key signed stays valid until it expires.
//! - **Other nodes** rotate too: the ring is reloaded whenever the store's change generation
//!   moves ([`super::Changes`]) and on the rotation check every minute.

use portcullis_link::jws;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::keyring::{self, KeyError, KeyRing, KeySet, SigningKey};
use super::throttle::StoreFuture;
use super::{Changes, Pepper};
use crate::clock::Clock;
use crate::store::StoreError;

/// A signing key as the store keeps it: the private key sealed ([`keyring::seal`]).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSigningKey {
    /// Key id.
    pub kid: String,
    /// Raw Ed25519 public key.
    pub public_key: [u8; 32],
    /// The sealed PKCS#8 private key (`v1.<nonce>.<ciphertext>`).
    pub sealed_private_key: String,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Stops signing, Unix ms.
    pub retired_at: Option<i64>,
    /// Stops verifying, Unix ms.
    pub not_after: Option<i64>,
}

impl fmt::Debug for StoredSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Where signing keys are kept. Every change must bump the store's change generation, so the
/// other nodes reload.
pub trait SigningKeyStore: Send + Sync + 'static {
    /// Every stored key.
    fn signing_keys(&self) -> StoreFuture<'_, Vec<StoredSigningKey>>;
    /// Store a new key.
    fn insert_signing_key<'a>(&'a self, key: &'a StoredSigningKey) -> StoreFuture<'a, ()>;
    /// Schedule `kid` to stop signing at `retired_at` and verifying at `not_after` (Unix ms).
    fn retire_signing_key<'a>(
        &'a self,
        kid: &'a str,
        retired_at: i64,
        not_after: i64,
    ) -> StoreFuture<'a, ()>;
}

/// Why the signing keys could not be loaded or changed. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key could not be generated, unsealed or parsed (its kid is named).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store failed.
    #[error("signing keys: {0}")]
    Store(#[from] StoreError),
}

/// How the keys are used (from `[auth]` and `[link]`).
#[derive(Debug, Clone)]
pub struct SigningSettings {
    /// A new key signs only this long after its creation.
    pub publish_delay: Duration,
    /// A key is replaced this long after its creation.
    pub rotation: Duration,
    /// The longest a token signed by a key may stay valid after the key stops signing.
    pub token_ttl: Duration,
    /// The wall clock.
    pub clock: Clock,
}

impl SigningSettings {
    /// From the configuration: the publish delay is 2 × `auth.invalidation_poll` +
    /// 2 × `link.heartbeat_interval`.
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            publish_delay: 2 * c.auth.invalidation_poll + 2 * c.link.heartbeat_interval,
            rotation: c.auth.signing_key_rotation,
            token_ttl: c.auth.token_ttl,
            clock: Clock::system(),
        }
    }

    /// How long a retired key keeps verifying: the longest token, the longest assertion and
    /// the clock leeway.
    pub fn verify_grace(&self) -> Duration {
        self.token_ttl
            + Duration::from_secs(
                u64::try_from(jws::MAX_ASSERTION_LIFETIME_S + jws::LEEWAY_S).unwrap_or(65),
            )
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Unseal every stored key; the first that does not unseal is an error naming it.
fn unseal_all(pepper: &Pepper, stored: &[StoredSigningKey]) -> Result<KeySet, KeyError> {
    let mut keys = Vec::with_capacity(stored.len());
    for s in stored {
        let pkcs8 =
            zeroize::Zeroizing::new(keyring::unseal(pepper, &s.kid, &s.sealed_private_key)?);
        let k = SigningKey::from_pkcs8(&s.kid, &pkcs8, s.created_at, s.retired_at, s.not_after)?;
        if k.public != s.public_key {
            return Err(KeyError::Invalid(s.kid.clone()));
        }
        keys.push(Arc::new(k));
    }
    Ok(KeySet::new(keys))
}

/// A new key, sealed, created at `now`.
fn new_stored(pepper: &Pepper, now: i64) -> Result<StoredSigningKey, KeyError> {
    let g = SigningKey::generate(now)?;
    let pkcs8 = zeroize::Zeroizing::new(g.pkcs8);
    Ok(StoredSigningKey {
        kid: g.key.kid.to_string(),
        public_key: g.key.public,
        sealed_private_key: keyring::seal(pepper, &g.key.kid, &pkcs8)?,
        created_at: now,
        retired_at: None,
        not_after: None,
    })
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new key.
    pub kid: String,
    /// When it starts signing (Unix ms).
    pub signs_from: i64,
    /// The keys it replaces, with when each stops verifying.
    pub retired: Vec<(String, i64)>,
}

/// Rotate the keys in `store` at `now` (Unix ms): store a new key and schedule every key still
/// signing to retire when the new one starts to sign.
pub async fn rotate(
    store: &dyn SigningKeyStore,
    pepper: &Pepper,
    settings: &SigningSettings,
    now: i64,
) -> Result<Rotation, SigningError> {
    let existing = store.signing_keys().await?;
    let new = new_stored(pepper, now)?;
    store.insert_signing_key(&new).await?;
    let signs_from = now.saturating_add(ms(settings.publish_delay));
    let not_after = signs_from.saturating_add(ms(settings.verify_grace()));
    let mut retired = Vec::new();
    for k in existing {
        if k.retired_at.is_none_or(|r| r > signs_from) {
            let until = k.not_after.map_or(not_after, |n| n.min(not_after));
            store.retire_signing_key(&k.kid, signs_from, until).await?;
            retired.push((k.kid, until));
        }
    }
    Ok(Rotation {
        kid: new.kid,
        signs_from,
        retired,
    })
}

/// The store-backed signing keys of a running gateway.
pub struct SigningKeys {
    store: Arc<dyn SigningKeyStore>,
    pepper: Pepper,
    settings: SigningSettings,
    ring: Arc<KeyRing>,
    /// One reload or rotation at a time.
    busy: tokio::sync::Mutex<()>,
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys")
            .field("settings", &self.settings)
            .field("ring", &self.ring)
            .finish_non_exhaustive()
    }
}

impl SigningKeys {
    /// Load every key from `store` (creating the first when there is none) and build the ring.
    /// A key that does not unseal with `pepper` is an error naming its kid.
    pub async fn load(
        store: Arc<dyn SigningKeyStore>,
        pepper: Pepper,
        settings: SigningSettings,
    ) -> Result<Arc<Self>, SigningError> {
        let mut stored = store.signing_keys().await?;
        let now = settings.clock.now_ms();
        if !stored.iter().any(|k| k.not_after.is_none_or(|t| t > now)) {
            let first = new_stored(&pepper, now)?;
            store.insert_signing_key(&first).await?;
            tracing::info!(kid = %first.kid, "created the first signing key");
            stored = store.signing_keys().await?;
        }
        let set = unseal_all(&pepper, &stored)?;
        let ring = Arc::new(KeyRing::new(set, ms(settings.publish_delay)));
        Ok(Arc::new(Self {
            store,
            pepper,
            settings,
            ring,
            busy: tokio::sync::Mutex::new(()),
            last_error: Mutex::new(None),
        }))
    }

    /// The ring: one for the whole gateway.
    pub fn ring(&self) -> &Arc<KeyRing> {
        &self.ring
    }

    /// Read the keys again and swap them in. A key that no longer unseals keeps the ring as it
    /// was (and is logged by kid): a running gateway does not lose its keys to a bad row.
    pub async fn reload(&self) -> Result<(), SigningError> {
        let _one = self.busy.lock().await;
        let stored = self.store.signing_keys().await?;
        let set = unseal_all(&self.pepper, &stored)?;
        self.ring.replace(set);
        Ok(())
    }

    /// Rotate now (see [`rotate`]) and reload.
    pub async fn rotate(&self) -> Result<Rotation, SigningError> {
        let r = {
            let _one = self.busy.lock().await;
            rotate(
                &*self.store,
                &self.pepper,
                &self.settings,
                self.settings.clock.now_ms(),
            )
            .await?
        };
        self.reload().await?;
        tracing::info!(kid = %r.kid, "signing key rotated");
        Ok(r)
    }

    /// Rotate when the newest key is older than `auth.signing_key_rotation`. Returns whether
    /// it did.
    pub async fn rotate_if_due(&self) -> Result<bool, SigningError> {
        let now = self.settings.clock.now_ms();
        let newest = self.ring.load().keys().first().map(|k| k.created_at);
        let due = newest.is_none_or(|c| now.saturating_sub(c) >= ms(self.settings.rotation));
        if due {
            self.rotate().await?;
        }
        Ok(due)
    }

    fn report(&self, what: &str, r: Result<(), SigningError>) {
        let Ok(mut last) = self.last_error.lock() else {
            return;
        };
        match r {
            Ok(()) => *last = None,
            Err(e) => {
                let m = e.to_string();
                // Once per distinct failure, not once per poll.
                if last.as_deref() != Some(&m) {
                    tracing::error!(error = %m, "signing keys: {what} failed");
                }
                *last = Some(m);
            }
        }
    }

    /// Reload whenever `changes` moves, check the rotation every minute, until `shutdown`.
    pub fn start(
        self: &Arc<Self>,
        changes: &Changes,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut rx = changes.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = rx.changed() => {
                        if r.is_err() {
                            break;
                        }
                        let r = me.reload().await;
                        me.report("reload", r);
                    }
                    _ = tick.tick() => {
                        let r = match me.reload().await {
                            Ok(()) => me.rotate_if_due().await.map(|_| ()),
                            Err(e) => Err(e),
                        };
                        me.report("rotation check", r);
                    }
                }
            }
        })
    }
}

/// Signing keys in memory: tests, benches, and a gateway whose store has no `signing_keys`
/// table yet (keys then last as long as the process).
#[derive(Debug, Default)]
pub struct MemorySigningKeys {
    keys: Mutex<Vec<StoredSigningKey>>,
}

impl MemorySigningKeys {
    /// No keys.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }
}

impl SigningKeyStore for MemorySigningKeys {
    fn signing_keys(&self) -> StoreFuture<'_, Vec<StoredSigningKey>> {
        Box::pin(async move { Ok(self.keys.lock().map(|k| k.clone()).unwrap_or_default()) })
    }

    fn insert_signing_key<'a>(&'a self, key: &'a StoredSigningKey) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(mut k) = self.keys.lock() {
                k.push(key.clone());
            }
            Ok(())
        })
    }

    fn retire_signing_key<'a>(
        &'a self,
        kid: &'a str,
        retired_at: i64,
        not_after: i64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(mut keys) = self.keys.lock() {
                for k in keys.iter_mut().filter(|k| k.kid == kid) {
                    k.retired_at = Some(retired_at);
                    k.not_after = Some(not_after);
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn pepper(b: u8) -> Pepper {
        Pepper::new(vec![b; 32], 1).unwrap()
    }

    fn settings(clock: &ManualClock) -> SigningSettings {
        SigningSettings {
            publish_delay: Duration::from_secs(10),
            rotation: Duration::from_secs(3600),
            token_ttl: Duration::from_secs(900),
            clock: clock.clock(),
        }
    }

    #[tokio::test]
    async fn the_first_start_creates_a_key_and_the_next_loads_it() {
        let clock = ManualClock::new(1_000_000);
        let store = MemorySigningKeys::new();
        let a = SigningKeys::load(store.clone(), pepper(1), settings(&clock))
            .await
            .unwrap();
        let kid = a.ring().signer(clock.now_ms()).unwrap().kid.clone();
        let b = SigningKeys::load(store.clone(), pepper(1), settings(&clock))
            .await
            .unwrap();
        assert_eq!(b.ring().signer(clock.now_ms()).unwrap().kid, kid);
        assert_eq!(store.keys.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_key_that_does_not_unseal_is_a_start_up_error_naming_its_kid() {
        let clock = ManualClock::new(1_000_000);
        let store = MemorySigningKeys::new();
        let a = SigningKeys::load(store.clone(), pepper(1), settings(&clock))
            .await
            .unwrap();
        let kid = a.ring().signer(clock.now_ms()).unwrap().kid.to_string();
        let e = SigningKeys::load(store, pepper(2), settings(&clock))
            .await
            .unwrap_err();
        let m = e.to_string();
        assert!(m.contains(&kid), "{m}");
    }

    #[tokio::test]
    async fn after_a_rotation_the_old_key_signs_until_the_new_one_is_published_then_verifies() {
        let clock = ManualClock::new(1_000_000);
        let store = MemorySigningKeys::new();
        let s = settings(&clock);
        let keys = SigningKeys::load(store.clone(), pepper(1), s.clone())
            .await
            .unwrap();
        let old = keys.ring().signer(clock.now_ms()).unwrap().kid.to_string();
        clock.advance(Duration::from_secs(60));
        let r = keys.rotate().await.unwrap();
        assert_eq!(r.retired.len(), 1);
        let now = clock.now_ms();
        assert_eq!(
            &*keys.ring().signer(now).unwrap().kid,
            old,
            "within the delay"
        );
        assert_eq!(keys.ring().jwks(now).keys.len(), 2, "both published");
        clock.advance(Duration::from_secs(10));
        let now = clock.now_ms();
        assert_eq!(&*keys.ring().signer(now).unwrap().kid, r.kid);
        assert!(
            keys.ring().public(&old, now).is_some(),
            "the old key verifies"
        );
        let grace = s.verify_grace();
        clock.advance(grace);
        assert!(
            keys.ring().public(&old, clock.now_ms()).is_none(),
            "until its tokens expired"
        );
    }

    #[tokio::test]
    async fn a_rotation_is_due_after_the_rotation_period() {
        let clock = ManualClock::new(1_000_000);
        let keys = SigningKeys::load(MemorySigningKeys::new(), pepper(1), settings(&clock))
            .await
            .unwrap();
        assert!(!keys.rotate_if_due().await.unwrap());
        clock.advance(Duration::from_secs(3600));
        assert!(keys.rotate_if_due().await.unwrap());
        assert_eq!(keys.ring().load().keys().len(), 2);
    }
}
