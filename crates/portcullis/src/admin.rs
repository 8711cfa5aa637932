//! Admin commands on the store: `init`, `bootstrap`, `keys create|list|revoke|rotate`,
//! `workspaces create|list`, `audit list`. The binary parses flags into these [`clap`] structs and prints the
//! [`Output`]; everything else — validation, the store, the audit trail — happens here.
//!
//! Conventions every command follows: `--json` prints one JSON document on stdout; errors go
//! to stderr (as `{"error":…}` with `--json`); exit code 0 on success, 1 on failure, 2 on bad
//! usage. Commands that touch the store take `--config FILE` or `--data-dir DIR`
//! (`PORTCULLIS_DATA_DIR`). A raw key is printed exactly once, by the command that made it.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use crate::auth::authenticator::{create_key, rotate_key, CreateKey, IssuedKey};
use crate::auth::Pepper;
use crate::config::Config;
use crate::store::{now_ms, AuditEntry, KeyRecord, Store, StoreError, StoreOptions};

/// Where the store is: a configuration file, a data directory, or both (the directory wins).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Target {
    /// TOML configuration file (its `data_dir`, `[store]` and `[auth]` are used).
    #[arg(long, short, env = "PORTCULLIS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite store and pepper file); overrides the configuration's.
    #[arg(long, env = "PORTCULLIS_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A failed command: its message and exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    /// What went wrong, for stderr.
    pub message: String,
    /// 1 failure, 2 usage.
    pub code: u8,
}

impl AdminError {
    fn usage(m: impl Into<String>) -> Self {
        Self {
            message: m.into(),
            code: 2,
        }
    }
    fn failure(m: impl Into<String>) -> Self {
        Self {
            message: m.into(),
            code: 1,
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => Self::usage(m),
            other => Self::failure(other.to_string()),
        }
    }
}

impl From<crate::auth::pepper::PepperError> for AdminError {
    fn from(e: crate::auth::pepper::PepperError) -> Self {
        Self::failure(e.to_string())
    }
}

/// What a command printed: JSON for `--json`, text otherwise.
#[derive(Debug, Clone)]
pub struct Output {
    /// The JSON document.
    pub json: Value,
    /// The human text.
    pub text: String,
}

impl Target {
    /// The effective configuration: file (with `PORTCULLIS_*` overrides) or defaults, then
    /// `--data-dir`.
    pub fn load(&self) -> Result<Config, AdminError> {
        let mut cfg = Config::load(self.config.as_deref()).map_err(|e| match e {
            crate::config::LoadError::Read(m) => AdminError::failure(m),
            crate::config::LoadError::Invalid(errs) => AdminError::usage(
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        })?;
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        Ok(cfg)
    }
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

/// Unix ms as RFC 3339.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn opt_time(ms: Option<i64>) -> Value {
    ms.map(|m| Value::String(rfc3339(m))).unwrap_or(Value::Null)
}

/// `active`, `revoked` or `expired`.
pub fn status(k: &KeyRecord, now: i64) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.is_expired(now) {
        "expired"
    } else {
        "active"
    }
}

/// A key as JSON: never a secret or a hash.
pub fn key_json(k: &KeyRecord) -> Value {
    json!({
        "key_id": k.key_id,
        "workspace": k.workspace,
        "name": k.name,
        "scopes": k.scopes,
        "status": status(k, now_ms()),
        "created_at": rfc3339(k.created_at),
        "expires_at": opt_time(k.expires_at),
        "last_used_at": opt_time(k.last_used_at),
        "revoked_at": opt_time(k.revoked_at),
    })
}

fn issued_json(i: &IssuedKey) -> Value {
    let mut v = key_json(&i.record);
    if let Some(o) = v.as_object_mut() {
        o.insert("api_key".into(), Value::String(i.api_key.clone()));
    }
    v
}

fn issued_text(verb: &str, i: &IssuedKey) -> String {
    format!(
        "{verb} key {} in workspace {} (scopes: {}).\n\n  {}\n\nThis is the only time the key is shown: store it now. Send it as `Authorization: Bearer <key>`.\n",
        i.record.key_id,
        i.record.workspace,
        i.record.scopes.join(","),
        i.api_key
    )
}

/// Parse a duration flag (`30d`, `24h`, `0`).
pub fn parse_duration(flag: &str, s: &str) -> Result<Duration, AdminError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| AdminError::usage(format!("{flag} {s:?}: {e} (e.g. 30d, 12h, 0)")))
}

/// `portcullis init`: create the data directory, the store (migrations), the `default`
/// workspace and — when no pepper is configured — a pepper file (0600) in the data directory.
pub async fn init(cfg: &Config) -> Result<Output, AdminError> {
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
    let version = store.schema_version().await?.unwrap_or(0);
    let ws = store
        .ensure_workspace(crate::store::DEFAULT_WORKSPACE)
        .await?;
    store.close().await;
    let json = json!({
        "data_dir": cfg.data_dir,
        "store": opts.describe(),
        "schema_version": version,
        "workspace": ws.name,
        "pepper_file_created": pepper_created,
    });
    let mut text = format!(
        "Store ready: {} (schema version {version}), workspace `{}`.\n",
        opts.describe(),
        ws.name
    );
    if let Some(p) = &pepper_created {
        text.push_str(&format!(
            "Pepper written to {} (mode 0600): back it up — keys cannot be verified without it.\n",
            p.display()
        ));
    }
    text.push_str("Next: `portcullis bootstrap` creates the first admin key.\n");
    Ok(Output { json, text })
}

/// `portcullis bootstrap`: the first admin key (scope `*`, workspace `default`), only when
/// no active admin key exists.
pub async fn bootstrap(cfg: &Config) -> Result<Output, AdminError> {
    let req = CreateKey {
        workspace: crate::store::DEFAULT_WORKSPACE.into(),
        name: "bootstrap admin".into(),
        scopes: vec!["*".into()],
        expires_in: None,
        key_id: None,
    };
    issue(cfg, &req, true, "Created admin").await
}

/// Create a key from the CLI and say so (`verb`: "Created", "Created admin").
async fn issue(
    cfg: &Config,
    req: &CreateKey,
    bootstrap: bool,
    verb: &str,
) -> Result<Output, AdminError> {
    let (store, pepper) = open(cfg).await?;
    let r = create_key(&store, &pepper, req, "cli", bootstrap).await;
    store.close().await;
    let issued = r?;
    Ok(Output {
        json: issued_json(&issued),
        text: issued_text(verb, &issued),
    })
}

/// Flags of `keys create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Workspace the key belongs to.
    #[arg(long, short, default_value = crate::store::DEFAULT_WORKSPACE)]
    pub workspace: String,
    /// Display name (who or what uses the key).
    #[arg(long, short)]
    pub name: String,
    /// Capabilities the key grants, comma-separated (`*` grants all: an admin key).
    #[arg(long, short, value_delimiter = ',', required = true)]
    pub scopes: Vec<String>,
    /// Lifetime, e.g. `30d`, `12h`. Default: no expiry.
    #[arg(long)]
    pub expires: Option<String>,
    /// Key id, 4-64 of [a-z0-9-]. Default: generated.
    #[arg(long)]
    pub id: Option<String>,
}

/// `portcullis keys create`.
pub async fn keys_create(cfg: &Config, a: &CreateArgs) -> Result<Output, AdminError> {
    let expires_in = a
        .expires
        .as_deref()
        .map(|s| parse_duration("--expires", s))
        .transpose()?;
    let req = CreateKey {
        workspace: a.workspace.clone(),
        name: a.name.clone(),
        scopes: a.scopes.clone(),
        expires_in,
        key_id: a.id.clone(),
    };
    issue(cfg, &req, false, "Created").await
}

/// `portcullis keys list`: never secrets or hashes.
pub async fn keys_list(cfg: &Config, workspace: Option<&str>) -> Result<Output, AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let r = store.list_keys(workspace).await;
    store.close().await;
    let keys = r?;
    let now = now_ms();
    let mut text = format!(
        "{:<24} {:<16} {:<8} {:<24} {:<20} NAME\n",
        "KEY ID", "WORKSPACE", "STATUS", "SCOPES", "LAST USED"
    );
    for k in &keys {
        text.push_str(&format!(
            "{:<24} {:<16} {:<8} {:<24} {:<20} {}\n",
            k.key_id,
            k.workspace,
            status(k, now),
            k.scopes.join(","),
            k.last_used_at
                .map(rfc3339)
                .unwrap_or_else(|| "never".into()),
            k.name
        ));
    }
    Ok(Output {
        json: json!({ "keys": keys.iter().map(key_json).collect::<Vec<_>>() }),
        text,
    })
}

/// `portcullis keys revoke ID`.
pub async fn keys_revoke(cfg: &Config, key_id: &str) -> Result<Output, AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let r = store.revoke_key(key_id, "cli").await;
    store.close().await;
    let k = r?;
    Ok(Output {
        json: key_json(&k),
        text: format!(
            "Revoked key {}. Gateways refuse it from now on (other nodes within auth.invalidation_poll).\n",
            k.key_id
        ),
    })
}

/// `portcullis keys rotate ID [--overlap D]`.
pub async fn keys_rotate(cfg: &Config, key_id: &str, overlap: &str) -> Result<Output, AdminError> {
    let overlap = parse_duration("--overlap", overlap)?;
    let (store, pepper) = open(cfg).await?;
    let r = rotate_key(&store, &pepper, key_id, overlap, "cli").await;
    store.close().await;
    let (issued, until) = r?;
    let mut json = issued_json(&issued);
    if let Some(o) = json.as_object_mut() {
        o.insert("previous_valid_until".into(), Value::String(rfc3339(until)));
    }
    let mut text = issued_text("Rotated", &issued);
    text.push_str(&format!(
        "The previous secret works until {}.\n",
        rfc3339(until)
    ));
    Ok(Output { json, text })
}

/// `portcullis workspaces create NAME`.
pub async fn workspaces_create(cfg: &Config, name: &str) -> Result<Output, AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let r = store.create_workspace(name, Some("cli")).await;
    store.close().await;
    let w = r?;
    Ok(Output {
        json: json!({"id": w.id, "name": w.name, "created_at": rfc3339(w.created_at)}),
        text: format!("Created workspace {} ({}).\n", w.name, w.id),
    })
}

/// `portcullis workspaces list`.
pub async fn workspaces_list(cfg: &Config) -> Result<Output, AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let r = store.list_workspaces().await;
    store.close().await;
    let list = r?;
    let mut text = format!("{:<24} {:<20} CREATED\n", "NAME", "ID");
    for w in &list {
        text.push_str(&format!(
            "{:<24} {:<20} {}\n",
            w.name,
            w.id,
            rfc3339(w.created_at)
        ));
    }
    Ok(Output {
        json: json!({"workspaces": list.iter().map(|w| json!({"id": w.id, "name": w.name, "created_at": rfc3339(w.created_at)})).collect::<Vec<_>>()}),
        text,
    })
}

/// `portcullis audit list`.
pub async fn audit_list(cfg: &Config, limit: i64) -> Result<Output, AdminError> {
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let r = store.audit_list(limit).await;
    store.close().await;
    let entries = r?;
    let mut text = String::new();
    for e in entries.iter().rev() {
        text.push_str(&format!(
            "{} {:<14} actor={} key={} workspace={} reason={} {}\n",
            rfc3339(e.at),
            e.event,
            e.actor,
            e.key_id.as_deref().unwrap_or("-"),
            e.workspace.as_deref().unwrap_or("-"),
            e.reason.as_deref().unwrap_or("-"),
            e.detail.as_deref().unwrap_or("")
        ));
    }
    Ok(Output {
        json: json!({ "entries": entries.iter().map(audit_json).collect::<Vec<_>>() }),
        text,
    })
}

fn audit_json(e: &AuditEntry) -> Value {
    json!({
        "id": e.id,
        "at": rfc3339(e.at),
        "event": e.event,
        "actor": e.actor,
        "key_id": e.key_id,
        "workspace": e.workspace,
        "reason": e.reason,
        "detail": e.detail.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()),
    })
}
