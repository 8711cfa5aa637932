//! Test support: fresh stores on SQLite and PostgreSQL.
//!
//! Every store test runs against both. PostgreSQL is reached at
//! `PORTCULLIS_TEST_POSTGRES_URL` (set by CI; locally e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); each test gets its own uniquely named database,
//! dropped by [`TestStore::cleanup`], so tests run in parallel and re-run cleanly. When the
//! variable is unset the PostgreSQL half is skipped with a note on stderr.

use super::{Store, StoreOptions};
use std::path::PathBuf;

/// Environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_ENV: &str = "PORTCULLIS_TEST_POSTGRES_URL";

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

    /// An empty PostgreSQL database of its own, or `None` when no server is configured.
    pub async fn postgres() -> Option<Self> {
        let Ok(base) = std::env::var(POSTGRES_ENV) else {
            eprintln!("note: {POSTGRES_ENV} unset, skipping the PostgreSQL half of this test");
            return None;
        };
        sqlx::any::install_default_drivers();
        let name = format!("pcs_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV}: cannot connect: {e}"));
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
