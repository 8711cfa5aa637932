//! Workspaces (tenants), minimal for now: an id and a unique name. Every identity belongs
//! to one.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, Store, StoreError};

/// A workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workspace {
    /// Stable id (`ws_` + 16 hex digits).
    pub id: String,
    /// Unique name, `[a-z0-9-]{1,63}`.
    pub name: String,
    /// Creation time, Unix ms.
    pub created_at: i64,
}

/// Is `name` a valid workspace name?
pub fn valid_workspace_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn from_row(r: &AnyRow) -> Result<Workspace, sqlx::Error> {
    Ok(Workspace {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
    })
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
    /// its trail.
    pub async fn create_workspace(
        &self,
        name: &str,
        actor: Option<&str>,
    ) -> Result<Workspace, StoreError> {
        if !valid_workspace_name(name) {
            return Err(StoreError::Invalid(
                "workspace names are 1-63 of [a-z0-9-]".into(),
            ));
        }
        let w = Workspace {
            id: format!("ws_{}", hex::encode(rand::random::<[u8; 8]>())),
            name: name.to_string(),
            created_at: now_ms(),
        };
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query("INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3)")
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
            super::audit::append_on(
                &mut tx,
                &super::AuditEvent {
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
        let row = sqlx::query("SELECT id, name, created_at FROM workspaces WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    /// Every workspace, by name.
    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>, StoreError> {
        let rows = sqlx::query("SELECT id, name, created_at FROM workspaces ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }
}
