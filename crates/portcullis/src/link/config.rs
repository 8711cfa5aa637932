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
    /// CA bundle (PEM) of the client certificates services present for `auth = ["mtls"]`.
    /// Needs `tls`. Absent: no client certificate is asked for.
    pub client_ca: Option<std::path::PathBuf>,
    /// Certificate revocation lists (PEM or DER files) of the CAs in `client_ca`: a client
    /// certificate they list is refused (`link_mtls_revoked`). When any is given, every CA of
    /// a chain needs its CRL. Read at start; a file that cannot be read or parsed stops it.
    /// Needs `client_ca`. Default: none.
    pub client_crls: Vec<std::path::PathBuf>,
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
    /// Enrolment of Ed25519 instance keys by pairing, and the checks of every signed HELLO.
    pub pairing: PairingConfig,
}

/// The `[link.pairing]` section (docs/link-protocol.md §10).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PairingConfig {
    /// How long a pending pairing waits for an admin before it lapses (the instance then gets
    /// a new code on its next attempt). Default 15 min.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Pending pairings allowed at once; at the bound, new keys are answered `unavailable`.
    /// Default 1000.
    pub max_pending: u32,
    /// Largest difference allowed between a HELLO's signed timestamp and the gateway's clock;
    /// further off is `stale_timestamp`. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub max_skew: Duration,
    /// Bad signatures an enrolled key may fail with within `failure_window`; one more
    /// revokes it (re-pairing required). Default 10.
    pub max_failures: u32,
    /// The window of `max_failures`. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// How long the instance is asked to wait before dialling again while its pairing is
    /// pending (`retry_after_ms` of `pairing_required`). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Notify this webhook of every pending pairing (signed JSON, retried). Absent: none.
    pub webhook: Option<super::webhook::WebhookConfig>,
}

impl Default for PairingConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15 * 60),
            max_pending: 1000,
            max_skew: Duration::from_secs(30),
            max_failures: 10,
            failure_window: Duration::from_secs(60),
            retry_after: Duration::from_secs(5),
            webhook: None,
        }
    }
}

impl PairingConfig {
    /// Check the section at key path `at` (`link.pairing`).
    pub fn validate(&self, at: &str, errs: &mut Vec<ConfigError>) {
        if self.ttl < Duration::from_secs(1) {
            errs.push(ConfigError::new(format!("{at}.ttl"), "must be at least 1s"));
        }
        if self.max_pending == 0 {
            errs.push(ConfigError::new(
                format!("{at}.max_pending"),
                "must be at least 1",
            ));
        }
        if self.max_skew < Duration::from_secs(1) || self.max_skew > Duration::from_secs(600) {
            errs.push(ConfigError::new(
                format!("{at}.max_skew"),
                "must be between 1s and 10m",
            ));
        }
        if let Some(w) = &self.webhook {
            w.validate(&format!("{at}.webhook"), errs);
        }
        if self.failure_window.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.failure_window"),
                "must be positive",
            ));
        }
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            tls: None,
            client_ca: None,
            client_crls: Vec::new(),
            heartbeat_interval: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_frame_bytes: portcullis_link::MAX_FRAME_LEN,
            max_concurrent_streams: 1000,
            hello_timeout: Duration::from_secs(3),
            max_pending_handshakes_per_ip: 32,
            stream_window_bytes: 256 * 1024,
            assertion_issuer: "portcullis".into(),
            pairing: PairingConfig::default(),
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
        self.pairing.validate(&format!("{at}.pairing"), errs);
        if self.client_ca.is_some() && self.tls.is_none() {
            errs.push(ConfigError::new(
                format!("{at}.client_ca"),
                "needs link.tls: client certificates are a TLS feature",
            ));
        }
        if !self.client_crls.is_empty() && self.client_ca.is_none() {
            errs.push(ConfigError::new(
                format!("{at}.client_crls"),
                "needs link.client_ca: revocation lists belong to the client CA",
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
