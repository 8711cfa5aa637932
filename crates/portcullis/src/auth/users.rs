//! What authentication needs to know about users, as a narrow interface over the store:
//! a user by (workspace, username) for login, a token subject's standing for verification,
//! and replacing a password hash. The store implements [`UserDirectory`]; tests use
//! [`MemoryUsers`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::throttle::StoreFuture;
use crate::store::StoreError;

/// A user as login needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginUser {
    /// User id (the token subject is `user:<id>`).
    pub id: String,
    /// Username, unique in its workspace.
    pub username: String,
    /// Workspace id.
    pub workspace_id: String,
    /// Workspace name.
    pub workspace: String,
    /// PHC string of the password hash.
    pub password_hash: String,
    /// The user is disabled.
    pub disabled: bool,
    /// The user's workspace is disabled.
    pub workspace_disabled: bool,
    /// When the password was last set (Unix ms).
    pub password_changed_at: i64,
}

impl std::fmt::Debug for LoginUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginUser")
            .field("id", &self.id)
            .field("workspace_id", &self.workspace_id)
            .field("disabled", &self.disabled)
            .field("workspace_disabled", &self.workspace_disabled)
            .finish_non_exhaustive()
    }
}

/// What decides whether a token's subject may still call: read once per subject per cache
/// lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Workspace id.
    pub workspace_id: String,
    /// Workspace name.
    pub workspace: String,
    /// The user is disabled.
    pub disabled: bool,
    /// The user's workspace is disabled.
    pub workspace_disabled: bool,
    /// When the password was last set (Unix ms): tokens issued before it are refused.
    pub password_changed_at: i64,
}

impl From<&LoginUser> for Standing {
    fn from(u: &LoginUser) -> Self {
        Self {
            workspace_id: u.workspace_id.clone(),
            workspace: u.workspace.clone(),
            disabled: u.disabled,
            workspace_disabled: u.workspace_disabled,
            password_changed_at: u.password_changed_at,
        }
    }
}

/// Users, as authentication reads and writes them. Every change through it must bump the
/// store's change generation (`Store::generation`), which every gateway polls to drop its
/// caches.
pub trait UserDirectory: Send + Sync + 'static {
    /// The user `username` of the workspace named `workspace`; `None` when either does not
    /// exist.
    fn login_user<'a>(
        &'a self,
        workspace: &'a str,
        username: &'a str,
    ) -> StoreFuture<'a, Option<LoginUser>>;

    /// The user with id `user_id` (change of password: the current one is checked first).
    fn login_user_by_id<'a>(&'a self, user_id: &'a str) -> StoreFuture<'a, Option<LoginUser>>;

    /// The standing of user `user_id` (`None`: no such user): one query.
    fn user_for_verification<'a>(&'a self, user_id: &'a str) -> StoreFuture<'a, Option<Standing>>;

    /// Replace the password hash of `user_id`. `changed_at` is set when the password itself
    /// changed (tokens issued before it are refused); a rehash of the same password leaves it.
    fn set_password_hash<'a>(
        &'a self,
        user_id: &'a str,
        phc: &'a str,
        changed_at: Option<i64>,
    ) -> StoreFuture<'a, ()>;
}

/// Users in memory, for tests and benches: a stand-in for the store.
#[derive(Debug, Default)]
pub struct MemoryUsers {
    users: Mutex<HashMap<String, LoginUser>>,
    queries: std::sync::atomic::AtomicU64,
}

impl MemoryUsers {
    /// An empty directory.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Add or replace a user.
    pub fn put(&self, user: LoginUser) {
        if let Ok(mut u) = self.users.lock() {
            u.insert(user.id.clone(), user);
        }
    }

    /// Change a user in place.
    pub fn update(&self, user_id: &str, f: impl FnOnce(&mut LoginUser)) {
        if let Ok(mut u) = self.users.lock() {
            if let Some(user) = u.get_mut(user_id) {
                f(user);
            }
        }
    }

    /// A user by id.
    pub fn get(&self, user_id: &str) -> Option<LoginUser> {
        self.users.lock().ok()?.get(user_id).cloned()
    }

    /// Verification queries answered so far.
    pub fn verification_queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl UserDirectory for MemoryUsers {
    fn login_user<'a>(
        &'a self,
        workspace: &'a str,
        username: &'a str,
    ) -> StoreFuture<'a, Option<LoginUser>> {
        Box::pin(async move {
            let users = self
                .users
                .lock()
                .map_err(|_| StoreError::Invalid("poisoned".into()))?;
            Ok(users
                .values()
                .find(|u| u.workspace == workspace && u.username == username)
                .cloned())
        })
    }

    fn login_user_by_id<'a>(&'a self, user_id: &'a str) -> StoreFuture<'a, Option<LoginUser>> {
        Box::pin(async move { Ok(self.get(user_id)) })
    }

    fn user_for_verification<'a>(&'a self, user_id: &'a str) -> StoreFuture<'a, Option<Standing>> {
        Box::pin(async move {
            self.queries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(self.get(user_id).as_ref().map(Standing::from))
        })
    }

    fn set_password_hash<'a>(
        &'a self,
        user_id: &'a str,
        phc: &'a str,
        changed_at: Option<i64>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.update(user_id, |u| {
                u.password_hash = phc.to_string();
                if let Some(t) = changed_at {
                    u.password_changed_at = t;
                }
            });
            Ok(())
        })
    }
}
