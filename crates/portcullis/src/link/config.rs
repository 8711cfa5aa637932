//! The `[link]` configuration section, with the module that owns it: its fields, defaults
//! and its own validation, naming each problem's key path.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::ConfigError;
use crate::config::TlsConfig;

/// Largest HTTP/2 flow-control window (RFC 9113 §6.9.1).
pub const MAX_H2_WINDOW: u32 = (1 << 31) - 1;

/// Service-facing link listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    /// Address services dial. Default `127.0.0.1:7070`.
    pub listen: SocketAddr,
    /// Require TLS on links with this certificate. Absent: plain TCP (development only).
    pub tls: Option<TlsConfig>,
    /// Interval of PINGs and health exchanges; a link silent for three intervals is dropped.
    /// Default 5 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Time a service has to complete the handshake. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Largest handshake frame body accepted, bytes (at most 1 MiB). Default 1 MiB.
    pub max_frame_bytes: u32,
    /// Concurrent calls the gateway opens on one link. Default 1000.
    pub max_concurrent_streams: u32,
    /// Time a new link connection has to deliver a complete HELLO (TLS included) before
    /// it loses its handshake slot: a silent connection holds one only this long (capped by
    /// `handshake_timeout`). Default 3 s.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// Handshakes one source address may have in progress; at the cap its oldest connection
    /// that has not yet sent a complete HELLO makes room. Default 32.
    pub max_pending_handshakes_per_ip: usize,
    /// HTTP/2 receive window of each call on a link, bytes: the most one response stream can
    /// hold in the gateway when its client stops reading. The link's connection window is
    /// this times `max_concurrent_streams` (plus one window), so stalled streams can never
    /// exhaust it for the others. Default 256 KiB.
    pub stream_window_bytes: u32,
    /// The issuer (`iss`) of the identity assertions the gateway adds to forwarded calls,
    /// sent to every service in HELLO_ACK: 1-128 of `[A-Za-z0-9._-]`. Gateway nodes that share
    /// signing keys should share it. Default `portcullis`.
    pub assertion_issuer: String,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            tls: None,
            heartbeat_interval: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_frame_bytes: portcullis_link::MAX_FRAME_LEN,
            max_concurrent_streams: 1000,
            hello_timeout: Duration::from_secs(3),
            max_pending_handshakes_per_ip: 32,
            stream_window_bytes: 256 * 1024,
            assertion_issuer: "portcullis".into(),
        }
    }
}

impl LinkConfig {
    /// Check the section at key path `at` (`link`), adding every problem to `errs`.
    pub fn validate(&self, at: &str, errs: &mut Vec<ConfigError>) {
        if let Some(t) = &self.tls {
            t.validate(&format!("{at}.tls"), errs);
        }
        if self.heartbeat_interval < Duration::from_millis(50) {
            errs.push(ConfigError::new(
                format!("{at}.heartbeat_interval"),
                "must be at least 50ms",
            ));
        }
        if self.handshake_timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.handshake_timeout"),
                "must be positive",
            ));
        }
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > portcullis_link::MAX_FRAME_LEN {
            errs.push(ConfigError::new(
                format!("{at}.max_frame_bytes"),
                format!(
                    "must be between 1024 and {}",
                    portcullis_link::MAX_FRAME_LEN
                ),
            ));
        }
        if self.max_concurrent_streams == 0 {
            errs.push(ConfigError::new(
                format!("{at}.max_concurrent_streams"),
                "must be at least 1",
            ));
        }
        if self.hello_timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.hello_timeout"),
                "must be positive",
            ));
        }
        if self.max_pending_handshakes_per_ip == 0 {
            errs.push(ConfigError::new(
                format!("{at}.max_pending_handshakes_per_ip"),
                "must be at least 1",
            ));
        }
        if !portcullis_link::valid_token(&self.assertion_issuer) {
            errs.push(ConfigError::new(
                format!("{at}.assertion_issuer"),
                "must be 1-128 of [A-Za-z0-9._-]",
            ));
        }
        if self.stream_window_bytes < 65_535
            || u64::from(self.stream_window_bytes) * (u64::from(self.max_concurrent_streams) + 1)
                > u64::from(MAX_H2_WINDOW)
        {
            errs.push(ConfigError::new(
                format!("{at}.stream_window_bytes"),
                format!(
                    "must be at least 65535, and times (link.max_concurrent_streams + 1) at most {MAX_H2_WINDOW}"
                ),
            ));
        }
    }
}
