//! Admin operations on the store: `init`, `bootstrap`, `keys create|list|revoke|rotate`,
//! `workspaces create|list`, `audit list`, `signing-keys list|rotate`.
//!
//! Each operation returns a typed value (`InitReport`, `IssuedKeyView`, `KeyList`, …) and
//! knows nothing of how it is shown: the CLI ([`crate::cli`]) renders text or `--json` from
//! it, and the coming admin HTTP API renders JSON from the same values, so the JSON shape of
//! an operation is its serde shape and is the same everywhere. Validation, the store and the
//! audit trail happen here; failures are an [`AdminError`] whose [`ErrorKind`] maps to an exit
//! code (and later an HTTP status).
//!
//! No view carries a secret or a hash, with one exception: the raw key of an
//! [`IssuedKeyView`], shown once by the operation that made it, in a [`OneTimeKey`] whose
//! `Debug` is masked.
//!
//! Each operation comes twice: on an open [`Store`] (what a running gateway will call) and on
//! a [`Config`] (the CLI: open the store, run, close it).

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use crate::auth::authenticator::{create_key, rotate_key, CreateKey, IssuedKey};
use crate::auth::Pepper;
use crate::config::Config;
use crate::store::{now_ms, AuditEntry, KeyRecord, Store, StoreError, StoreOptions, Workspace};

/// What kind of failure an [`AdminError`] is: decides the exit code (and, for the admin API,
/// the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is wrong (a bad flag value, an invalid name): exit 2.
    Usage,
    /// Something named does not exist: exit 1.
    NotFound,
    /// The request conflicts with what is stored (a name taken, an admin key exists): exit 1.
    Conflict,
    /// Anything else (no store, database down, unreadable pepper): exit 1.
    Failure,
}

/// A failed operation: what went wrong, for stderr or an error body, and its kind.
///
/// Serialises as `{"error": message}`, the shape `--json` prints on stderr.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct AdminError {
    /// What went wrong. Never a secret or the database URL.
    #[serde(rename = "error")]
    pub message: String,
    /// Which kind of failure.
    #[serde(skip)]
    pub kind: ErrorKind,
}

impl AdminError {
    /// A usage error (exit 2).
    pub fn usage(m: impl Into<String>) -> Self {
        Self {
            message: m.into(),
            kind: ErrorKind::Usage,
        }
    }

    /// A failure (exit 1).
    pub fn failure(m: impl Into<String>) -> Self {
        Self {
            message: m.into(),
            kind: ErrorKind::Failure,
        }
    }

    /// The process exit code of this error: 2 for usage, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            ErrorKind::Usage => 2,
            ErrorKind::NotFound | ErrorKind::Conflict | ErrorKind::Failure => 1,
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        let kind = match &e {
            StoreError::Invalid(_) => ErrorKind::Usage,
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::Conflict(_) => ErrorKind::Conflict,
            _ => ErrorKind::Failure,
        };
        Self {
            message: e.to_string(),
            kind,
        }
    }
}

impl From<crate::auth::pepper::PepperError> for AdminError {
    fn from(e: crate::auth::pepper::PepperError) -> Self {
        Self::failure(e.to_string())
    }
}

/// A point in time, held as Unix ms and shown (and serialised) as RFC 3339 to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&rfc3339(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Unix ms as RFC 3339.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Where a key stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Accepted.
    Active,
    /// Revoked: refused.
    Revoked,
    /// Past its expiry: refused.
    Expired,
}

impl KeyStatus {
    /// The status of `k` at `now` (Unix ms); revocation wins over expiry.
    pub fn of(k: &KeyRecord, now: i64) -> Self {
        if k.revoked_at.is_some() {
            Self::Revoked
        } else if k.is_expired(now) {
            Self::Expired
        } else {
            Self::Active
        }
    }

    /// `active`, `revoked` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API key as an operator sees it: never a secret or a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyView {
    /// Public key id (the part between `pcs_` and the next `_`).
    pub key_id: String,
    /// Workspace name.
    pub workspace: String,
    /// Display name.
    pub name: String,
    /// Capabilities the key grants; `*` grants all.
    pub scopes: Vec<String>,
    /// Active, revoked or expired, at the time the view was made.
    pub status: KeyStatus,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it expires; `null`: never.
    pub expires_at: Option<Timestamp>,
    /// When it was last used (written at most once a minute); `null`: never.
    pub last_used_at: Option<Timestamp>,
    /// When it was revoked; `null`: not revoked.
    pub revoked_at: Option<Timestamp>,
}

impl KeyView {
    /// The view of `k` at `now` (Unix ms).
    pub fn new(k: &KeyRecord, now: i64) -> Self {
        Self {
            key_id: k.key_id.clone(),
            workspace: k.workspace.clone(),
            name: k.name.clone(),
            scopes: k.scopes.clone(),
            status: KeyStatus::of(k, now),
            created_at: Timestamp(k.created_at),
            expires_at: k.expires_at.map(Timestamp),
            last_used_at: k.last_used_at.map(Timestamp),
            revoked_at: k.revoked_at.map(Timestamp),
        }
    }
}

/// A raw API key, shown once by the operation that made it. It serialises as itself (that is
/// the point of the one-time view) but its `Debug` is masked, so a logged view leaks nothing.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct OneTimeKey(String);

impl OneTimeKey {
    /// The key, to print once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OneTimeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why a key was issued: decides how it is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Issuance {
    /// `keys create`.
    Created,
    /// `bootstrap`: the first admin key.
    Bootstrap,
    /// `keys rotate`: a new secret for an existing key.
    Rotated,
}

/// A key just issued (created, bootstrapped or rotated), with its raw key shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedKeyView {
    /// The key.
    #[serde(flatten)]
    pub key: KeyView,
    /// The whole key, `pcs_<key-id>_<secret><checksum>`.
    pub api_key: OneTimeKey,
    /// Rotation only: until when the previous secret is still accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<Timestamp>,
    /// How the key came to be; not part of the JSON (each operation has its own).
    #[serde(skip)]
    pub issuance: Issuance,
}

impl IssuedKeyView {
    pub(crate) fn new(i: IssuedKey, issuance: Issuance, previous_valid_until: Option<i64>) -> Self {
        Self {
            key: KeyView::new(&i.record, now_ms()),
            api_key: OneTimeKey(i.api_key),
            previous_valid_until: previous_valid_until.map(Timestamp),
            issuance,
        }
    }
}

/// `keys list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyList {
    /// The keys, as the store orders them.
    pub keys: Vec<KeyView>,
}

/// `keys revoke`: the key as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RevokedKey(pub KeyView);

/// A workspace (tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceView {
    /// Stable id (`ws_` + 16 hex digits).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// When it was created.
    pub created_at: Timestamp,
}

impl From<&Workspace> for WorkspaceView {
    fn from(w: &Workspace) -> Self {
        Self {
            id: w.id.clone(),
            name: w.name.clone(),
            created_at: Timestamp(w.created_at),
        }
    }
}

/// `workspaces create`: the new workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CreatedWorkspace(pub WorkspaceView);

/// `workspaces list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceList {
    /// The workspaces.
    pub workspaces: Vec<WorkspaceView>,
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditView {
    /// Monotonic id.
    pub id: i64,
    /// When.
    pub at: Timestamp,
    /// Kind: `key_created`, `key_rotated`, `key_revoked`, `bootstrap`, `auth_failure`, …
    pub event: String,
    /// Who: `cli`, `gateway`, `demo`, or a key id.
    pub actor: String,
    /// The key concerned (a claimed key id for failures), never a secret.
    pub key_id: Option<String>,
    /// Workspace name.
    pub workspace: Option<String>,
    /// Reason (failures), from a closed set of names.
    pub reason: Option<String>,
    /// Detail, as the JSON it was recorded as; `null` when there is none.
    pub detail: Option<serde_json::Value>,
}

impl From<&AuditEntry> for AuditView {
    fn from(e: &AuditEntry) -> Self {
        Self {
            id: e.id,
            at: Timestamp(e.at),
            event: e.event.clone(),
            actor: e.actor.clone(),
            key_id: e.key_id.clone(),
            workspace: e.workspace.clone(),
            reason: e.reason.clone(),
            detail: e
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok()),
        }
    }
}

/// `audit list`: the newest events, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditPage {
    /// The events, newest first.
    pub entries: Vec<AuditView>,
}

/// `init`: what is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitReport {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The store, described without credentials (a path, or `postgres://host/db`).
    pub store: String,
    /// Schema version after migrations.
    pub schema_version: i64,
    /// The workspace made sure of (`default`).
    pub workspace: String,
    /// The pepper file written by this run; `null` when none was (configured, from the
    /// environment, or already there).
    pub pepper_file_created: Option<PathBuf>,
}

/// Where a signing key stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKeyStatus {
    /// Signs tokens and assertions now.
    Signing,
    /// Published, signs once it is past the publish delay.
    Next,
    /// Scheduled to stop signing (after a rotation), still signing or verifying.
    Retiring,
    /// No longer signs; verifies what it signed until `not_after`.
    Retired,
    /// Past `not_after`: verifies nothing.
    Expired,
}

/// A signing key as an operator sees it: never key material but its public key id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SigningKeyView {
    /// Key id (the `kid` of tokens and of the JWKS).
    pub kid: String,
    /// Where it stands.
    pub status: SigningKeyStatus,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it stops (or stopped) signing; `null`: not scheduled.
    pub retired_at: Option<Timestamp>,
    /// When it stops (or stopped) verifying; `null`: not scheduled.
    pub not_after: Option<Timestamp>,
}

/// `signing-keys list`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SigningKeyList {
    /// The keys.
    pub keys: Vec<SigningKeyView>,
}

/// A key a rotation replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplacedSigningKey {
    /// Its kid.
    pub kid: String,
    /// It stops signing then (when the new key starts).
    pub retired_at: Timestamp,
    /// It verifies until then.
    pub not_after: Timestamp,
}

/// `signing-keys rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotatedSigningKey {
    /// The new key.
    pub kid: String,
    /// When it starts signing: after the publish delay, so every node and service holds it.
    pub signs_from: Timestamp,
    /// The keys it replaces.
    pub replaced: Vec<ReplacedSigningKey>,
}

/// `signing-keys list` on a key store at `now`, as a gateway with `settings` sees them.
pub async fn signing_keys_list_on(
    store: &dyn crate::auth::signing::SigningKeyStore,
    settings: &crate::auth::signing::SigningSettings,
) -> Result<SigningKeyList, AdminError> {
    let mut stored = store.signing_keys().await?;
    stored.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.kid.cmp(&a.kid)));
    let now = settings.clock.now_ms();
    let delay = i64::try_from(settings.publish_delay.as_millis()).unwrap_or(i64::MAX);
    // The same choice as the gateway's key ring: newest live key past the delay, else the
    // oldest live one.
    // A retired key still signs for the publish delay after its retirement.
    let retiring = |k: &crate::auth::signing::StoredSigningKey| {
        k.retired_at.is_some_and(|r| now < r.saturating_add(delay))
    };
    let live = |k: &&crate::auth::signing::StoredSigningKey| {
        (k.retired_at.is_none() || retiring(k)) && k.not_after.is_none_or(|t| now < t)
    };
    let signer = stored
        .iter()
        .filter(live)
        .find(|k| k.created_at.saturating_add(delay) <= now)
        .or_else(|| stored.iter().rfind(live))
        .map(|k| k.kid.clone());
    let keys = stored
        .iter()
        .map(|k| {
            let status = if k.not_after.is_some_and(|t| t <= now) {
                SigningKeyStatus::Expired
            } else if retiring(k) {
                SigningKeyStatus::Retiring
            } else if k.retired_at.is_some() {
                SigningKeyStatus::Retired
            } else if Some(&k.kid) == signer.as_ref() {
                SigningKeyStatus::Signing
            } else {
                SigningKeyStatus::Next
            };
            SigningKeyView {
                kid: k.kid.clone(),
                status,
                created_at: Timestamp(k.created_at),
                retired_at: k.retired_at.map(Timestamp),
                not_after: k.not_after.map(Timestamp),
            }
        })
        .collect();
    Ok(SigningKeyList { keys })
}

/// `signing-keys rotate` on a key store: a new key, the current ones retiring when it starts
/// to sign (see [`crate::auth::signing::rotate`]). Running gateways pick it up within their
/// invalidation poll.
pub async fn signing_keys_rotate_on(
    store: &dyn crate::auth::signing::SigningKeyStore,
    pepper: &Pepper,
    settings: &crate::auth::signing::SigningSettings,
) -> Result<RotatedSigningKey, AdminError> {
    let r = crate::auth::signing::rotate(store, pepper, settings, settings.clock.now_ms())
        .await
        .map_err(|e| AdminError::failure(e.to_string()))?;
    Ok(RotatedSigningKey {
        kid: r.kid,
        signs_from: Timestamp(r.signs_from),
        replaced: r
            .retired
            .into_iter()
            .map(|(kid, not_after)| ReplacedSigningKey {
                kid,
                retired_at: Timestamp(r.signs_from),
                not_after: Timestamp(not_after),
            })
            .collect(),
    })
}

/// `signing-keys list`.
pub async fn signing_keys_list(cfg: &Config) -> Result<SigningKeyList, AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let settings = crate::auth::signing::SigningSettings::from_config(cfg);
    let r = signing_keys_list_on(&store, &settings).await;
    store.close().await;
    r
}

/// `signing-keys rotate`.
pub async fn signing_keys_rotate(cfg: &Config) -> Result<RotatedSigningKey, AdminError> {
    let (store, pepper) = open(cfg).await?;
    let settings = crate::auth::signing::SigningSettings::from_config(cfg);
    let r = signing_keys_rotate_on(&store, &pepper, &settings).await;
    store.close().await;
    r
}

/// Load the pepper the configuration names.
pub fn load_pepper(cfg: &Config) -> Result<Pepper, crate::auth::pepper::PepperError> {
    Pepper::load(
        cfg.auth.pepper_file.as_deref(),
        &cfg.data_dir,
        cfg.auth.pepper_version,
    )
}

/// Open the (initialised) store and the pepper.
pub async fn open(cfg: &Config) -> Result<(Store, Pepper), AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let pepper = load_pepper(cfg)?;
    Ok((store, pepper))
}

/// `init`: create the data directory, the store (migrations), the `default` workspace and —
/// when no pepper is configured — a pepper file (0600) in the data directory. Safe to repeat.
pub async fn init(cfg: &Config) -> Result<InitReport, AdminError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| AdminError::failure(format!("{}: {e}", cfg.data_dir.display())))?;
    let env_pepper = std::env::var(crate::auth::pepper::PEPPER_ENV)
        .map(|v| !v.trim().is_empty())
        .unwrap_or(false);
    let mut pepper_created = None;
    if !env_pepper && cfg.auth.pepper_file.is_none() {
        let p = cfg.data_dir.join(crate::auth::pepper::PEPPER_FILE_NAME);
        if Pepper::create_file(&p)? {
            pepper_created = Some(p);
        }
    }
    // The pepper must load before anything depends on it.
    load_pepper(cfg)?;
    let opts = StoreOptions::from_config(cfg);
    let store = Store::init(&opts).await?;
    let r = async {
        let version = store.schema_version().await?.unwrap_or(0);
        let ws = store
            .ensure_workspace(crate::store::DEFAULT_WORKSPACE)
            .await?;
        Ok::<_, StoreError>((version, ws))
    }
    .await;
    store.close().await;
    let (schema_version, ws) = r?;
    Ok(InitReport {
        data_dir: cfg.data_dir.clone(),
        store: opts.describe(),
        schema_version,
        workspace: ws.name,
        pepper_file_created: pepper_created,
    })
}

/// `bootstrap` on an open store: the first admin key (scope `*`, workspace `default`), only
/// when no active admin key exists.
pub async fn bootstrap_on(store: &Store, pepper: &Pepper) -> Result<IssuedKeyView, AdminError> {
    let req = CreateKey {
        workspace: crate::store::DEFAULT_WORKSPACE.into(),
        name: "bootstrap admin".into(),
        scopes: vec!["*".into()],
        expires_in: None,
        key_id: None,
    };
    let issued = create_key(store, pepper, &req, "cli", true).await?;
    Ok(IssuedKeyView::new(issued, Issuance::Bootstrap, None))
}

/// `bootstrap`.
pub async fn bootstrap(cfg: &Config) -> Result<IssuedKeyView, AdminError> {
    let (store, pepper) = open(cfg).await?;
    let r = bootstrap_on(&store, &pepper).await;
    store.close().await;
    r
}

/// `keys create` on an open store; `actor` is recorded in the audit log.
pub async fn keys_create_on(
    store: &Store,
    pepper: &Pepper,
    req: &CreateKey,
    actor: &str,
) -> Result<IssuedKeyView, AdminError> {
    let issued = create_key(store, pepper, req, actor, false).await?;
    Ok(IssuedKeyView::new(issued, Issuance::Created, None))
}

/// `keys create`.
pub async fn keys_create(cfg: &Config, req: &CreateKey) -> Result<IssuedKeyView, AdminError> {
    let (store, pepper) = open(cfg).await?;
    let r = keys_create_on(&store, &pepper, req, "cli").await;
    store.close().await;
    r
}

/// `keys list` on an open store: never secrets or hashes.
pub async fn keys_list_on(store: &Store, workspace: Option<&str>) -> Result<KeyList, AdminError> {
    // An unknown workspace is an error here as it is when creating a key in it, not an empty
    // list that looks like "no keys".
    if let Some(w) = workspace {
        if store.workspace_by_name(w).await?.is_none() {
            return Err(StoreError::NotFound(format!("workspace {w}")).into());
        }
    }
    let keys = store.list_keys(workspace).await?;
    let now = now_ms();
    Ok(KeyList {
        keys: keys.iter().map(|k| KeyView::new(k, now)).collect(),
    })
}

/// `keys list`.
pub async fn keys_list(cfg: &Config, workspace: Option<&str>) -> Result<KeyList, AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let r = keys_list_on(&store, workspace).await;
    store.close().await;
    r
}

/// A key id as given to `keys revoke` or `keys rotate`: refused, without repeating it, when
/// it is not one. Someone who pastes a whole key (`pcs_<id>_<secret>`) must not see the secret
/// echoed into a terminal, a log or a CI transcript.
pub fn check_key_id(key_id: &str) -> Result<(), AdminError> {
    if crate::auth::key::valid_key_id(key_id) {
        return Ok(());
    }
    let what = if key_id.starts_with("pcs_") {
        "that is a whole API key, not its id"
    } else {
        "that is not a key id"
    };
    Err(AdminError::usage(format!(
        "{what} (not repeated here): expected a key id, 4-64 of [a-z0-9-], the part of a key \
         between `pcs_` and the next `_` (`keys list` shows them)"
    )))
}

/// `keys revoke` on an open store.
pub async fn keys_revoke_on(
    store: &Store,
    key_id: &str,
    actor: &str,
) -> Result<RevokedKey, AdminError> {
    check_key_id(key_id)?;
    let k = store.revoke_key(key_id, actor).await?;
    Ok(RevokedKey(KeyView::new(&k, now_ms())))
}

/// `keys revoke`.
pub async fn keys_revoke(cfg: &Config, key_id: &str) -> Result<RevokedKey, AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let r = keys_revoke_on(&store, key_id, "cli").await;
    store.close().await;
    r
}

/// `keys rotate` on an open store: a new secret now; the previous one until `overlap` ends.
pub async fn keys_rotate_on(
    store: &Store,
    pepper: &Pepper,
    key_id: &str,
    overlap: Duration,
    actor: &str,
) -> Result<IssuedKeyView, AdminError> {
    check_key_id(key_id)?;
    let (issued, until) = rotate_key(store, pepper, key_id, overlap, actor).await?;
    Ok(IssuedKeyView::new(issued, Issuance::Rotated, Some(until)))
}

/// `keys rotate`.
pub async fn keys_rotate(
    cfg: &Config,
    key_id: &str,
    overlap: Duration,
) -> Result<IssuedKeyView, AdminError> {
    let (store, pepper) = open(cfg).await?;
    let r = keys_rotate_on(&store, &pepper, key_id, overlap, "cli").await;
    store.close().await;
    r
}

/// `workspaces create` on an open store.
pub async fn workspaces_create_on(
    store: &Store,
    name: &str,
    actor: &str,
) -> Result<CreatedWorkspace, AdminError> {
    let w = store.create_workspace(name, Some(actor)).await?;
    Ok(CreatedWorkspace(WorkspaceView::from(&w)))
}

/// `workspaces create`.
pub async fn workspaces_create(cfg: &Config, name: &str) -> Result<CreatedWorkspace, AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let r = workspaces_create_on(&store, name, "cli").await;
    store.close().await;
    r
}

/// `workspaces list` on an open store.
pub async fn workspaces_list_on(store: &Store) -> Result<WorkspaceList, AdminError> {
    let list = store.list_workspaces().await?;
    Ok(WorkspaceList {
        workspaces: list.iter().map(WorkspaceView::from).collect(),
    })
}

/// `workspaces list`.
pub async fn workspaces_list(cfg: &Config) -> Result<WorkspaceList, AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let r = workspaces_list_on(&store).await;
    store.close().await;
    r
}

/// `audit list` on an open store: the newest `limit` events, newest first.
pub async fn audit_list_on(store: &Store, limit: i64) -> Result<AuditPage, AdminError> {
    let entries = store.audit_list(limit).await?;
    Ok(AuditPage {
        entries: entries.iter().map(AuditView::from).collect(),
    })
}

/// `audit list`.
pub async fn audit_list(cfg: &Config, limit: i64) -> Result<AuditPage, AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let r = audit_list_on(&store, limit).await;
    store.close().await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> KeyRecord {
        KeyRecord {
            key_id: "ci-key".into(),
            workspace_id: "ws_0000000000000001".into(),
            workspace: "default".into(),
            user_id: None,
            name: "ci".into(),
            scopes: vec!["echo.read".into()],
            created_at: 0,
            expires_at: Some(1_000),
            last_used_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn key_view_json_has_the_cli_field_names_and_rfc3339_times() {
        let v = serde_json::to_value(KeyView::new(&record(), 0)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "key_id": "ci-key",
                "workspace": "default",
                "name": "ci",
                "scopes": ["echo.read"],
                "status": "active",
                "created_at": "1970-01-01T00:00:00Z",
                "expires_at": "1970-01-01T00:00:01Z",
                "last_used_at": null,
                "revoked_at": null,
            })
        );
        assert_eq!(KeyView::new(&record(), 1_000).status, KeyStatus::Expired);
    }

    #[test]
    fn issued_key_json_adds_the_raw_key_and_debug_masks_it() {
        let issued = IssuedKey {
            record: record(),
            api_key: "pcs_ci-key_SecretSecretSecret".into(),
        };
        let v = IssuedKeyView::new(issued, Issuance::Rotated, Some(2_000));
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["api_key"], "pcs_ci-key_SecretSecretSecret");
        assert_eq!(json["key_id"], "ci-key");
        assert_eq!(json["previous_valid_until"], "1970-01-01T00:00:02Z");
        assert!(json.get("issuance").is_none(), "{json}");
        assert!(!format!("{v:?}").contains("SecretSecret"), "{v:?}");
    }

    #[tokio::test]
    async fn signing_keys_list_and_rotate_show_which_key_signs() {
        use crate::auth::signing::{MemorySigningKeys, SigningKeys, SigningSettings};
        let clock = crate::clock::ManualClock::new(10_000_000);
        let settings = SigningSettings {
            publish_delay: Duration::from_secs(10),
            rotation: Duration::from_secs(3600),
            token_ttl: Duration::from_secs(900),
            clock: clock.clock(),
        };
        let store = MemorySigningKeys::new();
        let pepper = Pepper::new(vec![7; 32], 1).unwrap();
        SigningKeys::load(store.clone(), pepper.clone(), settings.clone())
            .await
            .unwrap();
        clock.advance(Duration::from_secs(60));
        let r = signing_keys_rotate_on(&*store, &pepper, &settings)
            .await
            .unwrap();
        assert_eq!(r.replaced.len(), 1);
        let list = signing_keys_list_on(&*store, &settings).await.unwrap();
        let status: Vec<_> = list.keys.iter().map(|k| k.status).collect();
        assert_eq!(
            status,
            [SigningKeyStatus::Next, SigningKeyStatus::Retiring],
            "newest first"
        );
        clock.advance(Duration::from_secs(10));
        let list = signing_keys_list_on(&*store, &settings).await.unwrap();
        let status: Vec<_> = list.keys.iter().map(|k| k.status).collect();
        assert_eq!(
            status,
            [SigningKeyStatus::Signing, SigningKeyStatus::Retired]
        );
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["keys"][0]["status"], "signing");
        assert!(json["keys"][0]["retired_at"].is_null());
    }

    #[test]
    fn errors_serialise_as_an_error_object_and_map_kinds_to_exit_codes() {
        let e = AdminError::from(StoreError::Invalid("bad".into()));
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"error": "bad"})
        );
        assert_eq!(
            AdminError::from(StoreError::NotFound("key x".into())).kind,
            ErrorKind::NotFound
        );
        assert_eq!(AdminError::failure("x").exit_code(), 1);
    }
}
