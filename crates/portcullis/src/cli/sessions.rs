//! `portcullis sessions list|get|close`: a running gateway's sessions, through its REST API
//! (sessions live in the gateway's memory, not in the store). The credential is read from
//! `PORTCULLIS_KEY` — an API key or a user's access token — never from a flag, where process
//! listings would show it. Exit codes as everywhere in the CLI: 0 done, 1 failed or not
//! found, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::render::{self, Render};
use crate::admin::{AdminError, ErrorKind};

/// `portcullis sessions …`.
#[derive(Debug, clap::Args)]
pub struct SessionsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SessionsCommand,
    /// Gateway base URL, e.g. `http://127.0.0.1:8080`. Default: the configuration's
    /// `ingress.listen`.
    #[arg(long, global = true)]
    pub gateway: Option<String>,
    /// TOML configuration file, for the default gateway address.
    #[arg(long, short, global = true, env = "PORTCULLIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the gateway's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SessionsCommand {
    /// The caller's sessions, newest first; with `--all`, every identity's in every
    /// workspace (needs `sessions.read` on `*`).
    List {
        /// Every session on the gateway, not only the caller's.
        #[arg(long)]
        all: bool,
        /// Only sessions of this workspace (its id); needs `--all`.
        #[arg(long, requires = "all")]
        workspace: Option<String>,
        /// Only sessions of this backend.
        #[arg(long)]
        backend: Option<String>,
        /// Only sessions in this state (`ready`, `faulted`, `closed`, …).
        #[arg(long)]
        state: Option<String>,
    },
    /// One session.
    Get {
        /// The session id.
        id: String,
    },
    /// Close a session (idempotent).
    Close {
        /// The session id.
        id: String,
    },
}

/// What the gateway answered (its JSON, printed as it is with `--json`).
struct Answer {
    v: Value,
    /// Listing every identity's sessions: each line names its owner.
    all: bool,
}

impl serde::Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.v.serialize(s)
    }
}

fn line(s: &Value, all: bool) -> String {
    let text = |k: &str| s[k].as_str().unwrap_or("-").to_string();
    let reason = match (&s["fault"], &s["close_reason"]) {
        (Value::Object(f), _) => format!(
            "fault {}: {}",
            f.get("kind").and_then(Value::as_str).unwrap_or("-"),
            f.get("message").and_then(Value::as_str).unwrap_or("")
        ),
        (_, Value::String(r)) => r.clone(),
        _ => String::new(),
    };
    let whose = if all {
        format!("{}  {}  ", text("workspace"), text("subject"))
    } else {
        String::new()
    };
    format!(
        "{whose}{}  {:<9}  {:<12}  pid {:<7}  {}\n",
        text("id"),
        text("state"),
        text("backend"),
        s["worker_pid"].as_u64().unwrap_or(0),
        reason
    )
}

impl Render for Answer {
    fn text(&self) -> String {
        if let Some(list) = self.v["sessions"].as_array() {
            if list.is_empty() {
                return "no sessions\n".into();
            }
            return list.iter().map(|s| line(s, self.all)).collect();
        }
        if let Some(result) = self.v["result"].as_str() {
            return format!("{result}\n{}", line(&self.v["session"], false));
        }
        line(&self.v, false)
    }
}

/// Run `portcullis sessions …`.
pub(super) fn run(args: &SessionsArgs) -> ExitCode {
    render::finish(call(args), args.json)
}

fn call(args: &SessionsArgs) -> Result<Answer, AdminError> {
    let base = super::login::gateway_base(args.gateway.as_deref(), args.config.as_deref())?;
    let key = super::login::key_from_env("an API key or access token")?;
    let path = crate::sessions::api::SESSIONS_PATH;
    let (method, url) = match &args.command {
        SessionsCommand::List {
            all,
            workspace,
            backend,
            state,
        } => {
            let mut query = Vec::new();
            if *all {
                query.push("all=true".to_string());
            }
            for (k, v) in [
                ("workspace", workspace),
                ("backend", backend),
                ("state", state),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", filter_value(k, v)?));
                }
            }
            let q = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            (http::Method::GET, format!("{base}{path}{q}"))
        }
        SessionsCommand::Get { id } => {
            (http::Method::GET, format!("{base}{path}/{}", segment(id)?))
        }
        SessionsCommand::Close { id } => (
            http::Method::DELETE,
            format!("{base}{path}/{}", segment(id)?),
        ),
    };
    let (status, bytes) =
        super::login::call_gateway(method, &url, Some(&key), None, Duration::from_secs(60))?;
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = v["error"].as_str().unwrap_or("").to_string();
    match status {
        200 => Ok(Answer {
            v,
            all: matches!(args.command, SessionsCommand::List { all: true, .. }),
        }),
        401 => Err(AdminError::failure(
            "the credential in PORTCULLIS_KEY was refused",
        )),
        403 => Err(AdminError::failure(
            "the credential lacks the capability for this",
        )),
        404 => Err(AdminError {
            message: "no such session".into(),
            kind: ErrorKind::NotFound,
        }),
        s => Err(AdminError::failure(format!(
            "the gateway answered {s}: {message}"
        ))),
    }
}

/// A filter's value as it goes in the query: workspace ids, backend and state names are
/// 1-128 of `[A-Za-z0-9._-]`, which need no escaping.
fn filter_value<'a>(flag: &str, v: &'a str) -> Result<&'a str, AdminError> {
    if !portcullis_link::valid_token(v) {
        return Err(AdminError::usage(format!(
            "--{flag} {v:?}: must be 1-128 of [A-Za-z0-9._-]"
        )));
    }
    Ok(v)
}

/// A session id as one path segment: ids are `[a-z0-9.-]`.
fn segment(id: &str) -> Result<&str, AdminError> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(AdminError::usage(format!("{id:?} is not a session id")));
    }
    Ok(id)
}
