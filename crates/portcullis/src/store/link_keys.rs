//! Instance keys of links and their pairings (`link_keys`, migration v3).
//!
//! One row per Ed25519 public key (64 hex digits), from the first HELLO that shows it to the
//! end of its trust:
//!
//! ```text
//!   (unknown) --HELLO--> pending --approve--> approved --revoke--> revoked
//!                          |  \--deny------> denied               |
//!                          \--ttl passes--> (lapsed: a new HELLO makes it pending again,
//!                                            with a new code)     (a new HELLO: pending again)
//! ```
//!
//! A pending row carries its pairing code (unique while set) and its expiry; a decision
//! clears the code. Requests come from peers that hold a key (the gateway verified the
//! signature) but are otherwise unauthenticated, so [`Store::request_pairing`] bounds the
//! pending rows and purges lapsed ones first; they write no audit row and do not bump the
//! change generation (both are for admin actions). Approvals, denials and revocations bump
//! the generation — so every gateway node re-checks its live links — and write their audit
//! row in the same transaction.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::audit::{append_on, AuditEvent};
use super::{bump_generation, Store, StoreError};

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKeyState {
    /// Waiting for an admin, with a code (see [`LinkKey::is_lapsed`]).
    Pending,
    /// Trusted for its service (and instance, when bound).
    Approved,
    /// Refused by an admin, for good.
    Denied,
    /// Trust ended (by an admin, a replay or too many failures); a new HELLO pairs again.
    Revoked,
}

impl LinkKeyState {
    /// Stable name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

/// An instance key as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkKey {
    /// The Ed25519 public key, 64 lowercase hex digits.
    pub public_key: String,
    /// Its fingerprint (`SHA256:…`).
    pub fingerprint: String,
    /// The service it pairs (or paired) for.
    pub service: String,
    /// The instance id of the HELLO that requested the pairing.
    pub instance_id: String,
    /// When approved bound to one instance: that instance id.
    pub bound_instance: Option<String>,
    /// Where it is in its life.
    pub state: LinkKeyState,
    /// The pairing code while pending.
    pub code: Option<String>,
    /// When the (latest) pairing was requested, Unix ms.
    pub requested_at: i64,
    /// When a pending pairing lapses, Unix ms.
    pub expires_at: Option<i64>,
    /// When it was approved, denied or revoked, Unix ms.
    pub decided_at: Option<i64>,
    /// Who decided (`cli`, an admin's key id, `gateway` for automatic revocations).
    pub decided_by: Option<String>,
    /// Why it was revoked (`admin`, `link_replay`, `link_failures`).
    pub revoked_reason: Option<String>,
    /// Webhook notification of the pairing: `sent`, `failed`, `pending`, or none configured.
    pub webhook_state: Option<String>,
    /// The last webhook failure, for the admin (never a secret).
    pub webhook_error: Option<String>,
    /// Webhook attempts made.
    pub webhook_attempts: i64,
}

impl LinkKey {
    /// Is it a pending pairing past its expiry at `now`?
    pub fn is_lapsed(&self, now: i64) -> bool {
        self.state == LinkKeyState::Pending && self.expires_at.is_none_or(|t| t <= now)
    }

    /// Does it authenticate `service`/`instance_id`?
    pub fn admits(&self, service: &str, instance_id: &str) -> bool {
        self.state == LinkKeyState::Approved
            && self.service == service
            && self
                .bound_instance
                .as_deref()
                .is_none_or(|b| b == instance_id)
    }
}

/// A pairing request: a HELLO with a verified signature and a key the gateway cannot trust.
#[derive(Debug, Clone)]
pub struct PairingRequest {
    /// The public key, 64 lowercase hex digits.
    pub public_key: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The HELLO's service.
    pub service: String,
    /// The HELLO's instance id.
    pub instance_id: String,
    /// Now, Unix ms (from the gateway's clock).
    pub now: i64,
    /// Lifetime of the pairing, ms.
    pub ttl_ms: i64,
    /// Pending pairings allowed at once.
    pub max_pending: i64,
}

/// What [`Store::request_pairing`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingOutcome {
    /// A pairing is pending (new, renewed, or the one already there): show its code.
    Pending(LinkKey),
    /// The key is known and not pairable: approved, denied, or paired for another service.
    Known(LinkKey),
    /// The bound on pending pairings is reached.
    Full,
}

const COLUMNS: &str = "public_key, fingerprint, service, instance_id, bound_instance, state, \
     code, requested_at, expires_at, decided_at, decided_by, revoked_reason, webhook_state, \
     webhook_error, webhook_attempts";

fn from_row(r: &AnyRow) -> Result<LinkKey, sqlx::Error> {
    let state: String = r.try_get("state")?;
    Ok(LinkKey {
        public_key: r.try_get("public_key")?,
        fingerprint: r.try_get("fingerprint")?,
        service: r.try_get("service")?,
        instance_id: r.try_get("instance_id")?,
        bound_instance: r.try_get("bound_instance")?,
        state: LinkKeyState::parse(&state).ok_or_else(|| {
            sqlx::Error::Decode(format!("link key: unknown state {state:?}").into())
        })?,
        code: r.try_get("code")?,
        requested_at: r.try_get("requested_at")?,
        expires_at: r.try_get("expires_at")?,
        decided_at: r.try_get("decided_at")?,
        decided_by: r.try_get("decided_by")?,
        revoked_reason: r.try_get("revoked_reason")?,
        webhook_state: r.try_get("webhook_state")?,
        webhook_error: r.try_get("webhook_error")?,
        webhook_attempts: r.try_get("webhook_attempts")?,
    })
}

async fn key_on(
    conn: &mut sqlx::AnyConnection,
    public_key: &str,
) -> Result<Option<LinkKey>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM link_keys WHERE public_key = $1"
    ))
    .bind(public_key)
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

async fn key_by_code_on(
    conn: &mut sqlx::AnyConnection,
    code: &str,
) -> Result<Option<LinkKey>, sqlx::Error> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM link_keys WHERE code = $1"))
        .bind(code)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// A random pairing code.
pub fn random_code() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..portcullis_link::PAIRING_CODE_LEN)
        .map(|_| {
            let alphabet = portcullis_link::PAIRING_ALPHABET;
            alphabet[rng.gen_range(0..alphabet.len())] as char
        })
        .collect()
}

/// A code as an admin may type it (lower case, a dash or spaces in the middle), normalised;
/// `None` when it cannot be a code.
pub fn normalise_code(s: &str) -> Option<String> {
    let c: String = s
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    portcullis_link::valid_pairing_code(&c).then_some(c)
}

impl Store {
    /// The key with this public key (64 hex digits).
    pub async fn link_key(&self, public_key: &str) -> Result<Option<LinkKey>, StoreError> {
        let pk = public_key.to_owned();
        self.at_home(move |store| async move {
            let mut conn = store.pool().acquire().await?;
            Ok(key_on(&mut conn, &pk).await?)
        })
        .await
    }

    /// Record a pairing request (see the module doc): a pending pairing for a new key, or for
    /// a revoked or lapsed one with a new code; the pending pairing already there for the same
    /// service; or [`PairingOutcome::Known`] for a key that is approved, denied, or belongs to
    /// another service. Purges lapsed pairings and refuses ([`PairingOutcome::Full`]) once
    /// `max_pending` are pending.
    pub async fn request_pairing(
        &self,
        req: &PairingRequest,
    ) -> Result<PairingOutcome, StoreError> {
        let req = req.clone();
        self.at_home(move |store| async move {
            let mut tx = store.pool().begin().await?;
            // Lapsed pairings give their code (and their place under the bound) back; the row
            // stays, so a known key's history is kept and the bound counts pending rows only.
            sqlx::query(
                "UPDATE link_keys SET code = NULL, state = 'revoked', revoked_reason = 'lapsed'
                 WHERE state = 'pending' AND expires_at <= $1",
            )
            .bind(req.now)
            .execute(&mut *tx)
            .await?;
            let existing = key_on(&mut tx, &req.public_key).await?;
            let settled = match &existing {
                Some(k) if k.service != req.service => Some(PairingOutcome::Known(k.clone())),
                Some(k) if matches!(k.state, LinkKeyState::Approved | LinkKeyState::Denied) => {
                    Some(PairingOutcome::Known(k.clone()))
                }
                Some(k) if k.state == LinkKeyState::Pending => {
                    Some(PairingOutcome::Pending(k.clone()))
                }
                _ => None,
            };
            let pending: i64 =
                sqlx::query("SELECT COUNT(*) FROM link_keys WHERE state = 'pending'")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
            let settled = settled.or((pending >= req.max_pending).then_some(PairingOutcome::Full));
            if let Some(outcome) = settled {
                tx.commit().await?; // the purge
                return Ok(outcome);
            }
            // A code unique among pending pairings: 31^8 codes against at most `max_pending`
            // taken, so a collision is rare and a few tries are plenty.
            let mut code = random_code();
            for _ in 0..8 {
                if key_by_code_on(&mut tx, &code).await?.is_none() {
                    break;
                }
                code = random_code();
            }
            let expires_at = req.now.saturating_add(req.ttl_ms);
            if existing.is_some() {
                sqlx::query(
                    "UPDATE link_keys SET state = 'pending', code = $2, instance_id = $3,
                        bound_instance = NULL, requested_at = $4, expires_at = $5,
                        decided_at = NULL, decided_by = NULL, revoked_reason = NULL,
                        webhook_state = NULL, webhook_error = NULL, webhook_attempts = 0
                     WHERE public_key = $1",
                )
                .bind(&req.public_key)
                .bind(&code)
                .bind(&req.instance_id)
                .bind(req.now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "INSERT INTO link_keys (public_key, fingerprint, service, instance_id,
                        state, code, requested_at, expires_at, webhook_attempts)
                     VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, 0)",
                )
                .bind(&req.public_key)
                .bind(&req.fingerprint)
                .bind(&req.service)
                .bind(&req.instance_id)
                .bind(&code)
                .bind(req.now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
            }
            let key = key_on(&mut tx, &req.public_key)
                .await?
                .ok_or_else(|| StoreError::NotFound("link key".into()))?;
            tx.commit().await?;
            Ok(PairingOutcome::Pending(key))
        })
        .await
    }

    /// Every key, or those in `state`, newest request first, at most `limit`.
    pub async fn list_link_keys(
        &self,
        state: Option<LinkKeyState>,
        limit: i64,
    ) -> Result<Vec<LinkKey>, StoreError> {
        self.at_home(move |store| async move {
            let limit = limit.clamp(1, 100_000);
            let rows = match state {
                Some(s) => {
                    sqlx::query(&format!(
                        "SELECT {COLUMNS} FROM link_keys WHERE state = $1
                         ORDER BY requested_at DESC, public_key LIMIT $2"
                    ))
                    .bind(s.as_str())
                    .bind(limit)
                    .fetch_all(store.pool())
                    .await?
                }
                None => {
                    sqlx::query(&format!(
                        "SELECT {COLUMNS} FROM link_keys
                         ORDER BY requested_at DESC, public_key LIMIT $1"
                    ))
                    .bind(limit)
                    .fetch_all(store.pool())
                    .await?
                }
            };
            Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Keys by state at `now` (lapsed pending pairings not counted), every state listed.
    pub async fn count_link_keys(&self, now: i64) -> Result<Vec<(LinkKeyState, i64)>, StoreError> {
        self.at_home(move |store| async move {
            let rows = sqlx::query(
                "SELECT state, COUNT(*) FROM link_keys
                 WHERE state <> 'pending' OR expires_at > $1 GROUP BY state",
            )
            .bind(now)
            .fetch_all(store.pool())
            .await?;
            let mut out: Vec<(LinkKeyState, i64)> = [
                LinkKeyState::Pending,
                LinkKeyState::Approved,
                LinkKeyState::Denied,
                LinkKeyState::Revoked,
            ]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
            for r in rows {
                let state: String = r.try_get(0)?;
                let n: i64 = r.try_get(1)?;
                if let Some(e) = out.iter_mut().find(|(s, _)| s.as_str() == state) {
                    e.1 = n;
                }
            }
            Ok(out)
        })
        .await
    }

    /// Pending pairings not lapsed at `now`.
    pub async fn count_pending_pairings(&self, now: i64) -> Result<i64, StoreError> {
        self.at_home(move |store| async move {
            Ok(sqlx::query(
                "SELECT COUNT(*) FROM link_keys WHERE state = 'pending' AND expires_at > $1",
            )
            .bind(now)
            .fetch_one(store.pool())
            .await?
            .try_get(0)?)
        })
        .await
    }

    /// Approve or deny the pending pairing with `code` at `now`. Approval binds the key to its
    /// service and, with `bind_instance`, to the instance id that requested it. Fails
    /// `NotFound` for an unknown code and `Conflict` for a lapsed one. Audits
    /// `pairing_approved` / `pairing_denied`.
    pub async fn decide_pairing(
        &self,
        code: &str,
        approve: bool,
        bind_instance: bool,
        now: i64,
        actor: &str,
    ) -> Result<LinkKey, StoreError> {
        let (code, actor) = (code.to_owned(), actor.to_owned());
        self.at_home(move |store| async move {
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let key = key_by_code_on(&mut tx, &code)
                .await?
                .filter(|k| k.state == LinkKeyState::Pending)
                .ok_or_else(|| StoreError::NotFound(format!("pairing {code}")))?;
            if key.is_lapsed(now) {
                return Err(StoreError::Conflict(format!(
                    "pairing {code} has expired; the instance gets a new code on its next attempt"
                )));
            }
            let (state, bound) = if approve {
                (
                    LinkKeyState::Approved,
                    bind_instance.then(|| key.instance_id.clone()),
                )
            } else {
                (LinkKeyState::Denied, None)
            };
            sqlx::query(
                "UPDATE link_keys SET state = $2, code = NULL, expires_at = NULL,
                    bound_instance = $3, decided_at = $4, decided_by = $5
                 WHERE public_key = $1",
            )
            .bind(&key.public_key)
            .bind(state.as_str())
            .bind(&bound)
            .bind(now)
            .bind(&actor)
            .execute(&mut *tx)
            .await?;
            append_on(
                &mut tx,
                &AuditEvent {
                    event: if approve {
                        "pairing_approved"
                    } else {
                        "pairing_denied"
                    },
                    actor: actor.clone(),
                    key_id: Some(key.fingerprint.clone()),
                    reason: None,
                    workspace: None,
                    detail: Some(
                        serde_json::json!({
                            "service": key.service,
                            "instance": key.instance_id,
                            "bound_instance": bound,
                        })
                        .to_string(),
                    ),
                },
            )
            .await?;
            let key = key_on(&mut tx, &key.public_key)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("pairing {code}")))?;
            tx.commit().await?;
            Ok(key)
        })
        .await
    }

    /// Revoke the approved keys of `service` that are bound to `instance_id` or were paired
    /// by it. Returns them (empty: nothing matched). Audits `link_key_revoked` with
    /// `reason` for each.
    pub async fn revoke_instance_keys(
        &self,
        service: &str,
        instance_id: &str,
        reason: &str,
        now: i64,
        actor: &str,
    ) -> Result<Vec<LinkKey>, StoreError> {
        let (service, instance, reason, actor) = (
            service.to_owned(),
            instance_id.to_owned(),
            reason.to_owned(),
            actor.to_owned(),
        );
        self.at_home(move |store| async move {
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM link_keys WHERE state = 'approved' AND service = $1
                 AND (instance_id = $2 OR bound_instance = $2)"
            ))
            .bind(&service)
            .bind(&instance)
            .fetch_all(&mut *tx)
            .await?;
            let keys: Vec<LinkKey> = rows.iter().map(from_row).collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                out.push(revoke_on(&mut tx, &k, &reason, now, &actor).await?);
            }
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    /// Revoke one approved key (the gateway's automatic revocation on a replay or a flood of
    /// failures). `None` when it was not approved (already revoked by another node).
    pub async fn revoke_link_key(
        &self,
        public_key: &str,
        reason: &str,
        now: i64,
        actor: &str,
    ) -> Result<Option<LinkKey>, StoreError> {
        let (pk, reason, actor) = (public_key.to_owned(), reason.to_owned(), actor.to_owned());
        self.at_home(move |store| async move {
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let Some(k) = key_on(&mut tx, &pk)
                .await?
                .filter(|k| k.state == LinkKeyState::Approved)
            else {
                return Ok(None);
            };
            let k = revoke_on(&mut tx, &k, &reason, now, &actor).await?;
            tx.commit().await?;
            Ok(Some(k))
        })
        .await
    }

    /// Record the outcome of a webhook attempt for the pairing of `public_key`, if it is
    /// still the pairing requested at `requested_at`.
    pub async fn record_pairing_webhook(
        &self,
        public_key: &str,
        requested_at: i64,
        state: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let (pk, state, error) = (
            public_key.to_owned(),
            state.to_owned(),
            error.map(|e| e.chars().take(512).collect::<String>()),
        );
        self.at_home(move |store| async move {
            sqlx::query(
                "UPDATE link_keys SET webhook_state = $3, webhook_error = $4,
                    webhook_attempts = webhook_attempts + 1
                 WHERE public_key = $1 AND requested_at = $2",
            )
            .bind(&pk)
            .bind(requested_at)
            .bind(&state)
            .bind(&error)
            .execute(store.pool())
            .await?;
            Ok(())
        })
        .await
    }
}

async fn revoke_on(
    tx: &mut sqlx::AnyConnection,
    k: &LinkKey,
    reason: &str,
    now: i64,
    actor: &str,
) -> Result<LinkKey, StoreError> {
    sqlx::query(
        "UPDATE link_keys SET state = 'revoked', code = NULL, decided_at = $2, decided_by = $3,
            revoked_reason = $4
         WHERE public_key = $1",
    )
    .bind(&k.public_key)
    .bind(now)
    .bind(actor)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    append_on(
        tx,
        &AuditEvent {
            event: "link_key_revoked",
            actor: actor.to_owned(),
            key_id: Some(k.fingerprint.clone()),
            workspace: None,
            reason: Some(reason.to_owned()),
            detail: Some(
                serde_json::json!({"service": k.service, "instance": k.instance_id}).to_string(),
            ),
        },
    )
    .await?;
    key_on(tx, &k.public_key)
        .await?
        .ok_or_else(|| StoreError::NotFound("link key".into()))
}
