//! Users: people (or scripts) who log in with a password, each in one workspace, their
//! username unique within it.
//!
//! The store never hashes: `password_hash` is a PHC string (`$argon2id$v=19$…`, parameters
//! and salt included) made by the caller, kept in a [`Redacted`] that neither `Debug` nor
//! `Serialize` shows. Verification of a token needs only a user's status, not the hash:
//! [`Store::user_for_verification`] answers it in one query with the workspace's status.
//!
//! Every change bumps the change generation and writes its audit row in its transaction.
//! Deleting a user deletes its role bindings and revokes its API keys in the same
//! transaction; the revoked keys stay (their history matters) but are detached from the
//! deleted user (`user_id` cleared), and each gets its `key_revoked` audit row.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::audit::{append_on, AuditEvent};
use super::workspaces::{check_display_name, existing_workspace_on};
use super::{bump_generation, now_ms, random_id, Redacted, Store, StoreError};

/// A user as stored.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Stable id (`usr_` + 16 hex digits).
    pub id: String,
    /// Workspace id.
    pub workspace_id: String,
    /// Workspace name.
    pub workspace: String,
    /// Login name, unique in the workspace ([`valid_username`]).
    pub username: String,
    /// Name for people; `None`: show the username.
    pub display_name: Option<String>,
    /// PHC string of the password hash. Never serialised, never printed.
    #[serde(skip)]
    pub password_hash: Redacted,
    /// When the user was disabled, Unix ms; `None`: enabled.
    pub disabled_at: Option<i64>,
    /// Unix ms.
    pub created_at: i64,
    /// Last change to the user (display name, password, disable, enable), Unix ms.
    pub updated_at: i64,
    /// When the password was last set, Unix ms (creation included): tokens issued before it
    /// are refused.
    pub password_changed_at: i64,
}

impl User {
    /// Is the user disabled?
    pub fn is_disabled(&self) -> bool {
        self.disabled_at.is_some()
    }
}

/// What to insert for a new user.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Workspace id; must exist.
    pub workspace_id: String,
    /// Login name ([`valid_username`]).
    pub username: String,
    /// Name for people (trimmed; empty: none).
    pub display_name: Option<String>,
    /// PHC string of the password hash, made by the caller.
    pub password_hash: Redacted,
}

/// A change to a user; `None` fields are left as they are.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// A new display name; `Some(None)` clears it.
    pub display_name: Option<Option<String>>,
}

/// What [`Store::delete_user`] removed.
#[derive(Debug, Clone, Serialize)]
pub struct DeletedUser {
    /// The user as it was.
    pub user: User,
    /// Key ids of the user's keys that were active and are now revoked.
    pub revoked_keys: Vec<String>,
    /// How many role bindings of the user were deleted.
    pub removed_bindings: u64,
}

/// What token verification needs to know about a user, with its workspace's status, read in
/// one query ([`Store::user_for_verification`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserStatus {
    /// User id.
    pub user_id: String,
    /// Login name.
    pub username: String,
    /// Workspace id.
    pub workspace_id: String,
    /// Workspace name.
    pub workspace: String,
    /// When the user was disabled, Unix ms.
    pub disabled_at: Option<i64>,
    /// When the user's workspace was disabled, Unix ms.
    pub workspace_disabled_at: Option<i64>,
    /// When the password was last set, Unix ms: a token issued before it is refused.
    pub password_changed_at: i64,
}

impl UserStatus {
    /// May the user's credentials be accepted (neither the user nor its workspace disabled)?
    pub fn is_active(&self) -> bool {
        self.disabled_at.is_none() && self.workspace_disabled_at.is_none()
    }
}

/// Longest username, in bytes.
pub const MAX_USERNAME: usize = 64;

/// Is `name` a valid username: 1-64 of `[a-z0-9._-]`, starting with a letter or a digit (so it
/// is never read as a command-line flag or a hidden file)?
pub fn valid_username(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=MAX_USERNAME).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// Longest password hash the store accepts, in bytes (an Argon2id PHC string is about 100).
pub const MAX_PASSWORD_HASH: usize = 512;

/// The store keeps what it is given but checks its shape: a PHC string starts with `$` and is
/// printable ASCII without spaces, which catches most slips of a raw password for its hash.
fn check_password_hash(h: &Redacted) -> Result<(), StoreError> {
    let h = h.expose();
    if h.len() > MAX_PASSWORD_HASH
        || !h.starts_with('$')
        || !h.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(StoreError::Invalid(
            "a password hash must be a PHC string ($alg$…)".into(),
        ));
    }
    Ok(())
}

const COLUMNS: &str = "u.id, u.workspace_id, w.name AS workspace, u.username, u.display_name, \
     u.password_hash, u.disabled_at, u.created_at, u.updated_at, u.password_changed_at";

fn from_row(r: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: r.try_get("id")?,
        workspace_id: r.try_get("workspace_id")?,
        workspace: r.try_get("workspace")?,
        username: r.try_get("username")?,
        display_name: r.try_get("display_name")?,
        password_hash: Redacted::new(r.try_get::<String, _>("password_hash")?),
        disabled_at: r.try_get("disabled_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        password_changed_at: r.try_get("password_changed_at")?,
    })
}

/// The user with id `id`, on `conn`.
pub(crate) async fn user_on(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<Option<User>, sqlx::Error> {
    let q = format!(
        "SELECT {COLUMNS} FROM users u JOIN workspaces w ON w.id = u.workspace_id
         WHERE u.id = $1"
    );
    let row = sqlx::query(&q).bind(id).fetch_optional(conn).await?;
    row.as_ref().map(from_row).transpose()
}

/// [`user_on`] for a user that must exist.
pub(crate) async fn existing_user_on(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<User, StoreError> {
    user_on(conn, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("user {id}")))
}

async fn user_by_username_on(
    conn: &mut sqlx::AnyConnection,
    workspace_id: &str,
    username: &str,
) -> Result<Option<User>, sqlx::Error> {
    let q = format!(
        "SELECT {COLUMNS} FROM users u JOIN workspaces w ON w.id = u.workspace_id
         WHERE u.workspace_id = $1 AND u.username = $2"
    );
    let row = sqlx::query(&q)
        .bind(workspace_id)
        .bind(username)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The audit detail naming a user.
fn user_detail(u: &User) -> serde_json::Value {
    serde_json::json!({"user_id": u.id, "username": u.username})
}

/// Insert `new` on `conn` inside the caller's transaction (the generation already bumped);
/// audits `event` (`user_created`, or `bootstrap` for the first admin).
pub(crate) async fn insert_user_on(
    conn: &mut sqlx::AnyConnection,
    new: &NewUser,
    event: &'static str,
    actor: &str,
) -> Result<User, StoreError> {
    if !valid_username(&new.username) {
        return Err(StoreError::Invalid(
            "usernames are 1-64 of [a-z0-9._-], starting with a letter or digit".into(),
        ));
    }
    let display_name = check_display_name(new.display_name.as_deref())?;
    check_password_hash(&new.password_hash)?;
    let ws = existing_workspace_on(conn, &new.workspace_id).await?;
    if user_by_username_on(conn, &new.workspace_id, &new.username)
        .await?
        .is_some()
    {
        return Err(StoreError::Conflict(format!(
            "user {} already exists in workspace {}",
            new.username, ws.name
        )));
    }
    let id = random_id("usr_");
    let now = now_ms();
    sqlx::query(
        "INSERT INTO users (id, workspace_id, username, display_name, password_hash,
             created_at, updated_at, password_changed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6, $6)",
    )
    .bind(&id)
    .bind(&new.workspace_id)
    .bind(&new.username)
    .bind(&display_name)
    .bind(new.password_hash.expose())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let user = existing_user_on(conn, &id).await?;
    append_on(
        conn,
        &AuditEvent {
            event,
            actor: actor.to_string(),
            workspace: Some(user.workspace.clone()),
            detail: Some(
                serde_json::json!({
                    "user_id": user.id,
                    "username": user.username,
                    "display_name": user.display_name,
                })
                .to_string(),
            ),
            ..Default::default()
        },
    )
    .await?;
    Ok(user)
}

impl Store {
    /// Create a user; a username taken in the workspace is a conflict (the same username in
    /// another workspace is another user). Audits `user_created`.
    pub async fn create_user(&self, new: &NewUser, actor: &str) -> Result<User, StoreError> {
        let (new, actor) = (new.clone(), actor.to_owned());
        self.at_home(move |store| async move {
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let user = insert_user_on(&mut tx, &new, "user_created", &actor).await?;
            tx.commit().await?;
            Ok(user)
        })
        .await
    }

    /// The user with id `id`.
    pub async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let id = id.to_owned();
        self.at_home(move |store| async move {
            let mut conn = store.pool().acquire().await?;
            Ok(user_on(&mut conn, &id).await?)
        })
        .await
    }

    /// The user named `username` in workspace `workspace_id` (the login lookup).
    pub async fn user_by_username(
        &self,
        workspace_id: &str,
        username: &str,
    ) -> Result<Option<User>, StoreError> {
        let (workspace_id, username) = (workspace_id.to_owned(), username.to_owned());
        self.at_home(move |store| async move {
            let mut conn = store.pool().acquire().await?;
            Ok(user_by_username_on(&mut conn, &workspace_id, &username).await?)
        })
        .await
    }

    /// The users of workspace `workspace_id`, disabled ones included, by username.
    pub async fn list_users(&self, workspace_id: &str) -> Result<Vec<User>, StoreError> {
        let workspace_id = workspace_id.to_owned();
        self.at_home(move |store| async move {
            let q = format!(
                "SELECT {COLUMNS} FROM users u JOIN workspaces w ON w.id = u.workspace_id
                 WHERE u.workspace_id = $1 ORDER BY u.username"
            );
            let rows = sqlx::query(&q)
                .bind(&workspace_id)
                .fetch_all(store.pool())
                .await?;
            Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Change a user's display name. Audits `user_updated`.
    pub async fn update_user(
        &self,
        id: &str,
        update: &UserUpdate,
        actor: &str,
    ) -> Result<User, StoreError> {
        let (id, update, actor) = (id.to_owned(), update.clone(), actor.to_owned());
        self.at_home(move |store| async move {
            let display_name = match &update.display_name {
                Some(d) => Some(check_display_name(d.as_deref())?),
                None => None,
            };
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let old = existing_user_on(&mut tx, &id).await?;
            let display_name = display_name.unwrap_or_else(|| old.display_name.clone());
            sqlx::query("UPDATE users SET display_name = $2, updated_at = $3 WHERE id = $1")
                .bind(&id)
                .bind(&display_name)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            append_on(
                &mut tx,
                &AuditEvent {
                    event: "user_updated",
                    actor,
                    workspace: Some(old.workspace.clone()),
                    detail: Some(
                        serde_json::json!({
                            "user_id": id,
                            "username": old.username,
                            "display_name": {"old": old.display_name, "new": display_name},
                        })
                        .to_string(),
                    ),
                    ..Default::default()
                },
            )
            .await?;
            let user = existing_user_on(&mut tx, &id).await?;
            tx.commit().await?;
            Ok(user)
        })
        .await
    }

    /// Disable a user: its tokens and keys are refused. Disabling a disabled user is a
    /// conflict. Audits `user_disabled`.
    pub async fn disable_user(&self, id: &str, actor: &str) -> Result<User, StoreError> {
        self.set_user_disabled(id, true, actor).await
    }

    /// Enable a disabled user; enabling an enabled one is a conflict. Audits `user_enabled`.
    pub async fn enable_user(&self, id: &str, actor: &str) -> Result<User, StoreError> {
        self.set_user_disabled(id, false, actor).await
    }

    async fn set_user_disabled(
        &self,
        id: &str,
        disable: bool,
        actor: &str,
    ) -> Result<User, StoreError> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.at_home(move |store| async move {
            let now = now_ms();
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let old = existing_user_on(&mut tx, &id).await?;
            if old.is_disabled() == disable {
                let state = if disable { "disabled" } else { "enabled" };
                return Err(StoreError::Conflict(format!(
                    "user {} is already {state}",
                    old.username
                )));
            }
            sqlx::query("UPDATE users SET disabled_at = $2, updated_at = $3 WHERE id = $1")
                .bind(&id)
                .bind(disable.then_some(now))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            append_on(
                &mut tx,
                &AuditEvent {
                    event: if disable {
                        "user_disabled"
                    } else {
                        "user_enabled"
                    },
                    actor,
                    workspace: Some(old.workspace.clone()),
                    detail: Some(user_detail(&old).to_string()),
                    ..Default::default()
                },
            )
            .await?;
            let user = existing_user_on(&mut tx, &id).await?;
            tx.commit().await?;
            Ok(user)
        })
        .await
    }

    /// Set a user's password hash (a PHC string made by the caller) and its
    /// `password_changed_at`, so tokens issued before now are refused. Audits
    /// `user_password_changed`.
    pub async fn set_user_password_hash(
        &self,
        id: &str,
        password_hash: &Redacted,
        actor: &str,
    ) -> Result<User, StoreError> {
        let (id, hash, actor) = (id.to_owned(), password_hash.clone(), actor.to_owned());
        self.at_home(move |store| async move {
            check_password_hash(&hash)?;
            let now = now_ms();
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let old = existing_user_on(&mut tx, &id).await?;
            sqlx::query(
                "UPDATE users SET password_hash = $2, password_changed_at = $3, updated_at = $3
                 WHERE id = $1",
            )
            .bind(&id)
            .bind(hash.expose())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            append_on(
                &mut tx,
                &AuditEvent {
                    event: "user_password_changed",
                    actor,
                    workspace: Some(old.workspace.clone()),
                    detail: Some(user_detail(&old).to_string()),
                    ..Default::default()
                },
            )
            .await?;
            let user = existing_user_on(&mut tx, &id).await?;
            tx.commit().await?;
            Ok(user)
        })
        .await
    }

    /// Delete a user, its role bindings, and revoke its keys, in one transaction (see the
    /// module documentation). Audits `user_deleted`, and `key_revoked` for each key revoked.
    pub async fn delete_user(&self, id: &str, actor: &str) -> Result<DeletedUser, StoreError> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.at_home(move |store| async move {
            let now = now_ms();
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let user = existing_user_on(&mut tx, &id).await?;
            let revoked_keys: Vec<String> = sqlx::query(
                "SELECT key_id FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL
                 ORDER BY key_id",
            )
            .bind(&id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
            sqlx::query(
                "UPDATE api_keys SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE api_keys SET user_id = NULL WHERE user_id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            let removed_bindings = sqlx::query(
                "DELETE FROM role_bindings WHERE subject_kind = 'user' AND subject_id = $1",
            )
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            for key_id in &revoked_keys {
                append_on(
                    &mut tx,
                    &AuditEvent {
                        event: "key_revoked",
                        actor: actor.clone(),
                        key_id: Some(key_id.clone()),
                        workspace: Some(user.workspace.clone()),
                        reason: Some("user_deleted".into()),
                        detail: Some(user_detail(&user).to_string()),
                    },
                )
                .await?;
            }
            append_on(
                &mut tx,
                &AuditEvent {
                    event: "user_deleted",
                    actor,
                    workspace: Some(user.workspace.clone()),
                    detail: Some(
                        serde_json::json!({
                            "user_id": user.id,
                            "username": user.username,
                            "revoked_keys": revoked_keys,
                            "removed_bindings": removed_bindings,
                        })
                        .to_string(),
                    ),
                    ..Default::default()
                },
            )
            .await?;
            tx.commit().await?;
            Ok(DeletedUser {
                user,
                revoked_keys,
                removed_bindings,
            })
        })
        .await
    }

    /// A user's status and its workspace's, in one query: the token path's lookup, made once
    /// per cache lifetime per subject (counted in [`Store::verification_queries`]). `None`:
    /// no such user (deleted).
    pub async fn user_for_verification(
        &self,
        user_id: &str,
    ) -> Result<Option<UserStatus>, StoreError> {
        self.count_verification_query();
        let user_id = user_id.to_owned();
        self.at_home(move |store| async move {
            let row = sqlx::query(
                "SELECT u.id, u.username, u.workspace_id, w.name AS workspace, u.disabled_at,
                        w.disabled_at AS workspace_disabled_at, u.password_changed_at
                 FROM users u JOIN workspaces w ON w.id = u.workspace_id
                 WHERE u.id = $1",
            )
            .bind(&user_id)
            .fetch_optional(store.pool())
            .await?;
            let Some(r) = row else {
                return Ok(None);
            };
            Ok(Some(UserStatus {
                user_id: r.try_get("id")?,
                username: r.try_get("username")?,
                workspace_id: r.try_get("workspace_id")?,
                workspace: r.try_get("workspace")?,
                disabled_at: r.try_get("disabled_at")?,
                workspace_disabled_at: r.try_get("workspace_disabled_at")?,
                password_changed_at: r.try_get("password_changed_at")?,
            }))
        })
        .await
    }
}
