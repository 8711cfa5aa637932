//! Bootstrap over HTTP: the first admin user, for an operator who can reach the gateway but
//! not its store (a container, a managed database).
//!
//! It exists only when `auth.bootstrap_token_file` names a file holding a one-time token (at
//! least [`MIN_TOKEN_BYTES`] bytes, e.g. `openssl rand -hex 32`); without one the path is not
//! a gateway operation at all. `POST /api/v1/auth/bootstrap` with
//! `{"token", "username", "password", "workspace"?}` creates the user, bound to `admin` in
//! every workspace, through the same store transaction as `portcullis bootstrap
//! --admin-user` — refused once any admin exists, so two nodes cannot both succeed — and the
//! token is spent on this node at the first success.
//!
//! Every refusal is the same fixed 401, whatever the reason (a malformed body, a wrong or
//! spent token, an admin that exists already, a password the policy refuses, a store that
//! cannot answer): a prober learns nothing, not even whether an admin exists. The reason goes
//! to the audit log and `portcullis_auth_failures_total{reason="bootstrap_…"}`, and to the
//! gateway's log, which the operator reads. Only a SHA-256 of the token is held, compared in
//! constant time; the token, like the password, never reaches a log or an error.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Extension, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::StatusCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::login::{json_body, rescued};
use super::password::{Password, PasswordHasher};
use crate::access::Requirement;
use crate::audit::{AuditSink, Refusal};
use crate::error::GatewayError;
use crate::pipeline::{AuthPolicy, Caller, Operation, PathMatch};
use crate::store::Store;

/// Where the operation is served.
pub const BOOTSTRAP_PATH: &str = "/api/v1/auth/bootstrap";

/// Shortest token accepted (bytes, after trimming whitespace).
pub const MIN_TOKEN_BYTES: usize = 32;

/// Longest token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Who the audit log says created the admin.
const ACTOR: &str = "bootstrap-http";

/// The one-time token, as its SHA-256 only; spent at the first successful bootstrap.
pub struct BootstrapToken {
    digest: std::sync::Mutex<Option<[u8; 32]>>,
    /// One bootstrap at a time on this node: a second waits and finds the token spent.
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("spent", &self.is_spent())
            .finish()
    }
}

/// Why the token file cannot be used; names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Unreadable.
    #[error("auth.bootstrap_token_file {0}: {1}")]
    Read(String, std::io::Error),
    /// Readable by others than its owner.
    #[error(
        "auth.bootstrap_token_file {0} is readable by group or others (mode {1:o}): chmod 600 it"
    )]
    Mode(String, u32),
    /// Too short, too long or not text.
    #[error("auth.bootstrap_token_file {0} must hold one token of {MIN_TOKEN_BYTES} to 4096 printable bytes (e.g. `openssl rand -hex 32`)")]
    Content(String),
}

impl BootstrapToken {
    /// The token of `raw` (trimmed), when it is long enough and printable.
    pub fn new(raw: &str) -> Option<Self> {
        let t = raw.trim();
        if t.len() < MIN_TOKEN_BYTES || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        Some(Self {
            digest: std::sync::Mutex::new(Some(Sha256::digest(t.as_bytes()).into())),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    /// Read the token from `path`, which only its owner may read.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        use std::io::Read;
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| TokenFileError::Read(name.clone(), e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file
                .metadata()
                .map_err(|e| TokenFileError::Read(name.clone(), e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(TokenFileError::Mode(name, mode & 0o777));
            }
        }
        let mut raw = Zeroizing::new(Vec::new());
        file.take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(|e| TokenFileError::Read(name.clone(), e))?;
        if raw.len() as u64 > MAX_TOKEN_FILE_BYTES {
            return Err(TokenFileError::Content(name));
        }
        let text = std::str::from_utf8(&raw).map_err(|_| TokenFileError::Content(name.clone()))?;
        Self::new(text).ok_or(TokenFileError::Content(name))
    }

    /// Has a bootstrap succeeded with it on this node?
    pub fn is_spent(&self) -> bool {
        self.digest.lock().map_or(true, |d| d.is_none())
    }

    /// Is `presented` the token, not yet spent? Constant time in the token's content.
    fn matches(&self, presented: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        match self.digest.lock() {
            Ok(d) => d.is_some_and(|d| bool::from(d.ct_eq(&given))),
            Err(_) => false,
        }
    }

    fn spend(&self) {
        if let Ok(mut d) = self.digest.lock() {
            *d = None;
        }
    }
}

/// `POST /api/v1/auth/bootstrap`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootstrapRequest {
    /// Read like a password: bounded, wiped when dropped, never printed.
    token: Password,
    username: String,
    password: Password,
    #[serde(default)]
    workspace: Option<String>,
}

/// What the operation needs.
pub struct Bootstrap {
    /// The one-time token.
    pub token: BootstrapToken,
    /// Where the admin is created.
    pub store: Store,
    /// Hashes its password (bounded, on the blocking pool).
    pub hasher: Arc<PasswordHasher>,
    /// Where refusals go.
    pub audit: AuditSink,
}

impl Bootstrap {
    async fn run(
        &self,
        req: Request,
        peer: Option<std::net::IpAddr>,
    ) -> Result<crate::iam::BootstrappedAdmin, &'static str> {
        let body: BootstrapRequest = json_body(req).await.map_err(|_| "bootstrap_malformed")?;
        let _turn = self.token.turn.lock().await;
        if !self.token.matches(body.token.expose()) {
            return Err("bootstrap_token");
        }
        let workspace = body
            .workspace
            .as_deref()
            .unwrap_or(crate::store::DEFAULT_WORKSPACE);
        match crate::iam::bootstrap_admin_user(
            &self.store,
            &self.hasher,
            workspace,
            &body.username,
            &body.password,
            ACTOR,
        )
        .await
        {
            Ok(admin) => {
                self.token.spend();
                tracing::warn!(
                    user = %admin.user.id,
                    peer = ?peer,
                    "first admin created over HTTP; the bootstrap token is spent: remove auth.bootstrap_token_file"
                );
                Ok(admin)
            }
            Err(e) => {
                // The operator's only clue: the client sees the fixed 401.
                tracing::warn!(error = %e, "HTTP bootstrap refused");
                Err("bootstrap_refused")
            }
        }
    }
}

/// The bootstrap operation, public (the token in the body is its credential).
pub fn operation(bootstrap: Arc<Bootstrap>) -> Operation {
    let router = axum::Router::new().route(
        BOOTSTRAP_PATH,
        post(move |caller: Option<Extension<Caller>>, req: Request| {
            let b = bootstrap.clone();
            async move {
                let peer = caller.and_then(|Extension(c)| c.peer);
                match b.run(req, peer).await {
                    Ok(admin) => (StatusCode::CREATED, axum::Json(admin)).into_response(),
                    Err(reason) => refuse(&b.audit, reason, peer),
                }
            }
        }),
    );
    Operation {
        name: "bootstrap",
        path: PathMatch::Exact(BOOTSTRAP_PATH),
        requires: Requirement::Public,
        auth: AuthPolicy::Public,
        router,
    }
}

fn refuse(audit: &AuditSink, reason: &'static str, peer: Option<std::net::IpAddr>) -> Response {
    audit.refused(Refusal {
        reason,
        credential_id: None,
        peer,
        capability: None,
    });
    rescued(GatewayError::Unauthorized(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_is_long_printable_and_spent_once() {
        assert!(BootstrapToken::new("short").is_none());
        assert!(BootstrapToken::new(&format!("{TOKEN} with space")).is_none());
        let t = BootstrapToken::new(&format!("  {TOKEN}\n")).unwrap();
        assert!(t.matches(TOKEN));
        assert!(!t.matches(&TOKEN[1..]));
        assert!(!t.matches(""));
        t.spend();
        assert!(t.is_spent());
        assert!(!t.matches(TOKEN));
        assert!(!format!("{t:?}").contains(TOKEN));
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_its_owners_alone_and_its_content_never_in_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, TOKEN).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = BootstrapToken::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(BootstrapToken::from_file(&path).unwrap().matches(TOKEN));
        std::fs::write(&path, "too-short-token").unwrap();
        let e = BootstrapToken::from_file(&path).unwrap_err().to_string();
        assert!(!e.contains("too-short-token"), "{e}");
        assert!(BootstrapToken::from_file(&dir.path().join("absent")).is_err());
    }
}
