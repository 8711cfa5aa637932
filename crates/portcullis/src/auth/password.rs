//! User passwords: Argon2id, bounded.
//!
//! - **Hash.** Argon2id (RustCrypto `argon2`) with OWASP's parameters by default (19 MiB,
//!   2 passes, 1 lane; `auth.argon2_*`, with floors), a random 128-bit salt per hash, stored as
//!   a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`). The parameters travel with
//!   the hash, so they can be raised later: verification reads them back from the stored
//!   string, and a successful login whose hash used weaker parameters than configured is
//!   rehashed ([`Verdict::Match`]`{ rehash: true }`).
//! - **Unknown usernames cost the same.** [`PasswordHasher::verify`] with no stored hash
//!   verifies against a dummy hash made at start-up with the configured parameters and always
//!   refuses, so the time of a refusal does not tell whether the user exists.
//! - **Bounded.** Each hash is ~19 MiB and tens of milliseconds of one core. Hashing runs on
//!   tokio's blocking pool, at most `auth.max_concurrent_hashes` at once; at most
//!   `auth.max_pending_hashes` more wait for a turn, and past that a request is refused at
//!   once ([`PasswordError::Busy`], 503) instead of queueing: a login flood costs a bounded
//!   amount of memory and CPU and never runs on the threads that serve calls.
//! - **Secrets.** A [`Password`] prints `***`, is never serialised, and its memory is wiped
//!   when dropped (`zeroize`).

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// Shortest password accepted when one is set, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted, in bytes (set or presented).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A password in memory: `Debug` prints `***`, the bytes are wiped on drop, and it has no
/// `Serialize`. Deserialising takes the `String` serde made and wraps it without a copy.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// Wrap `s`.
    pub fn new(s: impl Into<String>) -> Self {
        Self(Zeroizing::new(s.into()))
    }

    /// The password, to hash. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Is it acceptable as a new password: at least [`MIN_PASSWORD_CHARS`] characters, at most
    /// [`MAX_PASSWORD_BYTES`] bytes, no control characters? The error names the rule, never
    /// the password.
    pub fn check_new(&self) -> Result<(), PasswordError> {
        let p = self.expose();
        if p.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::Policy("a password is at most 1024 bytes"));
        }
        if p.chars().count() < MIN_PASSWORD_CHARS {
            return Err(PasswordError::Policy(
                "a password needs at least 12 characters",
            ));
        }
        if p.chars().any(char::is_control) {
            return Err(PasswordError::Policy(
                "a password cannot contain control characters",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> serde::Deserialize<'de> for Password {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// Why hashing or verifying failed. Never carries the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// A new password breaks a rule (named).
    #[error("{0}")]
    Policy(&'static str),
    /// Too many hashes running and waiting: refused without queueing.
    #[error("too many password checks in progress")]
    Busy,
    /// The parameters are not valid Argon2 parameters.
    #[error("invalid Argon2 parameters: {0}")]
    Params(String),
    /// The stored hash is not a PHC string this verifier understands.
    #[error("the stored password hash is not a valid Argon2 PHC string")]
    StoredHash,
    /// The hashing task failed.
    #[error("password hashing failed")]
    Internal,
}

/// How the hasher works (from `[auth]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashSettings {
    /// Argon2 memory, KiB.
    pub memory_kib: u32,
    /// Argon2 passes.
    pub iterations: u32,
    /// Argon2 lanes.
    pub parallelism: u32,
    /// Hashes computed at once, at most.
    pub max_concurrent: usize,
    /// Hashes waiting for a turn, at most; beyond, [`PasswordError::Busy`].
    pub max_pending: usize,
}

impl HashSettings {
    /// OWASP's Argon2id recommendation (m = 19 MiB, t = 2, p = 1) with `max_concurrent` turns
    /// and 64 waiting.
    pub fn owasp(max_concurrent: usize) -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
            max_concurrent,
            max_pending: 64,
        }
    }

    fn params(&self) -> Result<Params, PasswordError> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| PasswordError::Params(e.to_string()))
    }
}

/// What verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password matches; `rehash` when the stored hash is weaker than the configured
    /// parameters (or not Argon2id) and should be replaced now that the password is at hand.
    Match {
        /// Replace the stored hash.
        rehash: bool,
    },
    /// It does not (or there was no stored hash: the dummy was verified instead).
    Mismatch,
}

/// Hashes and verifies passwords with bounded concurrency. See the module documentation.
pub struct PasswordHasher {
    params: Params,
    settings: HashSettings,
    turns: Arc<Semaphore>,
    /// Hashes running or waiting for a turn.
    queued: Arc<AtomicUsize>,
    /// A hash of a random password with the configured parameters: what an unknown user's
    /// password is verified against.
    dummy: String,
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// One place in the hashing queue ([`PasswordHasher::reserve`]); released when dropped (the
/// blocking job holds it until the hash is done, even if the caller has gone).
pub struct Place(Arc<AtomicUsize>);

impl fmt::Debug for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Place")
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn argon2(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_blocking(params: Params, password: &[u8]) -> Result<String, PasswordError> {
    let salt =
        SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|_| PasswordError::Internal)?;
    argon2(params)
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Internal)
}

impl PasswordHasher {
    /// A hasher with `settings`. Computes the dummy hash once (one Argon2 run), so call it at
    /// start-up, off the data plane.
    pub fn new(settings: HashSettings) -> Result<Self, PasswordError> {
        let params = settings.params()?;
        let dummy = hash_blocking(params.clone(), &rand::random::<[u8; 32]>())?;
        Ok(Self {
            params,
            settings,
            turns: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            queued: Arc::new(AtomicUsize::new(0)),
            dummy,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &HashSettings {
        &self.settings
    }

    /// Hashes running or waiting right now.
    pub fn in_progress(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Take a place in the queue now, or [`PasswordError::Busy`] when it is full: callers that
    /// must do other work first (a store lookup) reserve before it, so a refused login costs
    /// nothing.
    pub fn reserve(&self) -> Result<Place, PasswordError> {
        self.place()
    }

    fn place(&self) -> Result<Place, PasswordError> {
        let bound = self.settings.max_concurrent.max(1) + self.settings.max_pending;
        let prev = self.queued.fetch_add(1, Ordering::AcqRel);
        let place = Place(self.queued.clone());
        if prev >= bound {
            return Err(PasswordError::Busy);
        }
        Ok(place)
    }

    /// With a place in the queue, wait for a turn and run `f` on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        place: Place,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let turn = self
            .turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PasswordError::Internal)?;
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop((turn, place));
            out
        })
        .await
        .map_err(|_| PasswordError::Internal)
    }

    /// Hash a new password (checked against the policy first).
    pub async fn hash(&self, password: &Password) -> Result<String, PasswordError> {
        password.check_new()?;
        let place = self.place()?;
        let params = self.params.clone();
        let pw = password.clone();
        self.run(place, move || hash_blocking(params, pw.expose().as_bytes()))
            .await?
    }

    /// Verify `password` against `stored` (a PHC string), or — when there is no stored hash
    /// (unknown user) — against the dummy, at the same cost, refusing. A stored string that
    /// does not parse refuses too (and is logged without its content).
    pub async fn verify(
        &self,
        password: &Password,
        stored: Option<&str>,
    ) -> Result<Verdict, PasswordError> {
        let place = self.place()?;
        self.verify_reserved(place, password, stored).await
    }

    /// [`PasswordHasher::verify`] in a place already [reserved](PasswordHasher::reserve).
    pub async fn verify_reserved(
        &self,
        place: Place,
        password: &Password,
        stored: Option<&str>,
    ) -> Result<Verdict, PasswordError> {
        if password.expose().len() > MAX_PASSWORD_BYTES {
            // Never hashed: an oversized password costs the caller, not the gateway.
            return Ok(Verdict::Mismatch);
        }
        let real = stored.is_some();
        let phc = stored.unwrap_or(&self.dummy).to_string();
        let pw = password.clone();
        let configured = self.params.clone();
        self.run(place, move || {
            let Ok(parsed) = PasswordHash::new(&phc) else {
                tracing::warn!("a stored password hash does not parse; refusing the login");
                return Ok(Verdict::Mismatch);
            };
            // The hash's own algorithm and parameters are used (`verify_password` reads them
            // from the PHC string); ours only decide whether to rehash.
            let ok = argon2(configured.clone())
                .verify_password(pw.expose().as_bytes(), &parsed)
                .is_ok();
            if !(ok && real) {
                return Ok(Verdict::Mismatch);
            }
            Ok(Verdict::Match {
                rehash: weaker_than(&parsed, &configured),
            })
        })
        .await?
    }
}

/// Is `hash` weaker than `configured` (another algorithm or version, less memory, fewer
/// passes, fewer lanes)?
fn weaker_than(hash: &PasswordHash<'_>, configured: &Params) -> bool {
    if hash.algorithm.as_str() != Algorithm::Argon2id.ident().as_str()
        || hash.version != Some(Version::V0x13.into())
    {
        return true;
    }
    match Params::try_from(hash) {
        Ok(p) => {
            p.m_cost() < configured.m_cost()
                || p.t_cost() < configured.t_cost()
                || p.p_cost() < configured.p_cost()
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small parameters: the behaviour, not the cost, is under test.
    fn small(max_concurrent: usize, max_pending: usize) -> HashSettings {
        HashSettings {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            max_concurrent,
            max_pending,
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only_and_carries_its_parameters() {
        let h = PasswordHasher::new(small(2, 8)).unwrap();
        let pw = Password::new("correct horse battery");
        let phc = h.hash(&pw).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert_eq!(
            h.verify(&pw, Some(&phc)).await.unwrap(),
            Verdict::Match { rehash: false }
        );
        assert_eq!(
            h.verify(&Password::new("correct horse battery!"), Some(&phc))
                .await
                .unwrap(),
            Verdict::Mismatch
        );
        // Salted: the same password hashes differently.
        assert_ne!(h.hash(&pw).await.unwrap(), phc);
    }

    #[tokio::test]
    async fn a_hash_with_weaker_parameters_verifies_and_asks_for_a_rehash() {
        let old = PasswordHasher::new(small(1, 1)).unwrap();
        let pw = Password::new("correct horse battery");
        let phc = old.hash(&pw).await.unwrap();
        let stronger = PasswordHasher::new(HashSettings {
            memory_kib: 128,
            iterations: 2,
            ..small(1, 1)
        })
        .unwrap();
        assert_eq!(
            stronger.verify(&pw, Some(&phc)).await.unwrap(),
            Verdict::Match { rehash: true }
        );
    }

    #[tokio::test]
    async fn an_unknown_user_is_verified_against_the_dummy_and_refused() {
        let h = PasswordHasher::new(small(1, 1)).unwrap();
        assert!(h.dummy.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert_eq!(
            h.verify(&Password::new("anything at all"), None)
                .await
                .unwrap(),
            Verdict::Mismatch
        );
        // A stored string that is not a PHC hash refuses rather than failing open.
        assert_eq!(
            h.verify(&Password::new("anything at all"), Some("plain"))
                .await
                .unwrap(),
            Verdict::Mismatch
        );
    }

    #[tokio::test]
    async fn past_the_queue_bound_a_check_is_refused_at_once() {
        let h = Arc::new(PasswordHasher::new(small(1, 1)).unwrap());
        // Hold both places (one running, one waiting) by hand.
        let a = h.place().unwrap();
        let b = h.place().unwrap();
        assert_eq!(
            h.verify(&Password::new("anything at all"), None)
                .await
                .unwrap_err(),
            PasswordError::Busy
        );
        assert_eq!(h.in_progress(), 2, "a refused check leaves no trace");
        drop((a, b));
        assert!(h
            .verify(&Password::new("anything at all"), None)
            .await
            .is_ok());
        assert_eq!(h.in_progress(), 0);
    }

    #[test]
    fn the_policy_and_the_mask() {
        assert!(Password::new("short").check_new().is_err());
        assert!(Password::new("twelve chars").check_new().is_ok());
        assert!(Password::new("x".repeat(1025)).check_new().is_err());
        assert!(Password::new("with a\nnewline!").check_new().is_err());
        let p = Password::new("hunter2hunter2");
        assert_eq!(format!("{p:?}"), "***");
        let p: Password = serde_json::from_str("\"from json secret\"").unwrap();
        assert_eq!(p.expose(), "from json secret");
    }
}
