//! How the CLI shows what an admin operation returned: the one place text is made.
//!
//! With `--json` a value prints as its serde shape on one line, the same JSON the admin HTTP
//! API will answer; otherwise as its [`Render`] text. Errors print on stderr, as
//! `{"error":…}` with `--json`, `error: …` otherwise.

use serde::Serialize;
use std::fmt::Write as _;

use crate::admin::{
    AdminError, AuditPage, CreatedWorkspace, InitReport, Issuance, IssuedKeyView, KeyList,
    RevokedKey, RotatedSigningKey, SigningKeyList, SigningKeyStatus, WorkspaceList,
};

/// The human text of an operation's result.
pub trait Render {
    /// The text, ending in a newline (or empty).
    fn text(&self) -> String;
}

/// What to print on stdout and on stderr for `result`.
pub fn outcome<T: Serialize + Render>(
    result: &Result<T, AdminError>,
    json: bool,
) -> (String, String) {
    match (result, json) {
        (Ok(v), true) => (json_line(v), String::new()),
        (Ok(v), false) => (v.text(), String::new()),
        (Err(e), true) => (String::new(), json_line(e)),
        (Err(e), false) => (String::new(), format!("error: {}\n", e.message)),
    }
}

/// Print `result` as [`outcome`] says and give the exit code of the CLI: 0, or the error's.
pub fn finish<T: Serialize + Render>(
    result: Result<T, AdminError>,
    json: bool,
) -> std::process::ExitCode {
    let (stdout, stderr) = outcome(&result, json);
    print!("{stdout}");
    eprint!("{stderr}");
    match result {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => std::process::ExitCode::from(e.exit_code()),
    }
}

/// One JSON document and a newline. Views are plain data (strings, numbers, maps with string
/// keys), so serialising cannot fail; if it ever did, the line says so as JSON.
fn json_line<T: Serialize>(v: &T) -> String {
    match serde_json::to_string(v) {
        Ok(s) => s + "\n",
        Err(e) => format!("{}\n", serde_json::json!({ "error": e.to_string() })),
    }
}

impl Render for InitReport {
    fn text(&self) -> String {
        let mut text = format!(
            "Store ready: {} (schema version {}), workspace `{}`.\n",
            self.store, self.schema_version, self.workspace
        );
        if let Some(p) = &self.pepper_file_created {
            let _ = writeln!(
                text,
                "Pepper written to {} (mode 0600): back it up — keys cannot be verified without it.",
                p.display()
            );
        }
        text.push_str("Next: `portcullis bootstrap` creates the first admin key.\n");
        text
    }
}

impl Render for IssuedKeyView {
    fn text(&self) -> String {
        let verb = match self.issuance {
            Issuance::Created => "Created",
            Issuance::Bootstrap => "Created admin",
            Issuance::Rotated => "Rotated",
        };
        let mut text = format!(
            "{verb} key {} in workspace {} (scopes: {}).\n\n  {}\n\nThis is the only time the key is shown: store it now. Send it as `Authorization: Bearer <key>`.\n",
            self.key.key_id,
            self.key.workspace,
            self.key.scopes.join(","),
            self.api_key.expose()
        );
        if let Some(until) = self.previous_valid_until {
            let _ = writeln!(text, "The previous secret works until {until}.");
        }
        text
    }
}

impl Render for KeyList {
    fn text(&self) -> String {
        let mut text = format!(
            "{:<24} {:<16} {:<8} {:<24} {:<20} {:<20} NAME\n",
            "KEY ID", "WORKSPACE", "STATUS", "SCOPES", "EXPIRES", "LAST USED"
        );
        for k in &self.keys {
            let _ = writeln!(
                text,
                "{:<24} {:<16} {:<8} {:<24} {:<20} {:<20} {}",
                k.key_id,
                k.workspace,
                k.status.as_str(),
                k.scopes.join(","),
                k.expires_at
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into()),
                k.last_used_at
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into()),
                k.name
            );
        }
        text
    }
}

impl Render for RevokedKey {
    fn text(&self) -> String {
        format!(
            "Revoked key {}. Gateways refuse it from now on (other nodes within auth.invalidation_poll).\n",
            self.0.key_id
        )
    }
}

impl Render for CreatedWorkspace {
    fn text(&self) -> String {
        format!("Created workspace {} ({}).\n", self.0.name, self.0.id)
    }
}

impl Render for WorkspaceList {
    fn text(&self) -> String {
        let mut text = format!("{:<24} {:<20} CREATED\n", "NAME", "ID");
        for w in &self.workspaces {
            let _ = writeln!(text, "{:<24} {:<20} {}", w.name, w.id, w.created_at);
        }
        text
    }
}

impl Render for AuditPage {
    /// Oldest first, like a log.
    fn text(&self) -> String {
        let mut text = String::new();
        for e in self.entries.iter().rev() {
            let _ = writeln!(
                text,
                "{} {:<14} actor={} key={} workspace={} reason={} {}",
                e.at,
                e.event,
                e.actor,
                e.key_id.as_deref().unwrap_or("-"),
                e.workspace.as_deref().unwrap_or("-"),
                e.reason.as_deref().unwrap_or("-"),
                e.detail.as_ref().map(|d| d.to_string()).unwrap_or_default()
            );
        }
        text
    }
}

impl Render for SigningKeyList {
    fn text(&self) -> String {
        let mut text = format!(
            "{:<18} {:<9} {:<21} {:<21} VERIFIES UNTIL\n",
            "KID", "STATUS", "CREATED", "RETIRES"
        );
        for k in &self.keys {
            let status = match k.status {
                SigningKeyStatus::Signing => "signing",
                SigningKeyStatus::Next => "next",
                SigningKeyStatus::Retiring => "retiring",
                SigningKeyStatus::Retired => "retired",
                SigningKeyStatus::Expired => "expired",
            };
            let or_dash = |t: Option<crate::admin::Timestamp>| {
                t.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                text,
                "{:<18} {:<9} {:<21} {:<21} {}",
                k.kid,
                status,
                k.created_at,
                or_dash(k.retired_at),
                or_dash(k.not_after)
            );
        }
        text
    }
}

impl Render for RotatedSigningKey {
    fn text(&self) -> String {
        let mut text = format!(
            "New signing key {}: published now, signs from {}.\n",
            self.kid, self.signs_from
        );
        for r in &self.replaced {
            let _ = writeln!(
                text,
                "Key {} stops signing then and verifies until {}.",
                r.kid, r.not_after
            );
        }
        text
    }
}

/// `config show`: the effective configuration, as TOML or as JSON with the same keys
/// (absent fields `null`); secrets are `"***"` either way ([`crate::config::Secret`]).
#[derive(Debug)]
pub struct ConfigView(pub crate::config::Config);

impl Serialize for ConfigView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl Render for ConfigView {
    fn text(&self) -> String {
        self.0.to_toml_masked()
    }
}

/// `hash-token`: the SHA-256 of the token read from standard input, never the token.
#[derive(Debug, Serialize)]
pub struct TokenHash {
    /// Lowercase hex, for `services.<name>.token_sha256`.
    pub token_sha256: String,
}

impl Render for TokenHash {
    fn text(&self) -> String {
        format!("{}\n", self.token_sha256)
    }
}

/// `check-config`: the verdict on one file.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The file, as given.
    pub file: String,
    /// No problem found.
    pub ok: bool,
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
    /// What is allowed but unwise.
    pub warnings: Vec<String>,
    /// What each listener would bind; `null` when the file has problems.
    pub listeners: Option<ListenersView>,
}

/// One problem of a configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// Dotted key path; `null` when the file could not be read or parsed as a whole.
    pub key: Option<String>,
    /// What is wrong (ends with the environment variable when an override set it).
    pub message: String,
}

/// The listeners of a valid configuration.
#[derive(Debug, Clone, Serialize)]
pub struct ListenersView {
    /// `ingress.listen`: clients, `/health/*`, and `/metrics` unless `monitoring` is set.
    pub ingress: std::net::SocketAddr,
    /// `link.listen`: services.
    pub link: std::net::SocketAddr,
    /// `monitoring.listen`: `/health/*` and `/metrics`; `null` when not set.
    pub monitoring: Option<std::net::SocketAddr>,
}

impl CheckReport {
    /// The report on `file` from what loading it gave.
    pub fn of(
        file: &std::path::Path,
        loaded: Result<crate::config::Config, crate::config::LoadError>,
    ) -> Self {
        let file = file.display().to_string();
        match loaded {
            Ok(c) => Self {
                file,
                ok: true,
                problems: Vec::new(),
                warnings: c.warnings(),
                listeners: Some(ListenersView {
                    ingress: c.ingress.listen,
                    link: c.link.listen,
                    monitoring: c.monitoring.listen,
                }),
            },
            Err(e) => {
                let problems = match e {
                    crate::config::LoadError::Read(message) => vec![Problem { key: None, message }],
                    crate::config::LoadError::Invalid(errs) => errs
                        .into_iter()
                        .map(|e| Problem {
                            key: (!e.path.is_empty()).then_some(e.path),
                            message: e.message,
                        })
                        .collect(),
                };
                Self {
                    file,
                    ok: false,
                    problems,
                    warnings: Vec::new(),
                    listeners: None,
                }
            }
        }
    }
}

impl Render for CheckReport {
    /// `FILE: ok`, and where health and metrics are served when a monitoring listener takes
    /// them; nothing for a file with problems (those go to stderr).
    fn text(&self) -> String {
        let Some(l) = self.listeners.as_ref().filter(|_| self.ok) else {
            return String::new();
        };
        let mut text = format!("{}: ok\n", self.file);
        if let Some(m) = l.monitoring {
            let _ = writeln!(
                text,
                "{}: /health/* and /metrics on monitoring.listen {m}; ingress.listen {} keeps /health/* (its /metrics answers 404)",
                self.file, l.ingress
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{AuditView, KeyStatus, KeyView, Timestamp, WorkspaceView};

    fn key() -> KeyView {
        KeyView {
            key_id: "ci-key".into(),
            workspace: "default".into(),
            name: "ci".into(),
            scopes: vec!["echo.read".into(), "echo.write".into()],
            status: KeyStatus::Active,
            created_at: Timestamp(0),
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn json_and_text_come_from_the_same_value() {
        let list = KeyList { keys: vec![key()] };
        let (out, err) = outcome(&Ok(list.clone()), true);
        assert!(err.is_empty());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["keys"][0]["key_id"], "ci-key");
        assert_eq!(v["keys"][0]["last_used_at"], serde_json::Value::Null);
        let (text, _) = outcome(&Ok(list), false);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("ci-key "), "{text}");
        assert!(row.contains("echo.read,echo.write") && row.contains("never"));
    }

    #[test]
    fn errors_print_on_stderr_as_json_or_text() {
        let r: Result<KeyList, _> = Err(AdminError::usage("bad flag"));
        assert_eq!(
            outcome(&r, true),
            (String::new(), "{\"error\":\"bad flag\"}\n".to_string())
        );
        assert_eq!(
            outcome(&r, false),
            (String::new(), "error: bad flag\n".to_string())
        );
    }

    #[test]
    fn audit_text_is_oldest_first_and_workspace_text_names_both() {
        let entry = |id, event: &str| AuditView {
            id,
            at: Timestamp(id * 1000),
            event: event.into(),
            actor: "cli".into(),
            key_id: None,
            workspace: None,
            reason: None,
            detail: Some(serde_json::json!({"scopes": ["*"]})),
        };
        let page = AuditPage {
            entries: vec![entry(2, "key_revoked"), entry(1, "bootstrap")],
        };
        let text = page.text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("bootstrap") && lines[1].contains("key_revoked"));
        assert!(lines[0].ends_with(r#"{"scopes":["*"]}"#), "{text}");
        let w = CreatedWorkspace(WorkspaceView {
            id: "ws_1".into(),
            name: "team-a".into(),
            created_at: Timestamp(0),
        });
        assert_eq!(w.text(), "Created workspace team-a (ws_1).\n");
    }
}
