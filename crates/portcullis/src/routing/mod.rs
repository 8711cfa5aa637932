//! Routing: which services serve which (method, path template), which instances are linked,
//! and which instance takes the next call.
//!
//! Writes (a link comes or goes) take a mutex and publish a new immutable [`RouteTable`]
//! snapshot; reads on the request path are one atomic load. Instance liveness and load live in
//! atomics on each [`Instance`], so heartbeats never rebuild the table.
//!
//! A write costs what it changes, not what is linked: the registry keeps each route's
//! instances as links come and go, rebuilds only the routes the changed instance declares
//! (or declared), and shares every other route's `Arc` with the previous table. The trie is
//! rebuilt from the routes, whose number does not grow with the instances. Registrations run
//! on the data-plane event loops that also serve calls (a link is handshaken and registered on
//! its loop), so a rolling restart of a large fleet must not cost O(fleet) per link there.
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

/// A route's key: the method as declared and the template's shape
/// ([`PathTemplate::shape`]); one service owns each.
type RouteKey = (String, String);

fn route_key(d: &EndpointDescriptor, t: &PathTemplate) -> RouteKey {
    (d.method.clone(), t.shape())
}

#[derive(Debug)]
struct RouteEntry {
    /// The service that declares it.
    service: Arc<str>,
    /// The instances that declare it, by instance id: the order of [`Route::instances`]. The
    /// first one's descriptor makes the route.
    members: BTreeMap<Arc<str>, Arc<Instance>>,
    /// The route as published, with the template it is filed under.
    built: Option<(PathTemplate, Arc<Route>)>,
}

#[derive(Debug, Default)]
struct State {
    /// service → instance id → registration.
    services: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Registered>>,
    /// Every route, kept up to date with `services` one instance at a time.
    routes: HashMap<RouteKey, RouteEntry>,
    /// The capabilities the linked instances declare, kept the same way.
    capabilities: ServiceCapabilities,
    /// Routes built since the registry was made: what a change cost (tests count it).
    routes_built: u64,
}

/// The capabilities an instance of `service` declaring `endpoints` adds to the registry.
fn declared(
    service: &str,
    endpoints: &[(EndpointDescriptor, PathTemplate)],
) -> Vec<crate::access::Capability> {
    endpoints
        .iter()
        .filter_map(|(d, _)| endpoint_capability(service, d.capability.as_deref()).ok())
        .collect()
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
        // A panic while holding this lock would be a bug in this module (nothing here
        // unwraps or indexes); the published table is still a consistent snapshot, so keep
        // serving.
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
        let service = instance.service.clone();
        let id = instance.instance_id.clone();
        let st = &mut *st;
        let mut touched = Vec::with_capacity(endpoints.len());
        for (d, t) in &endpoints {
            let key = route_key(d, t);
            st.routes
                .entry(key.clone())
                .or_insert_with(|| RouteEntry {
                    service: service.clone(),
                    members: BTreeMap::new(),
                    built: None,
                })
                .members
                .insert(id.clone(), instance.clone());
            touched.push(key);
        }
        st.capabilities
            .add_instance(&service, &declared(&service, &endpoints));
        let old = st.services.entry(service.clone()).or_default().insert(
            id.clone(),
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
            self.forget(st, &old, &mut touched);
        }
        self.rebuild(st, touched);
        self.publish(st);
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
            let Some(old) = insts.remove(&instance.instance_id) else {
                return;
            };
            if insts.is_empty() {
                st.services.remove(&instance.service);
            }
            let st = &mut *st;
            let mut touched = Vec::with_capacity(old.endpoints.len());
            self.forget(st, &old, &mut touched);
            self.rebuild(st, touched);
            self.publish(st);
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

    /// Take `old` (no longer in `st.services`, or replaced there by a registration of the
    /// same instance id) out of its routes' members (unless a successor with the same id is
    /// already there) and out of the capability counts; its routes' keys go to `touched`.
    fn forget(&self, st: &mut State, old: &Registered, touched: &mut Vec<RouteKey>) {
        let service = &old.instance.service;
        let id = &old.instance.instance_id;
        for (d, t) in &old.endpoints {
            let key = route_key(d, t);
            if let Some(entry) = st.routes.get_mut(&key) {
                let ours = entry
                    .members
                    .get(id)
                    .is_some_and(|i| Arc::ptr_eq(i, &old.instance));
                if ours {
                    entry.members.remove(id);
                }
            }
            touched.push(key);
        }
        st.capabilities
            .remove_instance(service, &declared(service, &old.endpoints));
    }

    /// Build again the routes under `touched` from their members (a route with none left
    /// leaves). Every other route keeps its `Arc`.
    fn rebuild(&self, st: &mut State, mut touched: Vec<RouteKey>) {
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            let Some(entry) = st.routes.get_mut(&key) else {
                continue;
            };
            // The first member's descriptor makes the route, as when the table was built
            // from every instance in id order.
            let first = entry.members.keys().next().and_then(|id| {
                st.services
                    .get(&entry.service)
                    .and_then(|insts| insts.get(id))
                    .and_then(|r| r.endpoints.iter().find(|(d, t)| route_key(d, t) == key))
            });
            let Some((d, t)) = first else {
                st.routes.remove(&key);
                continue;
            };
            let instances = entry.members.values().cloned().collect();
            let route = table::route_from(&entry.service, d, self.default_timeout, instances);
            entry.built = Some((t.clone(), Arc::new(route)));
            st.routes_built += 1;
        }
    }

    /// Routes built since the registry was made: one per route a registration changes.
    pub fn routes_built(&self) -> u64 {
        self.lock().routes_built
    }

    /// Every registered instance.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.lock()
            .services
            .values()
            .flat_map(|m| m.values().map(|r| r.instance.clone()))
            .collect()
    }

    /// Publish the routes as they are now, and the capabilities.
    fn publish(&self, st: &State) {
        let routes = st.routes.values().filter_map(|e| e.built.clone()).collect();
        self.table.store(Arc::new(RouteTable::build(routes)));
        self.capabilities.set_services(st.capabilities.clone());
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
    // Against the routes, which are every (method, shape) a linked instance declares, rather
    // than against every instance's descriptors: the cost does not grow with the fleet.
    for (d, t) in endpoints {
        let shape = t.shape();
        for ((method, other_shape), entry) in &st.routes {
            if &*entry.service != service
                && *other_shape == shape
                && portcullis_link::methods_overlap(method, &d.method)
            {
                return Err(RegisterError::Conflict {
                    method: d.method.clone(),
                    path: d.path.clone(),
                    owner: entry.service.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_link::Protocol;

    fn endpoint(method: &str, path: &str) -> (EndpointDescriptor, PathTemplate) {
        let d = EndpointDescriptor {
            method: method.into(),
            path: path.into(),
            timeout_ms: None,
            streaming: false,
            capability: None,
            protocol: Protocol::Http,
            workspace_scoped: false,
        };
        let t = d.validate().expect("a valid descriptor");
        (d, t)
    }

    async fn instance(service: &str, id: &str, link: &str) -> Arc<Instance> {
        let (io, _peer) = tokio::io::duplex(1024);
        let (sender, _conn) = h2::client::handshake(io).await.expect("h2 handshake");
        Arc::new(Instance::new(
            service.into(),
            id.into(),
            link.into(),
            None,
            "1".into(),
            sender,
        ))
    }

    fn found(r: &Registry, method: &str, path: &str) -> Arc<Route> {
        match r.table().lookup(method, path) {
            Match::Found(route) => route,
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    /// A rolling restart of a large fleet: each re-link (register the new link, then the old
    /// one's unregister) builds only the fleet's own route, whatever the fleet's size, and
    /// leaves every other service's route as it was (same `Arc`, its metric handles kept).
    #[tokio::test]
    async fn a_relink_rebuilds_only_its_own_routes_whatever_the_fleet_size() {
        const FLEET: usize = 300;
        let r = Registry::new(Duration::from_secs(5));
        r.register(
            instance("steady", "steady-1", "l-s").await,
            vec![endpoint("GET", "/steady/{*rest}")],
        )
        .expect("steady registers");
        let mut old = Vec::new();
        for i in 0..FLEET {
            let inst = instance("fleet", &format!("fleet-{i}"), &format!("l-{i}")).await;
            r.register(inst.clone(), vec![endpoint("GET", "/fleet/{*rest}")])
                .expect("fleet registers");
            old.push(inst);
        }
        assert_eq!(found(&r, "GET", "/fleet/x").instances.len(), FLEET);
        let steady = found(&r, "GET", "/steady/x");
        let before = r.routes_built();
        for (i, o) in old.iter().enumerate() {
            let new = instance("fleet", &format!("fleet-{i}"), &format!("l-{i}-b")).await;
            r.register(new, vec![endpoint("GET", "/fleet/{*rest}")])
                .expect("the new link registers");
            assert_eq!(o.state(), LinkState::Draining, "the old link drains");
            r.unregister(o);
        }
        // One route per registration (its one endpoint); the replaced link's unregister
        // changes nothing, its successor being registered.
        assert_eq!(r.routes_built() - before, FLEET as u64);
        assert!(
            Arc::ptr_eq(&steady, &found(&r, "GET", "/steady/x")),
            "another service's route is shared, not rebuilt"
        );
        let fleet = found(&r, "GET", "/fleet/x");
        assert_eq!(fleet.instances.len(), FLEET);
        assert!(
            fleet.instances.iter().all(|i| i.link_id.ends_with("-b")),
            "every instance is its new link"
        );
        // Instances in id order, as a table built from every instance had them.
        let ids: Vec<_> = fleet
            .instances
            .iter()
            .map(|i| i.instance_id.clone())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    /// The incremental state publishes what a table built from every instance would: routes
    /// leave with their last instance, capabilities are counted per instance, conflicts are
    /// found against the routes of other services.
    #[tokio::test]
    async fn routes_and_capabilities_follow_instances_one_at_a_time() {
        let caps = Arc::new(CapabilityRegistry::new());
        let r = Registry::with_capabilities(Duration::from_secs(5), caps.clone());
        let a1 = instance("a", "a-1", "l-a1").await;
        let a2 = instance("a", "a-2", "l-a2").await;
        let mut only = endpoint("POST", "/a/only");
        only.0.capability = Some("a.write".into());
        r.register(a1.clone(), vec![endpoint("GET", "/a/{id}"), only])
            .expect("a-1");
        r.register(a2.clone(), vec![endpoint("GET", "/a/{name}")])
            .expect("a-2");
        assert_eq!(found(&r, "GET", "/a/7").instances.len(), 2);
        assert!(caps.contains("a.write") && caps.contains("a.call"));
        // Another service may not claim the same shape and method, before or after.
        let b = instance("b", "b-1", "l-b").await;
        assert!(matches!(
            r.register(b.clone(), vec![endpoint("*", "/a/{x}")]),
            Err(RegisterError::Conflict { owner, .. }) if owner == "a"
        ));
        r.unregister(&a1);
        // Only the parameter route is left under /a: POST /a/only is no longer routable.
        assert!(matches!(
            r.table().lookup("POST", "/a/only"),
            Match::MethodNotAllowed(_)
        ));
        assert!(
            !caps.contains("a.write"),
            "the last instance declaring it left"
        );
        assert!(caps.contains("a.call"));
        let route = found(&r, "GET", "/a/7");
        assert_eq!(route.instances.len(), 1);
        assert_eq!(
            &*route.template, "/a/{name}",
            "the remaining instance's descriptor"
        );
        r.unregister(&a2);
        assert!(r.table().is_empty());
        assert!(!caps.contains("a.call"));
        r.register(b, vec![endpoint("*", "/a/{x}")])
            .expect("the shape is free again");
    }
}
