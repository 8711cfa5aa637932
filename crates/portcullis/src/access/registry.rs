//! The one capability registry: every capability an operation of the gateway needs, and where
//! it comes from.
//!
//! - **Gateway operations** register at construction, each either with one capability or as
//!   explicitly public ([`Requirement`]); an operation that asks for credentials but names no
//!   capability is a construction error, never a permissive default.
//! - **Routed endpoints** register when a service links, from their descriptors, and leave
//!   when the last linked instance declaring them goes (the route registry recomputes the set
//!   on every change, [`ServiceCapabilities`]). An endpoint that declares no capability needs
//!   `<service>.call` ([`endpoint_capability`]): a named capability that no built-in role but
//!   `admin` grants, so forgetting to declare one fails closed.
//!
//! The registry is read at start-up (role patterns are checked against its namespaces,
//! `super::roles`) and by the admin API ([`CapabilityRegistry::list`]); it is never on the
//! request path, where each target carries its capability.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use super::pattern::{namespace, valid_capability};
use super::Capability;

/// `GET /metrics` when `auth.metrics_scope` asks for a credential (the usual scope).
pub const METRICS_READ: &str = "metrics.read";
/// Read users (IAM).
pub const IAM_USERS_READ: &str = "iam.users.read";
/// Create, change, disable and delete users (IAM).
pub const IAM_USERS_WRITE: &str = "iam.users.write";
/// Read workspaces (IAM).
pub const IAM_WORKSPACES_READ: &str = "iam.workspaces.read";
/// Create, change, disable workspaces (IAM).
pub const IAM_WORKSPACES_WRITE: &str = "iam.workspaces.write";
/// Read role bindings (IAM).
pub const IAM_ROLES_READ: &str = "iam.roles.read";
/// Grant and revoke roles (IAM).
pub const IAM_ROLES_WRITE: &str = "iam.roles.write";
/// Read other identities' API keys (IAM).
pub const IAM_KEYS_READ: &str = "iam.keys.read";
/// Create, revoke and rotate other identities' API keys (IAM).
pub const IAM_KEYS_WRITE: &str = "iam.keys.write";

/// List the pairings of link instance keys (IAM; in workspace `*`: links span workspaces).
pub const IAM_PAIRINGS_READ: &str = "iam.pairings.read";
/// Approve, deny and revoke link instance keys (IAM; in workspace `*`).
pub const IAM_PAIRINGS_WRITE: &str = "iam.pairings.write";

/// List linked services, their instances and links (IAM; in workspace `*`).
pub const IAM_SERVICES_READ: &str = "iam.services.read";

/// Every IAM capability, for operations and tests that enumerate them.
pub const IAM_CAPABILITIES: &[&str] = &[
    IAM_USERS_READ,
    IAM_USERS_WRITE,
    IAM_WORKSPACES_READ,
    IAM_WORKSPACES_WRITE,
    IAM_ROLES_READ,
    IAM_ROLES_WRITE,
    IAM_KEYS_READ,
    IAM_KEYS_WRITE,
    IAM_PAIRINGS_READ,
    IAM_PAIRINGS_WRITE,
    IAM_SERVICES_READ,
];

/// Namespaces the gateway's own operations use or will use (IAM, metrics, the admin API, the
/// dashboard, sessions, the socket mux). A service may not declare a capability in one: a
/// role or key meant for administering the gateway must not open a service's endpoint too.
pub const RESERVED_NAMESPACES: &[&str] = &[
    "iam",
    "metrics",
    "admin",
    "dashboard",
    "sessions",
    "socket",
    "gateway",
];

/// What an endpoint that declares no capability needs: `<service>.call`.
pub const DEFAULT_ENDPOINT_ACTION: &str = "call";

/// Why a capability or operation could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The name is not a capability name (`super::pattern`).
    #[error(
        "{0:?} is not a capability name (dot-separated segments of [a-z0-9_:-], at most 128 bytes)"
    )]
    Invalid(String),
    /// A service declared a capability in a namespace of the gateway.
    #[error("capability {0:?} is in a namespace reserved for the gateway")]
    Reserved(String),
    /// An operation asks for a credential but names no capability, or is public and names one.
    #[error("operation {operation}: {reason}")]
    Operation {
        /// The operation's name.
        operation: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// What an operation requires of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// Nothing: anyone may call it (health). Public is a declaration, not a missing capability.
    Public,
    /// An identity granted this capability.
    Capability(Capability),
    /// Any verified identity, because the operation decides per request what it acts on and
    /// authorises that itself with `Access::authorise` in the workspace concerned (the IAM API,
    /// a user's own password and keys). Declared, never a default.
    Authenticated,
}

/// Where a registered capability comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A gateway operation.
    Gateway {
        /// The operation's name (`metrics`).
        operation: &'static str,
    },
    /// Endpoints of a linked service.
    Service {
        /// The service's name.
        service: Arc<str>,
        /// Linked instances declaring it.
        instances: usize,
    },
}

/// One capability and every source that declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredCapability {
    /// The capability name.
    pub name: Capability,
    /// Who needs it, gateway operations first.
    pub sources: Vec<Source>,
}

/// The capabilities services declare, per capability and service: how many linked instances
/// declare it. Kept by the route registry as instances come and go (one instance's
/// capabilities added or removed per change), and handed here whole after each change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServiceCapabilities(BTreeMap<Capability, BTreeMap<Arc<str>, usize>>);

impl ServiceCapabilities {
    /// Count one linked instance of `service` declaring `capabilities` (repeats count once).
    pub fn add_instance<'a>(
        &mut self,
        service: &Arc<str>,
        capabilities: impl IntoIterator<Item = &'a Capability>,
    ) {
        let distinct: BTreeSet<&Capability> = capabilities.into_iter().collect();
        for c in distinct {
            *self
                .0
                .entry(c.clone())
                .or_default()
                .entry(service.clone())
                .or_default() += 1;
        }
    }

    /// Uncount one linked instance of `service` that declared `capabilities` (what
    /// [`ServiceCapabilities::add_instance`] counted); a capability no instance declares any
    /// more leaves.
    pub fn remove_instance<'a>(
        &mut self,
        service: &str,
        capabilities: impl IntoIterator<Item = &'a Capability>,
    ) {
        let distinct: BTreeSet<&Capability> = capabilities.into_iter().collect();
        for c in distinct {
            let Some(services) = self.0.get_mut(c) else {
                continue;
            };
            if let Some(n) = services.get_mut(service) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    services.remove(service);
                }
            }
            if services.is_empty() {
                self.0.remove(c);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Capability → gateway operations that need it.
    gateway: BTreeMap<Capability, BTreeSet<&'static str>>,
    /// Operations declared public.
    public: BTreeSet<&'static str>,
    /// Operations that need an identity and authorise per request.
    authenticated: BTreeSet<&'static str>,
    services: ServiceCapabilities,
}

/// The registry; see the module documentation. Cheap to share (`Arc`), locked only by
/// registrations, start-up checks and the admin API.
#[derive(Debug, Default)]
pub struct CapabilityRegistry {
    inner: RwLock<Inner>,
}

/// The capability a routed endpoint of `service` needs: the one it declares, or
/// `<service>.call` when it declares none. Refused: a name that is not a capability name, or
/// one in a [reserved namespace](RESERVED_NAMESPACES).
pub fn endpoint_capability(
    service: &str,
    declared: Option<&str>,
) -> Result<Capability, RegistryError> {
    let name: Capability = match declared {
        Some(c) => c.into(),
        None => format!("{service}.{DEFAULT_ENDPOINT_ACTION}").into(),
    };
    if !valid_capability(&name) {
        return Err(RegistryError::Invalid(name.to_string()));
    }
    if RESERVED_NAMESPACES.contains(&namespace(&name)) {
        return Err(RegistryError::Reserved(name.to_string()));
    }
    Ok(name)
}

impl CapabilityRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // Every mutation is a single insert or replace: a panic elsewhere leaves it whole.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Register gateway operation `operation` with what it requires.
    pub fn register_operation(
        &self,
        operation: &'static str,
        requirement: Requirement,
    ) -> Result<(), RegistryError> {
        match requirement {
            Requirement::Public => {
                self.write().public.insert(operation);
            }
            Requirement::Authenticated => {
                self.write().authenticated.insert(operation);
            }
            Requirement::Capability(c) => {
                if !valid_capability(&c) {
                    return Err(RegistryError::Invalid(c.to_string()));
                }
                self.write().gateway.entry(c).or_default().insert(operation);
            }
        }
        Ok(())
    }

    /// Replace the capabilities of linked services (the route registry calls this on every
    /// change, so a capability goes when the last instance declaring it does).
    pub fn set_services(&self, services: ServiceCapabilities) {
        self.write().services = services;
    }

    /// Is `capability` needed by some operation or linked endpoint?
    pub fn contains(&self, capability: &str) -> bool {
        let r = self.read();
        r.gateway.contains_key(capability) || r.services.0.contains_key(capability)
    }

    /// The namespaces of the gateway's registered capabilities (`iam`, `metrics`).
    pub fn gateway_namespaces(&self) -> BTreeSet<String> {
        self.read()
            .gateway
            .keys()
            .map(|c| namespace(c).to_string())
            .collect()
    }

    /// Every registered capability with its sources, by name.
    pub fn list(&self) -> Vec<RegisteredCapability> {
        let r = self.read();
        let mut all: BTreeMap<Capability, Vec<Source>> = BTreeMap::new();
        for (c, ops) in &r.gateway {
            all.entry(c.clone())
                .or_default()
                .extend(ops.iter().map(|&operation| Source::Gateway { operation }));
        }
        for (c, services) in &r.services.0 {
            all.entry(c.clone())
                .or_default()
                .extend(services.iter().map(|(s, &n)| Source::Service {
                    service: s.clone(),
                    instances: n,
                }));
        }
        all.into_iter()
            .map(|(name, sources)| RegisteredCapability { name, sources })
            .collect()
    }

    /// Gateway operations declared public.
    pub fn public_operations(&self) -> Vec<&'static str> {
        self.read().public.iter().copied().collect()
    }

    /// Gateway operations that need a verified identity and authorise per request.
    pub fn authenticated_operations(&self) -> Vec<&'static str> {
        self.read().authenticated.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_register_a_capability_or_are_public() {
        let r = CapabilityRegistry::new();
        r.register_operation("health", Requirement::Public).unwrap();
        r.register_operation("metrics", Requirement::Capability(METRICS_READ.into()))
            .unwrap();
        assert_eq!(
            r.register_operation("bad", Requirement::Capability("Bad".into())),
            Err(RegistryError::Invalid("Bad".into()))
        );
        assert!(r.contains("metrics.read"));
        assert_eq!(r.public_operations(), ["health"]);
        assert_eq!(
            r.gateway_namespaces().into_iter().collect::<Vec<_>>(),
            ["metrics"]
        );
    }

    #[test]
    fn endpoints_without_a_capability_need_service_call_and_reserved_namespaces_are_refused() {
        assert_eq!(
            &*endpoint_capability("orders", None).unwrap(),
            "orders.call"
        );
        assert_eq!(
            &*endpoint_capability("orders", Some("orders.read")).unwrap(),
            "orders.read"
        );
        assert_eq!(
            endpoint_capability("orders", Some("iam.users.write")),
            Err(RegistryError::Reserved("iam.users.write".into()))
        );
        assert_eq!(
            endpoint_capability("iam", None),
            Err(RegistryError::Reserved("iam.call".into()))
        );
        assert_eq!(
            endpoint_capability("orders", Some("a..b")),
            Err(RegistryError::Invalid("a..b".into()))
        );
    }

    #[test]
    fn service_capabilities_are_listed_with_their_sources_and_go_with_the_last_instance() {
        let r = CapabilityRegistry::new();
        r.register_operation("metrics", Requirement::Capability(METRICS_READ.into()))
            .unwrap();
        let echo: Arc<str> = "echo".into();
        let read: Capability = "echo.read".into();
        let write: Capability = "echo.write".into();
        let mut s = ServiceCapabilities::default();
        s.add_instance(&echo, [&read, &read, &write]);
        s.add_instance(&echo, [&read]);
        r.set_services(s);
        let list = r.list();
        let names: Vec<&str> = list.iter().map(|c| &*c.name).collect();
        assert_eq!(names, ["echo.read", "echo.write", "metrics.read"]);
        assert_eq!(
            list[0].sources,
            [Source::Service {
                service: echo.clone(),
                instances: 2
            }]
        );
        assert_eq!(
            list[2].sources,
            [Source::Gateway {
                operation: "metrics"
            }]
        );
        r.set_services(ServiceCapabilities::default());
        assert!(!r.contains("echo.read"));
        assert!(r.contains("metrics.read"));
    }
}
