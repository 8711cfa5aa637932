//! The `[sessions]` section (limits, leases, queues, the worker protocol's timings) and the
//! `[backends.NAME]` tables: process workers (`command`) and pinned instances of a linked
//! service (`service`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigError;

/// Sessions: limits, leases and queues.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// This node's name, the first part of every session id (`<node>.<32 hex>`), so an id
    /// says which gateway holds it. 1-32 of `[a-z0-9-]`. Default `node`.
    pub node: String,
    /// Sessions open (not closed) at once on this gateway; past it, open is refused.
    /// Default 256.
    pub max: usize,
    /// Sessions open at once in one workspace. Default 64.
    pub max_per_workspace: usize,
    /// The backend an open that names none gets. Default: none (open must name one).
    pub default_backend: Option<String>,
    /// A session no client request touched within this time (and with no subscriber
    /// attached) is closed with reason `lease-expired`. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// A session with no command and no event within this time is closed with reason
    /// `idle`. Default 30 min.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a closed session stays queryable before it leaves the registry. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub closed_retention: Duration,
    /// Most closed sessions kept for queries; the oldest leave first. Default 1024.
    pub max_closed: usize,
    /// A command's timeout when the open names none. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Largest command timeout an open may ask for. Default 10 min.
    #[serde(with = "humantime_serde")]
    pub max_command_timeout: Duration,
    /// Commands awaiting a reply at once, per session; past it, invoke is refused (429).
    /// Default 16.
    pub max_pending_commands: usize,
    /// From the worker's connection to its ready frame. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How often a worker must send a heartbeat (told in the gateway's hello). Default 1 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Silence from a Ready worker past which the session faults (`heartbeat expired`).
    /// Default 15 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_grace: Duration,
    /// Hop 1: frames read from the worker awaiting the session's sequencer. Default 1024.
    pub worker_queue: usize,
    /// Hop 2: events the session holds for delivery and resume. Default 1024.
    pub event_buffer: usize,
    /// Hop 2's bound in bytes of event JSON, so large events cannot hold `event_buffer`
    /// frames of a megabyte each. Default 16 MiB.
    pub event_buffer_bytes: usize,
    /// Hop 3: events queued for the one subscriber's connection. Default 1024.
    pub subscriber_queue: usize,
    /// Largest frame either side may send, bytes (at most 1 MiB). Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Where each session's private socket directory is made. Default: the system's
    /// temporary directory.
    pub socket_dir: Option<PathBuf>,
    /// Lines per second of a worker's stdout and stderr copied into the log; the rest are
    /// counted and reported as suppressed. Default 50.
    pub log_lines_per_second: u32,
    /// Sessions pinned to one linked instance at once, whatever the instance declared it
    /// takes (`max_sessions` in its HELLO); past it, the next open picks another instance or
    /// fails. Default 64.
    pub max_pinned_per_instance: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            node: "node".into(),
            max: 256,
            max_per_workspace: 64,
            default_backend: None,
            lease: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(1800),
            closed_retention: Duration::from_secs(300),
            max_closed: 1024,
            command_timeout: Duration::from_secs(30),
            max_command_timeout: Duration::from_secs(600),
            max_pending_commands: 16,
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_grace: Duration::from_secs(15),
            worker_queue: 1024,
            event_buffer: 1024,
            event_buffer_bytes: 16 << 20,
            subscriber_queue: 1024,
            max_frame_bytes: portcullis_link::worker::MAX_WORKER_FRAME_LEN,
            socket_dir: None,
            log_lines_per_second: 50,
            max_pinned_per_instance: 64,
        }
    }
}

fn positive(errs: &mut Vec<ConfigError>, at: &str, field: &str, ok: bool) {
    if !ok {
        errs.push(ConfigError::new(
            format!("{at}.{field}"),
            "must be positive",
        ));
    }
}

impl SessionsConfig {
    /// Check the section at key path `at` (`sessions`) against the configured backends.
    pub fn validate(
        &self,
        at: &str,
        backends: &BTreeMap<String, BackendConfig>,
        errs: &mut Vec<ConfigError>,
    ) {
        if self.node.is_empty()
            || self.node.len() > 32
            || !self
                .node
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            errs.push(ConfigError::new(
                format!("{at}.node"),
                "must be 1-32 of [a-z0-9-]",
            ));
        }
        positive(errs, at, "max", self.max > 0);
        positive(errs, at, "max_per_workspace", self.max_per_workspace > 0);
        positive(errs, at, "lease", !self.lease.is_zero());
        positive(errs, at, "idle_timeout", !self.idle_timeout.is_zero());
        positive(errs, at, "command_timeout", !self.command_timeout.is_zero());
        positive(
            errs,
            at,
            "handshake_timeout",
            !self.handshake_timeout.is_zero(),
        );
        positive(
            errs,
            at,
            "heartbeat_interval",
            !self.heartbeat_interval.is_zero(),
        );
        positive(
            errs,
            at,
            "max_pending_commands",
            self.max_pending_commands > 0,
        );
        positive(errs, at, "worker_queue", self.worker_queue > 0);
        positive(errs, at, "event_buffer", self.event_buffer > 0);
        if self.event_buffer_bytes < self.max_frame_bytes {
            errs.push(ConfigError::new(
                format!("{at}.event_buffer_bytes"),
                "must be at least sessions.max_frame_bytes",
            ));
        }
        positive(errs, at, "subscriber_queue", self.subscriber_queue > 0);
        positive(
            errs,
            at,
            "max_pinned_per_instance",
            self.max_pinned_per_instance > 0,
        );
        positive(
            errs,
            at,
            "log_lines_per_second",
            self.log_lines_per_second > 0,
        );
        if self.max_command_timeout < self.command_timeout {
            errs.push(ConfigError::new(
                format!("{at}.max_command_timeout"),
                "must be at least sessions.command_timeout",
            ));
        }
        if self.heartbeat_grace <= self.heartbeat_interval {
            errs.push(ConfigError::new(
                format!("{at}.heartbeat_grace"),
                "must be longer than sessions.heartbeat_interval",
            ));
        }
        if self.max_frame_bytes < 1024
            || self.max_frame_bytes > portcullis_link::worker::MAX_WORKER_FRAME_LEN
        {
            errs.push(ConfigError::new(
                format!("{at}.max_frame_bytes"),
                "must be 1 KiB to 1 MiB",
            ));
        }
        if let Some(b) = &self.default_backend {
            if !backends.contains_key(b) {
                errs.push(ConfigError::new(
                    format!("{at}.default_backend"),
                    format!("no backend {b:?} is configured"),
                ));
            }
        }
    }
}

/// A session backend: a process worker (`command`: the gateway starts one process per
/// session) or a linked service (`service`: each session is pinned to one of its instances).
/// Exactly one of the two is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The executable (an absolute path) and the operator's own arguments; the gateway adds
    /// `--session-id ID --socket PATH --protocol-version N` after them. Never run through a
    /// shell.
    #[serde(default)]
    pub command: Vec<String>,
    /// A linked service whose instances declare they serve sessions (link protocol §6.6):
    /// each session is pinned to one instance, chosen like a call's, and faults
    /// (`instance-gone`) when that instance's link goes away. Instead of `command`.
    #[serde(default)]
    pub service: Option<String>,
    /// Names of the gateway's environment variables the worker receives; every other
    /// variable is cleared (the worker also gets `PORTCULLIS_WORKER_NONCE`). Default: none.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory of the worker. Default: the gateway's.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// From spawn (or, for `service`, from choosing the instance) to the worker's ready
    /// frame; past it, the process group is killed (or the session stream reset).
    /// Default 10 s.
    #[serde(default = "default_startup", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// From the shutdown frame to the worker's exit (or, for `service`, its acknowledgement);
    /// past it, the process group is killed (the session stream reset). Default 5 s.
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

fn default_startup() -> Duration {
    Duration::from_secs(10)
}

fn default_shutdown() -> Duration {
    Duration::from_secs(5)
}

impl BackendConfig {
    /// A backend running `command` with the default timeouts and an empty environment.
    pub fn new(command: Vec<String>) -> Self {
        Self {
            command,
            service: None,
            env: Vec::new(),
            working_dir: None,
            startup_timeout: default_startup(),
            shutdown_timeout: default_shutdown(),
        }
    }

    /// A backend whose sessions are pinned to instances of the linked `service`.
    pub fn pinned(service: impl Into<String>) -> Self {
        Self {
            service: Some(service.into()),
            ..Self::new(Vec::new())
        }
    }

    /// Check the table at key path `at` (`backends.<name>`), the name included.
    pub fn validate(&self, at: &str, name: &str, errs: &mut Vec<ConfigError>) {
        if !portcullis_link::valid_service_name(name) {
            errs.push(ConfigError::new(at, "backend names are 1-63 of [a-z0-9-]"));
        }
        if let Some(svc) = &self.service {
            if !self.command.is_empty() {
                errs.push(ConfigError::new(
                    format!("{at}.service"),
                    "set either command (a process worker) or service (a linked service), not both",
                ));
            }
            if !portcullis_link::valid_service_name(svc) {
                errs.push(ConfigError::new(
                    format!("{at}.service"),
                    "service names are 1-63 of [a-z0-9-]",
                ));
            }
            for (field, set) in [
                ("env", !self.env.is_empty()),
                ("working_dir", self.working_dir.is_some()),
            ] {
                if set {
                    errs.push(ConfigError::new(
                        format!("{at}.{field}"),
                        "applies to process workers only (this backend names a service)",
                    ));
                }
            }
            positive(errs, at, "startup_timeout", !self.startup_timeout.is_zero());
            positive(
                errs,
                at,
                "shutdown_timeout",
                !self.shutdown_timeout.is_zero(),
            );
            return;
        }
        match self.command.first() {
            None => errs.push(ConfigError::new(
                format!("{at}.command"),
                "must name an executable (or set service to pin sessions to a linked service)",
            )),
            Some(p) if !std::path::Path::new(p).is_absolute() => errs.push(ConfigError::new(
                format!("{at}.command"),
                "the executable must be an absolute path",
            )),
            _ => {}
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            errs.push(ConfigError::new(
                format!("{at}.command"),
                "arguments may not contain NUL",
            ));
        }
        for v in &self.env {
            if v.is_empty() || v.contains('=') || v.contains('\0') {
                errs.push(ConfigError::new(
                    format!("{at}.env"),
                    format!("{v:?} is not a variable name"),
                ));
            }
            if v == super::process::NONCE_ENV {
                errs.push(ConfigError::new(
                    format!("{at}.env"),
                    "the nonce variable is the gateway's to set",
                ));
            }
        }
        positive(errs, at, "startup_timeout", !self.startup_timeout.is_zero());
        positive(
            errs,
            at,
            "shutdown_timeout",
            !self.shutdown_timeout.is_zero(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_named() {
        let mut errs = Vec::new();
        let backends =
            BTreeMap::from([("Bad".to_string(), BackendConfig::new(vec!["worker".into()]))]);
        for (name, b) in &backends {
            b.validate(&format!("backends.{name}"), name, &mut errs);
        }
        SessionsConfig {
            node: "N!".into(),
            max: 0,
            default_backend: Some("missing".into()),
            ..SessionsConfig::default()
        }
        .validate("sessions", &backends, &mut errs);
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "backends.Bad",
                "backends.Bad.command",
                "sessions.node",
                "sessions.max",
                "sessions.default_backend"
            ]
        );
    }

    #[test]
    fn a_pinned_backend_names_a_service_and_takes_no_process_fields() {
        let mut errs = Vec::new();
        BackendConfig::pinned("orders").validate("backends.live", "live", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let mut both = BackendConfig::pinned("Orders!");
        both.command = vec!["/bin/true".into()];
        both.env = vec!["PATH".into()];
        both.validate("backends.live", "live", &mut errs);
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "backends.live.service",
                "backends.live.service",
                "backends.live.env"
            ]
        );
    }

    #[test]
    fn check_config_refuses_a_backend_naming_a_service_that_cannot_link() {
        let mut cfg = crate::config::Config::default();
        cfg.backends
            .insert("live".into(), BackendConfig::pinned("orders"));
        let errs = cfg.validate().unwrap_err();
        assert!(
            errs.iter().any(|e| e.path == "backends.live.service"
                && e.message.contains("no service \"orders\"")),
            "{errs:?}"
        );
    }
}
