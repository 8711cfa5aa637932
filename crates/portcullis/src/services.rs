//! `portcullis services list` and `GET /api/v1/iam/services`: the linked services as an
//! operator sees them — each instance's links with their state (Online, Unstable, Draining),
//! round-trip time, calls in flight, the credential that proved the link, its key's
//! fingerprint and since when.
//!
//! The registry lives in the running gateway, so the CLI asks its API (with the API key in
//! `PORTCULLIS_KEY`, never on the command line); the view is the same serde shape both ways.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;

use crate::admin::{AdminError, Timestamp};
use crate::cli::Render;
use crate::routing::Registry;

/// One link of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    /// The instance id of the link (the SDK names extra links `<instance>.<k>`).
    pub instance: String,
    /// The gateway's link id.
    pub link_id: String,
    /// `online`, `unstable`, `draining` or `offline`.
    pub state: String,
    /// Smoothed PING round-trip time, milliseconds.
    pub rtt_ms: f64,
    /// Calls in flight on the link.
    pub in_flight: u32,
    /// What proved it: `service_token`, `ed25519`, `mtls`, `mtls+ed25519`, `mtls+service_token`.
    pub credential: String,
    /// The enrolled key's fingerprint, for a key credential.
    pub key_fingerprint: Option<String>,
    /// Linked since (RFC 3339).
    pub since: String,
    /// Region the instance declared.
    pub region: Option<String>,
    /// Version the instance declared.
    pub version: String,
}

/// A service and its links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Service name.
    pub service: String,
    /// Its links, by instance id.
    pub links: Vec<LinkView>,
}

/// `services list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    /// By name.
    pub services: Vec<ServiceView>,
}

/// The linked services of `registry` now.
pub fn list_on(registry: &Registry) -> ServiceList {
    let mut by: std::collections::BTreeMap<String, Vec<LinkView>> = Default::default();
    for i in registry.instances() {
        by.entry(i.service.to_string()).or_default().push(LinkView {
            instance: i.instance_id.to_string(),
            link_id: i.link_id.to_string(),
            state: i.state().as_str().to_string(),
            rtt_ms: i.rtt_us() as f64 / 1000.0,
            in_flight: i.in_flight(),
            credential: i.credential.to_string(),
            key_fingerprint: i.key_fingerprint.as_deref().map(str::to_string),
            since: Timestamp(i.since_ms).to_string(),
            region: i.region.as_deref().map(str::to_string),
            version: i.version.to_string(),
        });
    }
    ServiceList {
        services: by
            .into_iter()
            .map(|(service, mut links)| {
                links.sort_by(|a, b| a.instance.cmp(&b.instance));
                ServiceView { service, links }
            })
            .collect(),
    }
}

/// `services list` against the gateway at `base` (`http://host:port`), with `api_key`.
pub fn list_remote(base: &str, api_key: &str) -> Result<ServiceList, AdminError> {
    let url = format!("{}/api/v1/iam/services", base.trim_end_matches('/'));
    let (status, bytes) = crate::cli::call_gateway(
        http::Method::GET,
        &url,
        Some(api_key),
        None,
        Duration::from_secs(30),
    )?;
    match status {
        200 => serde_json::from_slice(&bytes)
            .map_err(|_| AdminError::failure("the gateway's answer is not a service list")),
        401 => Err(AdminError::failure(
            "the gateway refused the key in PORTCULLIS_KEY",
        )),
        403 => Err(AdminError::failure(
            "the key in PORTCULLIS_KEY may not read services (iam.services.read in *)",
        )),
        s => Err(AdminError::failure(format!("the gateway answered {s}"))),
    }
}

impl Render for ServiceList {
    fn text(&self) -> String {
        if self.services.is_empty() {
            return "No service is linked.\n".into();
        }
        let mut text = format!(
            "{:<20} {:<28} {:<9} {:>8} {:>9} {:<20} {:<22} KEY\n",
            "SERVICE", "INSTANCE", "STATE", "RTT ms", "IN FLIGHT", "CREDENTIAL", "SINCE"
        );
        for s in &self.services {
            for l in &s.links {
                let _ = writeln!(
                    text,
                    "{:<20} {:<28} {:<9} {:>8.2} {:>9} {:<20} {:<22} {}",
                    s.service,
                    l.instance,
                    l.state,
                    l.rtt_ms,
                    l.in_flight,
                    l.credential,
                    l.since,
                    l.key_fingerprint.as_deref().unwrap_or("-"),
                );
            }
        }
        text
    }
}
