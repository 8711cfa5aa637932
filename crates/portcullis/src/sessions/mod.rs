//! Sessions (DESIGN §6): a client's own stateful backend — one worker process launched for
//! the session alone, or one instance of a linked service the session is pinned to
//! ([`pinned`]) — with commands under timeouts and an ordered, bounded event stream. Both
//! speak the same worker protocol; only the transport and the launch differ.
//!
//! This module owns the session model and the registry: states, ids, limits, idempotent close
//! with its reasons, the lease and idle monitor, bounded retention of closed sessions and the
//! shutdown that closes every session and kills what does not stop. [`process`] launches a
//! worker, [`conn`] speaks `docs/worker-protocol.md` (frames from `portcullis_link::worker`),
//! [`events`] holds the event hops after the worker queue, and [`api`] is the REST + SSE
//! surface.
//!
//! State machine: Creating → StartingWorker → Handshaking → Ready → Closing → Closed, and
//! Faulted from any state but Closed; Faulted only goes to Closed; Closed is terminal; the
//! first fault is kept. Every wait has a deadline (startup, handshake, heartbeat grace,
//! command timeout, shutdown timeout, write timeout) and every queue a capacity.

pub mod api;
pub mod config;
pub mod conn;
pub mod events;
pub mod grpc;
pub mod pinned;
pub mod process;

pub use config::{BackendConfig, SessionsConfig};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use portcullis_link::worker::ToWorker;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics::SessionMetrics;
use conn::{ConnError, Reader, Writer};
use events::{Event, Events, Hop, SubscribeError, Subscription};
use pinned::Links;
use process::{Exit, SocketDir, Worker};

/// How often the monitor looks at leases, idle time and retention.
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few assignments: a panic elsewhere leaves the value whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Registered, nothing started.
    Creating,
    /// The socket is bound and the worker is being launched.
    StartingWorker,
    /// The worker runs; waiting for its connection, hello and ready.
    Handshaking,
    /// Commands and subscribers are accepted.
    Ready,
    /// Shutting the worker down.
    Closing,
    /// Terminal.
    Closed,
    /// Something failed; only close follows.
    Faulted,
}

impl State {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::StartingWorker => "starting_worker",
            Self::Handshaking => "handshaking",
            Self::Ready => "ready",
            Self::Closing => "closing",
            Self::Closed => "closed",
            Self::Faulted => "faulted",
        }
    }
}

/// Why a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CloseReason {
    /// The client closed it.
    #[serde(rename = "client-close")]
    ClientClose,
    /// No client touched it within its lease.
    #[serde(rename = "lease-expired")]
    LeaseExpired,
    /// No command and no event within the idle timeout.
    #[serde(rename = "idle")]
    Idle,
    /// The gateway is shutting down.
    #[serde(rename = "gateway-shutdown")]
    GatewayShutdown,
    /// The worker exited by itself with code 0.
    #[serde(rename = "worker-exited")]
    WorkerExited,
}

impl CloseReason {
    /// Stable name (the shutdown frame's reason, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClose => "client-close",
            Self::LeaseExpired => "lease-expired",
            Self::Idle => "idle",
            Self::GatewayShutdown => "gateway-shutdown",
            Self::WorkerExited => "worker-exited",
        }
    }
}

/// Why a session faulted: a stable kind and a message for the operator and the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// `spawn-failed`, `startup-timeout`, `handshake-timeout`, `protocol`, `worker-exited`,
    /// `worker-fault`, `heartbeat-expired`, `queue-overflow`, `write-failed`; for a pinned
    /// session also `no-instance` (none could be pinned) and `instance-gone` (its link went).
    pub kind: &'static str,
    /// What happened (never a secret).
    pub message: String,
}

impl Fault {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn overflow(hop: Hop) -> Self {
        Self::new(
            "queue-overflow",
            format!("event stream queue overflowed at {}", hop.as_str()),
        )
    }
}

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The identity's subject.
    pub subject: Arc<str>,
    /// The workspace (id) it was opened in.
    pub workspace_id: Arc<str>,
}

/// What a client asks for when it opens a session.
#[derive(Debug, Clone, Default)]
pub struct OpenRequest {
    /// The backend; `None` for `sessions.default_backend`.
    pub backend: Option<String>,
    /// The client's name for the session.
    pub name: Option<String>,
    /// The client's correlation id.
    pub correlation_id: Option<String>,
    /// Default timeout of this session's commands.
    pub command_timeout: Option<Duration>,
}

/// Why an open failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No backend named, and no default.
    #[error("no backend was named and sessions.default_backend is not set")]
    NoBackend,
    /// The backend is not configured.
    #[error("no backend {0:?} is configured")]
    UnknownBackend(String),
    /// A field of the request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The gateway's limit.
    #[error("session limit {0} has been reached")]
    Limit(usize),
    /// The workspace's limit.
    #[error("session limit {0} of the workspace has been reached")]
    WorkspaceLimit(usize),
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The worker did not start (its process group was killed).
    #[error("the session's worker did not start: {}", .fault.message)]
    Failed {
        /// Why.
        fault: Fault,
        /// The worker's pid, 0 if none was spawned.
        worker_pid: u32,
    },
}

/// A reply from the worker, exactly as it sent it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    /// The backend's status code.
    pub status: i64,
    /// The backend's payload.
    pub payload: serde_json::Value,
}

/// Why a command got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The session does not accept commands in this state.
    #[error("not ready, current state is {}", .0.as_str())]
    NotReady(State),
    /// Too many commands await replies.
    #[error("{0} commands already await replies")]
    TooMany(usize),
    /// No reply within the command's timeout (a cancel was sent).
    #[error("command {kind} timed out after {} ms", .after.as_millis())]
    Timeout {
        /// The kind.
        kind: String,
        /// The timeout.
        after: Duration,
    },
    /// The session ended while the command was pending.
    #[error("the session ended before the reply ({})", .0.as_str())]
    Ended(State),
    /// The command could not be written to the worker.
    #[error("the worker cannot be reached: {0}")]
    Unavailable(String),
}

/// How a close went.
#[derive(Debug, Clone, Serialize)]
pub struct CloseOutcome {
    /// `closed`, or `was already closed`.
    pub result: &'static str,
    /// The session after it.
    pub session: Snapshot,
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The id.
    pub id: Arc<str>,
    /// The backend.
    pub backend: Arc<str>,
    /// The state.
    pub state: State,
    /// The client's name for it.
    pub name: Option<String>,
    /// The client's correlation id.
    pub correlation_id: Option<String>,
    /// The owner's subject.
    pub subject: Arc<str>,
    /// The owner's workspace id.
    pub workspace: Arc<str>,
    /// Opened, Unix milliseconds.
    pub opened_at_ms: u64,
    /// The worker's pid (0 if unknown).
    pub worker_pid: u32,
    /// The worker protocol version.
    pub protocol_version: u32,
    /// Default command timeout, milliseconds.
    pub command_timeout_ms: u64,
    /// The command kinds the worker serves and the capability each needs.
    pub commands: BTreeMap<String, String>,
    /// Why it closed.
    pub close_reason: Option<CloseReason>,
    /// The first fault.
    pub fault: Option<Fault>,
    /// Why the gateway killed the worker, if it did (`shutdown-timeout`, `fault`,
    /// `gateway-shutdown`).
    pub worker_killed: Option<&'static str>,
    /// How the worker ended, if it has.
    pub worker_exit: Option<String>,
    /// Events held for resume.
    pub events_held: usize,
    /// The highest event sequence received.
    pub last_event_sequence: u64,
    /// Is a subscriber attached?
    pub subscribed: bool,
    /// For a backend naming a linked service: the instance the session is pinned to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<Arc<str>>,
}

/// The parts of a Ready session's connection.
struct Live {
    writer: tokio::sync::Mutex<Writer>,
    pending: Mutex<HashMap<String, oneshot::Sender<Result<Reply, State>>>>,
    commands: HashMap<String, String>,
    pid: u32,
    next_correlation: AtomicU64,
}

struct Inner {
    state: State,
    close_reason: Option<CloseReason>,
    fault: Option<Fault>,
    killed: Option<&'static str>,
    last_touch: Instant,
    last_activity: Instant,
    closed_at: Option<Instant>,
    worker: Option<Worker>,
    socket: Option<SocketDir>,
    sequencer: Option<tokio::task::JoinHandle<()>>,
    queue: Option<mpsc::WeakSender<RawEvent>>,
    /// A pinned session's slot on its instance, held until the session ends.
    pin: Option<crate::routing::Pinned>,
    /// The instance a pinned session was pinned to (kept after it ends, for the API).
    instance: Option<Arc<str>>,
}

/// One session.
pub struct Session {
    /// `<node>.<32 hex>`.
    pub id: Arc<str>,
    /// The backend it targets.
    pub backend: Arc<str>,
    /// Who it belongs to.
    pub owner: Owner,
    name: Option<String>,
    correlation_id: Option<String>,
    /// Default timeout of its commands.
    pub command_timeout: Duration,
    opened_at_ms: u64,
    cfg: Arc<SessionsConfig>,
    backend_cfg: Arc<BackendConfig>,
    links: Option<Links>,
    inner: Mutex<Inner>,
    events: Mutex<Events>,
    close_lock: tokio::sync::Mutex<()>,
    live: OnceLock<Arc<Live>>,
    stop: CancellationToken,
    shutdown_ack: Notify,
    close_requested: AtomicBool,
    running: AtomicBool,
    metrics: Arc<SessionMetrics>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("backend", &self.backend)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The current state.
    pub fn state(&self) -> State {
        lock(&self.inner).state
    }

    /// The capability invoking `kind` needs: the one the worker declared, or `None` for a
    /// kind it did not declare (the API then asks for [`api::UNKNOWN_KIND_CAPABILITY`]).
    pub fn capability_for(&self, kind: &str) -> Option<String> {
        self.live.get().and_then(|l| l.commands.get(kind).cloned())
    }

    /// A client request touched it: the lease starts again.
    pub fn touch(&self) {
        lock(&self.inner).last_touch = Instant::now();
    }

    fn activity(&self) {
        let mut i = lock(&self.inner);
        let now = Instant::now();
        i.last_activity = now;
        i.last_touch = now;
    }

    /// The session as the API shows it.
    pub fn snapshot(&self) -> Snapshot {
        let (held, last, subscribed) = {
            let e = lock(&self.events);
            (e.len(), e.last(), e.subscribed())
        };
        let i = lock(&self.inner);
        let live = self.live.get();
        Snapshot {
            id: self.id.clone(),
            backend: self.backend.clone(),
            state: i.state,
            name: self.name.clone(),
            correlation_id: self.correlation_id.clone(),
            subject: self.owner.subject.clone(),
            workspace: self.owner.workspace_id.clone(),
            opened_at_ms: self.opened_at_ms,
            worker_pid: live
                .map(|l| l.pid)
                .or(i.worker.as_ref().map(|w| w.pid))
                .unwrap_or(0),
            protocol_version: portcullis_link::worker::PROTOCOL_VERSION,
            command_timeout_ms: self.command_timeout.as_millis() as u64,
            commands: live
                .map(|l| {
                    l.commands
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            close_reason: i.close_reason,
            fault: i.fault.clone(),
            worker_killed: i.killed,
            worker_exit: i
                .worker
                .as_ref()
                .and_then(|w| w.exit())
                .map(|e| e.describe()),
            events_held: held,
            last_event_sequence: last,
            subscribed,
            instance: i.instance.clone(),
        }
    }

    fn set_state(&self, s: State) {
        lock(&self.inner).state = s;
    }

    /// Fault the session (the first fault wins; nothing after Closing): kill the worker's
    /// tree, fail every pending command, end the event stream.
    pub fn fault(&self, f: Fault) {
        let worker = {
            let mut i = lock(&self.inner);
            if matches!(i.state, State::Closed | State::Faulted | State::Closing) {
                return;
            }
            tracing::warn!(session = %self.id, kind = f.kind, message = %f.message, "session faulted");
            self.metrics.faulted(f.kind);
            i.state = State::Faulted;
            i.fault = Some(f);
            if i.worker.is_some() {
                i.killed = Some("fault");
            }
            i.socket = None;
            i.pin = None;
            i.worker.clone()
        };
        self.stop.cancel();
        if let Some(w) = &worker {
            w.kill_tree();
            self.metrics.killed("fault");
        }
        self.worker_stopped();
        self.fail_pending(State::Faulted);
        lock(&self.events).end();
    }

    fn worker_stopped(&self) {
        if self.running.swap(false, Ordering::AcqRel) {
            self.metrics.worker_gone();
        }
    }

    fn fail_pending(&self, state: State) {
        if let Some(live) = self.live.get() {
            for (_, tx) in lock(&live.pending).drain() {
                let _ = tx.send(Err(state));
            }
        }
    }

    /// Close the session (serialised, idempotent): shut the worker down within the backend's
    /// shutdown timeout, kill its tree if it does not stop, end the event stream.
    pub async fn close(self: &Arc<Self>, reason: CloseReason) -> CloseOutcome {
        let _serial = self.close_lock.lock().await;
        let state = self.state();
        match state {
            State::Closed => {
                return CloseOutcome {
                    result: "was already closed",
                    session: self.snapshot(),
                }
            }
            State::Ready => self.shut_worker_down(reason).await,
            _ => {}
        }
        let worker = {
            let mut i = lock(&self.inner);
            i.state = State::Closed;
            i.close_reason = Some(reason);
            i.closed_at = Some(Instant::now());
            i.socket = None;
            i.pin = None;
            i.worker.clone()
        };
        self.stop.cancel();
        if let Some(w) = worker {
            // Whatever the worker left in its group goes with it.
            w.kill_tree();
        }
        self.worker_stopped();
        self.fail_pending(State::Closed);
        lock(&self.events).end();
        self.metrics.closed(reason.as_str());
        tracing::info!(session = %self.id, reason = reason.as_str(), "session closed");
        CloseOutcome {
            result: "closed",
            session: self.snapshot(),
        }
    }

    async fn shut_worker_down(self: &Arc<Self>, reason: CloseReason) {
        self.set_state(State::Closing);
        let grace = self.backend_cfg.shutdown_timeout;
        let (worker, sequencer) = {
            let mut i = lock(&self.inner);
            (i.worker.clone(), i.sequencer.take())
        };
        if let Some(live) = self.live.get() {
            let sent = tokio::time::timeout(grace, async {
                live.writer
                    .lock()
                    .await
                    .send(
                        None,
                        ToWorker::Shutdown {
                            grace_ms: grace.as_millis() as u64,
                            reason: reason.as_str().into(),
                        },
                    )
                    .await
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::debug!(session = %self.id, "shutdown frame not delivered");
            }
        }
        if self.backend_cfg.service.is_some() {
            // A pinned instance has no process to wait for: its acknowledgement (or the
            // stream's end) is the end; the stream is reset after it either way.
            if tokio::time::timeout(grace, self.shutdown_ack.notified())
                .await
                .is_err()
            {
                tracing::warn!(session = %self.id, "pinned instance did not acknowledge shutdown");
                self.metrics.killed("shutdown-timeout");
            }
        }
        if let Some(w) = &worker {
            if w.wait(grace).await.is_none() {
                tracing::warn!(session = %self.id, pid = w.pid, "worker ignored shutdown: killing its process group");
                lock(&self.inner).killed = Some("shutdown-timeout");
                self.metrics.killed("shutdown-timeout");
                w.kill_and_wait(Duration::from_secs(2)).await;
            }
        }
        // The worker's last events reach the buffer before the stream ends.
        if let Some(h) = sequencer {
            let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
        }
    }

    /// Kill now, without asking (the gateway's grace is over).
    fn kill_now(&self) {
        let worker = {
            let mut i = lock(&self.inner);
            if i.state == State::Closed {
                return;
            }
            i.state = State::Closed;
            i.close_reason.get_or_insert(CloseReason::GatewayShutdown);
            i.killed = Some("gateway-shutdown");
            i.closed_at = Some(Instant::now());
            i.socket = None;
            i.pin = None;
            i.worker.clone()
        };
        self.stop.cancel();
        if let Some(w) = worker {
            w.kill_tree();
            self.metrics.killed("gateway-shutdown");
        }
        self.worker_stopped();
        self.fail_pending(State::Closed);
        lock(&self.events).end();
    }

    /// Run command `kind` with `payload`, waiting at most `timeout` (the session's default
    /// when `None`). A timeout, or the caller going away, sends a cancel to the worker.
    pub async fn invoke(
        self: &Arc<Self>,
        kind: &str,
        payload: serde_json::Value,
        timeout: Option<Duration>,
    ) -> Result<Reply, InvokeError> {
        self.touch();
        let state = self.state();
        let live = match (state, self.live.get()) {
            (State::Ready, Some(l)) => l.clone(),
            _ => return Err(InvokeError::NotReady(state)),
        };
        let timeout = timeout.unwrap_or(self.command_timeout);
        let correlation = format!("c{}", live.next_correlation.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&live.pending);
            if p.len() >= self.cfg.max_pending_commands {
                return Err(InvokeError::TooMany(p.len()));
            }
            p.insert(correlation.clone(), tx);
        }
        let mut guard = Pending {
            session: self.clone(),
            live: live.clone(),
            correlation: correlation.clone(),
            done: false,
        };
        self.metrics.command(kind, "started");
        self.activity();
        let started = Instant::now();
        let r = tokio::time::timeout(timeout, async {
            let sent = live
                .writer
                .lock()
                .await
                .send(
                    Some(correlation),
                    ToWorker::Command {
                        kind: kind.into(),
                        payload,
                        deadline_ms: timeout.as_millis() as u64,
                    },
                )
                .await;
            if let Err(e) = sent {
                self.fault(Fault::new("write-failed", e.to_string()));
                return Err(InvokeError::Unavailable(e.to_string()));
            }
            match rx.await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(state)) => Err(InvokeError::Ended(state)),
                Err(_) => Err(InvokeError::Ended(self.state())),
            }
        })
        .await;
        let r = match r {
            Ok(r) => {
                guard.done = true;
                r
            }
            Err(_) => Err(InvokeError::Timeout {
                kind: kind.into(),
                after: timeout,
            }),
        };
        self.activity();
        let outcome = match &r {
            Ok(_) => "succeeded",
            Err(InvokeError::Timeout { .. }) => "timed_out",
            Err(_) => "failed",
        };
        self.metrics.command(kind, outcome);
        self.metrics.command_duration(started.elapsed());
        r
    }

    /// Attach the one subscriber, resuming after `after`.
    pub fn subscribe(&self, after: u64) -> Result<Subscription, SubscribeOutcome> {
        self.touch();
        let state = self.state();
        if state != State::Ready {
            return Err(SubscribeOutcome::NotReady(state));
        }
        lock(&self.events)
            .subscribe(after)
            .map_err(SubscribeOutcome::Refused)
    }

    /// Subscriber `id` went away.
    pub fn detach(&self, id: u64) {
        lock(&self.events).detach(id);
        self.touch();
    }
}

/// Why a subscription was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeOutcome {
    /// The session is not Ready.
    #[error("not ready, current state is {}", .0.as_str())]
    NotReady(State),
    /// Conflict or a resume point no longer held.
    #[error(transparent)]
    Refused(SubscribeError),
}

/// A command awaiting its reply; dropped before the reply (timeout, the caller went away),
/// it leaves the pending table and a cancel goes to the worker.
struct Pending {
    session: Arc<Session>,
    live: Arc<Live>,
    correlation: String,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if lock(&self.live.pending).remove(&self.correlation).is_none() {
            return;
        }
        if self.session.state() != State::Ready {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let live = self.live.clone();
        let session = self.session.clone();
        let correlation = std::mem::take(&mut self.correlation);
        rt.spawn(async move {
            tracing::debug!(session = %session.id, correlation = %correlation, "command cancelled");
            let r = live
                .writer
                .lock()
                .await
                .send(Some(correlation), ToWorker::Cancel {})
                .await;
            if let Err(e) = r {
                session.fault(Fault::new("write-failed", e.to_string()));
            }
        });
    }
}

/// What the worker queue (hop 1) carries to the session's sequencer.
struct RawEvent {
    sequence: u64,
    kind: String,
    payload: serde_json::Value,
}

struct Shared {
    cfg: Arc<SessionsConfig>,
    links: Option<Links>,
    backends: BTreeMap<String, Arc<BackendConfig>>,
    map: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    shutting_down: AtomicBool,
    metrics: Arc<SessionMetrics>,
}

/// The registry of this gateway's sessions; cheap to clone.
#[derive(Clone)]
pub struct Sessions(Arc<Shared>);

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("sessions", &lock(&self.0.map).len())
            .finish_non_exhaustive()
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Sessions {
    /// A registry for `cfg` and `backends`; a backend naming a linked service pins its
    /// sessions to instances found through `links`.
    pub fn new(
        cfg: SessionsConfig,
        backends: &BTreeMap<String, BackendConfig>,
        links: Option<Links>,
        metrics: Arc<SessionMetrics>,
    ) -> Self {
        Self(Arc::new(Shared {
            cfg: Arc::new(cfg),
            links,
            backends: backends
                .iter()
                .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
                .collect(),
            map: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            metrics,
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &SessionsConfig {
        &self.0.cfg
    }

    /// The session `id` if it belongs to `owner` (`None` for another's: it is not revealed).
    pub fn get(&self, id: &str, owner: &Owner) -> Option<Arc<Session>> {
        lock(&self.0.map)
            .get(id)
            .filter(|s| s.owner == *owner)
            .cloned()
    }

    /// The session `id`, whoever owns it (the admin API).
    pub fn get_any(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.0.map).get(id).cloned()
    }

    /// Every session, newest first.
    pub fn list(&self) -> Vec<Snapshot> {
        let all: Vec<Arc<Session>> = lock(&self.0.map).values().cloned().collect();
        let mut v: Vec<Snapshot> = all.iter().map(|s| s.snapshot()).collect();
        v.sort_by(|a, b| b.opened_at_ms.cmp(&a.opened_at_ms).then(a.id.cmp(&b.id)));
        v
    }

    fn counts(map: &HashMap<Arc<str>, Arc<Session>>, workspace: &str) -> (usize, usize) {
        let mut all = 0;
        let mut ws = 0;
        for s in map.values() {
            if matches!(s.state(), State::Closed | State::Faulted) {
                continue;
            }
            all += 1;
            if &*s.owner.workspace_id == workspace {
                ws += 1;
            }
        }
        (all, ws)
    }

    fn build(
        &self,
        id: Arc<str>,
        backend: Arc<str>,
        owner: Owner,
        req: OpenRequest,
        command_timeout: Duration,
        backend_cfg: Arc<BackendConfig>,
    ) -> Arc<Session> {
        let cfg = &self.0.cfg;
        let now = Instant::now();
        Arc::new(Session {
            id,
            backend,
            owner,
            name: req.name,
            correlation_id: req.correlation_id,
            command_timeout,
            opened_at_ms: unix_ms(),
            cfg: cfg.clone(),
            links: self.0.links.clone(),
            backend_cfg,
            inner: Mutex::new(Inner {
                state: State::Creating,
                close_reason: None,
                fault: None,
                killed: None,
                last_touch: now,
                last_activity: now,
                closed_at: None,
                worker: None,
                socket: None,
                sequencer: None,
                queue: None,
                pin: None,
                instance: None,
            }),
            events: Mutex::new(Events::new(
                cfg.event_buffer,
                cfg.event_buffer_bytes,
                cfg.subscriber_queue,
            )),
            close_lock: tokio::sync::Mutex::new(()),
            live: OnceLock::new(),
            stop: CancellationToken::new(),
            shutdown_ack: Notify::new(),
            close_requested: AtomicBool::new(false),
            running: AtomicBool::new(false),
            metrics: self.0.metrics.clone(),
        })
    }

    /// Open a session for `owner`: register it, launch its worker, wait for Ready. On any
    /// failure the session is faulted, its worker killed and it leaves the registry.
    pub async fn open(&self, owner: Owner, req: OpenRequest) -> Result<Arc<Session>, OpenError> {
        if self.0.shutting_down.load(Ordering::Acquire) {
            return Err(OpenError::ShuttingDown);
        }
        let cfg = &self.0.cfg;
        let command_timeout = match req.command_timeout {
            Some(t) if t.is_zero() => {
                return Err(OpenError::Invalid(
                    "command_timeout_ms must be greater than zero".into(),
                ))
            }
            Some(t) if t > cfg.max_command_timeout => {
                return Err(OpenError::Invalid(format!(
                    "command_timeout_ms must be at most {}",
                    cfg.max_command_timeout.as_millis()
                )))
            }
            Some(t) => t,
            None => cfg.command_timeout,
        };
        let backend = match req.backend.as_deref().filter(|b| !b.is_empty()) {
            Some(b) => b.to_string(),
            None => cfg.default_backend.clone().ok_or(OpenError::NoBackend)?,
        };
        let backend_cfg = self
            .0
            .backends
            .get(&backend)
            .cloned()
            .ok_or_else(|| OpenError::UnknownBackend(backend.clone()))?;
        let now = Instant::now();
        let session = {
            let mut map = lock(&self.0.map);
            let (all, ws) = Self::counts(&map, &owner.workspace_id);
            if all >= cfg.max {
                self.0.metrics.refused("limit");
                return Err(OpenError::Limit(cfg.max));
            }
            if ws >= cfg.max_per_workspace {
                self.0.metrics.refused("workspace-limit");
                return Err(OpenError::WorkspaceLimit(cfg.max_per_workspace));
            }
            let id: Arc<str> =
                format!("{}.{}", cfg.node, hex::encode(rand::random::<[u8; 16]>())).into();
            let s = self.build(
                id.clone(),
                backend.as_str().into(),
                owner,
                req,
                command_timeout,
                backend_cfg.clone(),
            );
            map.insert(id, s.clone());
            s
        };
        // The start runs on its own task: a client that goes away mid-open leaves no
        // half-started worker behind (the lease closes what it never learns the id of).
        // The start and its clean-up run on their own task: a client that goes away mid-open
        // leaves neither a half-started worker nor a registry entry stuck in Handshaking
        // (a started session it never learns the id of is closed by its lease).
        let me = self.clone();
        let s = session.clone();
        let started = tokio::spawn(async move {
            let r = start(&s).await;
            match r {
                Ok(()) if me.0.shutting_down.load(Ordering::Acquire) => {
                    // Shutdown walked the registry while this one was starting.
                    s.close(CloseReason::GatewayShutdown).await;
                    Err(OpenError::ShuttingDown)
                }
                Ok(()) => {
                    me.0.metrics.opened(now.elapsed());
                    Ok(())
                }
                Err(f) => {
                    s.fault(f.clone());
                    let worker = lock(&s.inner).worker.clone();
                    let worker_pid = worker.as_ref().map_or(0, |w| w.pid);
                    if let Some(w) = worker {
                        w.kill_and_wait(Duration::from_secs(2)).await;
                    }
                    lock(&me.0.map).remove(&s.id);
                    me.0.metrics.refused("start-failed");
                    Err(OpenError::Failed {
                        fault: f,
                        worker_pid,
                    })
                }
            }
        })
        .await;
        match started {
            Ok(Ok(())) => Ok(session),
            Ok(Err(e)) => Err(e),
            Err(e) => {
                session.fault(Fault::new(
                    "spawn-failed",
                    format!("the start task failed: {e}"),
                ));
                lock(&self.0.map).remove(&session.id);
                Err(OpenError::Failed {
                    fault: Fault::new("spawn-failed", "the start task failed"),
                    worker_pid: 0,
                })
            }
        }
    }

    /// Close `session` for `reason` (the monitor and the admin API use this too).
    pub async fn close(&self, session: &Arc<Session>, reason: CloseReason) -> CloseOutcome {
        session.close(reason).await
    }

    /// Look at every session once: close what outlived its lease or idle timeout, drop
    /// closed sessions past their retention (and the oldest past `max_closed`).
    pub fn sweep(&self) {
        let cfg = &self.0.cfg;
        let now = Instant::now();
        let mut close = Vec::new();
        let mut closed: Vec<(Instant, Arc<str>)> = Vec::new();
        let mut open = 0i64;
        let mut depth = [0i64; 3];
        {
            let map = lock(&self.0.map);
            for s in map.values() {
                let subscribed = {
                    let e = lock(&s.events);
                    depth[1] += e.len() as i64;
                    depth[2] += e.subscriber_depth() as i64;
                    e.subscribed()
                };
                let mut i = lock(&s.inner);
                if let Some(q) = i.queue.as_ref().and_then(|q| q.upgrade()) {
                    depth[0] += (q.max_capacity() - q.capacity()) as i64;
                }
                if subscribed {
                    i.last_touch = now;
                }
                match i.state {
                    State::Closed => closed.push((i.closed_at.unwrap_or(now), s.id.clone())),
                    State::Ready | State::Faulted => {
                        if i.state == State::Ready {
                            open += 1;
                        }
                        let reason = if now.duration_since(i.last_touch) >= cfg.lease {
                            Some(CloseReason::LeaseExpired)
                        } else if i.state == State::Ready
                            && now.duration_since(i.last_activity) >= cfg.idle_timeout
                        {
                            Some(CloseReason::Idle)
                        } else {
                            None
                        };
                        if let Some(r) = reason {
                            if !s.close_requested.swap(true, Ordering::AcqRel) {
                                close.push((s.clone(), r));
                            }
                        }
                    }
                    _ => open += 1,
                }
            }
        }
        self.0.metrics.gauges(open, depth);
        closed.sort();
        let excess = closed.len().saturating_sub(cfg.max_closed);
        let expired: Vec<Arc<str>> = closed
            .iter()
            .enumerate()
            .filter(|(n, (at, _))| *n < excess || now.duration_since(*at) >= cfg.closed_retention)
            .map(|(_, (_, id))| id.clone())
            .collect();
        if !expired.is_empty() {
            let mut map = lock(&self.0.map);
            for id in expired {
                map.remove(&id);
            }
        }
        for (s, r) in close {
            tracing::info!(session = %s.id, reason = r.as_str(), "closing session");
            tokio::spawn(async move {
                s.close(r).await;
            });
        }
    }

    /// Run [`Sessions::sweep`] every [`MONITOR_INTERVAL`] until `stop`.
    pub fn spawn_monitor(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(MONITOR_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => me.sweep(),
                }
            }
        })
    }

    /// Refuse new sessions, close every session with reason `gateway-shutdown` within
    /// `grace`, then kill the process group of every worker still running.
    pub async fn shutdown(&self, grace: Duration) {
        self.0.shutting_down.store(true, Ordering::Release);
        let all: Vec<Arc<Session>> = lock(&self.0.map).values().cloned().collect();
        if all.is_empty() {
            return;
        }
        tracing::info!(sessions = all.len(), "closing sessions for shutdown");
        let closes = futures_util::future::join_all(
            all.iter().map(|s| s.close(CloseReason::GatewayShutdown)),
        );
        if tokio::time::timeout(grace, closes).await.is_err() {
            tracing::warn!("grace period over: killing the remaining workers");
            for s in &all {
                s.kill_now();
            }
        }
    }

    /// Sessions in the registry (any state).
    pub fn len(&self) -> usize {
        lock(&self.0.map).len()
    }

    /// Is the registry empty?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Start the session's worker — launch a process, or pin an instance and open its session
/// stream — and run the handshake, under the startup and handshake timeouts.
async fn start(s: &Arc<Session>) -> Result<(), Fault> {
    let _serial = s.close_lock.lock().await;
    let backend = s.backend_cfg.clone();
    let cfg = s.cfg.clone();
    let spawn_started = Instant::now();
    s.set_state(State::StartingWorker);
    let nonce = hex::encode(rand::random::<[u8; 32]>());
    let deadline = Instant::now() + backend.startup_timeout;
    let ((reader, writer), hs, origin) = match &backend.service {
        Some(service) => start_pinned(s, service, &nonce, deadline).await?,
        None => start_process(s, &nonce, deadline, spawn_started).await?,
    };
    let live = Arc::new(Live {
        writer: tokio::sync::Mutex::new(writer),
        pending: Mutex::new(HashMap::new()),
        commands: hs.commands,
        pid: hs.pid,
        next_correlation: AtomicU64::new(1),
    });
    let _ = s.live.set(live.clone());
    let (tx, rx) = mpsc::channel(cfg.worker_queue);
    let sequencer = tokio::spawn(sequence_events(s.clone(), rx));
    {
        let mut i = lock(&s.inner);
        i.sequencer = Some(sequencer);
        i.queue = Some(tx.downgrade());
        i.state = State::Ready;
    }
    s.metrics.spawn_time(spawn_started.elapsed());
    s.running.store(true, Ordering::Release);
    tokio::spawn(read_loop(s.clone(), reader, live, tx, origin));
    tracing::info!(session = %s.id, pid = hs.pid, "session ready");
    Ok(())
}

/// Who serves a Ready session: what its read loop watches besides the frames.
enum Origin {
    /// A process the gateway launched.
    Process(Worker),
    /// An instance of a linked service; cancelled when its link goes away.
    Pinned {
        instance: Arc<str>,
        service: Arc<str>,
        down: CancellationToken,
    },
}

type Started = ((Reader, Writer), conn::Handshake, Origin);

/// The fault a failed handshake is reported as.
fn handshake_fault(e: ConnError) -> Fault {
    Fault::new(
        match e {
            ConnError::Protocol(_) => "protocol",
            ConnError::Write(_) => "write-failed",
            _ => "worker-exited",
        },
        e.to_string(),
    )
}

/// The fault of a handshake that ran out of time: its own timeout, or the startup's.
fn handshake_timeout(hs_deadline: Instant, deadline: Instant, since: Instant) -> Fault {
    Fault::new(
        if hs_deadline < deadline {
            "handshake-timeout"
        } else {
            "startup-timeout"
        },
        format!(
            "no hello and ready within {} ms",
            (hs_deadline - since.min(hs_deadline)).as_millis()
        ),
    )
}

/// Pin an instance of `service`, open the session stream on its link, run the handshake.
async fn start_pinned(
    s: &Arc<Session>,
    service: &str,
    nonce: &str,
    deadline: Instant,
) -> Result<Started, Fault> {
    let cfg = &s.cfg;
    let links = s
        .links
        .as_ref()
        .ok_or_else(|| Fault::new("no-instance", "this gateway links no services"))?;
    let pin = links.choose(service, cfg.max_pinned_per_instance)?;
    let inst = pin.instance().clone();
    tracing::info!(
        session = %s.id, service = %inst.service, instance = %inst.instance_id,
        link = %inst.link_id, "session pinned"
    );
    {
        let mut i = lock(&s.inner);
        i.instance = Some(inst.instance_id.clone());
        i.pin = Some(pin);
    }
    let opened = tokio::time::timeout_at(deadline, pinned::open(&inst, &s.id, nonce, &s.stop));
    let (r, w) = tokio::select! {
        r = opened => match r {
            Ok(r) => r?,
            Err(_) => return Err(Fault::new("startup-timeout", format!(
                "instance {} of service {} did not answer the session stream within {} ms",
                inst.instance_id, inst.service, s.backend_cfg.startup_timeout.as_millis()))),
        },
        _ = inst.down.cancelled() => return Err(instance_gone(&inst.service, &inst.instance_id)),
    };
    lock(&s.inner).state = State::Handshaking;
    let mut reader = Reader::new(r, &s.id, cfg.max_frame_bytes);
    let mut writer = Writer::new(w, &s.id, cfg.max_frame_bytes);
    let since = Instant::now();
    let hs_deadline = deadline.min(since + cfg.handshake_timeout);
    let hs = tokio::select! {
        r = tokio::time::timeout_at(hs_deadline, conn::handshake(
            &mut reader, &mut writer, nonce, cfg.heartbeat_interval, &s.backend)) => r,
        _ = inst.down.cancelled() => return Err(instance_gone(&inst.service, &inst.instance_id)),
    };
    let hs = match hs {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(handshake_fault(e)),
        Err(_) => return Err(handshake_timeout(hs_deadline, deadline, since)),
    };
    Ok((
        (reader, writer),
        hs,
        Origin::Pinned {
            instance: inst.instance_id.clone(),
            service: inst.service.clone(),
            down: inst.down.clone(),
        },
    ))
}

/// The fault of a session whose instance's link went away.
fn instance_gone(service: &str, instance: &str) -> Fault {
    Fault::new(
        "instance-gone",
        format!("instance {instance} of service {service} went away (its link closed)"),
    )
}

/// Bind the socket, launch the worker, accept its connection, run the handshake.
async fn start_process(
    s: &Arc<Session>,
    nonce: &str,
    deadline: Instant,
    spawn_started: Instant,
) -> Result<Started, Fault> {
    let backend = s.backend_cfg.clone();
    let cfg = s.cfg.clone();
    let base = cfg.socket_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (dir, listener) =
        SocketDir::bind(&base).map_err(|e| Fault::new("spawn-failed", e.to_string()))?;
    let worker = process::spawn(
        &backend,
        &process::Launch {
            session_id: &s.id,
            socket: dir.path(),
            nonce,
            lines_per_second: cfg.log_lines_per_second,
        },
    )
    .map_err(|e| Fault::new("spawn-failed", e.to_string()))?;
    tracing::info!(
        session = %s.id,
        backend = %s.backend,
        pid = worker.pid,
        argv = ?process::argv(&backend, &s.id, dir.path()),
        "worker started"
    );
    {
        let mut i = lock(&s.inner);
        i.worker = Some(worker.clone());
        i.socket = Some(dir);
        i.state = State::Handshaking;
    }
    let stream = tokio::select! {
        r = tokio::time::timeout_at(deadline, listener.accept()) => match r {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(e)) => return Err(Fault::new("spawn-failed", format!("accept: {e}"))),
            Err(_) => return Err(Fault::new("startup-timeout", format!(
                "the worker did not connect within {} ms", backend.startup_timeout.as_millis()))),
        },
        e = worker.exited() => return Err(startup_exit(&e)),
    };
    // One connection per session: nobody else gets to connect after the worker.
    drop(listener);
    let (r, w) = stream.into_split();
    let mut reader = Reader::new(Box::new(r), &s.id, cfg.max_frame_bytes);
    let mut writer = Writer::new(Box::new(w), &s.id, cfg.max_frame_bytes);
    let hs_deadline = deadline.min(Instant::now() + cfg.handshake_timeout);
    let hs = tokio::select! {
        r = tokio::time::timeout_at(hs_deadline, conn::handshake(
            &mut reader, &mut writer, nonce, cfg.heartbeat_interval, &s.backend)) => r,
        e = worker.exited() => return Err(startup_exit(&e)),
    };
    let hs = match hs {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            // A worker that exits with a documented code says more than the closed socket.
            if let Some(exit) = worker.wait(Duration::from_millis(500)).await {
                if exit != Exit::Code(0) {
                    return Err(startup_exit(&exit));
                }
            }
            return Err(handshake_fault(e));
        }
        Err(_) => return Err(handshake_timeout(hs_deadline, deadline, spawn_started)),
    };
    Ok(((reader, writer), hs, Origin::Process(worker)))
}

fn startup_exit(e: &Exit) -> Fault {
    Fault::new(
        "worker-exited",
        format!("the worker exited during startup: {}", e.describe()),
    )
}

/// The one sequencer: hop 1 → hop 2 (and 3), in the worker's order.
async fn sequence_events(s: Arc<Session>, mut rx: mpsc::Receiver<RawEvent>) {
    while let Some(e) = rx.recv().await {
        let json = serde_json::to_vec(&serde_json::json!({
            "sequence": e.sequence,
            "kind": e.kind,
            "payload": e.payload,
        }))
        .unwrap_or_default();
        s.metrics.event();
        let pushed = lock(&s.events).push(Event {
            sequence: e.sequence,
            json: json.into(),
        });
        if let Err(hop) = pushed {
            s.metrics.overflow(hop.as_str());
            s.fault(Fault::overflow(hop));
            return;
        }
        s.activity();
    }
}

/// Read the worker's frames after ready until the session stops.
async fn read_loop(
    s: Arc<Session>,
    mut reader: Reader,
    live: Arc<Live>,
    events: mpsc::Sender<RawEvent>,
    origin: Origin,
) {
    let grace = s.cfg.heartbeat_grace;
    let down = match &origin {
        Origin::Pinned { down, .. } => down.clone(),
        // A process worker's end shows as the end of its socket.
        Origin::Process(_) => CancellationToken::new(),
    };
    loop {
        let r = tokio::select! {
            _ = s.stop.cancelled() => return,
            _ = down.cancelled() => {
                if let Origin::Pinned { service, instance, .. } = &origin {
                    s.fault(instance_gone(service, instance));
                }
                return;
            }
            r = tokio::time::timeout(grace, reader.next()) => r,
        };
        let env = match r {
            Err(_) => {
                s.metrics.heartbeat_missed();
                s.fault(Fault::new(
                    "heartbeat-expired",
                    format!("no frame from the worker for {} ms", grace.as_millis()),
                ));
                return;
            }
            Ok(Err(ConnError::Protocol(m))) => {
                s.fault(Fault::new("protocol", format!("protocol violation: {m}")));
                return;
            }
            Ok(Err(e)) => {
                if s.state() != State::Ready {
                    return;
                }
                match &origin {
                    Origin::Process(worker) => match worker.wait(Duration::from_secs(1)).await {
                        Some(Exit::Code(0)) => {
                            s.close_requested.store(true, Ordering::Release);
                            tokio::spawn(async move {
                                s.close(CloseReason::WorkerExited).await;
                            });
                        }
                        Some(exit) => {
                            s.fault(Fault::new(
                                "worker-exited",
                                format!("the worker exited: {}", exit.describe()),
                            ));
                        }
                        None => s.fault(Fault::new("worker-exited", e.to_string())),
                    },
                    Origin::Pinned {
                        service, instance, ..
                    } => {
                        // A stream cut by its link ending: the link task says so in a moment.
                        let gone = tokio::time::timeout(Duration::from_secs(1), down.cancelled())
                            .await
                            .is_ok();
                        s.fault(if gone {
                            instance_gone(service, instance)
                        } else {
                            Fault::new(
                                "worker-exited",
                                format!(
                                    "instance {instance} of service {service} ended the session \
                                     stream ({e})"
                                ),
                            )
                        });
                    }
                }
                return;
            }
            Ok(Ok(env)) => env,
        };
        use portcullis_link::worker::FromWorker as F;
        match env.body {
            F::Reply { status, payload } => {
                let Some(c) = env.correlation_id else {
                    s.fault(Fault::new(
                        "protocol",
                        "protocol violation: a reply without a correlation id",
                    ));
                    return;
                };
                match lock(&live.pending).remove(&c) {
                    Some(tx) => {
                        let _ = tx.send(Ok(Reply { status, payload }));
                    }
                    None => {
                        tracing::debug!(session = %s.id, correlation = %c, "late or unknown reply dropped")
                    }
                }
            }
            F::Event { kind, payload } => {
                let e = RawEvent {
                    sequence: env.sequence,
                    kind,
                    payload,
                };
                match events.try_send(e) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.metrics.overflow(Hop::WorkerQueue.as_str());
                        s.fault(Fault::overflow(Hop::WorkerQueue));
                        return;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            F::Heartbeat { .. } => {}
            F::Fault { category, message } => {
                s.fault(Fault::new("worker-fault", format!("{category}: {message}")));
                return;
            }
            F::ShutdownAck {} => s.shutdown_ack.notify_one(),
            other @ (F::Hello { .. } | F::Ready { .. }) => {
                s.fault(Fault::new(
                    "protocol",
                    format!(
                        "protocol violation: unexpected {} after the handshake",
                        other.name()
                    ),
                ));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(ws: &str) -> Owner {
        Owner {
            subject: "key:k".into(),
            workspace_id: ws.into(),
        }
    }

    fn registry(cfg: SessionsConfig) -> Sessions {
        let backends = BTreeMap::from([(
            "b".to_string(),
            BackendConfig::new(vec!["/nonexistent/worker".into()]),
        )]);
        Sessions::new(cfg, &backends, None, SessionMetrics::detached())
    }

    /// A session registered as Ready with no worker: what the monitor sees of a real one.
    fn ready(r: &Sessions, ws: &str) -> Arc<Session> {
        let s = r.build(
            format!("node.{}", hex::encode(rand::random::<[u8; 16]>())).into(),
            "b".into(),
            owner(ws),
            OpenRequest::default(),
            Duration::from_secs(1),
            Arc::new(BackendConfig::new(vec!["/bin/true".into()])),
        );
        s.set_state(State::Ready);
        lock(&r.0.map).insert(s.id.clone(), s.clone());
        s
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn cfg() -> SessionsConfig {
        SessionsConfig {
            lease: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(3600),
            closed_retention: Duration::from_secs(300),
            ..SessionsConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_untouched_session_closes_when_its_lease_expires_and_leaves_after_retention() {
        let r = registry(cfg());
        let s = ready(&r, "ws");
        tokio::time::advance(Duration::from_secs(59)).await;
        r.sweep();
        settle().await;
        assert_eq!(s.state(), State::Ready);
        s.touch();
        tokio::time::advance(Duration::from_secs(59)).await;
        r.sweep();
        settle().await;
        assert_eq!(s.state(), State::Ready, "a touch renews the lease");
        tokio::time::advance(Duration::from_secs(2)).await;
        r.sweep();
        settle().await;
        assert_eq!(s.state(), State::Closed);
        assert_eq!(s.snapshot().close_reason, Some(CloseReason::LeaseExpired));
        assert_eq!(r.len(), 1, "a closed session stays queryable");
        tokio::time::advance(Duration::from_secs(299)).await;
        r.sweep();
        assert_eq!(r.len(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        r.sweep();
        assert!(r.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_without_commands_or_events_closes_as_idle() {
        let r = registry(SessionsConfig {
            lease: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(600),
            ..cfg()
        });
        let s = ready(&r, "ws");
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(60)).await;
            s.touch();
            r.sweep();
            settle().await;
        }
        assert_eq!(s.state(), State::Ready);
        tokio::time::advance(Duration::from_secs(61)).await;
        r.sweep();
        settle().await;
        assert_eq!(s.state(), State::Closed);
        assert_eq!(s.snapshot().close_reason, Some(CloseReason::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn an_attached_subscriber_keeps_the_lease() {
        let r = registry(cfg());
        let s = ready(&r, "ws");
        let sub = s.subscribe(0).unwrap();
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(50)).await;
            r.sweep();
            settle().await;
        }
        assert_eq!(s.state(), State::Ready);
        drop(sub.rx);
        tokio::time::advance(Duration::from_secs(61)).await;
        r.sweep();
        settle().await;
        assert_eq!(s.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_sessions_past_the_cap_leave_oldest_first() {
        let r = registry(SessionsConfig {
            max_closed: 2,
            ..cfg()
        });
        let mut all = Vec::new();
        for _ in 0..3 {
            let s = ready(&r, "ws");
            s.close(CloseReason::ClientClose).await;
            all.push(s);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        r.sweep();
        assert_eq!(r.len(), 2);
        assert!(r.get_any(&all[0].id).is_none());
        assert!(r.get_any(&all[2].id).is_some());
    }

    #[tokio::test]
    async fn close_is_idempotent_and_keeps_the_first_reason() {
        let r = registry(cfg());
        let s = ready(&r, "ws");
        let first = s.close(CloseReason::ClientClose).await;
        assert_eq!(first.result, "closed");
        let second = s.close(CloseReason::LeaseExpired).await;
        assert_eq!(second.result, "was already closed");
        assert_eq!(second.session.close_reason, Some(CloseReason::ClientClose));
    }

    #[tokio::test]
    async fn limits_refuse_per_gateway_and_per_workspace_before_anything_starts() {
        let r = registry(SessionsConfig {
            max: 2,
            max_per_workspace: 1,
            ..cfg()
        });
        ready(&r, "a");
        let req = || OpenRequest {
            backend: Some("b".into()),
            ..OpenRequest::default()
        };
        assert_eq!(
            r.open(owner("a"), req()).await.unwrap_err(),
            OpenError::WorkspaceLimit(1)
        );
        let b = ready(&r, "b");
        assert_eq!(
            r.open(owner("c"), req()).await.unwrap_err(),
            OpenError::Limit(2)
        );
        // Faulted and closed sessions hold no worker and no slot.
        b.fault(Fault::new("protocol", "x"));
        let err = r.open(owner("c"), req()).await.unwrap_err();
        assert!(
            matches!(&err, OpenError::Failed { fault, .. } if fault.kind == "spawn-failed"),
            "{err:?}"
        );
    }

    #[test]
    fn the_first_fault_is_kept_and_faulted_goes_only_to_closed() {
        let r = registry(cfg());
        let s = ready(&r, "ws");
        s.fault(Fault::new("protocol", "first"));
        s.fault(Fault::new("heartbeat-expired", "second"));
        assert_eq!(s.snapshot().fault.unwrap().message, "first");
        assert_eq!(s.state(), State::Faulted);
        assert_eq!(
            s.subscribe(0).unwrap_err(),
            SubscribeOutcome::NotReady(State::Faulted)
        );
    }

    #[tokio::test]
    async fn invoke_on_a_session_that_is_not_ready_says_its_state() {
        let r = registry(cfg());
        let s = ready(&r, "ws");
        s.close(CloseReason::ClientClose).await;
        let e = s
            .invoke("k", serde_json::Value::Null, None)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "not ready, current state is closed");
    }
}
