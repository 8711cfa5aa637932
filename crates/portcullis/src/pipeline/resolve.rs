//! Resolve phase: what is this request for?
//!
//! A request resolves to a [`Target`]: a service endpoint from the route table, or an operation
//! the gateway performs itself (health, metrics; later login, JWKS, OpenAPI, the admin API,
//! sessions and the socket mux), each carrying the capability it needs and its [`AuthPolicy`]
//! (the credential kinds it accepts, or none). Gateway operations are registered in one
//! [`Operations`] table under reserved paths and are written as axum `Router`s; they go through
//! the same authenticate and authorise phases as routed calls, so none repeats that sequence.
//! Every operation is either public or names its capability, and the table registers them in
//! the one capability registry ([`Operations::register_capabilities`]); a routed endpoint's
//! capability comes from its descriptor (`routing`, `access::registry`).
//!
//! A path no target matches resolves to [`Target::Unrouted`], which needs a credential like any
//! routed path: without a valid credential every non-public path answers the same 401, so the
//! route table cannot be enumerated; the 404/405 is given only to authenticated callers.

use std::sync::Arc;

use crate::access::{CapabilityRegistry, RegistryError, Requirement, Resource};
use crate::auth::CredentialKinds;
use crate::error::GatewayError;
use crate::routing::{Match, Registry, Route};
use crate::telemetry::metrics::{Label, RouteLabels, RouteMetrics};
use crate::telemetry::Metrics;

/// Which credentials a target accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    /// No credential: anyone may call (health).
    Public,
    /// One of these credential kinds is required.
    Credential(CredentialKinds),
}

/// How an operation's path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Exactly this path.
    Exact(&'static str),
    /// One of these paths.
    OneOf(&'static [&'static str]),
    /// This prefix (ending in `/`) and everything under it.
    Prefix(&'static str),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == *p,
            Self::OneOf(ps) => ps.contains(&path),
            Self::Prefix(p) => path.starts_with(p),
        }
    }
}

/// An operation the gateway performs itself.
#[derive(Clone)]
pub struct Operation {
    /// Stable name, for logs, metrics and the audit log (`health`, `metrics`).
    pub name: &'static str,
    /// The reserved path it owns.
    pub path: PathMatch,
    /// Capability a caller needs: `None` exactly when the operation is [`AuthPolicy::Public`]
    /// (checked by [`Operations::register_capabilities`]: an operation that asks for a
    /// credential without naming a capability does not start).
    pub requires: Requirement,
    /// Credentials it accepts.
    pub auth: AuthPolicy,
    /// What serves it.
    pub router: axum::Router,
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("requires", &self.requires)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// The gateway's own operations, matched before the route table.
#[derive(Debug, Clone, Default)]
pub struct Operations(Vec<Arc<Operation>>);

impl Operations {
    /// Register an operation.
    pub fn register(&mut self, op: Operation) {
        self.0.push(Arc::new(op));
    }

    /// Is `path` reserved by an operation? Services may not declare such paths.
    pub fn reserves(&self, path: &str) -> bool {
        self.find(path).is_some()
    }

    fn find(&self, path: &str) -> Option<&Arc<Operation>> {
        self.0.iter().find(|op| op.path.matches(path))
    }

    /// Register every operation's requirement in `registry`: its capability, or public. An
    /// operation that accepts credentials but names no capability, or is public but names one,
    /// is an error — the gateway does not start with it.
    pub fn register_capabilities(
        &self,
        registry: &CapabilityRegistry,
    ) -> Result<(), RegistryError> {
        for op in &self.0 {
            match (&op.auth, &op.requires) {
                (AuthPolicy::Public, Requirement::Public)
                | (
                    AuthPolicy::Credential(_),
                    Requirement::Capability(_) | Requirement::Authenticated,
                ) => {}
                (AuthPolicy::Credential(_), Requirement::Public) => {
                    return Err(RegistryError::Operation {
                        operation: op.name,
                        reason: "it asks for a credential but names no capability",
                    })
                }
                (AuthPolicy::Public, _) => {
                    return Err(RegistryError::Operation {
                        operation: op.name,
                        reason: "it is public but requires what no one would be asked for",
                    })
                }
            }
            registry.register_operation(op.name, op.requires.clone())?;
        }
        Ok(())
    }
}

/// Why nothing matched; answered only after the caller has authenticated.
#[derive(Debug, Clone)]
pub enum Unrouted {
    /// No template matches the path.
    NotFound,
    /// The path exists with other methods (the `Allow` value).
    MethodNotAllowed(String),
}

impl From<Unrouted> for GatewayError {
    fn from(u: Unrouted) -> Self {
        match u {
            Unrouted::NotFound => GatewayError::NotFound,
            Unrouted::MethodNotAllowed(allow) => GatewayError::MethodNotAllowed(allow),
        }
    }
}

/// What a call is for.
#[derive(Debug, Clone)]
pub enum Target {
    /// A service endpoint.
    Service(Arc<Route>),
    /// A gateway operation.
    Gateway(Arc<Operation>),
    /// Nothing; refused with 404/405 once the caller is authenticated.
    Unrouted(Unrouted),
}

/// Routed paths and unmatched ones accept either bearer credential (API key, user token).
const ROUTED: AuthPolicy = AuthPolicy::Credential(CredentialKinds::BEARER);

impl Target {
    /// Credentials the target accepts.
    pub fn auth(&self) -> AuthPolicy {
        match self {
            Self::Service(_) | Self::Unrouted(_) => ROUTED,
            Self::Gateway(op) => op.auth,
        }
    }

    /// Is the target a gateway operation that needs only a verified identity and authorises
    /// per request (`Requirement::Authenticated`)?
    pub fn authorises_itself(&self) -> bool {
        matches!(self, Self::Gateway(op) if op.requires == Requirement::Authenticated)
    }

    /// Can a call to the target act in a workspace other than the caller's own
    /// (`x-portcullis-workspace`)? Routes declared `workspace_scoped`, and gateway operations.
    pub fn workspace_scoped(&self) -> bool {
        match self {
            Self::Service(r) => r.workspace_scoped,
            Self::Gateway(_) => true,
            Self::Unrouted(_) => false,
        }
    }

    /// Capability the target needs; `None` for a public operation (and for nothing, which
    /// is answered before any decision).
    pub fn capability(&self) -> Option<&str> {
        match self {
            Self::Service(r) => Some(&r.capability),
            Self::Gateway(op) => match &op.requires {
                Requirement::Capability(c) => Some(c),
                Requirement::Public | Requirement::Authenticated => None,
            },
            Self::Unrouted(_) => None,
        }
    }

    /// What the target acts on, in the call's target `workspace`, for access control.
    pub fn resource<'a>(&'a self, workspace: &'a str) -> Resource<'a> {
        match self {
            Self::Service(r) => Resource::Service {
                service: &r.service,
                workspace,
            },
            Self::Gateway(op) => Resource::Gateway {
                operation: op.name,
                workspace,
            },
            Self::Unrouted(_) => Resource::Gateway {
                operation: "unrouted",
                workspace,
            },
        }
    }

    /// Route labels for metrics and the access log: (service, route template).
    pub fn labels(&self) -> Option<(&Arc<str>, &Arc<str>)> {
        match self {
            Self::Service(r) => Some((&r.service, &r.template)),
            _ => None,
        }
    }

    /// A health probe or a metric scrape: the orchestrator's and the scraper's traffic, kept
    /// out of the call metrics and the info-level access log (`finish`).
    pub fn is_probe(&self) -> bool {
        matches!(self, Self::Gateway(op) if matches!(op.name, "health" | "metrics"))
    }

    /// The per-call metric handles of the target: its route's, resolved once per route,
    /// or those of `service="-",route="-"`.
    pub fn metrics<'a>(&'a self, metrics: &'a Metrics) -> &'a RouteMetrics {
        match self {
            Self::Service(r) => r.metrics.get_or_init(|| {
                metrics.route(&RouteLabels {
                    service: Label(r.service.clone()),
                    route: Label(r.template.clone()),
                })
            }),
            _ => metrics.unrouted(),
        }
    }
}

/// The resolve phase, built once.
#[derive(Debug)]
pub struct Resolve {
    registry: Arc<Registry>,
}

impl Resolve {
    /// Resolve against the live route table of `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The target of `method path`. Paths a service might normalise differently are refused
    /// here (400), before any credential is looked at.
    pub fn run(
        &self,
        operations: &Operations,
        method: &http::Method,
        path: &str,
    ) -> Result<Target, GatewayError> {
        check_path(path)?;
        if let Some(op) = operations.find(path) {
            return Ok(Target::Gateway(op.clone()));
        }
        let _s = tracing::debug_span!("route").entered();
        Ok(match self.registry.table().lookup(method.as_str(), path) {
            Match::Found(r) => Target::Service(r),
            Match::MethodNotAllowed(allow) => Target::Unrouted(Unrouted::MethodNotAllowed(allow)),
            Match::NotFound => Target::Unrouted(Unrouted::NotFound),
        })
    }
}

/// Refuse paths a service might normalise differently from the gateway: dot segments (also
/// percent-encoded) could walk out of the matched template; the link's reserved prefix is
/// never routable.
pub fn check_path(path: &str) -> Result<(), GatewayError> {
    if !path.starts_with('/') {
        return Err(GatewayError::BadRequest("path"));
    }
    if path.starts_with(portcullis_link::RESERVED_PREFIX) {
        return Err(GatewayError::NotFound);
    }
    // Byte checks, no allocation: this runs on every call.
    for seg in path.split('/') {
        if is_dot_segment(seg.as_bytes()) {
            return Err(GatewayError::BadRequest("path"));
        }
    }
    let encoded_slash = path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
                || (w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c')))
    });
    if encoded_slash {
        return Err(GatewayError::BadRequest("path"));
    }
    Ok(())
}

/// `.` or `..`, each dot possibly percent-encoded (`%2e`, `%2E`).
fn is_dot_segment(mut seg: &[u8]) -> bool {
    let mut dots = 0;
    while !seg.is_empty() {
        if seg[0] == b'.' {
            seg = &seg[1..];
        } else if seg.len() >= 3 && seg[0] == b'%' && seg[1] == b'2' && seg[2] | 0x20 == b'e' {
            seg = &seg[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_hygiene() {
        assert!(check_path("/a/b").is_ok());
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a/%2E%2e/b",
            "/a%2fb",
            "/a%5Cb",
            "/a/%2e/b",
            "/a/.%2E/b",
            "/.well-known/portcullis/health",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
