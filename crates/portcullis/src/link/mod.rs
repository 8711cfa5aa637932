//! The link server: services dial in, prove who they are, declare endpoints, and the
//! connection becomes an HTTP/2 connection with the gateway as client (DESIGN §3).
//!
//! Order on each connection: CHALLENGE → HELLO (bounded in size and time) → credential →
//! descriptors → route conflicts → HELLO_ACK → HTTP/2 handshake → register the instance →
//! heartbeat until the link dies, is replaced, or the gateway shuts down. A REJECT is sent for
//! every refusal with its code, and the gateway keeps serving others.
//!
//! **Versions.** CHALLENGE lists every version the gateway speaks (1 and 2); the HELLO's
//! version is the link's, and every later frame carries it. On a version 2 link HELLO_ACK
//! carries the issuer and public keys of identity assertions, and every later change of the
//! key set is pushed to the service (`PUT` [`KEYS_PATH`], see [`push_keys`]). A version 1
//! service (an older SDK) links as before and gets neither.

mod admission;
pub mod authenticator;
mod config;
mod handshake;
pub mod instance_keys;
mod peer;
pub mod webhook;

use bytes::Bytes;
use http::Request;
use portcullis_link::jws::Jwks;
use portcullis_link::{
    AssertionKeys, Challenge, Frame, Hello, HelloAck, LinkLimits, Reject, RejectCode, DRAIN_PATH,
    HEALTH_PATH, KEYS_PATH,
};
use rand::RngCore;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditSink, Refusal};
use crate::auth::assertion::AssertionSigner;
use crate::config::Config;
use crate::routing::{validate_endpoints, Instance, LinkState, RegisterError, Registry};
use crate::telemetry::metrics::{Listener, Metrics};

pub use admission::{Admission, Slot};
pub use authenticator::{
    HandshakeFacts, LinkAuthFailure, LinkAuthenticator, LinkCredentials, ServiceTokens,
};
pub use config::{LinkConfig, PairingConfig, MAX_H2_WINDOW};
pub use handshake::{
    read_frame, read_frame_versioned, write_frame, write_frame_as, HandshakeError,
};
pub use instance_keys::{InstanceKeys, LinkKeyId};

/// Everything the link server needs, built once from the configuration.
pub struct LinkServer {
    registry: Arc<Registry>,
    cfg: LinkConfig,
    max_request_body: u64,
    /// `ingress.response_stall_timeout`, given to every instance.
    response_stall_timeout: Duration,
    /// How long a replaced link may take to finish its calls (`shutdown.grace_period`).
    drain_grace: Duration,
    /// Who may link: the link's credential contract.
    authenticator: Arc<dyn LinkAuthenticator>,
    /// Enrolled instance keys, to re-check live links when the store changes.
    keys: Option<Arc<InstanceKeys>>,
    /// Store changes (another node or the CLI approved, denied or revoked something).
    changes: Option<crate::auth::Changes>,
    /// Where refused credentials go.
    audit: AuditSink,
    /// Signs the identity assertions of calls: its issuer and public keys go to services.
    assertions: Arc<AssertionSigner>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Checks client certificates against `link.client_ca`, when set.
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    metrics: Arc<Metrics>,
    /// Weak: link tasks hold the `LinkServer`; only the gateway's `run` owns the data plane.
    dataplane: std::sync::Weak<crate::dataplane::DataPlane>,
    /// Every link's task, from handshake to close.
    links: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for LinkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkServer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

pub use authenticator::hash_token;

/// Largest HTTP/2 DATA frame the gateway accepts on a link (SETTINGS_MAX_FRAME_SIZE).
const LINK_MAX_FRAME_BYTES: u32 = 256 * 1024;

/// Handshakes that may be in progress at once; further connections are closed at accept.
const MAX_PENDING_HANDSHAKES: usize = 256;

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl LinkServer {
    /// Build from the configuration. Fails if a configured token hash or TLS file is bad.
    /// Services learn the issuer and public keys of `assertions` over their links.
    /// `keys` checks Ed25519 credentials (absent: only tokens link); `changes` tells the live
    /// links of enrolled keys to check the store again.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        audit: AuditSink,
        dataplane: &Arc<crate::dataplane::DataPlane>,
        assertions: Arc<AssertionSigner>,
        keys: Option<Arc<InstanceKeys>>,
        changes: Option<crate::auth::Changes>,
    ) -> anyhow::Result<Self> {
        let authenticator = Arc::new(
            LinkCredentials::new(ServiceTokens::from_config(config)?, keys.clone()).with_mtls(
                config
                    .services
                    .iter()
                    .filter(|(_, s)| s.requires(crate::config::LinkAuthKind::Mtls))
                    .map(|(n, _)| n.clone()),
            ),
        );
        let (tls, client_verifier) = match &config.link.tls {
            Some(t) => {
                let (acc, v) = crate::tls::link_acceptor(
                    t,
                    config.link.client_ca.as_deref(),
                    &config.link.client_crls,
                    assertions.clock().clone(),
                )?;
                (Some(acc), v)
            }
            None => (None, None),
        };
        Ok(Self {
            registry,
            cfg: config.link.clone(),
            max_request_body: config.ingress.max_body_bytes,
            response_stall_timeout: config.ingress.response_stall_timeout,
            drain_grace: config.shutdown.grace_period,
            authenticator,
            keys,
            changes,
            audit,
            assertions,
            tls,
            client_verifier,
            metrics,
            dataplane: Arc::downgrade(dataplane),
            links: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Accept links until `shutdown` fires. Established links are closed through their
    /// instances' close tokens by the caller's shutdown sequence.
    pub async fn serve(
        self: Arc<Self>,
        listener: crate::transport::Listener,
        shutdown: CancellationToken,
    ) {
        // Handshakes in progress are bounded (see `admission`); established links are bounded
        // by the services the configuration allows and the per-service instance cap.
        let admission = Admission::new(
            MAX_PENDING_HANDSHAKES,
            self.cfg.max_pending_handshakes_per_ip,
        );
        // Admission is per connection (evicting the oldest HELLO-less one at a cap), so the
        // loop itself admits everything.
        crate::transport::accept_loop(&listener, "link", &shutdown, None, |stream, peer, _| {
            let Some(slot) = admission.admit(peer.ip()) else {
                tracing::warn!(peer = %peer, "every link handshake slot holds a HELLO: refused");
                return ControlFlow::Continue(());
            };
            let Some(dataplane) = self.dataplane.upgrade() else {
                return ControlFlow::Break(()); // the gateway is gone
            };
            let this = self.clone();
            let shutdown = shutdown.clone();
            // The link runs on a data-plane thread (see `dataplane`).
            let handed = dataplane.spawn_link(&self.links, stream, move |stream| async move {
                let hello_by =
                    Instant::now() + this.cfg.hello_timeout.min(this.cfg.handshake_timeout);
                let res = match &this.tls {
                    None => {
                        this.handle_until(stream, shutdown, Some(slot), hello_by, None, Some(peer))
                            .await
                    }
                    Some(acc) => {
                        // The TLS handshake comes out of the time to HELLO, and an evicted
                        // slot ends it too.
                        let tls = tokio::select! {
                            r = tokio::time::timeout_at(hello_by, acc.accept(stream)) => r,
                            _ = slot.evicted() => Ok(Err(std::io::Error::other("evicted"))),
                        };
                        match tls {
                            Ok(Ok(tls)) => {
                                let mut exporter = [0u8; portcullis_link::proof::TLS_EXPORTER_LEN];
                                let cert = match &this.client_verifier {
                                    Some(v) => crate::tls::check_client_cert(
                                        v.as_ref(),
                                        tls.get_ref().1.peer_certificates(),
                                    ),
                                    None => crate::tls::ClientCert::None,
                                };
                                match tls.get_ref().1.export_keying_material(
                                    &mut exporter,
                                    portcullis_link::proof::TLS_EXPORTER_LABEL,
                                    None,
                                ) {
                                    Ok(_) => {
                                        this.handle_until(
                                            tls,
                                            shutdown,
                                            Some(slot),
                                            hello_by,
                                            Some((exporter, cert)),
                                            Some(peer),
                                        )
                                        .await
                                    }
                                    Err(e) => Err(HandshakeError::Io(std::io::Error::other(e))),
                                }
                            }
                            Ok(Err(e)) => Err(HandshakeError::Io(e)),
                            Err(_) => Err(HandshakeError::Timeout),
                        }
                    }
                };
                // A refusal is logged where its REJECT is sent, naming the service.
                if let Err(e) = &res {
                    if e.reject_code().is_none() {
                        tracing::info!(peer = %peer, error = %e, "link failed during the handshake");
                    }
                }
            });
            if let Err(e) = handed {
                tracing::debug!(peer = %peer, error = %e, "cannot hand the link to a data-plane thread");
            }
            ControlFlow::Continue(())
        })
        .await;
    }

    /// Wait until every link's task has ended. Call after closing the links (their instances'
    /// `close` tokens); no new link is accepted once the accept loop has returned.
    pub async fn wait(&self) {
        self.links.close();
        self.links.wait().await;
    }

    /// Handshake, register and run one link to its end.
    /// `slot` is the handshake slot (see [`Admission`]); it is released once the link is
    /// established, and the handshake ends if it is evicted first.
    pub async fn handle<IO>(
        &self,
        io: IO,
        shutdown: CancellationToken,
        slot: Option<Slot>,
    ) -> Result<(), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let hello_by = Instant::now() + self.cfg.hello_timeout.min(self.cfg.handshake_timeout);
        self.handle_until(io, shutdown, slot, hello_by, None, None)
            .await
    }

    /// [`LinkServer::handle`] with the HELLO due by `hello_by`, on a connection whose TLS
    /// exporter value (the channel binding of signed HELLOs) is `tls_exporter`.
    async fn handle_until<IO>(
        &self,
        mut io: IO,
        shutdown: CancellationToken,
        mut slot: Option<Slot>,
        hello_by: Instant,
        tls_facts: Option<([u8; 32], crate::tls::ClientCert)>,
        peer: Option<crate::transport::Peer>,
    ) -> Result<(), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _gauge = self.metrics.connection(Listener::link);
        let evicted = async {
            match &slot {
                Some(s) => s.evicted().await,
                None => std::future::pending().await,
            }
        };
        // The version every frame after CHALLENGE carries: the HELLO's, once it has arrived.
        // Until then the oldest, so any service can read a REJECT.
        let mut version = portcullis_link::MIN_VERSION;
        let mut claimed = None;
        // A gateway shutting down does not wait for a handshake in progress: the service
        // will dial again (another gateway, or this one once it is back).
        let attempt = tokio::select! {
            r = tokio::time::timeout(
                self.cfg.handshake_timeout,
                self.handshake(&mut io, slot.as_ref(), hello_by, &mut version, &mut claimed, tls_facts),
            ) => r,
            _ = evicted => return Err(HandshakeError::Evicted),
            _ = shutdown.cancelled() => {
                return Err(HandshakeError::Io(std::io::Error::other("gateway shutting down")));
            }
        };
        let hello = match attempt {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                if let Some(code) = e.reject_code() {
                    tracing::info!(
                        peer = %peer.map_or_else(|| "-".to_string(), |p| p.to_string()),
                        service = claimed.as_deref().unwrap_or("-"),
                        code = code.as_str(), error = %e, "link refused"
                    );
                    self.metrics.reject(code);
                    let mut r = reject(code, &e.to_string(), None);
                    if let (Frame::Reject(r), HandshakeError::Refused(failure)) = (&mut r, &e) {
                        r.retry_after_ms = self.retry_after(failure);
                        if let LinkAuthFailure::PairingRequired(p) = failure {
                            r.pairing = Some(p.clone());
                        }
                    }
                    let _ = write_frame_as(&mut io, &r, version).await;
                }
                return Err(e);
            }
            Err(_) => {
                tracing::info!(
                    peer = %peer.map_or_else(|| "-".to_string(), |p| p.to_string()),
                    service = claimed.as_deref().unwrap_or("-"),
                    code = RejectCode::Timeout.as_str(), "link refused: handshake timed out"
                );
                self.metrics.reject(RejectCode::Timeout);
                let _ = write_frame_as(
                    &mut io,
                    &reject(RejectCode::Timeout, "handshake timed out", None),
                    version,
                )
                .await;
                return Err(HandshakeError::Timeout);
            }
        };
        let Accepted {
            hello,
            endpoints,
            identity,
        } = hello;

        let link_id = format!("l-{}", random_hex(8));
        // Subscribed before the keys are read: a change after this point is pushed.
        let mut key_changes = self.assertions.keys().subscribe();
        key_changes.borrow_and_update();
        let keys = (version >= 2).then(|| self.published_keys());
        let ack = Frame::HelloAck(HelloAck {
            link_id: link_id.clone(),
            heartbeat_interval_ms: self.cfg.heartbeat_interval.as_millis() as u64,
            limits: LinkLimits {
                max_concurrent_streams: self.cfg.max_concurrent_streams,
                max_request_body: self.max_request_body,
            },
            assertions: keys.clone().map(|keys| AssertionKeys {
                issuer: self.assertions.issuer().to_string(),
                keys,
            }),
        });
        write_frame_as(&mut io, &ack, version).await?;
        self.metrics.frame("hello_ack");

        // Learn the service's limits from its SETTINGS (see `peer`) before it is routable.
        let (io, peer_settings) = peer::SettingsSniffer::new(io);
        let (sender, mut conn) = h2::client::Builder::new()
            // Large DATA frames: a streamed response crosses the link in a quarter as many
            // frames as with the 16 KiB default, and reaches the client in as many writes.
            .max_frame_size(LINK_MAX_FRAME_BYTES)
            // Every stream may hold its whole window while its client is not reading, and the
            // connection window still has room for one more: a stalled stream costs only
            // itself (`body`). Validated to fit an HTTP/2 window.
            .initial_window_size(self.cfg.stream_window_bytes)
            .initial_connection_window_size(self.connection_window())
            .max_concurrent_reset_streams(1024)
            // The link's own stream limit from the start, not h2's unlimited default, so no call
            // is refused by the service before its SETTINGS arrive.
            .initial_max_send_streams(self.cfg.max_concurrent_streams as usize)
            .max_send_buffer_size(256 * 1024)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| HandshakeError::Http2(e.to_string()))?;
        let ping_pong = conn.ping_pong();
        // The server's preface is its SETTINGS; drive the connection until it has arrived.
        tokio::select! {
            _ = peer_settings.seen() => {}
            r = &mut conn => {
                let e = r.err().map_or_else(|| "closed".to_string(), |e| e.to_string());
                return Err(HandshakeError::Http2(e));
            }
            _ = tokio::time::sleep(self.cfg.handshake_timeout) => return Err(HandshakeError::Timeout),
        }

        let instance = Arc::new(
            Instance::new(
                hello.service.as_str().into(),
                hello.instance_id.as_str().into(),
                link_id.as_str().into(),
                hello.region.as_deref().map(Into::into),
                hello.version.as_str().into(),
                sender,
            )
            .with_max_header_list_size(peer_settings.max_header_list_size())
            .with_response_stall_timeout(self.response_stall_timeout)
            .with_sessions(hello.sessions.map(|d| d.max_sessions))
            .with_credential(
                identity.via.as_str(),
                identity.key.as_ref().map(|k| k.fingerprint.clone()),
            ),
        );
        if let Err(e) = self.registry.register(instance.clone(), endpoints) {
            // Lost a race with another service registering the same route after our check.
            tracing::warn!(service = %hello.service, error = %e, "link closed after HELLO_ACK");
            return Err(HandshakeError::Register(e));
        }
        slot.take();
        tracing::info!(
            service = %instance.service, instance = %instance.instance_id, link = %link_id,
            region = instance.region.as_deref().unwrap_or("-"), "link up"
        );

        let heartbeat = heartbeat(
            instance.clone(),
            ping_pong,
            self.cfg.heartbeat_interval,
            &self.metrics,
        );
        let keys = async {
            match keys {
                Some(delivered) => self.push_keys(&instance, key_changes, delivered).await,
                // A version 1 service takes no keys.
                None => std::future::pending().await,
            }
        };
        // A link proved by an enrolled key ends when the store stops admitting the key
        // (revoked by an admin or another node).
        let revoked = self.watch_key(&instance, identity.key.as_ref());
        let mut reason = tokio::select! {
            r = &mut conn => match r {
                Ok(()) => "closed by service",
                Err(e) if e.is_go_away() => "goaway",
                Err(_) => "connection error",
            },
            r = heartbeat => r,
            never = keys => match never {},
            _ = instance.stall_watch.run(instance.response_stall_timeout) => "stall watch ended",
            _ = instance.close.cancelled() => "closed by gateway",
            _ = instance.replaced.cancelled() => "replaced",
            r = revoked => r,
            _ = shutdown.cancelled() => "gateway shutdown",
        };
        // The shutdown sequence also cancels every instance's `close` token: whichever this
        // select saw first, a gateway that is shutting down says goodbye.
        if shutdown.is_cancelled() && matches!(reason, "gateway shutdown" | "closed by gateway") {
            reason = self.goodbye(&instance, &mut conn).await;
        }
        if reason == "replaced" {
            // The newer link is registered and takes every new call; the calls still on
            // this one finish first (bounded by the drain grace).
            let deadline = Instant::now() + self.drain_grace;
            let mut poll = tokio::time::interval(Duration::from_millis(20));
            reason = loop {
                if instance.in_flight() == 0 {
                    break "replaced by a newer link";
                }
                tokio::select! {
                    _ = &mut conn => break "replaced; closed by service while draining",
                    _ = poll.tick() => {}
                    _ = tokio::time::sleep_until(deadline) => break "replaced; drain grace over",
                    _ = instance.close.cancelled() => break "replaced; closed by gateway",
                    _ = shutdown.cancelled() => break "replaced; gateway shutdown",
                }
            };
        }
        instance.set_state(LinkState::Offline);
        // Sessions pinned to the link fault now, not when their streams notice.
        instance.down.cancel();
        self.registry.unregister(&instance);
        tracing::info!(
            service = %instance.service, instance = %instance.instance_id, link = %link_id,
            reason, "link down"
        );
        Ok(())
    }

    /// The gateway is shutting down, its calls finished (or their grace is over): tell the
    /// service (`POST` [`DRAIN_PATH`]) so it can tell a restart from a crash, and let it end the
    /// link its way — its GOAWAY, open streams finish, it closes — within
    /// [`DRAIN_NOTICE_TIMEOUT`]. An HTTP/2 client has no GOAWAY of its own to send (h2's
    /// client sends none, and a client's would only refuse server pushes), hence the request.
    /// A service that does not answer 204 (an SDK older than the notice) is closed at once.
    async fn goodbye<C>(&self, inst: &Instance, conn: &mut C) -> &'static str
    where
        C: std::future::Future<Output = Result<(), h2::Error>> + Unpin,
    {
        inst.set_state(LinkState::Draining);
        self.metrics.frame("drain");
        let deadline = Instant::now() + DRAIN_NOTICE_TIMEOUT;
        let notice = tokio::time::timeout_at(deadline, drain_notice(inst));
        tokio::pin!(notice);
        tokio::select! {
            r = &mut notice => match r {
                Ok(Ok(())) => match tokio::time::timeout_at(deadline, conn).await {
                    Ok(_) => "gateway shutdown; link drained by the service",
                    Err(_) => "gateway shutdown; the service did not close the link in time",
                },
                Ok(Err(e)) => {
                    tracing::debug!(service = %inst.service, instance = %inst.instance_id, error = %e, "drain notice not taken");
                    "gateway shutdown; drain notice not taken"
                }
                Err(_) => "gateway shutdown; drain notice timed out",
            },
            // The service may answer and close at once: the answer, if it came, is ready too.
            _ = &mut *conn => match notice.await {
                Ok(Ok(())) => "gateway shutdown; link drained by the service",
                _ => "gateway shutdown; closed by service",
            },
        }
    }

    /// Resolves when the store no longer admits `key` for `inst` (checked on every store
    /// change); never for a link without an enrolled key.
    async fn watch_key(&self, inst: &Instance, key: Option<&LinkKeyId>) -> &'static str {
        let (Some(key), Some(keys), Some(changes)) = (key, &self.keys, &self.changes) else {
            return std::future::pending().await;
        };
        let mut rx = changes.subscribe();
        loop {
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
            if !keys
                .still_admits(key, &inst.service, &inst.instance_id)
                .await
            {
                tracing::warn!(
                    service = %inst.service, instance = %inst.instance_id,
                    fingerprint = %key.fingerprint, "instance key no longer admitted: closing its link"
                );
                return "instance key revoked";
            }
        }
    }

    /// The link's connection window: one stream window per stream it may carry, plus one.
    fn connection_window(&self) -> u32 {
        let w = u64::from(self.cfg.stream_window_bytes)
            * (u64::from(self.cfg.max_concurrent_streams) + 1);
        u32::try_from(w.min(u64::from(crate::config::MAX_H2_WINDOW)))
            .unwrap_or(crate::config::MAX_H2_WINDOW)
    }

    /// The public keys services verify assertions with now.
    fn published_keys(&self) -> Jwks {
        self.assertions
            .keys()
            .jwks(self.assertions.clock().now_ms())
    }

    /// Keep the service's keys equal to the published ones for the life of the link: push the
    /// set (`PUT` [`KEYS_PATH`]) when the key ring changes, and check again on every heartbeat
    /// interval, which retries a failed push and carries changes that come with time (a
    /// retired key past its `not_after` leaves the set).
    ///
    /// Retrying on the heartbeat rather than at once: a push fails when the link or the
    /// service is in trouble, which the heartbeat is already measuring, and a tight retry loop
    /// would only add load there. A new key signs only after the key ring's publish delay, so
    /// a push that fails once is retried well before the key is used (the publish delay must
    /// exceed a few heartbeat intervals; docs/link-protocol.md §6.5).
    async fn push_keys(
        &self,
        inst: &Instance,
        mut changes: tokio::sync::watch::Receiver<u64>,
        mut delivered: Jwks,
    ) -> std::convert::Infallible {
        let interval = self.cfg.heartbeat_interval;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut ring_alive = true;
        loop {
            tokio::select! {
                r = changes.changed(), if ring_alive => ring_alive = r.is_ok(),
                _ = tick.tick() => {}
            }
            let current = self.published_keys();
            if current == delivered {
                continue;
            }
            self.metrics.frame("keys");
            match tokio::time::timeout(interval, put_keys(inst, &current)).await {
                Ok(Ok(())) => {
                    tracing::info!(
                        service = %inst.service, instance = %inst.instance_id,
                        keys = current.keys.len(), "assertion keys pushed"
                    );
                    delivered = current;
                }
                Ok(Err(e)) => tracing::warn!(
                    service = %inst.service, instance = %inst.instance_id, error = %e,
                    "assertion keys not taken; retrying on the next heartbeat"
                ),
                Err(_) => tracing::warn!(
                    service = %inst.service, instance = %inst.instance_id,
                    "assertion keys push timed out; retrying on the next heartbeat"
                ),
            }
        }
    }

    /// The `retry_after_ms` of a refused credential's REJECT.
    fn retry_after(&self, failure: &LinkAuthFailure) -> Option<u64> {
        match failure {
            LinkAuthFailure::PairingRequired(_) => {
                Some(self.cfg.pairing.retry_after.as_millis() as u64)
            }
            LinkAuthFailure::PairingFull | LinkAuthFailure::Unavailable => Some(30_000),
            _ => None,
        }
    }

    /// CHALLENGE, HELLO, credential, descriptors. `version` becomes the HELLO's as soon as
    /// it has been read, for the REJECT or HELLO_ACK that answers it; `claimed`, the service
    /// the HELLO names (even one that does not decode), for the log line of a refusal.
    async fn handshake<IO>(
        &self,
        io: &mut IO,
        slot: Option<&Slot>,
        hello_by: Instant,
        version: &mut u8,
        claimed: &mut Option<String>,
        tls_facts: Option<([u8; 32], crate::tls::ClientCert)>,
    ) -> Result<Accepted, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let challenge = Challenge {
            nonce: random_hex(32),
            server_time_ms: u64::try_from(crate::store::now_ms()).unwrap_or(0),
            versions: portcullis_link::VERSIONS.to_vec(),
        };
        let nonce: Arc<str> = challenge.nonce.as_str().into();
        let server_time_ms = challenge.server_time_ms;
        write_frame(io, &Frame::Challenge(challenge)).await?;
        self.metrics.frame("challenge");
        let (header, body) =
            tokio::time::timeout_at(hello_by, handshake::read_raw(io, self.cfg.max_frame_bytes))
                .await
                .map_err(|_| HandshakeError::Timeout)??;
        if header.frame_type == portcullis_link::FrameType::Hello {
            *claimed = portcullis_link::claimed_service(&body);
        }
        let frame = Frame::decode_body(&header, &body)?;
        drop(body);
        *version = header.version;
        let hello = match frame {
            Frame::Hello(h) => {
                self.metrics.frame("hello");
                *h
            }
            other => {
                return Err(HandshakeError::Unexpected {
                    expected: "HELLO",
                    got: other.frame_type().name(),
                })
            }
        };
        if let Some(s) = slot {
            s.hello_received();
        }
        let (tls_exporter, client_cert) = match tls_facts {
            Some((e, c)) => (Some(e), c),
            None => (None, crate::tls::ClientCert::None),
        };
        let facts = HandshakeFacts {
            nonce,
            server_time_ms,
            version: *version,
            tls_exporter,
            client_cert,
        };
        // The one credential contract of the link; a refusal costs what an acceptance does.
        let identity = match self.authenticator.authenticate(&hello, &facts).await {
            Ok(id) => id,
            Err(failure) => {
                if failure.is_failure() {
                    self.audit.refused(Refusal {
                        reason: failure.as_str(),
                        credential_id: Some(&hello.service),
                        peer: None,
                        capability: None,
                    });
                }
                return Err(HandshakeError::Refused(failure));
            }
        };
        let endpoints = validate_endpoints(&hello.endpoints).map_err(HandshakeError::Register)?;
        self.registry
            .check(&hello.service, &hello.instance_id, &endpoints)
            .map_err(HandshakeError::Register)?;
        Ok(Accepted {
            hello,
            endpoints,
            identity,
        })
    }
}

struct Accepted {
    hello: Hello,
    identity: authenticator::LinkIdentity,
    endpoints: Vec<(
        portcullis_link::EndpointDescriptor,
        portcullis_link::PathTemplate,
    )>,
}

fn reject(code: RejectCode, message: &str, retry_after_ms: Option<u64>) -> Frame {
    Frame::Reject(Reject {
        code,
        message: message.chars().take(512).collect(),
        retry_after_ms,
        pairing: None,
    })
}

impl HandshakeError {
    fn reject_code(&self) -> Option<RejectCode> {
        Some(match self {
            Self::Decode(e) => e.reject_code(),
            Self::Unexpected { .. } => RejectCode::MalformedFrame,
            Self::Refused(f) => f.reject_code(),
            Self::Register(RegisterError::Conflict { .. }) => RejectCode::RouteConflict,
            Self::Register(RegisterError::InvalidDescriptor { .. }) => {
                RejectCode::InvalidDescriptor
            }
            Self::Register(RegisterError::TooManyInstances(_)) => RejectCode::Unavailable,
            Self::Timeout => RejectCode::Timeout,
            Self::Io(_) | Self::Http2(_) | Self::Evicted => return None,
        })
    }
}

/// PING for round-trip time and liveness, plus the health exchange for drain and load.
/// Returns when the link should be dropped: no PONG for three intervals.
async fn heartbeat(
    inst: Arc<Instance>,
    ping_pong: Option<h2::PingPong>,
    interval: Duration,
    metrics: &Metrics,
) -> &'static str {
    let Some(mut ping_pong) = ping_pong else {
        return "no ping handle";
    };
    // The instance is registered: say so at once with a health request. The service counts
    // itself linked on the gateway's first request (link protocol §5), and the report seeds
    // the instance's state before the first tick.
    exchange_health(&inst, interval, metrics).await;
    let mut last_pong = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let sent = Instant::now();
        metrics.frame("ping");
        match tokio::time::timeout(interval, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {
                inst.observe_rtt(sent.elapsed().as_micros() as u64);
                last_pong = Instant::now();
                if inst.state() == LinkState::Unstable {
                    inst.set_state(LinkState::Online);
                }
            }
            _ => {
                if inst.state() == LinkState::Online {
                    tracing::warn!(service = %inst.service, instance = %inst.instance_id, "heartbeat missed");
                    inst.set_state(LinkState::Unstable);
                }
            }
        }
        if last_pong.elapsed() >= interval * 3 {
            return "heartbeat timeout";
        }
        exchange_health(&inst, interval, metrics).await;
    }
}

/// Ask the service for its health (bounded by `interval`); a draining service stops being
/// chosen.
async fn exchange_health(inst: &Instance, interval: Duration, metrics: &Metrics) {
    metrics.frame("health");
    if let Ok(Some(report)) = tokio::time::timeout(interval, health(inst)).await {
        if report.draining {
            inst.set_state(LinkState::Draining);
        }
    }
}

/// `PUT` the key set to the service, which answers 204 once it holds it. The body is public
/// keys only.
async fn put_keys(inst: &Instance, keys: &Jwks) -> Result<(), String> {
    let body = Bytes::from(serde_json::to_vec(keys).map_err(|e| e.to_string())?);
    let req = Request::put(format!("http://{}{KEYS_PATH}", inst.service))
        .header(http::header::CONTENT_TYPE, "application/jwk-set+json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(())
        .map_err(|e| e.to_string())?;
    let mut sender = inst
        .sender
        .clone()
        .ready()
        .await
        .map_err(|e| e.to_string())?;
    let (resp, mut send) = sender.send_request(req, false).map_err(|e| e.to_string())?;
    // A few KiB against a 64 KiB initial window: buffered by h2 and sent at once.
    send.send_data(body, true).map_err(|e| e.to_string())?;
    let resp = resp.await.map_err(|e| e.to_string())?;
    match resp.status() {
        http::StatusCode::NO_CONTENT => Ok(()),
        s => Err(format!("service answered {s}")),
    }
}

/// How long a link may take, once the gateway is shutting down, to take the drain notice and
/// close (the calls on it have had the shutdown grace already).
pub const DRAIN_NOTICE_TIMEOUT: Duration = Duration::from_secs(2);

/// `POST` [`DRAIN_PATH`]: the gateway is shutting down. The service answers 204, then drains.
async fn drain_notice(inst: &Instance) -> Result<(), String> {
    let req = Request::post(format!("http://{}{DRAIN_PATH}", inst.service))
        .header(http::header::CONTENT_LENGTH, 0)
        .body(())
        .map_err(|e| e.to_string())?;
    let mut sender = inst
        .sender
        .clone()
        .ready()
        .await
        .map_err(|e| e.to_string())?;
    let (resp, _) = sender.send_request(req, true).map_err(|e| e.to_string())?;
    let resp = resp.await.map_err(|e| e.to_string())?;
    match resp.status() {
        http::StatusCode::NO_CONTENT => Ok(()),
        s => Err(format!("service answered {s}")),
    }
}

async fn health(inst: &Instance) -> Option<portcullis_link::HealthReport> {
    let req = Request::get(format!("http://{}{HEALTH_PATH}", inst.service))
        .body(())
        .ok()?;
    let mut sender = inst.sender.clone().ready().await.ok()?;
    let (resp, _) = sender.send_request(req, true).ok()?;
    let resp = resp.await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if buf.len() + chunk.len() > 4096 {
            return None;
        }
        buf.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&buf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// A byte stream whose bytes stop flowing, both ways, once `frozen` is set: a peer
    /// that is still connected but has gone silent.
    struct Freezable<IO> {
        io: IO,
        frozen: Arc<AtomicBool>,
    }

    impl<IO: AsyncRead + Unpin> AsyncRead for Freezable<IO> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let this = self.get_mut();
            if this.frozen.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
            Pin::new(&mut this.io).poll_read(cx, buf)
        }
    }

    impl<IO: AsyncWrite + Unpin> AsyncWrite for Freezable<IO> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            if this.frozen.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
            Pin::new(&mut this.io).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
        }
    }

    fn test_signer() -> AssertionSigner {
        use crate::auth::keyring::{KeyRing, KeySet, SigningKey};
        let now = crate::store::now_ms();
        let key = Arc::new(SigningKey::generate(now).unwrap().key);
        let ring = Arc::new(KeyRing::new(KeySet::new(vec![key]), 0));
        AssertionSigner::new(ring, "portcullis", crate::clock::Clock::system(), 16)
    }

    fn server(interval: Duration) -> (Arc<LinkServer>, Arc<Registry>) {
        let mut config = Config::default();
        config.link.heartbeat_interval = interval;
        let registry = Arc::new(Registry::new(Duration::from_secs(30)));
        let mut config_with_svc = config.clone();
        config_with_svc.services.insert(
            "svc".into(),
            crate::config::ServiceConfig::token(hex::encode(hash_token("svc-token"))),
        );
        let metrics = Arc::new(Metrics::new(Vec::new()));
        let server = LinkServer {
            registry: registry.clone(),
            cfg: config.link.clone(),
            max_request_body: config.ingress.max_body_bytes,
            response_stall_timeout: config.ingress.response_stall_timeout,
            drain_grace: config.shutdown.grace_period,
            authenticator: Arc::new(ServiceTokens::from_config(&config_with_svc).unwrap()),
            keys: None,
            changes: None,
            audit: AuditSink::metrics_only(metrics.clone()),
            assertions: Arc::new(test_signer()),
            tls: None,
            client_verifier: None,
            metrics,
            dataplane: std::sync::Weak::new(),
            links: tokio_util::task::TaskTracker::new(),
        };
        (Arc::new(server), registry)
    }

    /// The service side: handshake, then an HTTP/2 server answering 404 (PINGs are answered
    /// by h2 itself) until its bytes are frozen.
    async fn service(io: tokio::io::DuplexStream, frozen: Arc<AtomicBool>) {
        let mut io = Freezable { io, frozen };
        assert!(matches!(
            read_frame(&mut io, portcullis_link::MAX_FRAME_LEN).await,
            Ok(Frame::Challenge(_))
        ));
        let hello = Hello {
            service: "svc".into(),
            instance_id: "svc-1".into(),
            version: "0".into(),
            region: None,
            endpoints: vec![portcullis_link::EndpointDescriptor {
                method: "GET".into(),
                path: "/svc".into(),
                timeout_ms: None,
                streaming: false,
                capability: None,
                protocol: portcullis_link::Protocol::Http,
                workspace_scoped: false,
            }],
            openapi: None,
            sessions: None,
            credential: portcullis_link::Credential::Token {
                token: "svc-token".into(),
            },
        };
        write_frame(&mut io, &Frame::Hello(Box::new(hello)))
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut io, portcullis_link::MAX_FRAME_LEN).await,
            Ok(Frame::HelloAck(_))
        ));
        let mut conn = h2::server::handshake(io).await.unwrap();
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            let resp = http::Response::builder().status(404).body(()).unwrap();
            let _ = respond.send_response(resp, true);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_link_goes_unstable_then_is_removed_after_three_intervals() {
        let interval = Duration::from_secs(1);
        let (server, registry) = server(interval);
        let (gw_side, svc_side) = tokio::io::duplex(64 * 1024);
        let frozen = Arc::new(AtomicBool::new(false));
        tokio::spawn(service(svc_side, frozen.clone()));
        let link = {
            let s = server.clone();
            tokio::spawn(async move { s.handle(gw_side, CancellationToken::new(), None).await })
        };

        let inst = loop {
            if let Some(i) = registry.instances().pop() {
                break i;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Answered heartbeats keep it Online.
        tokio::time::sleep(interval * 5).await;
        assert_eq!(inst.state(), LinkState::Online);
        assert!(!link.is_finished());

        frozen.store(true, Ordering::SeqCst);
        let silent_since = Instant::now();
        while inst.state() == LinkState::Online {
            assert!(silent_since.elapsed() < interval * 3, "never went Unstable");
            tokio::time::sleep(interval / 10).await;
        }
        assert_eq!(inst.state(), LinkState::Unstable);
        assert_eq!(registry.instances().len(), 1, "Unstable is still routable");

        let ended = tokio::time::timeout(interval * 10, link)
            .await
            .expect("the link ends")
            .unwrap();
        assert!(ended.is_ok());
        // Three intervals after the last PONG, which came at most one interval before the
        // freeze: never sooner than two intervals of silence, never later than four.
        let silent = silent_since.elapsed();
        assert!(
            silent >= interval * 2 && silent <= interval * 4,
            "{silent:?}"
        );
        assert_eq!(inst.state(), LinkState::Offline);
        assert!(registry.instances().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_no_hello_loses_its_slot_after_the_hello_timeout() {
        let (server, _registry) = server(Duration::from_secs(1));
        let admission = Admission::new(4, 4);
        let slot = admission.admit([127, 0, 0, 1].into()).unwrap();
        let (gw_side, mut peer) = tokio::io::duplex(64 * 1024);
        let started = Instant::now();
        let s = server.clone();
        let link = tokio::spawn(async move {
            s.handle(gw_side, CancellationToken::new(), Some(slot))
                .await
        });
        // The peer reads the CHALLENGE and goes silent.
        assert!(matches!(
            read_frame(&mut peer, portcullis_link::MAX_FRAME_LEN).await,
            Ok(Frame::Challenge(_))
        ));
        let res = link.await.unwrap();
        assert!(matches!(res, Err(HandshakeError::Timeout)), "{res:?}");
        let took = started.elapsed();
        assert!(
            took >= server.cfg.hello_timeout && took < server.cfg.handshake_timeout,
            "{took:?}"
        );
        assert_eq!(admission.pending(), 0, "the slot is released");
    }
}
