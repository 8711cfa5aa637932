//! The service builder and the handle of a running service.
//!
//! [`Service::builder`] collects identity, gateways, credential and endpoints; `serve`
//! validates all of it before anything is dialled, then spawns one supervisor task per gateway
//! and link slot. The returned [`Running`] handle waits for links, drains gracefully, or drops
//! everything at once.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use portcullis_link::{Credential, Frame, HealthReport, Hello};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::endpoint::{validate_all, Endpoint};
use crate::error::{BoxError, Error};
use crate::gateway::{tls_config, GatewayAddr};
use crate::instance_key::{InstanceKey, Pairing, PairingCallback};
use crate::serve::{LinkSettings, Shared};
use crate::supervisor::{supervise, LinkSlot, RejectedCallback};

/// Default grace period of [`Running::shutdown`].
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);
/// Default of [`ServiceBuilder::conflict_patience`]: a route conflict lasting this long stops
/// the slot. Longer than a gateway's default drain grace (30 s) plus the heartbeat timeout of
/// a crashed owner, so a deploy that moves a route between services never trips it.
pub const DEFAULT_CONFLICT_PATIENCE: Duration = Duration::from_secs(120);
/// Default concurrency hint: the in-flight count at which the service reports full load.
pub const DEFAULT_CONCURRENCY: u32 = 100;
/// Most links one instance may keep to one gateway.
pub const MAX_LINKS_PER_GATEWAY: usize = 16;
/// Default of [`ServiceBuilder::max_header_list_size`]: 4 MiB.
///
/// The gateway forwards request heads up to its `ingress.max_header_bytes` (64 KiB by
/// default, at most 1 MiB), plus the headers it adds. h2 derives two limits from this one
/// setting: the decoded size of a head (RFC 9113 §6.5.2: name + value + 32 per field), over
/// which a head is refused — on its stream with 431 if it is a little over, but with GOAWAY
/// for the whole link once it has more than the limit left to decode — and the CONTINUATION
/// frames one head may span, about 1.25 × this many *encoded* bytes, past which the whole link
/// fails too. HPACK's Huffman code takes up to 28 bits for some header bytes, so a 1 MiB head
/// can take 3.5 MiB on the wire: 4 MiB is the least power of two that takes the largest head
/// any gateway configuration forwards, however it encodes.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 4 << 20;
/// Smallest [`ServiceBuilder::max_header_list_size`]: room for the pseudo-headers and the
/// headers the gateway adds (its route header alone may carry a 1 KiB template).
pub const MIN_MAX_HEADER_LIST_SIZE: u32 = 8 << 10;
/// Largest [`ServiceBuilder::max_header_list_size`].
pub const MAX_MAX_HEADER_LIST_SIZE: u32 = 16 << 20;
/// Default of [`ServiceBuilder::max_sessions`]: pinned sessions one link takes at once.
pub const DEFAULT_MAX_SESSIONS: u32 = 64;

/// Entry point: `Service::builder("name")`.
#[derive(Debug)]
pub struct Service(());

impl Service {
    /// Start describing the service called `name` (`[a-z0-9-]{1,63}`).
    pub fn builder(name: impl Into<String>) -> ServiceBuilder {
        ServiceBuilder {
            name: name.into(),
            gateways: Vec::new(),
            token: None,
            instance_key: None,
            tls_client_cert: None,
            on_pairing: OnPairing(None),
            on_rejected: OnRejected(None),
            conflict_patience: DEFAULT_CONFLICT_PATIENCE,
            instance_id: None,
            version: "unknown".into(),
            region: None,
            links_per_gateway: 1,
            tls_root_ca_pem: None,
            endpoints: Vec::new(),
            openapi: None,
            drain_grace: DEFAULT_DRAIN_GRACE,
            concurrency: DEFAULT_CONCURRENCY,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
            issuer: None,
            sessions: None,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The pairing callback, shown in `Debug` only as present or not.
#[derive(Clone)]
struct OnPairing(Option<PairingCallback>);

impl fmt::Debug for OnPairing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// The refusal callback, shown in `Debug` only as present or not.
#[derive(Clone)]
struct OnRejected(Option<RejectedCallback>);

impl fmt::Debug for OnRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// Describes a service before it links to its gateways. See the crate docs for an example.
#[derive(Debug, Clone)]
#[must_use]
pub struct ServiceBuilder {
    name: String,
    gateways: Vec<String>,
    token: Option<Secret>,
    instance_key: Option<InstanceKey>,
    tls_client_cert: Option<(Vec<u8>, Secret)>,
    on_pairing: OnPairing,
    on_rejected: OnRejected,
    conflict_patience: Duration,
    instance_id: Option<String>,
    version: String,
    region: Option<String>,
    links_per_gateway: usize,
    tls_root_ca_pem: Option<Vec<u8>>,
    endpoints: Vec<Endpoint>,
    openapi: Option<serde_json::Value>,
    drain_grace: Duration,
    concurrency: u32,
    max_header_list_size: u32,
    issuer: Option<String>,
    sessions: Option<crate::worker::Worker>,
    max_sessions: u32,
}

impl ServiceBuilder {
    /// Add a gateway: `tcp://host:port`, `tls://host:port` or `host:port` (tcp). Repeatable:
    /// the service links to every gateway given.
    pub fn gateway(mut self, url: impl Into<String>) -> Self {
        self.gateways.push(url.into());
        self
    }

    /// The static service token the gateway knows this service by. Never logged. For
    /// development; production instances use [`ServiceBuilder::instance_key`].
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret(token.into()));
        self
    }

    /// Prove the instance with its own Ed25519 key (protocol version 3, docs/link-protocol.md
    /// §10) instead of a token. On first contact the gateway answers with a pairing code: the
    /// SDK logs it, calls [`ServiceBuilder::on_pairing`], and keeps dialling with backoff
    /// until an admin approves it (`portcullis pairings approve CODE`).
    pub fn instance_key(mut self, key: InstanceKey) -> Self {
        self.instance_key = Some(key);
        self
    }

    /// Present this certificate chain and private key (PEM) to `tls://` gateways whose
    /// configuration requires mTLS of this service (`auth = ["mtls", …]`): the certificate's
    /// SAN must name the service. On its own (no token, no instance key) it is the HELLO's
    /// only credential. The key is never logged.
    pub fn tls_client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<String>,
    ) -> Self {
        self.tls_client_cert = Some((cert_pem.into(), Secret(key_pem.into())));
        self
    }

    /// [`ServiceBuilder::tls_client_cert_pem`] from PEM files.
    ///
    /// # Errors
    /// A file that cannot be read.
    pub fn tls_client_cert_files(
        self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Result<Self, Error> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                Error::config(format!("TLS client certificate file {}", p.display())).with_source(e)
            })
        };
        let cert = read(cert.as_ref())?;
        let key = String::from_utf8(read(key.as_ref())?)
            .map_err(|_| Error::config("TLS client key: not PEM text"))?;
        Ok(self.tls_client_cert_pem(cert, key))
    }

    /// Called with the pairing code every time a gateway answers that the instance key waits
    /// for an admin (at most once per attempt, so at the pace of the backoff). Runs on the
    /// link's task: keep it short.
    pub fn on_pairing(mut self, f: impl Fn(&Pairing) + Send + Sync + 'static) -> Self {
        self.on_pairing = OnPairing(Some(Arc::new(f)));
        self
    }

    /// Called once for every link slot that stops dialling because its gateway refused the
    /// service for a reason retrying cannot fix (a wrong token, an invalid descriptor, a route
    /// conflict that outlasted [`ServiceBuilder::conflict_patience`]; see
    /// [`Error::is_permanent`]). The error names the gateway, the REJECT code
    /// ([`Error::reject_code`]) and the gateway's message; [`Running::linked`] fails with the
    /// same error once no slot is left. Runs on the link's task: keep it short.
    pub fn on_rejected(mut self, f: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.on_rejected = OnRejected(Some(Arc::new(f)));
        self
    }

    /// How long a gateway may keep answering `route_conflict` (another service serves one of
    /// this one's routes) before the slot stops dialling it and reports the refusal. Default
    /// [`DEFAULT_CONFLICT_PATIENCE`] (2 minutes): a deploy that moves a route from one service
    /// to another refuses the new owner until the old one has drained, and that race must not
    /// become an outage; a conflict that lasts longer is a configuration mistake. Zero gives
    /// up on the first conflict.
    pub fn conflict_patience(mut self, patience: Duration) -> Self {
        self.conflict_patience = patience;
        self
    }

    /// Instance id, unique per running instance (`[A-Za-z0-9._-]{1,128}`).
    /// Default: `<service>-<8 random hex digits>`.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Version of the service build, free text up to 64 bytes. Default `unknown`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Region the instance runs in (`[A-Za-z0-9._-]{1,128}`); the gateway prefers its own.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Links to keep to each gateway (1 to [`MAX_LINKS_PER_GATEWAY`], default 1).
    ///
    /// The gateway keeps one active link per instance id, so with more than one link, slot
    /// `k >= 1` registers as `<instance_id>.<k>`; slot 0 keeps the plain instance id.
    ///
    /// A gateway serves each link on one of its worker threads (one per core by default) and
    /// prefers, for a call, a link on the worker that holds the client's connection. For the
    /// highest throughput through a gateway, keep as many links as it has workers.
    pub fn links_per_gateway(mut self, n: usize) -> Self {
        self.links_per_gateway = n;
        self
    }

    /// PEM root certificate(s) that `tls://` gateways must chain to.
    pub fn tls_root_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_ca_pem = Some(pem.into());
        self
    }

    /// Declare an endpoint.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Declare several endpoints.
    pub fn endpoints(mut self, endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        self.endpoints.extend(endpoints);
        self
    }

    /// Attach the service's OpenAPI document to HELLO.
    pub fn openapi(mut self, document: serde_json::Value) -> Self {
        self.openapi = Some(document);
        self
    }

    /// How long [`Running::shutdown`] waits for in-flight calls. Default 30 s.
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// Concurrency hint: the in-flight count at which the service reports a load of 1.0 in
    /// its health report. Default 100.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// Largest request head the service accepts, as HTTP/2 counts it (RFC 9113 §6.5.2: the
    /// sum over fields of name + value + 32 bytes), advertised to the gateway as
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`. Between [`MIN_MAX_HEADER_LIST_SIZE`] and
    /// [`MAX_MAX_HEADER_LIST_SIZE`]; default [`DEFAULT_MAX_HEADER_LIST_SIZE`] (4 MiB), which
    /// takes every head a gateway may be configured to forward.
    ///
    /// Lower it only if the service would rather not be sent large heads. The gateway reads
    /// the value from the link's SETTINGS and answers larger heads itself with 431; a gateway
    /// that did not would make the service's HTTP/2 server fail the whole link on a head far
    /// over the limit (h2 closes the connection when one head's encoded bytes exceed about
    /// 1.25 × the limit, or its decoded size 4 ×), taking every call in flight on it down.
    pub fn max_header_list_size(mut self, bytes: u32) -> Self {
        self.max_header_list_size = bytes;
        self
    }

    /// Serve pinned sessions with `worker`'s command handlers — the same
    /// [`Worker`](crate::worker::Worker) a process worker runs. The HELLO declares that the
    /// instance serves sessions (link protocol version 4), so a gateway backend naming this
    /// service (`[backends.NAME] service = "…"`) may pin sessions to it; each pinned session
    /// is one stream on the link speaking the worker protocol. A session never moves: if
    /// this instance's link goes, its sessions fault at the gateway (`instance-gone`).
    pub fn sessions(mut self, worker: crate::worker::Worker) -> Self {
        self.sessions = Some(worker);
        self
    }

    /// Pinned sessions one link takes at once (declared in the HELLO; the gateway pins no
    /// more, and the SDK refuses a stream past it with 503). 1 to
    /// [`MAX_DECLARED_SESSIONS`](portcullis_link::MAX_DECLARED_SESSIONS); default
    /// [`DEFAULT_MAX_SESSIONS`].
    pub fn max_sessions(mut self, n: u32) -> Self {
        self.max_sessions = n;
        self
    }

    /// The issuer (`iss`) the gateways' identity assertions must name
    /// (`[A-Za-z0-9._-]{1,128}`, the gateway's `link.assertion_issuer`). Default: the one each
    /// gateway announces when the link is established. Set it to refuse calls from a gateway
    /// of another deployment that would hold this service's token.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Validate everything and build the HELLO of each link slot, without dialling.
    fn plan(&self) -> Result<Vec<LinkSlot>, Error> {
        if !portcullis_link::valid_service_name(&self.name) {
            return Err(Error::config(format!(
                "service name {:?}: must be 1-63 of [a-z0-9-], not starting or ending with '-'",
                self.name
            )));
        }
        if self.gateways.is_empty() {
            return Err(Error::config("no gateway configured"));
        }
        // The credential every HELLO carries: a token as configured, or a placeholder of the
        // right size that each handshake replaces with a fresh signature.
        let credential = match (&self.token, &self.instance_key) {
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "both a service token and an instance key are configured: choose one",
                ))
            }
            (None, None) if self.tls_client_cert.is_some() => Credential::TlsClientCertificate {},
            (None, None) => {
                return Err(Error::config(
                    "no credential configured: set an instance key (or a token, for development)",
                ))
            }
            (Some(token), None) => {
                if token.0.is_empty() || token.0.len() > 1024 {
                    return Err(Error::config("service token must be 1-1024 bytes"));
                }
                Credential::Token {
                    token: token.0.clone(),
                }
            }
            (None, Some(key)) => Credential::Ed25519 {
                public_key: portcullis_link::proof::encode_hex(&key.public_key()),
                nonce: "0".repeat(64),
                timestamp_ms: 0,
                signature: "0".repeat(128),
            },
        };
        if !(1..=MAX_LINKS_PER_GATEWAY).contains(&self.links_per_gateway) {
            return Err(Error::config(format!(
                "links_per_gateway must be 1-{MAX_LINKS_PER_GATEWAY}"
            )));
        }
        if self.version.len() > 64 {
            return Err(Error::config("version longer than 64 bytes"));
        }
        if let Some(r) = &self.region {
            if !portcullis_link::valid_token(r) {
                return Err(Error::config(format!(
                    "region {r:?}: must be 1-128 of [A-Za-z0-9._-]"
                )));
            }
        }
        if !(MIN_MAX_HEADER_LIST_SIZE..=MAX_MAX_HEADER_LIST_SIZE)
            .contains(&self.max_header_list_size)
        {
            return Err(Error::config(format!(
                "max_header_list_size must be {MIN_MAX_HEADER_LIST_SIZE}-{MAX_MAX_HEADER_LIST_SIZE} bytes"
            )));
        }
        if let Some(i) = &self.issuer {
            if !portcullis_link::valid_token(i) {
                return Err(Error::config(format!(
                    "issuer {i:?}: must be 1-128 of [A-Za-z0-9._-]"
                )));
            }
        }
        validate_all(&self.endpoints)?;
        let sessions = match &self.sessions {
            None => None,
            Some(w) if w.is_empty() => {
                return Err(Error::config("sessions: the worker declares no command"))
            }
            Some(_) => {
                if !(1..=portcullis_link::MAX_DECLARED_SESSIONS).contains(&self.max_sessions) {
                    return Err(Error::config(format!(
                        "max_sessions must be 1-{}",
                        portcullis_link::MAX_DECLARED_SESSIONS
                    )));
                }
                Some(portcullis_link::SessionsDecl {
                    max_sessions: self.max_sessions,
                })
            }
        };
        let settings = LinkSettings {
            max_header_list_size: self.max_header_list_size,
        };
        let instance_id = match &self.instance_id {
            Some(id) => id.clone(),
            None => format!("{}-{:08x}", self.name, rand::thread_rng().gen::<u32>()),
        };
        let addrs = self
            .gateways
            .iter()
            .map(|g| GatewayAddr::parse(g))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = if addrs.iter().any(|a| a.tls) {
            let pem = self.tls_root_ca_pem.as_deref().ok_or_else(|| {
                Error::config("a tls:// gateway is configured but no TLS root CA")
            })?;
            for a in addrs.iter().filter(|a| a.tls) {
                a.server_name()?;
            }
            let client = self
                .tls_client_cert
                .as_ref()
                .map(|(c, k)| (c.as_slice(), k.0.as_bytes()));
            Some(tls_config(pem, client)?)
        } else {
            None
        };
        let mut slots = Vec::new();
        for addr in addrs {
            for k in 0..self.links_per_gateway {
                let id = if k == 0 {
                    instance_id.clone()
                } else {
                    format!("{instance_id}.{k}")
                };
                if !portcullis_link::valid_token(&id) {
                    return Err(Error::config(format!(
                        "instance id {id:?}: must be 1-128 of [A-Za-z0-9._-]"
                    )));
                }
                let hello = Hello {
                    service: self.name.clone(),
                    instance_id: id,
                    version: self.version.clone(),
                    region: self.region.clone(),
                    endpoints: self.endpoints.iter().cloned().map(Into::into).collect(),
                    openapi: self.openapi.clone(),
                    credential: credential.clone(),
                    sessions,
                };
                slots.push(LinkSlot {
                    addr: addr.clone(),
                    tls: tls.clone(),
                    hello,
                    settings,
                    issuer: self.issuer.clone(),
                    key: self.instance_key.clone(),
                    on_pairing: self.on_pairing.0.clone(),
                    on_rejected: self.on_rejected.0.clone(),
                    conflict_patience: self.conflict_patience,
                });
            }
        }
        // Refuse at build time a HELLO that could never be sent.
        if let Some(slot) = slots.first() {
            Frame::Hello(Box::new(slot.hello.clone()))
                .encode_as(portcullis_link::VERSION)
                .map_err(|e| Error::config("HELLO exceeds the frame size limit").with_source(e))?;
        }
        Ok(slots)
    }

    /// Validate the configuration, then spawn the link supervisors on the current tokio
    /// runtime and return at once. Calls are served by `service`; an `axum::Router` works
    /// directly.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the bad setting or endpoint, or
    /// when called outside a tokio runtime.
    pub fn serve<S, B>(self, service: S) -> Result<Running, Error>
    where
        S: tower::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let slots = self.plan()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::config("serve must be called inside a tokio runtime").with_source(e)
        })?;
        let instance_id = slots
            .first()
            .map(|s| s.hello.instance_id.clone())
            .unwrap_or_default();
        let shared = Shared::new(self.concurrency, slots.len());
        if let Some(w) = self.sessions {
            // The HELLO's figure is per link; the SDK bounds the sum over its links.
            let links = u32::try_from(slots.len().max(1)).unwrap_or(u32::MAX);
            shared.serve_sessions(w, self.max_sessions.saturating_mul(links));
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut aborts = Vec::new();
        for slot in slots {
            let fut = supervise(slot, Arc::clone(&shared), service.clone(), stop_rx.clone());
            aborts.push(tasks.spawn_on(fut, &runtime));
        }
        tracing::info!(
            service = %self.name, instance = %instance_id,
            gateways = self.gateways.len(), links = aborts.len(), "service starting"
        );
        Ok(Running {
            instance_id,
            shared,
            stop,
            tasks: Mutex::new(Some(tasks)),
            aborts,
            drain_grace: self.drain_grace,
        })
    }
}

/// Handle of a running service. Dropping it aborts every link, like [`Running::abort`]; call
/// [`Running::shutdown`] first for a graceful drain.
#[must_use = "dropping the handle drops every link"]
pub struct Running {
    instance_id: String,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Option<JoinSet<()>>>,
    aborts: Vec<AbortHandle>,
    drain_grace: Duration,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("instance_id", &self.instance_id)
            .field("links_up", &self.links_up())
            .field("health", &self.health())
            .finish()
    }
}

impl Running {
    /// The instance id (of link slot 0) this service registered with.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Links currently up (handshake done, HTTP/2 serving).
    pub fn links_up(&self) -> usize {
        *self.shared.links.borrow()
    }

    /// Resolve once at least one link is up (at once if one already is), or fail once no
    /// link can come up any more: every gateway refused the service for a reason retrying
    /// cannot fix (see [`Error::is_permanent`]) — a wrong token, an invalid descriptor, a route
    /// conflict that outlasted [`ServiceBuilder::conflict_patience`].
    ///
    /// # Errors
    /// The last such refusal ([`ErrorKind::Rejected`](crate::ErrorKind)), naming the gateway
    /// ([`Error::gateway`]), the REJECT code ([`Error::reject_code`]) and the gateway's
    /// message.
    pub async fn linked(&self) -> Result<(), Error> {
        self.wait_for_links(1).await
    }

    /// Resolve once at least `n` links are up, or fail as soon as fewer than `n` link slots are
    /// left dialling: a slot stops only on a refusal retrying cannot fix, so the wait could
    /// never end.
    ///
    /// # Errors
    /// The last refusal that stopped a slot ([`ErrorKind::Rejected`](crate::ErrorKind)), or
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `n` exceeds the service's slots.
    pub async fn wait_for_links(&self, n: usize) -> Result<(), Error> {
        let mut links = self.shared.links.subscribe();
        let mut dialling = self.shared.dialling.subscribe();
        loop {
            if *links.borrow_and_update() >= n {
                return Ok(());
            }
            let left = *dialling.borrow_and_update();
            if left < n {
                return Err(self.shared.failures().pop().unwrap_or_else(|| {
                    Error::config(format!("{n} links wanted, the service has {left} slots"))
                }));
            }
            // Both senders live in `shared`, which outlives this borrow: neither can close.
            tokio::select! {
                _ = links.changed() => {}
                _ = dialling.changed() => {}
            }
        }
    }

    /// The same as [`Running::linked`] (from when `linked` could not fail).
    ///
    /// # Errors
    /// As [`Running::linked`].
    pub async fn try_linked(&self) -> Result<(), Error> {
        self.linked().await
    }

    /// The same as [`Running::wait_for_links`] (from when it could not fail).
    ///
    /// # Errors
    /// As [`Running::wait_for_links`].
    pub async fn try_wait_for_links(&self, n: usize) -> Result<(), Error> {
        self.wait_for_links(n).await
    }

    /// Links a gateway ended gracefully since the service started: it was shutting down and
    /// said so on the link (docs/link-protocol.md §6.3), the link drained, and its slot is
    /// dialling again. A link that ends without that notice is a gateway crash, logged as a
    /// warning.
    pub fn gateway_drains(&self) -> u64 {
        self.shared
            .gateway_drains
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The refusals that made link slots stop dialling, oldest first: one per slot that gave
    /// up, each naming its gateway ([`Error::gateway`]) and the gateway's reason. Empty while
    /// every slot keeps trying; a slot that gave up stays stopped for the life of the service.
    pub fn failures(&self) -> Vec<Error> {
        self.shared.failures()
    }

    /// The health report the gateway would get now.
    pub fn health(&self) -> HealthReport {
        self.shared.health()
    }

    /// Graceful drain: report `draining`, send GOAWAY on every link, wait for in-flight calls
    /// up to the drain grace period, then drop whatever remains. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.start_draining();
        let _ = self.stop.send(true);
        let tasks = self
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(mut tasks) = tasks else {
            return;
        };
        let drained = tokio::time::timeout(self.drain_grace, async {
            while tasks.join_next().await.is_some() {}
            self.shared.idle().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                instance = %self.instance_id,
                in_flight = self.shared.health().in_flight,
                "drain grace period over; closing remaining links"
            );
        }
        tasks.abort_all();
        tracing::info!(instance = %self.instance_id, "service stopped");
    }

    /// Drop every link at once, without GOAWAY (what a crash looks like to the gateway).
    pub fn abort(&self) {
        // Abort only: signalling `stop` first could let a supervisor send GOAWAY.
        for a in &self.aborts {
            a.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.abort();
    }
}
