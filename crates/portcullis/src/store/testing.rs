//! Test support: fresh stores on SQLite and PostgreSQL, and the one way a test says it skipped
//! something.
//!
//! Every store test runs against both. PostgreSQL is reached at
//! `PORTCULLIS_TEST_POSTGRES_URL`, or at [`DEFAULT_POSTGRES_URL`] when it is unset (the server
//! every development machine and CI runner of the project has); each test gets its own
//! uniquely named database, dropped by [`TestStore::cleanup`], so tests run in parallel and
//! re-run cleanly.
//!
//! A part of a test that cannot run is never silent: [`skipped`] writes `SKIPPED: …` straight
//! to standard error, past the test harness's output capture, so it shows even when the test
//! passes; under `PORTCULLIS_TEST_STRICT` (which `.ci/run` sets) it fails the test instead.
//! The PostgreSQL half is skipped only when the variable is unset and the default server does
//! not answer, or when it is `off`; a server named explicitly that does not answer fails.

use super::{Store, StoreOptions};
use std::path::PathBuf;

/// Environment variable naming the PostgreSQL server for tests (`off`: skip those halves).
pub const POSTGRES_ENV: &str = "PORTCULLIS_TEST_POSTGRES_URL";

/// The server used when [`POSTGRES_ENV`] is unset.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Environment variable that turns every [`skipped`] into a failure (any value but `0` or
/// empty).
pub const STRICT_ENV: &str = "PORTCULLIS_TEST_STRICT";

fn strict() -> bool {
    std::env::var(STRICT_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Say that `what` of the running test did not run, and `why`: on standard error even when
/// the test passes, or as a panic under [`STRICT_ENV`].
///
/// # Panics
/// Under [`STRICT_ENV`], always.
pub fn skipped(what: &str, why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    if strict() {
        panic!("{test}: {what} did not run ({why}), and {STRICT_ENV} is set");
    }
    // `eprintln!` would be captured with the output of a passing test and never shown.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: {what}: {why} (set {STRICT_ENV}=1 to make this a failure)"
    );
}

/// Where the PostgreSQL half of a test runs: an explicit server, the default one (which may
/// be skipped if it does not answer), or nowhere.
#[derive(Debug, PartialEq, Eq)]
enum PostgresTarget {
    Explicit(String),
    Default,
    Off,
}

fn postgres_target(var: Option<&str>) -> PostgresTarget {
    match var.map(str::trim) {
        None | Some("") => PostgresTarget::Default,
        Some("off") => PostgresTarget::Off,
        Some(url) => PostgresTarget::Explicit(url.to_string()),
    }
}

/// A fresh store for one test.
#[derive(Debug)]
pub struct TestStore {
    /// `"sqlite"` or `"postgres"`, for assertion messages.
    pub kind: &'static str,
    /// How to open it.
    pub options: StoreOptions,
    /// Temporary data directory (SQLite file, pepper), removed on drop.
    pub dir: tempfile::TempDir,
    /// The server's URL (it may hold a password: masked in `Debug`) and the database to drop.
    admin: Option<(crate::config::Secret, String)>,
}

fn replace_database(url: &str, db: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next()?;
    let mut out = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

impl TestStore {
    /// An uninitialised SQLite store in a new temporary directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Self {
            kind: "sqlite",
            options: StoreOptions::sqlite(dir.path()),
            dir,
            admin: None,
        }
    }

    /// An empty PostgreSQL database of its own, or `None` (after [`skipped`]) when
    /// PostgreSQL is `off` or the default server does not answer.
    ///
    /// # Panics
    /// When a server named in [`POSTGRES_ENV`] cannot be reached, or under [`STRICT_ENV`]
    /// instead of skipping.
    pub async fn postgres() -> Option<Self> {
        const WHAT: &str = "the PostgreSQL half";
        let var = std::env::var(POSTGRES_ENV).ok();
        let (base, explicit) = match postgres_target(var.as_deref()) {
            PostgresTarget::Off => {
                skipped(WHAT, &format!("{POSTGRES_ENV}=off"));
                return None;
            }
            PostgresTarget::Explicit(url) => (url, true),
            PostgresTarget::Default => (DEFAULT_POSTGRES_URL.to_string(), false),
        };
        sqlx::any::install_default_drivers();
        let mut conn = match <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await {
            Ok(c) => c,
            Err(e) if explicit => panic!("{POSTGRES_ENV}: cannot connect: {e}"),
            Err(e) => {
                skipped(
                    WHAT,
                    &format!(
                        "{POSTGRES_ENV} is unset and {DEFAULT_POSTGRES_URL} does not answer ({e})"
                    ),
                );
                return None;
            }
        };
        let name = format!("pcs_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("create test database: {e}"));
        let _ = sqlx::Connection::close(conn).await;
        let url = replace_database(&base, &name)
            .unwrap_or_else(|| panic!("{POSTGRES_ENV} is not a postgres:// URL"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Some(Self {
            kind: "postgres",
            options: StoreOptions::url(&url, dir.path()),
            dir,
            admin: Some((crate::config::Secret::new(base), name)),
        })
    }

    /// SQLite always, PostgreSQL when configured.
    pub async fn all() -> Vec<Self> {
        let mut v = vec![Self::sqlite()];
        v.extend(Self::postgres().await);
        v
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Initialise the store (migrations, `default` workspace).
    pub async fn init(&self) -> Store {
        Store::init(&self.options)
            .await
            .unwrap_or_else(|e| panic!("{}: init: {e}", self.kind))
    }

    /// Create the store at schema `version` only (an older binary's database), without the
    /// `default` workspace, for migration tests; [`Store::open`] then migrates it forward.
    pub async fn init_at(&self, version: i64) -> Store {
        let store = Store::connect(&self.options, true)
            .await
            .unwrap_or_else(|e| panic!("{}: connect: {e}", self.kind));
        store
            .migrate_until(None, version)
            .await
            .unwrap_or_else(|e| panic!("{}: migrate to v{version}: {e}", self.kind));
        store
    }

    /// Drop the PostgreSQL database (call at the end of a test; a failed test leaves it).
    pub async fn cleanup(self) {
        if let Some((base, name)) = &self.admin {
            if let Ok(mut conn) =
                <sqlx::AnyConnection as sqlx::Connection>::connect(base.expose()).await
            {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
                let _ = sqlx::Connection::close(conn).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{postgres_target, PostgresTarget};

    #[test]
    fn an_unset_variable_means_the_default_server_and_off_means_none() {
        assert_eq!(postgres_target(None), PostgresTarget::Default);
        assert_eq!(postgres_target(Some(" ")), PostgresTarget::Default);
        assert_eq!(postgres_target(Some("off")), PostgresTarget::Off);
        assert_eq!(
            postgres_target(Some("postgres://h/db")),
            PostgresTarget::Explicit("postgres://h/db".into())
        );
    }

    #[test]
    fn database_in_url_is_replaced() {
        assert_eq!(
            super::replace_database("postgres://u@h:5432/test?sslmode=disable", "x").as_deref(),
            Some("postgres://u@h:5432/x?sslmode=disable")
        );
        assert_eq!(
            super::replace_database("postgres://h", "x").as_deref(),
            Some("postgres://h/x")
        );
    }
}
