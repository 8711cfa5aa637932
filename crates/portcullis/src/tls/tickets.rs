//! Stateless TLS session tickets under a rotating key.
//!
//! A resuming client brings its session back, encrypted under a key only this process holds,
//! so resumption needs no per-client state and scales with clients instead of being capped by
//! a cache (rustls' default server cache holds 256 sessions: past about 128 reconnecting
//! clients, every reconnect paid a full handshake). Keys rotate every `rotation`: the current
//! key seals new tickets, the previous one still opens the tickets it sealed, anything older
//! is gone — a ticket is good for at most twice `rotation`, and a stolen key exposes at most
//! that window (TLS 1.3 resumption still runs an ECDHE exchange, so it does not expose the
//! traffic of resumed sessions either). Rotation is checked when a ticket is sealed or opened,
//! against an injected wall clock, so tests move time by hand.
//!
//! A ticket is `key name (16) ‖ nonce (12) ‖ ChaCha20-Poly1305(session state, aad = key
//! name)`. Everything in it comes from the client: opening is constant-time AEAD, refuses
//! anything longer than the longest ticket sealed (the partitioning-oracle defence rustls'
//! own ticketer uses), and never panics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::clock::Clock;

const NAME_LEN: usize = 16;

struct Key {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

impl Key {
    fn generate(rng: &SystemRandom) -> Option<Self> {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        let mut name = [0u8; NAME_LEN];
        rng.fill(&mut *secret).ok()?;
        rng.fill(&mut name).ok()?;
        let key = UnboundKey::new(&aead::CHACHA20_POLY1305, &*secret).ok()?;
        Some(Self {
            name,
            key: LessSafeKey::new(key),
        })
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
    /// Wall time (ms) at which `current` is demoted.
    next_rotation_ms: i64,
}

/// Seals and opens session tickets under a key that rotates every `rotation`.
pub struct RotatingTicketer {
    keys: RwLock<Keys>,
    rotation_ms: i64,
    lifetime_s: u32,
    clock: Clock,
    rng: SystemRandom,
    longest: AtomicUsize,
}

impl std::fmt::Debug for RotatingTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingTicketer")
            .field("rotation_ms", &self.rotation_ms)
            .finish_non_exhaustive()
    }
}

impl RotatingTicketer {
    /// A ticketer whose key rotates every `rotation` (at least a second), on `clock`.
    pub fn new(rotation: Duration, clock: Clock) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let current = Key::generate(&rng).ok_or_else(|| anyhow::anyhow!("no randomness"))?;
        let rotation_ms = i64::try_from(rotation.as_millis())
            .unwrap_or(i64::MAX)
            .max(1000);
        Ok(Self {
            keys: RwLock::new(Keys {
                current,
                previous: None,
                next_rotation_ms: clock.now_ms().saturating_add(rotation_ms),
            }),
            rotation_ms,
            // What clients are told: a ticket opens for up to twice the rotation.
            lifetime_s: u32::try_from(rotation_ms.saturating_mul(2) / 1000).unwrap_or(u32::MAX),
            clock,
            rng,
            longest: AtomicUsize::new(0),
        })
    }

    /// Demote the current key now (the previous one is erased); what the schedule does.
    pub fn rotate(&self) {
        if let Ok(mut k) = self.keys.write() {
            self.replace_current(&mut k, true);
        }
    }

    fn maybe_rotate(&self) {
        let due = self
            .keys
            .read()
            .map(|k| self.clock.now_ms() >= k.next_rotation_ms)
            .unwrap_or(false);
        if due {
            // Two callers may both see it due: only one rotates, the other finds it fresh.
            if let Ok(mut k) = self.keys.write() {
                let now = self.clock.now_ms();
                if now >= k.next_rotation_ms {
                    // Rotations missed (a long idle spell) leave nothing older behind.
                    let missed = now >= k.next_rotation_ms.saturating_add(self.rotation_ms);
                    self.replace_current(&mut k, !missed);
                }
            }
        }
    }

    /// A new current key; the old one becomes the previous (`keep_previous`) or is erased.
    fn replace_current(&self, k: &mut Keys, keep_previous: bool) {
        let Some(next) = Key::generate(&self.rng) else {
            tracing::error!("no randomness for a new TLS ticket key: keeping the current one");
            return;
        };
        let old = std::mem::replace(&mut k.current, next);
        k.previous = keep_previous.then_some(old);
        k.next_rotation_ms = self.clock.now_ms().saturating_add(self.rotation_ms);
    }
}

impl RotatingTicketer {
    /// Seal session state `plain` into a ticket under the current key.
    pub fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.maybe_rotate();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let keys = self.keys.read().ok()?;
        let k = &keys.current;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&k.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        k.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&k.name),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        self.longest.fetch_max(out.len(), Ordering::Relaxed);
        Some(out)
    }

    /// Open a ticket a client brought (every byte of it the client's): the state, or `None`.
    pub fn open(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() > self.longest.load(Ordering::Relaxed) {
            return None;
        }
        self.maybe_rotate();
        let name = cipher.get(..NAME_LEN)?;
        let nonce = cipher.get(NAME_LEN..NAME_LEN + NONCE_LEN)?;
        let sealed = cipher.get(NAME_LEN + NONCE_LEN..)?;
        let keys = self.keys.read().ok()?;
        let k = [Some(&keys.current), keys.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = k
            .key
            .open_in_place(nonce, Aad::from(&k.name), &mut buf)
            .ok()?;
        let n = plain.len();
        buf.truncate(n);
        Some(buf)
    }
}

impl rustls::server::ProducesTickets for RotatingTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime_s
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use rustls::server::ProducesTickets;

    #[test]
    fn a_ticket_opens_under_the_current_and_the_previous_key_only() {
        let clock = ManualClock::new(1_000_000);
        let t = RotatingTicketer::new(Duration::from_secs(60), clock.clock()).unwrap();
        assert_eq!(t.lifetime(), 120);
        let a = t.encrypt(b"session a").unwrap();
        assert_eq!(t.decrypt(&a).unwrap(), b"session a");
        clock.advance(Duration::from_secs(61));
        let b = t.encrypt(b"session b").unwrap();
        assert_eq!(t.decrypt(&a).unwrap(), b"session a", "previous key");
        clock.advance(Duration::from_secs(61));
        assert_eq!(t.decrypt(&a), None, "two rotations old");
        assert_eq!(t.decrypt(&b).unwrap(), b"session b");
        t.rotate();
        t.rotate();
        assert_eq!(t.decrypt(&b), None);
    }

    #[test]
    fn hostile_tickets_open_to_nothing() {
        let t = RotatingTicketer::new(Duration::from_secs(60), Clock::system()).unwrap();
        let good = t.encrypt(b"state").unwrap();
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let longer = [good.as_slice(), b"x"].concat();
        for bad in [
            &b""[..],
            &good[..10],
            &good[..NAME_LEN + NONCE_LEN],
            &flipped,
            &longer,
        ] {
            assert_eq!(t.decrypt(bad), None);
        }
        let mut renamed = good.clone();
        renamed[0] ^= 1;
        assert_eq!(t.decrypt(&renamed), None);
    }

    #[test]
    fn a_long_idle_spell_leaves_no_old_key_behind() {
        let clock = ManualClock::new(1_000_000);
        let t = RotatingTicketer::new(Duration::from_secs(60), clock.clock()).unwrap();
        let a = t.encrypt(b"a").unwrap();
        clock.advance(Duration::from_secs(3600));
        assert_eq!(t.decrypt(&a), None);
    }
}
