//! The pairing webhook: every pairing that becomes pending is POSTed, as JSON signed with an
//! HMAC-SHA256 header, to the configured URL, so an admin hears of it out of band.
//!
//! Delivery is retried with exponential backoff (`attempts` in all, 1 s doubling up to 30 s),
//! each attempt bounded by `timeout`; its outcome (`sent`, or `failed` with the last error) is
//! recorded on the pairing, where `pairings list` shows it. At most [`MAX_IN_FLIGHT`]
//! notifications are in progress; more are recorded `dropped` at once (pairings themselves
//! are bounded by `link.pairing.max_pending`, so this only bites in a flood).
//!
//! Body: `{"event": "pairing.pending", "service", "instance", "code", "fingerprint",
//! "requested_at_ms", "expires_at_ms", "sent_at_ms"}`. Header `x-portcullis-signature:
//! sha256=<hex HMAC-SHA256 of the body under the secret>`; the receiver recomputes it, compares
//! in constant time, and may refuse an old `sent_at_ms`.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigError, Secret};
use crate::store::{LinkKey, Store};

/// Notifications in progress at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-portcullis-signature";

/// `[link.pairing.webhook]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where pending pairings are POSTed: an `http://` or `https://` URL. Shown with only its
    /// scheme and host (webhook services carry their credential in the path).
    #[serde(serialize_with = "crate::telemetry::redact::serialize_webhook_url")]
    pub url: String,
    /// The HMAC-SHA256 key of the signature header. Masked when shown.
    pub secret: Secret,
    /// Attempts per pairing, the first included. Default 5.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Time one attempt may take. Default 5 s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_attempts() -> u32 {
    5
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl WebhookConfig {
    /// Check the section at key path `at`.
    pub fn validate(&self, at: &str, errs: &mut Vec<ConfigError>) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            errs.push(ConfigError::new(
                format!("{at}.url"),
                "must be an http:// or https:// URL",
            ));
        }
        if self.secret.expose().len() < 16 {
            errs.push(ConfigError::new(
                format!("{at}.secret"),
                "must be at least 16 bytes",
            ));
        }
        if !(1..=20).contains(&self.attempts) {
            errs.push(ConfigError::new(format!("{at}.attempts"), "must be 1-20"));
        }
        if self.timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{at}.timeout"),
                "must be positive",
            ));
        }
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends the notifications.
pub struct Notifier {
    cfg: WebhookConfig,
    store: Store,
    client: reqwest::Client,
    turns: Arc<tokio::sync::Semaphore>,
    runtime: tokio::runtime::Handle,
}

impl Notifier {
    /// A notifier for `cfg`, recording outcomes in `store`, running on the current runtime.
    pub fn new(cfg: WebhookConfig, store: Store) -> anyhow::Result<Arc<Self>> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("link.pairing.webhook: {e}"))?;
        Ok(Arc::new(Self {
            cfg,
            store,
            client,
            turns: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    /// Notify of `key` in the background.
    pub fn notify(self: &Arc<Self>, key: &LinkKey) {
        let this = self.clone();
        let key = key.clone();
        let Ok(turn) = self.turns.clone().try_acquire_owned() else {
            self.runtime.spawn(async move {
                let _ = this
                    .store
                    .record_pairing_webhook(
                        &key.public_key,
                        key.requested_at,
                        "dropped",
                        Some("too many notifications in progress"),
                    )
                    .await;
            });
            return;
        };
        self.runtime.spawn(async move {
            let _turn = turn;
            this.deliver(&key).await;
        });
    }

    async fn deliver(&self, key: &LinkKey) {
        let body = serde_json::json!({
            "event": "pairing.pending",
            "service": key.service,
            "instance": key.instance_id,
            "code": key.code,
            "fingerprint": key.fingerprint,
            "requested_at_ms": key.requested_at,
            "expires_at_ms": key.expires_at,
            "sent_at_ms": crate::store::now_ms(),
        })
        .to_string();
        let sig = signature(self.cfg.secret.expose().as_bytes(), body.as_bytes());
        let mut wait = Duration::from_secs(1);
        let mut last = String::new();
        for attempt in 1..=self.cfg.attempts {
            let r = self
                .client
                .post(&self.cfg.url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &sig)
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => {
                    let _ = self
                        .store
                        .record_pairing_webhook(&key.public_key, key.requested_at, "sent", None)
                        .await;
                    return;
                }
                Ok(resp) => {
                    last = format!("attempt {attempt}: the webhook answered {}", resp.status())
                }
                // Without the URL: it may carry a token in its query.
                Err(e) if e.is_timeout() => last = format!("attempt {attempt}: timed out"),
                Err(e) if e.is_connect() => last = format!("attempt {attempt}: cannot connect"),
                Err(_) => last = format!("attempt {attempt}: request failed"),
            }
            tracing::warn!(service = %key.service, fingerprint = %key.fingerprint, error = %last, "pairing webhook failed");
            let _ = self
                .store
                .record_pairing_webhook(&key.public_key, key.requested_at, "retrying", Some(&last))
                .await;
            if attempt < self.cfg.attempts {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
        let _ = self
            .store
            .record_pairing_webhook(&key.public_key, key.requested_at, "failed", Some(&last))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
