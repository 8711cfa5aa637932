//! One linked service instance as the routing layer sees it: its link's HTTP/2 sender, its
//! liveness state and the load figures selection weighs.

use bytes::Bytes;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Liveness of an instance (docs/design.md §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    /// Heartbeats answered.
    Online = 0,
    /// Heartbeats missed; chosen only when no Online instance exists.
    Unstable = 1,
    /// The service announced shutdown (GOAWAY or health says draining); never chosen.
    Draining = 2,
    /// The link is gone.
    Offline = 3,
}

impl LinkState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Online,
            1 => Self::Unstable,
            2 => Self::Draining,
            _ => Self::Offline,
        }
    }

    /// Lowercase name, for logs, metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Unstable => "unstable",
            Self::Draining => "draining",
            Self::Offline => "offline",
        }
    }
}

/// A linked instance.
#[derive(Debug)]
pub struct Instance {
    /// Service name.
    pub service: Arc<str>,
    /// Instance id from HELLO.
    pub instance_id: Arc<str>,
    /// Id the gateway gave this link.
    pub link_id: Arc<str>,
    /// Region from HELLO.
    pub region: Option<Arc<str>>,
    /// Version from HELLO.
    pub version: Arc<str>,
    /// HTTP/2 client half of the link.
    pub sender: h2::client::SendRequest<Bytes>,
    state: AtomicU8,
    in_flight: AtomicU32,
    /// Exponentially weighted round-trip time, microseconds.
    rtt_us: AtomicU64,
    /// Cancelled to close the link (shutdown, dead peer, revoked credential).
    pub close: CancellationToken,
    /// Cancelled when a newer link of the same instance has authenticated and taken its
    /// place: the link then drains (its calls in flight finish) and closes.
    pub replaced: CancellationToken,
    /// The credential kind that proved the link (`service_token`, `ed25519`).
    pub credential: &'static str,
    /// The fingerprint of the enrolled key that proved it, for an Ed25519 link.
    pub key_fingerprint: Option<Arc<str>>,
    /// When the link was registered, Unix ms.
    pub since_ms: i64,
    /// The data-plane thread the link runs on (`crate::dataplane`), if any.
    pub worker: Option<usize>,
    /// The links of one service process share this: the instance id without the SDK's
    /// `.<k>` suffix for its extra links (`links_per_gateway`).
    pub group: Arc<str>,
    /// The service's `SETTINGS_MAX_HEADER_LIST_SIZE` (`u32::MAX`: none declared). A request
    /// head at or over it is refused with 431 before a byte is sent: the service would reset
    /// it, or, when the block spans CONTINUATION frames, close the whole link.
    pub max_header_list_size: u32,
    /// How long a relayed response body may keep data waiting while its client takes none
    /// before it is cut (`ingress.response_stall_timeout`; zero: never).
    pub response_stall_timeout: std::time::Duration,
    /// The relayed bodies of this link, for the stall check (`crate::body`).
    pub stall_watch: crate::body::StallWatch,
    /// Pinned sessions the instance declared it takes at once (link protocol version 4);
    /// `None`: it serves no sessions and is never pinned.
    pub max_sessions: Option<u32>,
    /// Sessions pinned to this link now (see [`Instance::pin`]).
    pinned: AtomicU32,
    /// Cancelled when the link is gone, whatever the reason: the sessions pinned to it fault.
    pub down: CancellationToken,
}

/// The instance id without a trailing `.<digits>`: the SDK names link `k ≥ 1` of an instance
/// `<instance_id>.<k>`.
pub fn link_group(instance_id: &str) -> &str {
    match instance_id.rsplit_once('.') {
        Some((base, k))
            if !base.is_empty() && !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => instance_id,
    }
}

/// Initial latency estimate before the first PING returns: 1 ms.
const INITIAL_RTT_US: u64 = 1_000;

impl Instance {
    /// A new Online instance, on the worker of the calling thread (the link's task).
    pub fn new(
        service: Arc<str>,
        instance_id: Arc<str>,
        link_id: Arc<str>,
        region: Option<Arc<str>>,
        version: Arc<str>,
        sender: h2::client::SendRequest<Bytes>,
    ) -> Self {
        Self {
            group: link_group(&instance_id).into(),
            service,
            instance_id,
            link_id,
            region,
            version,
            sender,
            state: AtomicU8::new(LinkState::Online as u8),
            in_flight: AtomicU32::new(0),
            rtt_us: AtomicU64::new(INITIAL_RTT_US),
            close: CancellationToken::new(),
            replaced: CancellationToken::new(),
            credential: "service_token",
            key_fingerprint: None,
            since_ms: crate::store::now_ms(),
            worker: crate::dataplane::current(),
            max_header_list_size: u32::MAX,
            response_stall_timeout: std::time::Duration::ZERO,
            stall_watch: crate::body::StallWatch::default(),
            max_sessions: None,
            pinned: AtomicU32::new(0),
            down: CancellationToken::new(),
        }
    }

    /// Record that the instance serves at most `max` pinned sessions (`None`: none).
    pub fn with_sessions(mut self, max: Option<u32>) -> Self {
        self.max_sessions = max;
        self
    }

    /// Sessions pinned to this link now.
    pub fn pinned(&self) -> u32 {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Take one of the instance's session slots, at most `min(declared, limit)` at once;
    /// `None` when it serves no sessions or has none left. The slot is given back when the
    /// guard drops.
    pub fn pin(self: &Arc<Self>, limit: u32) -> Option<Pinned> {
        let max = self.max_sessions?.min(limit);
        self.pinned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Pinned(self.clone()))
    }

    /// Set how long a response body may stall before it is cut.
    pub fn with_response_stall_timeout(mut self, t: std::time::Duration) -> Self {
        self.response_stall_timeout = t;
        self
    }

    /// Record the credential that proved the link.
    pub fn with_credential(mut self, kind: &'static str, fingerprint: Option<Arc<str>>) -> Self {
        self.credential = kind;
        self.key_fingerprint = fingerprint;
        self
    }

    /// Set the header list limit the service declared in its SETTINGS.
    pub fn with_max_header_list_size(mut self, max: u32) -> Self {
        self.max_header_list_size = max;
        self
    }

    /// Current state.
    pub fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Move to `to`. Draining and Offline are sticky: a late heartbeat cannot revive them.
    pub fn set_state(&self, to: LinkState) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                let cur = LinkState::from_u8(cur);
                let allowed = match cur {
                    LinkState::Offline => false,
                    LinkState::Draining => to == LinkState::Offline,
                    _ => true,
                };
                allowed.then_some(to as u8)
            });
    }

    /// Calls in flight on this instance.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Smoothed round-trip time in microseconds.
    pub fn rtt_us(&self) -> u64 {
        self.rtt_us.load(Ordering::Relaxed)
    }

    /// Fold a measured round trip into the average (EWMA, weight 1/4).
    pub fn observe_rtt(&self, sample_us: u64) {
        let old = self.rtt_us.load(Ordering::Relaxed);
        let new = (old * 3 + sample_us.max(1)) / 4;
        self.rtt_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Count a call until the returned guard drops.
    pub fn begin_call(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// One session's slot on an instance ([`Instance::pin`]); gives it back when dropped.
#[derive(Debug)]
pub struct Pinned(Arc<Instance>);

impl Pinned {
    /// The instance the session is pinned to.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.0.pinned.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Decrements the instance's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Instance>);

impl InFlight {
    /// The instance this call runs on.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
