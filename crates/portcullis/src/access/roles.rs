//! Roles: named sets of capability patterns, granted to subjects by role bindings within a
//! workspace (or `*`, every workspace).
//!
//! Built in, always present, never redefined:
//!
//! | role     | patterns               |
//! |----------|------------------------|
//! | `reader` | `*.read`               |
//! | `writer` | `*.read`, `*.write`    |
//! | `admin`  | `*`                    |
//!
//! `*.read` and `*.write` never match in the administrative namespaces (`iam`, `admin`:
//! `pattern::ADMINISTRATIVE_NAMESPACES`): a `writer` works with services and cannot manage
//! users, roles or keys — nor grant itself `admin`. Administration is granted by `admin` or by a
//! configured role that names it (`iam.users.*`, `iam.*`).
//!
//! Configured roles come from `[access.roles.<name>]`. At start-up every pattern is checked
//! ([`Roles::build`]): its syntax (`super::pattern`), and — the rule that catches typos — a
//! pattern confined to a namespace (`orders.*`, `orders.read`) must name either a namespace of
//! the gateway's registered capabilities (`iam`, `metrics`) or a service allowed to link
//! (`[services.orders]`). A pattern naming neither would grant nothing, silently, so the
//! gateway refuses to start instead, with the pattern's key path. `*` and `*.read` span
//! namespaces and are not checked against them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::config::AccessConfig;
use super::pattern::Pattern;
use super::registry::CapabilityRegistry;
use crate::config::ConfigError;

/// The built-in read-only role: `*.read`.
pub const READER: &str = "reader";
/// The built-in read-write role: `*.read`, `*.write`.
pub const WRITER: &str = "writer";
/// The built-in role granting everything: `*`.
pub const ADMIN: &str = "admin";
/// Names of the built-in roles.
pub const BUILT_IN: &[&str] = &[READER, WRITER, ADMIN];

/// One role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    name: Arc<str>,
    patterns: Box<[Pattern]>,
    built_in: bool,
    description: Option<Arc<str>>,
}

impl Role {
    fn new(name: &str, patterns: Vec<Pattern>, built_in: bool, description: Option<&str>) -> Self {
        Self {
            name: name.into(),
            patterns: patterns.into(),
            built_in,
            description: description.map(Into::into),
        }
    }

    /// Does the role grant `capability`?
    pub fn grants(&self, capability: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(capability))
    }

    /// The role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its patterns.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// One of `reader`, `writer`, `admin`?
    pub fn is_built_in(&self) -> bool {
        self.built_in
    }

    /// What it is for, when configured with a description.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
}

/// Every role the gateway knows, built-in and configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    by_name: BTreeMap<Arc<str>, Role>,
}

impl Default for Roles {
    fn default() -> Self {
        Self::built_in()
    }
}

impl Roles {
    /// The built-in roles only.
    pub fn built_in() -> Self {
        let p = |s: &str| Pattern::parse(s).unwrap_or(Pattern::Exact(Arc::from("")));
        let roles = [
            Role::new(READER, vec![p("*.read")], true, Some("reads everything")),
            Role::new(
                WRITER,
                vec![p("*.read"), p("*.write")],
                true,
                Some("reads and writes everything"),
            ),
            Role::new(ADMIN, vec![Pattern::All], true, Some("everything")),
        ];
        Self {
            by_name: roles.into_iter().map(|r| (r.name.clone(), r)).collect(),
        }
    }

    /// The built-in roles and those of `config` (at key path `at`, `access`), every pattern
    /// checked: its syntax, and that its namespace is one of `registry`'s gateway namespaces
    /// or one of `services` (the module documentation has the rule). Every problem is
    /// reported with its key path.
    pub fn build<S: AsRef<str>>(
        config: &AccessConfig,
        at: &str,
        registry: &CapabilityRegistry,
        services: impl IntoIterator<Item = S>,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errs = Vec::new();
        config.validate(at, &mut errs);
        let gateway = registry.gateway_namespaces();
        let services: Vec<S> = services.into_iter().collect();
        let known = |ns: &str| gateway.contains(ns) || services.iter().any(|s| s.as_ref() == ns);
        let mut roles = Self::built_in();
        for (name, rc) in &config.roles {
            let mut patterns = Vec::with_capacity(rc.capabilities.len());
            for (i, text) in rc.capabilities.iter().enumerate() {
                // Syntax errors were reported by `validate` above.
                let Ok(p) = Pattern::parse(text) else {
                    continue;
                };
                if let Some(ns) = p.namespace() {
                    if !known(ns) {
                        errs.push(ConfigError::new(
                            format!("{at}.roles.{name}.capabilities.{i}"),
                            format!(
                                "{text:?}: {ns:?} is neither a namespace of the gateway's capabilities nor a service in [services]"
                            ),
                        ));
                    }
                }
                patterns.push(p);
            }
            if !roles.by_name.contains_key(name.as_str()) {
                let role = Role::new(name, patterns, false, rc.description.as_deref());
                roles.by_name.insert(role.name.clone(), role);
            }
        }
        if errs.is_empty() {
            Ok(roles)
        } else {
            Err(errs)
        }
    }

    /// The role named `name`.
    pub fn get(&self, name: &str) -> Option<&Role> {
        self.by_name.get(name)
    }

    /// Every role, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::registry::{Requirement, METRICS_READ};

    fn config(roles: &[(&str, &[&str])]) -> AccessConfig {
        let mut c = AccessConfig::default();
        for (name, caps) in roles {
            c.roles.insert(
                name.to_string(),
                super::super::config::RoleConfig {
                    capabilities: caps.iter().map(|s| s.to_string()).collect(),
                    description: None,
                },
            );
        }
        c
    }

    fn registry() -> CapabilityRegistry {
        let r = CapabilityRegistry::new();
        r.register_operation("metrics", Requirement::Capability(METRICS_READ.into()))
            .unwrap();
        r
    }

    #[test]
    fn built_in_roles() {
        let r = Roles::built_in();
        let reader = r.get(READER).unwrap();
        assert!(reader.grants("orders.read") && !reader.grants("iam.users.read"));
        assert!(!reader.grants("orders.write"));
        let writer = r.get(WRITER).unwrap();
        assert!(writer.grants("orders.write") && writer.grants("orders.read"));
        assert!(!writer.grants("orders.create"));
        // A writer cannot administer identities (and so cannot grant itself admin).
        assert!(!writer.grants("iam.roles.write") && !writer.grants("iam.users.write"));
        assert!(r.get(ADMIN).unwrap().grants("iam.roles.write"));
        assert!(r.iter().all(Role::is_built_in));
    }

    #[test]
    fn configured_roles_are_checked_against_the_registry_and_services() {
        let c = config(&[
            (
                "clerk",
                &["orders.read", "orders.*", "*.read", "metrics.read", "*"],
            ),
            ("typo", &["ordrs.read", "orders.write", "iam.*"]),
        ]);
        let e = Roles::build(&c, "access", &registry(), ["orders"]).unwrap_err();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "access.roles.typo.capabilities.0",
                "access.roles.typo.capabilities.2"
            ],
            "{e:?}"
        );
        assert!(e[0].message.contains("\"ordrs\""), "{}", e[0].message);

        let c = config(&[("clerk", &["orders.read", "orders.create"])]);
        let roles = Roles::build(&c, "access", &registry(), ["orders"]).unwrap();
        let clerk = roles.get("clerk").unwrap();
        assert!(clerk.grants("orders.create") && !clerk.grants("orders.delete"));
        assert!(!clerk.is_built_in());
        assert!(roles.get(ADMIN).is_some());
    }

    #[test]
    fn built_in_names_cannot_be_redefined() {
        let c = config(&[("admin", &["orders.read"])]);
        let e = Roles::build(&c, "access", &registry(), ["orders"]).unwrap_err();
        assert_eq!(e[0].path, "access.roles.admin");
    }
}
