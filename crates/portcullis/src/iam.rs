//! IAM operations: users, workspaces, role bindings, and the first admin user.
//!
//! Like [`crate::admin`], each operation returns a typed view and knows nothing of how it is
//! shown: the CLI renders text or `--json` from it, the REST API under `/api/v1/iam/`
//! ([`crate::api`]) renders the same serde shape as JSON. Failures are an [`AdminError`]
//! whose kind maps to an exit code or an HTTP status. No view carries a password or a hash.
//!
//! Every change goes through the store in one transaction with its audit row and bumps the
//! store's change generation, so every gateway node drops its verification and decision
//! caches within `auth.invalidation_poll`: a disabled user's tokens are refused, a revoked
//! binding stops granting.
//!
//! Operations take the names an operator types (workspace names, usernames) and the ids the
//! store assigns (`usr_…`, `rb_…`); a user is named either by id or as `workspace/username`.

use serde::Serialize;

use crate::admin::{AdminError, Timestamp};
use crate::auth::password::{Password, PasswordHasher};
use crate::store::{
    NewRoleBinding, NewUser, Redacted, RoleBinding, Store, SubjectKind, User, UserUpdate,
    Workspace, WorkspaceUpdate, ALL_WORKSPACES,
};

/// A user as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    /// Stable id.
    pub id: String,
    /// Workspace name.
    pub workspace: String,
    /// Login name.
    pub username: String,
    /// Name for people.
    pub display_name: Option<String>,
    /// `active` or `disabled`.
    pub status: &'static str,
    /// When it was created.
    pub created_at: Timestamp,
    /// When the password was last set.
    pub password_changed_at: Timestamp,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.clone(),
            workspace: u.workspace.clone(),
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            status: if u.is_disabled() {
                "disabled"
            } else {
                "active"
            },
            created_at: Timestamp(u.created_at),
            password_changed_at: Timestamp(u.password_changed_at),
        }
    }
}

/// `users list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserList {
    /// The users of the workspace, by username.
    pub users: Vec<UserView>,
}

/// `users delete`: the user as it was, and what went with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeletedUserView {
    /// The user.
    pub user: UserView,
    /// Keys issued to the user, now revoked.
    pub revoked_keys: Vec<String>,
    /// Role bindings removed.
    pub removed_bindings: u64,
}

/// A workspace with its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceDetail {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Name for people.
    pub display_name: Option<String>,
    /// `active` or `disabled`: a disabled workspace refuses every identity in it.
    pub status: &'static str,
    /// When it was created.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

impl From<&Workspace> for WorkspaceDetail {
    fn from(w: &Workspace) -> Self {
        Self {
            id: w.id.clone(),
            name: w.name.clone(),
            display_name: w.display_name.clone(),
            status: if w.is_disabled() {
                "disabled"
            } else {
                "active"
            },
            created_at: Timestamp(w.created_at),
            updated_at: Timestamp(w.updated_at),
        }
    }
}

/// A list of workspaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceDetails {
    /// The workspaces, by name.
    pub workspaces: Vec<WorkspaceDetail>,
}

/// A role binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindingView {
    /// Stable id (to revoke it).
    pub id: String,
    /// `user:<id>` or `key:<key-id>`.
    pub subject: String,
    /// Role name.
    pub role: String,
    /// Workspace name, or `*`: every workspace.
    pub workspace: String,
    /// When it was granted.
    pub created_at: Timestamp,
    /// Who granted it.
    pub created_by: String,
}

impl From<&RoleBinding> for BindingView {
    fn from(b: &RoleBinding) -> Self {
        Self {
            id: b.id.clone(),
            subject: format!("{}:{}", b.subject_kind.as_str(), b.subject_id),
            role: b.role.clone(),
            workspace: b
                .workspace
                .clone()
                .unwrap_or_else(|| ALL_WORKSPACES.to_string()),
            created_at: Timestamp(b.created_at),
            created_by: b.created_by.clone(),
        }
    }
}

/// A list of role bindings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindingList {
    /// The bindings.
    pub bindings: Vec<BindingView>,
}

/// `bootstrap --admin-user`: the first admin user and its binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootstrappedAdmin {
    /// The user.
    pub user: UserView,
    /// Its `admin` binding in `*`.
    pub binding: BindingView,
}

/// The workspace named `name` (or with id `name`), or NotFound.
pub async fn workspace(store: &Store, name: &str) -> Result<Workspace, AdminError> {
    let w = if name.starts_with("ws_") {
        store.workspace(name).await?
    } else {
        store.workspace_by_name(name).await?
    };
    w.ok_or_else(|| not_found(format!("workspace {name}")))
}

fn not_found(what: String) -> AdminError {
    AdminError::from(crate::store::StoreError::NotFound(what))
}

/// The user named by id (`usr_…`) or as `workspace/username`, or NotFound.
pub async fn user(store: &Store, name: &str) -> Result<User, AdminError> {
    let u = match name.split_once('/') {
        Some((ws, username)) => {
            let w = workspace(store, ws).await?;
            store.user_by_username(&w.id, username).await?
        }
        None => store.user(name).await?,
    };
    u.ok_or_else(|| not_found(format!("user {name}")))
}

/// A new user's fields.
#[derive(Debug, Clone)]
pub struct CreateUser {
    /// Workspace name or id.
    pub workspace: String,
    /// Login name.
    pub username: String,
    /// Name for people.
    pub display_name: Option<String>,
}

/// `users create`: the password is hashed here (Argon2id), never stored or shown.
pub async fn users_create(
    store: &Store,
    hasher: &PasswordHasher,
    req: &CreateUser,
    password: &Password,
    actor: &str,
) -> Result<UserView, AdminError> {
    let w = workspace(store, &req.workspace).await?;
    let hash = hash(hasher, password).await?;
    let u = store
        .create_user(
            &NewUser {
                workspace_id: w.id,
                username: req.username.clone(),
                display_name: req.display_name.clone(),
                password_hash: Redacted::new(hash),
            },
            actor,
        )
        .await?;
    Ok(UserView::from(&u))
}

async fn hash(hasher: &PasswordHasher, password: &Password) -> Result<String, AdminError> {
    use crate::auth::password::PasswordError;
    hasher.hash(password).await.map_err(|e| match e {
        PasswordError::Policy(m) => AdminError::usage(format!("password: {m}")),
        PasswordError::Busy => AdminError::failure("too many password operations: try again"),
        _ => AdminError::failure("cannot hash the password"),
    })
}

/// `users list`.
pub async fn users_list(store: &Store, workspace_name: &str) -> Result<UserList, AdminError> {
    let w = workspace(store, workspace_name).await?;
    let users = store.list_users(&w.id).await?;
    Ok(UserList {
        users: users.iter().map(UserView::from).collect(),
    })
}

/// `users get`.
pub async fn users_get(store: &Store, name: &str) -> Result<UserView, AdminError> {
    Ok(UserView::from(&user(store, name).await?))
}

/// `users update`: `display_name` `Some(None)` clears it.
pub async fn users_update(
    store: &Store,
    name: &str,
    display_name: Option<Option<String>>,
    actor: &str,
) -> Result<UserView, AdminError> {
    let u = user(store, name).await?;
    let u = store
        .update_user(&u.id, &UserUpdate { display_name }, actor)
        .await?;
    Ok(UserView::from(&u))
}

/// `users disable` / `users enable`: a disabled user's tokens and keys are refused within the
/// invalidation poll.
pub async fn users_set_disabled(
    store: &Store,
    name: &str,
    disabled: bool,
    actor: &str,
) -> Result<UserView, AdminError> {
    let u = user(store, name).await?;
    let u = if disabled {
        store.disable_user(&u.id, actor).await?
    } else {
        store.enable_user(&u.id, actor).await?
    };
    Ok(UserView::from(&u))
}

/// `users delete`: the user's keys are revoked and its bindings removed with it.
pub async fn users_delete(
    store: &Store,
    name: &str,
    actor: &str,
) -> Result<DeletedUserView, AdminError> {
    let u = user(store, name).await?;
    let d = store.delete_user(&u.id, actor).await?;
    Ok(DeletedUserView {
        user: UserView::from(&d.user),
        revoked_keys: d.revoked_keys,
        removed_bindings: d.removed_bindings,
    })
}

/// `users reset-password`: a new password set by an operator; the user's outstanding tokens
/// are refused from then on.
pub async fn users_reset_password(
    store: &Store,
    hasher: &PasswordHasher,
    name: &str,
    password: &Password,
    actor: &str,
) -> Result<UserView, AdminError> {
    let u = user(store, name).await?;
    let hash = hash(hasher, password).await?;
    let u = store
        .set_user_password_hash(&u.id, &Redacted::new(hash), actor)
        .await?;
    Ok(UserView::from(&u))
}

/// `workspaces get`.
pub async fn workspaces_get(store: &Store, name: &str) -> Result<WorkspaceDetail, AdminError> {
    Ok(WorkspaceDetail::from(&workspace(store, name).await?))
}

/// `workspaces list`, with their state.
pub async fn workspaces_list(store: &Store) -> Result<WorkspaceDetails, AdminError> {
    let ws = store.list_workspaces().await?;
    Ok(WorkspaceDetails {
        workspaces: ws.iter().map(WorkspaceDetail::from).collect(),
    })
}

/// `workspaces create`.
pub async fn workspaces_create(
    store: &Store,
    name: &str,
    display_name: Option<String>,
    actor: &str,
) -> Result<WorkspaceDetail, AdminError> {
    let w = store.create_workspace(name, Some(actor)).await?;
    let w = match display_name {
        Some(d) => {
            store
                .update_workspace(
                    &w.id,
                    &WorkspaceUpdate {
                        name: None,
                        display_name: Some(Some(d)),
                    },
                    actor,
                )
                .await?
        }
        None => w,
    };
    Ok(WorkspaceDetail::from(&w))
}

/// `workspaces update`: rename (ids stay) or set the display name.
pub async fn workspaces_update(
    store: &Store,
    name: &str,
    update: &WorkspaceUpdate,
    actor: &str,
) -> Result<WorkspaceDetail, AdminError> {
    let w = workspace(store, name).await?;
    let w = store.update_workspace(&w.id, update, actor).await?;
    Ok(WorkspaceDetail::from(&w))
}

/// `workspaces disable` / `enable`: a disabled workspace refuses every identity in it.
pub async fn workspaces_set_disabled(
    store: &Store,
    name: &str,
    disabled: bool,
    actor: &str,
) -> Result<WorkspaceDetail, AdminError> {
    let w = workspace(store, name).await?;
    let w = if disabled {
        store.disable_workspace(&w.id, actor).await?
    } else {
        store.enable_workspace(&w.id, actor).await?
    };
    Ok(WorkspaceDetail::from(&w))
}

/// A subject as an operator names it: `user:<id>`, `user:<workspace>/<username>` or
/// `key:<key-id>`. Returns the kind, the id and the subject's home workspace id.
pub async fn subject(store: &Store, s: &str) -> Result<(SubjectKind, String, String), AdminError> {
    match s.split_once(':') {
        Some(("user", name)) => {
            let u = user(store, name).await?;
            Ok((SubjectKind::User, u.id, u.workspace_id))
        }
        Some(("key", id)) => {
            let k = store
                .key(id)
                .await?
                .ok_or_else(|| not_found(format!("key {id}")))?;
            Ok((SubjectKind::Key, k.key_id, k.workspace_id))
        }
        _ => Err(AdminError::usage(
            "a subject is user:<id>, user:<workspace>/<username> or key:<key-id>",
        )),
    }
}

/// `roles grant`: bind `role` to `subject` in workspace `workspace` (a name, or `*` for every
/// workspace). `known_role` says whether the role exists (built-in or configured).
pub async fn roles_grant(
    store: &Store,
    subject_name: &str,
    role: &str,
    workspace_name: &str,
    known_role: &(dyn Fn(&str) -> bool + Sync),
    actor: &str,
) -> Result<BindingView, AdminError> {
    if !known_role(role) {
        return Err(AdminError::usage(format!(
            "no role {role:?}: the built-in roles are reader, writer and admin; others come from [access.roles] in the configuration"
        )));
    }
    let (kind, id, _) = subject(store, subject_name).await?;
    let workspace_id = if workspace_name == ALL_WORKSPACES {
        ALL_WORKSPACES.to_string()
    } else {
        workspace(store, workspace_name).await?.id
    };
    let b = store
        .grant_role(
            &NewRoleBinding {
                subject_kind: kind,
                subject_id: id,
                role: role.to_string(),
                workspace_id,
            },
            actor,
        )
        .await?;
    Ok(BindingView::from(&b))
}

/// `roles revoke`: remove the binding with this id.
pub async fn roles_revoke(store: &Store, id: &str, actor: &str) -> Result<BindingView, AdminError> {
    Ok(BindingView::from(&store.revoke_role(id, actor).await?))
}

/// `roles list`: the bindings of a subject, or of a workspace (its own and the `*` ones).
pub async fn roles_list(
    store: &Store,
    subject_name: Option<&str>,
    workspace_name: Option<&str>,
) -> Result<BindingList, AdminError> {
    let bindings = match (subject_name, workspace_name) {
        (Some(s), _) => {
            let (kind, id, _) = subject(store, s).await?;
            store.list_role_bindings_for(kind, &id).await?
        }
        (None, Some(ALL_WORKSPACES)) => store.list_role_bindings_in(ALL_WORKSPACES).await?,
        (None, Some(w)) => {
            let w = workspace(store, w).await?;
            store.list_role_bindings_in(&w.id).await?
        }
        (None, None) => {
            return Err(AdminError::usage(
                "name a subject (--subject) or a workspace (--workspace)",
            ))
        }
    };
    Ok(BindingList {
        bindings: bindings.iter().map(BindingView::from).collect(),
    })
}

/// `bootstrap --admin-user NAME`: the first admin user (in `workspace`), bound to `admin` in
/// every workspace. Refused once any admin exists.
pub async fn bootstrap_admin_user(
    store: &Store,
    hasher: &PasswordHasher,
    workspace_name: &str,
    username: &str,
    password: &Password,
    actor: &str,
) -> Result<BootstrappedAdmin, AdminError> {
    let w = workspace(store, workspace_name).await?;
    if store.has_admin_binding().await? {
        return Err(AdminError::from(crate::store::StoreError::Conflict(
            "an admin already exists: bootstrap is only for the first one".into(),
        )));
    }
    let hash = hash(hasher, password).await?;
    let (u, b) = store
        .bootstrap_admin_user(
            &NewUser {
                workspace_id: w.id,
                username: username.to_string(),
                display_name: None,
                password_hash: Redacted::new(hash),
            },
            actor,
        )
        .await?;
    Ok(BootstrappedAdmin {
        user: UserView::from(&u),
        binding: BindingView::from(&b),
    })
}
