//! Access control: may this identity use this capability on this resource?
//!
//! The contract of docs/design.md §5 is `authorise(identity, capability, resource) → Decision`, and
//! [`Access::authorise`] is the one place it is decided. Policy lives here and only here: an
//! [`Identity`] says who is calling and proves nothing about what it may do.
//!
//! - [`registry`]: the one capability registry, every capability an operation needs with
//!   its source (gateway operations at construction, routed endpoints while linked).
//! - [`pattern`]: capability names and the pattern language of roles (`*`, `orders.*`,
//!   `*.read`, exact names), with its grammar.
//! - [`roles`]: built-in `reader`, `writer`, `admin` and configured roles.
//! - [`policy`]: where role bindings come from ([`PolicySource`]), and an in-memory source.
//! - [`workspace`]: the target workspace of a call (`x-portcullis-workspace`).
//! - [`config`]: the `[access]` section.
//! - `cache`: the decision cache.
//!
//! # The rule
//!
//! Every call acts in a *target workspace* (the caller's own unless it names another). A call
//! is allowed when some *binding* of the caller grants the capability and applies in the
//! target workspace (is in it, or in `*`):
//!
//! - a **user** (`user:<id>`, from a token) has the role bindings the [`PolicySource`] gives
//!   for `SubjectRef::User(id)`, and nothing else;
//! - an **API key of its own** (issued to no user) holds its scopes in its own workspace, as if
//!   they were a role bound there, plus its own role bindings (`SubjectRef::Key(id)`) narrowed
//!   by its scopes — so every key made before roles existed grants exactly what it did;
//! - an **API key issued to a user** has that user's bindings narrowed by its scopes: both must
//!   allow. Bindings held by such a key itself are not consulted.
//!
//! A key's scopes are `*` or exact capability names. When no binding applies in the target
//! workspace at all and it is not the caller's own, the denial is `forbidden_workspace`;
//! otherwise `forbidden`. Every error denies (`grants_unavailable`) and is never cached.
//!
//! # Cost
//!
//! A key of its own in its own workspace — every call today — is decided from the key's scopes,
//! read from the verification cache the authenticator just filled ([`GrantSource::grants_now`]):
//! no allocation, no lock but that cache's read lock, no store query. Everything else goes
//! through the decision cache (bounded, TTL'd, keyed by subject, workspace and capability; a
//! hit allocates nothing and takes one shard's read lock) and, on a miss, the subject's
//! bindings (cached apart, so a new capability or workspace for a known subject asks the store
//! nothing). Both caches are dropped wholesale when the key source's epoch moves — the
//! authenticator moves it on every key change on this node and whenever the store's change
//! generation moves (`auth.invalidation_poll`) — or on [`Access::invalidate`].

mod cache;
pub mod config;
pub mod pattern;
pub mod policy;
pub mod registry;
pub mod roles;
pub mod workspace;

pub use config::{AccessConfig, RoleConfig};
pub use pattern::{valid_capability, Pattern, PatternError};
pub use policy::{
    BindingScope, MemoryPolicy, NoBindings, PolicyError, PolicyFuture, PolicySource, RoleBinding,
    SubjectRef, WorkspaceFacts,
};
pub use registry::{CapabilityRegistry, RegisteredCapability, RegistryError, Requirement, Source};
pub use roles::{Role, Roles};
pub use workspace::{TargetWorkspace, WORKSPACE_HEADER};

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

use crate::auth::{CredentialKind, Identity};

/// A capability name, as operations declare it (`orders.read`, `metrics.read`).
pub type Capability = Arc<str>;

/// What an operation acts on; every resource is in the call's target workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A routed service endpoint, called for `workspace`.
    Service {
        /// Service name.
        service: &'a str,
        /// The call's target workspace (id).
        workspace: &'a str,
    },
    /// An operation the gateway performs itself (metrics, later the admin API).
    Gateway {
        /// Operation name.
        operation: &'static str,
        /// The call's target workspace (id).
        workspace: &'a str,
    },
    /// Something that belongs to one workspace (a session, a key, a workspace named in an
    /// operation's body): the caller needs a binding that applies there.
    InWorkspace {
        /// Workspace id.
        workspace_id: &'a str,
    },
}

impl Resource<'_> {
    /// The workspace the decision is made in.
    pub fn workspace(&self) -> &str {
        match self {
            Self::Service { workspace, .. } | Self::Gateway { workspace, .. } => workspace,
            Self::InWorkspace { workspace_id } => workspace_id,
        }
    }
}

/// Why access was denied: the audit reason (the client sees the fixed 403 whatever it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No binding that applies in the target workspace grants the capability.
    Capability,
    /// No binding of the caller applies in the target workspace, which is not its own.
    Workspace,
    /// Grants or bindings could not be looked up: fail closed.
    Unavailable,
}

impl DenyReason {
    /// Stable name: metric label and audit reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Capability => "forbidden",
            Self::Workspace => "forbidden_workspace",
            Self::Unavailable => "grants_unavailable",
        }
    }
}

/// The outcome of an authorisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused, and why.
    Deny(DenyReason),
}

/// What an API key says about itself: its scopes (capability names, `*` for all) and the user
/// it was issued to, if any. Held in the key's verification cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    capabilities: Arc<[String]>,
    user: Option<Arc<str>>,
}

impl Grants {
    /// Grants of these scopes (`*` grants every capability), of a key issued to no user.
    pub fn new(capabilities: impl Into<Arc<[String]>>) -> Self {
        Self {
            capabilities: capabilities.into(),
            user: None,
        }
    }

    /// The same scopes, of a key issued to user `user_id` (`api_keys.user_id`; `None`: a key
    /// of its own). Such a key gets the user's role bindings, narrowed by its scopes.
    pub fn issued_to(mut self, user_id: Option<impl Into<Arc<str>>>) -> Self {
        self.user = user_id.map(Into::into);
        self
    }

    /// Do the scopes allow `capability`? Never for a string that is not a capability name.
    pub fn allows(&self, capability: &str) -> bool {
        valid_capability(capability)
            && self
                .capabilities
                .iter()
                .any(|s| s == "*" || s == capability)
    }

    /// The user the key was issued to.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

/// Where the grants of an API key come from: the authenticator's verification cache.
pub trait GrantSource: Send + Sync + 'static {
    /// The grants of `identity` (an API key), `None` when they cannot be found (the decision
    /// then denies).
    fn grants<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> Pin<Box<dyn Future<Output = Option<Arc<Grants>>> + Send + 'a>>;

    /// The grants when they are at hand without waiting (a cache hit); `None` sends the
    /// caller to [`GrantSource::grants`]. The request path asks this first so an allowed call
    /// costs no allocation.
    fn grants_now(&self, _identity: &Identity) -> Option<Arc<Grants>> {
        None
    }

    /// A number that moves whenever anything grants are made of may have changed: a key
    /// changed on this node, or the store's change generation moved. Cached decisions made
    /// under another epoch are not used. The default never moves.
    fn epoch(&self) -> u64 {
        0
    }
}

/// Settings of the authoriser (from `[access]`).
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// Most cached decisions (and, apart, subjects' bindings).
    pub cache_capacity: usize,
    /// Longest life of a cached decision.
    pub cache_ttl: Duration,
    /// Binding lookups in progress at once, at most.
    pub max_concurrent_lookups: usize,
    /// Deadline of one binding lookup, waiting included.
    pub lookup_timeout: Duration,
}

impl AccessSettings {
    /// From the configuration.
    pub fn from_config(c: &AccessConfig) -> Self {
        Self {
            cache_capacity: c.cache_capacity,
            cache_ttl: c.cache_ttl,
            max_concurrent_lookups: c.max_concurrent_lookups,
            lookup_timeout: c.lookup_timeout,
        }
    }
}

impl Default for AccessSettings {
    fn default() -> Self {
        Self::from_config(&AccessConfig::default())
    }
}

/// What [`Access`] is built from.
pub struct AccessParts {
    /// API keys' scopes and owners (the authenticator).
    pub keys: Arc<dyn GrantSource>,
    /// Role bindings (the identity store).
    pub policy: Arc<dyn PolicySource>,
    /// Every role, checked against the registry ([`Roles::build`]).
    pub roles: Roles,
    /// The capability registry, for the admin API.
    pub capabilities: Arc<CapabilityRegistry>,
    /// Cache and lookup settings.
    pub settings: AccessSettings,
}

struct Inner {
    keys: Arc<dyn GrantSource>,
    policy: Arc<dyn PolicySource>,
    roles: Roles,
    capabilities: Arc<CapabilityRegistry>,
    /// (subject, workspace, capability) → decision.
    decisions: cache::Cache<3, Decision>,
    /// (subject kind, subject id) → role bindings.
    bindings: cache::Cache<2, Arc<[RoleBinding]>>,
    /// Workspace id → what it is called and whether it is active (`None`: no such workspace).
    workspaces: cache::Cache<1, Option<WorkspaceFacts>>,
    lookups: Semaphore,
    lookup_timeout: Duration,
    /// Moved by [`Access::invalidate`]; added to the key source's epoch.
    epoch: AtomicU64,
}

/// The one authoriser of the gateway; cheap to clone (one `Arc`), so the operations that
/// change bindings can hold it and [`Access::invalidate`] at once.
#[derive(Clone)]
pub struct Access(Arc<Inner>);

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("roles", &self.0.roles.iter().count())
            .field("decisions", &self.0.decisions)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// An authoriser of API keys by their scopes alone: the built-in roles, no bindings, an
    /// empty registry, default settings.
    pub fn new(keys: Arc<dyn GrantSource>) -> Self {
        Self::with_parts(AccessParts {
            keys,
            policy: Arc::new(NoBindings),
            roles: Roles::built_in(),
            capabilities: Arc::new(CapabilityRegistry::new()),
            settings: AccessSettings::default(),
        })
    }

    /// An authoriser from its parts.
    pub fn with_parts(p: AccessParts) -> Self {
        let s = p.settings;
        Self(Arc::new(Inner {
            keys: p.keys,
            policy: p.policy,
            roles: p.roles,
            capabilities: p.capabilities,
            decisions: cache::Cache::new(s.cache_capacity, s.cache_ttl),
            bindings: cache::Cache::new(s.cache_capacity, s.cache_ttl),
            workspaces: cache::Cache::new(s.cache_capacity, s.cache_ttl),
            lookups: Semaphore::new(s.max_concurrent_lookups.max(1)),
            lookup_timeout: s.lookup_timeout,
            epoch: AtomicU64::new(0),
        }))
    }

    /// May `identity` use `capability` on `resource`, in the resource's workspace? The rule
    /// is in the module documentation.
    pub async fn authorise(
        &self,
        identity: &Identity,
        capability: &str,
        resource: Resource<'_>,
    ) -> Decision {
        let workspace = resource.workspace();
        if identity.via.kind == CredentialKind::ApiKey {
            let keys = &self.0.keys;
            let grants = match keys.grants_now(identity) {
                Some(g) => g,
                None => match keys.grants(identity).await {
                    Some(g) => g,
                    None => return Decision::Deny(DenyReason::Unavailable),
                },
            };
            // The fast path: a key of its own, at home. Its scopes decide.
            if grants.user.is_none() && workspace == &*identity.workspace.id {
                return if grants.allows(capability) {
                    Decision::Allow
                } else {
                    Decision::Deny(DenyReason::Capability)
                };
            }
            let subject = match grants.user() {
                Some(user) => SubjectRef::User(user),
                None => SubjectRef::Key(&identity.via.id),
            };
            return self
                .decide_cached(identity, subject, capability, workspace, Some(&grants))
                .await;
        }
        match SubjectRef::parse(&identity.subject) {
            Some(user @ SubjectRef::User(_)) => {
                self.decide_cached(identity, user, capability, workspace, None)
                    .await
            }
            // Only users are authorised by bindings alone; anything else fails closed.
            _ => Decision::Deny(DenyReason::Capability),
        }
    }

    /// May a caller enter workspace `id`, named by it rather than its own? Only an existing,
    /// active workspace can be entered (a `*` binding covers every workspace, but a disabled
    /// one is entered by nobody); the answer is its current name, for the identity assertion.
    /// Cached and dropped like decisions; a store that cannot answer denies, uncached.
    pub async fn enter_workspace(&self, id: &str) -> Result<Arc<str>, DenyReason> {
        let epoch = self.epoch();
        let facts = match self.0.workspaces.get([id], epoch) {
            Some(f) => f,
            None => {
                let lookup = async {
                    let _turn = self.0.lookups.acquire().await.ok()?;
                    self.0
                        .policy
                        .workspace(id)
                        .await
                        .map_err(|e| tracing::warn!(error = %e, "workspace unavailable: denying"))
                        .ok()
                };
                let Ok(Some(found)) = tokio::time::timeout(self.0.lookup_timeout, lookup).await
                else {
                    return Err(DenyReason::Unavailable);
                };
                self.0.workspaces.insert([id], found.clone(), epoch);
                found
            }
        };
        match facts {
            Some(f) if f.active => Ok(f.name),
            _ => Err(DenyReason::Workspace),
        }
    }

    /// Drop every cached decision and binding now (a change made through this gateway).
    pub fn invalidate(&self) {
        self.0.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Every role.
    pub fn roles(&self) -> &Roles {
        &self.0.roles
    }

    /// The capability registry.
    pub fn capabilities(&self) -> &Arc<CapabilityRegistry> {
        &self.0.capabilities
    }

    /// Decisions held in the cache, fresh or not.
    pub fn cached_decisions(&self) -> usize {
        self.0.decisions.len()
    }

    fn epoch(&self) -> u64 {
        self.0
            .epoch
            .load(Ordering::Acquire)
            .wrapping_add(self.0.keys.epoch())
    }

    async fn decide_cached(
        &self,
        identity: &Identity,
        subject: SubjectRef<'_>,
        capability: &str,
        workspace: &str,
        key: Option<&Grants>,
    ) -> Decision {
        // Read before any lookup: what is computed from a lookup that overlaps a change is
        // stored under the old epoch and never served.
        let epoch = self.epoch();
        let at = [&*identity.subject, workspace, capability];
        if let Some(d) = self.0.decisions.get(at, epoch) {
            return d;
        }
        let Some(bindings) = self.bindings(subject, epoch).await else {
            return Decision::Deny(DenyReason::Unavailable);
        };
        let d = decide(
            &self.0.roles,
            &bindings,
            capability,
            workspace,
            &identity.workspace.id,
            key,
        );
        self.0.decisions.insert(at, d, epoch);
        d
    }

    /// The bindings of `subject`, cached; `None` when the source failed or timed out.
    async fn bindings(&self, subject: SubjectRef<'_>, epoch: u64) -> Option<Arc<[RoleBinding]>> {
        let at = [subject.kind(), subject.id()];
        if let Some(b) = self.0.bindings.get(at, epoch) {
            return Some(b);
        }
        let lookup = async {
            let _turn = self.0.lookups.acquire().await.ok()?;
            self.0
                .policy
                .bindings(subject)
                .await
                .map_err(|e| tracing::warn!(error = %e, "role bindings unavailable: denying"))
                .ok()
        };
        let Ok(found) = tokio::time::timeout(self.0.lookup_timeout, lookup).await else {
            tracing::warn!("role binding lookup timed out: denying");
            return None;
        };
        let found: Arc<[RoleBinding]> = found?.into();
        self.0.bindings.insert(at, found.clone(), epoch);
        Some(found)
    }
}

/// The rule of the module documentation, for one subject's `bindings`: may it use
/// `capability` in `workspace`, when its own workspace is `own`? `key` is the API key the
/// caller used, whose scopes narrow everything.
fn decide(
    roles: &Roles,
    bindings: &[RoleBinding],
    capability: &str,
    workspace: &str,
    own: &str,
    key: Option<&Grants>,
) -> Decision {
    let scopes_allow = key.is_none_or(|g| g.allows(capability));
    let mut applies = false;
    // A key of its own holds its scopes in its own workspace, like a role bound there.
    if key.is_some_and(|g| g.user.is_none()) && workspace == own {
        applies = true;
        if scopes_allow {
            return Decision::Allow;
        }
    }
    for b in bindings.iter().filter(|b| b.scope.covers(workspace)) {
        applies = true;
        match roles.get(&b.role) {
            Some(role) if scopes_allow && role.grants(capability) => return Decision::Allow,
            Some(_) => {}
            None => tracing::debug!(role = %b.role, "binding of an unknown role grants nothing"),
        }
    }
    if applies || workspace == own {
        Decision::Deny(DenyReason::Capability)
    } else {
        Decision::Deny(DenyReason::Workspace)
    }
}

#[cfg(test)]
mod tests;
