//! The `[auth]` configuration section, with the module that owns it: its fields, defaults
//! and its own validation, naming each problem's key path.

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Authentication of clients (API keys, users and their tokens).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File holding the pepper API key secrets are hashed under (at least 32 bytes; hex is
    /// fine). `PORTCULLIS_PEPPER` takes precedence; absent both, `<data_dir>/pepper` (written
    /// by `portcullis init`). Never put the pepper itself in this file or the database.
    pub pepper_file: Option<PathBuf>,
    /// Version of the pepper, stored with every hash. Default 1.
    pub pepper_version: u32,
    /// How long a verified key stays in the in-memory verification cache. Changes made on
    /// this node invalidate it at once; changes from elsewhere within `invalidation_poll`.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Most keys held in the verification cache. Default 10000.
    pub cache_capacity: usize,
    /// How often the gateway checks the store for key changes made by other processes or
    /// nodes (the CLI, other gateways) and drops its cache when there are some. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub invalidation_poll: Duration,
    /// When set, `/metrics` requires a key with this scope. Absent: `/metrics` is open
    /// (bind it to a private interface or put it behind this).
    pub metrics_scope: Option<String>,
    /// A file (mode 0600) holding a one-time token of at least 32 bytes that enables
    /// `POST /api/v1/auth/bootstrap`, which creates the first admin user over HTTP while no
    /// admin exists. Absent (the default): there is no HTTP bootstrap, only `portcullis
    /// bootstrap` on the store. Remove it once the admin exists.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Most rows kept in the audit log; the oldest are trimmed. Default 100000.
    pub audit_max_rows: u64,
    /// How long "no such key id" stays in the negative cache, so a key id that does not exist
    /// costs one store lookup per lifetime instead of one per try. Keys created on this node
    /// are seen at once, elsewhere within `invalidation_poll`. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub negative_cache_ttl: Duration,
    /// Most unknown key ids held in the negative cache (apart from `cache_capacity`, so a
    /// flood of random ids cannot evict real keys); the oldest go first. Default 10000.
    pub negative_cache_capacity: usize,
    /// Most verification lookups sent to the store at once; further cache misses wait for
    /// one. Concurrent misses for one key id share a lookup. Default 4.
    pub max_concurrent_lookups: usize,
    /// Most distinct key ids waiting for or in a store lookup; a miss beyond it is refused
    /// with 503 (fail closed) instead of queueing without bound. Default 1024.
    pub max_pending_lookups: usize,
    /// Deadline for one verification lookup, waiting included; past it the call fails closed
    /// with 503. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub lookup_timeout: Duration,
    /// Lifetime of a user access token from login. Default 15 min, at most 24 h.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// `aud` of the tokens this gateway issues, and the only audience it accepts. Gateways
    /// sharing a store and accepting each other's tokens use the same value. Default
    /// `portcullis`.
    pub token_audience: String,
    /// How often the signing key of tokens and identity assertions is replaced by a new one.
    /// The old key stops signing and keeps verifying until every token and assertion it signed
    /// has expired. Default 30 days, at least 1 h.
    #[serde(with = "humantime_serde")]
    pub signing_key_rotation: Duration,
    /// Argon2id memory per password hash, KiB. Default 19456 (19 MiB, OWASP); at least 7168,
    /// and memory × iterations at least 35840 (OWASP's weakest acceptable setting).
    pub argon2_memory_kib: u32,
    /// Argon2id passes. Default 2 (OWASP); at least 2.
    pub argon2_iterations: u32,
    /// Argon2id lanes. Default 1 (OWASP); 1-16.
    pub argon2_parallelism: u32,
    /// Password hashes computed at once, at most (each holds `argon2_memory_kib` of memory and
    /// a core). Absent: half the CPUs, at least 1.
    pub max_concurrent_hashes: Option<usize>,
    /// Logins waiting for a hashing turn, at most; beyond, a login is refused at once with 503.
    /// Default 64.
    pub max_pending_hashes: usize,
    /// Failed logins per account (workspace, username) within `login_failure_window` before
    /// the account is locked for `login_lockout`. Shared between nodes through the store.
    /// Default 5.
    pub login_max_failures: u32,
    /// Failed logins per source address within `login_failure_window` before the address is
    /// locked for `login_lockout`. Default 50.
    pub login_max_failures_per_ip: u32,
    /// The window failed logins are counted in. Default 15 min.
    #[serde(with = "humantime_serde")]
    pub login_failure_window: Duration,
    /// How long a locked account or address is refused without a password check. Default
    /// 15 min.
    #[serde(with = "humantime_serde")]
    pub login_lockout: Duration,
    /// Accounts and addresses the in-memory login throttle tracks, at most. Default 100000.
    pub login_throttle_capacity: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            pepper_file: None,
            pepper_version: 1,
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 10_000,
            invalidation_poll: Duration::from_secs(1),
            metrics_scope: None,
            bootstrap_token_file: None,
            audit_max_rows: 100_000,
            negative_cache_ttl: Duration::from_secs(30),
            negative_cache_capacity: 10_000,
            max_concurrent_lookups: 4,
            max_pending_lookups: 1024,
            lookup_timeout: Duration::from_secs(5),
            token_ttl: Duration::from_secs(15 * 60),
            token_audience: "portcullis".into(),
            signing_key_rotation: Duration::from_secs(30 * 86_400),
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: None,
            max_pending_hashes: 64,
            login_max_failures: 5,
            login_max_failures_per_ip: 50,
            login_failure_window: Duration::from_secs(15 * 60),
            login_lockout: Duration::from_secs(15 * 60),
            login_throttle_capacity: 100_000,
        }
    }
}

impl AuthConfig {
    /// Check the section at key path `at` (`auth`), adding every problem to `errs`.
    pub fn validate(&self, at: &str, errs: &mut Vec<ConfigError>) {
        if self.pepper_version == 0 {
            errs.push(ConfigError::new(
                format!("{at}.pepper_version"),
                "must be at least 1",
            ));
        }
        if self.cache_capacity == 0 {
            errs.push(ConfigError::new(
                format!("{at}.cache_capacity"),
                "must be at least 1",
            ));
        }
        if self.invalidation_poll < Duration::from_millis(10) {
            errs.push(ConfigError::new(
                format!("{at}.invalidation_poll"),
                "must be at least 10ms",
            ));
        }
        if let Some(scope) = &self.metrics_scope {
            if !crate::auth::valid_scope(scope) {
                errs.push(ConfigError::new(
                    format!("{at}.metrics_scope"),
                    "scopes are `*` or 1-128 of [a-z0-9._:-]",
                ));
            }
        }
        if self.audit_max_rows < 100 {
            errs.push(ConfigError::new(
                format!("{at}.audit_max_rows"),
                "must be at least 100",
            ));
        }
        for (path, v) in [
            (
                format!("{at}.negative_cache_capacity"),
                self.negative_cache_capacity,
            ),
            (
                format!("{at}.max_concurrent_lookups"),
                self.max_concurrent_lookups,
            ),
            (
                format!("{at}.max_pending_lookups"),
                self.max_pending_lookups,
            ),
        ] {
            if v == 0 {
                errs.push(ConfigError::new(path, "must be at least 1"));
            }
        }
        if self.lookup_timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.lookup_timeout"),
                "must be positive",
            ));
        }
        self.validate_users(at, errs);
    }

    /// The users and tokens part of the section.
    fn validate_users(&self, at: &str, errs: &mut Vec<ConfigError>) {
        let mut bad =
            |field: &str, m: &str| errs.push(ConfigError::new(format!("{at}.{field}"), m));
        if self.token_ttl < Duration::from_secs(60) || self.token_ttl > super::token::MAX_TOKEN_TTL
        {
            bad("token_ttl", "must be between 1m and 24h");
        }
        let aud = &self.token_audience;
        if aud.is_empty() || aud.len() > 128 || !aud.bytes().all(|b| b.is_ascii_graphic()) {
            bad(
                "token_audience",
                "must be 1-128 printable ASCII characters without spaces",
            );
        }
        if self.signing_key_rotation < Duration::from_secs(3600) {
            bad("signing_key_rotation", "must be at least 1h");
        }
        if self.argon2_memory_kib < 7168 || self.argon2_memory_kib > 4 * 1024 * 1024 {
            bad(
                "argon2_memory_kib",
                "must be between 7168 (7 MiB) and 4194304 (4 GiB)",
            );
        }
        if !(2..=64).contains(&self.argon2_iterations) {
            bad("argon2_iterations", "must be between 2 and 64");
        }
        if u64::from(self.argon2_memory_kib) * u64::from(self.argon2_iterations) < 35_840 {
            bad(
                "argon2_iterations",
                "argon2_memory_kib × argon2_iterations must be at least 35840 (OWASP)",
            );
        }
        if !(1..=16).contains(&self.argon2_parallelism) {
            bad("argon2_parallelism", "must be between 1 and 16");
        }
        if self.max_concurrent_hashes == Some(0) {
            bad("max_concurrent_hashes", "must be at least 1");
        }
        for (field, v) in [
            ("login_max_failures", u64::from(self.login_max_failures)),
            (
                "login_max_failures_per_ip",
                u64::from(self.login_max_failures_per_ip),
            ),
            (
                "login_throttle_capacity",
                self.login_throttle_capacity as u64,
            ),
        ] {
            if v == 0 {
                bad(field, "must be at least 1");
            }
        }
        if self.login_failure_window.is_zero() {
            bad("login_failure_window", "must be positive");
        }
        if self.login_lockout.is_zero() {
            bad("login_lockout", "must be positive");
        }
    }

    /// The password hasher's settings.
    pub fn hash_settings(&self) -> super::password::HashSettings {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        super::password::HashSettings {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
            max_concurrent: self.max_concurrent_hashes.unwrap_or((cpus / 2).max(1)),
            max_pending: self.max_pending_hashes,
        }
    }

    /// The login throttle's settings.
    pub fn throttle_settings(&self) -> super::throttle::ThrottleSettings {
        super::throttle::ThrottleSettings {
            max_failures: self.login_max_failures,
            max_failures_per_ip: self.login_max_failures_per_ip,
            window: self.login_failure_window,
            lockout: self.login_lockout,
            capacity: self.login_throttle_capacity,
        }
    }
}
