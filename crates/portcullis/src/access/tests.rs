//! Unit tests of the decision rule, the caches around it and its failure modes.

use super::*;
use crate::auth::{Via, WorkspaceRef};
use std::sync::atomic::AtomicUsize;

/// API key grants from memory, with an epoch the test moves.
#[derive(Default)]
struct Keys {
    grants: std::sync::Mutex<Option<Arc<Grants>>>,
    epoch: AtomicU64,
    slow_lookups: AtomicUsize,
}

impl Keys {
    fn with(scopes: &[&str], user: Option<&str>) -> Arc<Self> {
        let k = Self::default();
        *k.grants.lock().unwrap() = Some(Arc::new(
            Grants::new(scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>()).issued_to(user),
        ));
        Arc::new(k)
    }

    fn none() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

impl GrantSource for Keys {
    fn grants<'a>(
        &'a self,
        _: &'a Identity,
    ) -> Pin<Box<dyn Future<Output = Option<Arc<Grants>>> + Send + 'a>> {
        self.slow_lookups.fetch_add(1, Ordering::Relaxed);
        let g = self.grants.lock().unwrap().clone();
        Box::pin(async move { g })
    }

    fn grants_now(&self, _: &Identity) -> Option<Arc<Grants>> {
        self.grants.lock().unwrap().clone()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }
}

fn key_identity() -> Identity {
    Identity {
        subject: "key:k".into(),
        workspace: WorkspaceRef {
            id: "w1".into(),
            name: "default".into(),
        },
        via: Via {
            kind: CredentialKind::ApiKey,
            id: "k".into(),
        },
        expires_at: None,
        binding: None,
    }
}

fn user_identity(id: &str) -> Identity {
    Identity {
        subject: format!("user:{id}").into(),
        workspace: WorkspaceRef {
            id: "w1".into(),
            name: "default".into(),
        },
        via: Via {
            kind: CredentialKind::Token,
            id: "jti-1".into(),
        },
        expires_at: None,
        binding: None,
    }
}

fn access(keys: Arc<Keys>, policy: Arc<MemoryPolicy>) -> Access {
    access_with(keys, policy, Roles::built_in())
}

fn access_with(keys: Arc<Keys>, policy: Arc<MemoryPolicy>, roles: Roles) -> Access {
    Access::with_parts(AccessParts {
        keys,
        policy,
        roles,
        capabilities: Arc::new(CapabilityRegistry::new()),
        settings: AccessSettings::default(),
    })
}

fn svc(workspace: &str) -> Resource<'_> {
    Resource::Service {
        service: "orders",
        workspace,
    }
}

const ALLOW: Decision = Decision::Allow;
const FORBIDDEN: Decision = Decision::Deny(DenyReason::Capability);
const OTHER_WORKSPACE: Decision = Decision::Deny(DenyReason::Workspace);
const UNAVAILABLE: Decision = Decision::Deny(DenyReason::Unavailable);

#[tokio::test]
async fn a_key_of_its_own_grants_its_scopes_at_home() {
    let a = access(Keys::with(&["orders.read"], None), MemoryPolicy::new());
    let id = key_identity();
    assert_eq!(a.authorise(&id, "orders.read", svc("w1")).await, ALLOW);
    assert_eq!(a.authorise(&id, "orders.write", svc("w1")).await, FORBIDDEN);
    let a = access(Keys::with(&["*"], None), MemoryPolicy::new());
    let metrics = Resource::Gateway {
        operation: "metrics",
        workspace: "w1",
    };
    assert_eq!(a.authorise(&id, "metrics.read", metrics).await, ALLOW);
    // Not a capability name: not even `*` grants it.
    assert_eq!(a.authorise(&id, "", svc("w1")).await, FORBIDDEN);
    assert_eq!(a.authorise(&id, "a..b", svc("w1")).await, FORBIDDEN);
}

#[tokio::test]
async fn the_fast_path_asks_no_one() {
    let keys = Keys::with(&["orders.read"], None);
    let policy = MemoryPolicy::new();
    let a = access(keys.clone(), policy.clone());
    for _ in 0..3 {
        a.authorise(&key_identity(), "orders.read", svc("w1")).await;
    }
    assert_eq!(policy.queries(), 0);
    assert_eq!(keys.slow_lookups.load(Ordering::Relaxed), 0);
    assert_eq!(a.cached_decisions(), 0);
}

#[tokio::test]
async fn missing_grants_deny() {
    let a = access(Keys::none(), MemoryPolicy::new());
    assert_eq!(
        a.authorise(&key_identity(), "orders.read", svc("w1")).await,
        UNAVAILABLE
    );
}

#[tokio::test]
async fn another_workspace_needs_a_binding_there_even_with_star() {
    let policy = MemoryPolicy::new();
    let a = access(Keys::with(&["*"], None), policy.clone());
    let id = key_identity();
    assert_eq!(
        a.authorise(&id, "orders.read", svc("w2")).await,
        OTHER_WORKSPACE
    );
    let theirs = Resource::InWorkspace { workspace_id: "w2" };
    assert_eq!(
        a.authorise(&id, "orders.read", theirs).await,
        OTHER_WORKSPACE
    );
    let ours = Resource::InWorkspace { workspace_id: "w1" };
    assert_eq!(a.authorise(&id, "orders.read", ours).await, ALLOW);
}

#[tokio::test]
async fn a_keys_own_bindings_reach_other_workspaces_within_its_scopes() {
    let policy = MemoryPolicy::new();
    policy.bind(SubjectRef::Key("k"), roles::READER, "w2");
    let a = access(
        Keys::with(&["orders.read", "orders.write"], None),
        policy.clone(),
    );
    let id = key_identity();
    assert_eq!(a.authorise(&id, "orders.read", svc("w2")).await, ALLOW);
    // Bound in w2, but reader does not grant write: forbidden, not forbidden_workspace.
    assert_eq!(a.authorise(&id, "orders.write", svc("w2")).await, FORBIDDEN);
    assert_eq!(
        a.authorise(&id, "orders.read", svc("w3")).await,
        OTHER_WORKSPACE
    );
    // Scopes narrow bindings: admin everywhere still grants only the scopes.
    policy.bind(SubjectRef::Key("k"), roles::ADMIN, "*");
    a.invalidate();
    assert_eq!(a.authorise(&id, "orders.write", svc("w3")).await, ALLOW);
    assert_eq!(
        a.authorise(&id, "iam.users.read", svc("w3")).await,
        FORBIDDEN
    );
}

#[tokio::test]
async fn users_are_authorised_by_their_bindings_only() {
    let policy = MemoryPolicy::new();
    let a = access(Keys::none(), policy.clone());
    let alice = user_identity("alice");
    // No binding, even at home: nothing.
    assert_eq!(
        a.authorise(&alice, "orders.read", svc("w1")).await,
        FORBIDDEN
    );
    policy.bind(SubjectRef::User("alice"), roles::READER, "w1");
    a.invalidate();
    assert_eq!(a.authorise(&alice, "orders.read", svc("w1")).await, ALLOW);
    assert_eq!(
        a.authorise(&alice, "orders.write", svc("w1")).await,
        FORBIDDEN
    );
    assert_eq!(
        a.authorise(&alice, "orders.read", svc("w2")).await,
        OTHER_WORKSPACE
    );

    policy.bind(SubjectRef::User("root"), roles::ADMIN, "*");
    let root = user_identity("root");
    for ws in ["w1", "w2", "ws_anything"] {
        assert_eq!(a.authorise(&root, "iam.users.write", svc(ws)).await, ALLOW);
    }
}

#[tokio::test]
async fn a_key_issued_to_a_user_gets_the_users_roles_narrowed_by_its_scopes() {
    let policy = MemoryPolicy::new();
    policy.bind(SubjectRef::User("bob"), roles::WRITER, "w1");
    // Its own bindings are not consulted.
    policy.bind(SubjectRef::Key("k"), roles::ADMIN, "*");
    let a = access(
        Keys::with(&["orders.read", "orders.delete"], Some("bob")),
        policy.clone(),
    );
    let id = key_identity();
    assert_eq!(a.authorise(&id, "orders.read", svc("w1")).await, ALLOW);
    // The user may write, the key's scopes do not say so.
    assert_eq!(a.authorise(&id, "orders.write", svc("w1")).await, FORBIDDEN);
    // The scopes say so, the user's roles do not.
    assert_eq!(
        a.authorise(&id, "orders.delete", svc("w1")).await,
        FORBIDDEN
    );
    assert_eq!(
        a.authorise(&id, "orders.read", svc("w2")).await,
        OTHER_WORKSPACE
    );

    // A user key with `*` has exactly the user's roles, and no implicit home grant.
    let a = access(Keys::with(&["*"], Some("carol")), policy.clone());
    assert_eq!(a.authorise(&id, "orders.read", svc("w1")).await, FORBIDDEN);
    let a = access(Keys::with(&["*"], Some("bob")), policy);
    assert_eq!(a.authorise(&id, "orders.write", svc("w1")).await, ALLOW);
    assert_eq!(
        a.authorise(&id, "orders.delete", svc("w1")).await,
        FORBIDDEN
    );
}

#[tokio::test]
async fn configured_roles_grant_their_patterns() {
    let mut cfg = AccessConfig::default();
    cfg.roles.insert(
        "clerk".into(),
        RoleConfig {
            capabilities: vec!["orders.*".into(), "billing.invoices.read".into()],
            description: None,
        },
    );
    let roles = Roles::build(
        &cfg,
        "access",
        &CapabilityRegistry::new(),
        ["orders", "billing"],
    )
    .unwrap();
    let policy = MemoryPolicy::new();
    policy.bind(SubjectRef::User("u"), "clerk", "w1");
    policy.bind(SubjectRef::User("u"), "no-such-role", "*");
    let a = access_with(Keys::none(), policy, roles);
    let u = user_identity("u");
    assert_eq!(a.authorise(&u, "orders.create", svc("w1")).await, ALLOW);
    assert_eq!(
        a.authorise(&u, "billing.invoices.read", svc("w1")).await,
        ALLOW
    );
    assert_eq!(
        a.authorise(&u, "billing.invoices.write", svc("w1")).await,
        FORBIDDEN
    );
    // The unknown role applies in w2 (so the reason is not the workspace) but grants nothing.
    assert_eq!(a.authorise(&u, "orders.create", svc("w2")).await, FORBIDDEN);
}

#[tokio::test]
async fn only_user_subjects_are_authorised_without_a_key() {
    let policy = MemoryPolicy::new();
    policy.bind(SubjectRef::Key("k"), roles::ADMIN, "*");
    let a = access(Keys::none(), policy);
    let mut id = user_identity("x");
    id.subject = "key:k".into();
    assert_eq!(a.authorise(&id, "orders.read", svc("w1")).await, FORBIDDEN);
    id.subject = "service:x".into();
    assert_eq!(a.authorise(&id, "orders.read", svc("w1")).await, FORBIDDEN);
}

#[tokio::test]
async fn decisions_are_cached_and_dropped_on_invalidate_and_on_the_key_epoch() {
    let keys = Keys::none();
    let policy = MemoryPolicy::new();
    policy.bind(SubjectRef::User("u"), roles::READER, "w1");
    let a = access(keys.clone(), policy.clone());
    let u = user_identity("u");
    assert_eq!(a.authorise(&u, "orders.read", svc("w1")).await, ALLOW);
    assert_eq!(a.authorise(&u, "orders.read", svc("w1")).await, ALLOW);
    assert_eq!(policy.queries(), 1);
    // Another capability or workspace of a known subject: its bindings are cached too.
    assert_eq!(a.authorise(&u, "orders.write", svc("w1")).await, FORBIDDEN);
    assert_eq!(
        a.authorise(&u, "orders.read", svc("w2")).await,
        OTHER_WORKSPACE
    );
    assert_eq!(policy.queries(), 1);
    assert_eq!(a.cached_decisions(), 3);

    // A revocation is seen once told.
    policy.unbind(SubjectRef::User("u"), roles::READER, "w1");
    assert_eq!(
        a.authorise(&u, "orders.read", svc("w1")).await,
        ALLOW,
        "cached"
    );
    a.invalidate();
    assert_eq!(a.authorise(&u, "orders.read", svc("w1")).await, FORBIDDEN);
    assert_eq!(policy.queries(), 2);

    // The key source's epoch (the store generation poll) drops them too.
    policy.bind(SubjectRef::User("u"), roles::READER, "w1");
    keys.epoch.fetch_add(1, Ordering::Relaxed);
    assert_eq!(a.authorise(&u, "orders.read", svc("w1")).await, ALLOW);
    assert_eq!(policy.queries(), 3);
}

#[tokio::test]
async fn an_unavailable_policy_denies_and_the_denial_is_not_cached() {
    let policy = MemoryPolicy::new();
    policy.bind(SubjectRef::User("u"), roles::READER, "w1");
    let a = access(Keys::none(), policy.clone());
    let u = user_identity("u");
    policy.set_unavailable(true);
    assert_eq!(a.authorise(&u, "orders.read", svc("w1")).await, UNAVAILABLE);
    assert_eq!(a.cached_decisions(), 0);
    policy.set_unavailable(false);
    assert_eq!(a.authorise(&u, "orders.read", svc("w1")).await, ALLOW);
}

#[tokio::test(start_paused = true)]
async fn decisions_expire_after_the_ttl() {
    let policy = MemoryPolicy::new();
    policy.bind(SubjectRef::User("u"), roles::READER, "w1");
    let a = Access::with_parts(AccessParts {
        keys: Keys::none(),
        policy: policy.clone(),
        roles: Roles::built_in(),
        capabilities: Arc::new(CapabilityRegistry::new()),
        settings: AccessSettings {
            cache_ttl: Duration::from_secs(5),
            ..AccessSettings::default()
        },
    });
    let u = user_identity("u");
    a.authorise(&u, "orders.read", svc("w1")).await;
    tokio::time::advance(Duration::from_secs(4)).await;
    a.authorise(&u, "orders.read", svc("w1")).await;
    assert_eq!(policy.queries(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    a.authorise(&u, "orders.read", svc("w1")).await;
    assert_eq!(policy.queries(), 2);
}

/// A policy store that never answers.
struct Stuck;

impl PolicySource for Stuck {
    fn bindings<'a>(&'a self, _: SubjectRef<'a>) -> PolicyFuture<'a, Vec<RoleBinding>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn a_stuck_policy_store_denies_at_the_lookup_deadline() {
    let a = Access::with_parts(AccessParts {
        keys: Keys::none(),
        policy: Arc::new(Stuck),
        roles: Roles::built_in(),
        capabilities: Arc::new(CapabilityRegistry::new()),
        settings: AccessSettings {
            lookup_timeout: Duration::from_secs(2),
            ..AccessSettings::default()
        },
    });
    let started = tokio::time::Instant::now();
    assert_eq!(
        a.authorise(&user_identity("u"), "orders.read", svc("w1"))
            .await,
        UNAVAILABLE
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(a.cached_decisions(), 0);
}
