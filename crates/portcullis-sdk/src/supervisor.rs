//! One supervisor task per gateway and link slot: dial, handshake, serve, and on any loss
//! reconnect with jittered exponential backoff, re-registering with a fresh HELLO each time.
//!
//! Backoff is "full jitter": each wait is uniform in `[0, ceiling]`, the ceiling starting at
//! 100 ms and doubling up to 30 s. It resets once a link has stayed up for 10 s, and a
//! REJECT's `retry_after_ms` is honoured as the minimum wait.
//!
//! A REJECT that retrying cannot fix ([`Error::is_permanent`](crate::Error::is_permanent):
//! the same HELLO would get the same answer), or a `route_conflict` that outlasts the
//! conflict patience, ends the slot instead: it records the refusal, naming the gateway, where
//! [`Running`](crate::Running) reports it (and fails its waits), calls the `on_rejected`
//! callback, and stops dialling that gateway. The slots of other gateways are separate tasks
//! and carry on.
//!
//! A gateway that shuts down says so on the link (`POST /.well-known/portcullis/drain`): the
//! link drains and the slot dials again with its backoff, logging at info — a restart, not a
//! failure.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use portcullis_link::jws::Jwks;
use portcullis_link::{Hello, HelloAck, RejectCode};
use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{BoxError, Chain, ErrorKind};
use crate::gateway::{dial, GatewayAddr};
use crate::handshake::{handshake, Proving};
use crate::identity::Verifier;
use crate::instance_key::{InstanceKey, Pairing, PairingCallback};
use crate::serve::{serve_link, LinkEnd, LinkService, LinkSettings, LinkTrust, LinkUp, Shared};

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A link that lived this long was healthy: start the backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Longest `retry_after_ms` honoured, so a confused gateway cannot park a service forever.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Full-jitter exponential backoff.
#[derive(Debug)]
pub(crate) struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self {
            ceiling: BACKOFF_BASE,
        }
    }

    /// Next wait: uniform in `[0, ceiling]`, at least `min`; the ceiling then doubles.
    pub(crate) fn next(&mut self, min: Option<Duration>) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling.as_millis()).unwrap_or(u64::MAX);
        let wait = Duration::from_millis(rand::thread_rng().gen_range(0..=ceiling_ms));
        self.ceiling = self.ceiling.saturating_mul(2).min(BACKOFF_CAP);
        wait.max(min.unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
    }

    pub(crate) fn reset(&mut self) {
        self.ceiling = BACKOFF_BASE;
    }
}

/// What one link slot needs to (re)connect.
pub(crate) struct LinkSlot {
    pub(crate) addr: GatewayAddr,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) hello: Hello,
    pub(crate) settings: LinkSettings,
    /// The issuer assertions must name; `None`: the one the gateway announces.
    pub(crate) issuer: Option<String>,
    /// The instance key that proves each HELLO; `None`: the HELLO's token.
    pub(crate) key: Option<InstanceKey>,
    /// Told of every pending pairing.
    pub(crate) on_pairing: Option<PairingCallback>,
    /// Told once if the slot gives up on a refusal.
    pub(crate) on_rejected: Option<RejectedCallback>,
    /// How long a `route_conflict` may last before the slot gives up.
    pub(crate) conflict_patience: Duration,
}

/// The callback of [`ServiceBuilder::on_rejected`](crate::ServiceBuilder::on_rejected).
pub(crate) type RejectedCallback = Arc<dyn Fn(&crate::Error) + Send + Sync>;

/// The verifier of a link's calls, from what its gateway announced in HELLO_ACK. A gateway
/// that announced no keys, or another issuer than the configured one, gets a verifier that
/// refuses every call (fail closed), and the reason is logged once here.
pub(crate) fn link_verifier(slot: &LinkSlot, ack: &HelloAck, gateway: &str) -> Verifier {
    let service = slot.hello.service.as_str();
    let configured = slot.issuer.as_deref();
    match &ack.assertions {
        Some(a) => {
            if let Some(expected) = configured.filter(|c| *c != a.issuer) {
                tracing::error!(
                    %gateway, expected, announced = %a.issuer,
                    "the gateway signs identity assertions as another issuer: every call on this link will be refused"
                );
            }
            Verifier::new(service, configured.unwrap_or(&a.issuer), &a.keys)
        }
        None => {
            tracing::error!(
                %gateway,
                "the gateway announced no identity assertion keys: every call on this link is refused until it sends some"
            );
            Verifier::new(service, configured.unwrap_or_default(), &Jwks::default())
        }
    }
}

/// Run one link slot until `shutdown` turns true (then drain) or the task is aborted.
pub(crate) async fn supervise<S, B>(
    slot: LinkSlot,
    shared: Arc<Shared>,
    service: S,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let gateway = slot.addr.to_string();
    let instance = slot.hello.instance_id.as_str();
    let mut backoff = Backoff::new();
    // When the route conflicts in a row began.
    let mut conflict_since: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let attempt = async {
            let mut io = dial(&slot.addr, slot.tls.as_ref()).await?;
            let proving = Proving {
                key: slot.key.as_ref(),
                tls_exporter: io.tls_exporter()?,
            };
            let ack = handshake(&mut io, &slot.hello, proving).await?;
            Ok::<_, crate::Error>((io, ack))
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        if !matches!(&result, Err(e) if e.reject_code() == Some(RejectCode::RouteConflict)) {
            conflict_since = None;
        }
        let min_wait = match result {
            Ok((io, ack)) => {
                tracing::info!(
                    %gateway, instance, link_id = %ack.link_id,
                    heartbeat_ms = ack.heartbeat_interval_ms, "link up"
                );
                let since = Instant::now();
                let up = LinkUp::new(&shared);
                let trust = LinkTrust::new(link_verifier(&slot, &ack, &gateway));
                let service = LinkService::new(service.clone(), Arc::clone(&up), trust);
                let r = serve_link(io, &ack, &slot.settings, service, shutdown.clone()).await;
                up.down();
                if *shutdown.borrow() {
                    tracing::info!(%gateway, instance, link_id = %ack.link_id, "link drained");
                    return;
                }
                match r {
                    Ok(LinkEnd::GatewayDrained) => {
                        shared.gateway_drains.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            %gateway, instance, link_id = %ack.link_id,
                            "gateway shutting down: link drained, dialling again"
                        )
                    }
                    Ok(_) => {
                        tracing::warn!(%gateway, instance, link_id = %ack.link_id, "link closed by gateway without notice")
                    }
                    Err(e) => {
                        tracing::warn!(%gateway, instance, link_id = %ack.link_id, error = %Chain(&e), "link lost")
                    }
                }
                if since.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                None
            }
            Err(e) if e.reject_code() == Some(RejectCode::PairingRequired) => {
                if let Some(p) = e.pairing() {
                    let pairing = Pairing::new(&gateway, p);
                    tracing::warn!(
                        %gateway, instance, code = %pairing.code, fingerprint = %pairing.fingerprint,
                        expires_at_ms = pairing.expires_at_ms,
                        "pairing required: ask a Portcullis admin to run \"portcullis pairings approve {}\"",
                        pairing.code
                    );
                    if let Some(f) = &slot.on_pairing {
                        f(&pairing);
                    }
                }
                e.retry_after()
            }
            Err(e) if slot.key.is_some() && e.reject_code() == Some(RejectCode::BadCredential) => {
                // An instance key the gateway revoked (a replay, a flood of failures) pairs
                // again on the next attempt: keep dialling, at the backoff's pace.
                tracing::error!(
                    %gateway, instance, error = %e,
                    "gateway refused the instance key; retrying (a revoked key pairs again)"
                );
                None
            }
            Err(e) if e.reject_code() == Some(RejectCode::StaleTimestamp) => {
                tracing::error!(
                    %gateway, instance, error = %e,
                    "gateway refused the signed timestamp: this machine's clock is off"
                );
                e.retry_after()
            }
            Err(e)
                if e.is_permanent()
                    || (e.reject_code() == Some(RejectCode::RouteConflict)
                        && conflict_since.get_or_insert_with(Instant::now).elapsed()
                            >= slot.conflict_patience) =>
            {
                let e = e.given_up(&gateway);
                tracing::error!(
                    %gateway, instance,
                    code = %e.reject_code().map(|c| c.as_str()).unwrap_or("?"),
                    error = %e, "gateway refused the link for good; no longer dialling it"
                );
                if let Some(f) = &slot.on_rejected {
                    f(&e);
                }
                shared.give_up(e);
                return;
            }
            Err(e) if e.kind() == ErrorKind::Rejected => {
                tracing::warn!(
                    %gateway, instance,
                    code = %e.reject_code().map(|c| c.as_str()).unwrap_or("?"),
                    retry_after_ms = e.retry_after().map(|d| d.as_millis() as u64),
                    error = %e, "gateway rejected the link"
                );
                e.retry_after()
            }
            Err(e) => {
                tracing::warn!(%gateway, instance, error = %Chain(&e), "link attempt failed");
                None
            }
        };
        let wait = backoff.next(min_wait);
        tracing::debug!(%gateway, instance, wait_ms = wait.as_millis() as u64, "reconnecting after backoff");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new();
        let mut ceiling = BACKOFF_BASE;
        for _ in 0..20 {
            let d = b.next(None);
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            ceiling = (ceiling * 2).min(BACKOFF_CAP);
        }
        assert_eq!(b.ceiling, BACKOFF_CAP);
        b.reset();
        assert!(b.next(None) <= BACKOFF_BASE);
    }

    #[test]
    fn backoff_honours_retry_after() {
        let mut b = Backoff::new();
        for _ in 0..10 {
            assert!(b.next(Some(Duration::from_secs(5))) >= Duration::from_secs(5));
        }
        assert_eq!(
            Backoff::new().next(Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
    }
}
