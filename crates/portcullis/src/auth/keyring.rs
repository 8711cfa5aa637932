//! The gateway's signing keys: Ed25519 key pairs that sign user access tokens and the identity
//! assertions added to forwarded calls, held in memory as one swappable [`KeySet`].
//!
//! - **Which key signs.** A new key is *published* (in JWKS and over every link) at once but
//!   signs only once it is older than the publish delay, so every verifier — another gateway
//!   node polling the store, an SDK that receives keys over its link — holds it before the
//!   first token signed by it arrives. The signer is the newest unretired key past that delay;
//!   when there is none yet (the first key of a fresh store), the oldest unretired key.
//! - **Which keys verify.** Every key not past its `not_after`: a retired key stops signing at
//!   once but keeps verifying until the longest token it may have signed has expired.
//! - **At rest** a private key is sealed ([`seal`]/[`unseal`]) with ChaCha20-Poly1305 under a key
//!   derived from the pepper, bound to its kid, so the database alone never yields a signing
//!   key; the pepper never is in the database.
//!
//! Changes are swapped in as a whole ([`KeyRing::replace`]) and announced on a watch channel
//! ([`KeyRing::subscribe`]), which the link uses to push new public keys to services.

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use portcullis_link::jws::{self, Jwk, Jwks};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::Ed25519KeyPair;
use std::fmt;
use std::sync::Arc;
use tokio::sync::watch;

use super::Pepper;

/// Purpose string of the sealing key derived from the pepper.
const SEAL_PURPOSE: &str = "signing-key-seal-v1";
/// Prefix of a sealed private key, naming the sealing scheme.
const SEALED_PREFIX: &str = "v1.";

/// Errors of key handling. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Randomness or key generation failed.
    #[error("cannot generate a signing key")]
    Generate,
    /// A sealed key does not open under this pepper (another pepper, or tampered).
    #[error(
        "signing key {0} does not unseal with this pepper (wrong pepper, or the row was altered)"
    )]
    Unseal(String),
    /// A stored key is not a valid Ed25519 key.
    #[error("signing key {0} is not a valid Ed25519 key")]
    Invalid(String),
}

/// One signing key, unsealed.
pub struct SigningKey {
    /// Key id, `[A-Za-z0-9_-]`.
    pub kid: Arc<str>,
    pair: Ed25519KeyPair,
    /// The raw public key.
    pub public: [u8; 32],
    /// Created, Unix ms.
    pub created_at: i64,
    /// Retired (stops signing from then on), Unix ms.
    pub retired_at: Option<i64>,
    /// Stops verifying, Unix ms.
    pub not_after: Option<i64>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A freshly generated key: the key and its PKCS#8 document, to be sealed and stored.
pub struct GeneratedKey {
    /// The key.
    pub key: SigningKey,
    /// PKCS#8 v2 document of the private key. Seal it before it goes anywhere.
    pub pkcs8: Vec<u8>,
}

impl SigningKey {
    /// Generate a key created at `now_ms`, with a random kid.
    pub fn generate(now_ms: i64) -> Result<GeneratedKey, KeyError> {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
        let mut id = [0u8; 12];
        rng.fill(&mut id).map_err(|_| KeyError::Generate)?;
        let kid = URL_SAFE_NO_PAD.encode(id);
        let key = Self::from_pkcs8(&kid, doc.as_ref(), now_ms, None, None)?;
        Ok(GeneratedKey {
            key,
            pkcs8: doc.as_ref().to_vec(),
        })
    }

    /// A key from its PKCS#8 document.
    pub fn from_pkcs8(
        kid: &str,
        pkcs8: &[u8],
        created_at: i64,
        retired_at: Option<i64>,
        not_after: Option<i64>,
    ) -> Result<Self, KeyError> {
        if !jws::valid_kid(kid) {
            return Err(KeyError::Invalid(kid.chars().take(64).collect()));
        }
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| KeyError::Invalid(kid.to_string()))?;
        Ok(Self {
            kid: kid.into(),
            public: jws::public_key_of(&pair),
            pair,
            created_at,
            retired_at,
            not_after,
        })
    }

    /// The key pair, to sign with.
    pub fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    /// Still verifying at `now_ms`?
    pub fn verifies_at(&self, now_ms: i64) -> bool {
        self.not_after.is_none_or(|t| now_ms < t)
    }
}

fn sealing_key(pepper: &Pepper) -> LessSafeKey {
    let k = pepper.derive_key(SEAL_PURPOSE);
    // 32 bytes is ChaCha20-Poly1305's key length: this cannot fail.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).expect("32-byte key"))
}

/// Seal a private key's PKCS#8 document for storage: `v1.<nonce>.<ciphertext>`, base64url,
/// authenticated with the kid so a sealed key cannot be moved to another row.
pub fn seal(pepper: &Pepper, kid: &str, pkcs8: &[u8]) -> Result<String, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| KeyError::Generate)?;
    let mut buf = pkcs8.to_vec();
    sealing_key(pepper)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(kid.as_bytes()),
            &mut buf,
        )
        .map_err(|_| KeyError::Generate)?;
    Ok(format!(
        "{SEALED_PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(nonce),
        URL_SAFE_NO_PAD.encode(&buf)
    ))
}

/// Open a sealed private key.
pub fn unseal(pepper: &Pepper, kid: &str, sealed: &str) -> Result<Vec<u8>, KeyError> {
    let bad = || KeyError::Unseal(kid.to_string());
    let rest = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(bad)?;
    let (n, c) = rest.split_once('.').ok_or_else(bad)?;
    let mut nonce = [0u8; NONCE_LEN];
    match URL_SAFE_NO_PAD.decode_slice(n, &mut nonce) {
        Ok(NONCE_LEN) => {}
        _ => return Err(bad()),
    }
    let mut buf = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let plain = sealing_key(pepper)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(kid.as_bytes()),
            &mut buf,
        )
        .map_err(|_| bad())?;
    Ok(plain.to_vec())
}

/// The keys at one moment.
#[derive(Debug, Default)]
pub struct KeySet {
    /// Newest first.
    keys: Vec<Arc<SigningKey>>,
}

impl KeySet {
    /// A set of these keys (any order).
    pub fn new(mut keys: Vec<Arc<SigningKey>>) -> Self {
        keys.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.kid.cmp(&a.kid)));
        Self { keys }
    }

    /// Every key, newest first.
    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// The key that signs at `now_ms`, given the publish delay.
    pub fn signer(&self, now_ms: i64, publish_delay_ms: i64) -> Option<&Arc<SigningKey>> {
        // A retirement may be scheduled (rotation retires the old key once the new one is
        // past the publish delay): until then the old key still signs.
        let live = || {
            self.keys
                .iter()
                .filter(move |k| k.retired_at.is_none_or(|r| now_ms < r) && k.verifies_at(now_ms))
        };
        // None past the delay yet (a fresh store, or a rotation right after start-up): the
        // oldest live key, the one verifiers have had longest.
        live()
            .find(|k| k.created_at + publish_delay_ms <= now_ms)
            .or_else(|| live().next_back())
    }

    /// The public key of `kid` if it verifies at `now_ms`.
    pub fn public(&self, kid: &str, now_ms: i64) -> Option<[u8; 32]> {
        self.keys
            .iter()
            .find(|k| &*k.kid == kid)
            .filter(|k| k.verifies_at(now_ms))
            .map(|k| k.public)
    }

    /// The JWK set of every key that verifies at `now_ms` (at most
    /// [`jws::MAX_JWKS_KEYS`], newest first).
    pub fn jwks(&self, now_ms: i64) -> Jwks {
        Jwks {
            keys: self
                .keys
                .iter()
                .filter(|k| k.verifies_at(now_ms))
                .take(jws::MAX_JWKS_KEYS)
                .map(|k| Jwk::ed25519(&k.kid, &k.public))
                .collect(),
        }
    }
}

/// The signing keys in use, swappable, with change notification.
#[derive(Debug)]
pub struct KeyRing {
    set: ArcSwap<KeySet>,
    publish_delay_ms: i64,
    changes: watch::Sender<u64>,
}

impl KeyRing {
    /// A ring holding `set`; new keys sign `publish_delay_ms` after their creation.
    pub fn new(set: KeySet, publish_delay_ms: i64) -> Self {
        Self {
            set: ArcSwap::from_pointee(set),
            publish_delay_ms,
            changes: watch::channel(0).0,
        }
    }

    /// The current set.
    pub fn load(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.set.load()
    }

    /// Replace the set and tell the subscribers.
    pub fn replace(&self, set: KeySet) {
        self.set.store(Arc::new(set));
        self.changes.send_modify(|g| *g += 1);
    }

    /// The key that signs at `now_ms`.
    pub fn signer(&self, now_ms: i64) -> Option<Arc<SigningKey>> {
        self.set
            .load()
            .signer(now_ms, self.publish_delay_ms)
            .cloned()
    }

    /// The public key of `kid`, if it verifies at `now_ms`.
    pub fn public(&self, kid: &str, now_ms: i64) -> Option<[u8; 32]> {
        self.set.load().public(kid, now_ms)
    }

    /// The published keys at `now_ms`.
    pub fn jwks(&self, now_ms: i64) -> Jwks {
        self.set.load().jwks(now_ms)
    }

    /// A receiver that changes whenever the set is replaced.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The publish delay, ms.
    pub fn publish_delay_ms(&self) -> i64 {
        self.publish_delay_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pepper(b: u8) -> Pepper {
        Pepper::new(vec![b; 32], 1).unwrap()
    }

    #[test]
    fn seal_round_trip_and_binding() {
        let g = SigningKey::generate(0).unwrap();
        let p = pepper(1);
        let sealed = seal(&p, &g.key.kid, &g.pkcs8).unwrap();
        assert!(!sealed.contains(&URL_SAFE_NO_PAD.encode(&g.pkcs8)));
        assert_eq!(unseal(&p, &g.key.kid, &sealed).unwrap(), g.pkcs8);
        assert!(matches!(
            unseal(&pepper(2), &g.key.kid, &sealed),
            Err(KeyError::Unseal(_))
        ));
        assert!(matches!(
            unseal(&p, "another", &sealed),
            Err(KeyError::Unseal(_))
        ));
        assert!(unseal(&p, &g.key.kid, "v1.x.y").is_err());
        let k = SigningKey::from_pkcs8(&g.key.kid, &g.pkcs8, 0, None, None).unwrap();
        assert_eq!(k.public, g.key.public);
    }

    fn key(created: i64, retired: Option<i64>, not_after: Option<i64>) -> Arc<SigningKey> {
        let g = SigningKey::generate(created).unwrap();
        Arc::new(SigningKey {
            retired_at: retired,
            not_after,
            ..g.key
        })
    }

    #[test]
    fn a_new_key_is_published_before_it_signs() {
        let old = key(0, None, None);
        let new = key(10_000, None, None);
        let set = KeySet::new(vec![old.clone(), new.clone()]);
        // Within the delay the older key still signs; both verify.
        assert_eq!(set.signer(15_000, 10_000).unwrap().kid, old.kid);
        assert_eq!(set.jwks(15_000).keys.len(), 2);
        assert_eq!(set.signer(20_000, 10_000).unwrap().kid, new.kid);
        // A lone fresh key signs at once.
        let lone = KeySet::new(vec![new.clone()]);
        assert_eq!(lone.signer(10_001, 10_000).unwrap().kid, new.kid);
    }

    #[test]
    fn a_retired_key_verifies_until_not_after_but_never_signs() {
        let retired = key(0, Some(5_000), Some(50_000));
        let set = KeySet::new(vec![retired.clone()]);
        assert!(set.signer(6_000, 0).is_none());
        assert!(set.public(&retired.kid, 49_999).is_some());
        assert!(set.public(&retired.kid, 50_000).is_none());
        assert!(set.jwks(50_000).keys.is_empty());
    }

    #[test]
    fn replace_notifies() {
        let ring = KeyRing::new(KeySet::default(), 0);
        let rx = ring.subscribe();
        assert!(ring.signer(0).is_none());
        ring.replace(KeySet::new(vec![key(0, None, None)]));
        assert!(rx.has_changed().unwrap());
        assert!(ring.signer(1).is_some());
    }
}
