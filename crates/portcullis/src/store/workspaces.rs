//! Workspaces (tenants): a stable id, a unique name, an optional display name, and whether the
//! workspace is disabled. Every identity belongs to one; a disabled workspace refuses every
//! identity in it (its keys at verification, [`Store::key_for_verification`]; its users'
//! tokens, [`Store::user_for_verification`]).
//!
//! Everything refers to a workspace by id, so a rename keeps every user, key and role binding
//! in place. The audit log records names as they were when each event happened. The `default`
//! workspace keeps its name: `portcullis init` and key creation default to it by name.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::audit::{append_on, AuditEvent};
use super::{bump_generation, now_ms, random_id, Store, StoreError, DEFAULT_WORKSPACE};

/// A workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workspace {
    /// Stable id (`ws_` + 16 hex digits).
    pub id: String,
    /// Unique name, `[a-z0-9-]{1,63}`.
    pub name: String,
    /// Name for people; `None`: show the name.
    pub display_name: Option<String>,
    /// When it was disabled, Unix ms; `None`: enabled.
    pub disabled_at: Option<i64>,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last change (rename, display name, disable, enable), Unix ms.
    pub updated_at: i64,
}

impl Workspace {
    /// Is the workspace disabled (every identity in it refused)?
    pub fn is_disabled(&self) -> bool {
        self.disabled_at.is_some()
    }
}

/// A change to a workspace; `None` fields are left as they are.
#[derive(Debug, Clone, Default)]
pub struct WorkspaceUpdate {
    /// A new name (`[a-z0-9-]{1,63}`, not taken). The id stays.
    pub name: Option<String>,
    /// A new display name; `Some(None)` clears it.
    pub display_name: Option<Option<String>>,
}

/// Is `name` a valid workspace name?
pub fn valid_workspace_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Longest display name (of a workspace or a user), in bytes.
pub const MAX_DISPLAY_NAME: usize = 200;

/// A display name, trimmed; empty means none. At most [`MAX_DISPLAY_NAME`] bytes, no control
/// characters (they would forge lines in a terminal or a log).
pub(crate) fn check_display_name(s: Option<&str>) -> Result<Option<String>, StoreError> {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if s.len() > MAX_DISPLAY_NAME || s.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "display names are 1-{MAX_DISPLAY_NAME} bytes without control characters"
        )));
    }
    Ok(Some(s.to_string()))
}

const COLUMNS: &str = "id, name, display_name, disabled_at, created_at, updated_at";

fn from_row(r: &AnyRow) -> Result<Workspace, sqlx::Error> {
    Ok(Workspace {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        display_name: r.try_get("display_name")?,
        disabled_at: r.try_get("disabled_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// The workspace with id `id`, on `conn`.
pub(crate) async fn workspace_on(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<Option<Workspace>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM workspaces WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// [`workspace_on`] for a workspace that must exist.
pub(crate) async fn existing_workspace_on(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<Workspace, StoreError> {
    workspace_on(conn, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("workspace {id}")))
}

impl Store {
    /// The workspace named `name`, creating it if absent.
    pub async fn ensure_workspace(&self, name: &str) -> Result<Workspace, StoreError> {
        if let Some(w) = self.workspace_by_name(name).await? {
            return Ok(w);
        }
        self.create_workspace(name, None).await
    }

    /// Create a workspace; a taken name is a conflict. With an `actor`, its
    /// `workspace_created` audit row is written in the same transaction: no workspace without
    /// its trail. Bumps the change generation.
    pub async fn create_workspace(
        &self,
        name: &str,
        actor: Option<&str>,
    ) -> Result<Workspace, StoreError> {
        let (name, actor) = (name.to_owned(), actor.map(str::to_owned));
        self.at_home(move |store| async move {
            store.create_workspace_here(&name, actor.as_deref()).await
        })
        .await
    }

    async fn create_workspace_here(
        &self,
        name: &str,
        actor: Option<&str>,
    ) -> Result<Workspace, StoreError> {
        if !valid_workspace_name(name) {
            return Err(StoreError::Invalid(
                "workspace names are 1-63 of [a-z0-9-]".into(),
            ));
        }
        let now = now_ms();
        let w = Workspace {
            id: random_id("ws_"),
            name: name.to_string(),
            display_name: None,
            disabled_at: None,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.pool().begin().await?;
        // A cached "no such workspace" elsewhere must go too.
        bump_generation(&mut tx).await?;
        let r = sqlx::query(
            "INSERT INTO workspaces (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(&w.id)
        .bind(&w.name)
        .bind(w.created_at)
        .execute(&mut *tx)
        .await;
        if let Err(e) = r {
            drop(tx);
            // Lost a race with another creator: the name exists now.
            if let Some(existing) = self.workspace_by_name(name).await? {
                return Err(StoreError::Conflict(format!(
                    "workspace {} already exists",
                    existing.name
                )));
            }
            return Err(e.into());
        }
        if let Some(actor) = actor {
            append_on(
                &mut tx,
                &AuditEvent {
                    event: "workspace_created",
                    actor: actor.to_string(),
                    workspace: Some(w.name.clone()),
                    ..Default::default()
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(w)
    }

    /// The workspace named `name`.
    pub async fn workspace_by_name(&self, name: &str) -> Result<Option<Workspace>, StoreError> {
        let name = name.to_owned();
        self.at_home(move |store| async move {
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM workspaces WHERE name = $1"))
                .bind(&name)
                .fetch_optional(store.pool())
                .await?;
            Ok(row.as_ref().map(from_row).transpose()?)
        })
        .await
    }

    /// The workspace with id `id`.
    pub async fn workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
        let id = id.to_owned();
        self.at_home(move |store| async move {
            let mut conn = store.pool().acquire().await?;
            Ok(workspace_on(&mut conn, &id).await?)
        })
        .await
    }

    /// Every workspace, disabled ones included ([`Workspace::is_disabled`]), by name.
    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>, StoreError> {
        self.at_home(|store| async move {
            let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM workspaces ORDER BY name"))
                .fetch_all(store.pool())
                .await?;
            Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Rename a workspace or change its display name; the id stays, so everything in it stays
    /// in it. A taken name is a conflict; the `default` workspace keeps its name. Audits
    /// `workspace_updated` (the detail holds the old and new values).
    pub async fn update_workspace(
        &self,
        id: &str,
        update: &WorkspaceUpdate,
        actor: &str,
    ) -> Result<Workspace, StoreError> {
        let (id, update, actor) = (id.to_owned(), update.clone(), actor.to_owned());
        self.at_home(
            move |store| async move { store.update_workspace_here(&id, &update, &actor).await },
        )
        .await
    }

    async fn update_workspace_here(
        &self,
        id: &str,
        update: &WorkspaceUpdate,
        actor: &str,
    ) -> Result<Workspace, StoreError> {
        if let Some(name) = &update.name {
            if !valid_workspace_name(name) {
                return Err(StoreError::Invalid(
                    "workspace names are 1-63 of [a-z0-9-]".into(),
                ));
            }
        }
        let display_name = match &update.display_name {
            Some(d) => Some(check_display_name(d.as_deref())?),
            None => None,
        };
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        bump_generation(&mut tx).await?;
        let old = existing_workspace_on(&mut tx, id).await?;
        let name = update.name.clone().unwrap_or_else(|| old.name.clone());
        if name != old.name {
            if old.name == DEFAULT_WORKSPACE {
                return Err(StoreError::Invalid(format!(
                    "the {DEFAULT_WORKSPACE} workspace keeps its name"
                )));
            }
            let taken = sqlx::query("SELECT id FROM workspaces WHERE name = $1")
                .bind(&name)
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(StoreError::Conflict(format!(
                    "workspace {name} already exists"
                )));
            }
        }
        let display_name = display_name.unwrap_or_else(|| old.display_name.clone());
        sqlx::query(
            "UPDATE workspaces SET name = $2, display_name = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(&name)
        .bind(&display_name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        append_on(
            &mut tx,
            &AuditEvent {
                event: "workspace_updated",
                actor: actor.to_string(),
                workspace: Some(name.clone()),
                detail: Some(
                    serde_json::json!({
                        "workspace_id": id,
                        "name": {"old": old.name, "new": name},
                        "display_name": {"old": old.display_name, "new": display_name},
                    })
                    .to_string(),
                ),
                ..Default::default()
            },
        )
        .await?;
        let w = existing_workspace_on(&mut tx, id).await?;
        tx.commit().await?;
        Ok(w)
    }

    /// Disable a workspace: every identity in it is refused (this node at once for lookups
    /// not cached, every node within `auth.invalidation_poll`). Disabling a disabled workspace
    /// is a conflict. Audits `workspace_disabled`.
    pub async fn disable_workspace(&self, id: &str, actor: &str) -> Result<Workspace, StoreError> {
        self.set_workspace_disabled(id, true, actor).await
    }

    /// Enable a disabled workspace; enabling an enabled one is a conflict. Audits
    /// `workspace_enabled`.
    pub async fn enable_workspace(&self, id: &str, actor: &str) -> Result<Workspace, StoreError> {
        self.set_workspace_disabled(id, false, actor).await
    }

    async fn set_workspace_disabled(
        &self,
        id: &str,
        disable: bool,
        actor: &str,
    ) -> Result<Workspace, StoreError> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.at_home(move |store| async move {
            let now = now_ms();
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let old = existing_workspace_on(&mut tx, &id).await?;
            if old.is_disabled() == disable {
                let state = if disable { "disabled" } else { "enabled" };
                return Err(StoreError::Conflict(format!(
                    "workspace {} is already {state}",
                    old.name
                )));
            }
            sqlx::query("UPDATE workspaces SET disabled_at = $2, updated_at = $3 WHERE id = $1")
                .bind(&id)
                .bind(disable.then_some(now))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            append_on(
                &mut tx,
                &AuditEvent {
                    event: if disable {
                        "workspace_disabled"
                    } else {
                        "workspace_enabled"
                    },
                    actor,
                    workspace: Some(old.name.clone()),
                    detail: Some(serde_json::json!({ "workspace_id": id }).to_string()),
                    ..Default::default()
                },
            )
            .await?;
            let w = existing_workspace_on(&mut tx, &id).await?;
            tx.commit().await?;
            Ok(w)
        })
        .await
    }
}
