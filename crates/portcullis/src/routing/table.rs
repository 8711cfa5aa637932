//! The route table: (method, path) → route, as an immutable trie rebuilt on every change.
//!
//! Matching walks the path segment by segment, preferring a literal child over a parameter
//! over a catch-all, and backtracking when a branch dead-ends; the first complete match is the
//! most specific template. The method is checked only on that template: a path that matches
//! but not with this method is a 405 with `Allow`, as in most HTTP routers.

use portcullis_link::{EndpointDescriptor, PathTemplate, Segment};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::instance::Instance;

/// One routable (method, template) and the instances that declare it.
#[derive(Debug)]
pub struct Route {
    /// Service that owns it.
    pub service: Arc<str>,
    /// Template as declared; used as the metric label and `x-portcullis-route`.
    pub template: Arc<str>,
    /// `template` as a header value, made once so forwarding a call copies nothing.
    pub template_header: Option<http::HeaderValue>,
    /// Method as declared (`*` for any).
    pub method: Arc<str>,
    /// Time to wait for the response head.
    pub timeout: Duration,
    /// Response is a long-lived stream.
    pub streaming: bool,
    /// A caller bound across workspaces may point a call at another workspace (the descriptor
    /// of the first instance registered decides, as for every other field).
    pub workspace_scoped: bool,
    /// Capability a caller needs: the one the descriptor declares, or `<service>.call`
    /// (`access::registry::endpoint_capability`).
    pub capability: Arc<str>,
    /// Instances that serve it, in registration order.
    pub instances: Vec<Arc<Instance>>,
    /// Its per-call metric handles, resolved by the first call (`pipeline::finish`), so
    /// later calls take no metric family lock.
    pub metrics: std::sync::OnceLock<crate::telemetry::metrics::RouteMetrics>,
}

#[derive(Debug, Default)]
struct Leaf {
    by_method: HashMap<Box<str>, Arc<Route>>,
    any: Option<Arc<Route>>,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    catch_all: Option<Leaf>,
    leaf: Option<Leaf>,
}

/// Result of a lookup.
#[derive(Debug)]
pub enum Match {
    /// The route to call.
    Found(Arc<Route>),
    /// The path exists with other methods; the value is the `Allow` header.
    MethodNotAllowed(String),
    /// No template matches the path.
    NotFound,
}

/// Immutable route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    root: Node,
    len: usize,
}

impl RouteTable {
    /// Build from routes. Callers guarantee no two routes share (method, shape).
    pub fn build(routes: Vec<(PathTemplate, Arc<Route>)>) -> Self {
        let mut root = Node::default();
        let len = routes.len();
        for (template, route) in routes {
            let mut node = &mut root;
            let mut leaf_slot: Option<&mut Leaf> = None;
            for seg in template.segments() {
                match seg {
                    Segment::Literal(l) => {
                        node = node.literal.entry(l.as_str().into()).or_default();
                    }
                    Segment::Param(_) => {
                        node = node.param.get_or_insert_with(Default::default);
                    }
                    Segment::CatchAll(_) => {
                        leaf_slot = Some(node.catch_all.get_or_insert_with(Default::default));
                        break;
                    }
                }
            }
            let leaf = match leaf_slot {
                Some(l) => l,
                None => node.leaf.get_or_insert_with(Default::default),
            };
            if &*route.method == "*" {
                leaf.any = Some(route);
            } else {
                leaf.by_method.insert(route.method.as_ref().into(), route);
            }
        }
        Self { root, len }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no route is registered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Look up `path` (without query) for `method`.
    pub fn lookup(&self, method: &str, path: &str) -> Match {
        let Some(rest) = path.strip_prefix('/') else {
            return Match::NotFound;
        };
        let segs: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        match find(&self.root, &segs) {
            None => Match::NotFound,
            Some(leaf) => {
                if let Some(r) = leaf.by_method.get(method) {
                    return Match::Found(r.clone());
                }
                // HEAD falls back to GET, as HTTP allows.
                if method == "HEAD" {
                    if let Some(r) = leaf.by_method.get("GET") {
                        return Match::Found(r.clone());
                    }
                }
                if let Some(r) = &leaf.any {
                    return Match::Found(r.clone());
                }
                let mut allow: Vec<&str> = leaf.by_method.keys().map(|k| &**k).collect();
                allow.sort_unstable();
                Match::MethodNotAllowed(allow.join(", "))
            }
        }
    }
}

fn find<'a>(node: &'a Node, segs: &[&str]) -> Option<&'a Leaf> {
    let Some((first, rest)) = segs.split_first() else {
        return node.leaf.as_ref().or(node.catch_all.as_ref());
    };
    if let Some(child) = node.literal.get(*first) {
        if let Some(l) = find(child, rest) {
            return Some(l);
        }
    }
    if !first.is_empty() {
        if let Some(child) = &node.param {
            if let Some(l) = find(child, rest) {
                return Some(l);
            }
        }
    }
    node.catch_all.as_ref()
}

/// Build a [`Route`] from a descriptor.
pub fn route_from(
    service: &Arc<str>,
    d: &EndpointDescriptor,
    default_timeout: Duration,
    instances: Vec<Arc<Instance>>,
) -> Route {
    Route {
        service: service.clone(),
        template: d.path.as_str().into(),
        template_header: http::HeaderValue::from_str(d.path.as_str()).ok(),
        method: d.method.as_str().into(),
        timeout: d
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(default_timeout),
        streaming: d.streaming,
        workspace_scoped: d.workspace_scoped,
        // Registration refuses descriptors whose capability is not valid, so this never falls
        // back; if it did, the empty name matches no scope, pattern or role: fail closed.
        capability: crate::access::registry::endpoint_capability(service, d.capability.as_deref())
            .unwrap_or_else(|_| Arc::from("")),
        instances,
        metrics: std::sync::OnceLock::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_link::Protocol;

    fn table(defs: &[(&str, &str)]) -> RouteTable {
        let svc: Arc<str> = "svc".into();
        let routes = defs
            .iter()
            .map(|(m, p)| {
                let d = EndpointDescriptor {
                    method: (*m).into(),
                    path: (*p).into(),
                    timeout_ms: None,
                    streaming: false,
                    capability: None,
                    protocol: Protocol::Http,
                    workspace_scoped: false,
                };
                let t = d.validate().unwrap();
                (
                    t,
                    Arc::new(route_from(&svc, &d, Duration::from_secs(1), vec![])),
                )
            })
            .collect();
        RouteTable::build(routes)
    }

    fn found(t: &RouteTable, m: &str, p: &str) -> Option<String> {
        match t.lookup(m, p) {
            Match::Found(r) => Some(r.template.to_string()),
            _ => None,
        }
    }

    #[test]
    fn literal_beats_param_beats_catch_all() {
        let t = table(&[
            ("GET", "/scans/{id}"),
            ("GET", "/scans/latest"),
            ("GET", "/scans/{*rest}"),
            ("GET", "/"),
        ]);
        assert_eq!(
            found(&t, "GET", "/scans/latest").as_deref(),
            Some("/scans/latest")
        );
        assert_eq!(
            found(&t, "GET", "/scans/42").as_deref(),
            Some("/scans/{id}")
        );
        assert_eq!(
            found(&t, "GET", "/scans/42/x").as_deref(),
            Some("/scans/{*rest}")
        );
        assert_eq!(
            found(&t, "GET", "/scans").as_deref(),
            Some("/scans/{*rest}")
        );
        assert_eq!(found(&t, "GET", "/").as_deref(), Some("/"));
        assert!(matches!(t.lookup("GET", "/nope"), Match::NotFound));
    }

    #[test]
    fn backtracks_out_of_a_dead_literal_branch() {
        let t = table(&[("GET", "/a/b/c"), ("GET", "/a/{x}/d")]);
        assert_eq!(found(&t, "GET", "/a/b/d").as_deref(), Some("/a/{x}/d"));
        assert_eq!(found(&t, "GET", "/a/b/c").as_deref(), Some("/a/b/c"));
    }

    #[test]
    fn params_do_not_match_empty_segments() {
        let t = table(&[("GET", "/a/{x}")]);
        assert!(matches!(t.lookup("GET", "/a/"), Match::NotFound));
        assert!(found(&t, "GET", "/a/1").is_some());
    }

    #[test]
    fn method_not_allowed_lists_methods() {
        let t = table(&[("GET", "/x"), ("POST", "/x")]);
        match t.lookup("DELETE", "/x") {
            Match::MethodNotAllowed(a) => assert_eq!(a, "GET, POST"),
            other => panic!("{other:?}"),
        }
        assert_eq!(found(&t, "HEAD", "/x").as_deref(), Some("/x"));
    }

    #[test]
    fn any_method_route() {
        let t = table(&[("*", "/echo/{*rest}"), ("GET", "/echo/special")]);
        assert_eq!(
            found(&t, "PATCH", "/echo/a/b").as_deref(),
            Some("/echo/{*rest}")
        );
        assert_eq!(
            found(&t, "GET", "/echo/special").as_deref(),
            Some("/echo/special")
        );
        assert!(matches!(
            t.lookup("POST", "/echo/special"),
            Match::MethodNotAllowed(_)
        ));
    }
}
