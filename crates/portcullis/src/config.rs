//! Gateway configuration: one TOML file, typed, with safe defaults and an explicit
//! [`Config::validate`] that names the offending field.
//!
//! Each section lives with the module that owns it and validates itself, naming the key path
//! it was given: [`StoreConfig`] in `store`, [`RuntimeConfig`] in `dataplane`, [`RoutingConfig`]
//! in `routing`, [`TelemetryConfig`] in `telemetry`. This module assembles them into
//! [`Config`], parses and overrides, and re-exports every section so `crate::config::X` names
//! each one wherever it lives. (The ingress, link and auth sections are still here: they move
//! to their modules once those modules' rewrites have landed; [`ShutdownConfig`] and
//! [`ServiceConfig`] likewise, with the server's and the link's.)
//!
//! Every struct denies unknown fields so a typo is an error, not a silently ignored setting.
//! Secrets are held in [`Secret`], whose `Debug` prints `***`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::dataplane::RuntimeConfig;
pub use crate::routing::RoutingConfig;
pub use crate::store::StoreConfig;
pub use crate::telemetry::TelemetryConfig;

/// A string that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// Serialising a secret writes the mask: the only reason to serialise configuration is to
/// show it.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl Secret {
    /// Wrap a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself; call only where it is used, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the gateway's own state: the SQLite store (`portcullis.db`) and the
    /// pepper file `portcullis init` writes. Default `./data` (relative to the working
    /// directory; production installs set e.g. `/var/lib/portcullis`). The CLI's
    /// `--data-dir` and `PORTCULLIS_DATA_DIR` override it.
    pub data_dir: PathBuf,
    /// Client-facing listener.
    pub ingress: IngressConfig,
    /// Service-facing link listener.
    pub link: LinkConfig,
    /// Routing and instance selection.
    pub routing: RoutingConfig,
    /// Services allowed to link, by name.
    pub services: BTreeMap<String, ServiceConfig>,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// Threads of the data plane.
    pub runtime: RuntimeConfig,
    /// Logs and trace export.
    pub telemetry: TelemetryConfig,
    /// Where identities live.
    pub store: StoreConfig,
    /// Authentication of clients.
    pub auth: AuthConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ingress: IngressConfig::default(),
            link: LinkConfig::default(),
            routing: RoutingConfig::default(),
            services: BTreeMap::new(),
            shutdown: ShutdownConfig::default(),
            runtime: RuntimeConfig::default(),
            telemetry: TelemetryConfig::default(),
            data_dir: PathBuf::from("./data"),
            store: StoreConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

/// Authentication of clients (API keys).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File holding the pepper API key secrets are hashed under (at least 32 bytes; hex is
    /// fine). `PORTCULLIS_PEPPER` takes precedence; absent both, `<data_dir>/pepper` (written
    /// by `portcullis init`). Never put the pepper itself in this file or the database.
    pub pepper_file: Option<PathBuf>,
    /// Version of the pepper, stored with every hash. Default 1.
    pub pepper_version: u32,
    /// How long a verified key stays in the in-memory verification cache. Changes made on
    /// this node invalidate it at once; changes from elsewhere within `invalidation_poll`.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Most keys held in the verification cache. Default 10000.
    pub cache_capacity: usize,
    /// How often the gateway checks the store for key changes made by other processes or
    /// nodes (the CLI, other gateways) and drops its cache when there are some. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub invalidation_poll: Duration,
    /// When set, `/metrics` requires a key with this scope. Absent: `/metrics` is open
    /// (bind it to a private interface or put it behind this).
    pub metrics_scope: Option<String>,
    /// Most rows kept in the audit log; the oldest are trimmed. Default 100000.
    pub audit_max_rows: u64,
    /// How long "no such key id" stays in the negative cache, so a key id that does not exist
    /// costs one store lookup per lifetime instead of one per try. Keys created on this node
    /// are seen at once, elsewhere within `invalidation_poll`. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub negative_cache_ttl: Duration,
    /// Most unknown key ids held in the negative cache (apart from `cache_capacity`, so a
    /// flood of random ids cannot evict real keys); the oldest go first. Default 10000.
    pub negative_cache_capacity: usize,
    /// Most verification lookups sent to the store at once; further cache misses wait for
    /// one. Concurrent misses for one key id share a lookup. Default 4.
    pub max_concurrent_lookups: usize,
    /// Most distinct key ids waiting for or in a store lookup; a miss beyond it is refused
    /// with 503 (fail closed) instead of queueing without bound. Default 1024.
    pub max_pending_lookups: usize,
    /// Deadline for one verification lookup, waiting included; past it the call fails closed
    /// with 503. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub lookup_timeout: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            pepper_file: None,
            pepper_version: 1,
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 10_000,
            invalidation_poll: Duration::from_secs(1),
            metrics_scope: None,
            audit_max_rows: 100_000,
            negative_cache_ttl: Duration::from_secs(30),
            negative_cache_capacity: 10_000,
            max_concurrent_lookups: 4,
            max_pending_lookups: 1024,
            lookup_timeout: Duration::from_secs(5),
        }
    }
}

/// TLS certificate and key, PEM files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

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
        }
    }
}

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
        }
    }
}

/// A service allowed to link.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// SHA-256 of the service's link token, lowercase hex (`portcullis hash-token` prints it).
    /// The token itself never appears in the configuration.
    pub token_sha256: Secret,
}

impl ServiceConfig {
    /// Check the entry at key path `at` (`services.<name>`), the name included.
    pub fn validate(&self, at: &str, name: &str, errs: &mut Vec<ConfigError>) {
        if !portcullis_link::valid_service_name(name) {
            errs.push(ConfigError::new(at, "service names are 1-63 of [a-z0-9-]"));
        }
        let h = self.token_sha256.expose();
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            errs.push(ConfigError::new(
                format!("{at}.token_sha256"),
                "must be 64 hex characters (see `portcullis hash-token`)",
            ));
        }
    }
}

/// Shutdown behaviour.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight calls may take to finish after a shutdown signal. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl ShutdownConfig {
    /// Check the section at key path `at` (`shutdown`). A zero grace period is allowed: it
    /// forces every connection closed at once.
    pub fn validate(&self, _at: &str, _errs: &mut Vec<ConfigError>) {}
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(30),
        }
    }
}

/// Why [`Config::load`] failed.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read (`path: reason`).
    Read(String),
    /// The configuration has problems, each with its key path.
    Invalid(Vec<ConfigError>),
}

/// A configuration problem, with the key path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Dotted key path, e.g. `ingress.max_body_bytes`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// The problem `message` at key path `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// The effective configuration of a process: the file at `path` (or nothing: defaults),
    /// then `PORTCULLIS_*` overrides from the environment.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, LoadError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| LoadError::Read(format!("{}: {e}", p.display())))?,
            None => String::new(),
        };
        Self::from_toml_with_env(&text, std::env::vars()).map_err(LoadError::Invalid)
    }

    /// Parse TOML text. Every unknown key and badly typed value is reported, each with its
    /// key path, not just the first.
    pub fn from_toml(text: &str) -> Result<Self, Vec<ConfigError>> {
        Self::from_toml_with_env(text, std::iter::empty())
    }

    /// Parse TOML text, then apply `PORTCULLIS_<SECTION>__<FIELD>=value` overrides from `env`
    /// (double underscore between levels; the value is read as a TOML value when it parses as
    /// one, e.g. numbers, booleans, arrays, otherwise as a string).
    pub fn from_toml_with_env(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| format!("line {}", 1 + text[..s.start].matches('\n').count()))
                .unwrap_or_else(|| "<file>".into());
            vec![ConfigError::new(line, e.message().to_string())]
        })?;
        for (k, v) in env {
            let Some(path) = k.strip_prefix("PORTCULLIS_") else {
                continue;
            };
            if !path.contains("__") {
                continue;
            }
            let keys: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let value = format!("v = {v}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(v));
            set_path(&mut table, &keys, value);
        }
        let mut errors = Vec::new();
        let mut value = toml::Value::Table(table);
        // Each pass reports one problem and removes the offending key, so the next pass can
        // find the next one. Bounded: a file has finitely many keys.
        for _ in 0..64 {
            match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
                Ok(cfg) => {
                    if errors.is_empty() {
                        cfg.validate()?;
                        return Ok(cfg);
                    }
                    if let Err(mut more) = cfg.validate() {
                        errors.append(&mut more);
                    }
                    return Err(errors);
                }
                Err(e) => {
                    let mut path: Vec<String> = e
                        .path()
                        .iter()
                        .filter_map(|seg| match seg {
                            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                            serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                            _ => None,
                        })
                        .collect();
                    let msg = e.inner().to_string();
                    let msg = msg.lines().next().unwrap_or_default().to_string();
                    if let Some(field) = msg
                        .strip_prefix("unknown field `")
                        .and_then(|r| r.split('`').next())
                    {
                        if path.last().map(String::as_str) != Some(field) {
                            path.push(field.to_string());
                        }
                    }
                    let shown = if path.is_empty() {
                        "<root>".to_string()
                    } else {
                        path.join(".")
                    };
                    errors.push(ConfigError::new(shown, msg));
                    if path.is_empty() || !remove_path(&mut value, &path) {
                        return Err(errors);
                    }
                }
            }
        }
        Err(errors)
    }

    /// The configuration as TOML, secrets masked.
    pub fn to_toml_masked(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Check every field; returns all problems found, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errs = Vec::new();
        let i = &self.ingress;
        if i.max_header_bytes < 8192 || i.max_header_bytes > 1024 * 1024 {
            errs.push(ConfigError::new(
                "ingress.max_header_bytes",
                "must be between 8192 and 1048576",
            ));
        }
        if i.max_concurrent_streams == 0 {
            errs.push(ConfigError::new(
                "ingress.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if i.max_connections == 0 {
            errs.push(ConfigError::new(
                "ingress.max_connections",
                "must be at least 1",
            ));
        }
        if i.max_in_flight == 0 {
            errs.push(ConfigError::new(
                "ingress.max_in_flight",
                "must be at least 1",
            ));
        }
        if i.header_read_timeout.is_zero() {
            errs.push(ConfigError::new(
                "ingress.header_read_timeout",
                "must be positive",
            ));
        }
        if i.idle_timeout.is_zero() {
            errs.push(ConfigError::new("ingress.idle_timeout", "must be positive"));
        }
        if i.park_after.is_zero() {
            // Zero would re-arm the park check without ever waiting while a call runs.
            errs.push(ConfigError::new("ingress.park_after", "must be positive"));
        }
        let l = &self.link;
        if l.heartbeat_interval < Duration::from_millis(50) {
            errs.push(ConfigError::new(
                "link.heartbeat_interval",
                "must be at least 50ms",
            ));
        }
        if l.handshake_timeout.is_zero() {
            errs.push(ConfigError::new(
                "link.handshake_timeout",
                "must be positive",
            ));
        }
        if l.max_frame_bytes < 1024 || l.max_frame_bytes > portcullis_link::MAX_FRAME_LEN {
            errs.push(ConfigError::new(
                "link.max_frame_bytes",
                format!(
                    "must be between 1024 and {}",
                    portcullis_link::MAX_FRAME_LEN
                ),
            ));
        }
        if l.max_concurrent_streams == 0 {
            errs.push(ConfigError::new(
                "link.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if l.hello_timeout.is_zero() {
            errs.push(ConfigError::new("link.hello_timeout", "must be positive"));
        }
        if l.max_pending_handshakes_per_ip == 0 {
            errs.push(ConfigError::new(
                "link.max_pending_handshakes_per_ip",
                "must be at least 1",
            ));
        }
        if l.stream_window_bytes < 65_535
            || u64::from(l.stream_window_bytes) * (u64::from(l.max_concurrent_streams) + 1)
                > u64::from(MAX_H2_WINDOW)
        {
            errs.push(ConfigError::new(
                "link.stream_window_bytes",
                format!(
                    "must be at least 65535, and times (link.max_concurrent_streams + 1) at most {MAX_H2_WINDOW}"
                ),
            ));
        }
        if i.response_stall_timeout.is_zero() {
            errs.push(ConfigError::new(
                "ingress.response_stall_timeout",
                "must be positive",
            ));
        }
        let a = &self.auth;
        if a.pepper_version == 0 {
            errs.push(ConfigError::new(
                "auth.pepper_version",
                "must be at least 1",
            ));
        }
        if a.cache_capacity == 0 {
            errs.push(ConfigError::new(
                "auth.cache_capacity",
                "must be at least 1",
            ));
        }
        if a.invalidation_poll < Duration::from_millis(10) {
            errs.push(ConfigError::new(
                "auth.invalidation_poll",
                "must be at least 10ms",
            ));
        }
        if let Some(scope) = &a.metrics_scope {
            if !crate::auth::valid_scope(scope) {
                errs.push(ConfigError::new(
                    "auth.metrics_scope",
                    "scopes are `*` or 1-128 of [a-z0-9._:-]",
                ));
            }
        }
        if a.audit_max_rows < 100 {
            errs.push(ConfigError::new(
                "auth.audit_max_rows",
                "must be at least 100",
            ));
        }
        for (path, v) in [
            ("auth.negative_cache_capacity", a.negative_cache_capacity),
            ("auth.max_concurrent_lookups", a.max_concurrent_lookups),
            ("auth.max_pending_lookups", a.max_pending_lookups),
        ] {
            if v == 0 {
                errs.push(ConfigError::new(path, "must be at least 1"));
            }
        }
        if a.lookup_timeout.is_zero() {
            errs.push(ConfigError::new("auth.lookup_timeout", "must be positive"));
        }
        self.routing.validate("routing", &mut errs);
        self.shutdown.validate("shutdown", &mut errs);
        self.runtime.validate("runtime", &mut errs);
        self.telemetry.validate("telemetry", &mut errs);
        self.store.validate("store", &mut errs);
        for (name, svc) in &self.services {
            svc.validate(&format!("services.{name}"), name, &mut errs);
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) {
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    let mut t = table;
    for k in parents {
        let entry = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let Some(next) = entry.as_table_mut() else {
            return;
        };
        t = next;
    }
    t.insert(last.clone(), value);
}

fn remove_path(v: &mut toml::Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = v;
    for k in parents {
        let next = match cur {
            toml::Value::Table(t) => t.get_mut(k),
            toml::Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        };
        let Some(n) = next else { return false };
        cur = n;
    }
    match cur {
        toml::Value::Table(t) => t.remove(last).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_field_is_an_error() {
        let e = Config::from_toml("[ingress]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n").unwrap_err();
        assert!(e[0].message.contains("bogus"), "{e:?}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let e = Config::from_toml(
            "[link]\nheartbeat_interval = \"1ms\"\n[services.echo]\ntoken_sha256 = \"x\"\n",
        )
        .unwrap_err();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["link.heartbeat_interval", "services.echo.token_sha256"]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let e = Config::from_toml(
            "[ingress]\nbogus = 1\nmax_body_bytes = \"lots\"\n[link]\nheartbeat_interval = 5\n",
        )
        .unwrap_err();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "ingress.bogus",
                "ingress.max_body_bytes",
                "link.heartbeat_interval"
            ],
            "{e:?}"
        );
    }

    #[test]
    fn env_overrides_apply() {
        let env = vec![
            (
                "PORTCULLIS_INGRESS__MAX_BODY_BYTES".to_string(),
                "1234".to_string(),
            ),
            (
                "PORTCULLIS_ROUTING__REGION".to_string(),
                "eu-west".to_string(),
            ),
            ("PORTCULLIS_LOG".to_string(), "debug".to_string()),
        ];
        let c = Config::from_toml_with_env("", env.into_iter()).unwrap();
        assert_eq!(c.ingress.max_body_bytes, 1234);
        assert_eq!(c.routing.region.as_deref(), Some("eu-west"));
    }

    #[test]
    fn masked_rendering_hides_secrets() {
        let mut c = Config::default();
        c.services.insert(
            "echo".into(),
            ServiceConfig {
                token_sha256: Secret::new("ab".repeat(32)),
            },
        );
        let shown = c.to_toml_masked();
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    fn store_and_auth_sections() {
        let c = Config::from_toml(
            "data_dir = \"/var/lib/portcullis\"\n[store]\nurl = \"postgres://u:hunter2@db/p\"\n[auth]\ncache_ttl = \"5s\"\nmetrics_scope = \"metrics.read\"\n",
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/portcullis"));
        assert_eq!(c.auth.cache_ttl, Duration::from_secs(5));
        let shown = c.to_toml_masked();
        assert!(!shown.contains("hunter2"), "{shown}");
        let e = Config::from_toml("[store]\nurl = \"mysql://x\"\n[auth]\npepper = \"x\"\n")
            .unwrap_err();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["auth.pepper", "store.url"], "{e:?}");
    }

    #[test]
    fn secrets_do_not_debug() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
    }
}
