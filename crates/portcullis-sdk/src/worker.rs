//! Worker mode: turn command handlers and an event sender into a session worker, the process
//! the gateway starts for one session of a process-worker backend (`docs/worker-protocol.md`).
//!
//! ```no_run
//! use portcullis_sdk::worker::{Command, Reply, Worker};
//!
//! fn main() -> std::process::ExitCode {
//!     Worker::new()
//!         .command("greet", "hello.read", |c: Command| async move {
//!             c.events.send("greeting", serde_json::json!({"to": c.payload})).await.ok();
//!             Reply::ok(serde_json::json!("hello"))
//!         })
//!         .main()
//! }
//! ```
//!
//! The SDK parses the three arguments, reads the nonce from the environment (exiting with the
//! documented codes 2, 3 and 4 when something is missing), connects, runs the handshake, sends
//! heartbeats, runs each command on its own task (at most [`MAX_CONCURRENT`] at once), tells a
//! handler its command was cancelled, acknowledges shutdown and exits 0. Events go through a
//! bounded queue ([`EVENT_QUEUE`]): `send` waits when it is full, so a fast producer is paced
//! by the socket instead of overflowing the gateway.
//!
//! The same handlers serve **pinned sessions** of a linked service: give the worker to
//! [`ServiceBuilder::sessions`](crate::ServiceBuilder::sessions) and each session the
//! gateway pins to the instance arrives as one stream on the link (`POST`
//! [`SESSIONS_PATH`](portcullis_link::SESSIONS_PATH)) that carries exactly these frames
//! (docs/link-protocol.md §6.6). Nothing in a handler tells the two apart.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_link::worker::{
    self as wire, CommandDecl, Envelope, FromWorker, ToWorker, LEN_PREFIX, MAX_WORKER_FRAME_LEN,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Semaphore};

/// The environment variable the nonce arrives in.
pub const NONCE_ENV: &str = "PORTCULLIS_WORKER_NONCE";
/// Commands running at once; more wait for a slot.
pub const MAX_CONCURRENT: usize = 64;
/// Frames (events, replies) waiting for the socket.
pub const EVENT_QUEUE: usize = 256;

/// The worker's documented exit codes.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Unexpected failure.
    pub const FAILURE: u8 = 1;
    /// Invalid arguments.
    pub const BAD_ARGUMENTS: u8 = 2;
    /// Unsupported protocol version.
    pub const BAD_VERSION: u8 = 3;
    /// Missing nonce.
    pub const NO_NONCE: u8 = 4;
}

/// What the gateway passed on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--session-id`.
    pub session_id: String,
    /// `--socket`.
    pub socket: std::path::PathBuf,
    /// `--protocol-version`.
    pub protocol_version: String,
}

impl Args {
    /// Parse exactly the three arguments (any order); `Err` is the exit code to use.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, u8> {
        let mut it = args.into_iter();
        let (mut id, mut socket, mut version) = (None, None, None);
        while let Some(a) = it.next() {
            let slot = match a.as_str() {
                "--session-id" => &mut id,
                "--socket" => &mut socket,
                "--protocol-version" => &mut version,
                _ => return Err(exit::BAD_ARGUMENTS),
            };
            if slot.is_some() {
                return Err(exit::BAD_ARGUMENTS);
            }
            *slot = Some(it.next().ok_or(exit::BAD_ARGUMENTS)?);
        }
        let (Some(session_id), Some(socket), Some(protocol_version)) = (id, socket, version) else {
            return Err(exit::BAD_ARGUMENTS);
        };
        if protocol_version != PROTOCOL_VERSION.to_string() {
            return Err(exit::BAD_VERSION);
        }
        Ok(Self {
            session_id,
            socket: socket.into(),
            protocol_version,
        })
    }
}

/// A reply: the backend's own status and payload, passed to the caller untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Status code of the backend (0 for success is the convention, not a rule).
    pub status: i64,
    /// The answer.
    pub payload: serde_json::Value,
}

impl Reply {
    /// Status 0 with `payload`.
    pub fn ok(payload: serde_json::Value) -> Self {
        Self { status: 0, payload }
    }

    /// A backend error: `status` with `{"error": message}`.
    pub fn error(status: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            payload: serde_json::json!({ "error": message.into() }),
        }
    }
}

/// The worker's session ended: nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session ended")]
pub struct Gone;

/// Sends events to the session's subscriber, in order. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    tx: mpsc::Sender<Out>,
}

impl Events {
    /// Send an event of `kind` (1-128 of `[A-Za-z0-9._:-]`); waits while the queue is full.
    pub async fn send(&self, kind: &str, payload: serde_json::Value) -> Result<(), Gone> {
        self.tx
            .send(Out {
                correlation_id: None,
                body: FromWorker::Event {
                    kind: kind.into(),
                    payload,
                },
            })
            .await
            .map_err(|_| Gone)
    }
}

/// One command, as a handler gets it.
#[derive(Debug)]
pub struct Command {
    /// The kind.
    pub kind: String,
    /// The caller's payload.
    pub payload: serde_json::Value,
    /// How long the caller waits.
    pub deadline: Duration,
    /// The session's event sender.
    pub events: Events,
    cancelled: watch::Receiver<bool>,
}

impl Command {
    /// Has the gateway cancelled this command (timeout, caller gone)?
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Resolves when the command is cancelled (or the session ends).
    pub async fn cancelled(&mut self) {
        let _ = self.cancelled.wait_for(|c| *c).await;
    }
}

type Handler = Arc<dyn Fn(Command) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

struct Out {
    correlation_id: Option<String>,
    body: FromWorker,
}

/// A worker being described: its command kinds, then [`Worker::main`] or [`Worker::run`]
/// (a process worker), or [`ServiceBuilder::sessions`](crate::ServiceBuilder::sessions) (a
/// linked service's pinned sessions).
#[derive(Default, Clone)]
pub struct Worker {
    handlers: HashMap<String, (String, Handler)>,
    order: Vec<String>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("commands", &self.order)
            .finish()
    }
}

/// Why a worker stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The gateway broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Worker {
    /// A worker with no commands yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve command `kind`, which callers need `capability` to invoke.
    pub fn command<F, Fut>(mut self, kind: &str, capability: &str, handler: F) -> Self
    where
        F: Fn(Command) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let h: Handler = Arc::new(move |c| Box::pin(handler(c)));
        if self
            .handlers
            .insert(kind.into(), (capability.into(), h))
            .is_none()
        {
            self.order.push(kind.into());
        }
        self
    }

    /// Parse the process's arguments and environment, run on a fresh runtime, and return the
    /// documented exit code.
    pub fn main(self) -> ExitCode {
        ExitCode::from(self.main_with(std::env::args().skip(1)))
    }

    /// [`Worker::main`] with these arguments (what follows the program name, or the
    /// operator's own arguments); returns the exit code.
    pub fn main_with(self, args: impl IntoIterator<Item = String>) -> u8 {
        let args = match Args::parse(args) {
            Ok(a) => a,
            Err(code) => return code,
        };
        let nonce = match std::env::var(NONCE_ENV) {
            Ok(n) if !n.is_empty() => n,
            _ => return exit::NO_NONCE,
        };
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(_) => return exit::FAILURE,
        };
        match rt.block_on(self.run(args, nonce)) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("worker: {e}");
                exit::FAILURE
            }
        }
    }

    /// Connect and serve until the gateway shuts the session down (`Ok`) or the connection
    /// fails.
    pub async fn run(self, args: Args, nonce: String) -> Result<(), WorkerError> {
        let stream = UnixStream::connect(&args.socket).await?;
        let (r, w) = stream.into_split();
        self.serve(&args.session_id, nonce, r, w).await
    }

    /// The command kinds and capabilities this worker declares.
    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Serve session `session_id` over any byte stream: a process worker's socket, or a
    /// pinned session's stream on a link. Returns when the gateway shuts the session down
    /// (`Ok`), goes away (`Ok`), or breaks the protocol.
    pub(crate) async fn serve<R, W>(
        &self,
        session_id: &str,
        nonce: String,
        mut r: R,
        mut w: W,
    ) -> Result<(), WorkerError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let sid = session_id.to_string();
        let mut seq = 0u64;
        let mut write = move |body: FromWorker, correlation_id: Option<String>| {
            seq += 1;
            wire::encode(
                &Envelope {
                    version: PROTOCOL_VERSION,
                    session_id: sid.clone(),
                    sequence: seq,
                    correlation_id,
                    body,
                },
                MAX_WORKER_FRAME_LEN,
            )
            .map_err(|e| WorkerError::Protocol(e.to_string()))
        };
        let commands = self
            .order
            .iter()
            .map(|k| CommandDecl {
                kind: k.clone(),
                capability: self.handlers[k].0.clone(),
            })
            .collect();
        let pid = std::process::id();
        w.write_all(&write(
            FromWorker::Hello {
                protocol_version: PROTOCOL_VERSION,
                nonce: nonce.clone(),
                pid,
                commands,
            },
            None,
        )?)
        .await?;
        w.flush().await?;
        let hello = read(&mut r).await?;
        let interval = match hello.body {
            ToWorker::Hello {
                protocol_version,
                nonce: theirs,
                heartbeat_interval_ms,
                ..
            } if protocol_version == PROTOCOL_VERSION && theirs == nonce => {
                Duration::from_millis(heartbeat_interval_ms.max(10))
            }
            _ => return Err(WorkerError::Protocol("unexpected gateway hello".into())),
        };
        w.write_all(&write(FromWorker::Ready { pid }, None)?)
            .await?;
        w.flush().await?;

        // One writer owns the socket and the sequence numbers.
        let (tx, mut rx) = mpsc::channel::<Out>(EVENT_QUEUE);
        let writer = tokio::spawn(async move {
            let mut beat = tokio::time::interval(interval);
            loop {
                let (body, corr) = tokio::select! {
                    o = rx.recv() => match o {
                        Some(o) => (o.body, o.correlation_id),
                        None => return Ok::<_, WorkerError>(()),
                    },
                    _ = beat.tick() => (FromWorker::Heartbeat { pid }, None),
                };
                let ack = matches!(body, FromWorker::ShutdownAck {});
                w.write_all(&write(body, corr)?).await?;
                w.flush().await?;
                if ack {
                    return Ok(());
                }
            }
        });
        let events = Events { tx: tx.clone() };
        let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
        let cancels: Arc<Mutex<HashMap<String, watch::Sender<bool>>>> = Default::default();
        let handlers = Arc::new(self.handlers.clone());
        let served = self::serve_frames(&mut r, &handlers, &events, &tx, &slots, &cancels).await;
        match served {
            Served::Shutdown => {
                drop(events);
                drop(tx);
                let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
                Ok(())
            }
            Served::Gone => {
                // Nobody reads any more: the writer's heartbeats would go nowhere.
                writer.abort();
                Ok(())
            }
            Served::Failed(e) => {
                writer.abort();
                Err(e)
            }
        }
    }
}

/// How a session's frame loop ended.
enum Served {
    /// The gateway shut the session down; the ack is queued.
    Shutdown,
    /// The gateway went away.
    Gone,
    /// The gateway broke the protocol.
    Failed(WorkerError),
}

type Cancels = Arc<Mutex<HashMap<String, watch::Sender<bool>>>>;

/// Read the gateway's frames after the handshake and run its commands.
async fn serve_frames<R: AsyncRead + Unpin>(
    r: &mut R,
    handlers: &Arc<HashMap<String, (String, Handler)>>,
    events: &Events,
    tx: &mpsc::Sender<Out>,
    slots: &Arc<Semaphore>,
    cancels: &Cancels,
) -> Served {
    {
        loop {
            let frame = match read(r).await {
                Ok(f) => f,
                // The gateway went away: nothing is left to serve.
                Err(WorkerError::Io(_)) => return Served::Gone,
                Err(e) => return Served::Failed(e),
            };
            let corr = frame.correlation_id;
            match frame.body {
                ToWorker::Command {
                    kind,
                    payload,
                    deadline_ms,
                } => {
                    let Some(corr) = corr else {
                        return Served::Failed(WorkerError::Protocol(
                            "a command without a correlation id".into(),
                        ));
                    };
                    let (ctx, crx) = watch::channel(false);
                    cancels
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(corr.clone(), ctx);
                    let handler = handlers.get(&kind).map(|(_, h)| h.clone());
                    let cmd = Command {
                        kind: kind.clone(),
                        payload,
                        deadline: Duration::from_millis(deadline_ms),
                        events: events.clone(),
                        cancelled: crx,
                    };
                    let tx = tx.clone();
                    let slots = slots.clone();
                    let cancels = cancels.clone();
                    tokio::spawn(async move {
                        let reply = match handler {
                            Some(h) => {
                                let _slot = slots.acquire_owned().await;
                                h(cmd).await
                            }
                            None => Reply::error(400, format!("unknown command kind {kind}")),
                        };
                        let live = cancels
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&corr)
                            .is_some_and(|c| !*c.borrow());
                        if live {
                            let _ = tx
                                .send(Out {
                                    correlation_id: Some(corr),
                                    body: FromWorker::Reply {
                                        status: reply.status,
                                        payload: reply.payload,
                                    },
                                })
                                .await;
                        }
                    });
                }
                ToWorker::Cancel {} => {
                    if let Some(c) = corr.and_then(|c| {
                        cancels
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&c)
                            .cloned()
                    }) {
                        let _ = c.send(true);
                    }
                }
                ToWorker::Shutdown { .. } => {
                    for (_, c) in cancels.lock().unwrap_or_else(|p| p.into_inner()).drain() {
                        let _ = c.send(true);
                    }
                    let _ = tx
                        .send(Out {
                            correlation_id: None,
                            body: FromWorker::ShutdownAck {},
                        })
                        .await;
                    return Served::Shutdown;
                }
                ToWorker::Hello { .. } => {
                    return Served::Failed(WorkerError::Protocol("a second hello".into()));
                }
            }
        }
    }
}

/// Bytes the pipe between a pinned session's stream and its worker holds each way.
const PIPE_BYTES: usize = 64 * 1024;

/// The pinned sessions a service serves: its worker and the bound on sessions at once.
#[derive(Debug)]
pub(crate) struct SessionHost {
    worker: Worker,
    slots: Arc<Semaphore>,
}

impl SessionHost {
    pub(crate) fn new(worker: Worker, max: u32) -> Arc<Self> {
        Arc::new(Self {
            worker,
            slots: Arc::new(Semaphore::new(max.max(1) as usize)),
        })
    }
}

/// `POST` [`SESSIONS_PATH`](portcullis_link::SESSIONS_PATH): one pinned session. The
/// request body carries the gateway's frames, the response body the worker's, for as long as
/// the session lives; the worker is the one a process worker runs, over an in-memory pipe
/// instead of a socket. 404 when the service serves no sessions, 405 for another method,
/// 400 without a session id, nonce or known protocol version, 503 past the session bound.
pub(crate) fn serve_session(
    req: http::Request<hyper::body::Incoming>,
    host: Option<Arc<SessionHost>>,
) -> http::Response<crate::serve::LinkBody> {
    use http::StatusCode;
    use http_body_util::BodyExt;
    use portcullis_link::headers::{SESSION_ID, WORKER_NONCE, WORKER_PROTOCOL};
    let Some(host) = host else {
        return crate::serve::status(StatusCode::NOT_FOUND);
    };
    if req.method() != http::Method::POST {
        return crate::serve::status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= wire::MAX_ID_LEN)
            .map(str::to_string)
    };
    let (Some(session_id), Some(nonce), Some(version)) = (
        header(SESSION_ID),
        header(WORKER_NONCE),
        header(WORKER_PROTOCOL),
    ) else {
        return crate::serve::status(StatusCode::BAD_REQUEST);
    };
    if version != PROTOCOL_VERSION.to_string() {
        return crate::serve::status(StatusCode::BAD_REQUEST);
    }
    let Ok(slot) = host.slots.clone().try_acquire_owned() else {
        return crate::serve::status(StatusCode::SERVICE_UNAVAILABLE);
    };
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let (from_worker, mut to_worker) = tokio::io::split(theirs);
    // Gateway → worker: the request body into the pipe (h2 releases the window as it goes).
    let mut body = req.into_body();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                if to_worker.write_all(&data).await.is_err() {
                    return;
                }
            }
        }
    });
    let worker = host.worker.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let (r, w) = tokio::io::split(ours);
        if let Err(e) = worker.serve(&session_id, nonce, r, w).await {
            tracing::warn!(session = %session_id, error = %e, "pinned session ended");
        }
    });
    // Worker → gateway: what the worker writes, as the response body.
    let stream = futures_util::stream::unfold(from_worker, |mut r| async move {
        let mut buf = vec![0u8; 16 * 1024];
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, crate::error::BoxError>(http_body::Frame::data(bytes::Bytes::from(
                        buf,
                    ))),
                    r,
                ))
            }
        }
    });
    let mut resp = http::Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Envelope<ToWorker>, WorkerError> {
    let mut prefix = [0u8; LEN_PREFIX];
    r.read_exact(&mut prefix).await?;
    let len = wire::frame_len(prefix, MAX_WORKER_FRAME_LEN)
        .map_err(|e| WorkerError::Protocol(e.to_string()))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    wire::decode(&body).map_err(|e| WorkerError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, u8> {
        Args::parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments_map_to_the_documented_exit_codes() {
        assert!(args(&[
            "--session-id",
            "s",
            "--socket",
            "/x",
            "--protocol-version",
            "1"
        ])
        .is_ok());
        assert_eq!(
            args(&[
                "--session-id",
                "s",
                "--socket",
                "/x",
                "--protocol-version",
                "2"
            ]),
            Err(exit::BAD_VERSION)
        );
        assert_eq!(args(&["--session-id", "s"]), Err(exit::BAD_ARGUMENTS));
        assert_eq!(
            args(&[
                "--bogus",
                "1",
                "--session-id",
                "s",
                "--socket",
                "/x",
                "--protocol-version",
                "1"
            ]),
            Err(exit::BAD_ARGUMENTS)
        );
    }
}
