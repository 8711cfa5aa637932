//! API keys: one `api_keys` row per key (workspace, the user it was issued to if any, name,
//! scopes, times) and one `api_key_secrets` row per live secret — rotation adds a secret and
//! gives the old ones a `not_after` at the end of the overlap. Only HMACs of secrets are stored, each with the
//! version of the pepper it was made under; the raw key exists only in the caller's hands.
//!
//! Every change bumps the change generation in the same transaction (so other processes drop
//! their caches) and writes its audit row in that transaction too: a key never changes
//! without its trail.
//!
//! A key issued to a user (`user_id`) lives in the user's workspace and is refused while the
//! user is disabled; every key is refused while its workspace is disabled. The verification
//! lookup ([`Store::key_for_verification`]) reads both states in its one query.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::time::Duration;

use super::audit::{append_on, AuditEvent};
use super::{bump_generation, now_ms, Store, StoreError};

/// A key as stored, without secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// Public key id.
    pub key_id: String,
    /// Workspace id.
    pub workspace_id: String,
    /// Workspace name.
    pub workspace: String,
    /// The user the key was issued to; `None`: a key of its own.
    pub user_id: Option<String>,
    /// Display name.
    pub name: String,
    /// Capability names this key grants; `*` grants all.
    pub scopes: Vec<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; `None`: never.
    pub expires_at: Option<i64>,
    /// Unix ms, written at most once a minute.
    pub last_used_at: Option<i64>,
    /// Unix ms; `None`: not revoked.
    pub revoked_at: Option<i64>,
}

impl KeyRecord {
    /// Does this key grant everything (an admin key)?
    pub fn is_admin(&self) -> bool {
        self.scopes.iter().any(|s| s == "*")
    }

    /// Past its expiry at `now` (Unix ms)?
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

/// A live secret of a key: its HMAC and until when it is accepted.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySecret {
    /// Order of issue, 1 for the first secret.
    pub serial: i64,
    /// HMAC-SHA-256 of the secret under the pepper.
    pub secret_hmac: [u8; 32],
    /// Version of the pepper the HMAC was made with.
    pub pepper_version: u32,
    /// Accepted until (Unix ms); `None`: the current secret.
    pub not_after: Option<i64>,
}

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySecret")
            .field("serial", &self.serial)
            .field("pepper_version", &self.pepper_version)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What [`Store::key_for_verification`] says about a key id: the record, its secrets still
/// accepted, and the state of what the key belongs to.
#[derive(Debug, Clone)]
pub struct KeyVerification {
    /// The key, without secrets.
    pub record: KeyRecord,
    /// Its secrets accepted at the time asked, newest first.
    pub secrets: Vec<KeySecret>,
    /// When the key's workspace was disabled, Unix ms.
    pub workspace_disabled_at: Option<i64>,
    /// For a key issued to a user: when that user was disabled, Unix ms.
    pub user_disabled_at: Option<i64>,
    /// The key names a user (`record.user_id`) the store does not have. Deleting a user
    /// detaches its keys, so this means a damaged store; the key is refused.
    pub user_missing: bool,
}

impl KeyVerification {
    /// Is the key refused because its workspace or its user is disabled (or its user is
    /// missing)?
    pub fn is_disabled(&self) -> bool {
        self.workspace_disabled_at.is_some() || self.user_disabled_at.is_some() || self.user_missing
    }
}

/// What to insert for a new key.
#[derive(Debug, Clone)]
pub struct NewKeyRow {
    /// Key id (validated by the caller).
    pub key_id: String,
    /// Workspace name; must exist.
    pub workspace: String,
    /// The user the key is issued to (it must exist, be enabled and belong to `workspace`);
    /// `None`: a key of its own.
    pub user_id: Option<String>,
    /// Display name.
    pub name: String,
    /// Scopes (validated by the caller).
    pub scopes: Vec<String>,
    /// Expiry, Unix ms.
    pub expires_at: Option<i64>,
    /// HMAC of the secret.
    pub secret_hmac: [u8; 32],
    /// Pepper version of the HMAC.
    pub pepper_version: u32,
}

const KEY_COLUMNS: &str = "k.key_id, k.workspace_id, w.name AS workspace, k.user_id, k.name, \
     k.scopes, k.created_at, k.expires_at, k.last_used_at, k.revoked_at";

fn key_from_row(r: &AnyRow) -> Result<KeyRecord, sqlx::Error> {
    let scopes: String = r.try_get("scopes")?;
    Ok(KeyRecord {
        key_id: r.try_get("key_id")?,
        workspace_id: r.try_get("workspace_id")?,
        workspace: r.try_get("workspace")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        last_used_at: r.try_get("last_used_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

fn decode_hmac(hex_text: &str) -> Option<[u8; 32]> {
    let v = hex::decode(hex_text).ok()?;
    v.try_into().ok()
}

pub(crate) async fn key_on(
    conn: &mut sqlx::AnyConnection,
    key_id: &str,
) -> Result<Option<KeyRecord>, sqlx::Error> {
    let q = format!(
        "SELECT {KEY_COLUMNS} FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id
         WHERE k.key_id = $1"
    );
    let row = sqlx::query(&q).bind(key_id).fetch_optional(conn).await?;
    row.as_ref().map(key_from_row).transpose()
}

/// [`key_on`] for a key that must exist.
async fn existing_key_on(
    conn: &mut sqlx::AnyConnection,
    key_id: &str,
) -> Result<KeyRecord, StoreError> {
    key_on(conn, key_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("key {key_id}")))
}

/// Store secret number `serial` of a key.
async fn insert_secret_on(
    conn: &mut sqlx::AnyConnection,
    key_id: &str,
    serial: i64,
    secret_hmac: &[u8; 32],
    pepper_version: u32,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_key_secrets (key_id, serial, secret_hmac, pepper_version, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(key_id)
    .bind(serial)
    .bind(hex::encode(secret_hmac))
    .bind(i64::from(pepper_version))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Is there an active key with scope `*`?
pub(crate) async fn any_admin_key_on(
    conn: &mut sqlx::AnyConnection,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT scopes FROM api_keys WHERE revoked_at IS NULL
         AND (expires_at IS NULL OR expires_at > $1)",
    )
    .bind(now)
    .fetch_all(conn)
    .await?;
    for r in rows {
        let s: String = r.try_get(0)?;
        if s.split(',').any(|x| x == "*") {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Store {
    async fn insert_key_tx(
        &self,
        new: &NewKeyRow,
        event: &'static str,
        actor: &str,
        only_if_no_admin: bool,
    ) -> Result<KeyRecord, StoreError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        bump_generation(&mut tx).await?;
        if only_if_no_admin && any_admin_key_on(&mut tx, now).await? {
            return Err(StoreError::Conflict(
                "an admin key already exists; bootstrap refused (create keys with `portcullis keys create`)"
                    .into(),
            ));
        }
        let ws = sqlx::query("SELECT id FROM workspaces WHERE name = $1")
            .bind(&new.workspace)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("workspace {}", new.workspace)))?;
        let ws_id: String = ws.try_get(0)?;
        if let Some(user_id) = &new.user_id {
            let user = super::users::user_on(&mut tx, user_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("user {user_id}")))?;
            if user.workspace_id != ws_id {
                return Err(StoreError::Invalid(format!(
                    "user {} is in workspace {}: a key issued to a user lives in the user's workspace",
                    user.username, user.workspace
                )));
            }
            if user.is_disabled() {
                return Err(StoreError::Conflict(format!(
                    "user {} is disabled",
                    user.username
                )));
            }
        }
        if key_on(&mut tx, &new.key_id).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "key id {} is taken",
                new.key_id
            )));
        }
        sqlx::query(
            "INSERT INTO api_keys (key_id, workspace_id, user_id, name, scopes, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&new.key_id)
        .bind(&ws_id)
        .bind(&new.user_id)
        .bind(&new.name)
        .bind(new.scopes.join(","))
        .bind(now)
        .bind(new.expires_at)
        .execute(&mut *tx)
        .await?;
        insert_secret_on(
            &mut tx,
            &new.key_id,
            1,
            &new.secret_hmac,
            new.pepper_version,
            now,
        )
        .await?;
        append_on(
            &mut tx,
            &AuditEvent {
                event,
                actor: actor.to_string(),
                key_id: Some(new.key_id.clone()),
                workspace: Some(new.workspace.clone()),
                detail: Some(
                    serde_json::json!({"name": new.name, "scopes": new.scopes, "expires_at": new.expires_at, "user_id": new.user_id})
                        .to_string(),
                ),
                ..Default::default()
            },
        )
        .await?;
        let rec = existing_key_on(&mut tx, &new.key_id).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Insert a new key with its first secret; audits `key_created`.
    pub async fn insert_key(&self, new: &NewKeyRow, actor: &str) -> Result<KeyRecord, StoreError> {
        self.insert_key_tx(new, "key_created", actor, false).await
    }

    /// Insert the first admin key, only if no active key with scope `*` exists (checked in
    /// the same transaction); audits `bootstrap`.
    pub async fn insert_bootstrap_key(
        &self,
        new: &NewKeyRow,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        self.insert_key_tx(new, "bootstrap", actor, true).await
    }

    /// Is there an active key with scope `*`?
    pub async fn has_admin_key(&self) -> Result<bool, StoreError> {
        let mut conn = self.pool().acquire().await?;
        Ok(any_admin_key_on(&mut conn, now_ms()).await?)
    }

    /// A key without its secrets.
    pub async fn key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        Ok(key_on(&mut conn, key_id).await?)
    }

    /// A key with its secrets still accepted at `now` and the state of its workspace and its
    /// user: the verification lookup, one query.
    pub async fn key_for_verification(
        &self,
        key_id: &str,
        now: i64,
    ) -> Result<Option<KeyVerification>, StoreError> {
        self.count_verification_query();
        let key_id = key_id.to_owned();
        self.at_home(
            move |store| async move { store.key_for_verification_here(&key_id, now).await },
        )
        .await
    }

    async fn key_for_verification_here(
        &self,
        key_id: &str,
        now: i64,
    ) -> Result<Option<KeyVerification>, StoreError> {
        let q = format!(
            "SELECT {KEY_COLUMNS}, s.serial, s.secret_hmac, s.pepper_version, s.not_after,
                    w.disabled_at AS workspace_disabled_at, u.id AS user_row,
                    u.disabled_at AS user_disabled_at
             FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id
             LEFT JOIN users u ON u.id = k.user_id
             LEFT JOIN api_key_secrets s
               ON s.key_id = k.key_id AND (s.not_after IS NULL OR s.not_after > $2)
             WHERE k.key_id = $1
             ORDER BY s.serial DESC"
        );
        let rows = sqlx::query(&q)
            .bind(key_id)
            .bind(now)
            .fetch_all(self.pool())
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let record = key_from_row(first)?;
        let user_row: Option<String> = first.try_get("user_row")?;
        let workspace_disabled_at: Option<i64> = first.try_get("workspace_disabled_at")?;
        let user_disabled_at: Option<i64> = first.try_get("user_disabled_at")?;
        let user_missing = record.user_id.is_some() && user_row.is_none();
        let mut secrets = Vec::with_capacity(rows.len());
        for r in &rows {
            let serial: Option<i64> = r.try_get("serial")?;
            let hmac: Option<String> = r.try_get("secret_hmac")?;
            let (Some(serial), Some(hmac)) = (serial, hmac) else {
                continue;
            };
            let Some(secret_hmac) = decode_hmac(&hmac) else {
                tracing::warn!(key_id, serial, "stored secret HMAC is not 32 bytes of hex");
                continue;
            };
            let pv: i64 = r.try_get("pepper_version")?;
            secrets.push(KeySecret {
                serial,
                secret_hmac,
                pepper_version: u32::try_from(pv).unwrap_or(0),
                not_after: r.try_get("not_after")?,
            });
        }
        Ok(Some(KeyVerification {
            record,
            secrets,
            workspace_disabled_at,
            user_disabled_at,
            user_missing,
        }))
    }

    /// Keys, optionally of one workspace, by workspace then key id. Never secrets.
    pub async fn list_keys(&self, workspace: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let q = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id
             WHERE ($1 IS NULL OR w.name = $1) ORDER BY w.name, k.key_id"
        );
        let rows = sqlx::query(&q)
            .bind(workspace)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(key_from_row).collect::<Result<_, _>>()?)
    }

    /// The keys issued to user `user_id`, by key id. Never secrets.
    pub async fn list_user_keys(&self, user_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let user_id = user_id.to_owned();
        self.at_home(move |store| async move {
            let q = format!(
                "SELECT {KEY_COLUMNS} FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id
                 WHERE k.user_id = $1 ORDER BY k.key_id"
            );
            let rows = sqlx::query(&q)
                .bind(&user_id)
                .fetch_all(store.pool())
                .await?;
            Ok(rows.iter().map(key_from_row).collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Revoke a key at once; audits `key_revoked`. Revoking a revoked key is a conflict.
    pub async fn revoke_key(&self, key_id: &str, actor: &str) -> Result<KeyRecord, StoreError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        bump_generation(&mut tx).await?;
        let key = existing_key_on(&mut tx, key_id).await?;
        if key.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "key {key_id} is already revoked"
            )));
        }
        sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE key_id = $1")
            .bind(key_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        append_on(
            &mut tx,
            &AuditEvent {
                event: "key_revoked",
                actor: actor.to_string(),
                key_id: Some(key_id.to_string()),
                workspace: Some(key.workspace.clone()),
                ..Default::default()
            },
        )
        .await?;
        let rec = existing_key_on(&mut tx, key_id).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Add a new secret to a key; secrets issued before it stay accepted for `overlap`
    /// (zero: refused at once). Returns the key and when the old secrets stop working.
    /// Audits `key_rotated`.
    pub async fn rotate_key(
        &self,
        key_id: &str,
        secret_hmac: [u8; 32],
        pepper_version: u32,
        overlap: Duration,
        actor: &str,
    ) -> Result<(KeyRecord, i64), StoreError> {
        let now = now_ms();
        let old_until = now.saturating_add(i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX));
        let mut tx = self.pool().begin().await?;
        bump_generation(&mut tx).await?;
        let key = existing_key_on(&mut tx, key_id).await?;
        if key.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "key {key_id} is revoked; create a new key"
            )));
        }
        if key.is_expired(now) {
            return Err(StoreError::Conflict(format!(
                "key {key_id} has expired; create a new key"
            )));
        }
        sqlx::query(
            "UPDATE api_key_secrets SET not_after = $2
             WHERE key_id = $1 AND (not_after IS NULL OR not_after > $2)",
        )
        .bind(key_id)
        .bind(old_until)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM api_key_secrets WHERE key_id = $1 AND not_after IS NOT NULL AND not_after <= $2",
        )
        .bind(key_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let serial: Option<i64> =
            sqlx::query("SELECT MAX(serial) FROM api_key_secrets WHERE key_id = $1")
                .bind(key_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let serial = serial.unwrap_or(0) + 1;
        insert_secret_on(&mut tx, key_id, serial, &secret_hmac, pepper_version, now).await?;
        append_on(
            &mut tx,
            &AuditEvent {
                event: "key_rotated",
                actor: actor.to_string(),
                key_id: Some(key_id.to_string()),
                workspace: Some(key.workspace.clone()),
                detail: Some(
                    serde_json::json!({"overlap_ms": overlap.as_millis() as u64, "old_secrets_until": old_until})
                        .to_string(),
                ),
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok((key, old_until))
    }

    /// Record last-used times (batched by the authenticator, at most once a minute per key).
    pub async fn touch_last_used(&self, updates: &[(String, i64)]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        for (key_id, at) in updates {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $2
                 WHERE key_id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(key_id)
            .bind(*at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
