//! Routing: which services serve which (method, path template), which instances are linked,
//! and which instance takes the next call.
//!
//! Writes (a link comes or goes) take a mutex and publish a new immutable [`RouteTable`]
//! snapshot; reads on the request path are one atomic load. Instance liveness and load live in
//! atomics on each [`Instance`], so heartbeats never rebuild the table.
//!
//! Each publication also tells the capability registry (`access::registry`) which
//! capabilities the linked instances declare, so an endpoint's capability is registered while
//! an instance declaring it is linked and leaves with the last one. A descriptor whose
//! capability is not a capability name, or is in a namespace reserved for the gateway, is
//! refused like any invalid descriptor.

mod instance;
mod select;
mod table;

pub use instance::{InFlight, Instance, LinkState, Pinned};
pub use select::{select, Tiers};
pub use table::{Match, Route, RouteTable};

mod config;
pub use config::RoutingConfig;

use crate::access::registry::{endpoint_capability, ServiceCapabilities};
use crate::access::CapabilityRegistry;
use arc_swap::ArcSwap;
use portcullis_link::{EndpointDescriptor, PathTemplate};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Why an instance could not register.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// A descriptor is invalid.
    #[error("endpoint {method} {path}: {reason}")]
    InvalidDescriptor {
        /// Method of the bad descriptor.
        method: String,
        /// Path of the bad descriptor.
        path: String,
        /// Why.
        reason: String,
    },
    /// Another service already serves an overlapping (method, template).
    #[error("{method} {path} is already served by service {owner}")]
    Conflict {
        /// Method claimed.
        method: String,
        /// Template claimed.
        path: String,
        /// The service that holds it.
        owner: String,
    },
    /// The service already has the most instances one service may link.
    #[error("service {0} has too many linked instances")]
    TooManyInstances(String),
}

/// Instances one service may have linked at once: a bound on what an authenticated but
/// misbehaving service can make the gateway hold.
pub const MAX_INSTANCES_PER_SERVICE: usize = 1024;

#[derive(Debug)]
struct Registered {
    instance: Arc<Instance>,
    endpoints: Vec<(EndpointDescriptor, PathTemplate)>,
}

#[derive(Debug, Default)]
struct State {
    /// service → instance id → registration.
    services: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Registered>>,
}

/// The live registry of services, instances and routes.
#[derive(Debug)]
pub struct Registry {
    state: Mutex<State>,
    table: ArcSwap<RouteTable>,
    default_timeout: Duration,
    capabilities: Arc<CapabilityRegistry>,
}

/// Validate descriptors, returning each with its parsed template.
pub fn validate_endpoints(
    endpoints: &[EndpointDescriptor],
) -> Result<Vec<(EndpointDescriptor, PathTemplate)>, RegisterError> {
    endpoints
        .iter()
        .map(|d| {
            d.validate()
                .map(|t| (d.clone(), t))
                .map_err(|e| RegisterError::InvalidDescriptor {
                    method: d.method.clone(),
                    path: d.path.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

impl Registry {
    /// An empty registry. `default_timeout` applies to endpoints that declare none. Linked
    /// endpoints' capabilities go to a capability registry of its own.
    pub fn new(default_timeout: Duration) -> Self {
        Self::with_capabilities(default_timeout, Arc::new(CapabilityRegistry::new()))
    }

    /// An empty registry that keeps `capabilities` up to date with the linked endpoints.
    pub fn with_capabilities(
        default_timeout: Duration,
        capabilities: Arc<CapabilityRegistry>,
    ) -> Self {
        Self {
            state: Mutex::new(State::default()),
            table: ArcSwap::from_pointee(RouteTable::default()),
            default_timeout,
            capabilities,
        }
    }

    /// The capability registry linked endpoints are registered in.
    pub fn capabilities(&self) -> &Arc<CapabilityRegistry> {
        &self.capabilities
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; the state is still
        // consistent (every mutation is a single insert/remove), so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current route table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Would `service` declaring `endpoints` clash with another service? Checked before the
    /// handshake is acknowledged and again, atomically, by [`Registry::register`].
    pub fn check(
        &self,
        service: &str,
        instance_id: &str,
        endpoints: &[(EndpointDescriptor, PathTemplate)],
    ) -> Result<(), RegisterError> {
        check_capabilities(service, endpoints)?;
        let st = self.lock();
        check_conflicts(&st, service, endpoints)?;
        check_capacity(&st, service, instance_id)
    }

    /// Register a linked instance. An instance with the same (service, instance id) is
    /// replaced and its link told to drain (`Instance::replaced`): the caller has already
    /// authenticated the new one.
    pub fn register(
        &self,
        instance: Arc<Instance>,
        endpoints: Vec<(EndpointDescriptor, PathTemplate)>,
    ) -> Result<(), RegisterError> {
        check_capabilities(&instance.service, &endpoints)?;
        let mut st = self.lock();
        check_conflicts(&st, &instance.service, &endpoints)?;
        check_capacity(&st, &instance.service, &instance.instance_id)?;
        let old = st
            .services
            .entry(instance.service.clone())
            .or_default()
            .insert(
                instance.instance_id.clone(),
                Registered {
                    instance,
                    endpoints,
                },
            );
        if let Some(old) = old {
            // Out of the table below, so no new call chooses it; its link drains the calls
            // in flight and closes (`link::LinkServer`), instead of failing them.
            old.instance.set_state(LinkState::Draining);
            old.instance.replaced.cancel();
        }
        self.publish(&st);
        Ok(())
    }

    /// Remove an instance if `link_id` is still the registered link for it (a replaced link
    /// must not remove its successor).
    pub fn unregister(&self, instance: &Instance) {
        let mut st = self.lock();
        let Some(insts) = st.services.get_mut(&instance.service) else {
            return;
        };
        let current = insts
            .get(&instance.instance_id)
            .is_some_and(|r| r.instance.link_id == instance.link_id);
        if current {
            insts.remove(&instance.instance_id);
            if insts.is_empty() {
                st.services.remove(&instance.service);
            }
            self.publish(&st);
        }
    }

    /// The registered instances of `service`.
    pub fn instances_of(&self, service: &str) -> Vec<Arc<Instance>> {
        self.lock()
            .services
            .get(service)
            .map(|m| m.values().map(|r| r.instance.clone()).collect())
            .unwrap_or_default()
    }

    /// Every registered instance.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.lock()
            .services
            .values()
            .flat_map(|m| m.values().map(|r| r.instance.clone()))
            .collect()
    }

    fn publish(&self, st: &State) {
        // (method, shape) → route under construction.
        let mut routes: HashMap<(String, String), (PathTemplate, table::Route)> = HashMap::new();
        let mut capabilities = ServiceCapabilities::default();
        for (service, insts) in &st.services {
            for reg in insts.values() {
                let declared: Vec<_> = reg
                    .endpoints
                    .iter()
                    .filter_map(|(d, _)| endpoint_capability(service, d.capability.as_deref()).ok())
                    .collect();
                capabilities.add_instance(service, &declared);
                for (d, t) in &reg.endpoints {
                    let key = (d.method.clone(), t.shape());
                    routes
                        .entry(key)
                        .or_insert_with(|| {
                            (
                                t.clone(),
                                table::route_from(service, d, self.default_timeout, Vec::new()),
                            )
                        })
                        .1
                        .instances
                        .push(reg.instance.clone());
                }
            }
        }
        let routes = routes
            .into_values()
            .map(|(t, r)| (t, Arc::new(r)))
            .collect();
        self.table.store(Arc::new(RouteTable::build(routes)));
        self.capabilities.set_services(capabilities);
    }
}

/// Every endpoint names a capability the registry accepts (its own, or `<service>.call`).
fn check_capabilities(
    service: &str,
    endpoints: &[(EndpointDescriptor, PathTemplate)],
) -> Result<(), RegisterError> {
    for (d, _) in endpoints {
        endpoint_capability(service, d.capability.as_deref()).map_err(|e| {
            RegisterError::InvalidDescriptor {
                method: d.method.clone(),
                path: d.path.clone(),
                reason: e.to_string(),
            }
        })?;
    }
    Ok(())
}

fn check_capacity(st: &State, service: &str, instance_id: &str) -> Result<(), RegisterError> {
    match st.services.get(service) {
        Some(insts)
            if insts.len() >= MAX_INSTANCES_PER_SERVICE && !insts.contains_key(instance_id) =>
        {
            Err(RegisterError::TooManyInstances(service.to_string()))
        }
        _ => Ok(()),
    }
}

fn check_conflicts(
    st: &State,
    service: &str,
    endpoints: &[(EndpointDescriptor, PathTemplate)],
) -> Result<(), RegisterError> {
    // Within one HELLO, two endpoints claiming the same requests are a descriptor error: the
    // rule the SDK applies when a service is built (`portcullis_link::find_overlap`).
    if let Some(o) = portcullis_link::find_overlap(endpoints.iter().map(|(d, t)| (d, t))) {
        let (d, _) = &endpoints[o.second];
        return Err(RegisterError::InvalidDescriptor {
            method: d.method.clone(),
            path: d.path.clone(),
            reason: "declared twice".into(),
        });
    }
    for (other, insts) in &st.services {
        if &**other == service {
            continue;
        }
        for reg in insts.values() {
            for (od, ot) in &reg.endpoints {
                for (d, t) in endpoints {
                    if portcullis_link::methods_overlap(&od.method, &d.method)
                        && ot.shape() == t.shape()
                    {
                        return Err(RegisterError::Conflict {
                            method: d.method.clone(),
                            path: d.path.clone(),
                            owner: other.to_string(),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}
