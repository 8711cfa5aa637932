//! Ed25519 instance keys: the checks of a signed HELLO and the pairing that enrols an unknown
//! key (docs/link-protocol.md §10).
//!
//! Order, for a HELLO with an Ed25519 credential, of a service that requires such keys:
//! freshness (the signed timestamp against [`Clock::now_ms`] within `max_skew`) → the key's
//! row in the store → for an enrolled key, the replay window (a service nonce seen before
//! revokes the key) → the signature over [`Proof`]'s bytes with this connection's CHALLENGE
//! nonce and TLS exporter (a bad one counts against the key; more than `max_failures` in
//! `failure_window` revoke it) → the binding (service, and instance when bound). A key that is
//! not enrolled, but whose signature verifies, becomes — or stays — a pending pairing.
//!
//! **Bounds.** The replay and failure windows live in memory, only for keys the store says are
//! approved (so a peer cannot make entries without an enrolled key), at most
//! [`MAX_NONCES_PER_KEY`] nonces and `max_failures + 1` failures per key, and at most
//! [`MAX_TRACKED_KEYS`] keys. They are per gateway node: the signature covers the gateway's
//! fresh nonce, so a replay can never link on any node; the window is what makes a replay
//! seen by this node end the key's trust. Pending pairings are bounded in the store.

use portcullis_link::proof::{self, Proof};
use portcullis_link::{Credential, Hello, PairingPrompt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use super::authenticator::{HandshakeFacts, LinkAuthFailure, LinkCredentialKind, LinkIdentity};
use super::PairingConfig;
use crate::clock::Clock;
use crate::store::{LinkKeyState, PairingOutcome, PairingRequest, Store};
use crate::telemetry::metrics::Metrics;

/// Service nonces remembered per enrolled key (older ones fail the freshness check anyway
/// once they leave the skew window).
pub const MAX_NONCES_PER_KEY: usize = 256;

/// Enrolled keys whose windows are kept at once.
pub const MAX_TRACKED_KEYS: usize = 65_536;

#[derive(Default)]
struct KeyWindow {
    /// (nonce, when seen, Unix ms), oldest first.
    nonces: VecDeque<([u8; 32], i64)>,
    /// Bad signatures, Unix ms, oldest first.
    failures: VecDeque<i64>,
    /// Last activity, for eviction.
    touched: i64,
}

/// What a newly pending pairing is announced to (the webhook notifier).
pub type PairingListener = Arc<dyn Fn(&crate::store::LinkKey) + Send + Sync>;

/// The Ed25519 half of the link's credential contract.
pub struct InstanceKeys {
    store: Store,
    clock: Clock,
    cfg: PairingConfig,
    /// Services that may enrol keys.
    services: HashSet<String>,
    windows: Mutex<HashMap<[u8; 32], KeyWindow>>,
    metrics: Option<Arc<Metrics>>,
    on_pending: Option<PairingListener>,
}

impl std::fmt::Debug for InstanceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceKeys")
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl InstanceKeys {
    /// Keys of the `services` that require Ed25519, checked against `store` at `clock`'s time.
    pub fn new(
        store: Store,
        clock: Clock,
        cfg: PairingConfig,
        services: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            store,
            clock,
            cfg,
            services: services.into_iter().collect(),
            windows: Mutex::new(HashMap::new()),
            metrics: None,
            on_pending: None,
        }
    }

    /// Count pairings in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Call `f` with every pairing that becomes pending.
    pub fn with_listener(mut self, f: PairingListener) -> Self {
        self.on_pending = Some(f);
        self
    }

    /// The store the keys live in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// May `service` enrol keys?
    pub fn accepts(&self, service: &str) -> bool {
        self.services.contains(service)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], KeyWindow>> {
        // Every mutation is a push or a pop: a panic elsewhere leaves the map consistent.
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Check the Ed25519 credential of `hello` (see the module doc).
    pub async fn authenticate(
        &self,
        hello: &Hello,
        facts: &HandshakeFacts,
    ) -> Result<LinkIdentity, LinkAuthFailure> {
        let Credential::Ed25519 {
            public_key,
            nonce,
            timestamp_ms,
            signature,
        } = &hello.credential
        else {
            return Err(LinkAuthFailure::KindNotAccepted);
        };
        if !self.accepts(&hello.service) {
            return Err(LinkAuthFailure::KindNotAccepted);
        }
        // The frame decoder checked the hex; decode once more without trusting that.
        let (Some(pk), Some(service_nonce), Some(sig), Some(gateway_nonce)) = (
            proof::decode_hex::<32>(public_key),
            proof::decode_hex::<32>(nonce),
            proof::decode_hex::<64>(signature),
            proof::decode_hex::<32>(&facts.nonce),
        ) else {
            return Err(LinkAuthFailure::BadSignature);
        };
        let now = self.clock.now_ms();
        let skew = ms(self.cfg.max_skew);
        let ts = i64::try_from(*timestamp_ms).unwrap_or(i64::MAX);
        if ts.abs_diff(now) > skew.unsigned_abs() {
            return Err(LinkAuthFailure::StaleTimestamp);
        }
        let key = self
            .store
            .link_key(public_key)
            .await
            .map_err(|_| LinkAuthFailure::Unavailable)?;
        let enrolled = key
            .as_ref()
            .is_some_and(|k| k.state == LinkKeyState::Approved);
        if enrolled && self.seen(&pk, &service_nonce, now) {
            self.revoke(&pk, public_key, "link_replay", now).await;
            return Err(LinkAuthFailure::Replay);
        }
        let message = Proof {
            version: facts.version,
            gateway_nonce,
            service_nonce,
            timestamp_ms: *timestamp_ms,
            service: hello.service.clone(),
            instance_id: hello.instance_id.clone(),
            tls_exporter: facts.tls_exporter,
        }
        .encode()
        .map_err(|_| LinkAuthFailure::BadSignature)?;
        if !proof::verify(&pk, &message, &sig) {
            if enrolled && self.fail(&pk, now) {
                self.revoke(&pk, public_key, "link_failures", now).await;
                return Err(LinkAuthFailure::FailuresRevoked);
            }
            return Err(LinkAuthFailure::BadSignature);
        }
        let fingerprint = proof::fingerprint(&pk);
        match key {
            Some(k) if k.state == LinkKeyState::Approved => {
                // Remembered once it verified: a copy of this HELLO is now a replay.
                self.remember(&pk, service_nonce, now);
                if !k.admits(&hello.service, &hello.instance_id) {
                    return Err(LinkAuthFailure::WrongBinding);
                }
                Ok(LinkIdentity {
                    service: hello.service.as_str().into(),
                    via: LinkCredentialKind::Ed25519,
                    key: Some(LinkKeyId {
                        public_key: public_key.as_str().into(),
                        fingerprint: fingerprint.into(),
                    }),
                })
            }
            Some(k) if k.state == LinkKeyState::Denied => Err(LinkAuthFailure::PairingDenied),
            _ => self.pair(hello, public_key, fingerprint, now).await,
        }
    }

    async fn pair(
        &self,
        hello: &Hello,
        public_key: &str,
        fingerprint: String,
        now: i64,
    ) -> Result<LinkIdentity, LinkAuthFailure> {
        let outcome = self
            .store
            .request_pairing(&PairingRequest {
                public_key: public_key.to_owned(),
                fingerprint,
                service: hello.service.clone(),
                instance_id: hello.instance_id.clone(),
                now,
                ttl_ms: ms(self.cfg.ttl),
                max_pending: i64::from(self.cfg.max_pending),
            })
            .await
            .map_err(|_| LinkAuthFailure::Unavailable)?;
        match outcome {
            PairingOutcome::Pending(k) => {
                let fresh = k.requested_at == now && k.webhook_attempts == 0;
                if fresh {
                    tracing::info!(
                        service = %k.service, instance = %k.instance_id,
                        fingerprint = %k.fingerprint, "pairing pending: waiting for an admin"
                    );
                    if let Some(m) = &self.metrics {
                        m.pairing("requested");
                    }
                    if let Some(f) = &self.on_pending {
                        f(&k);
                    }
                }
                Err(LinkAuthFailure::PairingRequired(PairingPrompt {
                    code: k.code.unwrap_or_default(),
                    expires_at_ms: k
                        .expires_at
                        .and_then(|t| u64::try_from(t).ok())
                        .unwrap_or(0),
                    fingerprint: k.fingerprint,
                }))
            }
            PairingOutcome::Known(k) if k.state == LinkKeyState::Denied => {
                Err(LinkAuthFailure::PairingDenied)
            }
            PairingOutcome::Known(_) => Err(LinkAuthFailure::WrongBinding),
            PairingOutcome::Full => Err(LinkAuthFailure::PairingFull),
        }
    }

    /// Has this key's window seen `nonce`?
    fn seen(&self, pk: &[u8; 32], nonce: &[u8; 32], now: i64) -> bool {
        let mut w = self.lock();
        let Some(win) = w.get_mut(pk) else {
            return false;
        };
        let horizon = now.saturating_sub(2 * ms(self.cfg.max_skew));
        while win.nonces.front().is_some_and(|(_, t)| *t < horizon) {
            win.nonces.pop_front();
        }
        win.nonces.iter().any(|(n, _)| n == nonce)
    }

    fn entry<'a>(
        &self,
        w: &'a mut HashMap<[u8; 32], KeyWindow>,
        pk: &[u8; 32],
        now: i64,
    ) -> &'a mut KeyWindow {
        if !w.contains_key(pk) && w.len() >= MAX_TRACKED_KEYS {
            // Forget the windows idle longest: their nonces are past the skew by now, or
            // nearly, and their failures age out of the window anyway.
            let mut idle: Vec<([u8; 32], i64)> = w.iter().map(|(k, v)| (*k, v.touched)).collect();
            idle.sort_by_key(|(_, t)| *t);
            for (k, _) in idle.iter().take(MAX_TRACKED_KEYS / 8) {
                w.remove(k);
            }
        }
        let win = w.entry(*pk).or_default();
        win.touched = now;
        win
    }

    fn remember(&self, pk: &[u8; 32], nonce: [u8; 32], now: i64) {
        let mut w = self.lock();
        let win = self.entry(&mut w, pk, now);
        if win.nonces.len() >= MAX_NONCES_PER_KEY {
            win.nonces.pop_front();
        }
        win.nonces.push_back((nonce, now));
    }

    /// Count a bad signature; true when it is one too many.
    fn fail(&self, pk: &[u8; 32], now: i64) -> bool {
        let mut w = self.lock();
        let window = ms(self.cfg.failure_window);
        let max = self.cfg.max_failures as usize;
        let win = self.entry(&mut w, pk, now);
        while win
            .failures
            .front()
            .is_some_and(|t| *t <= now.saturating_sub(window))
        {
            win.failures.pop_front();
        }
        win.failures.push_back(now);
        let over = win.failures.len() > max;
        while win.failures.len() > max + 1 {
            win.failures.pop_front();
        }
        over
    }

    async fn revoke(&self, pk: &[u8; 32], public_key: &str, reason: &'static str, now: i64) {
        self.lock().remove(pk);
        match self
            .store
            .revoke_link_key(public_key, reason, now, "gateway")
            .await
        {
            Ok(Some(k)) => tracing::warn!(
                service = %k.service, instance = %k.instance_id, fingerprint = %k.fingerprint,
                reason, "instance key revoked: it must pair again"
            ),
            Ok(None) => {}
            Err(e) => tracing::error!(
                reason, error = %e, "could not revoke an instance key; refusing the HELLO anyway"
            ),
        }
    }

    /// Keep `portcullis_link_keys{state}` current: on every store change and every 10 s,
    /// until `stop`.
    pub fn start(
        self: &Arc<Self>,
        changes: crate::auth::Changes,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut rx = changes.subscribe();
            loop {
                if let Some(m) = &this.metrics {
                    if let Ok(counts) = this.store.count_link_keys(this.clock.now_ms()).await {
                        for (state, n) in counts {
                            m.link_keys
                                .get_or_create(&crate::telemetry::metrics::PairingStateLabels {
                                    state: state.as_str(),
                                })
                                .set(n);
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = rx.changed() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                }
            }
        })
    }

    /// Does the store still admit `key` for `service`/`instance` (a live link's re-check
    /// after a change)? A store error answers true: a live link is not cut for a failed
    /// query, and the next change or HELLO checks again.
    pub async fn still_admits(&self, key: &LinkKeyId, service: &str, instance: &str) -> bool {
        match self.store.link_key(&key.public_key).await {
            Ok(Some(k)) => k.admits(service, instance),
            Ok(None) => false,
            Err(_) => true,
        }
    }
}

/// Which enrolled key proved a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkKeyId {
    /// The public key, 64 hex digits.
    pub public_key: Arc<str>,
    /// Its fingerprint.
    pub fingerprint: Arc<str>,
}
