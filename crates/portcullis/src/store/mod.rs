//! The store: identities, policy and their history, on `sqlx`.
//!
//! SQLite at `<data_dir>/portcullis.db` by default; PostgreSQL when `store.url` is a
//! `postgres://` URL (several gateway nodes share one). Both are reached through sqlx's `Any`
//! driver with portable SQL (`$n` placeholders, integers for times in Unix milliseconds, text
//! for everything else), so every query is written once and tested on both.
//!
//! The schema is versioned by embedded migrations ([`migrations`]): `portcullis init` applies
//! them, [`Store::open`] applies pending ones forward and refuses — without writing
//! anything — a database whose schema is newer than this binary.
//!
//! Tables, by concern:
//!
//! - **Tenants**: `workspaces` ([`workspaces`]): id, unique name, display name, disabled.
//! - **Identities**: `users` ([`users`], username unique per workspace, a password hash made
//!   elsewhere) and `api_keys` with `api_key_secrets` ([`api_keys`]; a key is of its own or
//!   issued to a user). Every identity row carries a `workspace_id`.
//! - **Policy**: `role_bindings` ([`role_bindings`]): `(subject_kind, subject_id, role,
//!   workspace_id)`, the workspace possibly `*`. Which roles exist and what they grant is
//!   configuration and code (`crate::access`), not rows.
//! - **Token signing**: `signing_keys` ([`signing_keys`]): public keys and sealed private keys
//!   (sealed elsewhere; the store never sees a private key in the clear).
//! - **Links**: `link_keys` ([`link_keys`]): Ed25519 instance keys and their pairings
//!   (pending with a code, approved for a service, denied, revoked).
//! - **Login defence**: `login_throttle` ([`login_throttle`]): failure counts per opaque scope
//!   key, bounded by purging.
//! - **History**: `audit_log` ([`audit`]).
//! - **Coordination**: `store_meta`, whose change generation ([`Store::generation`]) every
//!   change to an identity, a binding, a workspace or a signing key bumps in its own
//!   transaction, so other processes and nodes know to drop their caches. Login throttle
//!   writes do not bump it: they are frequent, attacker-driven, and no cache holds them.
//!
//! Every change to an identity, a binding, a workspace or a signing key runs in one
//! transaction together with its audit row and the generation bump.
//! Operations a request can reach run on the runtime that opened the store
//! (`Store::at_home`).

pub mod api_keys;
pub mod audit;
pub mod link_keys;
pub mod login_throttle;
pub mod migrations;
mod policy;
pub mod role_bindings;
pub mod signing_keys;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;
pub mod users;
pub mod workspaces;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use api_keys::{KeyRecord, KeySecret, KeyVerification, NewKeyRow};
pub use audit::{AuditEntry, AuditEvent};
pub use link_keys::{LinkKey, LinkKeyState, PairingOutcome, PairingRequest};
pub use login_throttle::{ThrottlePolicy, ThrottleState};
pub use role_bindings::{NewRoleBinding, RoleBinding, SubjectKind, ADMIN_ROLE, ALL_WORKSPACES};
pub use signing_keys::{NewSigningKey, SigningKey, EDDSA};
pub use users::{DeletedUser, NewUser, User, UserStatus, UserUpdate};
pub use workspaces::{Workspace, WorkspaceUpdate};

/// File name of the SQLite database inside the data directory.
pub const SQLITE_FILE: &str = "portcullis.db";
/// Name of the workspace `portcullis init` creates.
pub const DEFAULT_WORKSPACE: &str = "default";

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (one node).
    Sqlite,
    /// PostgreSQL (one or many nodes).
    Postgres,
}

/// Errors of the store. Messages never contain the database URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store has not been initialised.
    #[error("the store is not initialised ({0}): run `portcullis init` first")]
    NotInitialised(String),
    /// The database's schema is newer than this binary knows.
    #[error("the database schema is version {found}, newer than this binary supports ({supported}); refusing to use it — upgrade portcullis (the database was not modified)")]
    SchemaTooNew {
        /// Version found.
        found: i64,
        /// Newest version this binary has.
        supported: i64,
    },
    /// `store.url` is not a supported URL.
    #[error("store.url: {0}")]
    Url(String),
    /// Something named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// Invalid input.
    #[error("{0}")]
    Invalid(String),
    /// Filesystem error (data directory).
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The database failed or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The `[store]` section: where identities live and how the gateway reaches them.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// PostgreSQL URL (`postgres://user:password@host/db`) for several gateway nodes. Absent:
    /// SQLite at `<data_dir>/portcullis.db`. Masked when shown: it may hold a password.
    pub url: Option<crate::config::Secret>,
    /// Largest number of database connections. Default 8.
    pub max_connections: u32,
    /// How long a query waits for a free connection before the call fails closed (503).
    /// Default 5 s.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl StoreConfig {
    /// Check the section at key path `at` (`store`). Messages never echo the URL: it may hold
    /// a password.
    pub fn validate(&self, at: &str, errs: &mut Vec<crate::config::ConfigError>) {
        use crate::config::ConfigError;
        if self.max_connections == 0 {
            errs.push(ConfigError::new(
                format!("{at}.max_connections"),
                "must be at least 1",
            ));
        }
        if self.acquire_timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.acquire_timeout"),
                "must be positive",
            ));
        }
        if let Some(u) = &self.url {
            let u = u.expose();
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                errs.push(ConfigError::new(
                    format!("{at}.url"),
                    "must be a postgres:// URL (leave it out for SQLite in data_dir)",
                ));
            }
        }
    }
}

/// Where the store is and how to reach it.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// PostgreSQL URL; `None` means SQLite in `data_dir`.
    pub url: Option<crate::config::Secret>,
    /// Data directory (SQLite file, pepper).
    pub data_dir: PathBuf,
    /// Pool size.
    pub max_connections: u32,
    /// How long a query waits for a connection.
    pub acquire_timeout: Duration,
}

impl StoreOptions {
    /// Options from the configuration.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            url: cfg.store.url.clone(),
            data_dir: cfg.data_dir.clone(),
            max_connections: cfg.store.max_connections,
            acquire_timeout: cfg.store.acquire_timeout,
        }
    }

    /// SQLite in `data_dir` with default pool settings.
    pub fn sqlite(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            url: None,
            data_dir: data_dir.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }

    /// A database at `url` (`postgres://…` or `sqlite://…`).
    pub fn url(url: &str, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            url: Some(crate::config::Secret::new(url)),
            ..Self::sqlite(data_dir)
        }
    }

    fn dialect(&self) -> Result<Dialect, StoreError> {
        match &self.url {
            None => Ok(Dialect::Sqlite),
            Some(u) => {
                let u = u.expose();
                if u.starts_with("postgres://") || u.starts_with("postgresql://") {
                    Ok(Dialect::Postgres)
                } else if u.starts_with("sqlite:") {
                    Ok(Dialect::Sqlite)
                } else {
                    Err(StoreError::Url(
                        "must start with postgres:// (or sqlite:)".into(),
                    ))
                }
            }
        }
    }

    /// Path of the SQLite file when the store is the default SQLite one.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.url.is_none().then(|| self.data_dir.join(SQLITE_FILE))
    }

    /// A human description for messages, without credentials.
    pub fn describe(&self) -> String {
        match (&self.url, self.sqlite_path()) {
            (_, Some(p)) => p.display().to_string(),
            (Some(u), None) => {
                let u = u.expose();
                let scheme = u.split("://").next().unwrap_or("db");
                let host = u
                    .split("://")
                    .nth(1)
                    .map(|r| r.rsplit('@').next().unwrap_or(r))
                    .map(|r| r.split('?').next().unwrap_or(r))
                    .unwrap_or("");
                format!("{scheme}://{host}")
            }
            (None, None) => "store".into(),
        }
    }

    fn url_for(&self, create: bool) -> String {
        match (&self.url, self.sqlite_path()) {
            (Some(u), _) => u.expose().to_string(),
            (None, Some(path)) => {
                let mode = if create { "rwc" } else { "rw" };
                format!("sqlite://{}?mode={mode}", percent_encode_path(&path))
            }
            (None, None) => String::new(),
        }
    }
}

fn percent_encode_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A handle on the store; cheap to clone (one pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// The runtime that opened the store, where its connections live (see [`Store::at_home`]).
    home: Option<tokio::runtime::Handle>,
    /// Verification lookups sent to the database by this handle and its clones (see
    /// [`Store::verification_queries`]).
    verification_queries: Arc<AtomicU64>,
}

/// Stored text that must never be shown: a password hash, a sealed private key. `Debug`
/// prints `***` and it does not implement `Serialize`, so a record holding one can be logged
/// and serialised without leaking it. Compare with the algorithm it belongs to (Argon2
/// verification, unsealing), never with `==`.
#[derive(Clone)]
pub struct Redacted(String);

impl Redacted {
    /// Wrap stored text.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The text itself; call only where it is used, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Bump the change generation on `conn`, inside the change's transaction. Also serialises
/// concurrent changes on PostgreSQL (row lock until commit) and takes SQLite's write lock
/// first, so the checks a change makes before writing cannot race another change. Call it as
/// the first statement of a change.
pub(crate) async fn bump_generation(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE store_meta SET value = value + 1 WHERE name = 'keys_generation'")
        .execute(conn)
        .await?;
    Ok(())
}

/// A duration in whole milliseconds, saturating (for adding to Unix ms).
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A random id: `prefix` + 16 hex digits.
pub(crate) fn random_id(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    async fn connect(opts: &StoreOptions, create: bool) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = opts.dialect()?;
        if let Some(path) = opts.sqlite_path() {
            if create {
                std::fs::create_dir_all(&opts.data_dir)
                    .map_err(|e| StoreError::Io(opts.data_dir.clone(), e))?;
            } else if !path.exists() {
                return Err(StoreError::NotInitialised(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .connect(&opts.url_for(create))
            .await
            .map_err(|e| match e {
                // Configuration errors can echo the URL: keep only the kind.
                sqlx::Error::Configuration(_) => {
                    StoreError::Url(format!("cannot use {}", opts.describe()))
                }
                other => StoreError::Database(other),
            })?;
        let store = Self {
            pool,
            dialect,
            home: tokio::runtime::Handle::try_current().ok(),
            verification_queries: Arc::default(),
        };
        if dialect == Dialect::Sqlite && create {
            // Readers do not block the writer (gateway and CLI share the file); persistent.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&store.pool)
                .await?;
        }
        Ok(store)
    }

    /// Create the store if needed, apply every migration and create the `default`
    /// workspace. Idempotent. Refuses a newer schema without modifying it.
    pub async fn init(opts: &StoreOptions) -> Result<Self, StoreError> {
        let store = Self::connect(opts, true).await?;
        store.migrate().await?;
        store.ensure_workspace(DEFAULT_WORKSPACE).await?;
        Ok(store)
    }

    /// Open an initialised store, applying pending migrations forward. Refuses an
    /// uninitialised store (run `portcullis init`) and a newer schema.
    pub async fn open(opts: &StoreOptions) -> Result<Self, StoreError> {
        let store = Self::connect(opts, false).await?;
        match store.schema_version().await? {
            None => Err(StoreError::NotInitialised(opts.describe())),
            from @ Some(_) => {
                store.migrate_from(from).await?;
                Ok(store)
            }
        }
    }

    /// The dialect of this store.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// How many verification lookups ([`Store::key_for_verification`],
    /// [`Store::user_for_verification`]) this store handle and its clones have sent to the
    /// database. The authenticators' caches promise that a key id or a subject costs one lookup
    /// per cache lifetime, known or not; tests read this to hold them to that.
    pub fn verification_queries(&self) -> u64 {
        self.verification_queries.load(Ordering::Relaxed)
    }

    /// Connections of the pool: (open, idle).
    pub fn pool_connections(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    pub(crate) fn count_verification_query(&self) {
        self.verification_queries.fetch_add(1, Ordering::Relaxed);
    }

    /// The pool, for the modules of the store.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// One round trip: readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.at_home(|store| async move {
            sqlx::query("SELECT 1").execute(&store.pool).await?;
            Ok(())
        })
        .await
    }

    /// Run `f` on the runtime that opened the store. A call from a data-plane worker
    /// (`crate::workers`) hops there, so every pooled connection is registered with that
    /// runtime's reactor, which outlives the workers, and never with a worker's, which would
    /// leave the pool holding dead connections once the workers stop.
    pub(crate) async fn at_home<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Store) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        match &self.home {
            Some(home) if crate::dataplane::current().is_some() => {
                // Aborted if the caller goes away (client gone, health timeout), so waiting
                // queries stay bounded by the callers, as they are without the hop.
                let task = tokio_util::task::AbortOnDropHandle::new(home.spawn(f(self.clone())));
                match task.await {
                    Ok(r) => r,
                    Err(e) if e.is_panic() => Err(StoreError::Database(sqlx::Error::WorkerCrashed)),
                    Err(_) => Err(StoreError::Database(sqlx::Error::PoolClosed)),
                }
            }
            _ => f(self.clone()).await,
        }
    }

    /// Close the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The change generation: bumped by every change to keys, users, role bindings,
    /// workspaces and signing keys, so other processes and nodes know to drop their caches.
    /// (The row is still named `keys_generation`, its name since v1.)
    pub async fn generation(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT value FROM store_meta WHERE name = 'keys_generation'")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r: AnyRow| r.try_get::<i64, _>(0))
            .transpose()?
            .unwrap_or(0))
    }
}
