//! Login throttle state: failed logins counted per scope key in a fixed window, and a lock
//! once they reach a bound.
//!
//! The key is opaque to the store: the caller builds it (a hash of workspace and username, or
//! of a source address) so it is short, bounded and holds no personal data in the clear. The
//! caller also passes the policy ([`ThrottlePolicy`]) with each failure, so the store holds
//! counts, not configuration.
//!
//! Counting is one atomic upsert (`INSERT … ON CONFLICT DO UPDATE … RETURNING`, SQLite and
//! PostgreSQL alike): concurrent failures on several nodes all count. The rules:
//!
//! - The first failure opens a window at its time with a count of 1.
//! - A failure within the window, or while locked, adds 1; once the count reaches
//!   `max_failures` the key is locked until `lockout` after that failure. So a failure
//!   recorded while locked extends the lock, and after a lock ends inside the same window
//!   the next failure locks again.
//! - A failure after the window has ended, with no lock in force, opens a new window.
//!
//! A success clears the row ([`Store::clear_login_throttle`]). Rows whose window ended and
//! whose lock passed are stale; [`Store::purge_login_throttle`] deletes them and caps the
//! table, so a flood of distinct keys cannot grow it without bound.
//!
//! Throttle writes neither bump the change generation (nothing caches them, and a guessing
//! flood must not flush every node's caches) nor write audit rows (refused logins reach the
//! audit log coalesced, through the authentication audit path).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::time::Duration;

use super::{duration_ms, Store, StoreError};

/// Longest scope key, in bytes.
pub const MAX_THROTTLE_KEY: usize = 256;

/// How failures are counted and when they lock, passed with each failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Length of a counting window (positive).
    pub window: Duration,
    /// Failures within a window that lock the key (at least 1).
    pub max_failures: u32,
    /// How long a lock lasts after the failure that set it.
    pub lockout: Duration,
}

/// The throttle state of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThrottleState {
    /// Failures counted in the current window.
    pub failures: u32,
    /// When the current window opened, Unix ms.
    pub window_started_at: i64,
    /// Locked until, Unix ms; `None`: never locked in this window.
    pub locked_until: Option<i64>,
}

impl ThrottleState {
    /// Is the key locked at `now` (Unix ms)?
    pub fn is_locked(&self, now: i64) -> bool {
        self.locked_until.is_some_and(|t| t > now)
    }
}

fn from_row(r: &AnyRow) -> Result<ThrottleState, sqlx::Error> {
    let failures: i64 = r.try_get("failures")?;
    Ok(ThrottleState {
        failures: u32::try_from(failures.max(0)).unwrap_or(u32::MAX),
        window_started_at: r.try_get("window_started_at")?,
        locked_until: r.try_get("locked_until")?,
    })
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_THROTTLE_KEY {
        return Err(StoreError::Invalid(format!(
            "throttle keys are 1-{MAX_THROTTLE_KEY} bytes"
        )));
    }
    Ok(())
}

/// Does the stored window of `login_throttle` start again at `$2` (now)? `$4` is the window.
const RESETS: &str = "(login_throttle.window_started_at + $4 <= $2
     AND (login_throttle.locked_until IS NULL OR login_throttle.locked_until <= $2))";

impl Store {
    /// Count a failed login for `key` at `now` (Unix ms) under `policy`; returns the state
    /// after it (see the module documentation for the rules). One atomic statement.
    pub async fn record_login_failure(
        &self,
        key: &str,
        now: i64,
        policy: &ThrottlePolicy,
    ) -> Result<ThrottleState, StoreError> {
        check_key(key)?;
        if policy.max_failures == 0 || policy.window.is_zero() {
            return Err(StoreError::Invalid(
                "a throttle policy needs a positive window and max_failures".into(),
            ));
        }
        let (key, policy) = (key.to_owned(), *policy);
        self.at_home(move |store| async move {
            // Every SET expression reads the row as it was (both databases), so the new count
            // is spelled out again where the lock is decided.
            let q = format!(
                "INSERT INTO login_throttle (key, failures, window_started_at, locked_until)
                 VALUES ($1, 1, $2, CASE WHEN $3 <= 1 THEN $2 + $5 ELSE NULL END)
                 ON CONFLICT (key) DO UPDATE SET
                   failures = CASE WHEN {RESETS} THEN 1 ELSE login_throttle.failures + 1 END,
                   window_started_at = CASE WHEN {RESETS} THEN $2
                                       ELSE login_throttle.window_started_at END,
                   locked_until = CASE
                     WHEN (CASE WHEN {RESETS} THEN 1 ELSE login_throttle.failures + 1 END) >= $3
                       THEN $2 + $5
                     WHEN {RESETS} THEN NULL
                     ELSE login_throttle.locked_until END
                 RETURNING failures, window_started_at, locked_until"
            );
            let row = sqlx::query(&q)
                .bind(&key)
                .bind(now)
                .bind(i64::from(policy.max_failures))
                .bind(duration_ms(policy.window))
                .bind(duration_ms(policy.lockout))
                .fetch_one(store.pool())
                .await?;
            Ok(from_row(&row)?)
        })
        .await
    }

    /// The throttle state of `key`; `None`: no failure counted.
    pub async fn login_throttle(&self, key: &str) -> Result<Option<ThrottleState>, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.at_home(move |store| async move {
            let row = sqlx::query(
                "SELECT failures, window_started_at, locked_until FROM login_throttle
                 WHERE key = $1",
            )
            .bind(&key)
            .fetch_optional(store.pool())
            .await?;
            Ok(row.as_ref().map(from_row).transpose()?)
        })
        .await
    }

    /// Forget the failures of `key` (a successful login). Returns whether there were any.
    pub async fn clear_login_throttle(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.at_home(move |store| async move {
            let r = sqlx::query("DELETE FROM login_throttle WHERE key = $1")
                .bind(&key)
                .execute(store.pool())
                .await?;
            Ok(r.rows_affected() > 0)
        })
        .await
    }

    /// Delete stale rows — window (of length `window`) ended and no lock in force at `now` —
    /// then, if more than `max_rows` remain, the oldest windows beyond that (a flood of
    /// distinct keys loses its oldest counts first). Returns how many rows were deleted.
    pub async fn purge_login_throttle(
        &self,
        now: i64,
        window: Duration,
        max_rows: u64,
    ) -> Result<u64, StoreError> {
        let window = duration_ms(window);
        let max_rows = i64::try_from(max_rows).unwrap_or(i64::MAX);
        self.at_home(move |store| async move {
            let stale = sqlx::query(
                "DELETE FROM login_throttle WHERE window_started_at + $2 <= $1
                 AND (locked_until IS NULL OR locked_until <= $1)",
            )
            .bind(now)
            .bind(window)
            .execute(store.pool())
            .await?
            .rows_affected();
            // The row at offset `max_rows` from the newest and every older one: at most
            // `max_rows` remain (ties at the cutoff go too). No row there: nothing to cap.
            let capped = sqlx::query(
                "DELETE FROM login_throttle WHERE window_started_at <= (
                     SELECT window_started_at FROM login_throttle
                     ORDER BY window_started_at DESC LIMIT 1 OFFSET $1)",
            )
            .bind(max_rows)
            .execute(store.pool())
            .await?
            .rows_affected();
            Ok(stale + capped)
        })
        .await
    }

    /// Rows in the login throttle table.
    pub async fn login_throttle_count(&self) -> Result<i64, StoreError> {
        self.at_home(|store| async move {
            Ok(sqlx::query("SELECT COUNT(*) FROM login_throttle")
                .fetch_one(store.pool())
                .await?
                .try_get(0)?)
        })
        .await
    }
}
