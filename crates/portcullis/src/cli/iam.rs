//! `portcullis users …`, `portcullis roles …` and the workspace commands beyond create and
//! list: the [`crate::iam`] operations on the store the configuration names. Passwords are
//! read from the terminal (echo off) or standard input, never from argv or the environment.

use clap::Subcommand;
use std::process::ExitCode;

use super::{admin_command, Target};
use crate::admin::AdminError;
use crate::auth::password::{Password, PasswordHasher};
use crate::config::Config;
use crate::iam;
use crate::store::{Store, StoreOptions, WorkspaceUpdate};

/// Who the CLI's changes are recorded as in the audit log.
const ACTOR: &str = "cli";

/// `portcullis users …`.
#[derive(Debug, clap::Args)]
pub struct UsersArgs {
    /// Where the store is.
    #[command(flatten)]
    pub target: Target,
    /// What to do with users.
    #[command(subcommand)]
    pub command: UsersCommand,
}

/// `portcullis users` subcommands. A user is named by id (`usr_…`) or as
/// `workspace/username`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; the password is read from the terminal or standard input.
    Create {
        /// Workspace name.
        #[arg(long, short, default_value = crate::store::DEFAULT_WORKSPACE)]
        workspace: String,
        /// Login name, `[a-z0-9][a-z0-9._-]{0,63}`.
        username: String,
        /// Name for people.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// List the users of a workspace.
    List {
        /// Workspace name.
        #[arg(long, short, default_value = crate::store::DEFAULT_WORKSPACE)]
        workspace: String,
    },
    /// Show one user.
    Get {
        /// `usr_…` or `workspace/username`.
        user: String,
    },
    /// Change a user's display name (`--display-name ""` clears it).
    Update {
        /// `usr_…` or `workspace/username`.
        user: String,
        /// New display name.
        #[arg(long)]
        display_name: String,
    },
    /// Disable a user: its tokens and keys are refused within the invalidation poll.
    Disable {
        /// `usr_…` or `workspace/username`.
        user: String,
    },
    /// Enable a disabled user.
    Enable {
        /// `usr_…` or `workspace/username`.
        user: String,
    },
    /// Delete a user, revoking its keys and removing its role bindings.
    Delete {
        /// `usr_…` or `workspace/username`.
        user: String,
    },
    /// Set a new password (read from the terminal or standard input); the user's outstanding
    /// tokens are refused from then on.
    ResetPassword {
        /// `usr_…` or `workspace/username`.
        user: String,
    },
}

/// `portcullis roles …`.
#[derive(Debug, clap::Args)]
pub struct RolesArgs {
    /// Where the store is.
    #[command(flatten)]
    pub target: Target,
    /// What to do with role bindings.
    #[command(subcommand)]
    pub command: RolesCommand,
}

/// `portcullis roles` subcommands. A subject is `user:<id>`, `user:<workspace>/<username>`
/// or `key:<key-id>`.
#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// Bind a role (reader, writer, admin, or one from `[access.roles]`) to a subject in a
    /// workspace, or in every workspace (`--workspace '*'`).
    Grant {
        /// The subject.
        subject: String,
        /// The role.
        role: String,
        /// Workspace name, or `*`.
        #[arg(long, short, default_value = crate::store::DEFAULT_WORKSPACE)]
        workspace: String,
    },
    /// Remove a binding by its id (`rb_…`, from `roles list`).
    Revoke {
        /// Binding id.
        id: String,
    },
    /// List the bindings of a subject, or those that apply in a workspace.
    List {
        /// The subject.
        #[arg(long, short)]
        subject: Option<String>,
        /// Workspace name, or `*`.
        #[arg(long, short)]
        workspace: Option<String>,
    },
}

fn hasher(cfg: &Config) -> Result<PasswordHasher, AdminError> {
    PasswordHasher::new(cfg.auth.hash_settings())
        .map_err(|e| AdminError::failure(format!("password hashing: {e}")))
}

async fn open(cfg: &Config) -> Result<Store, AdminError> {
    Ok(Store::open(&StoreOptions::from_config(cfg)).await?)
}

/// Run `f` on the store `cfg` names, closing it after.
async fn on_store<T, F, Fut>(cfg: &Config, f: F) -> Result<T, AdminError>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = Result<T, AdminError>>,
{
    let store = open(cfg).await?;
    let r = f(store.clone()).await;
    store.close().await;
    r
}

fn password() -> Result<Password, AdminError> {
    let p = super::login::read_password()?;
    p.check_new()
        .map_err(|e| AdminError::usage(format!("password: {e}")))?;
    Ok(p)
}

/// Is `name` a role of this configuration (built-in or configured)?
pub fn known_role(cfg: &Config, name: &str) -> bool {
    matches!(name, "reader" | "writer" | "admin") || cfg.access.roles.contains_key(name)
}

/// Run a `users` command.
pub fn users(args: UsersArgs) -> ExitCode {
    let UsersArgs { target, command } = args;
    match command {
        UsersCommand::Create {
            workspace,
            username,
            display_name,
        } => admin_command(&target, |c| async move {
            let pw = password()?;
            let h = hasher(&c)?;
            let req = iam::CreateUser {
                workspace,
                username,
                display_name,
            };
            on_store(&c, |s| async move {
                iam::users_create(&s, &h, &req, &pw, ACTOR).await
            })
            .await
        }),
        UsersCommand::List { workspace } => admin_command(&target, |c| async move {
            on_store(&c, |s| async move { iam::users_list(&s, &workspace).await }).await
        }),
        UsersCommand::Get { user } => admin_command(&target, |c| async move {
            on_store(&c, |s| async move { iam::users_get(&s, &user).await }).await
        }),
        UsersCommand::Update { user, display_name } => admin_command(&target, |c| async move {
            let d = (!display_name.is_empty()).then_some(display_name);
            on_store(&c, |s| async move {
                iam::users_update(&s, &user, Some(d), ACTOR).await
            })
            .await
        }),
        UsersCommand::Disable { user } => admin_command(&target, |c| async move {
            on_store(&c, |s| async move {
                iam::users_set_disabled(&s, &user, true, ACTOR).await
            })
            .await
        }),
        UsersCommand::Enable { user } => admin_command(&target, |c| async move {
            on_store(&c, |s| async move {
                iam::users_set_disabled(&s, &user, false, ACTOR).await
            })
            .await
        }),
        UsersCommand::Delete { user } => admin_command(&target, |c| async move {
            on_store(
                &c,
                |s| async move { iam::users_delete(&s, &user, ACTOR).await },
            )
            .await
        }),
        UsersCommand::ResetPassword { user } => admin_command(&target, |c| async move {
            let pw = password()?;
            let h = hasher(&c)?;
            on_store(&c, |s| async move {
                iam::users_reset_password(&s, &h, &user, &pw, ACTOR).await
            })
            .await
        }),
    }
}

/// Run a `roles` command.
pub fn roles(args: RolesArgs) -> ExitCode {
    let RolesArgs { target, command } = args;
    match command {
        RolesCommand::Grant {
            subject,
            role,
            workspace,
        } => admin_command(&target, |c| async move {
            let cfg = c.clone();
            let known = move |r: &str| known_role(&cfg, r);
            on_store(&c, |s| async move {
                iam::roles_grant(&s, &subject, &role, &workspace, &known, ACTOR).await
            })
            .await
        }),
        RolesCommand::Revoke { id } => admin_command(&target, |c| async move {
            on_store(
                &c,
                |s| async move { iam::roles_revoke(&s, &id, ACTOR).await },
            )
            .await
        }),
        RolesCommand::List { subject, workspace } => admin_command(&target, |c| async move {
            on_store(&c, |s| async move {
                iam::roles_list(&s, subject.as_deref(), workspace.as_deref()).await
            })
            .await
        }),
    }
}

/// `workspaces get|update|disable|enable`.
#[derive(Debug, Subcommand)]
pub enum WorkspaceChange {
    /// Show one workspace with its state.
    Get {
        /// Workspace name.
        name: String,
    },
    /// Rename a workspace (its id stays) or set its display name.
    Update {
        /// Workspace name.
        name: String,
        /// New name.
        #[arg(long)]
        rename: Option<String>,
        /// New display name (`""` clears it).
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Disable a workspace: every identity in it is refused within the invalidation poll.
    Disable {
        /// Workspace name.
        name: String,
    },
    /// Enable a disabled workspace.
    Enable {
        /// Workspace name.
        name: String,
    },
}

/// Run a workspace change.
pub fn workspace_change(target: &Target, change: WorkspaceChange) -> ExitCode {
    match change {
        WorkspaceChange::Get { name } => admin_command(target, |c| async move {
            on_store(&c, |s| async move { iam::workspaces_get(&s, &name).await }).await
        }),
        WorkspaceChange::Update {
            name,
            rename,
            display_name,
        } => admin_command(target, |c| async move {
            let update = WorkspaceUpdate {
                name: rename,
                display_name: display_name.map(|d| (!d.is_empty()).then_some(d)),
            };
            on_store(&c, |s| async move {
                iam::workspaces_update(&s, &name, &update, ACTOR).await
            })
            .await
        }),
        WorkspaceChange::Disable { name } => admin_command(target, |c| async move {
            on_store(&c, |s| async move {
                iam::workspaces_set_disabled(&s, &name, true, ACTOR).await
            })
            .await
        }),
        WorkspaceChange::Enable { name } => admin_command(target, |c| async move {
            on_store(&c, |s| async move {
                iam::workspaces_set_disabled(&s, &name, false, ACTOR).await
            })
            .await
        }),
    }
}

/// `keys create --user U`: a key issued to a user, in the user's workspace.
pub fn keys_create_for_user(target: &Target, args: super::CreateArgs) -> ExitCode {
    admin_command(target, |c| async move {
        let mut req = args.request()?;
        let user = args.user.clone().unwrap_or_default();
        let (store, pepper) = crate::admin::open(&c).await?;
        let r = async {
            let u = iam::user(&store, &user).await?;
            req.workspace = u.workspace.clone();
            let issued =
                crate::auth::authenticator::create_user_key(&store, &pepper, &req, &u.id, ACTOR)
                    .await?;
            Ok(crate::admin::IssuedKeyView::new(
                issued,
                crate::admin::Issuance::Created,
                None,
            ))
        }
        .await;
        store.close().await;
        r
    })
}

/// `bootstrap --admin-user NAME`: the first admin user, password from the terminal.
pub fn bootstrap_admin(target: &Target, workspace: String, username: String) -> ExitCode {
    admin_command(target, |c| async move {
        let pw = password()?;
        let h = hasher(&c)?;
        on_store(&c, |s| async move {
            iam::bootstrap_admin_user(&s, &h, &workspace, &username, &pw, ACTOR).await
        })
        .await
    })
}

use super::Render;
use std::fmt::Write as _;

fn user_line(u: &iam::UserView) -> String {
    format!(
        "{}  {}/{}  {}  {}\n",
        u.id,
        u.workspace,
        u.username,
        u.status,
        u.display_name.as_deref().unwrap_or("-")
    )
}

impl Render for iam::UserView {
    fn text(&self) -> String {
        user_line(self)
    }
}

impl Render for iam::UserList {
    fn text(&self) -> String {
        if self.users.is_empty() {
            return "No users.\n".into();
        }
        self.users.iter().map(user_line).collect()
    }
}

impl Render for iam::DeletedUserView {
    fn text(&self) -> String {
        format!(
            "Deleted user {}/{} ({}); revoked {} key(s), removed {} role binding(s).\n",
            self.user.workspace,
            self.user.username,
            self.user.id,
            self.revoked_keys.len(),
            self.removed_bindings
        )
    }
}

fn workspace_line(w: &iam::WorkspaceDetail) -> String {
    format!(
        "{}  {}  {}  {}\n",
        w.id,
        w.name,
        w.status,
        w.display_name.as_deref().unwrap_or("-")
    )
}

impl Render for iam::WorkspaceDetail {
    fn text(&self) -> String {
        workspace_line(self)
    }
}

impl Render for iam::WorkspaceDetails {
    fn text(&self) -> String {
        self.workspaces.iter().map(workspace_line).collect()
    }
}

fn binding_line(b: &iam::BindingView) -> String {
    format!("{}  {}  {}  in {}\n", b.id, b.subject, b.role, b.workspace)
}

impl Render for iam::BindingView {
    fn text(&self) -> String {
        binding_line(self)
    }
}

impl Render for iam::BindingList {
    fn text(&self) -> String {
        if self.bindings.is_empty() {
            return "No role bindings.\n".into();
        }
        self.bindings.iter().map(binding_line).collect()
    }
}

impl Render for iam::BootstrappedAdmin {
    fn text(&self) -> String {
        let mut t = format!(
            "Created admin user {}/{} ({}), role admin in every workspace.\n",
            self.user.workspace, self.user.username, self.user.id
        );
        let _ = writeln!(
            t,
            "Log in with `portcullis login --workspace {} --username {}`.",
            self.user.workspace, self.user.username
        );
        t
    }
}
