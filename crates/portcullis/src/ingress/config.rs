//! The `[ingress]` configuration section, with the module that owns it: its fields, defaults
//! and its own validation, naming each problem's key path.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::ConfigError;
use crate::config::TlsConfig;

/// Client-facing listener and its limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Serve HTTPS (ALPN h2 and http/1.1) with this certificate. Absent: plain HTTP/1.1 and h2c.
    pub tls: Option<TlsConfig>,
    /// Time a client has to send a complete request head. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list), bytes. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Largest request body, bytes; larger ones get 413. Default 1 GiB.
    pub max_body_bytes: u64,
    /// Concurrent HTTP/2 streams per client connection. Default 256.
    pub max_concurrent_streams: u32,
    /// A connection with no call in progress for this long is closed. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// An HTTP/1.1 connection (plain TCP) with no call for this long drops its per-connection
    /// buffers and waits on the bare socket until the client sends again, so idle keep-alive
    /// connections cost little memory. Default 50 ms.
    #[serde(with = "humantime_serde")]
    pub park_after: Duration,
    /// Concurrent client connections; further accepts wait. Default 20000.
    pub max_connections: usize,
    /// Calls in progress on the whole gateway (every connection, every protocol) past which
    /// new calls are shed with 503 and `Retry-After` instead of queueing. Default 10000.
    pub max_in_flight: usize,
    /// A relayed response body whose data waits while its client takes none for this long
    /// is cut (the service's stream is cancelled, the client's response ends in error), so a
    /// client that stops reading holds a link's flow-control window for a bounded time.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub response_stall_timeout: Duration,
    /// A request body from which no byte arrives for this long (after its head, between
    /// chunks) is ended: the service's stream is cancelled, the client is answered 408 if no
    /// response has started, and the stall is logged. Bounds how long a client that stops
    /// sending holds a call slot and a stream to a service. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub request_body_stall_timeout: Duration,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_body_bytes: 1 << 30,
            max_concurrent_streams: 256,
            idle_timeout: Duration::from_secs(60),
            park_after: Duration::from_millis(50),
            max_connections: 20_000,
            max_in_flight: 10_000,
            response_stall_timeout: Duration::from_secs(30),
            request_body_stall_timeout: Duration::from_secs(30),
        }
    }
}

impl IngressConfig {
    /// Check the section at key path `at` (`ingress`), adding every problem to `errs`.
    pub fn validate(&self, at: &str, errs: &mut Vec<ConfigError>) {
        if let Some(t) = &self.tls {
            t.validate(&format!("{at}.tls"), errs);
        }
        if self.max_header_bytes < 8192 || self.max_header_bytes > 1024 * 1024 {
            errs.push(ConfigError::new(
                format!("{at}.max_header_bytes"),
                "must be between 8192 and 1048576",
            ));
        }
        if self.max_concurrent_streams == 0 {
            errs.push(ConfigError::new(
                format!("{at}.max_concurrent_streams"),
                "must be at least 1",
            ));
        }
        if self.max_connections == 0 {
            errs.push(ConfigError::new(
                format!("{at}.max_connections"),
                "must be at least 1",
            ));
        }
        if self.max_in_flight == 0 {
            errs.push(ConfigError::new(
                format!("{at}.max_in_flight"),
                "must be at least 1",
            ));
        }
        if self.header_read_timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.header_read_timeout"),
                "must be positive",
            ));
        }
        if self.idle_timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.idle_timeout"),
                "must be positive",
            ));
        }
        if self.park_after.is_zero() {
            // Zero would re-arm the park check without ever waiting while a call runs.
            errs.push(ConfigError::new(
                format!("{at}.park_after"),
                "must be positive",
            ));
        }
        if self.response_stall_timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.response_stall_timeout"),
                "must be positive",
            ));
        }
        if self.request_body_stall_timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.request_body_stall_timeout"),
                "must be positive",
            ));
        }
    }
}

/// The optional monitoring listener: health probes and metric scrapes on a port of their own
/// (`[monitoring]`), so they need not share the public one.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringConfig {
    /// Address serving `/health/*` and `/metrics` (plain HTTP/1.1 and h2c). When set,
    /// `/metrics` leaves the ingress (it answers 404 there); `/health/*` stays on both.
    /// Absent (the default): both are on the ingress only.
    pub listen: Option<SocketAddr>,
    /// Concurrent connections to it; further connections wait to be accepted. Between 1 and
    /// 10000. Default 64.
    pub max_connections: usize,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_connections: 64,
        }
    }
}

impl MonitoringConfig {
    /// Most concurrent HTTP/2 streams per monitoring connection: a scraper or a probe needs
    /// one or two, and connections × streams bounds the calls it can have in flight.
    pub const MAX_STREAMS: u32 = 16;

    /// Check the section at key path `at` (`monitoring`); `others` are the other listeners'
    /// addresses, which it may not share.
    pub fn validate(&self, at: &str, others: &[(&str, SocketAddr)], errs: &mut Vec<ConfigError>) {
        if !(1..=10_000).contains(&self.max_connections) {
            errs.push(ConfigError::new(
                format!("{at}.max_connections"),
                "must be between 1 and 10000",
            ));
        }
        if let Some(listen) = self.listen {
            for (key, addr) in others {
                if listen.port() != 0 && *addr == listen {
                    errs.push(ConfigError::new(
                        format!("{at}.listen"),
                        format!("is the address of {key} ({addr}); give it a port of its own"),
                    ));
                }
            }
        }
    }

    /// The listener settings of the monitoring port: the ingress's timeouts and head limits,
    /// no TLS, its own connection limit, few streams, small bodies (probes and scrapes send
    /// none).
    pub fn ingress(&self, ingress: &IngressConfig) -> Option<IngressConfig> {
        Some(IngressConfig {
            listen: self.listen?,
            tls: None,
            max_connections: self.max_connections,
            max_concurrent_streams: ingress.max_concurrent_streams.min(Self::MAX_STREAMS),
            max_body_bytes: 64 * 1024,
            ..ingress.clone()
        })
    }
}

#[cfg(test)]
mod monitoring_tests {
    use super::*;

    #[test]
    fn the_monitoring_listener_needs_a_port_of_its_own_and_a_bounded_connection_limit() {
        let ingress: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let cfg = MonitoringConfig {
            listen: Some(ingress),
            max_connections: 0,
        };
        let mut errs = Vec::new();
        cfg.validate("monitoring", &[("ingress.listen", ingress)], &mut errs);
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["monitoring.max_connections", "monitoring.listen"]);
        assert!(
            errs[1].message.contains("ingress.listen"),
            "{}",
            errs[1].message
        );
        // Port 0 picks a free port for each listener: never a clash.
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut errs = Vec::new();
        MonitoringConfig {
            listen: Some(any),
            ..Default::default()
        }
        .validate("monitoring", &[("ingress.listen", any)], &mut errs);
        assert!(errs.is_empty());
        assert!(MonitoringConfig::default()
            .ingress(&IngressConfig::default())
            .is_none());
    }
}
