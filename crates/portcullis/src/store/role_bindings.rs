//! Role bindings: a subject (a user, or an API key of its own) holds a role in a workspace,
//! or in every workspace (`*`, [`ALL_WORKSPACES`]).
//!
//! The store keeps bindings; it does not know what a role grants. Role names are checked for
//! shape only ([`valid_role_name`]); whether a role exists (built in or configured) is the
//! caller's check, and `crate::access` decides what it grants. A binding names its subject
//! by id; the subject must exist when the binding is made. A key issued to a user holds no
//! bindings of its own: it acts with its user's roles, narrowed by its scopes.
//!
//! Granting a binding that exists already is a [`StoreError::Conflict`], as creating a taken
//! workspace name is: the audit log then records only grants that changed something, and the
//! caller learns the binding was already there. Every change bumps the change generation (so
//! cached decisions drop everywhere) and writes its audit row in its transaction.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::api_keys::{any_admin_key_on, key_on};
use super::audit::{append_on, AuditEvent};
use super::users::{insert_user_on, user_on, NewUser, User};
use super::workspaces::existing_workspace_on;
use super::{bump_generation, now_ms, random_id, Store, StoreError};

/// The workspace id of a binding that holds in every workspace.
pub const ALL_WORKSPACES: &str = "*";

/// The built-in role that may do everything in its workspace (and, bound to `*`, everywhere).
/// [`Store::has_admin_binding`] looks for it.
pub const ADMIN_ROLE: &str = "admin";

/// What kind of identity a binding is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    /// A user (`usr_…`).
    User,
    /// An API key of its own (by key id).
    Key,
}

impl SubjectKind {
    /// Stored name: `user` or `key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Key => "key",
        }
    }

    /// The kind stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "key" => Some(Self::Key),
            _ => None,
        }
    }
}

/// A role binding as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleBinding {
    /// Stable id (`rb_` + 16 hex digits).
    pub id: String,
    /// User or key.
    pub subject_kind: SubjectKind,
    /// User id or key id.
    pub subject_id: String,
    /// Role name.
    pub role: String,
    /// Workspace id, or `*`: every workspace.
    pub workspace_id: String,
    /// Workspace name; `None` for `*`.
    pub workspace: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Actor who granted it.
    pub created_by: String,
}

impl RoleBinding {
    /// Does it hold in every workspace?
    pub fn is_global(&self) -> bool {
        self.workspace_id == ALL_WORKSPACES
    }

    /// Does it hold in workspace `workspace_id`?
    pub fn applies_in(&self, workspace_id: &str) -> bool {
        self.is_global() || self.workspace_id == workspace_id
    }
}

/// A binding to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoleBinding {
    /// User or key.
    pub subject_kind: SubjectKind,
    /// User id or key id; must exist.
    pub subject_id: String,
    /// Role name ([`valid_role_name`]).
    pub role: String,
    /// Workspace id (must exist), or `*`.
    pub workspace_id: String,
}

/// Is `name` a valid role name: 1-64 of `[a-z0-9._-]`, starting with a letter?
pub fn valid_role_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

const COLUMNS: &str = "b.id, b.subject_kind, b.subject_id, b.role, b.workspace_id, \
     w.name AS workspace, b.created_at, b.created_by";

const FROM: &str = "role_bindings b LEFT JOIN workspaces w ON w.id = b.workspace_id";

fn from_row(r: &AnyRow) -> Result<RoleBinding, sqlx::Error> {
    let kind: String = r.try_get("subject_kind")?;
    Ok(RoleBinding {
        id: r.try_get("id")?,
        subject_kind: SubjectKind::parse(&kind).ok_or_else(|| {
            sqlx::Error::Decode(format!("role binding subject kind {kind:?}").into())
        })?,
        subject_id: r.try_get("subject_id")?,
        role: r.try_get("role")?,
        workspace_id: r.try_get("workspace_id")?,
        workspace: r.try_get("workspace")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
    })
}

async fn binding_on(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<Option<RoleBinding>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM {FROM} WHERE b.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

async fn find_on(
    conn: &mut sqlx::AnyConnection,
    kind: SubjectKind,
    subject_id: &str,
    role: &str,
    workspace_id: &str,
) -> Result<Option<RoleBinding>, sqlx::Error> {
    let q = format!(
        "SELECT {COLUMNS} FROM {FROM}
         WHERE b.subject_kind = $1 AND b.subject_id = $2 AND b.role = $3 AND b.workspace_id = $4"
    );
    let row = sqlx::query(&q)
        .bind(kind.as_str())
        .bind(subject_id)
        .bind(role)
        .bind(workspace_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

async fn any_admin_binding_on(conn: &mut sqlx::AnyConnection) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM role_bindings WHERE role = $1")
        .bind(ADMIN_ROLE)
        .fetch_one(conn)
        .await?
        .try_get(0)?;
    Ok(n > 0)
}

fn binding_detail(b: &RoleBinding) -> String {
    serde_json::json!({
        "binding_id": b.id,
        "subject_kind": b.subject_kind.as_str(),
        "subject_id": b.subject_id,
        "role": b.role,
        "workspace_id": b.workspace_id,
    })
    .to_string()
}

/// The audit row of a binding change: the key concerned when the subject is a key, the
/// workspace by name (`*` for every workspace).
fn binding_event(event: &'static str, actor: &str, b: &RoleBinding) -> AuditEvent {
    AuditEvent {
        event,
        actor: actor.to_string(),
        key_id: (b.subject_kind == SubjectKind::Key).then(|| b.subject_id.clone()),
        workspace: Some(
            b.workspace
                .clone()
                .unwrap_or_else(|| b.workspace_id.clone()),
        ),
        detail: Some(binding_detail(b)),
        ..Default::default()
    }
}

/// Make a binding on `conn` inside the caller's transaction (the generation already
/// bumped); audits `role_granted`.
async fn insert_binding_on(
    conn: &mut sqlx::AnyConnection,
    new: &NewRoleBinding,
    actor: &str,
) -> Result<RoleBinding, StoreError> {
    if !valid_role_name(&new.role) {
        return Err(StoreError::Invalid(
            "role names are 1-64 of [a-z0-9._-], starting with a letter".into(),
        ));
    }
    match new.subject_kind {
        SubjectKind::User => {
            user_on(conn, &new.subject_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("user {}", new.subject_id)))?;
        }
        SubjectKind::Key => {
            let key = key_on(conn, &new.subject_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("key {}", new.subject_id)))?;
            if let Some(user) = key.user_id {
                return Err(StoreError::Invalid(format!(
                    "key {} is issued to user {user}: bind roles to the user",
                    key.key_id
                )));
            }
        }
    }
    if new.workspace_id != ALL_WORKSPACES {
        existing_workspace_on(conn, &new.workspace_id).await?;
    }
    if find_on(
        conn,
        new.subject_kind,
        &new.subject_id,
        &new.role,
        &new.workspace_id,
    )
    .await?
    .is_some()
    {
        return Err(StoreError::Conflict(format!(
            "{} {} already holds role {} in {}",
            new.subject_kind.as_str(),
            new.subject_id,
            new.role,
            new.workspace_id
        )));
    }
    let id = random_id("rb_");
    sqlx::query(
        "INSERT INTO role_bindings
             (id, subject_kind, subject_id, role, workspace_id, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(new.subject_kind.as_str())
    .bind(&new.subject_id)
    .bind(&new.role)
    .bind(&new.workspace_id)
    .bind(now_ms())
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    let b = binding_on(conn, &id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("role binding {id}")))?;
    append_on(conn, &binding_event("role_granted", actor, &b)).await?;
    Ok(b)
}

impl Store {
    /// Bind a role to a subject in a workspace (or `*`). The subject and the workspace must
    /// exist; an existing identical binding is a conflict. Audits `role_granted`.
    pub async fn grant_role(
        &self,
        new: &NewRoleBinding,
        actor: &str,
    ) -> Result<RoleBinding, StoreError> {
        let (new, actor) = (new.clone(), actor.to_owned());
        self.at_home(move |store| async move {
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let b = insert_binding_on(&mut tx, &new, &actor).await?;
            tx.commit().await?;
            Ok(b)
        })
        .await
    }

    /// Remove the binding with id `id`; returns it as it was. Audits `role_revoked`.
    pub async fn revoke_role(&self, id: &str, actor: &str) -> Result<RoleBinding, StoreError> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.at_home(move |store| async move {
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let b = binding_on(&mut tx, &id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("role binding {id}")))?;
            sqlx::query("DELETE FROM role_bindings WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            append_on(&mut tx, &binding_event("role_revoked", &actor, &b)).await?;
            tx.commit().await?;
            Ok(b)
        })
        .await
    }

    /// The binding with this id, if there is one.
    pub async fn role_binding(&self, id: &str) -> Result<Option<RoleBinding>, StoreError> {
        let id = id.to_owned();
        self.at_home(move |store| async move {
            let mut conn = store.pool().acquire().await?;
            Ok(binding_on(&mut conn, &id).await?)
        })
        .await
    }

    /// The binding of `role` to a subject in `workspace_id` (or `*`), if there is one (to
    /// revoke by what was granted rather than by id).
    pub async fn find_role_binding(
        &self,
        subject_kind: SubjectKind,
        subject_id: &str,
        role: &str,
        workspace_id: &str,
    ) -> Result<Option<RoleBinding>, StoreError> {
        let (subject_id, role, workspace_id) = (
            subject_id.to_owned(),
            role.to_owned(),
            workspace_id.to_owned(),
        );
        self.at_home(move |store| async move {
            let mut conn = store.pool().acquire().await?;
            Ok(find_on(&mut conn, subject_kind, &subject_id, &role, &workspace_id).await?)
        })
        .await
    }

    /// Every binding of a subject, in every workspace, by workspace id then role.
    pub async fn list_role_bindings_for(
        &self,
        subject_kind: SubjectKind,
        subject_id: &str,
    ) -> Result<Vec<RoleBinding>, StoreError> {
        let subject_id = subject_id.to_owned();
        self.at_home(move |store| async move {
            let q = format!(
                "SELECT {COLUMNS} FROM {FROM} WHERE b.subject_kind = $1 AND b.subject_id = $2
                 ORDER BY b.workspace_id, b.role"
            );
            let rows = sqlx::query(&q)
                .bind(subject_kind.as_str())
                .bind(&subject_id)
                .fetch_all(store.pool())
                .await?;
            Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The bindings that hold in workspace `workspace_id`: those made in it and those made
    /// for every workspace (`*`, [`RoleBinding::is_global`]) — who can act there. With
    /// `workspace_id` = `*`, only the bindings for every workspace. Ordered by subject, role.
    pub async fn list_role_bindings_in(
        &self,
        workspace_id: &str,
    ) -> Result<Vec<RoleBinding>, StoreError> {
        let workspace_id = workspace_id.to_owned();
        self.at_home(move |store| async move {
            let q = format!(
                "SELECT {COLUMNS} FROM {FROM} WHERE b.workspace_id = $1 OR b.workspace_id = $2
                 ORDER BY b.subject_kind, b.subject_id, b.role, b.workspace_id"
            );
            let rows = sqlx::query(&q)
                .bind(&workspace_id)
                .bind(ALL_WORKSPACES)
                .fetch_all(store.pool())
                .await?;
            Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Is there any binding of the role `admin` (any subject, any workspace)?
    pub async fn has_admin_binding(&self) -> Result<bool, StoreError> {
        self.at_home(|store| async move {
            let mut conn = store.pool().acquire().await?;
            Ok(any_admin_binding_on(&mut conn).await?)
        })
        .await
    }

    /// Create the first admin: a user bound to `admin` in every workspace, only while no
    /// admin exists — no `admin` binding and no active key with scope `*` — checked in the
    /// same transaction, so two bootstraps cannot both succeed. Audits `bootstrap` (the user)
    /// and `role_granted` (its binding).
    pub async fn bootstrap_admin_user(
        &self,
        new: &NewUser,
        actor: &str,
    ) -> Result<(User, RoleBinding), StoreError> {
        let (new, actor) = (new.clone(), actor.to_owned());
        self.at_home(move |store| async move {
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            if any_admin_binding_on(&mut tx).await? || any_admin_key_on(&mut tx, now_ms()).await? {
                return Err(StoreError::Conflict(
                    "an admin already exists; bootstrap refused".into(),
                ));
            }
            let user = insert_user_on(&mut tx, &new, "bootstrap", &actor).await?;
            let binding = insert_binding_on(
                &mut tx,
                &NewRoleBinding {
                    subject_kind: SubjectKind::User,
                    subject_id: user.id.clone(),
                    role: ADMIN_ROLE.into(),
                    workspace_id: ALL_WORKSPACES.into(),
                },
                &actor,
            )
            .await?;
            tx.commit().await?;
            Ok((user, binding))
        })
        .await
    }
}
