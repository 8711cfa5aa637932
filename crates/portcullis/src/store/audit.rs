//! The audit log: who did what to which identity, binding, workspace or signing key, and why
//! credentials were refused.
//!
//! Bounded: [`Store::audit_trim`] keeps the newest `auth.audit_max_rows` rows (ids only grow,
//! so "older than the newest N" is one indexed delete). Authentication failures reach it
//! coalesced per reason per second through a bounded channel (`auth::audit`), so a flood of
//! bad keys writes a handful of rows a second and can never fill the disk.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, Store, StoreError};

/// An event to record.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    /// Kind. Keys: `key_created`, `key_rotated`, `key_revoked`. Workspaces:
    /// `workspace_created`, `workspace_updated`, `workspace_disabled`, `workspace_enabled`.
    /// Users: `user_created`, `user_updated`, `user_disabled`, `user_enabled`,
    /// `user_password_changed`, `user_deleted`. Role bindings: `role_granted`,
    /// `role_revoked`. Signing keys: `signing_key_created`, `signing_key_retired`,
    /// `signing_key_deleted`. The first admin: `bootstrap` (a key, or a user). Refusals:
    /// `auth_failure`, `access_denied`.
    pub event: &'static str,
    /// Who: `cli`, `gateway`, `demo`, or a key id.
    pub actor: String,
    /// The key concerned (a claimed key id for failures), never a secret.
    pub key_id: Option<String>,
    /// Workspace name.
    pub workspace: Option<String>,
    /// Reason (failures) — a closed set of names.
    pub reason: Option<String>,
    /// Free-form detail, JSON text.
    pub detail: Option<String>,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Monotonic id.
    pub id: i64,
    /// When, Unix ms.
    pub at: i64,
    /// Kind.
    pub event: String,
    /// Who.
    pub actor: String,
    /// Key concerned.
    pub key_id: Option<String>,
    /// Workspace name.
    pub workspace: Option<String>,
    /// Reason.
    pub reason: Option<String>,
    /// Detail (JSON text).
    pub detail: Option<String>,
}

/// Insert `e` on `conn` (inside the caller's transaction when there is one).
pub(crate) async fn append_on(
    conn: &mut sqlx::AnyConnection,
    e: &AuditEvent,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (at, event, actor, key_id, workspace, reason, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now_ms())
    .bind(e.event)
    .bind(&e.actor)
    .bind(&e.key_id)
    .bind(&e.workspace)
    .bind(&e.reason)
    .bind(&e.detail)
    .execute(conn)
    .await?;
    Ok(())
}

fn from_row(r: &AnyRow) -> Result<AuditEntry, sqlx::Error> {
    Ok(AuditEntry {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        event: r.try_get("event")?,
        actor: r.try_get("actor")?,
        key_id: r.try_get("key_id")?,
        workspace: r.try_get("workspace")?,
        reason: r.try_get("reason")?,
        detail: r.try_get("detail")?,
    })
}

impl Store {
    /// Record one event.
    pub async fn audit_append(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let mut conn = self.pool().acquire().await?;
        append_on(&mut conn, e).await?;
        Ok(())
    }

    /// The newest `limit` events, newest first.
    pub async fn audit_list(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, event, actor, key_id, workspace, reason, detail
             FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(limit.clamp(1, 100_000))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    /// Rows in the audit log.
    pub async fn audit_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM audit_log")
            .fetch_one(self.pool())
            .await?
            .try_get(0)?)
    }

    /// Delete all but the newest `max_rows` rows; returns how many were deleted.
    pub async fn audit_trim(&self, max_rows: i64) -> Result<u64, StoreError> {
        let r =
            sqlx::query("DELETE FROM audit_log WHERE id <= (SELECT MAX(id) FROM audit_log) - $1")
                .bind(max_rows.max(1))
                .execute(self.pool())
                .await?;
        Ok(r.rows_affected())
    }
}
