//! Access control: may this identity perform this operation on this resource?
//!
//! The contract of DESIGN §5 is `authorise(identity, capability, resource) → Decision`. Policy
//! lives here and only here: an [`Identity`] says who is calling and proves nothing about what it
//! may do; the authoriser looks the caller's [`Grants`] up itself from a [`GrantSource`]. Today the
//! grants of an API key are its scopes (a capability name, or `*` for all) within the key's
//! workspace; roles and workspace-spanning admins arrive as further grant sources without a
//! change to this contract.
//!
//! Every error denies: a grant source that cannot answer, a resource in another workspace, a
//! capability not granted. The reason goes to the audit sink; the client sees the fixed 403.

pub mod config;
pub mod pattern;
pub mod registry;
pub mod roles;

pub use config::{AccessConfig, RoleConfig};
pub use pattern::{valid_capability, Pattern, PatternError};
pub use registry::{CapabilityRegistry, RegisteredCapability, RegistryError, Requirement, Source};
pub use roles::{Role, Roles};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::auth::Identity;

/// A capability name, as operations declare it (`orders.read`, `metrics.read`).
pub type Capability = Arc<str>;

/// What an operation acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A routed service endpoint. Services are not yet owned by a workspace: any workspace's
    /// identity may reach them with the capability.
    Service {
        /// Service name.
        service: &'a str,
    },
    /// An operation the gateway performs itself (metrics, later the admin API).
    Gateway {
        /// Operation name.
        operation: &'static str,
    },
    /// Something that belongs to one workspace (sessions, keys): the identity must belong to
    /// it, or hold a grant that spans every workspace.
    InWorkspace {
        /// Workspace id.
        workspace_id: &'a str,
    },
}

impl Resource<'_> {
    /// The workspace the resource belongs to, if it belongs to one.
    fn workspace(&self) -> Option<&str> {
        match self {
            Self::InWorkspace { workspace_id } => Some(workspace_id),
            _ => None,
        }
    }
}

/// Why access was denied: the audit reason (the client sees the fixed 403 whatever it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The capability is not among the caller's grants.
    Capability,
    /// The resource belongs to another workspace.
    Workspace,
    /// The grants could not be looked up: fail closed.
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

/// What an identity has been granted: capability names, `*` for all, within its workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    capabilities: Arc<[String]>,
}

impl Grants {
    /// Grants of these capability names (`*` grants every capability).
    pub fn new(capabilities: impl Into<Arc<[String]>>) -> Self {
        Self {
            capabilities: capabilities.into(),
        }
    }

    /// Is `capability` granted?
    pub fn allows(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|s| s == "*" || s == capability)
    }
}

/// Where the grants of an identity come from (the key store today; roles next).
pub trait GrantSource: Send + Sync + 'static {
    /// The grants of `identity`, `None` when they cannot be found (the decision then denies).
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
}

/// The one authoriser of the gateway.
pub struct Access {
    source: Arc<dyn GrantSource>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Access")
    }
}

impl Access {
    /// An authoriser reading grants from `source`.
    pub fn new(source: Arc<dyn GrantSource>) -> Self {
        Self { source }
    }

    /// May `identity` use `capability` on `resource`? An operation that names no capability
    /// needs only an authenticated caller in the resource's workspace.
    pub async fn authorise(
        &self,
        identity: &Identity,
        capability: Option<&str>,
        resource: Resource<'_>,
    ) -> Decision {
        if let Some(ws) = resource.workspace() {
            if ws != &*identity.workspace.id {
                return Decision::Deny(DenyReason::Workspace);
            }
        }
        let Some(capability) = capability else {
            return Decision::Allow;
        };
        let grants = match self.source.grants_now(identity) {
            Some(g) => g,
            None => match self.source.grants(identity).await {
                Some(g) => g,
                None => return Decision::Deny(DenyReason::Unavailable),
            },
        };
        if grants.allows(capability) {
            Decision::Allow
        } else {
            Decision::Deny(DenyReason::Capability)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{CredentialKind, Via, WorkspaceRef};

    struct Fixed(Option<Arc<Grants>>);

    impl GrantSource for Fixed {
        fn grants<'a>(
            &'a self,
            _: &'a Identity,
        ) -> Pin<Box<dyn Future<Output = Option<Arc<Grants>>> + Send + 'a>> {
            Box::pin(async move { self.0.clone() })
        }
    }

    fn identity() -> Identity {
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

    fn access(caps: Option<&[&str]>) -> Access {
        Access::new(Arc::new(Fixed(caps.map(|c| {
            Arc::new(Grants::new(
                c.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ))
        }))))
    }

    #[tokio::test]
    async fn a_granted_capability_is_allowed_and_another_is_denied() {
        let a = access(Some(&["echo.read"]));
        let svc = Resource::Service { service: "echo" };
        assert_eq!(
            a.authorise(&identity(), Some("echo.read"), svc).await,
            Decision::Allow
        );
        assert_eq!(
            a.authorise(&identity(), Some("echo.write"), svc).await,
            Decision::Deny(DenyReason::Capability)
        );
        assert_eq!(a.authorise(&identity(), None, svc).await, Decision::Allow);
    }

    #[tokio::test]
    async fn star_grants_every_capability() {
        let a = access(Some(&["*"]));
        let op = Resource::Gateway {
            operation: "metrics",
        };
        assert_eq!(
            a.authorise(&identity(), Some("metrics.read"), op).await,
            Decision::Allow
        );
    }

    #[tokio::test]
    async fn missing_grants_deny() {
        let a = access(None);
        let svc = Resource::Service { service: "echo" };
        assert_eq!(
            a.authorise(&identity(), Some("echo.read"), svc).await,
            Decision::Deny(DenyReason::Unavailable)
        );
    }

    #[tokio::test]
    async fn another_workspaces_resource_is_denied_even_with_star() {
        let a = access(Some(&["*"]));
        let theirs = Resource::InWorkspace { workspace_id: "w2" };
        assert_eq!(
            a.authorise(&identity(), None, theirs).await,
            Decision::Deny(DenyReason::Workspace)
        );
        let ours = Resource::InWorkspace { workspace_id: "w1" };
        assert_eq!(
            a.authorise(&identity(), Some("x"), ours).await,
            Decision::Allow
        );
    }
}
