//! Admin operations on the pairings of instance keys: `pairings list|approve|deny|revoke`
//! (docs/link-protocol.md §10.1).
//!
//! Like [`crate::admin`], each operation returns a typed view whose serde shape is its JSON
//! everywhere (`--json`, the admin HTTP API) and whose [`Render`] text the CLI prints; each
//! comes on an open [`Store`] (the gateway's API) and on a [`Config`] (the CLI). Views carry
//! public keys' fingerprints and pairing codes, never anything secret (an instance's private
//! key never reaches the gateway).

use serde::Serialize;
use std::fmt::Write as _;

use crate::admin::{AdminError, Timestamp};
use crate::cli::Render;
use crate::config::Config;
use crate::store::link_keys::normalise_code;
use crate::store::{LinkKey, LinkKeyState, Store, StoreOptions};

/// A key and its pairing as an admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairingView {
    /// `pending`, `approved`, `denied`, `revoked` — or `expired`, a pending one past its time.
    pub state: &'static str,
    /// The code, while pending.
    pub code: Option<String>,
    /// The service it pairs for.
    pub service: String,
    /// The instance that asked.
    pub instance: String,
    /// The one instance it is bound to, if bound.
    pub bound_instance: Option<String>,
    /// The key's fingerprint.
    pub fingerprint: String,
    /// When it was requested.
    pub requested_at: Timestamp,
    /// When a pending pairing lapses.
    pub expires_at: Option<Timestamp>,
    /// When it was decided or revoked.
    pub decided_at: Option<Timestamp>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// The webhook notification: `sent`, `failed`, or absent (none configured yet).
    pub webhook: Option<String>,
    /// The last webhook failure.
    pub webhook_error: Option<String>,
}

impl PairingView {
    /// The view of `k` at `now`.
    pub fn of(k: &LinkKey, now: i64) -> Self {
        Self {
            state: if k.is_lapsed(now) {
                "expired"
            } else {
                k.state.as_str()
            },
            code: k.code.clone().filter(|_| !k.is_lapsed(now)),
            service: k.service.clone(),
            instance: k.instance_id.clone(),
            bound_instance: k.bound_instance.clone(),
            fingerprint: k.fingerprint.clone(),
            requested_at: Timestamp(k.requested_at),
            expires_at: k.expires_at.map(Timestamp),
            decided_at: k.decided_at.map(Timestamp),
            decided_by: k.decided_by.clone(),
            revoked_reason: k.revoked_reason.clone(),
            webhook: k.webhook_state.clone(),
            webhook_error: k.webhook_error.clone(),
        }
    }
}

/// `pairings list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairingList {
    /// Newest first.
    pub pairings: Vec<PairingView>,
}

/// `pairings approve|deny`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairingDecision {
    /// What was done: `approved` or `denied`.
    pub decision: &'static str,
    /// The key now.
    pub pairing: PairingView,
}

/// `pairings revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevokedPairings {
    /// The keys revoked.
    pub revoked: Vec<PairingView>,
}

fn code_arg(code: &str) -> Result<String, AdminError> {
    normalise_code(code).ok_or_else(|| {
        AdminError::usage(format!(
            "{code:?} is not a pairing code (8 characters of {})",
            String::from_utf8_lossy(portcullis_link::PAIRING_ALPHABET)
        ))
    })
}

/// `pairings list` on a store at `now`: every key, or only the pending ones.
pub async fn list_on(
    store: &Store,
    pending_only: bool,
    now: i64,
) -> Result<PairingList, AdminError> {
    let state = pending_only.then_some(LinkKeyState::Pending);
    let keys = store.list_link_keys(state, 1000).await?;
    Ok(PairingList {
        pairings: keys
            .iter()
            .filter(|k| !pending_only || !k.is_lapsed(now))
            .map(|k| PairingView::of(k, now))
            .collect(),
    })
}

/// `pairings approve CODE` / `deny CODE` on a store, by `actor`.
pub async fn decide_on(
    store: &Store,
    code: &str,
    approve: bool,
    bind_instance: bool,
    now: i64,
    actor: &str,
) -> Result<PairingDecision, AdminError> {
    let code = code_arg(code)?;
    if bind_instance && !approve {
        return Err(AdminError::usage("--bind-instance goes with approve"));
    }
    let k = store
        .decide_pairing(&code, approve, bind_instance, now, actor)
        .await?;
    Ok(PairingDecision {
        decision: if approve { "approved" } else { "denied" },
        pairing: PairingView::of(&k, now),
    })
}

/// `pairings revoke SERVICE/INSTANCE` on a store, by `actor`.
pub async fn revoke_on(
    store: &Store,
    target: &str,
    now: i64,
    actor: &str,
) -> Result<RevokedPairings, AdminError> {
    let (service, instance) = target
        .split_once('/')
        .filter(|(s, i)| portcullis_link::valid_service_name(s) && portcullis_link::valid_token(i))
        .ok_or_else(|| AdminError::usage(format!("{target:?}: expected SERVICE/INSTANCE")))?;
    let revoked = store
        .revoke_instance_keys(service, instance, "admin", now, actor)
        .await?;
    if revoked.is_empty() {
        return Err(AdminError::from(crate::store::StoreError::NotFound(
            format!("an approved key of {service}/{instance}"),
        )));
    }
    Ok(RevokedPairings {
        revoked: revoked.iter().map(|k| PairingView::of(k, now)).collect(),
    })
}

async fn with_store<T, F, Fut>(cfg: &Config, f: F) -> Result<T, AdminError>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = Result<T, AdminError>>,
{
    let store = Store::open(&StoreOptions::from_config(cfg)).await?;
    let r = f(store.clone()).await;
    store.close().await;
    r
}

/// `pairings list` (CLI).
pub async fn list(cfg: &Config, pending_only: bool) -> Result<PairingList, AdminError> {
    with_store(cfg, |s| async move {
        list_on(&s, pending_only, crate::store::now_ms()).await
    })
    .await
}

/// `pairings approve|deny` (CLI).
pub async fn decide(
    cfg: &Config,
    code: &str,
    approve: bool,
    bind_instance: bool,
) -> Result<PairingDecision, AdminError> {
    with_store(cfg, |s| async move {
        decide_on(
            &s,
            code,
            approve,
            bind_instance,
            crate::store::now_ms(),
            "cli",
        )
        .await
    })
    .await
}

/// `pairings revoke` (CLI).
pub async fn revoke(cfg: &Config, target: &str) -> Result<RevokedPairings, AdminError> {
    with_store(cfg, |s| async move {
        revoke_on(&s, target, crate::store::now_ms(), "cli").await
    })
    .await
}

impl Render for PairingList {
    fn text(&self) -> String {
        if self.pairings.is_empty() {
            return "No pairings.\n".into();
        }
        let mut text = format!(
            "{:<9} {:<9} {:<20} {:<28} {:<22} {:<20} WEBHOOK\n",
            "STATE", "CODE", "SERVICE", "INSTANCE", "REQUESTED", "EXPIRES"
        );
        for p in &self.pairings {
            let _ = writeln!(
                text,
                "{:<9} {:<9} {:<20} {:<28} {:<22} {:<20} {}",
                p.state,
                p.code.as_deref().unwrap_or("-"),
                p.service,
                p.bound_instance.as_deref().unwrap_or(&p.instance),
                p.requested_at.to_string(),
                p.expires_at
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
                match (&p.webhook, &p.webhook_error) {
                    (Some(s), Some(e)) => format!("{s}: {e}"),
                    (Some(s), None) => s.clone(),
                    _ => "-".into(),
                }
            );
            let _ = writeln!(text, "          key {}", p.fingerprint);
        }
        text
    }
}

impl Render for PairingDecision {
    fn text(&self) -> String {
        let p = &self.pairing;
        match self.decision {
            "approved" => format!(
                "Approved key {} for {}{}. The instance links on its next attempt.\n",
                p.fingerprint,
                p.service,
                p.bound_instance
                    .as_deref()
                    .map(|i| format!(" (instance {i} only)"))
                    .unwrap_or_default()
            ),
            _ => format!(
                "Denied key {} of {}/{}: it will never link.\n",
                p.fingerprint, p.service, p.instance
            ),
        }
    }
}

impl Render for RevokedPairings {
    fn text(&self) -> String {
        let mut text = String::new();
        for p in &self.revoked {
            let _ = writeln!(
                text,
                "Revoked key {} of {}/{}: its links close and it must pair again.",
                p.fingerprint, p.service, p.instance
            );
        }
        text
    }
}
