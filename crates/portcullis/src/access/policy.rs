//! Where role bindings come from: the [`PolicySource`] contract, and an in-memory source for
//! tests ([`MemoryPolicy`]).
//!
//! A *role binding* says a subject — a user or an API key — holds a role in one workspace, or
//! in `*`, every workspace. The store keeps them in `role_bindings(subject_kind 'user'|'key',
//! subject_id, role, workspace_id or '*')`. The facts of an API key itself — its scopes and the
//! user it was issued to, if any — are not read through this contract but from the key's
//! verification cache ([`super::GrantSource`], [`super::Grants::issued_to`]): they are known
//! the moment the key verifies, and an allowed call on a cached key asks nothing else.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// Who holds role bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectRef<'a> {
    /// A user, by user id.
    User(&'a str),
    /// An API key, by key id.
    Key(&'a str),
}

impl<'a> SubjectRef<'a> {
    /// The subject an identity names: `user:<id>` or `key:<id>` (`crate::auth::Identity`'s
    /// `subject`); `None` for anything else.
    pub fn parse(subject: &'a str) -> Option<Self> {
        let (kind, id) = subject.split_once(':')?;
        if id.is_empty() {
            return None;
        }
        match kind {
            "user" => Some(Self::User(id)),
            "key" => Some(Self::Key(id)),
            _ => None,
        }
    }

    /// The store's `subject_kind`: `user` or `key`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::Key(_) => "key",
        }
    }

    /// The store's `subject_id`: the user id or key id.
    pub fn id(&self) -> &'a str {
        match self {
            Self::User(id) | Self::Key(id) => id,
        }
    }
}

/// Where a binding applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BindingScope {
    /// `*`: every workspace.
    Every,
    /// One workspace, by id.
    Workspace(Arc<str>),
}

impl BindingScope {
    /// From the store's `workspace_id` column: `*` is every workspace, anything else an id.
    pub fn from_column(workspace_id: &str) -> Self {
        if workspace_id == "*" {
            Self::Every
        } else {
            Self::Workspace(workspace_id.into())
        }
    }

    /// Does the binding apply in workspace `id`?
    pub fn covers(&self, id: &str) -> bool {
        match self {
            Self::Every => true,
            Self::Workspace(w) => **w == *id,
        }
    }
}

/// One role binding of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleBinding {
    /// The role's name (built-in or configured). A name the gateway does not know (a role
    /// removed from the configuration) grants nothing.
    pub role: Arc<str>,
    /// Where it applies.
    pub scope: BindingScope,
}

impl RoleBinding {
    /// `role` in the workspace given as the store's `workspace_id` column (`*` or an id).
    pub fn new(role: &str, workspace_id: &str) -> Self {
        Self {
            role: role.into(),
            scope: BindingScope::from_column(workspace_id),
        }
    }
}

/// What the authoriser needs to know of a workspace a caller names by id: its name (for the
/// identity assertion) and whether it is active (a disabled workspace is entered by nobody).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceFacts {
    /// Its current name.
    pub name: Arc<str>,
    /// Not disabled.
    pub active: bool,
}

/// The policy store could not answer; the decision denies and nothing is cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy unavailable: {0}")]
pub struct PolicyError(String);

impl PolicyError {
    /// An error saying why (logged, never shown to a client).
    pub fn new(why: impl std::fmt::Display) -> Self {
        Self(why.to_string())
    }
}

/// The future a [`PolicySource`] answers with.
pub type PolicyFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PolicyError>> + Send + 'a>>;

/// Where the role bindings of subjects come from (the identity store).
///
/// Asked only when a decision is not cached; answers are cached per subject and dropped
/// together with every cached decision when the store's change generation moves, so a store
/// implementation must bump the generation in the same transaction as every change to
/// `role_bindings`, to a user (disabled, deleted) and to a workspace (disabled).
pub trait PolicySource: Send + Sync + 'static {
    /// Every role binding `subject` holds, in any workspace and in `*`, in no particular
    /// order: `Ok(vec![])` when it holds none (or does not exist), `Err` only when the store
    /// cannot answer. A binding in a disabled workspace, or of a disabled user, must not be
    /// returned. Returning more than needed never widens a decision beyond what the bindings
    /// say; returning one too few only denies.
    fn bindings<'a>(&'a self, subject: SubjectRef<'a>) -> PolicyFuture<'a, Vec<RoleBinding>>;

    /// The workspace of id `id`: `Ok(None)` when there is none, `Err` only when the store
    /// cannot answer. Asked when a caller names a workspace other than its own; cached and
    /// dropped like bindings (a store must bump the generation when a workspace is renamed,
    /// disabled or enabled). The default knows no workspace: naming one is refused.
    fn workspace<'a>(&'a self, id: &'a str) -> PolicyFuture<'a, Option<WorkspaceFacts>> {
        let _ = id;
        Box::pin(async { Ok(None) })
    }
}

/// A source without bindings: keys grant their scopes in their own workspace and nothing else;
/// users are granted nothing. What the gateway uses until a store-backed source is wired.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBindings;

impl PolicySource for NoBindings {
    fn bindings<'a>(&'a self, _: SubjectRef<'a>) -> PolicyFuture<'a, Vec<RoleBinding>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Bindings held in memory, for tests: bind and unbind at will, make it fail, count queries.
#[derive(Debug, Default)]
pub struct MemoryPolicy {
    bindings: RwLock<HashMap<(&'static str, String), Vec<RoleBinding>>>,
    /// Workspaces by id; one not listed is taken as active, named by its id.
    workspaces: RwLock<HashMap<String, WorkspaceFacts>>,
    unavailable: AtomicBool,
    queries: AtomicUsize,
}

impl MemoryPolicy {
    /// An empty source.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn key(subject: SubjectRef<'_>) -> (&'static str, String) {
        (subject.kind(), subject.id().to_string())
    }

    /// Give `subject` `role` in `workspace_id` (`*` for every workspace).
    pub fn bind(&self, subject: SubjectRef<'_>, role: &str, workspace_id: &str) {
        if let Ok(mut m) = self.bindings.write() {
            let v = m.entry(Self::key(subject)).or_default();
            let b = RoleBinding::new(role, workspace_id);
            if !v.contains(&b) {
                v.push(b);
            }
        }
    }

    /// Take `role` in `workspace_id` away from `subject`.
    pub fn unbind(&self, subject: SubjectRef<'_>, role: &str, workspace_id: &str) {
        if let Ok(mut m) = self.bindings.write() {
            if let Some(v) = m.get_mut(&Self::key(subject)) {
                let b = RoleBinding::new(role, workspace_id);
                v.retain(|x| *x != b);
            }
        }
    }

    /// Say what workspace `id` is called and whether it is active (unlisted ones are active,
    /// named by their id).
    pub fn set_workspace(&self, id: &str, name: &str, active: bool) {
        if let Ok(mut m) = self.workspaces.write() {
            m.insert(
                id.to_string(),
                WorkspaceFacts {
                    name: name.into(),
                    active,
                },
            );
        }
    }

    /// From now on, answer every query with an error (`true`) or normally again (`false`).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::Relaxed);
    }

    /// Queries answered or refused so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl PolicySource for MemoryPolicy {
    fn bindings<'a>(&'a self, subject: SubjectRef<'a>) -> PolicyFuture<'a, Vec<RoleBinding>> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let answer = if self.unavailable.load(Ordering::Relaxed) {
            Err(PolicyError::new("memory policy set unavailable"))
        } else {
            Ok(self
                .bindings
                .read()
                .map(|m| m.get(&Self::key(subject)).cloned().unwrap_or_default())
                .unwrap_or_default())
        };
        Box::pin(async move { answer })
    }

    fn workspace<'a>(&'a self, id: &'a str) -> PolicyFuture<'a, Option<WorkspaceFacts>> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let answer = if self.unavailable.load(Ordering::Relaxed) {
            Err(PolicyError::new("memory policy set unavailable"))
        } else {
            Ok(Some(
                self.workspaces
                    .read()
                    .ok()
                    .and_then(|m| m.get(id).cloned())
                    .unwrap_or_else(|| WorkspaceFacts {
                        name: id.into(),
                        active: true,
                    }),
            ))
        };
        Box::pin(async move { answer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_from_identities() {
        assert_eq!(SubjectRef::parse("user:u1"), Some(SubjectRef::User("u1")));
        assert_eq!(SubjectRef::parse("key:k-1"), Some(SubjectRef::Key("k-1")));
        assert_eq!(SubjectRef::parse("user:"), None);
        assert_eq!(SubjectRef::parse("service:x"), None);
        assert_eq!(SubjectRef::parse("nothing"), None);
        assert_eq!(SubjectRef::User("u").kind(), "user");
        assert_eq!(SubjectRef::Key("k").id(), "k");
    }

    #[test]
    fn binding_scopes() {
        assert!(BindingScope::from_column("*").covers("ws_1"));
        assert!(BindingScope::from_column("ws_1").covers("ws_1"));
        assert!(!BindingScope::from_column("ws_1").covers("ws_2"));
    }

    #[tokio::test]
    async fn memory_policy_binds_unbinds_and_fails_on_demand() {
        let m = MemoryPolicy::new();
        let u = SubjectRef::User("u1");
        m.bind(u, "reader", "*");
        m.bind(u, "reader", "*");
        assert_eq!(
            m.bindings(u).await.unwrap(),
            [RoleBinding::new("reader", "*")]
        );
        assert!(m.bindings(SubjectRef::Key("u1")).await.unwrap().is_empty());
        m.unbind(u, "reader", "*");
        assert!(m.bindings(u).await.unwrap().is_empty());
        m.set_unavailable(true);
        assert!(m.bindings(u).await.is_err());
        assert_eq!(m.queries(), 4);
    }
}
