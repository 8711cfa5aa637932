//! Token signing keys: Ed25519 key pairs the gateway signs tokens with (`alg: EdDSA`, `kid`).
//!
//! The public key is stored as 64 hex digits (the raw 32 bytes; JWKS publishes them as
//! base64url). The private key arrives sealed — encrypted elsewhere under a key derived from
//! the pepper of `pepper_version` — and is stored and returned as that opaque text, in a
//! [`Redacted`]: the store never sees it in the clear and never shows it.
//!
//! A key's life: created (the newest unretired key signs), retired (it signs no more, and its
//! `not_after` says until when tokens it signed still verify — their longest lifetime past
//! retirement), then deleted once `not_after` has passed
//! ([`Store::delete_expired_signing_keys`]). Every change bumps the change generation, so
//! every node refreshes its cached keys within the poll, and writes its audit row in its
//! transaction.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::audit::{append_on, AuditEvent};
use super::{bump_generation, now_ms, Redacted, Store, StoreError};

/// The one signature algorithm of signing keys (JOSE name): Ed25519.
pub const EDDSA: &str = "EdDSA";

/// A signing key as stored.
#[derive(Debug, Clone, Serialize)]
pub struct SigningKey {
    /// Key id (the JWT header's `kid`).
    pub kid: String,
    /// JOSE algorithm: [`EDDSA`].
    pub algorithm: String,
    /// Ed25519 public key, raw (serialised as hex).
    #[serde(serialize_with = "hex_bytes")]
    pub public_key: [u8; 32],
    /// The private key, sealed under a pepper-derived key. Never serialised, never printed.
    #[serde(skip)]
    pub private_key_sealed: Redacted,
    /// Version of the pepper the private key was sealed under.
    pub pepper_version: u32,
    /// Unix ms.
    pub created_at: i64,
    /// When it stopped signing, Unix ms; `None`: it may sign.
    pub retired_at: Option<i64>,
    /// When tokens it signed stop verifying, Unix ms; `None`: not before retirement.
    pub not_after: Option<i64>,
}

impl SigningKey {
    /// Has it been retired (it signs no more)?
    pub fn is_retired(&self) -> bool {
        self.retired_at.is_some()
    }

    /// Do tokens it signed still verify at `now` (Unix ms)?
    pub fn verifies_at(&self, now: i64) -> bool {
        self.not_after.is_none_or(|t| t > now)
    }
}

fn hex_bytes<S: serde::Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

/// A signing key to insert.
#[derive(Debug, Clone)]
pub struct NewSigningKey {
    /// Key id, 1-64 of `[A-Za-z0-9._-]`, unique.
    pub kid: String,
    /// Ed25519 public key, raw.
    pub public_key: [u8; 32],
    /// The private key, sealed by the caller (opaque text, at most 4096 bytes).
    pub private_key_sealed: Redacted,
    /// Version of the pepper it was sealed under.
    pub pepper_version: u32,
}

/// Is `kid` a valid key id?
pub fn valid_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

const COLUMNS: &str = "kid, algorithm, public_key, private_key_sealed, pepper_version, \
     created_at, retired_at, not_after";

fn from_row(r: &AnyRow) -> Result<SigningKey, sqlx::Error> {
    let kid: String = r.try_get("kid")?;
    let public: String = r.try_get("public_key")?;
    let public_key: [u8; 32] = hex::decode(&public)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            sqlx::Error::Decode(
                format!("signing key {kid}: public key is not 32 bytes of hex").into(),
            )
        })?;
    let pv: i64 = r.try_get("pepper_version")?;
    Ok(SigningKey {
        kid,
        algorithm: r.try_get("algorithm")?,
        public_key,
        private_key_sealed: Redacted::new(r.try_get::<String, _>("private_key_sealed")?),
        pepper_version: u32::try_from(pv).unwrap_or(0),
        created_at: r.try_get("created_at")?,
        retired_at: r.try_get("retired_at")?,
        not_after: r.try_get("not_after")?,
    })
}

async fn signing_key_on(
    conn: &mut sqlx::AnyConnection,
    kid: &str,
) -> Result<Option<SigningKey>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM signing_keys WHERE kid = $1"
    ))
    .bind(kid)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

async fn insert_on(
    conn: &mut sqlx::AnyConnection,
    new: &NewSigningKey,
    actor: &str,
) -> Result<SigningKey, StoreError> {
    if !valid_kid(&new.kid) {
        return Err(StoreError::Invalid(
            "signing key ids are 1-64 of [A-Za-z0-9._-]".into(),
        ));
    }
    let sealed = new.private_key_sealed.expose();
    if sealed.is_empty() || sealed.len() > 4096 || sealed.chars().any(char::is_control) {
        return Err(StoreError::Invalid(
            "a sealed private key is 1-4096 bytes of text".into(),
        ));
    }
    if signing_key_on(conn, &new.kid).await?.is_some() {
        return Err(StoreError::Conflict(format!(
            "signing key {} exists",
            new.kid
        )));
    }
    sqlx::query(
        "INSERT INTO signing_keys
             (kid, algorithm, public_key, private_key_sealed, pepper_version, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&new.kid)
    .bind(EDDSA)
    .bind(hex::encode(new.public_key))
    .bind(sealed)
    .bind(i64::from(new.pepper_version))
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    append_on(
        conn,
        &AuditEvent {
            event: "signing_key_created",
            actor: actor.to_string(),
            detail: Some(
                serde_json::json!({
                    "kid": new.kid,
                    "algorithm": EDDSA,
                    "pepper_version": new.pepper_version,
                })
                .to_string(),
            ),
            ..Default::default()
        },
    )
    .await?;
    signing_key_on(conn, &new.kid)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("signing key {}", new.kid)))
}

/// Retire `kid` on `conn` (the generation already bumped); audits `signing_key_retired`.
async fn retire_on(
    conn: &mut sqlx::AnyConnection,
    kid: &str,
    not_after: i64,
    actor: &str,
) -> Result<SigningKey, StoreError> {
    let key = signing_key_on(conn, kid)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("signing key {kid}")))?;
    if key.is_retired() {
        return Err(StoreError::Conflict(format!(
            "signing key {kid} is already retired"
        )));
    }
    sqlx::query("UPDATE signing_keys SET retired_at = $2, not_after = $3 WHERE kid = $1")
        .bind(kid)
        .bind(now_ms())
        .bind(not_after)
        .execute(&mut *conn)
        .await?;
    append_on(
        conn,
        &AuditEvent {
            event: "signing_key_retired",
            actor: actor.to_string(),
            detail: Some(serde_json::json!({"kid": kid, "not_after": not_after}).to_string()),
            ..Default::default()
        },
    )
    .await?;
    signing_key_on(conn, kid)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("signing key {kid}")))
}

impl Store {
    /// Insert a signing key (it signs from now on, being the newest). A taken `kid` is a
    /// conflict. Audits `signing_key_created`.
    pub async fn insert_signing_key(
        &self,
        new: &NewSigningKey,
        actor: &str,
    ) -> Result<SigningKey, StoreError> {
        let (new, actor) = (new.clone(), actor.to_owned());
        self.at_home(move |store| async move {
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let key = insert_on(&mut tx, &new, &actor).await?;
            tx.commit().await?;
            Ok(key)
        })
        .await
    }

    /// The signing key `kid`.
    pub async fn signing_key(&self, kid: &str) -> Result<Option<SigningKey>, StoreError> {
        let kid = kid.to_owned();
        self.at_home(move |store| async move {
            let mut conn = store.pool().acquire().await?;
            Ok(signing_key_on(&mut conn, &kid).await?)
        })
        .await
    }

    /// Every signing key, newest first (the first unretired one is the one to sign with). A
    /// row that cannot be read (a damaged public key) is left out with a warning: it could
    /// verify nothing, and the others still can.
    pub async fn list_signing_keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        self.at_home(|store| async move {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM signing_keys ORDER BY created_at DESC, kid DESC"
            ))
            .fetch_all(store.pool())
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                match from_row(r) {
                    Ok(k) => out.push(k),
                    Err(sqlx::Error::Decode(e)) => {
                        tracing::warn!(error = %e, "unreadable signing key left out");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(out)
        })
        .await
    }

    /// Retire a signing key: it signs no more, and tokens it signed verify until
    /// `not_after` (Unix ms; the caller adds the longest token lifetime to now, or passes now
    /// to stop them at once). Retiring a retired key is a conflict. Audits
    /// `signing_key_retired`.
    pub async fn retire_signing_key(
        &self,
        kid: &str,
        not_after: i64,
        actor: &str,
    ) -> Result<SigningKey, StoreError> {
        let (kid, actor) = (kid.to_owned(), actor.to_owned());
        self.at_home(move |store| async move {
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let key = retire_on(&mut tx, &kid, not_after, &actor).await?;
            tx.commit().await?;
            Ok(key)
        })
        .await
    }

    /// Rotate in one transaction: retire every unretired key with `retired_not_after`, then
    /// insert `new`. Two nodes rotating at once each retire the other's key in turn, so one
    /// key signs afterwards. Returns the new key and the keys retired. Audits
    /// `signing_key_retired` for each and `signing_key_created`.
    pub async fn rotate_signing_key(
        &self,
        new: &NewSigningKey,
        retired_not_after: i64,
        actor: &str,
    ) -> Result<(SigningKey, Vec<SigningKey>), StoreError> {
        let (new, actor) = (new.clone(), actor.to_owned());
        self.at_home(move |store| async move {
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            let active: Vec<String> =
                sqlx::query("SELECT kid FROM signing_keys WHERE retired_at IS NULL ORDER BY kid")
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get::<String, _>(0))
                    .collect::<Result<_, _>>()?;
            let mut retired = Vec::with_capacity(active.len());
            for kid in &active {
                retired.push(retire_on(&mut tx, kid, retired_not_after, &actor).await?);
            }
            let key = insert_on(&mut tx, &new, &actor).await?;
            tx.commit().await?;
            Ok((key, retired))
        })
        .await
    }

    /// Delete the keys whose `not_after` is before `now` (Unix ms): no token they signed
    /// verifies any more. Returns their kids. Audits `signing_key_deleted` for each; with
    /// nothing to delete, writes nothing (so a scheduled purge does not drop caches
    /// everywhere for nothing).
    pub async fn delete_expired_signing_keys(
        &self,
        now: i64,
        actor: &str,
    ) -> Result<Vec<String>, StoreError> {
        let actor = actor.to_owned();
        self.at_home(move |store| async move {
            const EXPIRED: &str =
                "SELECT kid FROM signing_keys WHERE not_after IS NOT NULL AND not_after < $1
                 ORDER BY kid";
            let any = sqlx::query(EXPIRED)
                .bind(now)
                .fetch_optional(store.pool())
                .await?;
            if any.is_none() {
                return Ok(Vec::new());
            }
            let mut tx = store.pool().begin().await?;
            bump_generation(&mut tx).await?;
            // Again under the change lock: another node may have purged meanwhile.
            let kids: Vec<String> = sqlx::query(EXPIRED)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<_, _>>()?;
            for kid in &kids {
                sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
                    .bind(kid)
                    .execute(&mut *tx)
                    .await?;
                append_on(
                    &mut tx,
                    &AuditEvent {
                        event: "signing_key_deleted",
                        actor: actor.clone(),
                        detail: Some(serde_json::json!({ "kid": kid }).to_string()),
                        ..Default::default()
                    },
                )
                .await?;
            }
            tx.commit().await?;
            Ok(kids)
        })
        .await
    }
}
