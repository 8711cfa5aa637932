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
    /// The caller's sessions, newest first.
    List,
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

/// What the gateway answered.
#[derive(serde::Serialize)]
#[serde(transparent)]
struct Answer(Value);

fn line(s: &Value) -> String {
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
    format!(
        "{}  {:<9}  {:<12}  pid {:<7}  {}\n",
        text("id"),
        text("state"),
        text("backend"),
        s["worker_pid"].as_u64().unwrap_or(0),
        reason
    )
}

impl Render for Answer {
    fn text(&self) -> String {
        if let Some(all) = self.0["sessions"].as_array() {
            if all.is_empty() {
                return "no sessions\n".into();
            }
            return all.iter().map(line).collect();
        }
        if let Some(result) = self.0["result"].as_str() {
            return format!("{result}\n{}", line(&self.0["session"]));
        }
        line(&self.0)
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
        SessionsCommand::List => (http::Method::GET, format!("{base}{path}")),
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
        200 => Ok(Answer(v)),
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
