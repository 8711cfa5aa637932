//! The `[auth]` configuration section, with the module that owns it: its fields, defaults
//! and its own validation, naming each problem's key path.

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Authentication of clients (API keys).
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
            audit_max_rows: 100_000,
            negative_cache_ttl: Duration::from_secs(30),
            negative_cache_capacity: 10_000,
            max_concurrent_lookups: 4,
            max_pending_lookups: 1024,
            lookup_timeout: Duration::from_secs(5),
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
    }
}
