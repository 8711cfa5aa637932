//! The `[access]` configuration section, with the module that owns it: configured roles and
//! the decision cache, validated here with each problem's key path.
//!
//! ```toml
//! [access]
//! cache_capacity = 10000
//! cache_ttl = "30s"
//!
//! [access.roles.orders-clerk]
//! capabilities = ["orders.read", "orders.create"]
//! description = "Takes and reads orders"
//! ```
//!
//! [`AccessConfig::validate`] checks what the file alone can tell: role names, that no
//! built-in role is redefined, the bounds, and every pattern's syntax
//! (`super::pattern`). Whether each pattern's namespace exists needs the capability registry
//! and is checked when the gateway starts (`super::roles::Roles::build`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

use super::pattern::Pattern;
use super::roles::BUILT_IN;
use crate::config::ConfigError;

/// Most roles one configuration may define.
pub const MAX_ROLES: usize = 1024;
/// Most patterns one role may hold.
pub const MAX_PATTERNS: usize = 256;
/// Longest role description, bytes.
pub const MAX_DESCRIPTION: usize = 256;

/// Access control: roles beyond the built-in `reader`, `writer`, `admin`, and the decision
/// cache.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Most decisions (and, apart, subjects' role bindings) held in memory. Default 10000.
    pub cache_capacity: usize,
    /// How long a decision stays cached at most. A change to keys, bindings, roles or
    /// workspaces drops every cached decision when the store's change generation moves
    /// (`auth.invalidation_poll`), so this is a backstop, not the delay of a revocation.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Role-binding lookups sent to the identity store at once; further misses wait. Default 4.
    pub max_concurrent_lookups: usize,
    /// Deadline of one role-binding lookup, waiting included; past it the call is denied.
    /// Default 5 s.
    #[serde(with = "humantime_serde")]
    pub lookup_timeout: Duration,
    /// Configured roles, by name (1-63 of `[a-z0-9-]`). Built-in names cannot be redefined.
    pub roles: BTreeMap<String, RoleConfig>,
}

/// One configured role.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Capability patterns the role grants: `*`, `orders.*`, `*.read` or an exact name
    /// (grammar in `access::pattern`). At least one, at most 256.
    pub capabilities: Vec<String>,
    /// What the role is for, for people reading bindings. At most 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            cache_capacity: 10_000,
            cache_ttl: Duration::from_secs(30),
            max_concurrent_lookups: 4,
            lookup_timeout: Duration::from_secs(5),
            roles: BTreeMap::new(),
        }
    }
}

/// Is `name` a role name: 1-63 of `[a-z0-9-]`, not starting or ending with `-`?
pub fn valid_role_name(name: &str) -> bool {
    portcullis_link::valid_service_name(name)
}

impl AccessConfig {
    /// Check the section at key path `at` (`access`), adding every problem to `errs`.
    pub fn validate(&self, at: &str, errs: &mut Vec<ConfigError>) {
        if self.cache_capacity == 0 {
            errs.push(ConfigError::new(
                format!("{at}.cache_capacity"),
                "must be at least 1",
            ));
        }
        if self.cache_ttl.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.cache_ttl"),
                "must be positive",
            ));
        }
        if self.max_concurrent_lookups == 0 {
            errs.push(ConfigError::new(
                format!("{at}.max_concurrent_lookups"),
                "must be at least 1",
            ));
        }
        if self.lookup_timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.lookup_timeout"),
                "must be positive",
            ));
        }
        if self.roles.len() > MAX_ROLES {
            errs.push(ConfigError::new(
                format!("{at}.roles"),
                format!("at most {MAX_ROLES} roles"),
            ));
        }
        for (name, role) in &self.roles {
            let here = format!("{at}.roles.{name}");
            if BUILT_IN.contains(&name.as_str()) {
                errs.push(ConfigError::new(
                    &here,
                    "is a built-in role (reader, writer, admin) and cannot be redefined",
                ));
            } else if !valid_role_name(name) {
                errs.push(ConfigError::new(&here, "role names are 1-63 of [a-z0-9-]"));
            }
            role.validate(&here, errs);
        }
    }
}

impl RoleConfig {
    /// Check the role at key path `at` (`access.roles.<name>`).
    pub fn validate(&self, at: &str, errs: &mut Vec<ConfigError>) {
        if self.capabilities.is_empty() || self.capabilities.len() > MAX_PATTERNS {
            errs.push(ConfigError::new(
                format!("{at}.capabilities"),
                format!("a role grants 1-{MAX_PATTERNS} capability patterns"),
            ));
        }
        for (i, p) in self.capabilities.iter().enumerate() {
            if let Err(e) = Pattern::parse(p) {
                errs.push(ConfigError::new(
                    format!("{at}.capabilities.{i}"),
                    format!("{p:?}: {e}"),
                ));
            }
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION)
        {
            errs.push(ConfigError::new(
                format!("{at}.description"),
                format!("at most {MAX_DESCRIPTION} bytes"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> AccessConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn paths(c: &AccessConfig) -> Vec<String> {
        let mut errs = Vec::new();
        c.validate("access", &mut errs);
        errs.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn defaults_and_a_good_role_validate() {
        assert!(paths(&AccessConfig::default()).is_empty());
        let c = parse(
            "cache_ttl = \"5s\"\n[roles.orders-clerk]\ncapabilities = [\"orders.read\", \"orders.*\", \"*.read\"]\n",
        );
        assert_eq!(c.cache_ttl, Duration::from_secs(5));
        assert_eq!(c.roles["orders-clerk"].capabilities.len(), 3);
        assert!(paths(&c).is_empty());
    }

    #[test]
    fn each_problem_names_its_key_path() {
        let c = parse(
            "cache_capacity = 0\n[roles.admin]\ncapabilities = [\"*\"]\n[roles.Bad]\ncapabilities = []\n[roles.ok]\ncapabilities = [\"orders.read\", \"orders.*.read\"]\n",
        );
        assert_eq!(
            paths(&c),
            [
                "access.cache_capacity",
                "access.roles.Bad",
                "access.roles.Bad.capabilities",
                "access.roles.admin",
                "access.roles.ok.capabilities.1",
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(
            toml::from_str::<AccessConfig>("[roles.x]\ncapabilities = [\"a\"]\nbogus = 1\n")
                .is_err()
        );
        assert!(toml::from_str::<AccessConfig>("bogus = 1\n").is_err());
    }
}
