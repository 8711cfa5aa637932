//! `portcullis login`: a user's access token for scripts.
//!
//! The password is read from the terminal with echo off, or from standard input when it is
//! not a terminal (`printf '%s' "$PW" | portcullis login -u alice`), never from the command
//! line or the environment, where other users and process listings could see it. It is
//! POSTed to the gateway's `/api/v1/auth/login`, and the token printed on stdout: bare, or
//! with `--json` the gateway's token response.

use serde::Serialize;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use super::render::{self, Render};
use super::LoginArgs;
use crate::admin::AdminError;
use crate::auth::password::{Password, MAX_PASSWORD_BYTES};

/// A token from `portcullis login`, printed once. `Debug` masks it.
#[derive(Clone, Serialize, serde::Deserialize)]
pub struct LoginToken {
    /// The token.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

impl std::fmt::Debug for LoginToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginToken")
            .field("access_token", &"***")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

impl Render for LoginToken {
    fn text(&self) -> String {
        format!("{}\n", self.access_token)
    }
}

/// Run `portcullis login`.
pub(super) fn run(args: &LoginArgs) -> ExitCode {
    render::finish(login(args), args.json)
}

/// The gateway's base URL: `--gateway`, else from the configuration's ingress.
fn gateway_url(args: &LoginArgs) -> Result<String, AdminError> {
    gateway_base(args.gateway.as_deref(), args.config.as_deref())
}

/// The gateway's base URL: `gateway`, else from the ingress of the configuration at `config`.
pub(crate) fn gateway_base(
    gateway: Option<&str>,
    config: Option<&std::path::Path>,
) -> Result<String, AdminError> {
    if let Some(g) = gateway {
        let g = g.trim_end_matches('/');
        if !(g.starts_with("http://") || g.starts_with("https://")) {
            return Err(AdminError::usage(
                "--gateway must be an http:// or https:// URL",
            ));
        }
        return Ok(g.to_string());
    }
    let cfg = super::load_config(config).map_err(AdminError::usage)?;
    let mut addr = cfg.ingress.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if cfg.ingress.tls.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{addr}"))
}

fn login(args: &LoginArgs) -> Result<LoginToken, AdminError> {
    let url = format!("{}{}", gateway_url(args)?, crate::auth::login::LOGIN_PATH);
    let password = read_password()?;
    let body = zeroize::Zeroizing::new(
        serde_json::to_vec(&serde_json::json!({
            "workspace": args.workspace,
            "username": args.username,
            "password": password.expose(),
        }))
        .map_err(|e| AdminError::failure(e.to_string()))?,
    );
    let (status, bytes) = post_json(&url, &body)?;
    match status {
        200 => serde_json::from_slice(&bytes)
            .map_err(|_| AdminError::failure("the gateway's answer is not a token response")),
        401 => Err(AdminError::failure(
            "login refused (wrong workspace, username or password, a disabled user, or too many failures)",
        )),
        503 => Err(AdminError::failure(
            "the gateway is busy or its store is unavailable: try again",
        )),
        s => Err(AdminError::failure(format!("the gateway answered {s}"))),
    }
}

/// POST `body` (JSON, which may hold a secret: never echoed) to `url`; the status and body
/// of the answer.
pub(crate) fn post_json(url: &str, body: &[u8]) -> Result<(u16, bytes::Bytes), AdminError> {
    call_gateway(
        http::Method::POST,
        url,
        None,
        Some(body),
        Duration::from_secs(30),
    )
}

/// One call to a running gateway's API from the CLI: `method url`, with `bearer` as the
/// credential and `body` as JSON when given, answered within `timeout`; the status and body.
/// Errors name the URL (reqwest's messages do), never the credential or the body.
pub fn call_gateway(
    method: http::Method,
    url: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, bytes::Bytes), AdminError> {
    // reqwest runs on rustls without a built-in provider: the gateway's one (ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AdminError::failure(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| AdminError::failure(format!("cannot build the HTTP client: {e}")))?;
        let mut req = client.request(method, url);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(b) = body {
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(b.to_vec());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| AdminError::failure(format!("cannot reach the gateway: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| AdminError::failure(format!("reading the answer: {e}")))?;
        Ok((status, bytes))
    })
}

/// The credential for the gateway's API, from `PORTCULLIS_KEY` (never a flag, where process
/// listings would show it); `what` says what it must allow.
pub(crate) fn key_from_env(what: &str) -> Result<String, AdminError> {
    std::env::var("PORTCULLIS_KEY")
        .ok()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| AdminError::usage(format!("set PORTCULLIS_KEY to {what}")))
}

/// The gateway's answer to an HTTP bootstrap (the created user and its binding), printed as
/// it came with `--json`.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BootstrappedOverHttp(serde_json::Value);

impl Render for BootstrappedOverHttp {
    fn text(&self) -> String {
        let u = &self.0["user"];
        let field = |k: &str| u[k].as_str().unwrap_or("?").to_string();
        format!(
            "Created admin user {}/{} ({}), role admin in every workspace.\n\
             Log in with `portcullis login --workspace {} --username {}`; remove \
             auth.bootstrap_token_file from the gateway's configuration.\n",
            field("workspace"),
            field("username"),
            field("id"),
            field("workspace"),
            field("username"),
        )
    }
}

/// `bootstrap --admin-user NAME --gateway URL --token-file F`: the first admin over HTTP.
pub(crate) fn bootstrap_over_http(
    gateway: &str,
    token_file: &std::path::Path,
    workspace: &str,
    username: &str,
) -> Result<BootstrappedOverHttp, AdminError> {
    let g = gateway.trim_end_matches('/');
    if !(g.starts_with("http://") || g.starts_with("https://")) {
        return Err(AdminError::usage(
            "--gateway must be an http:// or https:// URL",
        ));
    }
    let url = format!("{g}{}", crate::auth::bootstrap::BOOTSTRAP_PATH);
    let mut raw = zeroize::Zeroizing::new(Vec::new());
    std::fs::File::open(token_file)
        .and_then(|f| f.take(4097).read_to_end(&mut raw))
        .map_err(|e| AdminError::usage(format!("--token-file {}: {e}", token_file.display())))?;
    let token = std::str::from_utf8(&raw)
        .map(str::trim)
        .map_err(|_| AdminError::usage("--token-file does not hold text"))?;
    let password = read_password()?;
    let body = zeroize::Zeroizing::new(
        serde_json::to_vec(&serde_json::json!({
            "token": token,
            "workspace": workspace,
            "username": username,
            "password": password.expose(),
        }))
        .map_err(|e| AdminError::failure(e.to_string()))?,
    );
    let (status, bytes) = post_json(&url, &body)?;
    match status {
        201 => serde_json::from_slice(&bytes)
            .map_err(|_| AdminError::failure("the gateway's answer is not a bootstrap answer")),
        401 => Err(AdminError::failure(
            "bootstrap refused (the gateway's log and audit log say why: a wrong or spent token, \
             an admin that exists already, a password the policy refuses)",
        )),
        404 => Err(AdminError::failure(
            "the gateway has no HTTP bootstrap (auth.bootstrap_token_file is not set)",
        )),
        s => Err(AdminError::failure(format!("the gateway answered {s}"))),
    }
}

/// The password: from the terminal with echo off, else standard input (one line, bounded).
pub(crate) fn read_password() -> Result<Password, AdminError> {
    let stdin = std::io::stdin();
    let line = if stdin.is_terminal() {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
        let echo = NoEcho::new(&stdin);
        let mut line = zeroize::Zeroizing::new(String::new());
        let r = stdin.read_line(&mut line);
        drop(echo);
        eprintln!();
        r.map_err(|e| AdminError::failure(format!("cannot read the password: {e}")))?;
        line
    } else {
        let mut buf = zeroize::Zeroizing::new(Vec::new());
        stdin
            .lock()
            .take(MAX_PASSWORD_BYTES as u64 + 2)
            .read_to_end(&mut buf)
            .map_err(|e| AdminError::failure(format!("cannot read the password: {e}")))?;
        let s = std::str::from_utf8(&buf)
            .map_err(|_| AdminError::usage("the password on standard input is not UTF-8"))?;
        zeroize::Zeroizing::new(s.to_string())
    };
    let p = line.trim_end_matches(['\r', '\n']);
    if p.is_empty() {
        return Err(AdminError::usage("no password given"));
    }
    if p.len() > MAX_PASSWORD_BYTES {
        return Err(AdminError::usage("a password is at most 1024 bytes"));
    }
    Ok(Password::new(p))
}

/// Terminal echo off while it lives (Unix; elsewhere the terminal is left as it is).
struct NoEcho {
    #[cfg(unix)]
    saved: Option<rustix::termios::Termios>,
}

impl NoEcho {
    #[cfg(unix)]
    fn new(stdin: &std::io::Stdin) -> Self {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        let saved = tcgetattr(stdin).ok();
        if let Some(t) = &saved {
            let mut quiet = t.clone();
            quiet.local_modes.remove(LocalModes::ECHO);
            let _ = tcsetattr(stdin, OptionalActions::Now, &quiet);
        }
        Self { saved }
    }

    #[cfg(not(unix))]
    fn new(_: &std::io::Stdin) -> Self {
        Self {}
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(t) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}
