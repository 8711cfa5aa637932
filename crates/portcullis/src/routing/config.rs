//! The `[routing]` section: how the gateway picks an instance and how long it waits for one.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::config::ConfigError;

/// Routing and instance selection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Region this gateway runs in; instances in it are preferred.
    pub region: Option<String>,
    /// Regions preferred after the gateway's own, in order.
    pub neighbour_regions: Vec<String>,
    /// Time to wait for a response head when an endpoint declares none. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            region: None,
            neighbour_regions: Vec::new(),
            default_timeout: Duration::from_secs(30),
        }
    }
}

impl RoutingConfig {
    /// Check the section at key path `at` (`routing`).
    pub fn validate(&self, at: &str, errs: &mut Vec<ConfigError>) {
        if self.default_timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.default_timeout"),
                "must be positive",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_default_timeout_is_refused_at_the_given_path() {
        let mut errs = Vec::new();
        RoutingConfig {
            default_timeout: Duration::ZERO,
            ..RoutingConfig::default()
        }
        .validate("routing", &mut errs);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "routing.default_timeout");
    }
}
