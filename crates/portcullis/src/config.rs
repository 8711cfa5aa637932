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
use std::path::PathBuf;
use std::time::Duration;

pub use crate::access::AccessConfig;
pub use crate::auth::AuthConfig;
pub use crate::dataplane::RuntimeConfig;
pub use crate::ingress::{IngressConfig, MonitoringConfig};
pub use crate::link::{LinkConfig, MAX_H2_WINDOW};
pub use crate::routing::RoutingConfig;
pub use crate::sessions::{BackendConfig, SessionsConfig};
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
    /// The optional listener of health probes and metric scrapes.
    pub monitoring: MonitoringConfig,
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
    /// Access control: configured roles and the decision cache.
    pub access: AccessConfig,
    /// Sessions: limits, leases, queues and the worker protocol's timings.
    pub sessions: SessionsConfig,
    /// Session backends, by name: process workers and linked services serving pinned
    /// sessions.
    pub backends: BTreeMap<String, BackendConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ingress: IngressConfig::default(),
            link: LinkConfig::default(),
            monitoring: MonitoringConfig::default(),
            routing: RoutingConfig::default(),
            services: BTreeMap::new(),
            shutdown: ShutdownConfig::default(),
            runtime: RuntimeConfig::default(),
            telemetry: TelemetryConfig::default(),
            data_dir: PathBuf::from("./data"),
            store: StoreConfig::default(),
            auth: AuthConfig::default(),
            access: AccessConfig::default(),
            sessions: SessionsConfig::default(),
            backends: BTreeMap::new(),
        }
    }
}

/// TLS certificate and key, PEM files, and session resumption.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// Resume sessions with stateless tickets (TLS 1.3 and 1.2): the client keeps its session,
    /// sealed under a key only this process holds, so resumption costs no server memory per
    /// client. Default true.
    #[serde(default = "default_true")]
    pub session_tickets: bool,
    /// How often the ticket key is replaced; a ticket opens for at most twice this. Between
    /// 1 min and 24 h. Default 1 h.
    #[serde(default = "default_ticket_rotation", with = "humantime_serde")]
    pub ticket_rotation: std::time::Duration,
    /// Most TLS 1.2 sessions held for clients that resume by session id instead of a ticket
    /// (the least recently used go first). At most 1000000; 0 turns it off. Default 10000.
    #[serde(default = "default_session_cache")]
    pub session_cache: usize,
}

fn default_true() -> bool {
    true
}

fn default_ticket_rotation() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}

fn default_session_cache() -> usize {
    10_000
}

impl TlsConfig {
    /// The certificate chain at `cert` and its key at `key`, resumption as by default.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            session_tickets: true,
            ticket_rotation: default_ticket_rotation(),
            session_cache: default_session_cache(),
        }
    }

    /// Check the section at key path `at` (`ingress.tls`, `link.tls`).
    pub fn validate(&self, at: &str, errs: &mut Vec<ConfigError>) {
        let r = self.ticket_rotation;
        if r < std::time::Duration::from_secs(60) || r > std::time::Duration::from_secs(86_400) {
            errs.push(ConfigError::new(
                format!("{at}.ticket_rotation"),
                "must be between 1m and 24h",
            ));
        }
        if self.session_cache > 1_000_000 {
            errs.push(ConfigError::new(
                format!("{at}.session_cache"),
                "must be at most 1000000",
            ));
        }
    }
}

/// A service allowed to link.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// SHA-256 of the service's static link token, lowercase hex (`portcullis hash-token`
    /// prints it). The token itself never appears in the configuration. Needed when `auth`
    /// has `token` (the default when it is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<Secret>,
    /// The credentials a link of this service must present, every one of them:
    /// `["token"]` (a static token, development), `["ed25519"]` (an instance key enrolled
    /// by pairing, docs/link-protocol.md §10), `["mtls"]` (a client certificate from
    /// `link.client_ca` naming the service), or `mtls` with one of the others. Default:
    /// `["token"]` when `token_sha256` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth: Vec<LinkAuthKind>,
}

/// A kind of link credential a service may be required to present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkAuthKind {
    /// A static service token (`token_sha256`).
    Token,
    /// An Ed25519 instance key enrolled by pairing.
    Ed25519,
    /// A TLS client certificate from `link.client_ca`, not revoked by `link.client_crls`,
    /// naming the service (SAN dNSName; the CN only without any DNS or URI SAN).
    Mtls,
}

impl LinkAuthKind {
    /// Stable name, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Ed25519 => "ed25519",
            Self::Mtls => "mtls",
        }
    }
}

impl ServiceConfig {
    /// A service that links with a static token whose SHA-256 is `hash_hex`.
    pub fn token(hash_hex: impl Into<String>) -> Self {
        Self {
            token_sha256: Some(Secret::new(hash_hex)),
            auth: Vec::new(),
        }
    }

    /// A service whose instances link with enrolled Ed25519 keys.
    pub fn ed25519() -> Self {
        Self {
            token_sha256: None,
            auth: vec![LinkAuthKind::Ed25519],
        }
    }

    /// The credential kinds in force: `auth`, or `token` when only a token hash is set.
    pub fn kinds(&self) -> Vec<LinkAuthKind> {
        if self.auth.is_empty() && self.token_sha256.is_some() {
            vec![LinkAuthKind::Token]
        } else {
            self.auth.clone()
        }
    }

    /// Does this service require (and so accept) `kind`?
    pub fn requires(&self, kind: LinkAuthKind) -> bool {
        self.kinds().contains(&kind)
    }

    /// Check the entry at key path `at` (`services.<name>`), the name included.
    pub fn validate(&self, at: &str, name: &str, errs: &mut Vec<ConfigError>) {
        if !portcullis_link::valid_service_name(name) {
            errs.push(ConfigError::new(at, "service names are 1-63 of [a-z0-9-]"));
        }
        if let Some(h) = &self.token_sha256 {
            let h = h.expose();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                errs.push(ConfigError::new(
                    format!("{at}.token_sha256"),
                    "must be 64 hex characters (see `portcullis hash-token`)",
                ));
            }
        }
        let kinds = self.kinds();
        if kinds.is_empty() {
            errs.push(ConfigError::new(
                format!("{at}.auth"),
                "set token_sha256 or auth (e.g. [\"ed25519\"]): a service needs a credential",
            ));
        }
        if kinds.contains(&LinkAuthKind::Token) && self.token_sha256.is_none() {
            errs.push(ConfigError::new(
                format!("{at}.token_sha256"),
                "required when auth has \"token\"",
            ));
        }
        if kinds.contains(&LinkAuthKind::Token) && kinds.contains(&LinkAuthKind::Ed25519) {
            errs.push(ConfigError::new(
                format!("{at}.auth"),
                "a HELLO carries one credential: \"token\" and \"ed25519\" cannot both be required",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if !kinds.iter().all(|k| seen.insert(*k)) {
            errs.push(ConfigError::new(format!("{at}.auth"), "lists a kind twice"));
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
        // Key paths set from the environment, with their variable, so a problem in one is
        // reported as the variable's and not the file's.
        let mut from_env: Vec<(Vec<String>, String)> = Vec::new();
        for (k, v) in env {
            let Some(path) = k.strip_prefix("PORTCULLIS_") else {
                continue;
            };
            if !path.contains("__") {
                continue;
            }
            let keys: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
            from_env.push((keys.clone(), k.clone()));
            let value = format!("v = {v}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(v));
            set_path(&mut table, &keys, value);
        }
        let attribute = |mut e: ConfigError| {
            let path: Vec<&str> = e.path.split('.').collect();
            // The override's path is the problem's, or under it (an unknown section).
            if let Some((_, var)) = from_env.iter().find(|(keys, _)| {
                keys.len() >= path.len() && keys.iter().zip(&path).all(|(k, p)| k == p)
            }) {
                e.message = format!("{} (set by the environment variable {var})", e.message);
            }
            e
        };
        let mut errors = Vec::new();
        let mut value = toml::Value::Table(table);
        // Each pass reports one problem and removes the offending key, so the next pass can
        // find the next one. Bounded: a file has finitely many keys.
        for _ in 0..64 {
            match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
                Ok(cfg) => {
                    if let Err(more) = cfg.validate() {
                        errors.extend(more.into_iter().map(attribute));
                    }
                    return if errors.is_empty() {
                        Ok(cfg)
                    } else {
                        Err(errors)
                    };
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
                    let mut msg = msg.lines().next().unwrap_or_default().to_string();
                    if msg == "invalid socket address syntax" {
                        // `SocketAddr`'s own message does not say what it wants.
                        msg = "expected an IP address and a port, such as \"127.0.0.1:8080\" \
                               or \"[::]:8080\" (host names such as localhost are not \
                               resolved)"
                            .into();
                    }
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
                    errors.push(attribute(ConfigError::new(shown, msg)));
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

    /// What is allowed but unwise, one sentence each (`check-config` prints them): a static
    /// service token accepted on a link listener other networks can reach.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.link.listen.ip().is_loopback() {
            for (name, svc) in &self.services {
                if svc.requires(LinkAuthKind::Token) {
                    out.push(format!(
                        "services.{name}: accepts a static token on a non-loopback link listener \
                         (link.listen = {}); a leaked token is a permanent impersonation — use \
                         auth = [\"ed25519\"] (instance keys enrolled by pairing) or \"mtls\"",
                        self.link.listen
                    ));
                }
            }
        }
        out
    }

    /// Check every field; returns all problems found, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errs = Vec::new();
        self.ingress.validate("ingress", &mut errs);
        self.link.validate("link", &mut errs);
        self.monitoring.validate(
            "monitoring",
            &[
                ("ingress.listen", self.ingress.listen),
                ("link.listen", self.link.listen),
            ],
            &mut errs,
        );
        self.auth.validate("auth", &mut errs);
        self.access.validate("access", &mut errs);
        self.routing.validate("routing", &mut errs);
        self.shutdown.validate("shutdown", &mut errs);
        self.runtime.validate("runtime", &mut errs);
        self.telemetry.validate("telemetry", &mut errs);
        self.store.validate("store", &mut errs);
        for (name, svc) in &self.services {
            svc.validate(&format!("services.{name}"), name, &mut errs);
            if svc.requires(LinkAuthKind::Mtls) && self.link.client_ca.is_none() {
                errs.push(ConfigError::new(
                    format!("services.{name}.auth"),
                    "\"mtls\" needs link.client_ca (and link.tls)",
                ));
            }
        }
        self.sessions
            .validate("sessions", &self.backends, &mut errs);
        for (name, b) in &self.backends {
            b.validate(&format!("backends.{name}"), name, &mut errs);
            if let Some(svc) = &b.service {
                if !self.services.contains_key(svc) {
                    errs.push(ConfigError::new(
                        format!("backends.{name}.service"),
                        format!("no service {svc:?} is configured in [services]"),
                    ));
                }
            }
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
    fn a_problem_in_an_override_names_its_variable() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
                .into_iter()
        };
        let errs = Config::from_toml_with_env(
            "[ingress]\nmax_body_bytes = 10\n",
            env(&[
                ("PORTCULLIS_INGRES__LISTEN", "127.0.0.1:1"),
                ("PORTCULLIS_LINK__HEARTBEAT_INTERVAL", "1ms"),
            ]),
        )
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e.starts_with("ingres: unknown field `ingres`")
                    && e.ends_with("(set by the environment variable PORTCULLIS_INGRES__LISTEN)")),
            "{text:?}"
        );
        assert!(
            text.iter().any(
                |e| e.starts_with("link.heartbeat_interval: must be at least")
                    && e.ends_with(
                        "(set by the environment variable PORTCULLIS_LINK__HEARTBEAT_INTERVAL)"
                    )
            ),
            "{text:?}"
        );
        // The same mistake in the file names no variable.
        let errs = Config::from_toml("[ingres]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(!errs[0].message.contains("environment"), "{errs:?}");
    }

    #[test]
    fn a_host_name_as_listen_address_says_an_ip_address_is_needed() {
        let errs = Config::from_toml("[ingress]\nlisten = \"localhost:8080\"\n").unwrap_err();
        assert_eq!(errs[0].path, "ingress.listen");
        assert!(
            errs[0]
                .message
                .starts_with("expected an IP address and a port")
                && errs[0].message.contains("localhost are not resolved"),
            "{errs:?}"
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
        c.services
            .insert("echo".into(), ServiceConfig::token("ab".repeat(32)));
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
